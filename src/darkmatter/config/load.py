"""Loading ``params.yaml``, and its errors as one line naming the key and the allowed values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from darkmatter.errors import ConfigError
from darkmatter.config.messages import one_line
from darkmatter.config.runs import Params, Run


# ---- loading and one-line errors ----------------------------------------------------------------

def parse_params(raw: dict[str, Any], origin: str = "params.yaml") -> Params:
    """Validate a params mapping; raise :class:`ConfigError` with one line on the first problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level")
    try:
        return Params(**raw)
    except ValidationError as exc:
        raise ConfigError(one_line(exc, origin, Params)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """params.yaml, validated."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found; run from the repository root or pass --params")
    with path.open() as fh:
        raw = yaml.safe_load(fh) or {}
    return parse_params(raw, origin=str(path))


def add_run_arguments(parser) -> None:
    """``--params`` and ``--run``, shared by every per-run stage CLI."""
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--run", required=True, help="a name in run_definitions")


def run_from_args(args) -> Run:
    return load_params(args.params).run(args.run)
