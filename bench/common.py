"""Shared pieces of the benchmarks: machine description, fp32 matmul roofline, results file."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    import torch

    cpu = platform.processor() or "cpu"
    try:
        match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = match.group(1).strip() if match else cpu
    except OSError:
        pass
    # The vector ISA torch dispatches to (AVX2, AVX512): two CPUs with one model name differ here.
    isa = torch.backends.cpu.get_cpu_capability()
    return f"{cpu} ({isa}), {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def cpu_flags() -> str:
    """The vector and matrix extensions ``lscpu`` lists (AVX*, AMX*, FMA, F16C): what a rate depends on."""
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "(lscpu unavailable)"
    flags = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Flags")), "")
    return " ".join(f for f in flags.split() if f.startswith(("avx", "amx", "fma", "f16c"))) or "(lscpu unavailable)"


def best_seconds(fn, repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved_best(fns: dict, rounds: int = 4) -> dict:
    """Best wall time of each function over ``rounds``, the functions taken in turn every round.

    On a shared 2-core VM the speed drifts by ~15% over a minute; interleaving gives every
    quantity of a ratio the same chance of a quiet moment.
    """
    for fn in fns.values():  # warm-up
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def gemm_seconds(m: int, k: int, n: int, batch: int = 1, repeats: int = 5) -> float:
    """Best-of-``repeats`` wall time of one fp32 ``[batch, m, k] @ [batch, k, n]`` product."""
    import torch

    a, b = torch.randn(batch, m, k).squeeze(0), torch.randn(batch, k, n).squeeze(0)
    return best_seconds(lambda: a @ b, repeats=repeats)


def roofline_seconds(gemms: list[tuple[int, int, int, int, int]], repeats: int = 5) -> tuple[float, float]:
    """Time the workload's own matmuls would take, each at its measured best rate.

    ``gemms`` lists ``(count, batch, m, k, n)``. Returns (seconds, GFLOP/s overall). This is the
    fp32 matmul roofline of the workload: everything else (norms, activations, copies) is
    overhead that the ratio to it exposes.
    """
    seconds = flops = 0.0
    for count, batch, m, k, n in gemms:
        seconds += count * gemm_seconds(m, k, n, batch, repeats)
        flops += count * 2 * batch * m * k * n
    return seconds, flops / seconds / 1e9


def write_section(title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of bench/RESULTS.md, stamped with the time, the
    machine and its CPU flags (one CPU model name covers CPUs with and without AVX-512 or AMX)."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nWritten by the scripts in bench/. Ratios are taken within one run.\n"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = f"## {title}\n\n_{stamp}; {machine()}_\n\nCPU flags: {cpu_flags()}.\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    RESULTS.write_text(text)


class CachePrefix:
    """The first ``n_rows`` rows of an activation cache, in the interface the stages read."""

    def __init__(self, cache, n_rows: int):
        import numpy as np

        n = n_rows * cache.meta["context_length"]
        self.root = cache.root
        self.meta = {**cache.meta, "n_tokens": n, "n_rows": n_rows}
        self.acts, self.special = cache.acts[:n], np.asarray(cache.special[:n])
