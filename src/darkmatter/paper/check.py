"""The paper cannot silently go stale: ``python -m darkmatter.paper.check``.

Three checks against what is committed, none needing the DVC cache (so CI runs them):

1. **Stale tables.** ``paper/generated`` regenerated from the committed metrics, params and
   ``dvc.lock`` must equal the committed files byte for byte.
2. **Orphan figures.** Every figure file under ``figures/`` must be included by the LaTeX (a
   figure nobody sees is either dead output or a result the paper forgot).
3. **Unwritten reads.** Every metrics file and key the generator reads must exist and be written
   by a stage in ``dvc.lock``, or be a committed bench result the paper labels as one
   (``generate.BENCH_RESULTS``). Experiments the paper already has a section for but no stage yet
   (its "not run" text) are listed as *pending*, not as errors.
"""

from __future__ import annotations

import argparse
import filecmp
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from darkmatter.errors import cli
from darkmatter.paper.generate import BENCH_RESULTS, LATER, generate
from darkmatter.paper.provenance import (FIGURE_EXTENSIONS, Recorder, figure_dirs, included_figures, producer,
                                         read_lock)


@dataclass
class Report:
    stale: list[str] = field(default_factory=list)  # generated files that differ from the committed ones
    orphan_figures: list[str] = field(default_factory=list)
    unwritten: list[str] = field(default_factory=list)  # read, absent, and no stage writes it ...
    pending: list[str] = field(default_factory=list)  # ... except files whose absence the paper reports as "not run"
    unbuilt: list[str] = field(default_factory=list)  # read, absent, but a stage writes it: run dvc repro
    absent_keys: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.stale or self.orphan_figures or self.unwritten or self.unbuilt or self.absent_keys)

    def lines(self) -> list[str]:
        out = [f"stale: paper/generated/{name} differs from a regeneration; run `dvc repro -s -f paper_tables && dvc repro paper` (-s: plain -f would force every upstream stage too)"
               for name in self.stale]
        out += [f"orphan figure: {p} is never included by paper/main.tex; include it or stop writing it"
                for p in self.orphan_figures]
        out += [f"unwritten: the paper reads {p}, which no stage in dvc.lock writes" for p in self.unwritten]
        out += [f"unbuilt: the paper reads {p}, which is missing; run `dvc repro`" for p in self.unbuilt]
        out += [f"absent key: the paper reads {k}, which the metrics do not hold" for k in self.absent_keys]
        out += [f"pending: {p} (no stage yet; the paper says 'not run')" for p in self.pending]
        return out


def check(repo_root: Path, params) -> Report:
    repo_root = Path(repo_root)
    report = Report()
    recorder = Recorder()
    committed = repo_root / "paper" / "generated"
    with tempfile.TemporaryDirectory(prefix="generated-") as tmp:
        fresh = Path(tmp)
        generate(params, repo_root / "metrics", fresh, recorder, repo_root / "dvc.lock")
        names = sorted({p.name for p in fresh.glob("*.tex")} | {p.name for p in committed.glob("*.tex")})
        report.stale = [n for n in names if not ((committed / n).exists() and (fresh / n).exists()
                                                 and filecmp.cmp(committed / n, fresh / n, shallow=False))]

    tex = [repo_root / "paper" / "main.tex"]
    included = set(included_figures(tex))
    dirs = [repo_root / d for d in figure_dirs(params.main_run)]
    for path in sorted(p for p in (repo_root / "figures").rglob("*") if p.suffix in FIGURE_EXTENSIONS):
        keys = {str(path.relative_to(d).with_suffix("")) for d in dirs if path.is_relative_to(d)}
        if not keys & included:
            report.orphan_figures.append(str(path.relative_to(repo_root)))

    lock = read_lock(repo_root / "dvc.lock")
    pending = {f"metrics/runs/{run}/{name}.json" for run in params.runs for name in _later_without_stage(lock, run)}
    absent = set().union(*recorder.absent_files.values())
    for source in sorted(set().union(*recorder.files.values())):
        if source in BENCH_RESULTS and source not in absent:
            continue  # committed by its bench script; the paper says so and checks what it was measured on
        if producer(lock, source):
            if source in absent:
                report.unbuilt.append(source)
        elif source in absent and source in pending:
            report.pending.append(source)
        else:
            report.unwritten.append(source)
    report.absent_keys = sorted(f"{src}: {key}" for src, keys in recorder.absent_keys.items() for key in keys)
    return report


def _later_without_stage(lock: dict, run: str) -> list[str]:
    """The later experiments of the paper whose stage does not exist for ``run`` (rendered "not run")."""
    return [name for name in LATER if f"{name}@{run}" not in lock]


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import load_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    report = check(args.repo, load_params(args.repo / "params.yaml"))
    for line in report.lines():
        print(line)
    print("paper check: ok" if report.ok else "paper check: FAILED")
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
