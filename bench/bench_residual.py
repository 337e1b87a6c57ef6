"""Residual-pass throughput vs the fp32 GEMM roofline of the SAE it runs.

    python bench/bench_residual.py [--tokens 32768] [--run gemma-3-270m-l9]

The residual stage (``darkmatter.analysis.residual.accumulate``) runs the SAE on every token (encode
x·W_enc and decode f·W_dec, 2·d·d_sae FLOPs each) and accumulates float64 statistics (power
sums, ridge and covariance moments, latent moments). Three numbers, taken in one run on the
default run's cache and SAE: the full pass, the SAE forward alone over the same chunks (the
reference), and the roofline: the two GEMMs timed alone at their best of 5. Also timed alone:
the float64 GEMMs behind the ridge and PCA moments, which the roofline does not count and which
stay float64 so that the statistics do not move with float32 summation order (issue 17).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CachePrefix, best_seconds, roofline_seconds, write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    import torch

    from darkmatter.data.activations import ActivationCache
    from darkmatter.config import ResidualConfig
    from darkmatter.analysis.residual import accumulate
    from darkmatter.analysis.stream import MAX_CHUNK_TOKENS
    from darkmatter.sae.io import load_sae

    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--run", default="gemma-3-270m-l9", help="a run built by dvc repro")
    args = parser.parse_args()

    cache = ActivationCache.open(REPO / f"data/runs/{args.run}/activations")
    sae = load_sae(REPO / f"data/runs/{args.run}/sae")
    n_rows = args.tokens // cache.meta["context_length"]

    prefix = CachePrefix(cache, n_rows)
    n, d, width = prefix.meta["n_tokens"], cache.meta["d_model"], sae.cfg.d_sae
    chunk = MAX_CHUNK_TOKENS

    def full():
        accumulate(sae, prefix, 0.1, ResidualConfig(), chunk)

    def forward_only():
        with torch.no_grad():
            for lo in range(0, n, chunk):
                x = torch.from_numpy(np.asarray(cache.acts[lo : lo + chunk], dtype=np.float32))
                x - sae.decode(sae.encode(x))

    def moment_gemms():  # what JointMoments.add does per chunk: x̃ᵀx̃, x̃ᵀr, rᵀr in float64
        for lo in range(0, n, chunk):
            x = torch.from_numpy(np.asarray(cache.acts[lo : lo + chunk], dtype=np.float64))
            xt = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
            xt.T @ xt, xt.T @ x, x.T @ x

    ours = best_seconds(full, repeats=2, warmup=0)
    moments = best_seconds(moment_gemms, repeats=2)
    reference = best_seconds(forward_only, repeats=2)
    roofline, gflops = roofline_seconds([(n // chunk, 1, chunk, d, width), (n // chunk, 1, chunk, width, d)])
    rows = [
        ("SAE", f"d_in {d}, width {width} (`data/runs/{args.run}/sae`), {n:,} cached tokens, chunks of {chunk}"),
        ("roofline: encode + decode GEMMs alone", f"{n / roofline:,.0f} tok/s ({gflops:.0f} GFLOP/s)"),
        ("reference: SAE forward only, same chunks", f"{n / reference:,.0f} tok/s"),
        ("**ours: full residual pass** (all statistics)", f"**{n / ours:,.0f} tok/s**"),
        ("float64 moment GEMMs alone (ridge and PCA moments, x̃ᵀx̃, x̃ᵀr, rᵀr), same tokens",
         f"{n / moments:,.0f} tok/s ({moments / ours:.0%} of the full pass)"),
        ("**ours / roofline**", f"**{roofline / ours:.2f}**"),
        ("ours / SAE forward only", f"{reference / ours:.2f}"),
    ]
    body = "\n".join(["| quantity | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])
    print(body)
    write_section("Residual pass", body)


if __name__ == "__main__":
    main()
