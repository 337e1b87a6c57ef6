"""Stage-by-stage wall times of the last `dvc repro`, from the modification times of each stage's outputs.

DVC does not record how long a stage ran; every stage writes its outputs as it finishes and
`dvc repro` runs stages one after another, so the time between one stage's last-written
output and the previous one's is that stage's wall time (DVC's own hashing and caching of
the outputs included). Stages skipped by `dvc repro` (up to date) show their older times and
are listed apart.

    python bench/stage_times.py [--since EPOCH] [--write]   # --write: the "Default dvc repro" section of bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def last_write(path: Path) -> float | None:
    if path.is_file():
        return path.stat().st_mtime
    times = [Path(root, name).stat().st_mtime for root, _, files in os.walk(path) for name in files]
    return max(times) if times else None


def finish_times(lock: dict) -> dict[str, float]:
    out = {}
    for stage, entry in lock["stages"].items():
        times = [last_write(REPO / o["path"]) for o in entry.get("outs", []) if (REPO / o["path"]).exists()]
        times = [t for t in times if t is not None]
        if times:
            out[stage] = max(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--since", type=float, default=None, help="epoch seconds when dvc repro started")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    finished = finish_times(yaml.safe_load((REPO / "dvc.lock").read_text()))
    order = sorted(finished, key=finished.get)
    start = args.since if args.since is not None else finished[order[0]]
    ran = [s for s in order if finished[s] >= start]
    rows, previous = [], start
    for stage in ran:
        rows.append(f"| `{stage}` | {finished[stage] - previous:.0f} |")
        previous = finished[stage]
    total = previous - start
    skipped = [s for s in order if finished[s] < start]
    body = "\n".join(["| stage (in the order it finished) | wall seconds |", "|---|---|", *rows,
                      f"| **total** | **{total:.0f} s = {total / 60:.1f} min** |"])
    if skipped:
        body += "\n\nNot run (up to date): " + ", ".join(f"`{s}`" for s in skipped)
    print(body)
    if args.write:
        write_section("Default dvc repro, stage by stage", "From `bench/stage_times.py` (output modification times).\n\n" + body)


if __name__ == "__main__":
    main()
