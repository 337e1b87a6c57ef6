"""Causal-stage throughput: one edited forward from the cached layer-L residual vs its roofline.

The causal stage's cost is its edited forwards: blocks L+1..n−1 on every position, then the
unembedding (d_model × vocab, 262k for Gemma 3) at ``causal.positions_per_row`` positions.
Reported: the wall time of ``SubjectModel.logprobs_from`` on one batch, and the time the same
matmuls take at their best measured fp32 rate (the roofline). The rest of a forward is
norms, attention's element-wise work, rotary and the full-vocabulary log-softmax.

    python bench/bench_causal.py  # writes the "Causal stage" section of bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_activations import block_gemms  # noqa: E402
from common import best_seconds, roofline_seconds, write_section  # noqa: E402
from conftest import prepared_weights  # noqa: E402

from darkmatter.causal.effects import scored_positions  # noqa: E402
from darkmatter.data.models import load_subject  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--layer", type=int, default=9)
    parser.add_argument("--rows", type=int, default=4, help="causal.batch_rows")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--positions", type=int, default=32, help="causal.positions_per_row")
    args = parser.parse_args()

    subject = load_subject(args.model, prepared_weights(args.model), device="cpu")
    cfg = subject.model.cfg
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(10, cfg.d_vocab, (args.rows, args.context), generator=g)
    tokens[:, 0] = subject.tokenizer.bos_token_id
    resid = subject.activations(tokens, args.layer)
    positions = torch.from_numpy(scored_positions(args.context, args.positions))
    n_blocks = cfg.n_layers - args.layer - 1

    def ours_partial():
        subject.logprobs_from(resid, args.layer, positions=positions)

    def ours_all():
        subject.logprobs_from(resid, args.layer)

    rows = []
    for label, fn, n_pos in (("read out at positions_per_row positions", ours_partial, len(positions)),
                             ("read out at every position", ours_all, args.context)):
        gemms = [(count * n_blocks, b, m, k, n) for count, b, m, k, n in block_gemms(cfg, args.rows, args.context)]
        gemms.append((1, 1, args.rows * n_pos, cfg.d_model, cfg.d_vocab))
        roof, rate = roofline_seconds(gemms)
        wall = best_seconds(fn, repeats=3)
        rows.append(f"| {label} ({n_pos}/row) | {wall * 1e3:.0f} ms | {roof * 1e3:.0f} ms ({rate:.0f} GFLOP/s) | "
                    f"**{roof / wall:.2f}** |")
    body = f"""
Model {args.model}, forward from layer {args.layer} ({n_blocks} blocks + unembedding, vocabulary {cfg.d_vocab:,}),
{args.rows} rows × {args.context} tokens per edited forward (`SubjectModel.logprobs_from`).

| edited forward | wall | roofline: its matmuls alone | roofline / wall |
|---|---|---|---|
{chr(10).join(rows)}
"""
    write_section("Causal stage", body)
    print(body)


if __name__ == "__main__":
    main()
