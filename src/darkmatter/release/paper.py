"""The paper's release files: an arXiv-ready source tarball and ``CITATION.cff``, from one command.

The tarball holds ``main.tex`` (its ``\\graphicspath`` pointed inside the tarball and the commit
written in, since arXiv passes no build options), ``main.bbl`` from a fresh build (arXiv runs no
bibtex), ``refs.bib``, every file of ``paper/generated`` and exactly the figures the LaTeX
includes, as PDFs. ``CITATION.cff`` (repository root; GitHub and Zenodo read it) names the paper,
the code's commit and its date.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from darkmatter.errors import UserError
from darkmatter.paper.build import build, code_commit
from darkmatter.paper.provenance import included_figures, resolve_figure

TITLE = "The Dark Matter of Sparse Autoencoders: what does ICA find in the SAE residual?"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def arxiv_tarball(repo_root: Path, out: Path, main_run: str) -> list[str]:
    """Write ``out`` (.tar.gz); returns the member names."""
    repo_root = Path(repo_root).resolve()
    paper = repo_root / "paper"
    commit = code_commit(repo_root)
    tex = (paper / "main.tex").read_text()
    if "{../figures/" not in tex:
        raise UserError("paper/main.tex no longer sets \\graphicspath to ../figures/; update darkmatter.release.paper")
    tex = tex.replace("{../figures/", "{figures/")
    tex = f"\\def\\dmcommit{{{commit}}}\\def\\dmcommitshort{{{commit[:12]}}}\n" + tex
    figures = {}
    for key in included_figures([paper / "main.tex"]):
        found = resolve_figure(key + ".pdf", main_run, repo_root)
        if found is None:
            raise UserError(f"figure {key} of paper/main.tex has no PDF under figures/; run `dvc repro` first")
        figures[key] = found
    with tempfile.TemporaryDirectory(prefix="arxiv-") as tmp:  # a scratch build for main.bbl
        shutil.copytree(paper, Path(tmp) / "paper", ignore=shutil.ignore_patterns("main.pdf"))
        (Path(tmp) / "figures").symlink_to(repo_root / "figures")
        build(Path(tmp) / "paper", commit, keep_bbl=True)
        bbl = (Path(tmp) / "paper" / "main.bbl").read_bytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    names = []
    with tarfile.open(out, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("main.tex", tex.encode()), ("main.bbl", bbl), ("refs.bib", (paper / "refs.bib").read_bytes())]:
            _add_bytes(tar, name, data)
            names.append(name)
        for path in sorted((paper / "generated").glob("*.tex")):
            _add_bytes(tar, f"generated/{path.name}", path.read_bytes())
            names.append(f"generated/{path.name}")
        for found in figures.values():
            _add_bytes(tar, found, (repo_root / found).read_bytes())
            names.append(found)
    return names


def citation_cff(repo_root: Path) -> str:
    """``CITATION.cff`` text for the current commit."""
    commit = code_commit(repo_root)
    date = subprocess.run(["git", "log", "-1", "--format=%cs"], cwd=repo_root, capture_output=True, text=True).stdout.strip()
    return "\n".join([
        "cff-version: 1.2.0",
        'message: "If you use this software or its results, please cite the paper and this repository."',
        "type: software",
        f'title: "darkmatter: reproduction repository for \\"{TITLE}\\""',
        "authors:",
        '  - name: "darkmatter contributors"',
        "license: MIT",
        f'commit: "{commit}"',
        *([f"date-released: {date}"] if date else []),
        "keywords: [sparse autoencoders, mechanistic interpretability, independent component analysis, DVC]",
        "preferred-citation:",
        "  type: article",
        f'  title: "{TITLE}"',
        "  authors:",
        '    - name: "darkmatter contributors"',
        "",
    ])
