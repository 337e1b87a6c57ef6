"""Pydantic validation errors as one line that names the key and the allowed values."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import ValidationError


def _container(hint: Any) -> Any:
    """The dataclass a field's type hint holds (through Optional, tuple[...] and dict[str, ...])."""
    for arg in typing.get_args(hint) or (hint,):
        if hasattr(arg, "__dataclass_fields__"):
            return arg
        inner = _container(arg) if typing.get_args(arg) else None
        if inner is not None:
            return inner
    return None


def _allowed_keys(loc: tuple, root: type) -> list[str]:
    """Field names of the dataclass that holds the offending key at ``loc`` (a path from ``root``)."""
    cls: Any = root
    for part in loc[:-1]:
        hints = typing.get_type_hints(cls)
        if part not in hints:  # a list index or a dict key: stay on the same container type
            continue
        found = _container(hints[part])
        if found is None:
            return []
        cls = found
    return list(cls.__dataclass_fields__)


def one_line(exc: ValidationError, origin: str, root: type) -> str:
    """The first validation error as ``origin: key: message``, naming the keys allowed where a key is unknown."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        msg = f"unknown key; allowed: {', '.join(_allowed_keys(err['loc'], root))}"
    elif err["type"] == "literal_error":
        msg = f"{err.get('input')!r} is not allowed; {msg.replace('Input should be', 'allowed:')}"
    elif err["type"] == "missing" and len(err["loc"]) > 1 and err["loc"][-2] == "sizes":
        msg = f"{msg}; name every section ({{}} for none)"
    return f"{origin}: {key}: {msg}" if key else f"{origin}: {msg}"
