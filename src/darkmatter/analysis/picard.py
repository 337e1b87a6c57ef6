"""Picard-O (orthogonal, extended, tanh density) in torch: the ICA stage's default solver.

The algorithm is python-picard's ``core_picard`` with ``ortho=True, extended=True`` (Ablin,
Cardoso & Gramfort 2018, "Faster ICA under orthogonal constraint"): L-BFGS on the orthogonal
group, preconditioned by the block-diagonal Hessian approximation, with a backtracking line
search along ``expm``; the extended rule picks each component's sign (super- or sub-Gaussian)
every iteration and flushes the memory when a sign changes.

Why not python-picard itself: it is numpy, and its time goes to element-wise work (tanh, and
log-cosh in every line-search step) that runs on one core, so on 2 cores the stage needed one
process per fit; and it cannot run on CUDA for the ladder's 262k-token, 128-component fits. Here
an iteration is two GEMMs and a handful of vectorised element-wise kernels on any device, in
float64 like python-picard. python-picard stays the reference: ``tests/analysis/test_picard.py``
checks both reach the same solution, and ``bench/bench_ica.py`` times them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class PicardResult:
    unmixing: torch.Tensor  # [k, k] W, with sources s = W z
    n_iter: int
    converged: bool
    gradient_norm: float


#: Columns per block of the element-wise passes: the temporaries stay in cache (3-4x faster on CPU
#: than whole-array ops, which spend their time faulting in fresh buffers).
BLOCK = 4096


def _loss(y: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Σ_i sign_i · mean_t log cosh(y_it) (up to a constant), as python-picard's Tanh density."""
    total = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
    for block in y.split(BLOCK, dim=1):
        a = block.abs()
        e = torch.exp(a * -2.0)
        e.log1p_()
        e += a
        total += e.sum(1)
    return (signs * total).sum() / y.shape[1]


def _score_moments(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E[ψ(y) yᵀ] and E[ψ'(y)] per row, ψ = tanh, one blocked pass."""
    g = torch.zeros(y.shape[0], y.shape[0], dtype=y.dtype, device=y.device)
    psi_square = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
    for block in y.split(BLOCK, dim=1):
        psi = torch.tanh(block)
        g.addmm_(psi, block.T)
        psi_square += psi.square_().sum(1)
    return g / y.shape[1], 1.0 - psi_square / y.shape[1]


def _lbfgs_direction(g, h, memory):
    q = g.clone()
    alphas = []
    for s, y, rho in reversed(memory):
        alpha = rho * (s * q).sum()
        alphas.append(alpha)
        q -= alpha * y
    z = q / h
    z = (z - z.T) / 2
    for (s, y, rho), alpha in zip(memory, reversed(alphas)):
        beta = rho * (y * z).sum()
        z += (alpha - beta) * s
    return -z


def _line_search(y, w, direction, signs, loss, tries):
    """Backtracking from step 1: the first halving that lowers the loss, else (False, last try)."""
    alpha = 1.0
    for _ in range(tries):
        rotation = torch.linalg.matrix_exp(alpha * direction)
        y_new, w_new = rotation @ y, rotation @ w
        new_loss = _loss(y_new, signs)
        if torch.isfinite(new_loss) and new_loss < loss:
            return True, y_new, w_new, new_loss, alpha * direction
        alpha /= 2.0
    return False, y_new, w_new, new_loss, alpha * direction


def picard_o(z: torch.Tensor, w_init: torch.Tensor, max_iter: int = 500, tol: float = 1e-7, memory_size: int = 7,
             lambda_min: float = 0.01, ls_tries: int = 10,
             callback: Callable[[int, torch.Tensor], None] | None = None) -> PicardResult:
    """Fit s = W z on white data ``z`` [k, T] (rows are signals) from the orthogonal ``w_init``.

    Stops when the largest entry of the projected relative gradient is below ``tol`` (the
    python-picard criterion); ``converged`` says whether it got there within ``max_iter``.
    ``callback(n, W)`` sees the unmixing matrix after every iteration (``bench/bench_ica.py``
    times when the iterates reach a solution).
    """
    x = w_init @ z
    n_signals, n_samples = x.shape
    covariance = x @ x.T / n_samples
    w = torch.eye(n_signals, dtype=x.dtype, device=x.device)
    y, c = x, covariance
    signs = torch.ones(n_signals, dtype=x.dtype, device=x.device)
    loss = _loss(y, signs)
    memory: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    old_signs = direction = g_old = None
    gradient_norm, converged, n = float("inf"), False, 0
    for n in range(max_iter):
        g, psi_prime_mean = _score_moments(y)
        signs = torch.sign(psi_prime_mean * c.diagonal() - g.diagonal())
        sign_change = old_signs is not None and bool((signs != old_signs).any())
        old_signs = signs
        g = g * signs[:, None]
        h_off = g.diagonal().clone()
        psi_prime_mean = psi_prime_mean * signs
        h = 0.5 * (psi_prime_mean[:, None] + psi_prime_mean[None, :] - h_off[:, None] - h_off[None, :])
        h = h.clamp(min=lambda_min)
        g = (g - g.T) / 2
        gradient_norm = float(g.abs().max())
        if gradient_norm < tol:
            converged = True
            break
        if n > 0:
            step = g - g_old
            memory.append((direction, step, 1.0 / (direction * step).sum()))
            memory = memory[-memory_size:]
        g_old = g
        if sign_change:
            loss = _loss(y, signs)
            memory = []
        direction = _lbfgs_direction(g, h, memory)
        ok, y_new, w_new, new_loss, direction = _line_search(y, w, direction, signs, loss, ls_tries)
        if not ok:
            memory = []
            _, y_new, w_new, new_loss, direction = _line_search(y, w, -g, signs, loss, 10)
        y, w, loss = y_new, w_new, new_loss
        c = w @ covariance @ w.T
        if callback is not None:
            callback(n + 1, w @ w_init)
    return PicardResult(w @ w_init, n, converged, gradient_norm)
