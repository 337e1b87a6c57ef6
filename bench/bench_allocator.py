"""What PyTorch's huge-page allocation (``THP_MEM_ALLOC_ENABLE``, set by ``import darkmatter``) buys.

    python bench/bench_allocator.py [--rounds 3] [--tokens 32768] [--run gemma-3-270m-l9]

The setting is read once per process, so each measurement is a child process: the residual pass
(``darkmatter.analysis.residual.accumulate``, best of 3 in the child) and an SAE training step
(best of 3 × 20 steps), with huge pages on and off, alternating, ``--rounds`` times; the ratio is
the median of the rounds' on/off speed-ups. Needs the default run's cache and SAE (`dvc repro`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

CHILD = {
    "residual pass": """
import sys, time
sys.path.insert(0, {bench!r})
from pathlib import Path
from common import CachePrefix
from darkmatter.analysis.residual import accumulate
from darkmatter.config import ResidualConfig
from darkmatter.data.activations import ActivationCache
from darkmatter.sae.io import load_sae
run = Path({repo!r}) / "data/runs" / {run!r}
cache = ActivationCache.open(run / "activations")
prefix = CachePrefix(cache, {tokens} // cache.meta["context_length"])
sae = load_sae(run / "sae")
accumulate(sae, prefix, 0.1, ResidualConfig(), 8192)
best = float("inf")
for _ in range(3):
    start = time.perf_counter()
    accumulate(sae, prefix, 0.1, ResidualConfig(), 8192)
    best = min(best, time.perf_counter() - start)
print(prefix.meta["n_tokens"] / best)
""",
    "SAE training step": """
import time
import numpy as np
from darkmatter.config import SAEConfig
from darkmatter.sae.train import TokenBatches, build_training_sae
d, w, b = 640, 4096, 1024
sae, trainer = build_training_sae(d, SAEConfig(width=w, batch_size=b, train_tokens=b * 100), steps=100, device="cpu")
data = np.random.default_rng(0).standard_normal((b * 8, d)).astype(np.float32)
stream = TokenBatches(data, np.arange(len(data)), b, seed=0, scale=1 / np.sqrt(d))(0)
best = float("inf")
for round in range(4):
    start = time.perf_counter()
    for _ in range(20):
        trainer.step(next(stream))
        trainer.n_training_steps += 1
    if round:
        best = min(best, (time.perf_counter() - start) / 20)
print(b / best)
""",
}


def child_rate(code: str, huge_pages: bool) -> float:
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "1" if huge_pages else "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--run", default="gemma-3-270m-l9", help="a run built by dvc repro")
    args = parser.parse_args()
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = thp.read_text().strip() if thp.exists() else "not available"
    rows = []
    for name, template in CHILD.items():
        code = template.format(bench=str(Path(__file__).resolve().parent), repo=str(REPO), run=args.run, tokens=args.tokens)
        on, off = [], []
        for _ in range(args.rounds):
            off.append(child_rate(code, huge_pages=False))
            on.append(child_rate(code, huge_pages=True))
        speedup = np.array(on) / np.array(off)
        rows.append(f"| {name} | {np.median(off):,.0f} | {np.median(on):,.0f} | **{np.median(speedup):.2f}x** "
                    f"[{speedup.min():.2f}, {speedup.max():.2f}] |")
    body = "\n".join([
        f"Transparent huge pages on this kernel: `{mode}` (PyTorch madvises its buffers of ≥ 2 MB when asked).",
        "",
        f"| workload | tok/s, 4 KB pages | tok/s, huge pages | huge / 4 KB: median [min, max] of {args.rounds} paired rounds |",
        "|---|---|---|---|",
        *rows,
    ])
    print(body)
    write_section("Allocator", body)


if __name__ == "__main__":
    main()
