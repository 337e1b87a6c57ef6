"""How ICA's answers depend on k, the number of whitened components: the paper's k justification.

    python bench/bench_k_sweep.py               # k = 16, 32, 64, 128; ~10 min on 2 cores; needs `dvc repro ica@<main run>`
    python bench/bench_k_sweep.py --ks 32,64

``ica.n_components: auto`` takes the fewest principal components of r holding ``ica.auto_variance`` of
its variance, capped at ``ica.max_components`` (64): on the main run the cap binds, so k is a cap, not a
choice. This bench refits the run's ICA (backend, tolerance, two restarts on the ICA stage's own first
fitting sample) at each k of ``--ks``, with the run's whitening (r's PCA from the residual stage), and reports
per k: the variance kept, the components stable across the restarts (|cos| of matched rows of W above
``ica.stable_threshold``), the novel fraction of the mixing directions against its rotation null
(``compare.n_rotations`` random orthogonal W through the same V Λ^{1/2}; two-sided Monte-Carlo p), and the
wall time of the fits. Too slow for the default build (the fits grow ~k² per iteration), so it runs here;
``bench/k_sweep.json`` is committed and the paper reads it, labelled as a bench result with the SAE it was
measured on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_detection import build_identity, code_commit, residual_sample  # noqa: E402
from common import machine, write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STORE = Path(__file__).with_name("k_sweep.json")


def sweep_point(t: np.ndarray, stats: dict, k: int, decoder, run) -> dict:
    """ICA at ``k`` on the ICA sample ``t`` [n, d]: stability across two restarts and novelty against rotations."""
    from darkmatter.analysis.compare import max_abs_cos, rotation_null_directions, rotation_test
    from darkmatter.analysis.ica import Whitener, fit

    prefix = "pca_residual" if run.ica.target == "residual" else "pca_nonlinear"
    values, vectors = stats[f"{prefix}_values"], stats[f"{prefix}_vectors"]
    mean = stats["mean_residual" if run.ica.target == "residual" else "mean_nonlinear"]
    whitener = Whitener.from_pca(mean, values, vectors, k)
    cfg = dataclasses.replace(run.ica, seeds=2, resamples=0)
    start = time.perf_counter()
    result = fit([whitener(t)], whitener, float(values.sum()), cfg)
    seconds = time.perf_counter() - start
    budget = run.residual.latent_budget_mb << 20
    observed = max_abs_cos(result.components.mixing, decoder, budget)[0]
    n_rotations = run.compare.n_rotations
    null = max_abs_cos(rotation_null_directions(whitener.basis, whitener.scale, n_rotations, run.compare.seed + 1),
                       decoder, budget)[0].reshape(n_rotations, k)
    novelty = rotation_test(observed, null, run.compare.novel_below)["novel_fraction"]
    return {"k": k, "variance_kept": float(values[:k].sum() / values.sum()), "n_stable": int(result.stable.sum()),
            "stable_fraction": float(result.stable.mean()), "converged": all(r.converged for r in result.runs),
            "n_iter": [r.n_iter for r in result.runs], "novel_fraction": novelty["observed"],
            "novel_null_mean": novelty["null_mean"], "novel_p_two_sided": novelty["p_two_sided"], "seconds": seconds}


def main() -> None:
    from darkmatter.analysis.residual import components_for
    from darkmatter.config import load_params
    from darkmatter.sae.io import load_sae

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="16,32,64,128", help="whitened dimensions, comma-separated")
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    run = params.main
    ks = sorted(int(k) for k in args.ks.split(","))
    start = time.perf_counter()
    t, k_run = residual_sample(params)
    root = REPO / "data/runs" / run.name
    stats = dict(np.load(root / "residual/stats.npz"))
    decoder = load_sae(root / "sae").W_dec.detach()
    values = stats["pca_residual_values" if run.ica.target == "residual" else "pca_nonlinear_values"]
    points = [sweep_point(t, stats, k, decoder, run) for k in ks]
    commit = code_commit()
    out = {"points": points, "k_run": k_run, "auto_variance": run.ica.auto_variance,
           "k_auto_uncapped": int(components_for(values, run.ica.auto_variance)), "max_components": run.ica.max_components,
           "n_tokens": int(len(t)), "identity": build_identity(params), "commit": commit, "machine": machine(),
           "seconds": time.perf_counter() - start}
    STORE.write_text(json.dumps(out, indent=1) + "\n")
    lines = ["| k | variance kept | stable (2 restarts) | novel | rotation null | p | converged | fit time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {p['k']} | {p['variance_kept']:.1%} | {p['n_stable']} of {p['k']} | {p['novel_fraction']:.0%} | "
              f"{p['novel_null_mean']:.0%} | {p['novel_p_two_sided']:.3f} | {'yes' if p['converged'] else 'no'} | "
              f"{p['seconds']:.0f} |" for p in points]
    body = (f"ICA of the main run's r at each k (two restarts on the ICA stage's {len(t):,} fitting tokens; novelty "
            f"against {run.compare.n_rotations} random rotations; commit {commit}; {out['seconds']:.0f} s). "
            f"`ica.n_components: auto` would take {out['k_auto_uncapped']} PCs for {run.ica.auto_variance:.0%} of "
            f"var(r), capped at {run.ica.max_components}.\n\n" + "\n".join(lines))
    print(body)
    write_section("ICA against k", body)


if __name__ == "__main__":
    main()
