"""The ``paper`` stage: latexmk (pdflatex + bibtex) of ``paper/main.tex``.

The build runs in a scratch directory and moves ``main.pdf`` into place only if it succeeded,
so a failed build never leaves a half-built PDF; a LaTeX error comes out as one line naming the
message and the source line. The git commit of the code (``HEAD``, ``-dirty`` if the code,
params, pipeline or LaTeX differ from it) goes into the PDF's metadata and every provenance line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from darkmatter.errors import UserError, cli


#: What the PDF is a function of besides the DVC-tracked outputs: a change here marks the commit dirty.
CODE = ["src", "params.yaml", "dvc.yaml", "paper/main.tex", "paper/refs.bib"]


def code_commit(repo_root: Path) -> str:
    """``git rev-parse HEAD`` (+ ``-dirty`` if :data:`CODE` differs from it), or ``unknown`` outside git."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *CODE], cwd=repo_root).returncode != 0
    return head.stdout.strip() + ("-dirty" if dirty else "")


def build(paper_dir: Path, commit: str | None = None, keep_bbl: bool = False) -> Path:
    """latexmk the paper in a scratch copy; move main.pdf (and with ``keep_bbl`` main.bbl) into ``paper_dir`` on success."""
    commit = commit or code_commit(paper_dir.resolve().parent)
    if shutil.which("latexmk") is None or shutil.which("pdflatex") is None:
        raise UserError("latexmk/pdflatex not found; run scripts/setup.sh (apt-get install --no-install-recommends "
                        "texlive-latex-base texlive-latex-recommended texlive-science latexmk)")
    with tempfile.TemporaryDirectory(prefix="paper-") as tmp:
        proc = subprocess.run(
            ["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", f"-outdir={tmp}",
             f"-usepretex=\\def\\dmcommit{{{commit}}}\\def\\dmcommitshort{{{commit[:12]}}}", "main.tex"],
            cwd=paper_dir, capture_output=True, text=True,
            env={**os.environ, "SOURCE_DATE_EPOCH": "0", "FORCE_SOURCE_DATE": "1"},  # byte-reproducible PDF
        )
        pdf = Path(tmp) / "main.pdf"
        if proc.returncode != 0 or not pdf.exists():
            log = (Path(tmp) / "main.log").read_text(errors="replace") if (Path(tmp) / "main.log").exists() else proc.stdout
            lines = log.splitlines()
            at = next((i for i, line in enumerate(lines) if line.startswith("!")), None)
            where = next((line.strip() for line in lines[at:at + 12] if line.startswith("l.")), "") if at is not None else ""
            what = lines[at].lstrip("! ") if at is not None else "see the latexmk output"
            raise UserError(f"LaTeX failed: {what} {where}; fix paper/main.tex or regenerate paper/generated")
        target = paper_dir / "main.pdf"
        shutil.move(str(pdf), target)
        if keep_bbl:
            shutil.move(str(Path(tmp) / "main.bbl"), paper_dir / "main.bbl")
    return target


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build paper/main.pdf with latexmk.")
    parser.add_argument("--paper", type=Path, default=Path("paper"))
    args = parser.parse_args(argv)
    print(f"wrote {build(args.paper)}")


if __name__ == "__main__":
    main()
