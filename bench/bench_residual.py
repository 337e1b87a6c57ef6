"""Residual-pass throughput vs the fp32 GEMM roofline of the SAE it runs.

    python bench/bench_residual.py [--tokens 32768] [--run gemma-3-270m-l9]

The residual stage (``darkmatter.analysis.residual.accumulate``) runs the SAE on every token (encode
x·W_enc and decode f·W_dec, 2·d·d_sae FLOPs each as dense GEMMs) and accumulates statistics
(float64 power sums, ridge and covariance moments from float32 GEMMs summed in float64, latent
moments). Taken in one run on the default run's cache and SAE: the full pass; SAELens's
encode + decode alone over the same chunks (the reference); our fused forward alone
(:class:`darkmatter.analysis.stream.SAEForward`: bias in the GEMM, the jump in place, the decode
from the non-zero latents only); and the roofline, the two dense GEMMs timed alone at their best
of 5. The sparse decode does less work than the dense roofline assumes, so the ratio is also given
against the encode GEMM alone, which no SAE pass can skip. Also timed alone: the moment GEMMs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CachePrefix, interleaved_best, write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    import torch

    from darkmatter.data.activations import ActivationCache
    from darkmatter.config import ResidualConfig
    from darkmatter.analysis.residual import JointMoments, accumulate
    from darkmatter.analysis.stream import MAX_CHUNK_TOKENS, SAEForward
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

    chunks = [torch.from_numpy(np.asarray(cache.acts[lo : lo + chunk], dtype=np.float32)) for lo in range(0, n, chunk)]

    def saelens_forward():
        with torch.no_grad():
            for x in chunks:
                x - sae.decode(sae.encode(x))

    def fused_forward():
        forward = SAEForward(sae)
        with torch.no_grad():
            for x in chunks:
                x - forward(x, preacts=True)[2]

    def moment_gemms():  # the stage's own JointMoments.add: x̃ᵀx̃, x̃ᵀr, rᵀr (float32, summed in float64)
        moments = JointMoments(np.zeros(d), np.zeros(d))
        for x in chunks:
            moments.add(x, x)

    x_any, f_any = torch.randn(chunk, d), torch.randn(chunk, width)  # GEMM time does not depend on the values

    def encode_gemm():
        return [x_any @ sae.W_enc for _ in chunks]

    def decode_gemm():
        return [f_any @ sae.W_dec for _ in chunks]

    best = interleaved_best({"full": full, "moments": moment_gemms, "saelens": saelens_forward, "fused": fused_forward,
                             "encode": encode_gemm, "decode": decode_gemm}, rounds=4)
    ours, moments, reference, fused = best["full"], best["moments"], best["saelens"], best["fused"]
    encode_roofline, roofline = best["encode"], best["encode"] + best["decode"]
    gflops = 2 * 2 * n * d * width / roofline / 1e9
    with torch.no_grad():
        density = float(np.mean([(SAEForward(sae)(x)[1] > 0).float().mean() for x in chunks]))
    rows = [
        ("SAE", f"d_in {d}, width {width} (`data/runs/{args.run}/sae`), {n:,} cached tokens, chunks of {chunk}; "
                f"latent density {density:.2%}"),
        ("roofline: encode + decode GEMMs alone (dense)", f"{n / roofline:,.0f} tok/s ({gflops:.0f} GFLOP/s)"),
        ("encode GEMM alone", f"{n / encode_roofline:,.0f} tok/s"),
        ("reference: SAELens encode + decode, same chunks", f"{n / reference:,.0f} tok/s"),
        ("our fused forward alone (bias in the GEMM, jump in place, sparse decode)",
         f"{n / fused:,.0f} tok/s ({reference / fused:.2f}x SAELens)"),
        ("**ours: full residual pass** (all statistics)", f"**{n / ours:,.0f} tok/s**"),
        ("moment GEMMs alone (ridge and PCA moments, x̃ᵀx̃, x̃ᵀr, rᵀr in float32), same tokens",
         f"{n / moments:,.0f} tok/s ({moments / ours:.0%} of the full pass)"),
        ("**ours / roofline** (target ≥ 0.7)", f"**{roofline / ours:.2f}**"),
        ("ours / encode GEMM alone (the part no pass skips)", f"{encode_roofline / ours:.2f}"),
        ("ours / SAELens forward only (the statistics come almost free)", f"{reference / ours:.2f}"),
    ]
    body = "\n".join(["| quantity | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])
    print(body)
    write_section("Residual pass", body)


if __name__ == "__main__":
    main()
