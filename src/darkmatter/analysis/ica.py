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

Stability: ``ica.seeds`` restarts from different random rotations. Each component of the first
run is matched to the components of every other run by the Hungarian algorithm on
|cos(mixing directions)|; it is *stable* if every match exceeds ``ica.stable_threshold``.

Convergence: iterations and tolerance per run go into the metrics; a run that does not
converge is flagged there (and printed), never silently used as if it had.

Backends: python-picard (Picard-O, ``ortho=True, extended=True``) by default, scikit-learn
FastICA (parallel, logcosh) as the reference; ``bench/bench_ica.py`` compares them.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from darkmatter.data.activations import ActivationCache
from darkmatter.errors import NonFiniteError, UserError, cli

DEFAULT_TOL = {"picard": 1e-7, "fastica": 1e-4}


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


def run_ica(z: np.ndarray, backend: str, seed: int, max_iter: int, tol: float | None = None) -> Run:
    """Fit ICA on white data ``z`` [n, k] with one backend and seed."""
    tol = DEFAULT_TOL[backend] if tol is None else tol
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if backend == "picard":
            from picard import picard

            _, w, _, n_iter = picard(z.T, ortho=True, extended=True, whiten=False, max_iter=max_iter, tol=tol,
                                     random_state=seed, return_n_iter=True)
        elif backend == "fastica":
            from sklearn.decomposition import FastICA

            model = FastICA(n_components=z.shape[1], algorithm="parallel", fun="logcosh", whiten=False,
                            max_iter=max_iter, tol=tol, random_state=seed)
            model.fit(z)
            w, n_iter = model.components_, int(model.n_iter_)
        else:
            raise UserError(f"unknown ICA backend {backend!r}; allowed: picard, fastica")
    seconds = time.perf_counter() - start
    messages = [str(c.message) for c in caught if "converge" in str(c.message).lower()]
    gradient = None
    for message in messages:
        found = re.search(r"gradient norm\s*:\s*([0-9.eE+-]+)", message)
        if found:
            gradient = float(found.group(1).rstrip("."))
    if not np.isfinite(w).all():
        raise NonFiniteError(f"{backend} returned NaN/inf unmixing weights (seed {seed}); check the whitened data")
    return Run(np.asarray(w, dtype=np.float64), int(n_iter), not messages, tol, gradient, seconds)


