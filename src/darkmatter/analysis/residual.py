"""The dark matter: r = x − SAE(x), streamed once over the whole activation cache.

Works for any SAELens ``SAE`` whose ``d_in`` and hook match the cache (checked before any
compute). One pass accumulates float64 sufficient statistics; every number below is computed
exactly from them, so nothing N × d_sae or N × d is ever held:

- **Dark-matter fraction** = SAELens's FVU, Σ‖r‖² / Σ‖x − x̄‖², on the SAE's held-out rows
  (the headline; it matches ``sae_eval``) and on all rows, each with and without special
  tokens; per-token error norms ‖r‖ and error-norm fractions ‖r‖/‖x‖.
- **Gaussianity**: per-dimension excess kurtosis of x and r (with and without special
  tokens), and of x and r projected onto random unit directions, the Gaussian-projection
  baseline.
- **Linear predictability** (Engels et al. 2024): second moments of [x, 1] and r on the train
  and held-out rows give the ridge fit r ≈ W x + b on train rows and its held-out R² in closed
  form. The dark matter splits into a linearly predictable part, a nonlinear part and its
  mean.
- **PCA spectra** of r and of the nonlinear part r − (W x + b), from the same moments; the ICA
  stage whitens with them.
- **SAE latents**: firing frequency and power sums per feature, from the non-zero entries
  only (the kurtosis gap needs them; the seed's dense N × d_sae kurtosis does not fit at 1M).

Special tokens (BOS/EOS/PAD and position 0, |x| ~ 1e5) are excluded from everything except the
"with special" numbers: kept in, they would be the only thing PCA and kurtosis see.

Memory: tokens go through the SAE in chunks (:mod:`darkmatter.analysis.stream`) so the latents
stay under ``residual.latent_budget_mb`` at any width (the tests measure the peak at width 65,536).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from darkmatter.analysis.stream import latent_chunk_tokens, stream
from darkmatter.data.activations import ActivationCache
from darkmatter.data.split import row_tokens, split_rows
from darkmatter.errors import UserError, cli
from darkmatter.sae.io import check_compatible, load_sae
from darkmatter.stats import random_unit_directions, summary

@dataclass
class PowerSums:
    """Per-column sums of powers 1..4 around a fixed shift, for means, variances and kurtosis."""

    shift: np.ndarray
    n: int = 0
    sums: np.ndarray = field(default=None)  # [4, d]

    def __post_init__(self):
        if self.sums is None:
            self.sums = np.zeros((4, len(self.shift)))

    def add(self, values) -> None:
        import torch

        y = values.double() - torch.as_tensor(self.shift, device=values.device)
        power = y.clone()
        for p in range(4):
            self.sums[p] += power.sum(dim=0).cpu().numpy()
            if p < 3:
                power *= y
        self.n += len(y)

    def mean(self) -> np.ndarray:
        return self.shift + self.sums[0] / self.n

    def variance(self) -> np.ndarray:
        m1, m2 = self.sums[0] / self.n, self.sums[1] / self.n
        return m2 - m1**2

    def excess_kurtosis(self) -> np.ndarray:
        return excess_kurtosis_from_sums(self.sums, self.n)


def excess_kurtosis_from_sums(sums: np.ndarray, n: int) -> np.ndarray:
    """Excess kurtosis (Gaussian = 0) from raw power sums [Σy, Σy², Σy³, Σy⁴]; NaN if constant."""
    m1, m2, m3, m4 = (s / n for s in sums)
    var = m2 - m1**2
    central4 = m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(var > 0, central4 / np.where(var > 0, var, 1) ** 2 - 3.0, np.nan)


@dataclass
class JointMoments:
    """Σ x̃x̃ᵀ, Σ x̃rᵀ, Σ rrᵀ with x̃ = [x − shift_x, 1] and r − shift_r, for ridge and PCA."""

    shift_x: np.ndarray
    shift_r: np.ndarray
    n: int = 0
    sxx: np.ndarray = field(default=None)
    sxr: np.ndarray = field(default=None)
    srr: np.ndarray = field(default=None)

    def __post_init__(self):
        d_x, d_r = len(self.shift_x), len(self.shift_r)
        self.sxx = np.zeros((d_x + 1, d_x + 1)) if self.sxx is None else self.sxx
        self.sxr = np.zeros((d_x + 1, d_r)) if self.sxr is None else self.sxr
        self.srr = np.zeros((d_r, d_r)) if self.srr is None else self.srr

    def add(self, x, r) -> None:
        import torch

        xt = torch.cat([x.double() - torch.as_tensor(self.shift_x, device=x.device),
                        torch.ones(len(x), 1, dtype=torch.float64, device=x.device)], dim=1)
        rt = r.double() - torch.as_tensor(self.shift_r, device=r.device)
        self.sxx += (xt.T @ xt).cpu().numpy()
        self.sxr += (xt.T @ rt).cpu().numpy()
        self.srr += (rt.T @ rt).cpu().numpy()
        self.n += len(x)

    def __add__(self, other: JointMoments) -> JointMoments:
        return JointMoments(self.shift_x, self.shift_r, self.n + other.n,
                            self.sxx + other.sxx, self.sxr + other.sxr, self.srr + other.srr)


def ridge_fit(m: JointMoments, alpha: float) -> np.ndarray:
    """B [(d+1), d] minimising Σ‖(r − shift_r) − x̃B‖² + α'‖W‖² (intercept unpenalised).

    α' = ``alpha`` × the mean eigenvalue of x's covariance, so ``alpha`` is scale-free.
    """
    d = m.sxx.shape[0] - 1
    mean_x = m.sxx[:d, d] / m.n
    mean_r = m.sxr[d] / m.n
    cov_xx = m.sxx[:d, :d] / m.n - np.outer(mean_x, mean_x)
    cov_xr = m.sxr[:d] / m.n - np.outer(mean_x, mean_r)
    penalty = alpha * np.trace(cov_xx) / d
    weights = np.linalg.solve(cov_xx + penalty * np.eye(d), cov_xr)
    intercept = mean_r - mean_x @ weights
    return np.vstack([weights, intercept[None]])


def sse(m: JointMoments, coef: np.ndarray) -> float:
    """Σ‖(r − shift_r) − x̃ coef‖² over the tokens behind ``m``, in closed form."""
    return float(np.trace(m.srr) - 2 * np.sum(coef * m.sxr) + np.sum(coef * (m.sxx @ coef)))


def centred_sst(m: JointMoments) -> float:
    """Σ‖r − r̄‖²."""
    total = m.sxr[-1]
    return float(np.trace(m.srr) - total @ total / m.n)


def residual_covariance(m: JointMoments, coef: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of r (``coef`` None) or of the nonlinear part r − x̃·coef."""
    if coef is None:
        total, second = m.sxr[-1], m.srr
    else:
        total = m.sxr[-1] - m.sxx[-1] @ coef
        cross = coef.T @ m.sxr
        second = m.srr - cross - cross.T + coef.T @ m.sxx @ coef
    mean = total / m.n
    cov = second / m.n - np.outer(mean, mean)
    return mean + m.shift_r, (cov + cov.T) / 2


