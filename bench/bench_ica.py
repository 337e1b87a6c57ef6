"""ICA backends on the same whitened data: Picard-O in torch (the stage's), python-picard, FastICA.

    python bench/bench_ica.py [--k 64] [--tokens 65536] [--synthetic]

Data: the default run's dark matter, whitened exactly as the ICA stage does (needs
``dvc repro residual@9`` first), or with ``--synthetic`` the planted-source data of
``tests/test_ica.py`` scaled up. Both backends get the same z and the same seed.

Equal quality, not equal iterations: Picard (torch, the stage's backend) runs to its own
convergence (tol 1e-7, the stage's setting), and so does python-picard from the same start: the
same algorithm, so on well-posed data the same trajectory; where the optimum is not unique
(the real dark matter: few components are stable across restarts) round-off sends them to
different optima of equal contrast, so the table gives both contrasts and, as the yardstick for
their agreement, the agreement of two restarts of the torch Picard. The compared set is the *identifiable* part of Picard's solution: the components that a restart
of the same solver from another start (seed 1) finds again at |cos| > 0.99 (Hungarian-matched
rows of the unmixing matrices in whitened space, where the ICA stage matches fits). A component
that two runs of one solver do not agree on is not a solution another solver can be asked to
reproduce: on the real dark matter most components are near-Gaussian and rotate freely among
themselves; on the planted data every component is identifiable. The more non-Gaussian half of
Picard's components (source kurtosis above the median), the set of earlier versions, is reported
too.

**Time to the same solution**, measured the same way for both solvers: the first iteration count
at which the solver's iterate matches Picard's converged solution on the compared set (Picard's
iterates through ``picard_o``'s callback; FastICA's by running it in segments of ``--segment``
iterations, each continuing from the last unmixing matrix, which is the same trajectory since the
parallel FastICA update is stateless), then one uninterrupted fit of exactly that many
iterations, timed. Their ratio is the target (≥ 3). Picard's time to its own convergence (tol
1e-7, what the stage runs) is reported next to it. Where nothing is identifiable, a second bar:
FastICA's time until Picard's own loss (the log-cosh contrast, with the signs the extended rule
gives Picard's solution, FastICA's rows matched to its rows) comes within ``--loss-tol`` per
component of the torch Picard's, against Picard's time to
convergence. If FastICA never gets there within ``--fastica-max-iter`` iterations, the table says
so.
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


def extended_signs(z: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The extended rule's sign of each row of ``w``: +1 super-, −1 sub-Gaussian (as Picard-O)."""
    s = z @ w.T
    psi = np.tanh(s)
    return np.sign((1 - psi**2).mean(0) * (s**2).mean(0) - (psi * s).mean(0))


def contrast(z: np.ndarray, w: np.ndarray, signs: np.ndarray | None = None) -> float:
    """Picard-O's loss at ``w``, per component: mean_i sign_i E[log cosh s_i]; lower is better. With
    ``signs`` (of another solution, rows of ``w`` matched to its rows) the signs stay fixed: the
    sign-adaptive loss is not comparable across solutions whose sign patterns differ (an
    unconverged W that makes components look sub-Gaussian scores lower than the optimum)."""
    signs = extended_signs(z, w) if signs is None else signs
    s = z @ w.T
    return float(np.mean(signs * (np.abs(s) + np.log1p(np.exp(-2 * np.abs(s))) - np.log(2)).mean(0)))


def picard_iterates(z: np.ndarray, max_iter: int) -> list[np.ndarray]:
    """The stage's Picard fit (seed 0, its tolerance) as the unmixing matrix after each iteration."""
    import torch

    from darkmatter.analysis.ica import DEFAULT_TOL, initial_rotation
    from darkmatter.analysis.picard import picard_o

    iterates: list[np.ndarray] = []
    picard_o(torch.as_tensor(np.ascontiguousarray(z.T), dtype=torch.float64),
             torch.as_tensor(initial_rotation(z.shape[1], 0), dtype=torch.float64), max_iter=max_iter,
             tol=DEFAULT_TOL["picard"], callback=lambda n, w: iterates.append(w.numpy().copy()))
    return iterates


