"""SAE training stage: a JumpReLU SAE on the activation cache, with the Gemma Scope recipe.

Recipe (Rajamanoharan et al. 2024; Lieberum et al. 2024, arXiv 2408.05147) and who does what:

- **SAELens** (``JumpReLUTrainingSAE`` + ``SAETrainer.step``): JumpReLU with a learnable
  per-feature threshold; straight-through pseudo-derivatives with a rectangle kernel of
  bandwidth ε for the threshold and for the L0 term; loss = MSE + λ·L0 with a linear λ
  warm-up ("step" mode, Gemma Scope 1) or the Gemma Scope 2 quadratic penalty
  ``2/target_l0 · (l0 − target_l0)²`` ("quadratic" mode); Adam with β1 = 0, β2 = 0.999 and
  an LR warm-up; W_enc = W_decᵀ at init with unit-norm decoder rows (``decoder_init_norm=1``);
  gradient-norm clipping at 1; dead-feature tracking; checkpointable trainer state. The
  forward and backward arithmetic of that maths runs in ``darkmatter.sae.fused``, a
  hand-written backward that tests check against SAELens's own forward and
  ``bench/bench_sae.py`` measures against it (SAELens's autograd graph spends as long on the
  latents as on the GEMMs on CPU).
- **here**, because SAELens does not offer them:
  - *unit mean squared norm input*: SAELens's ``expected_average_only_in`` scales to
    E‖x‖ = √d_in, not E‖x‖² = 1. We scale by a stored scalar ``s`` and fold it back at the
    end as ``b_enc/s, threshold/s, b_dec/s``, which keeps the decoder rows unit-norm (SAELens's
    own fold rescales W_dec instead) and puts feature activations in raw activation units;
  - *unit-norm decoder rows with gradient projection*: a gradient hook removes from each
    decoder row's gradient its component along the row, and an optimizer post-step hook
    renormalises the rows (SAELens v6 has no decoder-norm constraint);
  - *centred initialisation*: b_dec = E x, b_enc = −W_encᵀ E x; optionally per-feature initial
    thresholds (see :func:`init_from_data`);
  - *the training loop* around ``SAETrainer.step`` (its public seam), for tqdm with loss, L0
    and FVU, resumable checkpoints, and a NaN check that names the step. Training data comes
    from the activation cache, special tokens excluded, held-out rows excluded.

The saved SAE is an ordinary SAELens ``JumpReLUSAE`` (``SAE.load_from_disk``) that works on
raw activations; its ``metadata`` carries the model and hook name.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from darkmatter.config import SAEConfig
from darkmatter.hashing import fingerprint
from darkmatter.errors import NonFiniteError, UserError

#: Training tokens (of the initialisation sample) a resampling step scores to find the badly reconstructed ones.
RESAMPLE_POOL = 16384


def init_sample(acts, index: np.ndarray, seed: int, max_samples: int = 65536) -> np.ndarray:
    """A seeded sample of the indexed tokens' activations (float64): the input scale and the initialisation."""
    rng = np.random.default_rng(seed)
    return np.asarray(acts[np.sort(rng.choice(index, size=min(max_samples, len(index)), replace=False))], dtype=np.float64)


def init_from_data(sae, x: np.ndarray, cfg: SAEConfig) -> None:
    """Initialise from the (scaled) sample ``x``: centring always, the thresholds if ``cfg`` asks.

    - b_dec = E x and b_enc = −W_encᵀ E x, so initial pre-activations read x − E x. The residual
      stream has a large mean (‖E x‖² is most of E‖x‖² here); from b_dec = b_enc = 0 a handful of
      features learn that constant and fire on every token while the rest die. Starting at the
      mean keeps the Gemma Scope form f = JumpReLU(W_enc x + b_enc) unchanged.
    - ``init_firing_rate``: each feature's threshold starts at the quantile of its initial
      pre-activations that fires it on that fraction of the sample.
    """
    import torch

    mean = x.mean(axis=0)
    with torch.no_grad():
        m = torch.as_tensor(mean, dtype=sae.b_dec.dtype, device=sae.b_dec.device)
        sae.b_dec.copy_(m)
        sae.b_enc.copy_(-(m @ sae.W_enc))
        if cfg.init_firing_rate is not None:
            pre = torch.as_tensor(x[:8192], dtype=sae.W_enc.dtype) @ sae.W_enc + sae.b_enc
            sae.threshold.copy_(torch.quantile(pre, 1 - cfg.init_firing_rate, dim=0).clamp_min(0.0))


