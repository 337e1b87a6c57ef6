"""One exception family for input the user can fix.

Stages raise :class:`UserError` for bad params, missing packages, corrupt caches or NaNs; the
CLI wrapper prints it as a single ``error: ...`` line (problem and fix) and exits 2, with no
traceback, so the message is the first thing a user sees.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input or state that the user can fix; the message names the problem and the fix."""


class ConfigError(UserError):
    """``params.yaml`` failed validation."""


class CacheCorruptError(UserError):
    """A stored artifact fails its integrity check."""


class NonFiniteError(UserError):
    """NaN or inf appeared in computed data."""


def cli(main: Callable[[list[str] | None], None]) -> Callable[[list[str] | None], None]:
    """Wrap a stage ``main`` so a :class:`UserError` becomes one line on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> None:
        try:
            main(argv)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
