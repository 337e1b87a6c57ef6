"""Figures: matplotlib (headless Agg), every figure saved as PNG (to look at) and PDF (for LaTeX)."""

from __future__ import annotations

from pathlib import Path


def subplots(*args, **kwargs):
    """``plt.subplots`` on the Agg backend with constrained layout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, constrained_layout=True, **kwargs)


def save_figure(fig, stem: Path) -> None:
    """Write ``stem.png`` and ``stem.pdf`` and close the figure."""
    import matplotlib.pyplot as plt

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(stem.with_suffix(".png"), dpi=150)
    fig.savefig(stem.with_suffix(".pdf"), metadata={"CreationDate": None})  # byte-reproducible
    plt.close(fig)
