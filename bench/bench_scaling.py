"""How each hot stage's cost grows with tokens and SAE width: measured times and fitted exponents.

    python bench/bench_scaling.py [--widths 2048 4096]

At three token counts N per stage (each stage's own ladder, large enough that fixed costs do not
dominate, small enough to fit a few minutes) and two SAE widths W, in one run on the default
run's cache:
- **caching**: the activation stage's forward (compiled, as the stage runs it) over N tokens;
- **SAE training**: N training tokens (``SAETrainer.step`` as in ``darkmatter.sae.train``);
- **residual pass**: ``darkmatter.analysis.residual.accumulate`` over N tokens, with the SAE
  just trained at that width;
- **ICA**: one Picard-O fit (the stage's settings: k = 64, tol 1e-7) on the whitened dark matter
  r = x − SAE(x) of the N tokens (SAE of the largest width); its time is iterations × time per iteration, and the iteration count depends on the
  data, so both are reported.
For each stage, t = a·N^b is fitted by least squares on log-log axes (b = 1: linear), and the
width exponent is log(t(W₂)/t(W₁)) / log(W₂/W₁) at the largest N. The last table extrapolates
to the default cache and to the seeds' 1M tokens with those fits: what spending the seeds' 1M
tokens would cost on this machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CachePrefix, write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 2


def fit_exponent(sizes: list[int], seconds: list[float]) -> tuple[float, float]:
    """(a, b) of t = a·N^b, least squares on log t vs log N."""
    b, log_a = np.polyfit(np.log(sizes), np.log(seconds), 1)
    return float(np.exp(log_a)), float(b)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    import torch

    from darkmatter.analysis.ica import Whitener, run_ica
    from darkmatter.analysis.residual import accumulate, pca
    from darkmatter.analysis.stream import stream
    from darkmatter.config import ResidualConfig, SAEConfig
    from darkmatter.data.activations import ActivationCache
    from darkmatter.data.models import load_subject
    from darkmatter.sae.train import TokenBatches, build_training_sae, to_inference_sae

    parser = argparse.ArgumentParser()
    parser.add_argument("--caching-tokens", type=int, nargs=3, default=[8192, 16384, 32768])
    parser.add_argument("--sae-tokens", type=int, nargs=3, default=[32768, 65536, 131072],
                        help="SAE training and residual pass")
    parser.add_argument("--ica-tokens", type=int, nargs=3, default=[16384, 32768, 65536])
    parser.add_argument("--widths", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--run", default="gemma-3-270m-l9", help="a run built by dvc repro")
    parser.add_argument("--ica-components", type=int, default=64)
    args = parser.parse_args()

    cache = ActivationCache.open(REPO / f"data/runs/{args.run}/activations")
    context, d = cache.meta["context_length"], cache.meta["d_model"]
    subject = load_subject(cache.meta["model"], REPO / f"data/runs/{args.run}/model", device="cpu")
    batch = 32
    subject.compile_forward(batch, context)
    layer = cache.meta["layer"]
    subject.activations(torch.from_numpy(np.asarray(cache.tokens[: batch * context]).reshape(batch, context).astype(np.int64)), layer)

    times: dict[str, dict[int, dict[int, float]]] = {"caching": {}, "SAE training": {}, "residual pass": {}, "ICA fit": {}}
    ica_iters: dict[int, int] = {}
    scale = 1 / np.sqrt(float((np.asarray(cache.acts[:8192], dtype=np.float64) ** 2).sum(1).mean()))
    for n in args.caching_tokens:
        tokens = torch.from_numpy(np.asarray(cache.tokens[:n]).reshape(-1, context).astype(np.int64))
        times["caching"].setdefault(0, {})[n] = timed(
            lambda: [subject.activations(tokens[lo : lo + batch], layer) for lo in range(0, len(tokens), batch)]
        )
    saes = {}
    for n in args.sae_tokens:
        part = CachePrefix(cache, n // context)
        for width in args.widths:
            cfg = SAEConfig(width=width, train_tokens=n)
            steps = n // cfg.batch_size
            sae, trainer = build_training_sae(d, cfg, steps + WARMUP_STEPS, "cpu")
            data = TokenBatches(part.acts, np.arange(n), cfg.batch_size, seed=0, scale=scale)(0)

            def train(count: int = steps):
                for _ in range(count):
                    trainer.step(next(data))
                    trainer.n_training_steps += 1

            train(WARMUP_STEPS)  # the compile (sae.compile), outside the timing as outside the stage's per-token cost
            times["SAE training"].setdefault(width, {})[n] = timed(train)
            saes[width] = inference = to_inference_sae(sae, scale, {"hook_name": cache.meta["hook_name"]})
            times["residual pass"].setdefault(width, {})[n] = timed(lambda: accumulate(inference, part, 0.25, ResidualConfig()))
    for n in args.ica_tokens:
        part = CachePrefix(cache, n // context)
        keep = np.flatnonzero(~part.special)
        sae = saes[max(args.widths)]
        r = np.concatenate([c.r.double().numpy() for c in stream(sae, part.acts, keep, 8192, desc="dark matter")])
        whitener = Whitener.from_pca(r.mean(0), *pca(np.cov(r, rowvar=False)), args.ica_components)
        result = run_ica(whitener(r), "picard", seed=0, max_iter=2000)
        times["ICA fit"].setdefault(0, {})[n] = result.seconds
        ica_iters[n] = result.n_iter

    ladders = {"caching": args.caching_tokens, "SAE training": args.sae_tokens, "residual pass": args.sae_tokens,
               "ICA fit": args.ica_tokens}
    def k(n: int) -> str:
        return f"{n // 1024}k"

    rows, fits = [], {}
    for stage, by_width in times.items():
        sizes = ladders[stage]
        for width, by_n in by_width.items():
            a, b = fit_exponent(sizes, [by_n[n] for n in sizes])
            fits[(stage, width)] = (a, b)
            label = stage if not width else f"{stage}, width {width}"
            rows.append(f"| {label} | {' / '.join(map(k, sizes))} | {' / '.join(f'{by_n[n]:.1f}' for n in sizes)} | **{b:.2f}** |")
    sizes = args.ica_tokens
    per_iter = [times["ICA fit"][0][n] / ica_iters[n] for n in sizes]
    a_iter, b_iter = fit_exponent(sizes, per_iter)
    rows.append(f"| ICA, ms per iteration | {' / '.join(map(k, sizes))} | {' / '.join(f'{1000 * t:.0f}' for t in per_iter)} | **{b_iter:.2f}** |")
    rows.append(f"| ICA iterations to tol 1e-7 | {' / '.join(map(k, sizes))} | {' / '.join(str(ica_iters[n]) for n in sizes)} | |")
    width_rows = []
    big = args.sae_tokens[-1]
    if len(args.widths) == 2:
        w1, w2 = args.widths
        for stage in ("SAE training", "residual pass"):
            t1, t2 = times[stage][w1][big], times[stage][w2][big]
            width_rows.append(f"| {stage} | {t1:.1f} | {t2:.1f} | **{np.log(t2 / t1) / np.log(w2 / w1):.2f}** |")
    targets = (262_144, 1_048_576)
    predicted = [
        f"| {stage if not width else f'{stage}, width {width}'} | " + " | ".join(f"{a * t**b:,.0f}" for t in targets) + " |"
        for (stage, width), (a, b) in fits.items()
        if stage != "ICA fit"
    ]
    predicted.append("| ICA fit, per 1000 iterations | " + " | ".join(f"{1000 * a_iter * t**b_iter:,.0f}" for t in targets) + " |")
    body = f"""
Default run's cache and model ({cache.meta['model']}, `{cache.meta['hook_name']}`); seconds per stage, one process, in one run.

| stage | tokens N | seconds | exponent b in t ∝ N^b |
|---|---|---|---|
{chr(10).join(rows)}

Width exponent at N = {big:,} (t ∝ W^c):

| stage | W = {args.widths[0]} | W = {args.widths[-1]} | c |
|---|---|---|---|
{chr(10).join(width_rows)}

Extrapolated with those fits (seconds; ICA per 1000 iterations, since its iteration count is the
data's), to the default cache (262,144 tokens) and the seeds' 1M:

| stage | N = 262,144 | N = 1,048,576 |
|---|---|---|
{chr(10).join(predicted)}
"""
    print(body)
    write_section("Scaling of the cost", body)


if __name__ == "__main__":
    main()