class TokenBatches:
    """Seeded shuffled batches of activations, resumable at any batch number.

    Epoch ``e`` uses permutation ``default_rng((seed, e))``, so batch ``k`` is the same
    whether the run started at 0 or resumed at ``k``. Each batch is gathered from the
    memory-mapped cache in sorted order (a batch is a set; sorting makes the reads sequential).
    """

    def __init__(self, acts: np.ndarray, index: np.ndarray, batch_size: int, seed: int, scale: float):
        if len(index) < batch_size:
            raise UserError(f"only {len(index)} training tokens for sae.batch_size {batch_size}; cache more tokens")
        self.acts, self.index, self.batch_size, self.seed, self.scale = acts, index, batch_size, seed, scale
        self.per_epoch = len(index) // batch_size

    def __call__(self, start: int = 0) -> Iterator:
        import torch

        batch = start
        while True:
            epoch, offset = divmod(batch, self.per_epoch)
            order = np.random.default_rng((self.seed, epoch)).permutation(self.index)
            for b in range(offset, self.per_epoch):
                ids = np.sort(order[b * self.batch_size : (b + 1) * self.batch_size])
                x = torch.from_numpy(np.asarray(self.acts[ids], dtype=np.float32))
                yield x * self.scale
            batch = (epoch + 1) * self.per_epoch


def reuse_freed_buffers() -> None:
    """Keep glibc from handing each training step's freed buffers back to the kernel.

    By default glibc serves allocations above its dynamic mmap threshold with ``mmap`` and trims
    the heap's top on ``free``, so every step page-faults its [batch, width] buffers back in
    (~7,000 minor faults, ~5 ms a step at width 4096 on 2 cores). With both thresholds raised the
    freed buffers stay in the heap and the next step reuses them. A no-op without glibc.
    """
    import ctypes
    import ctypes.util

    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's largest allowed value on 64-bit
    libc.mallopt(m_trim_threshold, 2**30)


