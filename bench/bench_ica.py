"""ICA backends on the same whitened data: Picard-O (python-picard) vs scikit-learn FastICA.

    python bench/bench_ica.py [--k 64] [--tokens 65536] [--synthetic]

Data: the default run's dark matter, whitened exactly as the ICA stage does (needs
``dvc repro residual@9`` first), or with ``--synthetic`` the planted-source data of
``tests/test_ica.py`` scaled up. Both backends get the same z and the same seed.

Equal quality, not equal iterations: Picard runs to its own convergence (tol 1e-7, the stage's
setting). FastICA then runs in segments of ``--segment`` iterations, each continuing from the
last unmixing matrix (``w_init``; the parallel FastICA update is stateless, so this is the same
trajectory as one long run), until its solution matches Picard's: every component of the
compared set at Hungarian-matched |cos| > 0.99 between the two unmixing matrices in whitened
space (where the ICA stage matches fits). The compared set is the more non-Gaussian half of
Picard's components (source kurtosis above the median): near-Gaussian components are not
identifiable and the two contrasts (Picard's extended infomax, FastICA's log-cosh negentropy)
need not agree on them. FastICA's time to that solution, against Picard's, is the ratio
(target ≥ 3). If FastICA never gets there within ``--fastica-max-iter`` iterations, the table says so.
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
    sys.path.insert(0, str(REPO / "tests" / "analysis"))
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
    parser.add_argument("--max-iter", type=int, default=1000, help="Picard's cap")
    parser.add_argument("--fastica-max-iter", type=int, default=3000)
    parser.add_argument("--segment", type=int, default=50, help="FastICA iterations between agreement checks")
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--parallel", type=int, default=0,
                        help="also time this many seed restarts: one after another vs the ICA stage's parallel workers")
    args = parser.parse_args()

    z, whitener, total, what = synthetic_data(args.k, args.tokens) if args.synthetic else real_data(args.k, args.tokens, args.run)
    picard = run_ica(z, "picard", 0, args.max_iter)
    reference = to_components(picard.unmixing_white, whitener, z, total)  # rows ordered by kurtosis
    half = len(reference.kurtosis) // 2  # the more non-Gaussian half
    fast, seconds, iterations = None, 0.0, 0
    while iterations < args.fastica_max_iter:
        fast = run_ica(z, "fastica", 0, args.segment, tol=0.0, w_init=None if fast is None else fast.unmixing_white)
        seconds, iterations = seconds + fast.seconds, iterations + args.segment
        all_cos = match(reference.white, fast.unmixing_white)[1]
        agreement = all_cos[:half]
        print(f"FastICA {iterations} iterations, {seconds:.1f} s: min |cos| on the non-Gaussian half {agreement.min():.4f}")
        if agreement.min() > 0.99:
            break
    kurt = reference.kurtosis
    reached = agreement.min() > 0.99
    rows = [
        ("data", what),
        ("whitened dimensions k", str(whitener.k)),
        ("Picard-O (ortho, extended) to its convergence: time / iterations / converged (tol)",
         f"{picard.seconds:.1f} s / {picard.n_iter} / {picard.converged} ({picard.tol:g})"),
        ("FastICA (parallel, logcosh) until it matches Picard on the non-Gaussian half: time / iterations",
         f"{seconds:.1f} s / {iterations}" + ("" if reached else f" (**not reached** within {args.fastica_max_iter})")),
        ("**FastICA time / Picard time, equal quality** (target ≥ 3)",
         f"**{seconds / picard.seconds:.2f}x**" if reached else f"> {seconds / picard.seconds:.2f}x (FastICA never matched)"),
        ("matched \\|cos\\| on the non-Gaussian half: min / median", f"{agreement.min():.4f} / {np.median(agreement):.4f}"),
        ("matched \\|cos\\|, all components: min / median; above 0.99",
         f"{all_cos.min():.4f} / {np.median(all_cos):.4f}; {(all_cos > 0.99).sum()} of {len(all_cos)}"),
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
