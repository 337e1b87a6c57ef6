"""SAELens's JumpReLU training forward with a hand-written backward: five GEMMs, two fused passes.

Why not ``JumpReLUTrainingSAE.training_forward_pass`` as it stands: its maths is right, but on
CPU its autograd graph spends as long on the [batch, width] latents as on its five GEMMs. Eager,
every JumpReLU/Step pseudo-derivative is its own pass; under ``torch.compile`` Inductor's
min-cut partitioner saves boolean masks for the backward, and Inductor's CPU code stored bools
~30× slower than floats (35 against 1.2 ms for a [1024, 4096] mask, 2-core AMD EPYC).
``bench/bench_sae.py`` times SAELens's compiled forward and this one against the GEMM roofline
in one run.

Here the forward saves only the pre-activations and the features and the backward recomputes
every mask from them, so a step is the five GEMMs (x·W_enc, f·W_dec, fᵀ·g, g·W_decᵀ, xᵀ·g_pre)
plus one fused element-wise pass each way. The latents are laid out [width, batch] (the GEMMs
write and read them transposed at the same speed), so the backward's per-feature sums over the
batch (∂threshold, ∂b_enc) run along contiguous memory instead of striding down columns: the
two passes went from 3.8 to 2.5 ms per [1024, 4096] batch on a 2-core Xeon; the tensors handed
to SAELens are [batch, width] views of them. The maths is SAELens's, term for term
(``tests/sae/test_fused.py`` checks the losses, the outputs and every gradient against
SAELens's own forward, in both sparsity modes):

    pre = x W_enc + b_enc,   f = pre·[pre > t],   x̂ = f W_dec + b_dec
    loss = mean_b ‖x̂_b − x_b‖² + mean_b c·φ(l0_b),   l0_b = Σ_j [pre_bj > t_j]
    φ(l) = l ("step", Gemma Scope 1) or 2/L·(l − L)² ("quadratic", Gemma Scope 2)

with the rectangle-kernel pseudo-derivatives of bandwidth ε, K_bj = [|pre_bj − t_j|/ε < ½]:

    ∂loss/∂pre_bj = [pre_bj > t_j]·∂loss/∂f_bj
    ∂loss/∂t_j    = −Σ_b K_bj·(t_j·∂loss/∂f_bj + ∂loss/∂l0_b)/ε

Everything around the forward stays SAELens's: ``SAETrainer.step`` (Adam, LR and λ schedules,
gradient clipping, dead-feature tracking), the parameters, their checkpoint format, and the
non-negative threshold projection.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _forward_gate(pre_t: torch.Tensor, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """JumpReLU features and each token's L0, in one pass over ``pre_t`` ([width, batch])."""
    active = pre_t > threshold[:, None]
    return torch.where(active, pre_t, 0.0), active.sum(0, dtype=pre_t.dtype)