def build_training_sae(d_in: int, cfg: SAEConfig, steps: int, device: str):
    """SAELens trainer + training SAE configured with the Gemma Scope recipe, on the fused forward."""
    import torch
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, SAETrainer
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    from darkmatter.sae.fused import fused_training_forward

    torch.manual_seed(cfg.seed)
    sae = JumpReLUTrainingSAE(
        JumpReLUTrainingSAEConfig(
            d_in=d_in,
            d_sae=cfg.width,
            device=device,
            apply_b_dec_to_input=False,  # Gemma Scope: f(x) = JumpReLU(W_enc x + b_enc)
            decoder_init_norm=1.0,
            jumprelu_init_threshold=cfg.init_threshold,
            jumprelu_bandwidth=cfg.bandwidth,
            jumprelu_sparsity_loss_mode=cfg.sparsity,
            l0_coefficient=cfg.l0_coefficient,
            l0_warm_up_steps=cfg.l0_warm_up_tokens // cfg.batch_size,
            target_l0=cfg.target_l0,
            pre_act_loss_coefficient=cfg.pre_act_loss_coefficient,
        )
    )
    trainer = SAETrainer(
        cfg=SAETrainerConfig(
            total_training_samples=steps * cfg.batch_size,
            train_batch_size_samples=cfg.batch_size,
            lr=cfg.lr,
            lr_end=cfg.lr,
            lr_warm_up_steps=cfg.lr_warm_up_tokens // cfg.batch_size,
            adam_beta1=0.0,
            adam_beta2=cfg.adam_beta2,
            device=device,
            dead_feature_window=max(1, cfg.dead_window_tokens // cfg.batch_size),
            logger=LoggingConfig(log_to_wandb=False),
        ),
        sae=sae,
        data_provider=iter(()),  # we drive SAETrainer.step ourselves
    )
    constrain_unit_norm_decoder(sae, trainer.optimizer, compile=cfg.compile)
    sae.training_forward_pass = fused_training_forward(sae, compile=cfg.compile, aux_coefficient=cfg.aux_loss_coefficient)
    for group in trainer.optimizer.param_groups:
        group["fused"] = True  # one Adam kernel over each parameter instead of a dozen foreach passes
    reuse_freed_buffers()
    return sae, trainer


def tangent_projection(grad, w):
    """``grad`` without its component along each row of ``w``."""
    import torch

    along = torch.linalg.vecdot(grad, w) / w.pow(2).sum(dim=1)
    return grad - along[:, None] * w


def unit_rows_(w) -> None:
    """Scale each row of ``w`` to unit norm, in place."""
    w.div_(w.norm(dim=1, keepdim=True))


def constrain_unit_norm_decoder(sae, optimizer, compile: bool = False) -> None:
    """Keep decoder rows unit-norm: project gradients onto the tangent space, renormalise after each step.

    ``compile`` runs each through ``torch.compile``: one pass over W_dec instead of four or two.
    """
    import torch

    w_dec = sae.W_dec
    project, renormalise_ = tangent_projection, unit_rows_
    if compile:
        project, renormalise_ = torch.compile(project, dynamic=False), torch.compile(renormalise_, dynamic=False)
    w_dec.register_hook(lambda grad: project(grad, w_dec.detach()))

    def renormalise(*_args) -> None:
        with torch.no_grad():
            renormalise_(w_dec.data)

    optimizer.register_step_post_hook(renormalise)


class Checkpoints:
    """Atomic checkpoints of SAE weights + SAELens trainer state in one directory."""

    def __init__(self, root: Path):
        self.root = root
        self.current = root / "latest"

    def save(self, sae, trainer, step: int) -> None:
        tmp = self.root / "incoming"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        sae.save_model(str(tmp))
        trainer.save_trainer_state(tmp)
        (tmp / "progress.json").write_text(json.dumps({"step": step}))
        old = self.root / "previous"
        shutil.rmtree(old, ignore_errors=True)
        if self.current.exists():
            os.replace(self.current, old)
        os.replace(tmp, self.current)
        shutil.rmtree(old, ignore_errors=True)

    def step(self) -> int:
        progress = self.current / "progress.json"
        return json.loads(progress.read_text())["step"] if progress.exists() else 0

    def restore(self, sae, trainer) -> int:
        """Load the latest checkpoint into ``sae``/``trainer``; returns its step (0 if none)."""
        step = self.step()
        if step:
            from safetensors.torch import load_file

            sae.load_state_dict(load_file(self.current / "sae_weights.safetensors"))
            trainer.load_trainer_state(self.current)
        return step


def batch_fvu(x, x_hat) -> float:
    """SAELens's FVU on one batch: E‖x − x̂‖² / E‖x − E x‖²."""
    return float((x - x_hat).pow(2).sum(-1).mean() / (x - x.mean(0)).pow(2).sum(-1).mean())


def train(
    acts: np.ndarray,
    train_index: np.ndarray,
    cfg: SAEConfig,
    scratch: Path,
    identity: dict,
    device: str = "cpu",
    stop_after: int | None = None,
    curve_out: Path | None = None,
    metadata: dict | None = None,
) -> tuple[object, dict]:
    """Train (or resume) an SAE; returns the training SAE (normalised units) and its metrics.

    After ``cfg.curve_tokens`` training tokens the SAE is saved (as an inference SAE with
    ``metadata``) under the checkpoint directory; a finished run moves those snapshots to
    ``curve_out/<tokens>``. ``stop_after`` ends the run early after that many steps (the resume test).
    """
    import torch

    from darkmatter.sae.resample import resample_dead

    steps = cfg.train_tokens // cfg.batch_size
    if steps < 1:
        raise UserError(f"sae.train_tokens {cfg.train_tokens} is less than one batch of {cfg.batch_size}")
    sample = init_sample(acts, train_index, cfg.seed)
    msq = float((sample**2).sum(axis=1).mean())
    scale = 1.0 / float(np.sqrt(msq))
    batches = TokenBatches(acts, train_index, cfg.batch_size, cfg.seed, scale)
    sae, trainer = build_training_sae(acts.shape[1], cfg, steps, device)
    init_from_data(sae, sample * scale, cfg)
    ckpts = Checkpoints(scratch / fingerprint({"cfg": asdict(cfg), "identity": identity, "n_train": len(train_index)}))
    start = ckpts.restore(sae, trainer)
    snapshots = {tokens // cfg.batch_size: tokens for tokens in cfg.curve_tokens}
    resample_at, resampled = cfg.resample_steps(), {}
    pool = torch.as_tensor(sample * scale, dtype=torch.float32, device=device) if resample_at else None
    stats = {"loss": float("nan"), "l0": float("nan"), "fvu": float("nan")}
    t0 = time.perf_counter()
    bar = tqdm(total=steps, initial=start, desc=f"SAE {cfg.width} ({cfg.sparsity})", unit="step")
    data = batches(start)
    step = start
    while step < steps:
        x = next(data).to(device)
        out = trainer.step(x)
        trainer.n_training_steps += 1
        if not torch.isfinite(out.loss):
            raise NonFiniteError(
                f"NaN/inf SAE loss at step {step}; the last good checkpoint (step {ckpts.step()}) "
                f"is kept in {ckpts.current}; lower sae.lr or sae.l0_coefficient and rerun"
            )
        step += 1
        if step % 10 == 0 or step == steps:
            with torch.no_grad():
                l0 = float(out.feature_acts.bool().float().sum()) / len(x)  # dense or sparse COO
                stats = {"loss": float(out.loss), "l0": l0, "fvu": batch_fvu(out.sae_in, out.sae_out)}
            bar.set_postfix(loss=f"{stats['loss']:.4f}", L0=f"{stats['l0']:.1f}", FVU=f"{stats['fvu']:.3f}",
                            dead=int(trainer.dead_neurons.sum()))
        bar.update(1)
        if step in resample_at:  # seeded by the step, so a resumed run resamples as an unbroken one does
            rng = np.random.default_rng((cfg.seed, step))
            subset = torch.as_tensor(np.sort(rng.choice(len(pool), size=min(RESAMPLE_POOL, len(pool)), replace=False)))
            resampled[step] = resample_dead(sae, trainer, pool[subset.to(device)], rng)
        if step in snapshots:
            to_inference_sae(sae, scale, metadata or {}).save_model(str(ckpts.root / "curve" / str(snapshots[step])))
        if step % cfg.checkpoint_every == 0 and step < steps:
            ckpts.save(sae, trainer, step)
        if stop_after is not None and step - start >= stop_after:
            ckpts.save(sae, trainer, step)
            break
    bar.close()
    if step == steps:
        if curve_out is not None and cfg.curve_tokens:
            shutil.rmtree(curve_out, ignore_errors=True)
            shutil.move(ckpts.root / "curve", curve_out)
        shutil.rmtree(ckpts.root, ignore_errors=True)  # finished: the stage output replaces the checkpoints
    seconds = time.perf_counter() - t0
    trained = step - start
    metrics = {
        "steps": steps,
        "steps_this_run": trained,
        "resumed_from_step": start,
        "tokens": steps * cfg.batch_size,
        "input_scale": scale,
        "input_mean_squared_norm": msq,
        "final_batch": stats,
        "dead_features_last_quarter": int(trainer.dead_neurons.sum()),
        "resampled_this_run": {str(k): v for k, v in resampled.items()},  # step -> dead features re-pointed
        "seconds": seconds,
        "tokens_per_s": trained * cfg.batch_size / seconds if seconds > 0 and trained else None,
    }
    return sae, metrics


def to_inference_sae(training_sae, scale: float, metadata: dict):
    """Fold the input scale back so the SAE works on raw activations; return a SAELens ``JumpReLUSAE``.

    Training saw ``s·x``. With ``b_enc/s``, ``threshold/s`` and ``b_dec/s`` (W_enc, W_dec
    unchanged) the pre-activations and features scale by ``1/s`` and the reconstruction of
    raw ``x`` is the training reconstruction ``/s``: the JumpReLU gate is unchanged.
    """
    import torch
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    cfg = training_sae.cfg
    sae = JumpReLUSAE(
        JumpReLUSAEConfig(d_in=cfg.d_in, d_sae=cfg.d_sae, device="cpu", apply_b_dec_to_input=cfg.apply_b_dec_to_input)
    )
    with torch.no_grad():
        state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in training_sae.state_dict().items()}
        state["b_enc"] /= scale
        state["threshold"] /= scale
        state["b_dec"] /= scale
        sae.load_state_dict(state)
    for key, value in metadata.items():
        sae.cfg.metadata[key] = value
    return sae
