"""SAE training throughput vs the fp32 matmul roofline of one training step.

    python bench/bench_sae.py [--width 4096] [--batch 1024] [--steps 30]

One training step (forward + backward, SAELens ``JumpReLUTrainingSAE`` driven by
``SAETrainer.step`` as in ``darkmatter.sae.train``) does five GEMMs:
x·W_enc, f·W_dec, and in the backward fᵀ·g (∂W_dec), g·W_decᵀ (∂f) and xᵀ·g_pre (∂W_enc).
The roofline is the time those five GEMMs take when timed alone, each at its best of 5; the
ratio exposes everything else (JumpReLU, losses, Adam, decoder-norm projection, data gather).
Random data at the default model width; both figures are taken in interleaved rounds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import roofline_seconds, write_section  # noqa: E402

from darkmatter.config import SAEConfig  # noqa: E402
from darkmatter.sae.train import TokenBatches, build_training_sae  # noqa: E402


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
    sae, trainer = build_training_sae(d, cfg, steps=args.steps * (args.rounds + 1), device="cpu")
    data = np.random.default_rng(0).standard_normal((b * 8, d)).astype(np.float32)
    stream = TokenBatches(data, np.arange(len(data)), b, seed=0, scale=1 / np.sqrt(d))(0)

    def run_steps() -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.step(next(stream))
            trainer.n_training_steps += 1
        return time.perf_counter() - start

    gemms = [(1, 1, b, d, w), (1, 1, b, w, d), (1, 1, w, b, d), (1, 1, b, d, w), (1, 1, d, b, w)]
    run_steps()  # warm-up
    roof, steps = [], []
    for _ in range(args.rounds):
        roof.append(roofline_seconds(gemms))
        steps.append(run_steps() / args.steps)
    step_roof, gflops = min(roof)
    step_s = min(steps)
    flops = sum(2 * bb * m * k * n for _, bb, m, k, n in gemms)
    body = f"""
JumpReLU SAE d_in {d}, width {w}, batch {b} tokens, {args.steps} steps per round, best of {args.rounds} rounds.

| quantity | value |
|---|---|
| matmul FLOPs per training token (5 GEMMs) | {flops / b / 1e6:.1f} MFLOP |
| fp32 rate of exactly those GEMMs, each at its best of 5 | {gflops:.1f} GFLOP/s |
| roofline: those GEMMs alone | {b / step_roof:.0f} tok/s |
| **training** (`SAETrainer.step` + unit-norm decoder hooks, compiled training forward as the stage runs it) | **{b / step_s:.0f} tok/s** ({step_s * 1e3:.0f} ms/step) |
| **training / roofline** | **{step_roof / step_s:.2f}** |
"""
    print(body)
    write_section("SAE training", body)


if __name__ == "__main__":
    main()