def pca(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors (columns) of a covariance."""
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    return np.clip(values[order], 0, None), vectors[:, order]


def components_for(eigenvalues: np.ndarray, fraction: float) -> int:
    """Fewest leading components whose variance reaches ``fraction`` of the total."""
    cumulative = np.cumsum(eigenvalues) / eigenvalues.sum()
    return int(min(len(eigenvalues), np.searchsorted(cumulative, fraction - 1e-12) + 1))


class _FVU:
    """Σ‖r‖², Σ‖x‖² and Σx over one token subset."""

    def __init__(self, d: int):
        self.n, self.err, self.sq, self.sum = 0, 0.0, 0.0, np.zeros(d)

    def add(self, x, r) -> None:
        self.n += len(x)
        self.err += float((r.double() ** 2).sum())
        self.sq += float((x.double() ** 2).sum())
        self.sum += x.double().sum(dim=0).cpu().numpy()

    def variance(self) -> float:
        return self.sq - float(self.sum @ self.sum) / self.n

    def fvu(self) -> float:
        return self.err / self.variance() if self.n else float("nan")


@dataclass
class ResidualStats:
    """Everything the pass accumulates; :meth:`report` and :meth:`arrays` turn it into outputs."""

    n_tokens: int
    special: np.ndarray
    heldout: np.ndarray
    fvu: dict
    x_pow: PowerSums
    r_pow: PowerSums
    x_pow_all: PowerSums
    r_pow_all: PowerSums
    x_rand: PowerSums
    r_rand: PowerSums
    joint: dict
    latent_pow: PowerSums
    latent_fires: np.ndarray
    x_norm: np.ndarray
    r_norm: np.ndarray
    seconds: float = 0.0


def accumulate(sae, cache: ActivationCache, heldout_rows: np.ndarray, cfg, chunk_tokens: int | None = None) -> ResidualStats:
    """The one streaming pass over every token of the cache."""
    import torch

    check_compatible(sae, cache)
    acts, n, d = cache.acts, cache.meta["n_tokens"], cache.meta["d_model"]
    special = np.asarray(cache.special, dtype=bool)
    heldout = np.zeros(n, dtype=bool)
    heldout[row_tokens(heldout_rows, cache.meta["context_length"])] = True
    chunk_tokens = chunk_tokens or latent_chunk_tokens(sae.cfg.d_sae, cfg.latent_budget_mb << 20)
    directions = torch.from_numpy(random_unit_directions(cfg.n_random_directions, d, cfg.seed).T.copy()).float()
    directions = directions.to(sae.W_dec.device)

    # Shifts for numerically stable power sums: means over the first chunk's non-special tokens.
    first = ~special[:chunk_tokens]
    if not first.any():
        raise UserError(f"the first {len(first)} cached tokens are all special; the cache is not usable")
    with torch.no_grad():
        x0 = torch.from_numpy(np.asarray(acts[: len(first)][first], dtype=np.float32)).to(sae.W_dec.device)
        shift_x = x0.double().mean(0).cpu().numpy()
        shift_r = (x0 - sae.decode(sae.encode(x0))).double().mean(0).cpu().numpy()
    stats = ResidualStats(
        n_tokens=n, special=special, heldout=heldout,
        fvu={k: _FVU(d) for k in ("all", "nonspecial", "heldout", "heldout_nonspecial")},
        x_pow=PowerSums(shift_x), r_pow=PowerSums(shift_r), x_pow_all=PowerSums(shift_x), r_pow_all=PowerSums(shift_r),
        x_rand=PowerSums(np.zeros(cfg.n_random_directions)), r_rand=PowerSums(np.zeros(cfg.n_random_directions)),
        joint={"train": JointMoments(shift_x, shift_r), "heldout": JointMoments(shift_x, shift_r)},
        latent_pow=PowerSums(np.zeros(sae.cfg.d_sae)), latent_fires=np.zeros(sae.cfg.d_sae, dtype=np.int64),
        x_norm=np.zeros(n, dtype=np.float32), r_norm=np.zeros(n, dtype=np.float32),
    )
    start = time.perf_counter()
    for chunk in stream(sae, acts, np.arange(n), chunk_tokens):
        ids = chunk.ids
        keep = torch.from_numpy(~special[ids]).to(chunk.x.device)
        held = torch.from_numpy(heldout[ids]).to(chunk.x.device)
        x, r = chunk.x, chunk.r
        stats.x_norm[ids] = x.norm(dim=1).cpu().numpy()
        stats.r_norm[ids] = r.norm(dim=1).cpu().numpy()
        stats.fvu["all"].add(x, r)
        stats.fvu["heldout"].add(x[held], r[held])
        stats.x_pow_all.add(x)
        stats.r_pow_all.add(r)
        xk, rk = x[keep], r[keep]
        stats.fvu["nonspecial"].add(xk, rk)
        stats.fvu["heldout_nonspecial"].add(x[held & keep], r[held & keep])
        stats.x_pow.add(xk)
        stats.r_pow.add(rk)
        stats.x_rand.add(xk @ directions)
        stats.r_rand.add(rk @ directions)
        stats.joint["train"].add(x[keep & ~held], r[keep & ~held])
        stats.joint["heldout"].add(x[held & keep], r[held & keep])
        _add_latents(stats, chunk.latents[keep])
    stats.seconds = time.perf_counter() - start
    return stats


def _add_latents(stats: ResidualStats, latents) -> None:
    """Firing counts and power sums per feature from the non-zero entries only."""
    rows, cols = latents.nonzero(as_tuple=True)
    values = latents[rows, cols].double().cpu().numpy()
    cols = cols.cpu().numpy()
    d_sae = len(stats.latent_fires)
    stats.latent_fires += np.bincount(cols, minlength=d_sae)
    power = values.copy()
    for p in range(4):
        stats.latent_pow.sums[p] += np.bincount(cols, weights=power, minlength=d_sae)
        power *= values
    stats.latent_pow.n += len(latents)


def analyse(stats: ResidualStats, ridge_alpha: float) -> tuple[dict, dict]:
    """Metrics (JSON) and arrays (npz) from the accumulated statistics."""
    fvu = stats.fvu
    train, held = stats.joint["train"], stats.joint["heldout"]
    if train.n <= train.sxx.shape[0] or held.n < 2:
        raise UserError(f"too few non-special tokens for the ridge fit ({train.n} train, {held.n} held-out); cache more tokens")
    coef = ridge_fit(train, ridge_alpha)
    sst_held, sse_held = centred_sst(held), sse(held, coef)
    var_x_held = fvu["heldout_nonspecial"].variance()
    mean_r_held = held.sxr[-1] / held.n + held.shift_r
    both = train + held
    mean_r, cov_r = residual_covariance(both)
    mean_nl, cov_nl = residual_covariance(both, coef)
    eig_r, vec_r = pca(cov_r)
    eig_nl, vec_nl = pca(cov_nl)

    keep = ~stats.special
    ratio = stats.r_norm[keep] / np.maximum(stats.x_norm[keep], 1e-30)
    kurt = {
        "x": stats.x_pow.excess_kurtosis(), "r": stats.r_pow.excess_kurtosis(),
        "x_with_special": stats.x_pow_all.excess_kurtosis(), "r_with_special": stats.r_pow_all.excess_kurtosis(),
        "x_random_directions": stats.x_rand.excess_kurtosis(), "r_random_directions": stats.r_rand.excess_kurtosis(),
    }
    frequency = stats.latent_fires / max(stats.latent_pow.n, 1)
    latent_kurtosis = stats.latent_pow.excess_kurtosis()

    def spectrum(eig):
        cumulative = np.cumsum(eig) / eig.sum()
        return {
            "total_variance": float(eig.sum()),
            **{f"n_components_{int(f * 100)}": components_for(eig, f) for f in (0.5, 0.8, 0.9, 0.99)},
            "top10_fraction": [float(v) for v in eig[:10] / eig.sum()],
            "cumulative_at": {str(k): float(cumulative[k - 1]) for k in (1, 10, 50, 100, 200) if k <= len(eig)},
        }

    report = {
        "n_tokens": int(stats.n_tokens),
        "n_tokens_nonspecial": int(keep.sum()),
        "n_tokens_heldout": int(fvu["heldout"].n),
        "dark_matter_fraction": fvu["heldout_nonspecial"].fvu(),
        "dark_matter_fraction_with_special": fvu["heldout"].fvu(),
        "dark_matter_fraction_all_rows": fvu["nonspecial"].fvu(),
        "dark_matter_fraction_all_rows_with_special": fvu["all"].fvu(),
        "error_norm_fraction": {
            "ratio_of_sums": float(np.sqrt(fvu["nonspecial"].err / fvu["nonspecial"].sq)),
            "per_token": summary(ratio),
        },
        "error_norm": summary(stats.r_norm[keep]),
        "error_norm_special": summary(stats.r_norm[stats.special]),
        "kurtosis": {name: summary(values) for name, values in kurt.items()},
        "linear_predictability": {
            "ridge_alpha": ridge_alpha,
            "n_train": int(train.n), "n_heldout": int(held.n),
            "r2_heldout": 1 - sse_held / sst_held,
            "r2_train": 1 - sse(train, coef) / centred_sst(train),
            # Split of the held-out dark-matter fraction: the parts add up to it.
            "linear_fraction": (sst_held - sse_held) / var_x_held,
            "nonlinear_fraction": sse_held / var_x_held,
            "mean_fraction": float(held.n * mean_r_held @ mean_r_held) / var_x_held,
        },
        "pca": {"residual": spectrum(eig_r), "nonlinear": spectrum(eig_nl)},
        "sae_features": {
            "d_sae": int(len(frequency)),
            "dead_fraction": float((stats.latent_fires == 0).mean()),
            "mean_l0": float(stats.latent_fires.sum() / max(stats.latent_pow.n, 1)),
        },
        "throughput": {"seconds": stats.seconds, "tokens_per_s": stats.n_tokens / stats.seconds if stats.seconds else None},
    }
    arrays = {
        "mean_residual": mean_r, "pca_residual_values": eig_r, "pca_residual_vectors": vec_r,
        "mean_nonlinear": mean_nl, "pca_nonlinear_values": eig_nl, "pca_nonlinear_vectors": vec_nl,
        "ridge_coef": coef, "shift_x": train.shift_x, "shift_r": train.shift_r,
        "x_norm": stats.x_norm, "r_norm": stats.r_norm,
        "latent_frequency": frequency, "latent_kurtosis": latent_kurtosis,
        **{f"kurtosis_{name}": values for name, values in kurt.items()},
    }
    return report, arrays


def plot(arrays: dict, report: dict, out_dir: Path) -> None:
    from darkmatter.figures import save_figure, subplots

    fig, ax = subplots(figsize=(4.2, 3.0))
    keys = [("kurtosis_x", "x (per dimension)"), ("kurtosis_r", "r (per dimension)"),
            ("kurtosis_r_random_directions", "r (random directions)")]
    top = max(float(np.nanmax(arrays[k])) for k, _ in keys)
    bins = np.logspace(-2, np.log10(max(top, 1.0)) + 0.01, 40)
    for key, label in keys:
        v = arrays[key][np.isfinite(arrays[key])]
        ax.hist(np.clip(v, bins[0], None), bins=bins, histtype="step", label=label, linewidth=1.4)
    ax.set_xscale("log")
    ax.set_xlabel("excess kurtosis (Gaussian = 0; clipped at left edge)")
    ax.set_ylabel("count")
    ax.legend(fontsize=7)
    save_figure(fig, out_dir / "kurtosis")

    fig, ax = subplots(figsize=(4.2, 3.0))
    for key, label in (("pca_residual_values", "r"), ("pca_nonlinear_values", "nonlinear part of r")):
        eig = arrays[key]
        ax.plot(np.arange(1, len(eig) + 1), np.cumsum(eig) / eig.sum(), label=label)
    ax.axhline(0.9, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("principal components")
    ax.set_ylabel("cumulative variance fraction")
    ax.legend(fontsize=7)
    save_figure(fig, out_dir / "pca_spectrum")

    fig, ax = subplots(figsize=(4.2, 3.0))
    x_norm, r_norm = arrays["x_norm"], arrays["r_norm"]
    keep = np.isfinite(x_norm) & (x_norm > 0)
    ax.hist(r_norm[keep] / x_norm[keep], bins=60, range=(0, 1.2), color="C0")
    ax.set_xlabel("per-token error-norm fraction ‖r‖/‖x‖ (all tokens)")
    ax.set_ylabel("tokens")
    save_figure(fig, out_dir / "error_norms")


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import add_run_arguments, run_from_args
    from darkmatter.data.models import resolve_device

    parser = argparse.ArgumentParser(description="Stream the SAE residual r = x - SAE(x): FVU, kurtosis, ridge, PCA.")
    add_run_arguments(parser)
    parser.add_argument("--sae", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="directory for stats.npz")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--figures", type=Path, required=True, help="directory for PNG+PDF figures")
    args = parser.parse_args(argv)
    run = run_from_args(args)
    cache = ActivationCache.open(args.cache)
    sae = load_sae(args.sae)
    check_compatible(sae, cache)
    sae = sae.to(resolve_device(run.subject.device))
    _, heldout_rows = split_rows(cache.meta["n_rows"], run.sae.heldout_fraction)
    stats = accumulate(sae, cache, heldout_rows, run.residual)
    report, arrays = analyse(stats, run.residual.ridge_alpha)
    report = {"sae": str(args.sae), "hook_name": cache.meta["hook_name"], **report}
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "stats.npz", **arrays)
    plot(arrays, report, args.figures)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("dark_matter_fraction", "dark_matter_fraction_with_special")} |
                     {"r2_heldout": report["linear_predictability"]["r2_heldout"]}, indent=2))


if __name__ == "__main__":
    main()
