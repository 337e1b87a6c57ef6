"""Sparsity–fidelity sweep summary: collect the per-λ eval metrics into a plot table and figures.

Each sweep point is trained and evaluated on the main run's cache by its own DVC foreach stage
(``train_sae_sweep@λ``, ``eval_sae_sweep@λ``: the ``sae`` and ``eval_sae`` stage modules with
overrides); this stage gathers their metrics into ``metrics/sae_sweep.json`` (a
list of points that ``dvc plots`` reads) and draws FVU vs L0 and ΔLM loss vs L0 with
matplotlib (PNG + PDF in ``figures/``). The main SAE is drawn as a separate marker. Points
where every feature died are kept and flagged, never dropped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from darkmatter.errors import UserError, cli


def sweep_points(eval_files: list[Path]) -> list[dict]:
    """One row per sweep point, sorted by L0."""
    points = []
    for path in eval_files:
        if not path.exists():
            raise UserError(f"{path} is missing; run `dvc repro eval_sae_sweep` first")
        report = json.loads(path.read_text())
        train = json.loads(path.with_name(path.name.replace("eval_", "train_")).read_text())
        points.append(
            {
                "l0_coefficient": train["config"]["l0_coefficient"],
                "l0": report["l0"],
                "fvu": report["fvu"],
                "fvu_with_special": report["fvu_with_special"],
                "delta_lm_loss": report["lm"]["delta_loss"],
                "kl": report["lm"]["kl"],
                "dead_fraction": report["dead_fraction"],
                "all_dead": report["all_dead"],
            }
        )
    return sorted(points, key=lambda p: p["l0"])


def plot(points: list[dict], main: dict | None, out_stem: Path, sweep_tokens: int, main_tokens: int) -> None:
    from darkmatter.figures import save_figure, subplots

    fig, axes = subplots(1, 2, figsize=(7.5, 3.0))
    for ax, key, label in ((axes[0], "fvu", "FVU (held-out, no special tokens)"), (axes[1], "delta_lm_loss", "ΔLM loss (nats/token)")):
        ax.plot([p["l0"] for p in points], [p[key] for p in points], "o-", color="C0", label=f"sweep (λ; {sweep_tokens:,} training tokens)")
        for p in points:
            ax.annotate(f"λ={p['l0_coefficient']:g}" + (" all dead" if p["all_dead"] else ""), (p["l0"], p[key]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
        if main is not None:
            ax.plot([main["l0"]], [main[key]], "*", color="C3", markersize=11, label=f"main SAE ({main_tokens:,} tokens)")
        ax.set_xscale("log")
        ax.set_xlabel("L0 (active features per token)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    save_figure(fig, out_stem)


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import load_params

    parser = argparse.ArgumentParser(description="Summarise the SAE sparsity–fidelity sweep.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--sweep-dir", type=Path, default=Path("metrics/sae_sweep"))
    parser.add_argument("--main", type=Path, required=True, help="the main run's sae_eval.json")
    parser.add_argument("--out", type=Path, default=Path("metrics/sae_sweep.json"))
    parser.add_argument("--figure", type=Path, default=Path("figures/sae_sweep"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    files = [args.sweep_dir / f"eval_{lam}.json" for lam in params.sae_sweep.l0_coefficients]
    points = sweep_points(files)
    main_report = json.loads(args.main.read_text()) if args.main.exists() else None
    main_point = (
        {"l0": main_report["l0"], "fvu": main_report["fvu"], "delta_lm_loss": main_report["lm"]["delta_loss"]}
        if main_report else None
    )
    args.out.write_text(json.dumps(points, indent=2) + "\n")
    plot(points, main_point, args.figure, params.sae_sweep.train_tokens, params.main.sae.train_tokens)
    print(json.dumps(points, indent=2))


if __name__ == "__main__":
    main()