@dataclass
class Components:
    """ICA components in activation space, sign-fixed and ordered (see module docstring)."""

    mixing: np.ndarray  # [k, d] rows a_j: what component j writes (activation units per unit source)
    unmixing: np.ndarray  # [k, d] rows u_j: s_j = u_j · (t − mean)
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
    unmixing *= sign[:, None]
    mixing *= sign[:, None]
    kurt = kurtosis(s, axis=0)
    order = np.argsort(-kurt)
    return Components(
        mixing=mixing[order], unmixing=unmixing[order], mean=whitener.mean,
        kurtosis=kurt[order], skew=skew(s, axis=0)[order],
        variance_share=(mixing[order] ** 2).sum(axis=1) / total_variance,
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
    components: Components
    runs: list[Run]
    match_cos: np.ndarray  # [seeds − 1, k] |cos| of each component's match in the other seeds
    stable: np.ndarray  # [k] bool
    reconstruction_fraction: float


def fit(z: np.ndarray, whitener: Whitener, total_variance: float, target_sq: float, cfg) -> ICAResult:
    """All seeds, stability and the reconstruction check on white data ``z``.

    ``target_sq`` is Σ‖t − μ‖² over the same tokens, for the empirical reconstruction fraction.
    """
    from tqdm.auto import tqdm

    runs, comps = [], []
    for i in tqdm(range(cfg.seeds), desc=f"ICA {cfg.backend} k={whitener.k}", unit="seed"):
        run = run_ica(z, cfg.backend, cfg.seed + i, cfg.max_iter, cfg.tol)
        runs.append(run)
        comps.append(to_components(run.unmixing_white, whitener, z, total_variance))
        if not run.converged:
            print(f"warning: ICA ({cfg.backend}, seed {cfg.seed + i}) did not converge in {run.n_iter} iterations")
    ref = comps[0]
    match_cos = np.array([match(ref.mixing, c.mixing)[1] for c in comps[1:]]).reshape(len(comps) - 1, whitener.k)
    stable = (match_cos > cfg.stable_threshold).all(axis=0)
    s = z @ (ref.unmixing @ whitener.basis * whitener.scale[None, :]).T  # sources of the fitted tokens
    written = np.einsum("nk,kl,nl->", s, ref.mixing @ ref.mixing.T, s)
    return ICAResult(ref, runs, match_cos, stable, float(written / target_sq))


def target_rows(cache: ActivationCache, max_tokens: int, seed: int) -> np.ndarray:
    """Non-special token ids to fit ICA on: all of them, or a sorted seeded subsample."""
    index = np.flatnonzero(~np.asarray(cache.special, dtype=bool))
    if len(index) > max_tokens:
        index = np.sort(np.random.default_rng(seed).choice(index, max_tokens, replace=False))
    return index


def ica_target(chunk, target: str, stats: dict):
    """The ICA target for a residual chunk: r, or r minus its ridge prediction from x."""
    import torch

    r = chunk.r.double()
    if target == "residual":
        return r
    coef = torch.as_tensor(stats["ridge_coef"], device=r.device)
    x = chunk.x.double() - torch.as_tensor(stats["shift_x"], device=r.device)
    return r - (x @ coef[:-1] + coef[-1] + torch.as_tensor(stats["shift_r"], device=r.device))


def whitened_target(sae, cache, index, whitener: Whitener, target: str, stats: dict, chunk_tokens: int) -> tuple[np.ndarray, float]:
    """z [n, k] for the tokens ``index`` and Σ‖t − μ‖² over them."""
    from darkmatter.analysis.stream import stream

    z = np.empty((len(index), whitener.k))
    target_sq, lo = 0.0, 0
    for chunk in stream(sae, cache.acts, index, chunk_tokens, desc="whitening"):
        t = ica_target(chunk, target, stats).cpu().numpy()
        z[lo : lo + len(t)] = whitener(t)
        target_sq += float(((t - whitener.mean) ** 2).sum())
        lo += len(t)
    return z, target_sq


def report(result: ICAResult, cfg, k: int, why: str, n_tokens: int, eigenvalues: np.ndarray) -> dict:
    from darkmatter.stats import summary

    comps = result.components
    return {
        "target": cfg.target,
        "backend": cfg.backend,
        "n_components": k,
        "n_components_reason": why,
        "pca_variance_fraction": float(eigenvalues[:k].sum() / eigenvalues.sum()),
        "reconstruction_fraction": result.reconstruction_fraction,
        "n_tokens": n_tokens,
        "seeds": cfg.seeds,
        "runs": [{"seed": cfg.seed + i, "n_iter": r.n_iter, "converged": r.converged, "tol": r.tol,
                  "gradient_norm_if_not_converged": r.gradient_norm, "seconds": r.seconds}
                 for i, r in enumerate(result.runs)],
        "all_converged": all(r.converged for r in result.runs),
        "stable_threshold": cfg.stable_threshold,
        "n_stable": int(result.stable.sum()),
        "stable_fraction": float(result.stable.mean()),
        "match_cos": summary(result.match_cos.min(axis=0)) if len(result.match_cos) else None,
        "source_kurtosis": summary(comps.kurtosis),
        "source_kurtosis_stable": summary(comps.kurtosis[result.stable]),
        "variance_share": summary(comps.variance_share),
    }


def plot(result: ICAResult, out_dir: Path) -> None:
    from darkmatter.figures import save_figure, subplots

    comps = result.components
    fig, ax = subplots(figsize=(4.2, 3.0))
    for mask, label, color in ((result.stable, "stable", "C0"), (~result.stable, "unstable", "C3")):
        ax.scatter(comps.variance_share[mask] * 100, comps.kurtosis[mask], s=10, color=color, label=f"{label} ({mask.sum()})")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel("share of the target's variance (%)")
    ax.set_ylabel("source excess kurtosis")
    ax.legend(fontsize=7)
    save_figure(fig, out_dir / "ica_components")


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.analysis.stream import latent_chunk_tokens
    from darkmatter.config import add_run_arguments, run_from_args
    from darkmatter.data.models import resolve_device
    from darkmatter.sae.io import check_compatible, load_sae

    parser = argparse.ArgumentParser(description="PCA-whiten the dark matter and run ICA (mixing directions, filters, stability).")
    add_run_arguments(parser)
    parser.add_argument("--sae", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--stats", type=Path, required=True, help="the residual stage's stats.npz")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--figures", type=Path, required=True)
    args = parser.parse_args(argv)
    run = run_from_args(args)
    cfg = run.ica
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
    sae = sae.to(resolve_device(run.subject.device))
    index = target_rows(cache, cfg.max_tokens, cfg.seed)
    chunk = latent_chunk_tokens(sae.cfg.d_sae, run.residual.latent_budget_mb << 20)
    z, target_sq = whitened_target(sae, cache, index, whitener, cfg.target, stats, chunk)
    result = fit(z, whitener, float(eigenvalues.sum()), target_sq, cfg)
    metrics = report(result, cfg, k, why, len(index), eigenvalues)
    comps = result.components
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "components.npz", mixing=comps.mixing, unmixing=comps.unmixing, mean=comps.mean,
             kurtosis=comps.kurtosis, skew=comps.skew, variance_share=comps.variance_share,
             stable=result.stable, match_cos=result.match_cos, pca_basis=whitener.basis)
    plot(result, args.figures)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps({key: metrics[key] for key in ("n_components", "all_converged", "n_stable", "stable_fraction",
                                                     "reconstruction_fraction")}, indent=2))


if __name__ == "__main__":
    main()
