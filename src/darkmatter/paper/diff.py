"""Compare two builds of the paper: which numbers moved, by how much, and whether within their own CI.

    python -m darkmatter.paper.diff BUILD_A BUILD_B [--rtol 1e-9] [--fail-outside-ci] [--timings]

A build is a directory holding ``metrics/`` and ``paper/generated/`` (a clone after ``dvc repro``,
or after ``dvc pull``). Every number in every metrics JSON is compared; a number reported with a
confidence interval (a dict holding ``ci: [lo, hi]`` next to its ``mean``/``difference``) is
judged against A's interval; everything else is listed with its absolute and relative move.
The generated LaTeX is compared line by line, so a reader sees which sentences and table cells
changed. Moves smaller than ``--rtol`` (relative) are counted but not listed: float64 sums that
differ at 1e-16 between machines should not drown the moves that matter. Wall-clock timings and
judge usage (``seconds``, ``tokens_per_s``, ``usage``...) are not results: they are counted apart
and listed only with ``--timings``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from darkmatter.errors import UserError, cli

#: Keys whose number a sibling ``ci`` is the interval of.
ESTIMATE_KEYS = ("mean", "difference", "value", "estimate")
#: Key paths that hold how long or how much, not what was found.
TIMING = re.compile(r"(^|\.)(seconds|tokens_per_s|throughput|usage)(\.|\[|$)")


@dataclass
class Move:
    file: str
    key: str
    a: float
    b: float
    ci: tuple[float, float] | None  # A's interval for this number, if it has one

    @property
    def delta(self) -> float:
        return self.b - self.a

    @property
    def relative(self) -> float:
        return abs(self.delta) / abs(self.a) if self.a else math.inf

    @property
    def within_ci(self) -> bool | None:
        return None if self.ci is None else self.ci[0] <= self.b <= self.ci[1]

    @property
    def is_timing(self) -> bool:
        return bool(TIMING.search(self.key))


@dataclass
class Comparison:
    moves: list[Move]  # relative move >= rtol (timings included; see ``results``)
    small: int  # moved by less than rtol
    only_in: dict[str, list[str]]  # "A"/"B" -> metrics keys or files present in one build only
    text: dict[str, list[tuple[str, str]]]  # generated file -> (line in A, line in B)

    @property
    def results(self) -> list[Move]:
        return [m for m in self.moves if not m.is_timing]

    @property
    def outside_ci(self) -> list[Move]:
        return [m for m in self.moves if m.within_ci is False]


def numbers(obj, path: tuple = ()) -> dict[tuple, tuple[float, tuple[float, float] | None]]:
    """Every numeric leaf of a JSON value: path -> (value, the CI it is the estimate of, or None)."""
    out = {}
    if isinstance(obj, dict):
        ci = obj.get("ci")
        ci = tuple(ci) if isinstance(ci, list) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci) else None
        for key, value in obj.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[(*path, key)] = (float(value), ci if key in ESTIMATE_KEYS else None)
            else:
                out.update(numbers(value, (*path, key)))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[(*path, i)] = (float(value), None)
            else:
                out.update(numbers(value, (*path, i)))
    return out


def _key(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(path))


def compare(build_a: Path, build_b: Path, rtol: float = 0.0) -> Comparison:
    for build in (build_a, build_b):
        if not (build / "metrics").is_dir():
            raise UserError(f"{build} holds no metrics/ directory; pass the root of a built clone")
    files_a = {str(p.relative_to(build_a)) for p in (build_a / "metrics").rglob("*.json")}
    files_b = {str(p.relative_to(build_b)) for p in (build_b / "metrics").rglob("*.json")}
    only = {"A": sorted(files_a - files_b), "B": sorted(files_b - files_a)}
    moves, small = [], 0
    for name in sorted(files_a & files_b):
        a = numbers(json.loads((build_a / name).read_text()))
        b = numbers(json.loads((build_b / name).read_text()))
        only["A"] += [f"{name}: {_key(k)}" for k in a.keys() - b.keys()]
        only["B"] += [f"{name}: {_key(k)}" for k in b.keys() - a.keys()]
        for key in sorted(a.keys() & b.keys(), key=str):
            (va, ci), (vb, _) = a[key], b[key]
            if va == vb or (math.isnan(va) and math.isnan(vb)):
                continue
            move = Move(name, _key(key), va, vb, ci)
            if move.relative < rtol:
                small += 1
            else:
                moves.append(move)
    text = {}
    gen_a, gen_b = build_a / "paper" / "generated", build_b / "paper" / "generated"
    for path in sorted(gen_a.glob("*.tex")) if gen_a.is_dir() else []:
        other = gen_b / path.name
        lines_a = path.read_text().splitlines()
        lines_b = other.read_text().splitlines() if other.exists() else []
        changed = _changed_lines(lines_a, lines_b)
        if changed:
            text[path.name] = changed
    return Comparison(moves, small, only, text)


def _changed_lines(a: list[str], b: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag != "equal":
            old, new = a[i1:i2], b[j1:j2]
            pairs += [(old[i] if i < len(old) else "", new[i] if i < len(new) else "") for i in range(max(len(old), len(new)))]
    return pairs


def render(c: Comparison, rtol: float, timings: bool = False) -> str:
    results = c.results
    with_ci = [m for m in results if m.ci is not None]
    n_timing = len(c.moves) - len(results)
    lines = [
        f"# Paper diff: {len(results)} numbers moved by >= {rtol:g} (relative), {c.small} by less",
        "",
        f"- with a CI: {len(with_ci)} ({len(c.outside_ci)} outside A's interval); without: {len(results) - len(with_ci)}",
        f"- generated LaTeX: {sum(map(len, c.text.values()))} changed lines in {len(c.text)} files",
        f"- timings and judge usage (not results): {n_timing} moved" + ("" if timings or not n_timing else " (--timings lists them)"),
        f"- only in A: {len(c.only_in['A'])}; only in B: {len(c.only_in['B'])}",
        "",
    ]
    listed = c.moves if timings else results
    if listed:
        lines += ["| file | key | A | B | Δ | relative | A's CI | within |", "|---|---|---|---|---|---|---|---|"]
        order = sorted(listed, key=lambda m: (m.within_ci is not False, m.is_timing, m.ci is None, -m.relative))
        for m in order:
            ci = f"[{m.ci[0]:.4g}, {m.ci[1]:.4g}]" if m.ci else ""
            verdict = {True: "yes", False: "**no**", None: ""}[m.within_ci]
            lines.append(f"| {m.file} | {m.key} | {m.a:.6g} | {m.b:.6g} | {m.delta:+.3g} | {m.relative:.2g} | {ci} | {verdict} |")
        lines.append("")
    for name, pairs in c.text.items():
        lines += [f"## paper/generated/{name}", ""]
        for old, new in pairs:
            lines += [f"- A: `{old.strip()[:160]}`", f"  B: `{new.strip()[:160]}`"]
        lines.append("")
    for side in ("A", "B"):
        if c.only_in[side]:
            lines += [f"## only in {side}", "", *(f"- {k}" for k in c.only_in[side]), ""]
    return "\n".join(lines)


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_a", type=Path)
    parser.add_argument("build_b", type=Path)
    parser.add_argument("--rtol", type=float, default=1e-9, help="list only moves at least this large (relative)")
    parser.add_argument("--out", type=Path, help="also write the report here (Markdown)")
    parser.add_argument("--fail-outside-ci", action="store_true", help="exit 1 if a number left its own CI")
    parser.add_argument("--timings", action="store_true", help="also list moved wall-clock timings and judge usage")
    args = parser.parse_args(argv)
    comparison = compare(args.build_a, args.build_b, args.rtol)
    report = render(comparison, args.rtol, args.timings)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
    if args.fail_outside_ci and comparison.outside_ci:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
