"""The dark matter: r = x − SAE(x), streamed once over the whole activation cache.

Works for any SAELens ``SAE`` whose ``d_in`` and hook match the cache (checked before any
compute). One pass accumulates sufficient statistics per token *group* (train or held-out row ×
special, high-norm outlier or ordinary token; :mod:`darkmatter.analysis.tokens`), so every number
below is exact for any union of groups, and nothing N × d_sae or N × d is held. Each chunk's sums
are float32 GEMMs around a shift (half the cost of float64), added up in float64 across chunks:
~1e-7 relative, which the tests bound against float64 references, planted offsets included.

Which rows each number uses (the metrics and the paper say so next to each):

- **Dark-matter fraction** = SAELens's FVU, Σ‖r‖² / Σ‖x − x̄‖², on the held-out rows'
  analysed tokens (the headline; it matches ``sae_eval``), and both ways for special tokens
  and for high-norm outliers, and on all rows; per-token error norms ‖r‖ and ‖r‖/‖x‖.
- **Gaussianity** (held-out rows): per-dimension excess kurtosis of x and r, of x and r on random
  unit directions (the Gaussian-projection floor), and of the SAE's pre-activations and latents
  (the kurtosis-gap ingredients; latents include their zeros, the seeds' definition).
- **Linear predictability** (Engels et al. 2024): the ridge fit r ≈ W x + b on the train rows,
  scored on the held-out rows in closed form; the held-out dark matter splits exactly into a
  linearly predictable part, a nonlinear part and its mean.
- **PCA** of r and of its nonlinear part r − (W x + b) on the train rows: the ICA stage whitens
  with it and fits on train rows too, so held-out rows stay unseen by every fit.
- **SAE features**: firing counts per feature on train and held-out rows; *dead* means never
  firing on the held-out rows' non-special tokens (:mod:`darkmatter.sae.features`), the same
  definition ``sae_eval`` uses.

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
from darkmatter.analysis.tokens import (ORDINARY, OUTLIER, SPECIAL, analysed_classes, classify,
                                        heldout_token_mask)
from darkmatter.data.activations import ActivationCache
from darkmatter.errors import UserError, cli
from darkmatter.sae.features import dead_fraction
from darkmatter.sae.io import check_compatible, load_sae
from darkmatter.stats import random_unit_directions, summary, unpaired_difference

#: Token groups: 3 × held-out + class (special 0, outlier 1, ordinary 2).
N_GROUPS = 6
TRAIN, HELDOUT = 0, 1
#: Ordinary tokens whose means shift the power sums and moments (only their rough centre matters).
SHIFT_TOKENS = 2048


def groups(split: int | tuple[int, ...], classes) -> list[int]:
    """Group ids of the rows ``split`` (TRAIN, HELDOUT or both) and token ``classes``."""
    splits = (split,) if isinstance(split, int) else split
    return [3 * s + c for s in splits for c in classes]


#: Rows per power-sum block: bounds the [rows, 4, d] powers buffer to 64 MiB at any width.
POWER_BLOCK_BYTES = 64 << 20
#: Above this |v − shift| a chunk's fourth powers are taken in float64 (a float32 sum of v⁴ could
#: overflow; squares only overflow past 1.8e19).
FLOAT32_POWERS_BELOW = 1e7


def group_onehot(group, device) -> "torch.Tensor":  # noqa: F821
    """[n, N_GROUPS] float32 indicator, so per-group sums are one GEMM (index_add_ is serial on CPU)."""
    import torch

    return torch.nn.functional.one_hot(group.to(device), N_GROUPS).float()


@dataclass
class GroupedPowerSums:
    """Per-group, per-column sums of powers 1..``powers`` around one shared shift (so groups add up).

    Each chunk's powers and group sums are float32 (one GEMM with the group indicator; float64
    costs ~3x here and ~30% of the whole pass), summed across chunks in float64; the shift keeps
    the terms centred, so a chunk's sums are good to ~1e-6 relative (tests/analysis/test_residual.py).
    """

    shift: np.ndarray
    powers: int = 4  # 2 where only sums of squares are needed (FVU), 4 for kurtosis
    sums: object = None  # torch float64 [N_GROUPS, powers, d] on the SAE's device
    n: np.ndarray = field(default_factory=lambda: np.zeros(N_GROUPS, dtype=np.int64))

    def add(self, values, onehot) -> None:
        import torch

        d, k = len(self.shift), self.powers
        if self.sums is None:
            self.sums = torch.zeros((N_GROUPS, k, d), dtype=torch.float64, device=values.device)
        shift = torch.as_tensor(self.shift, dtype=values.dtype, device=values.device)
        dtype = values.dtype
        if k == 4 and values.numel():  # a bound on |v − shift| from the extremes, without a |v − shift| pass
            v_min, v_max = values.aminmax()
            if max(v_max - shift.min(), shift.max() - v_min) >= FLOAT32_POWERS_BELOW:
                dtype, onehot, shift = torch.float64, onehot.double(), shift.double()
        block = max(1, POWER_BLOCK_BYTES // (k * d * torch.finfo(dtype).bits // 8))
        for lo in range(0, len(values), block):
            part = values[lo : lo + block].to(dtype)  # block by block: a float64 copy of the whole chunk is latent-sized
            powers = torch.empty((len(part), k, d), dtype=dtype, device=values.device)
            y = torch.sub(part, shift, out=powers[:, 0])
            torch.mul(y, y, out=powers[:, 1])
            if k == 4:
                torch.mul(powers[:, 1], y, out=powers[:, 2])
                torch.mul(powers[:, 1], powers[:, 1], out=powers[:, 3])
            self.sums += (onehot[lo : lo + block].T @ powers.view(len(part), k * d)).view(N_GROUPS, k, d).double()
        self.n += onehot.sum(0).round().long().cpu().numpy()

    def _sums(self, gs: list[int]) -> tuple[np.ndarray, np.ndarray, int]:
        s1, s2 = self.sums[gs].sum(dim=0)[:2].cpu().numpy()
        return s1, s2, int(self.n[gs].sum())

    def excess_kurtosis(self, gs: list[int]) -> np.ndarray:
        sums = self.sums[gs].sum(dim=0).cpu().numpy()
        return excess_kurtosis_from_sums(sums, int(self.n[gs].sum()))

    def square_sum(self, gs: list[int]) -> float:
        """Σ‖v‖² over the groups' tokens."""
        s1, s2, n = self._sums(gs)
        return float((s2 + 2 * self.shift * s1 + n * self.shift**2).sum())

    def centred_square_sum(self, gs: list[int]) -> float:
        """Σ‖v − v̄‖² over the groups' tokens (v̄ their mean)."""
        s1, s2, n = self._sums(gs)
        return float((s2 - s1**2 / n).sum()) if n else 0.0


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
        """One chunk's moments: float32 GEMMs on shifted data, summed across chunks in float64.

        float64 GEMMs cost 2x on CPU and ~40% of the whole pass; the shift keeps the float32 terms
        centred, so each chunk's sums are good to ~1e-6 relative (tests/analysis/test_residual.py
        plants a large offset and compares with float64).
        """
        import torch

        xt = torch.cat([x - torch.as_tensor(self.shift_x, dtype=x.dtype, device=x.device),
                        torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
        rt = r - torch.as_tensor(self.shift_r, dtype=r.dtype, device=r.device)
        self.sxx += (xt.T @ xt).double().cpu().numpy()
        self.sxr += (xt.T @ rt).double().cpu().numpy()
        self.srr += (rt.T @ rt).double().cpu().numpy()
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
    """Mean and covariance of r (``coef`` None) or of the nonlinear part t = (r − shift_r) − x̃·coef.

    The nonlinear part is already measured from the ridge prediction, which includes the shift
    and the intercept, so its mean is ~0 on the rows the ridge was fitted on (not ``shift_r``).
    """
    if coef is None:
        total, second, offset = m.sxr[-1], m.srr, m.shift_r
    else:
        total = m.sxr[-1] - m.sxx[-1] @ coef
        cross = coef.T @ m.sxr
        second = m.srr - cross - cross.T + coef.T @ m.sxx @ coef
        offset = 0.0
    mean = total / m.n
    cov = second / m.n - np.outer(mean, mean)
    return mean + offset, (cov + cov.T) / 2


def pca(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors (columns) of a covariance."""
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    return np.clip(values[order], 0, None), vectors[:, order]


def components_for(eigenvalues: np.ndarray, fraction: float) -> int:
    """Fewest leading components whose variance reaches ``fraction`` of the total."""
    cumulative = np.cumsum(eigenvalues) / eigenvalues.sum()
    return int(min(len(eigenvalues), np.searchsorted(cumulative, fraction - 1e-12) + 1))


@dataclass
class ResidualStats:
    """Everything the pass accumulates (see the module docstring); :func:`analyse` reads it."""

    classes: np.ndarray  # int8 [N] token class
    class_rule: dict
    heldout: np.ndarray  # bool [N]
    analysed: tuple[int, ...]  # the analysed token classes
    x_sq: GroupedPowerSums  # powers 1-2, every token: FVU of any union of groups
    r_sq: GroupedPowerSums
    x_pow: GroupedPowerSums  # powers 1-4, held-out tokens: kurtosis (held-out only, so train groups stay empty)
    r_pow: GroupedPowerSums
    x_rand: GroupedPowerSums
    r_rand: GroupedPowerSums
    joint: dict  # "train" / "heldout" JointMoments of the analysed tokens
    latent_fires: np.ndarray  # [N_GROUPS, d_sae]
    latent_pow: np.ndarray  # [4, d_sae] raw power sums of the latents, held-out analysed tokens
    preact_pow: GroupedPowerSums
    x_norm: np.ndarray
    r_norm: np.ndarray
    seconds: float = 0.0

    def n_tokens(self, gs: list[int]) -> int:
        return int(self.x_sq.n[gs].sum())

    @property
    def n_heldout_analysed(self) -> int:
        return self.n_tokens(groups(HELDOUT, self.analysed))

    def fvu(self, gs: list[int]) -> float | None:
        """SAELens's FVU, Σ‖r‖² / Σ‖x − x̄‖², over the groups' tokens."""
        return self.r_sq.square_sum(gs) / self.x_sq.centred_square_sum(gs) if self.n_tokens(gs) > 1 else None


def token_norms(acts: np.ndarray, block: int = 65536) -> np.ndarray:
    """‖x‖ of every cached token (one cheap pass, so outliers are known before the SAE pass)."""
    return np.concatenate([np.linalg.norm(np.asarray(acts[i : i + block], dtype=np.float32), axis=1)
                           for i in range(0, len(acts), block)])


def float64_column_means(values) -> np.ndarray:
    """Column means in float64, row block by row block (a float64 copy of a latent-sized chunk is twice its size)."""
    block = max(1, POWER_BLOCK_BYTES // (values.shape[1] * 8))
    if len(values) <= block:
        return values.double().mean(0).cpu().numpy()
    return sum(values[lo : lo + block].double().sum(0).cpu().numpy() for lo in range(0, len(values), block)) / len(values)


def accumulate(sae, cache: ActivationCache, heldout_fraction: float, cfg, chunk_tokens: int | None = None) -> ResidualStats:
    """The one streaming pass over every token of the cache."""
    import torch

    check_compatible(sae, cache)
    acts, n, d = cache.acts, cache.meta["n_tokens"], cache.meta["d_model"]
    special = np.asarray(cache.special, dtype=bool)
    heldout = heldout_token_mask(cache.meta["n_rows"], cache.meta["context_length"], heldout_fraction)
    x_norm = token_norms(acts)
    classes, rule = classify(special, x_norm, cfg.outlier_norm_factor)
    token_group = torch.from_numpy(3 * heldout.astype(np.int64) + classes)
    analysed = analysed_classes(cfg.exclude_outliers)
    device = sae.W_dec.device
    chunk_tokens = chunk_tokens or latent_chunk_tokens(sae.cfg.d_sae, cfg.latent_budget_mb << 20)
    directions = torch.from_numpy(random_unit_directions(cfg.n_random_directions, d, cfg.seed).T.copy()).float().to(device)

    # Shifts for numerically stable power sums and moments: means over the first ordinary tokens.
    first = np.flatnonzero(classes[:chunk_tokens] == ORDINARY)[:SHIFT_TOKENS]
    if not len(first):
        raise UserError(f"the first {chunk_tokens} cached tokens hold no ordinary token; the cache is not usable")
    parts = [(len(chunk.ids), [float64_column_means(t) for t in (chunk.x, chunk.r, chunk.preacts)])
             for chunk in stream(sae, acts, first, chunk_tokens, desc="shifts", preacts=True)]  # within the latent budget
    shift_x, shift_r, shift_pre = parts[0][1] if len(parts) == 1 else (
        sum(n_c * means[i] for n_c, means in parts) / len(first) for i in range(3))
    stats = ResidualStats(
        classes=classes, class_rule=rule, heldout=heldout, analysed=analysed,
        x_sq=GroupedPowerSums(shift_x, powers=2), r_sq=GroupedPowerSums(shift_r, powers=2),
        x_pow=GroupedPowerSums(shift_x), r_pow=GroupedPowerSums(shift_r),
        x_rand=GroupedPowerSums(np.zeros(cfg.n_random_directions)), r_rand=GroupedPowerSums(np.zeros(cfg.n_random_directions)),
        joint={"train": JointMoments(shift_x, shift_r), "heldout": JointMoments(shift_x, shift_r)},
        latent_fires=np.zeros((N_GROUPS, sae.cfg.d_sae), dtype=np.int64), latent_pow=np.zeros((4, sae.cfg.d_sae)),
        preact_pow=GroupedPowerSums(shift_pre), x_norm=x_norm, r_norm=np.zeros(n, dtype=np.float32),
    )
    train_g, held_g = groups(TRAIN, analysed), groups(HELDOUT, analysed)
    start = time.perf_counter()
    preact_tokens = heldout & np.isin(classes, analysed)
    for chunk in stream(sae, acts, np.arange(n), chunk_tokens, preacts=preact_tokens):
        g = token_group[chunk.ids].to(device)
        onehot = group_onehot(g, device)
        x, r = chunk.x, chunk.r
        stats.r_norm[chunk.ids] = r.norm(dim=1).cpu().numpy()
        stats.x_sq.add(x, onehot)
        stats.r_sq.add(r, onehot)
        on_held = g >= 3 * HELDOUT  # every class: the kurtoses are reported both ways
        if on_held.any():
            x_held, r_held, onehot_held = x[on_held], r[on_held], onehot[on_held]
            stats.x_pow.add(x_held, onehot_held)
            stats.r_pow.add(r_held, onehot_held)
            stats.x_rand.add(x_held @ directions, onehot_held)
            stats.r_rand.add(r_held @ directions, onehot_held)
        for name, gs in (("train", train_g), ("heldout", held_g)):
            rows = torch.isin(g, torch.tensor(gs, device=device))
            stats.joint[name].add(x[rows], r[rows])
        held = torch.isin(g, torch.tensor(held_g, device=device))
        stats.preact_pow.add(chunk.preacts, onehot[held])  # the chunk carries the held-out analysed tokens' only
        _add_latents(stats, chunk.latents, chunk.active, g, held)
    stats.seconds = time.perf_counter() - start
    return stats


def _add_latents(stats: ResidualStats, latents, active, group, held) -> None:
    """Firing counts per group, and the held-out latents' power sums, from the ``active`` (non-zero) entries only."""
    rows, cols = active
    d_sae = latents.shape[1]
    g = group[rows].cpu().numpy()
    cols_np = cols.cpu().numpy()
    stats.latent_fires += np.bincount(g * d_sae + cols_np, minlength=N_GROUPS * d_sae).reshape(N_GROUPS, d_sae)
    on_held = held[rows].cpu().numpy()
    values = latents[rows, cols].double().cpu().numpy()[on_held]
    cols_held = cols_np[on_held]
    power = values.copy()
    for p in range(4):
        stats.latent_pow[p] += np.bincount(cols_held, weights=power, minlength=d_sae)
        power *= values


def analyse(stats: ResidualStats, ridge_alpha: float, seed: int = 0, n_boot: int = 1000) -> tuple[dict, dict]:
    """Metrics (JSON) and arrays (npz) from the accumulated statistics."""
    analysed = stats.analysed
    train, held = stats.joint["train"], stats.joint["heldout"]
    if train.n <= train.sxx.shape[0] or held.n < 2:
        raise UserError(f"too few analysed tokens for the ridge fit ({train.n} train, {held.n} held-out); cache more tokens")
    coef = ridge_fit(train, ridge_alpha)
    sst_held, sse_held = centred_sst(held), sse(held, coef)
    held_g = groups(HELDOUT, analysed)
    var_x_held = stats.x_sq.centred_square_sum(held_g)
    mean_r_held = held.sxr[-1] / held.n + held.shift_r
    mean_r, cov_r = residual_covariance(train)
    mean_nl, cov_nl = residual_covariance(train, coef)
    eig_r, vec_r = pca(cov_r)
    eig_nl, vec_nl = pca(cov_nl)

    both_ways = {"with_special": (SPECIAL, OUTLIER, ORDINARY), "with_outliers": (OUTLIER, ORDINARY),
                 "without_outliers": (ORDINARY,)}
    kurt = {"x": stats.x_pow.excess_kurtosis(held_g), "r": stats.r_pow.excess_kurtosis(held_g)}
    for way, classes in both_ways.items():
        kurt[f"x_{way}"] = stats.x_pow.excess_kurtosis(groups(HELDOUT, classes))
        kurt[f"r_{way}"] = stats.r_pow.excess_kurtosis(groups(HELDOUT, classes))
    kurt["x_random_directions"] = stats.x_rand.excess_kurtosis(held_g)
    kurt["r_random_directions"] = stats.r_rand.excess_kurtosis(held_g)
    n_held = stats.n_heldout_analysed
    fires_held = stats.latent_fires[held_g].sum(axis=0)
    fires_train = stats.latent_fires[groups(TRAIN, analysed)].sum(axis=0)
    fires_nonspecial_held = stats.latent_fires[groups(HELDOUT, (OUTLIER, ORDINARY))].sum(axis=0)
    latent_kurtosis = excess_kurtosis_from_sums(stats.latent_pow, n_held)
    preact_kurtosis = stats.preact_pow.excess_kurtosis(held_g)

    keep = np.isin(stats.classes, analysed) & stats.heldout
    ratio = stats.r_norm[keep] / np.maximum(stats.x_norm[keep], 1e-30)

    def spectrum(eig):
        cumulative = np.cumsum(eig) / eig.sum()
        return {
            "rows": "train",
            "total_variance": float(eig.sum()),
            **{f"n_components_{int(f * 100)}": components_for(eig, f) for f in (0.5, 0.8, 0.9, 0.99)},
            "top10_fraction": [float(v) for v in eig[:10] / eig.sum()],
            "cumulative_at": {str(k): float(cumulative[k - 1]) for k in (1, 10, 50, 100, 200) if k <= len(eig)},
        }

    everything = (SPECIAL, OUTLIER, ORDINARY)
    report = {
        "rows": {"headline": "held-out rows, analysed tokens", "fits": "train rows (ridge, PCA)",
                 "all_rows": "train + held-out rows"},
        "tokens": {"n": int(len(stats.classes)), "n_heldout": int(stats.heldout.sum()),
                   "n_heldout_analysed": n_held, "outliers_excluded": not (OUTLIER in analysed),
                   "classes": stats.class_rule},
        "dark_matter_fraction": stats.fvu(held_g),
        **{f"dark_matter_fraction_{way}": stats.fvu(groups(HELDOUT, classes)) for way, classes in both_ways.items()},
        "dark_matter_fraction_all_rows": stats.fvu(groups((TRAIN, HELDOUT), analysed)),
        "dark_matter_fraction_all_rows_with_special": stats.fvu(groups((TRAIN, HELDOUT), everything)),
        "error_norm_fraction": {
            "ratio_of_sums": float(np.sqrt(stats.r_sq.square_sum(held_g) / stats.x_sq.square_sum(held_g))),
            "per_token": summary(ratio),
        },
        "error_norm": summary(stats.r_norm[keep]),
        "error_norm_special": summary(stats.r_norm[(stats.classes == SPECIAL) & stats.heldout]),
        "kurtosis": {name: summary(values) for name, values in kurt.items()},
        # Are r's coordinates heavier-tailed than r seen along random directions? Medians, a = dims, b = random.
        "shape": unpaired_difference(kurt["r"][np.isfinite(kurt["r"])], kurt["r_random_directions"],
                                     n_boot, np.random.default_rng(seed), statistic=np.median),
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
            "d_sae": int(len(fires_held)),
            "dead_fraction": dead_fraction(fires_nonspecial_held),
            "mean_l0": float(fires_held.sum() / max(n_held, 1)),
        },
        "throughput": {"seconds": stats.seconds, "tokens_per_s": len(stats.classes) / stats.seconds if stats.seconds else None},
    }
    arrays = {
        "mean_residual": mean_r, "pca_residual_values": eig_r, "pca_residual_vectors": vec_r,
        "mean_nonlinear": mean_nl, "pca_nonlinear_values": eig_nl, "pca_nonlinear_vectors": vec_nl,
        "ridge_coef": coef, "shift_x": train.shift_x, "shift_r": train.shift_r,
        "x_norm": stats.x_norm, "r_norm": stats.r_norm,
        "token_class": stats.classes, "outliers_excluded": np.array(OUTLIER not in analysed),
        "latent_fires_train": fires_train, "latent_fires_heldout": fires_held,
        "n_train_analysed": np.array(stats.n_tokens(groups(TRAIN, analysed))), "n_heldout_analysed": np.array(n_held),
        "latent_frequency": fires_held / max(n_held, 1), "latent_kurtosis": latent_kurtosis,
        "preact_kurtosis": preact_kurtosis,
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
    ax.set_xlabel("excess kurtosis, held-out rows (Gaussian = 0; clipped at left edge)")
    ax.set_ylabel("count")
    ax.legend(fontsize=7)
    save_figure(fig, out_dir / "kurtosis")

    fig, ax = subplots(figsize=(4.2, 3.0))
    for key, label in (("pca_residual_values", "r"), ("pca_nonlinear_values", "nonlinear part of r")):
        eig = arrays[key]
        ax.plot(np.arange(1, len(eig) + 1), np.cumsum(eig) / eig.sum(), label=label)
    ax.axhline(0.9, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("principal components (train rows)")
    ax.set_ylabel("cumulative variance fraction")
    ax.legend(fontsize=7)
    save_figure(fig, out_dir / "pca_spectrum")

    fig, ax = subplots(figsize=(4.2, 3.0))
    x_norm, r_norm = arrays["x_norm"], arrays["r_norm"]
    keep = np.isfinite(x_norm) & (x_norm > 0)
    ax.hist(r_norm[keep] / x_norm[keep], bins=60, range=(0, 1.2), color="C0")
    ax.set_xlabel("per-token error-norm fraction ‖r‖/‖x‖ (all tokens, all rows)")
    ax.set_ylabel("tokens")
    save_figure(fig, out_dir / "error_norms")


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import add_run_arguments, run_from_args
    from darkmatter.sae.io import to_device

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
    sae = to_device(sae, run.subject.device)
    stats = accumulate(sae, cache, run.sae.heldout_fraction, run.residual)
    report, arrays = analyse(stats, run.residual.ridge_alpha, run.residual.seed)
    report = {"sae": str(args.sae), "hook_name": cache.meta["hook_name"], **report}
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "stats.npz", **arrays)
    plot(arrays, report, args.figures)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("dark_matter_fraction", "dark_matter_fraction_with_special",
                                             "dark_matter_fraction_with_outliers")} |
                     {"r2_heldout": report["linear_predictability"]["r2_heldout"]}, indent=2))


if __name__ == "__main__":
    main()
