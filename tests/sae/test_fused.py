"""The fused JumpReLU training forward equals SAELens's own, value for value and gradient for gradient."""

from __future__ import annotations

import pytest
import torch
from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput

from darkmatter.sae.fused import fused_training_forward


def _sae(sparsity: str, width: int = 96, d: int = 24, bandwidth: float = 0.05, pre_act: float | None = None) -> JumpReLUTrainingSAE:
    torch.manual_seed(0)
    sae = JumpReLUTrainingSAE(
        JumpReLUTrainingSAEConfig(
            d_in=d, d_sae=width, apply_b_dec_to_input=False, decoder_init_norm=1.0,
            jumprelu_bandwidth=bandwidth, jumprelu_sparsity_loss_mode=sparsity,
            target_l0=12.0 if sparsity == "quadratic" else None, pre_act_loss_coefficient=pre_act,
        )
    )
    with torch.no_grad():  # thresholds spread over the pre-activations, so both kernels are exercised
        sae.b_enc.normal_(0, 0.2)
        sae.threshold.uniform_(0.0, 0.6)
        sae.b_dec.normal_(0, 0.1)
    return sae


def _run(sae, forward, x, coefficient, dead=None):
    sae.zero_grad()
    out = forward(TrainStepInput(sae_in=x, coefficients={"l0": coefficient}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False))
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    return out, grads


@pytest.mark.parametrize("sparsity", ["step", "quadratic"])
@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("pre_act", [None, 0.05])
@pytest.mark.parametrize("firing", ["many", "few"])
def test_losses_outputs_and_every_gradient_match_saelens(sparsity, compile, pre_act, firing):
    """Both sparsity penalties, with and without the pre-activation loss on a set of dead features,
    with a third of the features firing (as early in training) and with ~1% (as a trained SAE)."""
    sae = _sae(sparsity, pre_act=pre_act)
    x = torch.randn(256, sae.cfg.d_in)
    dead = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    dead[::3] = True
    with torch.no_grad():  # a dead feature fires rarely: high thresholds on most of them, a few still firing
        sae.threshold[::3] += 0.4
        if firing == "few":
            sae.threshold += 2.0
        density = float(((x @ sae.W_enc + sae.b_enc) > sae.threshold).float().mean())
    assert (density > 0.2) if firing == "many" else (density < 0.03)
    ours, our_grads = _run(sae, fused_training_forward(sae, compile=compile), x, 0.3, dead)
    theirs, their_grads = _run(sae, sae.training_forward_pass, x, 0.3, dead)
    assert ours.losses.keys() == theirs.losses.keys()
    if pre_act is not None:
        assert theirs.losses["pre_act_loss"] > 0
        assert ours.feature_acts.to_dense()[:, dead].any()  # the Σ over firing tokens is exercised
    torch.testing.assert_close(ours.feature_acts.to_dense(), theirs.feature_acts, rtol=1e-5, atol=1e-6)
    for name in ("sae_out", "hidden_pre"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=1e-5, atol=1e-6)
    for name in theirs.losses:
        torch.testing.assert_close(ours.losses[name], theirs.losses[name], rtol=1e-5, atol=1e-6)
    assert set(our_grads) == set(their_grads) == {"W_enc", "b_enc", "threshold", "W_dec", "b_dec"}
    for name, grad in their_grads.items():
        assert grad.abs().max() > 0, name  # the comparison is not between zeros
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_negative_thresholds_are_projected_as_in_saelens():
    sae = _sae("step")
    with torch.no_grad():
        sae.threshold[:5] = -1.0
    _run(sae, fused_training_forward(sae, compile=False), torch.randn(8, sae.cfg.d_in), 0.1)
    assert sae.threshold.min() >= 0


def test_an_option_it_does_not_implement_is_refused():
    sae = _sae("step")
    sae.cfg.jumprelu_ste_to_input = True
    with pytest.raises(ValueError, match="jumprelu_ste_to_input"):
        fused_training_forward(sae, compile=False)


@pytest.mark.parametrize("n_dead", [5, 40])
def test_the_topk_auxiliary_loss_matches_saelens_on_a_jumprelu_sae(n_dead):
    """SAELens's TopK auxiliary loss (its ``calculate_topk_aux_acts``, residual held constant, scale
    min(n_dead/k_aux, 1)) added to SAELens's own JumpReLU forward: our loss and every gradient agree,
    with fewer dead features than k_aux = d_in/2 and with more."""
    from sae_lens.saes.topk_sae import calculate_topk_aux_acts

    sae = _sae("step")
    x = torch.randn(256, sae.cfg.d_in)
    dead = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    dead[torch.randperm(sae.cfg.d_sae, generator=torch.Generator().manual_seed(1))[:n_dead]] = True
    coefficient = 0.5

    def theirs(step_input):
        out = sae.training_forward_pass(step_input)
        k_aux = sae.cfg.d_in // 2
        acts = calculate_topk_aux_acts(min(k_aux, n_dead), out.hidden_pre, step_input.dead_neuron_mask)
        aux = coefficient * min(n_dead / k_aux, 1.0) * (acts @ sae.W_dec - (out.sae_in - out.sae_out).detach()).pow(2).sum(-1).mean()
        out.losses["auxiliary_reconstruction_loss"] = aux
        out.loss = out.loss + aux
        return out

    ours, our_grads = _run(sae, fused_training_forward(sae, compile=False, aux_coefficient=coefficient), x, 0.3, dead)
    reference, their_grads = _run(sae, theirs, x, 0.3, dead)
    assert ours.losses["auxiliary_reconstruction_loss"] > 0
    for name in reference.losses:
        torch.testing.assert_close(ours.losses[name], reference.losses[name], rtol=1e-5, atol=1e-6)
    for name, grad in their_grads.items():
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
