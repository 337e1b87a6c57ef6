"""Dead-latent resampling (Bricken et al. 2023, "Towards Monosemanticity"), adapted to JumpReLU.

Every other dead-latent lever this project tried (SAELens's pre-activation loss and TopK auxiliary
loss, bandwidth, Adam β2, learning rate; ``docs/sae_recipe.md``) acts through gradients, and a
JumpReLU latent whose pre-activations all sit below its threshold gets none from the
reconstruction. Resampling moves it instead. SAELens v6 dropped its resampler (and never had one
for JumpReLU thresholds), so it is written here.

At a resampling step, each dead latent (SAELens's window: not fired on ``dead_window_tokens``
training tokens) is re-pointed at a training token the SAE reconstructs badly, drawn with
probability ∝ its squared error squared (Bricken et al.):

- decoder row d = (x − b_dec)/‖x − b_dec‖, the direction the SAE misses on that token;
- encoder column 0.2 · (the mean live encoder norm) · d, and b_enc = −w·b_dec, so the
  pre-activation reads the centred input as the initialisation does;
- the threshold at the quantile of its new pre-activations over the pool that fires it on the
  live latents' mean firing rate: a JumpReLU latent at the initial threshold would fire on half
  the tokens, and λ·L0 would spend its first steps killing it again;
- Adam's second moments of the moved entries at the live entries' mean (zero would make the next
  step ~30× the learning rate after bias correction), first moments at 0 (β1 is 0 anyway), and
  the latent's dead-window counter at 0.
"""

from __future__ import annotations

import numpy as np
import torch

#: Bricken et al.'s encoder scale: the new encoder column's norm relative to the live columns' mean.
ENCODER_SCALE = 0.2


@torch.no_grad()
def resample_dead(sae, trainer, pool: torch.Tensor, rng: np.random.Generator) -> int:
    """Re-point every dead latent of ``sae`` at a badly reconstructed token of ``pool`` (scaled
    training inputs, [n, d_in]); returns how many were resampled."""
    dead = trainer.dead_neurons.nonzero().flatten()
    if len(dead) == 0 or len(dead) == sae.cfg.d_sae:
        return 0
    alive = ~trainer.dead_neurons
    live = alive.nonzero().flatten()
    feats = sae.encode(pool)
    err = (sae.decode(feats) - pool).pow(2).sum(-1).double()
    weights = (err**2 / (err**2).sum()).cpu().numpy()
    chosen = torch.as_tensor(rng.choice(len(pool), size=len(dead), p=weights, replace=True))
    rate = float(feats[:, alive].gt(0).float().mean())
    d = pool[chosen] - sae.b_dec
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w = d.T * (ENCODER_SCALE * float(sae.W_enc[:, alive].norm(dim=0).mean()))
    sae.W_dec[dead] = d
    sae.W_enc[:, dead] = w
    sae.b_enc[dead] = -(sae.b_dec @ w)
    pre = (pool - sae.b_dec) @ w
    keep = max(1, round((1.0 - rate) * len(pool)))  # the k-th smallest: fires on ~rate of the pool
    sae.threshold[dead] = pre.kthvalue(keep, dim=0).values.clamp_min(0.0)
    # each moved parameter, and the axis its latents lie along
    for param, axis in ((sae.W_dec, 0), (sae.W_enc, 1), (sae.b_enc, 0), (sae.threshold, 0)):
        state = trainer.optimizer.state.get(param)
        if state:
            state["exp_avg"].index_fill_(axis, dead, 0.0)
            state["exp_avg_sq"].index_fill_(axis, dead, float(state["exp_avg_sq"].index_select(axis, live).mean()))
    trainer.n_forward_passes_since_fired[dead] = 0
    return len(dead)
