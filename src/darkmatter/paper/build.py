"""The ``paper`` stage: latexmk (pdflatex + bibtex) of ``paper/main.tex``.

The build runs in a scratch directory and moves ``main.pdf`` into place only if it succeeded,
so a failed build never leaves a half-built PDF; a LaTeX error comes out as one line naming the
message and the source line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from darkmatter.errors import UserError, cli


def build(paper_dir: Path) -> Path:
    """latexmk the paper in a scratch copy; move main.pdf into ``paper_dir`` only on success."""
    if shutil.which("latexmk") is None or shutil.which("pdflatex") is None:
        raise UserError("latexmk/pdflatex not found; run scripts/setup.sh (apt-get install --no-install-recommends "
                        "texlive-latex-base texlive-latex-recommended texlive-science latexmk)")
    with tempfile.TemporaryDirectory(prefix="paper-") as tmp:
        proc = subprocess.run(
            ["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", f"-outdir={tmp}", "main.tex"],
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
    return target


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build paper/main.pdf with latexmk.")
    parser.add_argument("--paper", type=Path, default=Path("paper"))
    args = parser.parse_args(argv)
    print(f"wrote {build(args.paper)}")


if __name__ == "__main__":
    main()
