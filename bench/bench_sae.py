"""SAE training throughput vs the fp32 matmul roofline of one training step.

    python bench/bench_sae.py [--width 4096] [--batch 1024] [--steps 30]

One training step (forward + backward of a SAELens ``JumpReLUTrainingSAE`` driven by
``SAETrainer.step`` as in ``darkmatter.sae.train``) does five GEMMs:
x·W_enc, f·W_dec, and in the backward fᵀ·g (∂W_dec), g·W_decᵀ (∂f) and xᵀ·g_pre (∂W_enc).
The roofline is the time those five GEMMs take when timed alone, each at its best of 5; the
ratio exposes everything else (JumpReLU, losses, Adam, decoder-norm projection, data gather).
The reference is the same trainer on SAELens's own training forward, compiled, with its
default (foreach) Adam: what the stage ran before ``darkmatter.sae.fused``.
Random data at the default model width; all figures are taken in interleaved rounds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import roofline_seconds, write_section  # noqa: E402

import torch  # noqa: E402

from darkmatter.config import SAEConfig  # noqa: E402
from darkmatter.sae.train import TokenBatches, build_training_sae  # noqa: E402


def saelens_reference(sae, trainer) -> None:
    """Put back SAELens's own (compiled) training forward and its default foreach Adam."""
    sae.training_forward_pass = torch.compile(type(sae).training_forward_pass.__get__(sae))
    for group in trainer.optimizer.param_groups:
        group["fused"] = None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--d-in", type=int, default=640)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    d, w, b = args.d_in, args.width, args.batch
    cfg = SAEConfig(width=w, batch_size=b, train_tokens=b * args.steps * (args.rounds + 1))
    data = np.random.default_rng(0).standard_normal((b * 8, d)).astype(np.float32)
    trainers = {}
    for name in ("ours", "saelens"):
        sae, trainer = build_training_sae(d, cfg, steps=args.steps * (args.rounds + 1), device="cpu")
        if name == "saelens":
            saelens_reference(sae, trainer)
        trainers[name] = (trainer, TokenBatches(data, np.arange(len(data)), b, seed=0, scale=1 / np.sqrt(d))(0))

    def run_steps(name: str) -> float:
        trainer, stream = trainers[name]
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.step(next(stream))
            trainer.n_training_steps += 1
        return (time.perf_counter() - start) / args.steps

    gemms = [(1, 1, b, d, w), (1, 1, b, w, d), (1, 1, w, b, d), (1, 1, b, d, w), (1, 1, d, b, w)]
    for name in trainers:
        run_steps(name)  # warm-up (and compilation)
    roof, steps = [], {name: [] for name in trainers}
    for _ in range(args.rounds):
        roof.append(roofline_seconds(gemms))
        for name in trainers:
            steps[name].append(run_steps(name))
    step_roof, gflops = min(roof)
    step_s, reference_s = min(steps["ours"]), min(steps["saelens"])
    flops = sum(2 * bb * m * k * n for _, bb, m, k, n in gemms)
    body = f"""
JumpReLU SAE d_in {d}, width {w}, batch {b} tokens, {args.steps} steps per round, best of {args.rounds} rounds.

| quantity | value |
|---|---|
| matmul FLOPs per training token (5 GEMMs) | {flops / b / 1e6:.1f} MFLOP |
| fp32 rate of exactly those GEMMs, each at its best of 5 | {gflops:.1f} GFLOP/s |
| roofline: those GEMMs alone | {b / step_roof:.0f} tok/s |
| **training** as the stage runs it (`SAETrainer.step`, fused forward of `darkmatter.sae.fused`, fused Adam, unit-norm decoder hooks) | **{b / step_s:.0f} tok/s** ({step_s * 1e3:.0f} ms/step) |
| **training / roofline** (target ≥ 0.75) | **{step_roof / step_s:.2f}** |
| reference: the same trainer on SAELens's own compiled training forward and foreach Adam | {b / reference_s:.0f} tok/s ({reference_s * 1e3:.0f} ms/step; {step_roof / reference_s:.2f} of the roofline) |
| **ours / reference** | **{reference_s / step_s:.2f}x** |
"""
    print(body)
    write_section("SAE training", body)


if __name__ == "__main__":
    main()
