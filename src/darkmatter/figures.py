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
    for suffix in (".png", ".pdf"):
        fig.savefig(stem.with_suffix(suffix), dpi=150)
    plt.close(fig)
