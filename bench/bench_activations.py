"""Activation caching throughput vs the fp32 matmul roofline and vs the naive full forward.

    python bench/bench_activations.py [--tokens 8192] [--batch 32] [--context 128]

Both ratios come from one run on the same tokens, timed in interleaved rounds (best of each;
this machine's speed drifts by ±15%, so the compiled/eager speed-up is also given round by round):
- roofline: measured tok/s ÷ the tok/s at which the forward's own matmuls (same shapes, up to
  layer L) run when timed alone in fp32, each at its best of 5. "Ours" is the stage's default
  forward (``SubjectModel.compile_forward``); the eager forward is reported beside it, with the
  time its matmuls take in place (torch profiler), which bounds what fusing the rest can win;
- naive: our ``stop_at_layer`` forward vs ``run_with_cache`` over the full model (all blocks and
  the unembedding), which is what a caching loop without early stopping pays.
Needs the prepared model (`dvc repro model`, or it builds the test copy).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_seconds, roofline_seconds, write_section  # noqa: E402
from conftest import prepared_weights  # noqa: E402

from darkmatter.data.models import SubjectModel, load_subject  # noqa: E402


def block_gemms(cfg, batch: int, context: int) -> list[tuple[int, int, int, int, int]]:
    """The matmuls of one transformer block as ``(count, batch, m, k, n)``, as TransformerLens runs them."""
    tokens = batch * context
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    return [
        (1, 1, tokens, cfg.d_model, cfg.n_heads * cfg.d_head),  # W_Q
        (2, 1, tokens, cfg.d_model, n_kv * cfg.d_head),  # W_K, W_V
        (1, 1, tokens, cfg.n_heads * cfg.d_head, cfg.d_model),  # W_O
        (2 if cfg.gated_mlp else 1, 1, tokens, cfg.d_model, cfg.d_mlp),  # W_gate, W_in
        (1, 1, tokens, cfg.d_mlp, cfg.d_model),  # W_out
        (2, batch * cfg.n_heads, context, cfg.d_head, context),  # QK^T and pattern @ V (full T x T)
    ]


def _truncated_hf(weights, layer: int):
    """The HF implementation cut after block ``layer``: a reference for non-matmul overhead."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
    hf.model.layers = hf.model.layers[: layer + 1]
    return hf.model.eval()


def matmul_seconds_in(fn) -> float:
    """Self time of the matmul kernels during one call of ``fn`` (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    kernels = ("aten::mm", "aten::addmm", "aten::bmm")
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in kernels) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--layer", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    subject = load_subject(args.model, prepared_weights(args.model), device="cpu")
    cfg = subject.model.cfg
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(10, cfg.d_vocab, (args.tokens // args.context, args.context), generator=g)
    tokens[:, 0] = subject.tokenizer.bos_token_id
    hook = subject.hook_name(args.layer)

    compiled = SubjectModel(subject.spec, subject.model, subject.device)
    compiled.compile_forward(args.batch, args.context)

    def forward(model):
        def run():
            for lo in range(0, len(tokens), args.batch):
                model.activations(tokens[lo : lo + args.batch], args.layer)

        return run

    ours, eager = forward(compiled), forward(subject)

    hf = _truncated_hf(prepared_weights(args.model), args.layer)

    def hf_truncated():
        with torch.inference_mode():
            for lo in range(0, len(tokens), args.batch):
                hf(tokens[lo : lo + args.batch])

    def naive():
        with torch.inference_mode():
            for lo in range(0, len(tokens), args.batch):
                _, cache = subject.model.run_with_cache(tokens[lo : lo + args.batch])
                cache[hook].cpu()

    n_blocks = args.layer + 1
    gemms = block_gemms(cfg, args.batch, args.context)
    roof, ours_t, eager_t, naive_t, hf_t = [], [], [], [], []
    ours()  # warm-up (and the compile)
    eager_matmul_s = matmul_seconds_in(eager)
    for i in range(args.rounds):  # interleaved, so drifting CPU clocks hit all alike
        roof.append(roofline_seconds(gemms))
        ours_t.append(best_seconds(ours, repeats=1, warmup=0))
        eager_t.append(best_seconds(eager, repeats=1, warmup=0))
        hf_t.append(best_seconds(hf_truncated, repeats=1, warmup=0))
        if i < 2:  # ~90 s a round; a reference, not a ratio this file tracks closely
            naive_t.append(best_seconds(naive, repeats=1, warmup=0))
    paired = np.array(eager_t) / np.array(ours_t)  # compiled speed-up, round by round
    block_s, gflops = min(roof)
    n = tokens.numel()
    fpt = sum(c * 2 * b * m * k * nn for c, b, m, k, nn in gemms) * n_blocks / (args.batch * args.context)
    roof_tps = args.batch * args.context / (block_s * n_blocks)
    ours_tps, eager_tps, naive_tps, hf_tps = n / min(ours_t), n / min(eager_t), n / min(naive_t), n / min(hf_t)
    in_place_tps = n / eager_matmul_s
    body = f"""
Model {args.model}, layer {args.layer} (`{hook}`), {n} tokens, context {args.context}, batch {args.batch}.

| quantity | value |
|---|---|
| matmul FLOPs per token to layer {args.layer} ({n_blocks} blocks) | {fpt / 1e6:.1f} MFLOP |
| fp32 rate of exactly those matmuls, each shape at its best of 5 | {gflops:.1f} GFLOP/s |
| roofline: those matmuls alone | {roof_tps:.0f} tok/s |
| **ours** (`stop_at_layer={args.layer + 1}`, `torch.compile`, the stage's default) | **{ours_tps:.0f} tok/s** |
| ours, eager TransformerLens forward | {eager_tps:.0f} tok/s ({eager_tps / roof_tps:.2f} of roofline) |
| compiled / eager, paired by round: median [min, max] over {args.rounds} rounds | {np.median(paired):.2f} [{paired.min():.2f}, {paired.max():.2f}] |
| the eager forward's matmuls alone, timed in place (profiler) | {in_place_tps:.0f} tok/s ({in_place_tps / roof_tps:.2f} of roofline) |
| naive (`run_with_cache`, full forward) | {naive_tps:.0f} tok/s |
| reference: HF eager forward truncated to {n_blocks} blocks | {hf_tps:.0f} tok/s ({hf_tps / roof_tps:.2f} of roofline) |
| **ours / roofline** (target ≥ 0.85) | **{ours_tps / roof_tps:.2f}** |
| **ours / naive** (target ≥ 2.5) | **{ours_tps / naive_tps:.2f}x** |
"""
    print(body)
    write_section("Activation caching", body)


if __name__ == "__main__":
    main()
