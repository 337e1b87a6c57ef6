"""SAELens's JumpReLU training forward with a hand-written, sparse backward: one GEMM, then sparse work.

Why not ``JumpReLUTrainingSAE.training_forward_pass`` as it stands: its maths is right, but it
runs five dense GEMMs per step (x·W_enc, f·W_dec, fᵀ·g, g·W_decᵀ, xᵀ·g_pre), and four of them
multiply by the feature activations f or their gradient, which are zero outside the ~L0 of
``width`` features each token fires (~0.5% at L0 20 of 4096). On CPU its autograd graph also
spends as long on the dense [batch, width] latents as on the GEMMs. ``bench/bench_sae.py`` times
SAELens's compiled forward and this one in one run.

Here only the encoder GEMM is dense (every pre-activation is needed to know which features
fire). The rest runs on the active (feature, token) pairs, found once per step:

- the decode ``x̂ = f W_dec + b_dec`` and the two weight gradients ``∂W_dec = fᵀ g`` and
  ``∂W_enc = xᵀ g_pre`` are weighted row sums, which ``torch.nn.functional.embedding_bag``
  (FBGEMM's kernel on x86) computes from the index lists without touching the zeros;
- ``∂f = g W_decᵀ`` is needed only where a feature fired (for ``∂pre``) or sits within the
  kernel's bandwidth of its threshold (for ``∂threshold``): ``torch.sparse.sampled_addmm``
  computes exactly those entries.

torch's sparse CSR matmuls and indexed ``index_add_`` were 10-40× slower than these two kernels
for the same products on 2 CPU cores (``bench/bench_sae.py`` notes), which is why they are not
used. The pre-activations are laid out [width, batch], so ``nonzero`` lists the active pairs
feature by feature (the order the weight gradients' bags need); the decode's per-token bags
come from one stable sort. The maths is SAELens's, term for term (``tests/sae/test_fused.py``
checks the losses, the outputs and every gradient against SAELens's own forward, in both
sparsity modes):

    pre = x W_enc + b_enc,   f = pre·[pre > t],   x̂ = f W_dec + b_dec
    loss = mean_b ‖x̂_b − x_b‖² + mean_b c·φ(l0_b),   l0_b = Σ_j [pre_bj > t_j]
    φ(l) = l ("step", Gemma Scope 1) or 2/L·(l − L)² ("quadratic", Gemma Scope 2)

with the rectangle-kernel pseudo-derivatives of bandwidth ε, K_bj = [|pre_bj − t_j|/ε < ½]:

    ∂loss/∂pre_bj = [pre_bj > t_j]·∂loss/∂f_bj
    ∂loss/∂t_j    = −Σ_b K_bj·(t_j·∂loss/∂f_bj + ∂loss/∂l0_b)/ε

The cost of the sparse work grows with L0: early in training, before the L0 penalty has warmed
up, most features fire and a step costs about what the dense one did; from then on it is the
encoder GEMM plus a few passes over [width, batch]. Everything around the forward stays
SAELens's: ``SAETrainer.step`` (Adam, LR and λ schedules, gradient clipping, dead-feature
tracking), the parameters, their checkpoint format, and the non-negative threshold projection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _gate(pre_t: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """One pass over ``pre_t`` ([width, batch]): bit 0 = fires (pre > t), bit 1 = in the kernel's band (|pre − t| < ε/2).

    uint8, not bool: Inductor's CPU code stores bools ~10× slower than bytes (a [4096, 1024]
    gate: 30 against 3.9 ms on a 2-core AMD EPYC).
    """
    distance = pre_t - threshold[:, None]
    return (torch.where(distance > 0, 1, 0) + torch.where(distance.abs() < bandwidth / 2, 2, 0)).to(torch.uint8)


def _transpose(w: torch.Tensor) -> torch.Tensor:
    """``w.t()`` in contiguous memory, so autograd accumulates ∂W_enc without a copy of its own.

    Compiled, Inductor writes it tile by tile: 4.3 against 7.5 ms for eager ``.t().contiguous()``
    of a [4096, 640] gradient on 2 cores, a sixth of a batch-256 step.
    """
    return w.t().contiguous()


def _row_starts(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """CSR row pointers of sorted row ids: where each row's entries start, and the end."""
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=n_rows), 0, out=crow[1:])
    return crow


