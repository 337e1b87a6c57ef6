"""What this machine's CPU multiplies in hardware, read from Linux's ``/proc/cpuinfo``.

The offline judge's default depends on it (``autointerp.local_model: auto``,
:func:`darkmatter.interp.judges.auto_judge`):
bfloat16 runs the Qwen2.5-Coder-1.5B judge 4.3× faster than float32 where the CPU has AMX, and
slower than float32 where it has no bf16 units at all (``bench/RESULTS.md``, "Autointerp judge
numerics").
"""

from __future__ import annotations

from pathlib import Path


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where ``/proc/cpuinfo`` cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def has_bf16_units(flags: frozenset[str]) -> bool:
    """Whether the CPU multiplies bfloat16 in hardware (AMX or AVX512-BF16)."""
    return "amx_bf16" in flags or "avx512_bf16" in flags