def _backward_gate(
    pre_t: torch.Tensor, grad_f_t: torch.Tensor, threshold: torch.Tensor, grad_l0: torch.Tensor, bandwidth: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """∂loss/∂pre ([width, batch]), ∂loss/∂threshold and ∂loss/∂b_enc from the JumpReLU and Step pseudo-derivatives."""
    t = threshold[:, None]
    u = (pre_t - t) / bandwidth
    kernel = (u > -0.5) & (u < 0.5)
    grad_threshold = -torch.where(kernel, t * grad_f_t + grad_l0[None, :], 0.0).sum(1) / bandwidth
    grad_pre_t = torch.where(pre_t > t, grad_f_t, 0.0)
    return grad_pre_t, grad_threshold, grad_pre_t.sum(1)


class _JumpReLUTraining(torch.autograd.Function):
    """Losses (differentiable) and pre-activations, features, reconstruction (not) of one batch."""

    @staticmethod
    def forward(ctx, x, w_enc, b_enc, threshold, w_dec, b_dec, coefficient, target_l0, bandwidth, gates):
        forward_gate, backward_gate = gates
        pre_t = torch.addmm(b_enc[:, None], w_enc.t(), x.t())
        f_t, l0 = forward_gate(pre_t, threshold)
        x_hat = torch.addmm(b_dec, f_t.t(), w_dec)
        diff = x_hat - x
        mse = diff.pow(2).sum(-1).mean()
        batch = x.shape[0]
        if target_l0 is None:
            l0_loss = coefficient * l0.mean()
            dl0 = torch.full_like(l0, coefficient / batch)
        else:
            l0_loss = (coefficient * 2 / target_l0 * (l0 - target_l0).pow(2)).mean()
            dl0 = coefficient * 4 / target_l0 * (l0 - target_l0) / batch
        ctx.save_for_backward(x, pre_t, f_t, diff, dl0, threshold, w_dec)
        ctx.bandwidth, ctx.backward_gate = bandwidth, backward_gate
        pre, f = pre_t.t(), f_t.t()
        ctx.mark_non_differentiable(pre, f, x_hat)
        ctx.set_materialize_grads(False)  # else autograd zero-fills a [batch, width] gradient for pre and f
        return mse, l0_loss, pre, f, x_hat

    @staticmethod
    def backward(ctx, grad_mse, grad_l0_loss, *_unused):
        x, pre_t, f_t, diff, dl0, threshold, w_dec = ctx.saved_tensors
        grad_x_hat = diff * (2 * grad_mse / x.shape[0])
        grad_w_dec = f_t @ grad_x_hat
        grad_f_t = w_dec @ grad_x_hat.t()
        grad_pre_t, grad_threshold, grad_b_enc = ctx.backward_gate(pre_t, grad_f_t, threshold, dl0 * grad_l0_loss, ctx.bandwidth)
        grad_w_enc = x.t() @ grad_pre_t.t()
        return None, grad_w_enc, grad_b_enc, grad_threshold, grad_w_dec, grad_x_hat.sum(0), None, None, None, None


def check_supported(sae) -> None:
    """Raise if ``sae`` uses a SAELens option the fused forward does not implement."""
    cfg = sae.cfg
    unsupported = {
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "jumprelu_ste_to_input": cfg.jumprelu_ste_to_input,
        "pre_act_loss_coefficient": cfg.pre_act_loss_coefficient is not None,
        "normalize_activations": cfg.normalize_activations not in (None, "none"),
        "jumprelu_sparsity_loss_mode": cfg.jumprelu_sparsity_loss_mode not in ("step", "quadratic"),
        "dtype": sae.W_enc.dtype != torch.float32,
        "hooks": any(m._forward_hooks for m in sae.modules()),
    }
    bad = [name for name, on in unsupported.items() if on]
    if bad:
        raise ValueError(f"the fused JumpReLU training forward does not implement {', '.join(bad)}; train with SAELens's own forward")


def fused_training_forward(sae, compile: bool) -> Callable:
    """A drop-in for ``sae.training_forward_pass`` (same inputs, same ``TrainStepOutput``).

    ``compile`` runs the two element-wise passes through ``torch.compile`` (Inductor fuses
    each into one loop); eager they take a few passes each.
    """
    from sae_lens.saes.sae import TrainStepOutput

    check_supported(sae)
    gates = (_forward_gate, _backward_gate)
    if compile:
        gates = tuple(torch.compile(gate, dynamic=False) for gate in gates)
    target_l0 = sae.cfg.target_l0 if sae.cfg.jumprelu_sparsity_loss_mode == "quadratic" else None

    def training_forward_pass(step_input) -> TrainStepOutput:
        with torch.no_grad():
            sae.threshold.data.clamp_(min=0.0)  # as SAELens: the gate must not pass negative pre-activations
        x = step_input.sae_in
        mse, l0_loss, pre, f, x_hat = _JumpReLUTraining.apply(
            x, sae.W_enc, sae.b_enc, sae.threshold, sae.W_dec, sae.b_dec,
            float(step_input.coefficients["l0"]), target_l0, sae.bandwidth, gates,
        )
        return TrainStepOutput(
            sae_in=x, sae_out=x_hat, feature_acts=f, hidden_pre=pre, loss=mse + l0_loss,
            losses={"mse_loss": mse, "l0_loss": l0_loss},
        )

    return training_forward_pass
