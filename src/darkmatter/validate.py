"""The ``validate`` stage: params.yaml checked whole before any stage's outputs are touched.

DVC deletes a stage's outputs before running it, so a typo caught inside the stage that reads
it (``ica.backend: foo``) used to cost that stage's outputs: the stage had to be recomputed once
the typo was fixed. This stage runs first (every chain depends on its output) and checks
everything a later stage would: the schema (:mod:`darkmatter.config`), and for each run with a
pretrained SAE its SAELens release and SAE id (close matches on a typo) and the model kwargs the
release asks for. Its output is the same one line whenever validation passes, so rerunning it
after any params edit invalidates nothing downstream.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from darkmatter.config import Params, load_params
from darkmatter.errors import ConfigError, cli

VALID = "params.yaml: valid\n"


def check_runs(params: Params, origin: str) -> None:
    """Every run definition's pretrained SAE exists in SAELens's directory and gets its model kwargs."""
    from darkmatter.sae.pretrained import release_entry, release_kwargs_problem

    for name, definition in params.run_definitions.items():
        if definition.sae.source != "pretrained":
            continue
        try:
            release_entry(definition.sae.release, definition.sae.sae_id)
        except ConfigError as exc:
            raise ConfigError(f"{origin}: run_definitions.{name}.sae: {exc}") from None
        problem = release_kwargs_problem(params.run(name))
        if problem:
            raise ConfigError(f"{origin}: {problem}")


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Validate params.yaml before any stage runs.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    check_runs(load_params(args.params), args.params)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(VALID)
    print(VALID, end="")


if __name__ == "__main__":
    main()
