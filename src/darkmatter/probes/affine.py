"""Experiment 2's affine map layer 0 -> layer L, its held-out R², and the residual it leaves.

The seed fits ``y = W x + b`` with Adam on the MSE; the minimiser is the least-squares solution,
which ridge gives in closed form (float64 normal equations, penalty relative to the mean
eigenvalue of x's covariance, as ``residual.ridge_alpha``). Adam stays as an option
(``probes.map_solver: adam``) and must land on the same map (tests/probes).

R² on held-out tokens is reported two ways: the fraction of variance explained summed over
dimensions (``fve``, the paper's number) and the mean of the per-dimension R² (``uniform``,
scikit-learn's ``r2_score`` default, likely the seed's). The **token-mean** R², each held-out
token predicted by the mean y of its id in training, is the nonparametric counterpart for a
Gemma layer 0 (a function of the id): no linearity assumed, but noisy for ids seen a few times,
so on finite data it need not beat the affine map.
"""

from __future__ import annotations

import numpy as np


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """``W`` [d_x, d_y] and ``b`` minimising ‖y − xW − b‖² + α·mean_eig·‖W‖², in float64."""
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    mx, my = x64.mean(axis=0), y64.mean(axis=0)
    xc = x64 - mx
    cov = xc.T @ xc / len(x)
    penalty = alpha * float(np.trace(cov)) / cov.shape[0]
    w = np.linalg.solve(cov + penalty * np.eye(cov.shape[0]), xc.T @ (y64 - my) / len(x))
    return w, my - mx @ w


def fit_adam(x: np.ndarray, y: np.ndarray, lr: float, epochs: int, seed: int,
             batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The seed's fit: ``torch.nn.Linear`` on the MSE with Adam, minibatches, on standardised x and
    y (so one learning rate suits every model; the minimiser is the same map), the learning rate annealed to 0 (cosine)
    so the last steps settle on the least-squares map; returned in the raw units of x and y."""
    import torch

    torch.manual_seed(seed)
    mx, sx = x.mean(axis=0), x.std(axis=0)
    sx = np.where(sx > 0, sx, 1.0)
    my, sy = y.mean(axis=0), y.std(axis=0)
    sy = np.where(sy > 0, sy, 1.0)
    xs = torch.from_numpy(((x - mx) / sx).astype(np.float32))
    yc = torch.from_numpy(((y - my) / sy).astype(np.float32))
    layer = torch.nn.Linear(x.shape[1], y.shape[1])
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    steps = epochs * -(-len(xs) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)   # no minibatch noise floor at the end
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(xs), generator=gen).split(batch_size):
            opt.zero_grad()
            torch.nn.functional.mse_loss(layer(xs[batch]), yc[batch]).backward()
            opt.step()
            schedule.step()
    w = layer.weight.detach().numpy().T.astype(np.float64) * sy[None, :] / sx[:, None]
    b = layer.bias.detach().numpy().astype(np.float64) * sy + my - mx @ w
    return w, b


def predict(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (x.astype(np.float64) @ w + b).astype(np.float32)


def r_squared(y: np.ndarray, pred: np.ndarray) -> dict:
    """``fve`` (1 − SSE/SST over all dimensions) and ``uniform`` (mean per-dimension R²)."""
    y64 = y.astype(np.float64)
    sse = ((y64 - pred) ** 2).sum(axis=0)
    sst = ((y64 - y64.mean(axis=0)) ** 2).sum(axis=0)
    return {"fve": float(1 - sse.sum() / sst.sum()), "uniform": float(np.mean(1 - sse / np.where(sst > 0, sst, 1.0)))}


def token_means(ids_train: np.ndarray, y_train: np.ndarray, ids_query: np.ndarray) -> np.ndarray:
    """Each query token's prediction: the mean training y of its id, or the global mean if unseen."""
    from scipy.sparse import csr_matrix

    uniq, inverse = np.unique(ids_train, return_inverse=True)
    onehot = csr_matrix((np.ones(len(inverse)), (inverse, np.arange(len(inverse)))), shape=(len(uniq), len(inverse)))
    sums = onehot @ y_train.astype(np.float64)
    means = sums / np.bincount(inverse)[:, None]
    at = np.clip(np.searchsorted(uniq, ids_query), 0, len(uniq) - 1)
    known = uniq[at] == ids_query
    return np.where(known[:, None], means[at], y_train.mean(axis=0, dtype=np.float64)).astype(np.float32)
