"""PCA-whitening + ICA of the dark matter, with the geometry done right.

Notation. t ∈ R^d is the ICA target: the SAE residual r, or its nonlinear part r − (W x + b)
(``ica.target``). μ is its mean; V (d × k) holds the top-k eigenvectors of its covariance
and Λ (k × k) their eigenvalues, both from the residual stage's exact streamed moments.

- **Whitening:** z = K (t − μ) with K = Λ^{-1/2} Vᵀ, so Cov z = I.
- **ICA** on z (Picard-O or FastICA; both return an orthogonal W on white data): s = W z,
  sources with unit variance.
- **Unmixing filters** (rows of U = W K = W Λ^{-1/2} Vᵀ) *read* a component: s_j = u_j·(t − μ).
  Use them to compute a component's activation on new tokens.
- **Mixing directions** (columns of A = V Λ^{1/2} Wᵀ, stored as rows) are what a component
  *writes*: t − μ ≈ Σ_j s_j a_j. They live in activation space and are what is compared with
  SAE decoder rows. The un-whitening brings in Λ^{+1/2}; the seed's
  ``ica.mixing_.T @ pca.components_`` drops it, and filters and directions differ by Λ, so
  under anisotropic noise neither substitute points at the planted direction
  (``tests/test_ica.py``).
- **Sign:** each component is flipped so its source has positive skew (heavier tail
  positive), so "activates" means "large positive s_j".
- **Order:** by source excess kurtosis, descending.

Which tokens: the whitening (PCA of the train rows, from the residual stage) and every fit use
analysed tokens of the **train rows** only; the reported source statistics (kurtosis, and the
random-whitened-direction null it is compared with) use the **held-out rows**, which no fit has
seen. Sign and order are fit decisions, taken on the fit tokens.

Stability means more than restarts. ``ica.seeds`` restarts from other random rotations on the
same tokens (seed stability); ``ica.resamples`` refits on disjoint token samples of the train
rows (resampling stability: does the same component come back from other data?). Components are
matched to the reference fit (seed 0, first sample) by the Hungarian algorithm on |cos| of their
rows of W, i.e. in whitened space, where |cos| is not inflated by the anisotropy of activation
space (mixing directions of any two fits crowd into the top principal components). A component
is *stable* if every restart and every resample has it above ``ica.stable_threshold``; with one
seed and no resamples stability is *not measured* (``None``), never "all stable".

Convergence: iterations and tolerance per run go into the metrics; a run that does not
converge is flagged there (and printed), never silently used as if it had.

Backends: Picard-O (``ortho=True, extended=True``) in torch by default (``analysis/picard.py``;
on CUDA when there is one), python-picard (the same algorithm in numpy, the reference) and
scikit-learn FastICA (parallel, logcosh); ``bench/bench_ica.py`` compares them. All start from
the same seeded orthogonal matrix (python-picard's initialisation), so on well-posed data the two
Picards follow the same trajectory to ~1e-12.

Parallel fits: the restarts and resamples are independent, so on CPU they run in parallel worker
processes (joblib), one thread each: two one-thread fits at once beat one fit on two threads,
whose element-wise work does not scale across cores (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from darkmatter.data.activations import ActivationCache
from darkmatter.errors import NonFiniteError, UserError, cli

DEFAULT_TOL = {"picard": 1e-7, "python-picard": 1e-7, "fastica": 1e-4}
BACKENDS = tuple(DEFAULT_TOL)


@dataclass(frozen=True)
class Whitener:
    """z = ((t − mean) @ basis) / scale; basis [d, k] orthonormal, scale = √eigenvalues [k]."""

    mean: np.ndarray
    basis: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_pca(cls, mean: np.ndarray, eigenvalues: np.ndarray, eigenvectors: np.ndarray, k: int) -> Whitener:
        rank = int((eigenvalues > eigenvalues[0] * 1e-10).sum()) if eigenvalues[0] > 0 else 0
        if k > rank:
            raise UserError(
                f"ica.n_components {k} exceeds the rank {rank} of the target's covariance; "
                f"set ica.n_components to at most {rank}"
            )
        return cls(mean, eigenvectors[:, :k], np.sqrt(eigenvalues[:k]))

    @property
    def k(self) -> int:
        return len(self.scale)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        return ((np.asarray(t, dtype=np.float64) - self.mean) @ self.basis) / self.scale


def choose_k(eigenvalues: np.ndarray, cfg) -> tuple[int, str]:
    """The number of whitened components and why."""
    from darkmatter.analysis.residual import components_for

    if cfg.n_components != "auto":
        return int(cfg.n_components), "set in params"
    k = components_for(eigenvalues, cfg.auto_variance)
    if k > cfg.max_components:
        return cfg.max_components, f"capped at ica.max_components ({k} PCs reach {cfg.auto_variance:.0%} of the variance)"
    return k, f"fewest PCs reaching {cfg.auto_variance:.0%} of the variance"


@dataclass
class Run:
    """One ICA run on white data: W (k × k) with s = W z."""

    unmixing_white: np.ndarray
    n_iter: int
    converged: bool
    tol: float
    gradient_norm: float | None
    seconds: float


def initial_rotation(k: int, seed: int) -> np.ndarray:
    """python-picard's seeded start: a Gaussian k × k matrix, symmetrically orthogonalised."""
    w = np.random.RandomState(seed).normal(size=(k, k))
    values, vectors = np.linalg.eigh(w @ w.T)
    return (vectors / np.sqrt(values)) @ vectors.T @ w


