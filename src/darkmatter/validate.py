"""The ``validate`` stage: params.yaml checked whole before any stage's outputs are touched.

DVC deletes a stage's outputs before running it, so a typo caught inside the stage that reads
it (``ica.backend: foo``) used to cost that stage's outputs: the stage had to be recomputed once
the typo was fixed. This stage runs first (every chain depends on its output) and checks
everything a later stage would: the schema (:mod:`darkmatter.config`), and for each run with a
pretrained SAE its SAELens release and SAE id (close matches on a typo) and the model kwargs the
release asks for. Its output is the same one line whenever validation passes, so rerunning it
after any params edit invalidates nothing downstream.

**Sizes against data**, for every run definition (listed in ``runs`` or not, so a ladder row is
refused here and not an hour into its chain): the rows and tokens each stage asks of the
activation cache, through the same functions the stages check them with, against what the
run's ``activations.n_tokens`` at its context length gives (an upper bound: a corpus may fill
fewer rows, which the stages still check).
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


def size_problem(run) -> str | None:
    """What one run asks of its activation cache that the cache cannot hold, as one line; None if nothing.

    Rows: ``n_tokens // context_length``, the last ``sae.heldout_fraction`` held out
    (:func:`darkmatter.data.split.split_rows`). Checked: the held-out rows against causal's rows
    (:func:`darkmatter.causal.stage.check_inputs`) and sae_eval's LM rows, the probes' paired rows
    against the train and held-out rows (:func:`darkmatter.probes.paired.probe_rows`), and ICA's
    reference fit and disjoint resamples against the train tokens.
    """
    import numpy as np

    from darkmatter.analysis.ica import fit_samples
    from darkmatter.causal.stage import check_inputs
    from darkmatter.data.split import split_rows
    from darkmatter.errors import UserError
    from darkmatter.probes.paired import probe_rows

    context = run.context_length
    n_rows = run.activations.n_tokens // context
    if n_rows < 2:
        return (f"activations.n_tokens {run.activations.n_tokens} fills {n_rows} rows of data.context_length {context}; "
                "cache at least two rows (a train and a held-out one)")
    try:
        train, heldout = split_rows(n_rows, run.sae.heldout_fraction)
        check_inputs(run.causal, run.ica.max_components, len(heldout))
        if run.sae_eval.lm_rows > len(heldout):
            return (f"sae_eval.lm_rows {run.sae_eval.lm_rows} exceeds the {len(heldout)} held-out rows; "
                    "lower it or raise sae.heldout_fraction / activations.n_tokens")
        probe_rows(n_rows, run.sae.heldout_fraction, run.probes.n_tokens // context, run.probes.val_fraction, run.probes.seed)
        train_tokens = len(train) * context
        wanted = run.ica.max_tokens * (1 + run.ica.resamples)
        if wanted > train_tokens:
            return (f"ica.max_tokens {run.ica.max_tokens} for the fit and each of ica.resamples {run.ica.resamples} "
                    f"asks {wanted} train tokens, the train rows hold at most {train_tokens}; lower ica.max_tokens or "
                    "ica.resamples, or raise activations.n_tokens")
        fit_samples(np.arange(train_tokens), run.ica.max_tokens, run.ica.resamples, 0)
    except UserError as exc:
        return str(exc)
    return None


def check_sizes(params: Params, origin: str) -> None:
    """Every run definition's sizes fit its activation cache (:func:`size_problem`)."""
    for name in params.run_definitions:
        problem = size_problem(params.run(name))
        if problem:
            raise ConfigError(f"{origin}: run {name}: {problem}")


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Validate params.yaml before any stage runs.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    check_runs(params, args.params)
    check_sizes(params, args.params)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(VALID)
    print(VALID, end="")


if __name__ == "__main__":
    main()
