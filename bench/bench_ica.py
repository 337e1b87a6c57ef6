"""ICA backends on the same whitened data: Picard-O (python-picard) vs scikit-learn FastICA.

    python bench/bench_ica.py [--k 64] [--tokens 65536] [--synthetic]

Data: the default run's dark matter, whitened exactly as the ICA stage does (needs
``dvc repro residual@9`` first), or with ``--synthetic`` the planted-source data of
``tests/test_ica.py`` scaled up. Both backends get the same z, the same seed and their own
default tolerance; reported are wall time, iterations, convergence, and the agreement of the
two solutions: Hungarian-matched |cos| between their activation-space mixing directions.
Target: Picard ≥ 3× faster than FastICA at |cos| > 0.99.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_section  # noqa: E402

from darkmatter.analysis.ica import Whitener, match, run_ica, to_components  # noqa: E402
from darkmatter.analysis.residual import pca  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def real_data(k: int, tokens: int, run: str):
    """The run's whitened dark matter on ``tokens`` analysed train-row tokens (the ICA stage's first sample)."""
    from darkmatter.analysis.ica import fit_samples, whitened_target
    from darkmatter.analysis.tokens import analysed_tokens, heldout_token_mask
    from darkmatter.config import load_params
    from darkmatter.data.activations import ActivationCache
    from darkmatter.sae.io import load_sae

    stats = dict(np.load(REPO / f"data/runs/{run}/residual/stats.npz"))
    cache = ActivationCache.open(REPO / f"data/runs/{run}/activations")
    sae = load_sae(REPO / f"data/runs/{run}/sae")
    values = stats["pca_residual_values"]
    whitener = Whitener.from_pca(stats["mean_residual"], values, stats["pca_residual_vectors"], k)
    heldout_fraction = load_params(REPO / "params.yaml").run(run).sae.heldout_fraction
    heldout = heldout_token_mask(cache.meta["n_rows"], cache.meta["context_length"], heldout_fraction)
    index = fit_samples(analysed_tokens(stats, heldout, "train"), tokens, 0, 0)[0]
    z = whitened_target(sae, cache, index, whitener, "residual", stats, 8192)
    return z, whitener, float(values.sum()), f"SAE residual of run {run}, {len(z):,} analysed train-row tokens"


def synthetic_data(k: int, tokens: int):
    sys.path.insert(0, str(REPO / "tests"))
    from test_ica import planted

    x, _ = planted(n=tokens)
    values, vectors = pca(np.cov(x, rowvar=False))
    k = min(k, x.shape[1])
    whitener = Whitener.from_pca(x.mean(0), values, vectors, k)
    return whitener(x), whitener, float(values.sum()), f"planted synthetic data (tests/test_ica.py), {tokens:,} samples"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--run", default="gemma-3-270m-l9", help="a run built by dvc repro")
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--parallel", type=int, default=0,
                        help="also time this many seed restarts: one after another vs the ICA stage's parallel workers")
    args = parser.parse_args()

    z, whitener, total, what = synthetic_data(args.k, args.tokens) if args.synthetic else real_data(args.k, args.tokens, args.run)
    runs, comps = {}, {}
    for backend in ("picard", "fastica"):
        runs[backend] = run_ica(z, backend, 0, args.max_iter)
        comps[backend] = to_components(runs[backend].unmixing_white, whitener, z, total)
        r = runs[backend]
        print(f"{backend}: {r.seconds:.1f} s, {r.n_iter} iterations, converged {r.converged}")
    _, agreement = match(comps["picard"].mixing, comps["fastica"].mixing)
    p, f = runs["picard"], runs["fastica"]
    kurt = comps["picard"].kurtosis
    strong = kurt > np.median(kurt)
    rows = [
        ("data", what),
        ("whitened dimensions k", str(whitener.k)),
        ("Picard-O (ortho, extended): time / iterations / converged (tol)", f"{p.seconds:.1f} s / {p.n_iter} / {p.converged} ({p.tol:g})"),
        ("FastICA (parallel, logcosh): time / iterations / converged (tol)", f"{f.seconds:.1f} s / {f.n_iter} / {f.converged} ({f.tol:g})"),
        ("**FastICA time / Picard time** (target ≥ 3)", f"**{f.seconds / p.seconds:.2f}x**"),
        ("matched \\|cos\\| of mixing directions: median / min", f"{np.median(agreement):.4f} / {agreement.min():.4f}"),
        ("**components agreeing at \\|cos\\| > 0.99**", f"**{(agreement > 0.99).sum()} of {len(agreement)}**"),
        ("... of the more non-Gaussian half (kurtosis above the median)", f"{(agreement[strong] > 0.99).sum()} of {strong.sum()}"),
        ("source kurtosis (Picard): median / max", f"{np.median(kurt):.3f} / {kurt.max():.2f}"),
    ]
    if args.parallel:
        import time
        from types import SimpleNamespace

        from darkmatter.analysis.ica import run_parallel

        jobs = [(z, seed) for seed in range(args.parallel)]
        cfg = SimpleNamespace(backend="picard", max_iter=args.max_iter, tol=None)
        start = time.perf_counter()
        for data, seed in jobs:
            run_ica(data, "picard", seed, args.max_iter)
        one_by_one = time.perf_counter() - start
        start = time.perf_counter()
        run_parallel(jobs, cfg, "parallel")
        parallel = time.perf_counter() - start
        rows.append((f"{args.parallel} Picard restarts: one after another (all BLAS threads) / in parallel one-thread "
                     "workers (`ica.run_parallel`)", f"{one_by_one:.1f} s / {parallel:.1f} s (**{one_by_one / parallel:.2f}x**)"))
    body = "\n".join(["| quantity | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])
    print(body)
    write_section("ICA backends" + (" (synthetic)" if args.synthetic else ""), body)


if __name__ == "__main__":
    main()