def run_ica(z: np.ndarray, backend: str, seed: int, max_iter: int, tol: float | None = None,
            w_init: np.ndarray | None = None) -> Run:
    """Fit ICA on white data ``z`` [n, k] with one backend and seed (from ``w_init`` if given)."""
    if backend not in DEFAULT_TOL:
        raise UserError(f"unknown ICA backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    tol = DEFAULT_TOL[backend] if tol is None else tol
    import torch  # every backend is imported before the clock starts: ``seconds`` is the fit's time
    from picard import picard
    from sklearn.decomposition import FastICA

    from darkmatter.analysis.picard import picard_o

    w0 = initial_rotation(z.shape[1], seed) if w_init is None and backend != "fastica" else w_init
    start = time.perf_counter()
    gradient = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if backend == "picard":
            device = "cuda" if torch.cuda.is_available() else "cpu"
            result = picard_o(torch.as_tensor(np.ascontiguousarray(z.T), dtype=torch.float64, device=device),
                              torch.as_tensor(w0, dtype=torch.float64, device=device), max_iter=max_iter, tol=tol)
            w, n_iter = result.unmixing.cpu().numpy(), result.n_iter
            if not result.converged:
                gradient = result.gradient_norm
                warnings.warn(f"Picard did not converge. Final gradient norm : {gradient:.4g}.")
        elif backend == "python-picard":
            _, w, _, n_iter = picard(z.T, ortho=True, extended=True, whiten=False, max_iter=max_iter, tol=tol,
                                     w_init=w0, return_n_iter=True)
        else:
            model = FastICA(n_components=z.shape[1], algorithm="parallel", fun="logcosh", whiten=False,
                            max_iter=max_iter, tol=tol, w_init=w0, random_state=seed)
            model.fit(z)
            w, n_iter = model.components_, int(model.n_iter_)
    seconds = time.perf_counter() - start
    messages = [str(c.message) for c in caught if "converge" in str(c.message).lower()]
    for message in messages:
        found = re.search(r"gradient norm\s*:\s*([0-9.eE+-]+)", message)
        if found and gradient is None:
            gradient = float(found.group(1).rstrip("."))
    if not np.isfinite(w).all():
        raise NonFiniteError(f"{backend} returned NaN/inf unmixing weights (seed {seed}); check the whitened data")
    return Run(np.asarray(w, dtype=np.float64), int(n_iter), not messages, tol, gradient, seconds)


@dataclass
class Components:
    """ICA components in activation space, sign-fixed and ordered (see module docstring)."""

    mixing: np.ndarray  # [k, d] rows a_j: what component j writes (activation units per unit source)
    unmixing: np.ndarray  # [k, d] rows u_j: s_j = u_j · (t − mean)
    white: np.ndarray  # [k, k] rows of W (sign-fixed, ordered): s = W z; matched across fits
    mean: np.ndarray  # [d]
    kurtosis: np.ndarray  # [k] excess kurtosis of s_j on the fitted tokens
    skew: np.ndarray  # [k] (≥ 0 after the sign fix)
    variance_share: np.ndarray  # [k] ‖a_j‖² / total variance of t

    def sources(self, t: np.ndarray) -> np.ndarray:
        return (np.asarray(t, dtype=np.float64) - self.mean) @ self.unmixing.T

    def directions(self) -> np.ndarray:
        """Unit-norm mixing directions [k, d]."""
        return self.mixing / np.linalg.norm(self.mixing, axis=1, keepdims=True)


def to_components(w: np.ndarray, whitener: Whitener, z: np.ndarray, total_variance: float) -> Components:
    """Map white-space unmixing ``w`` to activation-space filters and directions."""
    from scipy.stats import kurtosis, skew

    unmixing = (w / whitener.scale[None, :]) @ whitener.basis.T  # W Λ^{-1/2} Vᵀ
    mixing = (np.linalg.pinv(w).T * whitener.scale[None, :]) @ whitener.basis.T  # rows of V Λ^{1/2} W⁻ᵀ
    s = z @ w.T
    sign = np.where(skew(s, axis=0) < 0, -1.0, 1.0)
    s *= sign
    kurt = kurtosis(s, axis=0)
    order = np.argsort(-kurt)
    return Components(
        mixing=(mixing * sign[:, None])[order], unmixing=(unmixing * sign[:, None])[order],
        white=(w * sign[:, None])[order], mean=whitener.mean,
        kurtosis=kurt[order], skew=skew(s, axis=0)[order],
        variance_share=((mixing[order]) ** 2).sum(axis=1) / total_variance,
    )


def abs_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|cos| between the rows of ``a`` and the rows of ``b``."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.abs(a @ b.T)


def match(reference: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of rows by |cos|: for each reference row, its partner and the |cos|."""
    from scipy.optimize import linear_sum_assignment

    sim = abs_cos(reference, other)
    rows, cols = linear_sum_assignment(-sim)
    partner = np.empty(len(reference), dtype=np.int64)
    partner[rows] = cols
    return partner, sim[np.arange(len(reference)), partner]


@dataclass
class ICAResult:
    components: Components  # the reference fit: seed 0 on the first sample
    runs: list[Run]  # seed restarts on the first sample, then one fit per resample
    seed_match: np.ndarray  # [seeds − 1, k] |cos| (rows of W) of each component's match in each restart
    resample_match: np.ndarray  # [resamples, k] the same in each fit on disjoint tokens
    stable: np.ndarray | None  # [k] bool; None when stability was not measured
    others: list[Components]  # the other restarts, then the resamples: compare checks its verdicts on each

    @property
    def n_seeds(self) -> int:
        return len(self.seed_match) + 1


def _run_one_thread(z: np.ndarray, backend: str, seed: int, max_iter: int, tol: float | None) -> Run:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    with threadpool_limits(1):
        return run_ica(z, backend, seed, max_iter, tol)


def run_parallel(jobs: list[tuple[np.ndarray, int]], cfg, desc: str) -> list[Run]:
    """``run_ica`` on each (data, seed) job, in up to ``os.cpu_count()`` one-thread worker processes."""
    import os

    import torch
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    on_gpu = cfg.backend == "picard" and torch.cuda.is_available()
    n_jobs = 1 if on_gpu else max(1, min(len(jobs), os.cpu_count() or 1))
    if n_jobs == 1:
        return [run_ica(z, cfg.backend, seed, cfg.max_iter, cfg.tol) for z, seed in tqdm(jobs, desc=desc, unit="fit")]
    results = Parallel(n_jobs=n_jobs, return_as="generator")(
        delayed(_run_one_thread)(z, cfg.backend, seed, cfg.max_iter, cfg.tol) for z, seed in jobs)
    return list(tqdm(results, total=len(jobs), desc=desc, unit="fit"))


def fit(samples: list[np.ndarray], whitener: Whitener, total_variance: float, cfg) -> ICAResult:
    """All restarts on ``samples[0]``, one fit on each further (disjoint) sample, and stability.

    ``samples`` are whitened data [n_i, k]: the reference sample first, then the resamples.
    """
    jobs = [(samples[0], cfg.seed + i) for i in range(cfg.seeds)] + [(z, cfg.seed) for z in samples[1:]]
    runs = run_parallel(jobs, cfg, desc=f"ICA {cfg.backend} k={whitener.k}")
    comps = []
    for (z, seed), run in zip(jobs, runs):
        comps.append(to_components(run.unmixing_white, whitener, z, total_variance))
        if not run.converged:
            print(f"warning: ICA ({cfg.backend}, seed {seed}, {len(z)} tokens) did not converge in {run.n_iter} iterations")
    ref = comps[0]
    cos = np.array([match(ref.white, c.white)[1] for c in comps[1:]]).reshape(len(comps) - 1, whitener.k)
    seed_match, resample_match = cos[: cfg.seeds - 1], cos[cfg.seeds - 1:]
    stable = (cos > cfg.stable_threshold).all(axis=0) if len(cos) else None
    return ICAResult(ref, runs, seed_match, resample_match, stable, comps[1:])


def fit_samples(train_tokens: np.ndarray, max_tokens: int, resamples: int, seed: int) -> list[np.ndarray]:
    """Disjoint seeded samples of the train tokens: ``max_tokens`` for the reference fit, then
    ``resamples`` more of equal size (smaller if the train rows hold too few tokens; the
    metrics record the sizes). Each sample is sorted, so reads from the cache are sequential."""
    order = np.random.default_rng(seed).permutation(train_tokens)
    first = min(max_tokens, len(order))
    out = [np.sort(order[:first])]
    if resamples:
        size = min(first, (len(order) - first) // resamples)
        if size < 2:
            raise UserError(f"the train rows hold {len(order)} analysed tokens, too few for {resamples} resamples "
                            f"besides the {first}-token fit; lower ica.max_tokens or ica.resamples, or cache more tokens")
        out += [np.sort(order[first + i * size : first + (i + 1) * size]) for i in range(resamples)]
    return out


def ica_target(chunk, target: str, stats: dict):
    """The ICA target for a residual chunk: r, or r minus its ridge prediction from x."""
    import torch

    r = chunk.r.double()
    if target == "residual":
        return r
    coef = torch.as_tensor(stats["ridge_coef"], device=r.device)
    x = chunk.x.double() - torch.as_tensor(stats["shift_x"], device=r.device)
    return r - (x @ coef[:-1] + coef[-1] + torch.as_tensor(stats["shift_r"], device=r.device))


def whitened_target(sae, cache, index, whitener: Whitener, target: str, stats: dict, chunk_tokens: int,
                    desc: str = "whitening") -> np.ndarray:
    """z [n, k] for the tokens ``index``."""
    from darkmatter.analysis.stream import stream

    z = np.empty((len(index), whitener.k))
    lo = 0
    for chunk in stream(sae, cache.acts, index, chunk_tokens, desc=desc):
        t = ica_target(chunk, target, stats).cpu().numpy()
        z[lo : lo + len(t)] = whitener(t)
        lo += len(t)
    return z


@dataclass
class HeldoutStatistics:
    """Source statistics on the held-out rows (no fit saw them)."""

    kurtosis: np.ndarray  # [k] source excess kurtosis, held-out analysed tokens
    random_kurtosis: np.ndarray  # [n] s = q·z for random unit q in whitened space: the null
    kurtosis_other_way: np.ndarray  # [k] with the outliers included if excluded, and vice versa
    n_tokens: int
    n_other_way: int


def source_kurtosis(z: np.ndarray, white: np.ndarray) -> np.ndarray:
    """Excess kurtosis of the sources s = W z on the tokens ``z``."""
    from scipy.stats import kurtosis

    return kurtosis(z @ white.T, axis=0)


def heldout_statistics(z_nonspecial: np.ndarray, classes: np.ndarray, excluded: bool, white: np.ndarray,
                       n_random: int, seed: int) -> HeldoutStatistics:
    """Kurtosis of the sources, and of random whitened projections (the null), on held-out tokens.

    ``z_nonspecial`` is z of every held-out non-special token and ``classes`` their token classes.
    The "other way" puts the high-norm outliers back in when they are excluded, and takes them
    out when they are not, so the paper can say whether components depend on them.
    """
    from scipy.stats import kurtosis

    from darkmatter.analysis.tokens import ORDINARY, analysed
    from darkmatter.stats import random_unit_directions

    keep = analysed(classes, excluded)
    other = np.ones_like(keep) if excluded else classes == ORDINARY
    z = z_nonspecial[keep]
    random = random_unit_directions(n_random, white.shape[1], seed)
    return HeldoutStatistics(
        kurtosis=source_kurtosis(z, white), random_kurtosis=kurtosis(z @ random.T, axis=0),
        kurtosis_other_way=kurtosis(z_nonspecial[other] @ white.T, axis=0),
        n_tokens=int(keep.sum()), n_other_way=int(other.sum()),
    )


def report(result: ICAResult, held: HeldoutStatistics, cfg, k: int, why: str, sizes: list[int],
           eigenvalues: np.ndarray, outliers_excluded: bool) -> dict:
    from darkmatter.stats import summary

    comps = result.components
    stable = result.stable

    def weakest(match):  # each component's worst match over the fits
        return summary(match.min(axis=0)) if len(match) else None

    return {
        "target": cfg.target,
        "backend": cfg.backend,
        "rows": {"fits": "train rows (analysed tokens)", "statistics": "held-out rows (analysed tokens)"},
        "n_components": k,
        "n_components_reason": why,
        "pca_variance_fraction": float(eigenvalues[:k].sum() / eigenvalues.sum()),
        "n_tokens": sizes[0],
        "resample_tokens": sizes[1:],
        "n_tokens_heldout": held.n_tokens,
        "seeds": cfg.seeds,
        "resamples": cfg.resamples,
        "runs": [{"seed": cfg.seed + i if i < cfg.seeds else cfg.seed, "sample": max(0, i - cfg.seeds + 1),
                  "n_iter": r.n_iter, "converged": r.converged, "tol": r.tol,
                  "gradient_norm_if_not_converged": r.gradient_norm, "seconds": r.seconds}
                 for i, r in enumerate(result.runs)],
        "all_converged": all(r.converged for r in result.runs),
        "stability": {
            "measured": stable is not None,
            "threshold": cfg.stable_threshold,
            "space": "rows of W (whitened)",
            "seed_match": weakest(result.seed_match),
            "resample_match": weakest(result.resample_match),
            "n_stable_seeds": int((result.seed_match > cfg.stable_threshold).all(axis=0).sum()) if len(result.seed_match) else None,
            "n_stable_resamples": (int((result.resample_match > cfg.stable_threshold).all(axis=0).sum())
                                   if len(result.resample_match) else None),
        },
        "n_stable": int(stable.sum()) if stable is not None else None,
        "stable_fraction": float(stable.mean()) if stable is not None else None,
        "source_kurtosis": summary(held.kurtosis),
        "source_kurtosis_fit": summary(comps.kurtosis),
        "random_whitened_kurtosis": summary(held.random_kurtosis),
        "source_kurtosis_stable": summary(held.kurtosis[stable]) if stable is not None else None,
        "outliers": {
            "excluded": outliers_excluded,
            "n_tokens_other_way": held.n_other_way,
            "source_kurtosis_other_way": summary(held.kurtosis_other_way),
        },
        "variance_share": summary(comps.variance_share),
    }


def plot(result: ICAResult, held: HeldoutStatistics, out_dir: Path) -> None:
    from darkmatter.figures import save_figure, subplots

    comps = result.components
    fig, ax = subplots(figsize=(4.2, 3.0))
    if result.stable is None:
        groups = ((np.ones(len(comps.kurtosis), bool), "stability not measured", "C7"),)
    else:
        groups = ((result.stable, "stable", "C0"), (~result.stable, "unstable", "C3"))
    for mask, label, color in groups:
        ax.scatter(comps.variance_share[mask] * 100, held.kurtosis[mask], s=10, color=color, label=f"{label} ({mask.sum()})")
    ax.axhline(float(np.median(held.random_kurtosis)), color="grey", linestyle=":", linewidth=0.8,
               label="random whitened direction (median)")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel("share of the target's variance (%)")
    ax.set_ylabel("source excess kurtosis (held-out rows)")
    ax.legend(fontsize=7)
    save_figure(fig, out_dir / "ica_components")


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.analysis.stream import latent_chunk_tokens
    from darkmatter.analysis.tokens import ORDINARY, OUTLIER, analysed, heldout_token_mask
    from darkmatter.config import add_run_arguments, run_from_args
    from darkmatter.sae.io import check_compatible, load_sae, to_device

    parser = argparse.ArgumentParser(description="PCA-whiten the dark matter and run ICA (mixing directions, filters, stability).")
    add_run_arguments(parser)
    parser.add_argument("--sae", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--stats", type=Path, required=True, help="the residual stage's stats.npz")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--figures", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=None, help="override ica.seeds (the SAE axes' chain)")
    parser.add_argument("--resamples", type=int, default=None, help="override ica.resamples (the SAE axes' chain)")
    args = parser.parse_args(argv)
    run = run_from_args(args)
    overrides = {key: value for key, value in (("seeds", args.seeds), ("resamples", args.resamples)) if value is not None}
    cfg = dataclasses.replace(run.ica, **overrides)
    if not args.stats.exists():
        raise UserError(f"{args.stats} not found; run the residual stage first (`dvc repro residual@{run.name}`)")
    stats = dict(np.load(args.stats))
    prefix = "pca_residual" if cfg.target == "residual" else "pca_nonlinear"
    eigenvalues, eigenvectors = stats[f"{prefix}_values"], stats[f"{prefix}_vectors"]
    mean = stats["mean_residual" if cfg.target == "residual" else "mean_nonlinear"]
    k, why = choose_k(eigenvalues, cfg)
    whitener = Whitener.from_pca(mean, eigenvalues, eigenvectors, k)

    cache = ActivationCache.open(args.cache)
    sae = load_sae(args.sae)
    check_compatible(sae, cache)
    sae = to_device(sae, run.subject.device)
    heldout = heldout_token_mask(cache.meta["n_rows"], cache.meta["context_length"], run.sae.heldout_fraction)
    excluded = bool(stats["outliers_excluded"])
    classes = stats["token_class"]
    train_tokens = np.flatnonzero(analysed(classes, excluded) & ~heldout)
    chunk = latent_chunk_tokens(sae.cfg.d_sae, run.residual.latent_budget_mb << 20)
    samples = fit_samples(train_tokens, cfg.max_tokens, cfg.resamples, cfg.seed)
    z_samples = [whitened_target(sae, cache, index, whitener, cfg.target, stats, chunk, desc=f"whitening sample {i}")
                 for i, index in enumerate(samples)]
    result = fit(z_samples, whitener, float(eigenvalues.sum()), cfg)
    held_tokens = np.flatnonzero(np.isin(classes, (OUTLIER, ORDINARY)) & heldout)
    z_held = whitened_target(sae, cache, held_tokens, whitener, cfg.target, stats, chunk, desc="held-out rows")
    held = heldout_statistics(z_held, classes[held_tokens], excluded, result.components.white,
                              run.residual.n_random_directions, cfg.seed)
    metrics = report(result, held, cfg, k, why, [len(x) for x in samples], eigenvalues, excluded)
    comps = result.components
    z_analysed = z_held[analysed(classes[held_tokens], excluded)]
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "components.npz", mixing=comps.mixing, unmixing=comps.unmixing, white=comps.white, mean=comps.mean,
             kurtosis_fit=comps.kurtosis, kurtosis=held.kurtosis, kurtosis_other_way=held.kurtosis_other_way,
             random_whitened_kurtosis=held.random_kurtosis, skew=comps.skew, variance_share=comps.variance_share,
             stability_measured=np.array(result.stable is not None),
             stable=result.stable if result.stable is not None else np.zeros(k, bool),
             seed_match=result.seed_match, resample_match=result.resample_match,
             pca_basis=whitener.basis, pca_scale=whitener.scale,
             # every other fit (restarts, then resamples), so compare can check its verdicts on each
             other_fits=np.array([f"seed {cfg.seed + i}" for i in range(1, cfg.seeds)]
                                 + [f"resample {i}" for i in range(1, cfg.resamples + 1)], dtype=str),
             other_mixing=np.array([c.mixing for c in result.others]).reshape(len(result.others), k, len(comps.mean)),
             other_kurtosis=np.array([source_kurtosis(z_analysed, c.white) for c in result.others]).reshape(len(result.others), k))
    plot(result, held, args.figures)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps({key: metrics[key] for key in ("n_components", "all_converged", "n_stable", "stable_fraction")}
                     | {"stability": metrics["stability"]}, indent=2))


if __name__ == "__main__":
    main()