@dataclass
class Pairs:
    """(feature, token) pairs of one batch, feature by feature, with ``crow[j]`` where feature j's start."""

    features: torch.Tensor
    tokens: torch.Tensor
    crow: torch.Tensor

    @classmethod
    def where(cls, features: torch.Tensor, tokens: torch.Tensor, n_features: int) -> Pairs:
        return cls(features, tokens, _row_starts(features, n_features))

    def subset(self, keep: torch.Tensor, n_features: int) -> Pairs:
        return Pairs.where(self.features[keep], self.tokens[keep], n_features)

    def rows_dot(self, w_dec: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """(W_dec gᵀ)_jb at these pairs only, in their order: ∂loss/∂f where it is needed."""
        values = torch.zeros(len(self.tokens), dtype=g.dtype, device=g.device)
        pattern = torch.sparse_csr_tensor(self.crow, self.tokens, values, (len(w_dec), len(g)), check_invariants=False)
        return torch.sparse.sampled_addmm(pattern, w_dec, g.t(), beta=0.0).values()

    def feature_sums(self, per_token: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Σ_b weights_jb · per_token_b for every feature j ([width, d]): ∂W_dec and ∂W_encᵀ."""
        return F.embedding_bag(self.tokens, per_token, self.crow[:-1], per_sample_weights=weights, mode="sum")

    def token_sums(self, rows: torch.Tensor, weights: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """Σ_j weights_jb · rows_j for every token b ([batch, d]): the decode f W_dec."""
        order = torch.sort(self.tokens, stable=True).indices
        offsets = torch.zeros(n_tokens, dtype=torch.int64, device=rows.device)
        torch.cumsum(torch.bincount(self.tokens, minlength=n_tokens)[:-1], 0, out=offsets[1:])
        return F.embedding_bag(self.features[order], rows, offsets, per_sample_weights=weights[order], mode="sum")


@dataclass
class StepSettings:
    """What one training step needs besides the parameters: coefficients, the dead features, the kernels."""

    l0_coefficient: float
    target_l0: float | None  # None: the "step" penalty
    bandwidth: float
    pre_act_coefficient: float | None
    aux_coefficient: float | None
    dead: torch.Tensor | None  # bool [width]: SAELens's dead-feature mask (the auxiliary losses' features)
    gate: Callable
    transpose: Callable


@dataclass
class _AuxK:
    """The top-k auxiliary loss's forward state: which dead features, their selected pre-activations."""

    dead_ids: torch.Tensor  # [n_dead]
    top: torch.Tensor  # [k, batch]: rows of the dead block selected for each token
    acts: torch.Tensor  # [n_dead, batch]: the selected pre-activations, zero elsewhere
    error: torch.Tensor  # [batch, d]: reconstruction of the residual − the residual
    weight: float  # coefficient × SAELens's scale min(n_dead / k_aux, 1)


def _auxk_forward(pre_t: torch.Tensor, dead: torch.Tensor, w_dec: torch.Tensor, residual: torch.Tensor,
                  coefficient: float) -> tuple[torch.Tensor, _AuxK]:
    """SAELens's TopK auxiliary loss (Gao et al. 2024) on the dead features of a JumpReLU SAE.

    The top k_aux = d_in/2 pre-activations among the dead features of each token reconstruct the
    residual x − x̂ of the live ones (held constant): coefficient · min(n_dead/k_aux, 1) ·
    mean_b ‖Σ_j a_bj d_j − r_b‖². Computed on the dense [dead, batch] block (k_aux of ~n_dead is
    not sparse); its cost falls as features revive.
    """
    dead_ids = dead.nonzero()[:, 0]
    k_aux = w_dec.shape[1] // 2
    weight = coefficient * min(len(dead_ids) / k_aux, 1.0)
    block = pre_t[dead_ids]
    top = block.topk(min(k_aux, len(dead_ids)), dim=0).indices
    acts = torch.zeros_like(block).scatter_(0, top, block.gather(0, top))
    error = acts.t() @ w_dec[dead_ids] - residual
    return weight * error.pow(2).sum(-1).mean(), _AuxK(dead_ids, top, acts, error, weight)


class _JumpReLUTraining(torch.autograd.Function):
    """Losses (differentiable) and pre-activations, features, reconstruction (not) of one batch.

    The features come back as a sparse COO [batch, width] tensor, which ``SAETrainer.step``'s
    dead-feature tracking reads as it reads a dense one.

    The pre-activation loss (Anthropic's, as SAELens computes it: over the dead features only)
    c/B Σ_b Σ_{j dead} ‖d_j‖ relu(t_j − pre_bj) touches every token of a dead feature, so its
    sums are taken without a [dead, batch] GEMM: a dead feature fires on few tokens, and
    Σ_{b: pre < t} x_b = Σ_b x_b − Σ_{b fires} x_b.
    """

    @staticmethod
    def forward(ctx, x, w_enc, b_enc, threshold, w_dec, b_dec, settings: StepSettings):
        batch, width = x.shape[0], w_dec.shape[0]
        pre_t = torch.addmm(b_enc[:, None], w_enc.t(), x.t())
        state = settings.gate(pre_t, threshold, settings.bandwidth)
        features, tokens = state.nonzero(as_tuple=True)  # fires or in the band: every pair the backward reads
        kind = state[features, tokens]
        marked = Pairs.where(features, tokens, width)
        fires = kind.bitwise_and(1).bool()
        active = marked.subset(fires, width)
        values = pre_t[active.features, active.tokens]
        l0 = torch.bincount(active.tokens, minlength=batch).to(x.dtype)
        x_hat = active.token_sums(w_dec, values, batch).add_(b_dec)
        diff = x_hat - x
        mse = diff.pow(2).sum(-1).mean()
        c, target = settings.l0_coefficient, settings.target_l0
        if target is None:
            l0_loss = c * l0.mean()
            dl0 = torch.full_like(l0, c / batch)
        else:
            l0_loss = (c * 2 / target * (l0 - target).pow(2)).mean()
            dl0 = c * 4 / target * (l0 - target) / batch
        pre_act_loss, pre_act_weight, below = x.new_zeros(()), None, None
        aux_loss, ctx.aux = x.new_zeros(()), None
        if settings.aux_coefficient is not None and settings.dead is not None and settings.dead.any():
            aux_loss, ctx.aux = _auxk_forward(pre_t, settings.dead, w_dec, -diff, settings.aux_coefficient)
        if settings.pre_act_coefficient is not None and settings.dead is not None and settings.dead.any():
            norms = w_dec.norm(dim=1)
            pre_act_weight = settings.pre_act_coefficient / batch * norms * settings.dead  # ∂loss/∂relu(t − pre)
            below = torch.where(settings.dead[:, None], (threshold[:, None] - pre_t).clamp_min_(0.0), 0.0).sum(1)
            pre_act_loss = (pre_act_weight * below).sum()
        ctx.save_for_backward(x, diff, dl0, threshold, w_dec, values, fires, kind)
        ctx.marked, ctx.active, ctx.settings = marked, active, settings
        ctx.pre_act_weight, ctx.below = pre_act_weight, below
        f = torch.sparse_coo_tensor(torch.stack([active.tokens, active.features]), values, (batch, width),
                                    is_coalesced=False, check_invariants=False)
        pre = pre_t.t()
        ctx.mark_non_differentiable(pre, f, x_hat)
        ctx.set_materialize_grads(False)  # else autograd zero-fills a [batch, width] gradient for pre and f
        return mse, l0_loss, pre_act_loss, aux_loss, pre, f, x_hat

    @staticmethod
    def backward(ctx, grad_mse, grad_l0_loss, grad_pre_act, grad_aux, *_unused):
        x, diff, dl0, threshold, w_dec, values, fires, kind = ctx.saved_tensors
        marked, active, settings = ctx.marked, ctx.active, ctx.settings
        g = diff * (2 * grad_mse / x.shape[0])  # ∂loss/∂x̂
        grad_f = marked.rows_dot(w_dec, g)
        grad_pre = grad_f[fires]  # ∂pre = ∂f where the feature fires
        grad_w_dec = active.feature_sums(g, values)

        band = kind >= 2
        features, tokens = marked.features[band], marked.tokens[band]
        per_pair = threshold[features] * grad_f[band] + dl0[tokens] * grad_l0_loss
        grad_threshold = torch.zeros_like(threshold).index_add_(0, features, per_pair).div_(-settings.bandwidth)
        weight = ctx.pre_act_weight
        if weight is None or grad_pre_act is None:
            grad_w_enc = settings.transpose(active.feature_sums(x, grad_pre))
            grad_b_enc = torch.zeros_like(threshold).index_add_(0, active.features, grad_pre)
        else:  # relu(t − pre) of a dead feature: ∂pre = −w where pre < t, i.e. everywhere but where it fires
            w = weight * grad_pre_act
            n_below = x.shape[0] - torch.bincount(active.features, minlength=len(threshold)).to(x.dtype)
            grad_w_enc = settings.transpose(active.feature_sums(x, grad_pre + w[active.features]))
            grad_w_enc.sub_(x.sum(0)[:, None] * w[None, :])
            grad_b_enc = torch.zeros_like(threshold).index_add_(0, active.features, grad_pre).sub_(w * n_below)
            grad_threshold.add_(w * n_below)
            grad_w_dec.add_(w_dec * (grad_pre_act * ctx.below * weight / w_dec.norm(dim=1))[:, None])  # ∂‖d_j‖ = d_j/‖d_j‖
        aux = ctx.aux
        if aux is not None and grad_aux is not None:
            g_aux = aux.error * (2 * aux.weight * grad_aux / x.shape[0])
            grad_w_dec.index_add_(0, aux.dead_ids, aux.acts @ g_aux)
            grad_selected = torch.zeros_like(aux.acts).scatter_(0, aux.top, (w_dec[aux.dead_ids] @ g_aux.t()).gather(0, aux.top))
            grad_b_enc.index_add_(0, aux.dead_ids, grad_selected.sum(1))
            grad_w_enc.index_add_(1, aux.dead_ids, x.t() @ grad_selected.t())
        return None, grad_w_enc, grad_b_enc, grad_threshold, grad_w_dec, g.sum(0), None


def check_supported(sae) -> None:
    """Raise if ``sae`` uses a SAELens option the fused forward does not implement."""
    cfg = sae.cfg
    unsupported = {
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "jumprelu_ste_to_input": cfg.jumprelu_ste_to_input,
        "normalize_activations": cfg.normalize_activations not in (None, "none"),
        "jumprelu_sparsity_loss_mode": cfg.jumprelu_sparsity_loss_mode not in ("step", "quadratic"),
        "dtype": sae.W_enc.dtype != torch.float32,
        "hooks": any(m._forward_hooks for m in sae.modules()),
    }
    bad = [name for name, on in unsupported.items() if on]
    if bad:
        raise ValueError(f"the fused JumpReLU training forward does not implement {', '.join(bad)}; train with SAELens's own forward")


def fused_training_forward(sae, compile: bool, aux_coefficient: float | None = None) -> Callable:
    """A drop-in for ``sae.training_forward_pass`` (same inputs, same ``TrainStepOutput``).

    ``compile`` runs the gate's pass over [width, batch] through ``torch.compile`` (Inductor
    fuses it into one loop); eager it takes several passes. ``aux_coefficient`` adds SAELens's
    TopK auxiliary loss on the dead features (:func:`_auxk_forward`), which SAELens's JumpReLU
    training does not offer.
    """
    from sae_lens.saes.sae import TrainStepOutput

    check_supported(sae)
    kernels = (_gate, _transpose)
    if compile:
        kernels = tuple(torch.compile(kernel, dynamic=False) for kernel in kernels)
    cfg = sae.cfg
    target_l0 = cfg.target_l0 if cfg.jumprelu_sparsity_loss_mode == "quadratic" else None

    def training_forward_pass(step_input) -> TrainStepOutput:
        with torch.no_grad():
            sae.threshold.data.clamp_(min=0.0)  # as SAELens: the gate must not pass negative pre-activations
        x = step_input.sae_in
        settings = StepSettings(float(step_input.coefficients["l0"]), target_l0, sae.bandwidth,
                                cfg.pre_act_loss_coefficient, aux_coefficient, step_input.dead_neuron_mask, *kernels)
        mse, l0_loss, pre_act_loss, aux_loss, pre, f, x_hat = _JumpReLUTraining.apply(
            x, sae.W_enc, sae.b_enc, sae.threshold, sae.W_dec, sae.b_dec, settings)
        losses = {"mse_loss": mse, "l0_loss": l0_loss}
        if cfg.pre_act_loss_coefficient is not None:
            losses["pre_act_loss"] = pre_act_loss
        if aux_coefficient is not None:
            losses["auxiliary_reconstruction_loss"] = aux_loss
        return TrainStepOutput(sae_in=x, sae_out=x_hat, feature_acts=f, hidden_pre=pre,
                               loss=sum(losses.values()), losses=losses)

    return training_forward_pass
