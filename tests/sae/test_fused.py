"""The fused JumpReLU training forward equals SAELens's own, value for value and gradient for gradient."""

from __future__ import annotations

import pytest
import torch
from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput

from darkmatter.sae.fused import fused_training_forward


def _sae(sparsity: str, width: int = 96, d: int = 24, bandwidth: float = 0.05) -> JumpReLUTrainingSAE:
    torch.manual_seed(0)
    sae = JumpReLUTrainingSAE(
        JumpReLUTrainingSAEConfig(
            d_in=d, d_sae=width, apply_b_dec_to_input=False, decoder_init_norm=1.0,
            jumprelu_bandwidth=bandwidth, jumprelu_sparsity_loss_mode=sparsity,
            target_l0=12.0 if sparsity == "quadratic" else None,
        )
    )
    with torch.no_grad():  # thresholds spread over the pre-activations, so both kernels are exercised
        sae.b_enc.normal_(0, 0.2)
        sae.threshold.uniform_(0.0, 0.6)
        sae.b_dec.normal_(0, 0.1)
    return sae


def _run(sae, forward, x, coefficient):
    sae.zero_grad()
    out = forward(TrainStepInput(sae_in=x, coefficients={"l0": coefficient}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False))
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    return out, grads


@pytest.mark.parametrize("sparsity", ["step", "quadratic"])
@pytest.mark.parametrize("compile", [False, True])
def test_losses_outputs_and_every_gradient_match_saelens(sparsity, compile):
    sae = _sae(sparsity)
    x = torch.randn(256, sae.cfg.d_in)
    ours, our_grads = _run(sae, fused_training_forward(sae, compile=compile), x, 0.3)
    theirs, their_grads = _run(sae, sae.training_forward_pass, x, 0.3)
    for name in ("sae_out", "feature_acts", "hidden_pre"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=1e-5, atol=1e-6)
    for name in ("mse_loss", "l0_loss"):
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
