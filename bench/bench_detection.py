"""Detection limits of the dark matter's ICA, planted into the main run's own residual.

    python bench/bench_detection.py            # ~10 min on 2 cores; needs `dvc repro ica@<main run>`
    python bench/bench_detection.py --shares 0.001,0.01 --rates 0.01

Sparse, heavy-tailed sources (``darkmatter.analysis.detection``) are planted into r on the ICA
stage's own fitting tokens (its first sample), whitened to the run's k components and fitted by
the run's ICA (backend, restarts, tolerance). Each cell plants ``--sources`` orthonormal random
directions at one variance share of r and one firing rate; a source is recovered when every
restart has a mixing direction within |cos| > 0.9 of it. Too slow for the default build (15
cells of two fits each), so it runs here and the paper reads ``bench/detection.json``, labelled
as a bench result and checked against the build's SAE (``identity``: the paper calls the result
stale when the SAE or k it was measured on is not the build's).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STORE = Path(__file__).with_name("detection.json")


def residual_sample(params):
    """The main run's ICA target on the ICA stage's first fitting sample [n, d], and its k."""
    from darkmatter.analysis.ica import Whitener, choose_k, fit_samples, whitened_target
    from darkmatter.analysis.stream import latent_chunk_tokens
    from darkmatter.analysis.tokens import analysed_tokens, heldout_token_mask
    from darkmatter.data.activations import ActivationCache
    from darkmatter.sae.io import load_sae

    run = params.main
    root = REPO / "data/runs" / run.name
    stats = dict(np.load(root / "residual/stats.npz"))
    cache = ActivationCache.open(root / "activations")
    sae = load_sae(root / "sae")
    prefix = "pca_residual" if run.ica.target == "residual" else "pca_nonlinear"
    k, _ = choose_k(stats[f"{prefix}_values"], run.ica)
    d = cache.meta["d_model"]
    identity = Whitener(np.zeros(d), np.eye(d), np.ones(d))  # whitened_target with it returns the target itself
    heldout = heldout_token_mask(cache.meta["n_rows"], cache.meta["context_length"], run.sae.heldout_fraction)
    index = fit_samples(analysed_tokens(stats, heldout, "train"), run.ica.max_tokens, 0, run.ica.seed)[0]
    chunk = latent_chunk_tokens(sae.cfg.d_sae, run.residual.latent_budget_mb << 20)
    return whitened_target(sae, cache, index, identity, run.ica.target, stats, chunk, desc="the ICA sample's r"), k


def code_commit() -> str:
    """The commit the code ran at, marked where the code (not the outputs) differed from it."""
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO).stdout.strip()

    changed = git("status", "--porcelain", "--", "src", "bench/*.py", "params.yaml", "dvc.yaml")
    return git("rev-parse", "--short", "HEAD") + (" with uncommitted code changes" if changed else "")


def build_identity(params) -> dict:
    """What the paper checks the result against: the build's SAE (held-out FVU, L0) and ICA's k."""
    metrics = REPO / "metrics/runs" / params.main_run
    evaluation = json.loads((metrics / "sae_eval.json").read_text())
    ica = json.loads((metrics / "ica.json").read_text())
    return {"run": params.main_run, "sae_fvu": evaluation["fvu"], "sae_l0": evaluation["l0"], "ica_k": ica["n_components"]}


def main() -> None:
    from darkmatter.analysis.detection import detection_limits
    from darkmatter.config import load_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", default="0.001,0.003,0.006,0.01,0.03", help="variance shares of r, comma-separated")
    parser.add_argument("--rates", default="0.001,0.01,0.1", help="firing rates, comma-separated")
    parser.add_argument("--sources", type=int, default=3, help="planted directions per cell")
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    shares = [float(s) for s in args.shares.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    start = time.perf_counter()
    t, k = residual_sample(params)
    out = detection_limits(t, k, shares, rates, args.sources, params.main.ica, seed=params.main.ica.seed)
    commit = code_commit()
    out |= {"identity": build_identity(params), "ica": {"backend": params.main.ica.backend, "seeds": params.main.ica.seeds,
                                                         "tol": params.main.ica.tol, "max_iter": params.main.ica.max_iter},
            "commit": commit, "machine": machine(), "seconds": time.perf_counter() - start}
    STORE.write_text(json.dumps(out, indent=1) + "\n")
    lines = ["| rate \\ share of var(r) | " + " | ".join(f"{s:.1%}" for s in shares) + " | boundary |",
             "|---" * (len(shares) + 2) + "|"]
    for rate in rates:
        cells = {c["share"]: c for c in out["cells"] if c["rate"] == rate}
        found = out["boundary"][str(rate)]
        lines.append(f"| {rate:.1%} | " + " | ".join(f"{cells[s]['recovered']}/{cells[s]['sources']}" for s in shares)
                     + f" | {'none' if found is None else f'{found:.1%}'} |")
    body = (f"Sources recovered in both ICA restarts (|cos| > {out['threshold']}) of {args.sources} planted per cell, "
            f"in the main run's r on the ICA stage's {out['n_tokens']:,} fitting tokens, whitened to k = {k} "
            f"(commit {commit}; {out['seconds']:.0f} s). The boundary is the smallest share from which every larger "
            f"share's sources all came back.\n\n" + "\n".join(lines))
    print(body)
    write_section("Detection limits of the dark matter's ICA", body)


if __name__ == "__main__":
    main()
