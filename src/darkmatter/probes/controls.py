"""One feature's probe and its controls, on the same balanced examples.

For a feature (a binary label: the SAE latent fires), positives are capped at
``probes.max_positives`` per split and balanced by as many inactive tokens, so accuracy is
balanced accuracy and chance is 0.5. On the training tokens (training rows, seen types):

- **probe**: L2 logistic regression (scikit-learn's objective, solved batched by
  :func:`fit_logistic`) on the standardised layer-0 residual;
  evaluated on validation tokens of seen types (the seed's number) and of held-out types;
- **shuffled labels**: the same probe fitted to permuted training labels (what fitting noise scores);
- **token lookup**: the majority label per token id among the training examples, predicting
  "inactive" for an id it has not seen (on held-out types it is at chance by construction);
- **context lookup**: the majority label per (previous id, current id) pair, backing off to the
  token lookup for an unseen pair;
- **position only**: logistic regression on the one-hot position in the row.

Layer 0 of Gemma is a function of the token id, so no layer-0 probe can beat the best function of
the id; the token lookup estimates that function from the same examples. The lookups are written
here (a dictionary of counts) because scikit-learn has no majority-per-key classifier with back-off;
the batched solver because scikit-learn fits one problem at a time (:func:`fit_logistic`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm
from sklearn.metrics import balanced_accuracy_score, log_loss

CONTROLS = ("shuffled", "token_lookup", "context_lookup", "position")


@dataclass(frozen=True)
class ProbeInputs:
    """What every probe and control reads, one row per flat token of the paired rows."""

    x0: np.ndarray          # standardised layer-0 residual [N, d]
    ids: np.ndarray         # token id [N]
    prev_ids: np.ndarray    # previous token id [N] (-1 at position 0)
    positions: np.ndarray   # position in the row [N]
    context: int


def standardise(x0: np.ndarray, fit_index: np.ndarray) -> np.ndarray:
    """Layer 0 centred and scaled per dimension with the training tokens' mean and std."""
    mean = x0[fit_index].mean(axis=0, dtype=np.float64)
    std = x0[fit_index].std(axis=0, dtype=np.float64)
    return ((x0 - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def balanced(index: np.ndarray, labels: np.ndarray, max_positives: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positives among ``index`` (at most ``max_positives``) and as many negatives; sorted, with labels."""
    pos, neg = index[labels[index]], index[~labels[index]]
    n = min(len(pos), len(neg), max_positives)
    chosen = np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)])
    order = np.argsort(chosen)
    return chosen[order], labels[chosen[order]]


class Lookup:
    """Majority label per key; ties and unseen keys fall back to ``fallback`` (or "inactive")."""

    def __init__(self, keys: np.ndarray, y: np.ndarray, fallback: Lookup | None = None):
        uniq, inverse = np.unique(keys, return_inverse=True)
        pos = np.bincount(inverse, weights=y.astype(float), minlength=len(uniq))
        total = np.bincount(inverse, minlength=len(uniq))
        self.keys, self.share = uniq, pos / total
        self.fallback = fallback

    def predict(self, keys: np.ndarray, fallback_keys: np.ndarray | None = None) -> np.ndarray:
        at = np.clip(np.searchsorted(self.keys, keys), 0, len(self.keys) - 1)
        known = self.keys[at] == keys
        share = np.where(known, self.share[at], 0.5)
        decided = share != 0.5
        pred = share > 0.5
        if self.fallback is not None and fallback_keys is not None:
            back = self.fallback.predict(fallback_keys)
            pred = np.where(decided, pred, back)
        return pred


def _pair_keys(inputs: ProbeInputs, index: np.ndarray) -> np.ndarray:
    return inputs.prev_ids[index].astype(np.int64) * (int(inputs.ids.max()) + 2) + inputs.ids[index]


@dataclass(frozen=True)
class LogisticFit:
    """Batched fits: ``weights`` [F, d], ``bias`` [F], and per problem its Newton iterations."""

    weights: np.ndarray
    bias: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray

    def logits(self, f: int, x: np.ndarray) -> np.ndarray:
        return x @ self.weights[f] + self.bias[f]


def fit_logistic(xs: list[np.ndarray], ys: list[np.ndarray], c: float, max_iter: int, chunk: int = 16,
                 desc: str = "logistic fits") -> LogisticFit:
    """L2 logistic regressions, one per (x, y), all at once: Newton's method with a backtracking
    line search on scikit-learn's objective Σᵢ log-loss + ‖w‖²/(2C) (bias unpenalised).

    Written here because scikit-learn fits one problem at a time: on 2 cores its newton-cholesky
    takes ~0.35 s per 640-dim probe, and the stage fits ~700. Batched, the Hessians are GEMMs
    (float32) over deduplicated rows, and every problem converges in ~10 steps; tests/probes checks
    the solution against ``sklearn.linear_model.LogisticRegression``. Converged: Newton decrement
    λ²/2 below 1e-9 per example, or no descent left at float64 precision.
    """
    import torch

    n_problems, d = len(xs), xs[0].shape[1]
    weights, bias = np.zeros((n_problems, d)), np.zeros(n_problems)
    n_iter, converged = np.zeros(n_problems, dtype=int), np.zeros(n_problems, dtype=bool)
    for lo in tqdm(range(0, n_problems, chunk), desc=desc, unit="chunk"):
        idx = range(lo, min(lo + chunk, n_problems))
        unique = [_deduplicate(np.asarray(xs[i], dtype=np.float32), ys[i]) for i in idx]
        n_max = max(len(u[0]) for u in unique)
        x = torch.zeros(len(idx), n_max, d + 1)
        y = torch.zeros(len(idx), n_max)
        m = torch.zeros(len(idx), n_max)
        for k, (rows, share, count) in enumerate(unique):
            n = len(rows)
            x[k, :n, :d] = torch.from_numpy(rows)
            x[k, :n, d] = 1.0
            y[k, :n] = torch.from_numpy(share)
            m[k, :n] = torch.from_numpy(count)
        w, its, done = _newton(x, y, m, c, max_iter)
        weights[lo:lo + len(idx)], bias[lo:lo + len(idx)] = w[:, :d], w[:, d]
        n_iter[lo:lo + len(idx)], converged[lo:lo + len(idx)] = its, done
    return LogisticFit(weights, bias, n_iter, converged)


def _deduplicate(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Identical rows merged: (unique rows, share of positives, count). The loss Σ count·(softplus(z) −
    share·z) equals the original sum exactly; a Gemma layer 0 repeats per token id (~2x fewer rows here)."""
    x = np.ascontiguousarray(x)
    keys = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()   # one bytes key per row: one sort
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    rows = x[first]
    count = np.bincount(inverse, minlength=len(rows)).astype(np.float32)
    return rows, (np.bincount(inverse, weights=y, minlength=len(rows)) / count).astype(np.float32), count


def _newton(x, y, m, c: float, max_iter: int):
    """Newton iterations for one padded chunk; logits, gradients and objective in float64, the
    Hessian and its Cholesky solve in float32 (an inexact Newton step only slows the last digits of
    convergence; the line search keeps every step a descent step)."""
    import torch

    n_prob, _, d1 = x.shape
    xd, yd, md = x.double(), y.double(), m.double()
    lam = torch.full((d1,), 1.0 / c, dtype=torch.float64)
    lam[-1] = 0.0
    counts = md.sum(1)
    w = torch.zeros(n_prob, d1, dtype=torch.float64)

    def objective(w):
        z = torch.bmm(xd, w.unsqueeze(2)).squeeze(2)
        return (md * (torch.nn.functional.softplus(z) - yd * z)).sum(1) + 0.5 * (lam * w * w).sum(1)

    f = objective(w)
    active = torch.ones(n_prob, dtype=torch.bool)
    converged = torch.zeros(n_prob, dtype=torch.bool)
    its = torch.zeros(n_prob, dtype=torch.long)
    for _ in range(max_iter):
        p = torch.sigmoid(torch.bmm(xd, w.unsqueeze(2)).squeeze(2))
        g = torch.bmm(xd.transpose(1, 2), (md * (p - yd)).unsqueeze(2)).squeeze(2) + lam * w
        s = (md * p * (1 - p)).float()
        h = torch.bmm(x.transpose(1, 2) * s.unsqueeze(1), x) + torch.diag(lam.float() + 1e-6)
        step = torch.cholesky_solve(g.float().unsqueeze(2), torch.linalg.cholesky(h)).squeeze(2).double()
        decrement = (g * step).sum(1)
        converged |= decrement / 2 <= 1e-9 * counts
        active &= ~converged
        if not active.any():
            break
        t = torch.ones(n_prob, dtype=torch.float64)
        new_f = objective(w - step)
        for _ in range(30):  # Armijo backtracking, per problem
            bad = active & (new_f > f - 1e-4 * t * decrement)
            if not bad.any():
                break
            t = torch.where(bad, t / 2, t)
            new_f = torch.where(bad, objective(w - t[:, None] * step), new_f)
        stalled = active & (new_f > f - 1e-4 * t * decrement)   # no descent left at float64 precision
        converged |= stalled
        active &= ~stalled
        w = torch.where(active[:, None], w - t[:, None] * step, w)
        f = torch.where(active, new_f, f)
        its += active.long()
    return w.numpy(), its.numpy(), converged.numpy()


def _accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(balanced_accuracy_score(y, pred))


def _log_loss(y: np.ndarray, logits: np.ndarray) -> float:
    return float(log_loss(y, 1 / (1 + np.exp(-logits)), labels=[0, 1]))


def probe_features(inputs: ProbeInputs, fires: np.ndarray, split, cfg, rng: np.random.Generator,
                   controls: bool = True) -> list[dict]:
    """Probe each column of ``fires`` ([N, F] bool) and, with ``controls``, fit every control.

    The lookups are cheap and always run; ``controls=False`` skips the shuffled-label and position fits.
    """
    n_feat = fires.shape[1]
    train, val, unseen = [], [], []
    for j in range(n_feat):
        train.append(balanced(split.train, fires[:, j], cfg.max_positives, rng))
        val.append(balanced(split.val, fires[:, j], cfg.max_positives, rng))
        n_pos = int(fires[split.unseen, j].sum())
        enough = cfg.min_val_positives <= n_pos < len(split.unseen)
        unseen.append(balanced(split.unseen, fires[:, j], cfg.max_positives, rng) if enough else None)
    probe = fit_logistic([inputs.x0[i] for i, _ in train], [y for _, y in train], cfg.c, cfg.max_iter,
                         desc="probes")
    if controls:
        shuffled = fit_logistic([inputs.x0[i] for i, _ in train], [rng.permutation(y) for _, y in train], cfg.c,
                                cfg.max_iter, desc="shuffled-label probes")
        onehot = np.eye(inputs.context, dtype=np.float32)
        position = fit_logistic([onehot[inputs.positions[i]] for i, _ in train], [y for _, y in train], cfg.c,
                                cfg.max_iter, desc="position probes")
    rows = []
    for j in range(n_feat):
        (tr, y_tr), (va, y_va) = train[j], val[j]
        tokens = Lookup(inputs.ids[tr], y_tr)
        pairs = Lookup(_pair_keys(inputs, tr), y_tr, fallback=tokens)
        row = {"n_train": int(len(tr)), "n_val": int(len(va)), "converged": bool(probe.converged[j]),
               "newton_iterations": int(probe.n_iter[j]),
               "probe": _accuracy(y_va, probe.logits(j, inputs.x0[va]) > 0),
               "train_loss": _log_loss(y_tr, probe.logits(j, inputs.x0[tr])),
               "val_loss": _log_loss(y_va, probe.logits(j, inputs.x0[va])),
               "token_lookup": _accuracy(y_va, tokens.predict(inputs.ids[va])),
               "context_lookup": _accuracy(y_va, pairs.predict(_pair_keys(inputs, va), inputs.ids[va])),
               "n_unseen_positives": int(fires[split.unseen, j].sum())}
        if unseen[j] is not None:
            un, y_un = unseen[j]
            row["unseen_probe"] = _accuracy(y_un, probe.logits(j, inputs.x0[un]) > 0)
            row["unseen_token_lookup"] = _accuracy(y_un, tokens.predict(inputs.ids[un]))
        else:
            row["unseen_probe"] = row["unseen_token_lookup"] = None
        if controls:
            row["shuffled"] = _accuracy(y_va, shuffled.logits(j, inputs.x0[va]) > 0)
            row["position"] = _accuracy(y_va, position.logits(j, onehot[inputs.positions[va]]) > 0)
        rows.append(row)
    return rows


def eligible_features(train_pos: np.ndarray, val_pos: np.ndarray, n_train: int, n_val: int, min_positives: int,
                      min_val_positives: int) -> dict:
    """Who qualifies, from per-feature positive counts on the ``n_train`` training and ``n_val``
    validation tokens (:func:`darkmatter.probes.stage.latent_counts`).

    A feature qualifies with at least the minimum positives in both and fewer positives than
    tokens (a feature firing everywhere has no negatives to balance against).
    """
    everywhere = (train_pos == n_train) | (val_pos == n_val)
    ok = (train_pos >= min_positives) & (val_pos >= min_val_positives) & ~everywhere
    dead = (train_pos == 0) & (val_pos == 0)
    return {"train_positives": train_pos, "val_positives": val_pos, "eligible": np.flatnonzero(ok),
            "n_dead": int(dead.sum()), "n_too_few": int((~ok & ~dead & ~everywhere).sum()),
            "n_everywhere": int(everywhere.sum())}