def first_match(iterates: list[np.ndarray], reference: np.ndarray, compared: np.ndarray) -> int | None:
    """Iterations after which the first iterate matches ``reference`` at |cos| > 0.99 on ``compared``."""
    if not compared.any():
        return None
    return next((n + 1 for n, w in enumerate(iterates) if match(reference, w)[1][compared].min() > 0.99), None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--run", default="gemma-3-270m-l9", help="a run built by dvc repro")
    parser.add_argument("--max-iter", type=int, default=1000, help="Picard's cap")
    parser.add_argument("--fastica-max-iter", type=int, default=3000)
    parser.add_argument("--segment", type=int, default=10, help="FastICA iterations between agreement checks")
    parser.add_argument("--loss-tol", type=float, default=1e-5,
                        help="per-component loss gap within which FastICA counts as reaching Picard's optimum")
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--parallel", type=int, default=0,
                        help="also time this many seed restarts: one after another vs the ICA stage's parallel workers")
    args = parser.parse_args()

    z, whitener, total, what = synthetic_data(args.k, args.tokens) if args.synthetic else real_data(args.k, args.tokens, args.run)
    picard = run_ica(z, "picard", 0, args.max_iter)
    reference = to_components(picard.unmixing_white, whitener, z, total)  # rows ordered by kurtosis
    half = len(reference.kurtosis) // 2  # the more non-Gaussian half
    numpy_picard = run_ica(z, "python-picard", 0, args.max_iter)
    restart = run_ica(z, "picard", 1, args.max_iter)
    numpy_cos = match(reference.white, numpy_picard.unmixing_white)[1]
    restart_cos = match(reference.white, restart.unmixing_white)[1]
    identifiable = restart_cos > 0.99  # the components two Picard starts agree on (rows ordered by kurtosis)
    reference_signs = extended_signs(z, reference.white)
    target_loss = contrast(z, reference.white, reference_signs) + args.loss_tol
    iterates = picard_iterates(z, args.max_iter)
    fast, seconds, iterations, cos_time, loss_time = None, 0.0, 0, None, None
    half_time = None
    while iterations < args.fastica_max_iter and (cos_time is None or loss_time is None):
        fast = run_ica(z, "fastica", 0, args.segment, tol=0.0, w_init=None if fast is None else fast.unmixing_white)
        seconds, iterations = seconds + fast.seconds, iterations + args.segment
        partner, all_cos = match(reference.white, fast.unmixing_white)
        agreement = all_cos[identifiable]
        loss = contrast(z, fast.unmixing_white[partner], reference_signs)  # rows in the reference's order
        print(f"FastICA {iterations} iterations, {seconds:.1f} s: min |cos| on the {identifiable.sum()} identifiable "
              f"components {agreement.min(initial=1.0):.4f}, on the non-Gaussian half {all_cos[:half].min():.4f}, "
              f"Picard's loss {loss:.6f} (target {target_loss:.6f})")
        if cos_time is None and identifiable.any() and agreement.min() > 0.99:
            cos_time = (seconds, iterations)
        if half_time is None and all_cos[:half].min() > 0.99:
            half_time = (seconds, iterations)
        if loss_time is None and loss <= target_loss:
            loss_time = (seconds, iterations)
    kurt = reference.kurtosis

    def aligned_loss(w: np.ndarray) -> float:
        return contrast(z, w[match(reference.white, w)[0]], reference_signs)

    def same_solution(picard_n: int | None, fast_reached: tuple[float, int] | None) -> tuple[str, str]:
        """Time to the same solution, both solvers alike: one uninterrupted fit of exactly the
        iterations after which the solver's iterate first reached it (FastICA: at a segment boundary)."""
        if picard_n is None:
            return "n/a", "n/a (no identifiable components)"
        picard_s = run_ica(z, "picard", 0, picard_n, tol=0.0).seconds
        if fast_reached is None:
            return (f"{picard_s:.2f} s ({picard_n} iterations) / not reached in {iterations} iterations ({seconds:.1f} s)",
                    f"> {seconds / picard_s:.1f}x (FastICA never matched)")
        fast_s = run_ica(z, "fastica", 0, fast_reached[1], tol=0.0).seconds
        return (f"{picard_s:.2f} s ({picard_n} iterations) / {fast_s:.2f} s ({fast_reached[1]} iterations)",
                f"**{fast_s / picard_s:.2f}x**")

    same_identifiable = same_solution(first_match(iterates, reference.white, identifiable), cos_time)
    same_half = same_solution(first_match(iterates, reference.white, np.arange(len(kurt)) < half), half_time)
    same_loss = same_solution(next((n + 1 for n, w in enumerate(iterates) if aligned_loss(w) <= target_loss), None),
                              loss_time)

    def to_equal(reached, what):
        if reached is None:
            return (f"{seconds:.1f} s / {iterations} (**not reached**)",
                    f"> {seconds / picard.seconds:.2f}x (FastICA never {what})")
        return f"{reached[0]:.1f} s / {reached[1]}", f"**{reached[0] / picard.seconds:.2f}x**"

    cos_row = to_equal(cos_time, "matched")
    kurt_id = kurt[identifiable]
    rows = [
        ("data", what),
        ("whitened dimensions k", str(whitener.k)),
        ("**Picard-O in torch** (ortho, extended; the stage's) to its convergence: time / iterations / converged (tol)",
         f"{picard.seconds:.1f} s / {picard.n_iter} / {picard.converged} ({picard.tol:g})"),
        ("python-picard, same start, to its convergence: time / iterations / converged",
         f"{numpy_picard.seconds:.1f} s / {numpy_picard.n_iter} / {numpy_picard.converged}"),
        ("**python-picard time / torch Picard time**", f"**{numpy_picard.seconds / picard.seconds:.2f}x**"),
        ("Picard's loss at convergence (per component; lower is better): torch / python-picard / torch restart (seed 1)",
         " / ".join(f"{contrast(z, run.unmixing_white):.6f}" for run in (picard, numpy_picard, restart))),
        ("matched \\|cos\\| torch vs python-picard: non-Gaussian half min / median; all components above 0.99",
         f"{numpy_cos[:half].min():.4f} / {np.median(numpy_cos[:half]):.4f}; {(numpy_cos > 0.99).sum()} of {len(numpy_cos)}"),
        ("yardstick, torch seed 0 vs seed 1: non-Gaussian half min / median; all components above 0.99",
         f"{restart_cos[:half].min():.4f} / {np.median(restart_cos[:half]):.4f}; {(restart_cos > 0.99).sum()} of {len(restart_cos)}"),
        ("identifiable components (a Picard restart finds them at \\|cos\\| > 0.99): count; their source kurtosis min / median",
         f"{identifiable.sum()} of {len(identifiable)}"
         + (f"; {kurt_id.min():.2f} / {np.median(kurt_id):.2f}" if identifiable.any() else "")),
        ("FastICA (parallel, logcosh) in segments until it matches Picard on the identifiable components (\\|cos\\| > 0.99): "
         "time / iterations", cos_row[0] if identifiable.any() else "no identifiable components"),
        ("time to the same solution on the identifiable components (the first iterate matching Picard's converged one, "
         "then one uninterrupted fit of that many iterations): Picard / FastICA", same_identifiable[0]),
        ("**FastICA time / Picard time, same solution** (target ≥ 3)", same_identifiable[1]),
        ("the same on the non-Gaussian half: Picard / FastICA; ratio", f"{same_half[0]}; {same_half[1]}"),
        ("FastICA time to the same solution / Picard time to its convergence (tol 1e-7)",
         cos_row[1] if identifiable.any() else "n/a"),
        (f"time until Picard's loss (its solution's signs, rows matched) is within {args.loss_tol:g} of its optimum, "
         "both solvers alike: Picard / FastICA", same_loss[0]),
        ("**FastICA time / Picard time, same loss**", same_loss[1]),
        ("FastICA's last fit, matched \\|cos\\| on the identifiable components: min / median",
         f"{agreement.min():.4f} / {np.median(agreement):.4f}" if identifiable.any() else "n/a"),
        ("FastICA's last fit, matched \\|cos\\| on the non-Gaussian half: min / median",
         f"{all_cos[:half].min():.4f} / {np.median(all_cos[:half]):.4f}"),
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
