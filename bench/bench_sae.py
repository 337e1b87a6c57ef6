"""SAE training throughput vs the fp32 matmul rooflines of one training step.

    python bench/bench_sae.py [--width 4096] [--batch 256] [--l0 25] [--steps 30]

A dense training step (SAELens's ``JumpReLUTrainingSAE`` forward and autograd) does five GEMMs:
x·W_enc, f·W_dec, and in the backward fᵀ·g (∂W_dec), g·W_decᵀ (∂f) and xᵀ·g_pre (∂W_enc). The
step as the stage runs it (``darkmatter.sae.fused``, driven by ``SAETrainer.step``) does only the
first densely; the rest runs on the ~L0 active features of each token. Two rooflines, each GEMM
timed alone at its best of 5: the five GEMMs (what any dense step must do; above 1 means the
sparse step beats it) and the encoder GEMM alone (what no step can avoid; the ratio exposes
everything else: the gate, the sparse products, Adam, the decoder-norm constraint, the data
gather). Thresholds are set so each feature fires on L0/width of the random data, as a trained
SAE's do (at initialisation half of them fire, and a step then costs what a dense one does).
The reference is the same trainer on SAELens's own training forward, compiled, with its
default (foreach) Adam. All figures are taken in interleaved rounds.
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
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--l0", type=float, default=25.0, help="active features per token")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    d, w, b = args.d_in, args.width, args.batch
    cfg = SAEConfig(width=w, batch_size=b, train_tokens=b * args.steps * (args.rounds + 1))
    data = np.random.default_rng(0).standard_normal((b * 8, d)).astype(np.float32)
    trainers = {}
    for name in ("ours", "saelens"):
        sae, trainer = build_training_sae(d, cfg, steps=args.steps * (args.rounds + 1), device="cpu")
        with torch.no_grad():  # a trained SAE's sparsity: each feature fires on l0/width of the tokens
            pre = torch.from_numpy(data[:4096] / np.sqrt(d)) @ sae.W_enc + sae.b_enc
            sae.threshold.copy_(torch.quantile(pre, 1 - args.l0 / w, dim=0))
        if name == "saelens":
            saelens_reference(sae, trainer)
        trainers[name] = (trainer, TokenBatches(data, np.arange(len(data)), b, seed=0, scale=1 / np.sqrt(d))(0))

    measured_l0 = []

    def run_steps(name: str) -> float:
        trainer, stream = trainers[name]
        start = time.perf_counter()
        for _ in range(args.steps):
            out = trainer.step(next(stream))
            trainer.n_training_steps += 1
        seconds = (time.perf_counter() - start) / args.steps
        measured_l0.append(float(out.feature_acts.bool().float().sum()) / b)
        return seconds

    dense = [(1, 1, b, d, w), (1, 1, b, w, d), (1, 1, w, b, d), (1, 1, b, d, w), (1, 1, d, b, w)]
    encoder = dense[:1]
    for name in trainers:
        run_steps(name)  # warm-up (and compilation)
    roofs, steps = {"dense": [], "encoder": []}, {name: [] for name in trainers}
    for _ in range(args.rounds):
        roofs["dense"].append(roofline_seconds(dense))
        roofs["encoder"].append(roofline_seconds(encoder))
        for name in trainers:
            steps[name].append(run_steps(name))
    (dense_s, gflops), (encoder_s, _) = min(roofs["dense"]), min(roofs["encoder"])
    step_s, reference_s = min(steps["ours"]), min(steps["saelens"])
    flops = sum(2 * bb * m * k * n for _, bb, m, k, n in dense)
    l0 = float(np.mean(measured_l0))
    body = f"""
JumpReLU SAE d_in {d}, width {w}, batch {b} tokens, thresholds set for L0 {args.l0:g} (measured over the timed steps:
{l0:.1f}), {args.steps} steps per round, best of {args.rounds} rounds.

| quantity | value |
|---|---|
| matmul FLOPs per training token of a dense step (5 GEMMs) | {flops / b / 1e6:.1f} MFLOP |
| fp32 rate of exactly those GEMMs, each at its best of 5 | {gflops:.1f} GFLOP/s |
| roofline of a dense step: the 5 GEMMs alone | {b / dense_s:.0f} tok/s |
| roofline of any step: the encoder GEMM alone | {b / encoder_s:.0f} tok/s |
| **training** as the stage runs it (`SAETrainer.step`, the sparse step of `darkmatter.sae.fused`, fused Adam, unit-norm decoder hooks) | **{b / step_s:.0f} tok/s** ({step_s * 1e3:.1f} ms/step) |
| **training / dense roofline** (above 1: faster than any dense step) | **{dense_s / step_s:.2f}** |
| training / encoder-GEMM roofline (the share of a step that is its one unavoidable GEMM) | {encoder_s / step_s:.2f} |
| reference: the same trainer on SAELens's own compiled training forward and foreach Adam | {b / reference_s:.0f} tok/s ({reference_s * 1e3:.1f} ms/step; {dense_s / reference_s:.2f} of the dense roofline) |
| **ours / reference** | **{reference_s / step_s:.2f}x** |
"""
    print(body)
    write_section("SAE training", body)


if __name__ == "__main__":
    main()
