"""Where every figure and table of the PDF comes from, and what the paper reads of the metrics.

- **Provenance.** Each figure and table carries a line naming the stage that made it (for a table:
  the stages whose metrics it reports), the short hash of that stage's inputs as ``dvc.lock``
  records them (:func:`input_hash`: command, dependency hashes and params), and the git commit of
  the code that built the PDF (passed by :mod:`darkmatter.paper.build`, also in the PDF's
  metadata). ``paper/generated/provenance.tex`` holds the per-figure and per-table lines, so it
  is as deterministic as the rest of ``paper/generated``; the commit enters at build time only.
- **Reads.** While the generator runs, metrics are :class:`Tracked` dicts: every file and key the
  paper reads is recorded per generated file, including keys and files that do not exist (a
  ``.get`` that falls back, a later experiment's metrics that no stage writes yet), so a check can
  name what the paper reads that no stage writes.

Hand-written, not showyourwork: that tool owns the whole build (Snakemake) and would replace
DVC; this module only reads ``dvc.lock`` and ``main.tex``.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

INCLUDE = re.compile(r"\\includegraphics(?:\[[^\]]*\])?\{([^}]+)\}")
FIGURE_EXTENSIONS = (".pdf", ".png")


# ---- what the generator reads ------------------------------------------------------------------

@dataclass
class Recorder:
    """Metrics files and keys read, per generated file (``current``)."""

    current: str = ""
    files: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    absent_files: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    absent_keys: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    @contextlib.contextmanager
    def reading(self, generated: str):
        previous, self.current = self.current, generated
        try:
            yield
        finally:
            self.current = previous

    def read(self, source: str, path: tuple, found: bool) -> None:
        self.files[self.current].add(source)
        if not found:
            self.absent_keys[source].add(".".join(map(str, path)))


RECORDER: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("paper_metrics_recorder", default=None)


class Tracked(dict):
    """A metrics dict that reports each read (file, key path, found or not) to the active :class:`Recorder`."""

    def __init__(self, data: dict, source: str, recorder: Recorder, path: tuple = ()):
        super().__init__(data)
        self._source, self._recorder, self._path = source, recorder, path

    def _wrap(self, key, value):
        if isinstance(value, dict):
            return Tracked(value, self._source, self._recorder, (*self._path, key))
        if isinstance(value, list):
            return [self._wrap(f"{key}[{i}]", v) if isinstance(v, (dict, list)) else v for i, v in enumerate(value)]
        return value

    def __getitem__(self, key):
        self._recorder.read(self._source, (*self._path, key), key in self)
        return self._wrap(key, super().__getitem__(key))

    def get(self, key, default=None):
        self._recorder.read(self._source, (*self._path, key), key in self)
        return self._wrap(key, super().__getitem__(key)) if key in self else default

    def items(self):
        self._recorder.read(self._source, self._path, True)
        return [(k, self._wrap(k, v)) for k, v in super().items()]

    def values(self):
        return [v for _, v in self.items()]


def track(data: dict | list, source: str) -> dict | list:
    """``data`` (a metrics file's JSON) as :class:`Tracked` dicts when a recorder is active (plain otherwise)."""
    recorder = RECORDER.get()
    if recorder is None:
        return data
    if isinstance(data, list):
        recorder.read(source, (), True)
        return [Tracked(v, source, recorder, (f"[{i}]",)) if isinstance(v, dict) else v for i, v in enumerate(data)]
    return Tracked(data, source, recorder)


def note_absent(source: str) -> None:
    """The paper asked for a metrics file that does not exist (it renders "not run")."""
    recorder = RECORDER.get()
    if recorder is not None:
        recorder.files[recorder.current].add(source)
        recorder.absent_files[recorder.current].add(source)


# ---- dvc.lock -----------------------------------------------------------------------------------

def read_lock(lock_path: Path) -> dict[str, dict]:
    """The stages of ``dvc.lock`` (empty if there is none yet)."""
    import yaml

    if not Path(lock_path).exists():
        return {}
    return yaml.safe_load(Path(lock_path).read_text()).get("stages", {})


def input_hash(entry: dict) -> str:
    """8 hex digits of sha256 over a lock entry's command, dependency hashes and params."""
    payload = {
        "cmd": entry.get("cmd"),
        "deps": sorted((d["path"], d.get("md5") or d.get("hash")) for d in entry.get("deps", [])),
        "params": entry.get("params", {}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:8]


def producer(lock: dict[str, dict], path: str) -> str | None:
    """The stage whose output is ``path`` or a directory holding it."""
    for name, entry in lock.items():
        for out in entry.get("outs", []):
            root = out["path"].rstrip("/")
            if path == root or path.startswith(root + "/"):
                return name
    return None


# ---- figures of main.tex ------------------------------------------------------------------------

def included_figures(tex_files: list[Path]) -> list[str]:
    """``\\includegraphics`` arguments, in order, deduplicated."""
    keys: list[str] = []
    for tex in tex_files:
        text = re.sub(r"(?<!\\)%.*", "", tex.read_text())
        keys += [k for k in INCLUDE.findall(text) if k not in keys]
    return keys


def figure_dirs(main_run: str) -> list[str]:
    """Where ``\\includegraphics`` looks, relative to the repository: ``main.tex``'s ``\\graphicspath``."""
    return [f"figures/runs/{main_run}", "figures"]


def resolve_figure(key: str, main_run: str, repo_root: Path) -> str | None:
    """The repository path of an included figure (the graphicspath's first match), or None."""
    for directory in figure_dirs(main_run):
        for ext in ("", *FIGURE_EXTENSIONS):
            candidate = f"{directory.rstrip('/')}/{key}{ext}"
            if (repo_root / candidate).is_file():
                return candidate
    return None


# ---- the provenance lines -----------------------------------------------------------------------

def describe(stages: list[str], lock: dict[str, dict]) -> str:
    """``stage (inputs abcd1234)`` for each stage, as LaTeX text."""
    if not stages:
        return "no dvc.lock entry"
    return "; ".join(f"\\texttt{{{s.replace('_', chr(92) + '_')}}} (inputs \\texttt{{{input_hash(lock[s])}}})"
                     for s in stages)


def provenance_tex(figures: dict[str, str | None], tables: dict[str, list[str]], lock: dict[str, dict]) -> str:
    """``\\dmprovenance{key}`` lines for figures (key: the includegraphics argument) and tables (key: file stem)."""
    lines = [
        "% Written by darkmatter.paper.generate: the stage behind each figure and table and the hash of its",
        "% inputs in dvc.lock (darkmatter.paper.provenance.input_hash); the commit comes from the build.",
        "\\makeatletter",
    ]
    for key, path in figures.items():
        stage = producer(lock, path) if path else None
        lines.append(f"\\@namedef{{dmprov@{key}}}{{{describe([stage] if stage else [], lock)}}}")
    for key, sources in tables.items():
        stages = sorted({s for s in (producer(lock, p) for p in sources) if s})
        lines.append(f"\\@namedef{{dmprov@{key}}}{{{describe(stages, lock)}}}")
    lines += [
        "\\newcommand{\\dmprovenance}[1]{\\par\\vspace{1pt}{\\scriptsize\\color{gray}Made by "
        "\\@ifundefined{dmprov@#1}{\\textit{unknown}}{\\@nameuse{dmprov@#1}}, commit \\texttt{\\dmcommitshort}.\\par}}",
        "\\makeatother",
        "",
    ]
    return "\n".join(lines)
