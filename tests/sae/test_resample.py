"""Dead-latent resampling: dead latents are re-pointed at the tokens the SAE misses, and nothing else moves."""

from __future__ import annotations

import numpy as np
import torch

from darkmatter.config import SAEConfig
from darkmatter.sae.resample import resample_dead
from darkmatter.sae.train import build_training_sae

D, WIDTH = 16, 64


def _trained_one_step(cfg: SAEConfig, x: torch.Tensor):
    sae, trainer = build_training_sae(D, cfg, steps=10, device="cpu")
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
        sae.b_enc.copy_(-(sae.b_dec @ sae.W_enc))
    trainer.step(x[:256])  # Adam has state to reset
    return sae, trainer


def test_dead_latents_point_at_the_missed_direction_and_live_ones_do_not_move():
    """A pool of well-reconstructed tokens (the mean plus a little noise) and 10% that carry a planted
    direction u: every resampled decoder row is u, its threshold fires it on the live latents' rate
    (5%), on u tokens only, and no live parameter or optimiser state changes."""
    rng = np.random.default_rng(0)
    cfg = SAEConfig(width=WIDTH, batch_size=256, train_tokens=2560, l0_warm_up_tokens=0, lr_warm_up_tokens=0, compile=False)
    mean = torch.as_tensor(rng.standard_normal(D), dtype=torch.float32)
    u = torch.zeros(D)
    u[3] = 1.0
    noise = 0.01 * torch.as_tensor(rng.standard_normal((1000, D)), dtype=torch.float32)
    pool = mean + noise
    pool[:100] += 3.0 * u
    sae, trainer = _trained_one_step(cfg, pool)
    dead = torch.arange(WIDTH) % 4 == 0
    with torch.no_grad():  # live latents that fire on 5% of the pool
        sae.threshold.copy_(torch.quantile(pool @ sae.W_enc + sae.b_enc, 0.95, dim=0))
    trainer.n_forward_passes_since_fired[dead] = trainer.cfg.dead_feature_window + 1
    before = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    adam_before = {id(p): {k: t.clone() for k, t in trainer.optimizer.state[p].items()} for p in sae.parameters()}

    assert resample_dead(sae, trainer, pool, np.random.default_rng(1)) == int(dead.sum())

    rows = sae.W_dec.detach()[dead]
    assert torch.all(rows @ u > 0.99), "each new decoder row is the missed direction"
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(int(dead.sum())))
    state = sae.state_dict()
    for name, axis in (("W_dec", 0), ("W_enc", 1), ("b_enc", 0), ("threshold", 0)):
        live = (~dead).nonzero().flatten()
        torch.testing.assert_close(state[name].index_select(axis, live), before[name].index_select(axis, live), rtol=0, atol=0)
    torch.testing.assert_close(state["b_dec"], before["b_dec"], rtol=0, atol=0)
    with torch.no_grad():
        fires = sae.encode(pool) > 0
    rate = float(fires[:, ~dead].float().mean())
    new = fires[:, dead].float()
    assert abs(rate - 0.05) < 0.01 and abs(float(new.mean()) - rate) <= 0.01, "new latents fire at the live latents' rate"
    assert new[100:].sum() == 0, "on the u tokens only"
    assert not trainer.dead_neurons[dead].any()
    w_dec_state = trainer.optimizer.state[sae.W_dec]
    assert torch.all(w_dec_state["exp_avg"][dead] == 0)
    expected = float(adam_before[id(sae.W_dec)]["exp_avg_sq"][~dead].mean())
    torch.testing.assert_close(w_dec_state["exp_avg_sq"][dead], torch.full_like(w_dec_state["exp_avg_sq"][dead], expected))
    torch.testing.assert_close(w_dec_state["exp_avg_sq"][~dead], adam_before[id(sae.W_dec)]["exp_avg_sq"][~dead], rtol=0, atol=0)


def test_nothing_dead_nothing_moves():
    rng = np.random.default_rng(0)
    cfg = SAEConfig(width=WIDTH, batch_size=256, train_tokens=2560, l0_warm_up_tokens=0, lr_warm_up_tokens=0, compile=False)
    pool = torch.as_tensor(rng.standard_normal((512, D)), dtype=torch.float32)
    sae, trainer = _trained_one_step(cfg, pool)
    before = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    assert resample_dead(sae, trainer, pool, np.random.default_rng(1)) == 0
    for name, value in sae.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


def test_resample_steps_follow_the_settings():
    short = {"batch_size": 256, "train_tokens": 256 * 100, "l0_warm_up_tokens": 0, "lr_warm_up_tokens": 0}
    assert SAEConfig(**short, resample_every_tokens=256 * 20).resample_steps() == {20, 40}  # until half the training
    assert SAEConfig(**short, resample_every_tokens=256 * 20, resample_until_tokens=256 * 80).resample_steps() == {20, 40, 60, 80}
    assert SAEConfig().resample_steps() == frozenset()
