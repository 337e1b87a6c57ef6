"""A static HTML dashboard per run: the first thing to open after ``dvc repro``.

One self-contained file (no scripts, no network): the run's headline numbers, then one section
per ICA component (max |cos| to the SAE decoder and the nearest feature, source kurtosis,
variance share, seed stability, an activation histogram and its contexts with every token
shaded by the component's activation), then the baseline units (sampled SAE features, random
directions) in the same format, folded.

Histograms are hand-written inline SVG: a few hundred bytes each, where a matplotlib PNG per
unit would cost ~0.1 s and ~20 kB of base64 for each of several hundred units.
"""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path

from darkmatter.errors import UserError, cli

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1100px;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em} h3{font-size:1em;margin:0}
table.kv td{padding:1px 10px 1px 0} .unit{border:1px solid #ddd;border-radius:6px;padding:8px 12px;margin:10px 0}
.stats span{margin-right:14px} .ctx{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;margin:2px 0}
.tok{border-radius:2px} .focus{outline:1.5px solid #c00} .act{color:#888;font-size:11px;margin-right:6px}
.novel{color:#060;font-weight:bold} .unstable{color:#a00} summary{cursor:pointer}
"""


def histogram_svg(counts: list[int], edges: list[float], width: int = 220, height: int = 60) -> str:
    """Bars on a log-count scale, with the range under them."""
    import math

    top = max(math.log1p(c) for c in counts) or 1.0
    bar = width / len(counts)
    rects = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - math.log1p(c) / top * height:.1f}" width="{bar - 0.5:.1f}" '
        f'height="{math.log1p(c) / top * height:.1f}" fill="#4a7fb5"/>'
        for i, c in enumerate(counts)
    )
    label = f"{edges[0]:.3g} … {edges[-1]:.3g} (log count)"
    return (f'<svg class="hist" width="{width}" height="{height + 14}" role="img" aria-label="activation histogram">'
            f'{rects}<text x="0" y="{height + 12}" font-size="10">{html.escape(label)}</text></svg>')


def token_span(text: str, activation: float | None, scale: float, focus: bool) -> str:
    shown = text.replace("\n", "↵")
    alpha = 0.0 if activation is None or scale <= 0 else max(0.0, min(1.0, activation / scale))
    classes = "tok focus" if focus else "tok"
    title = "special" if activation is None else f"{activation:.3g}"
    return (f'<span class="{classes}" style="background:rgba(255,140,0,{alpha:.2f})" '
            f'title="{html.escape(title)}">{html.escape(shown)}</span>')


def context_html(ctx: dict, scale: float) -> str:
    spans = "".join(token_span(t, a, scale, i == ctx["focus"]) for i, (t, a) in enumerate(zip(ctx["tokens"], ctx["activations"])))
    return f'<div class="ctx"><span class="act">{ctx["activation"]:.3g}</span>{spans}</div>'


def unit_html(unit: dict, novel_below: float) -> str:
    kind, uid = unit["kind"], unit["id"]
    scale = unit["max_activation"]
    stats = [f"kurtosis {unit['kurtosis']:.2f} (held-out)", f"active {unit['active_fraction']:.2%} (> {unit['threshold']:g}, held-out)"]
    if kind == "ica":
        novel = unit["max_cos_sae"] < novel_below
        stats = [
            f'<span class="{"novel" if novel else ""}">max |cos| to SAE {unit["max_cos_sae"]:.3f}'
            f'{" (novel)" if novel else ""}</span>',
            f"nearest feature #{unit['nearest_sae_feature']}",
            f"variance share {unit['variance_share']:.2%}",
            ("stability not measured" if unit["stable"] is None else
             '<span class="unstable">unstable</span>' if not unit["stable"] else "stable across restarts and resamples"),
            f"matched SAE feature #{unit['matched_sae_feature']}",
        ] + stats
    elif kind == "sae":
        stats = [f"firing frequency {unit['frequency_train']:.3%} (train rows)", f"matched to ICA {unit['matched_to_ica']}"] + stats
    elif kind == "calibration":
        stats = [f"definition: {html.escape(unit['explanation'])}"] + stats
    title = {"ica": "ICA component", "sae": "SAE feature", "random": "random whitened unit",
             "calibration": "calibration unit"}[kind]
    quantiles = "".join(context_html(c, scale) for c in unit["quantiles"])
    negatives = "".join(context_html(c, scale) for c in unit["non_activating"][:5])
    return (
        f'<section class="unit" id="{kind}-{uid}"><h3>{title} {uid}</h3>'
        f'<div class="stats">{"".join(f"<span>{s}</span>" for s in stats)}</div>'
        f'{histogram_svg(unit["histogram"]["counts"], unit["histogram"]["edges"])}'
        f'<h4>top activations (train rows: what the explainer sees)</h4>{"".join(context_html(c, scale) for c in unit["top"])}'
        f'<details><summary>held-out quantile sample ({len(unit["quantiles"])})</summary>{quantiles}</details>'
        f'<details><summary>held-out non-activating ({len(unit["non_activating"])}, first 5)</summary>{negatives}</details>'
        "</section>"
    )


def headline(residual: dict, ica: dict, compare: dict) -> str:
    gap = compare["kurtosis_gap"]["like_for_like"]
    rot = compare["rotation_null"]
    stable = (f"{ica['n_stable']} stable ({ica['stable_fraction']:.0%}) across restarts and disjoint samples"
              if ica["stability"]["measured"] else "stability not measured")
    rows = [
        ("hook", residual["hook_name"]),
        ("dark-matter fraction (FVU, held-out): analysed / with outliers / without / with special",
         " / ".join(f"{residual[k]:.4f}" for k in ("dark_matter_fraction", "dark_matter_fraction_with_outliers",
                                                   "dark_matter_fraction_without_outliers", "dark_matter_fraction_with_special"))),
        ("high-norm outliers", f"{residual['tokens']['classes']['counts']['outlier']} tokens "
                               f"({'excluded' if residual['tokens']['outliers_excluded'] else 'kept'})"),
        ("linear predictability of r from x (held-out R²)", f"{residual['linear_predictability']['r2_heldout']:.3f}"),
        ("median excess kurtosis (held-out): x dims / r dims / r on random directions",
         " / ".join(f"{residual['kurtosis'][k]['quantiles']['0.5']:.3f}" for k in ("x", "r", "r_random_directions"))),
        ("ICA", f"{ica['n_components']} components on {ica['target']} ({ica['backend']}, train rows), {stable}, "
                f"converged: {ica['all_converged']}"),
        ("novel (max |cos| < {:g}): ICA / random rotations (mean) / random directions".format(compare["thresholds"]["novel_below"]),
         f"{compare['ica']['novel']} of {compare['ica']['n']} / {rot['novel_fraction']['null_mean']:.0%} / "
         f"{compare['random']['novel']} of {compare['random']['n']} (p = {rot['novel_fraction']['p_two_sided']:.3g})"),
        ("kurtosis gap, like for like: median SAE pre-activations − median ICA sources",
         f"{gap['difference']:.3g}" + (f" [{gap['ci'][0]:.3g}, {gap['ci'][1]:.3g}]" if gap["ci"] else "")
         if gap["difference"] is not None else "n/a"),
    ]
    return '<table class="kv">' + "".join(f"<tr><td>{html.escape(a)}</td><td><b>{html.escape(str(b))}</b></td></tr>" for a, b in rows) + "</table>"


def steering_html(steering: list[dict]) -> str:
    """The causal stage's steering runs: per unit and α, the greedy continuation and top next tokens."""
    parts = ["<h2>Steering (causal stage): prompt + α · direction, greedy continuation</h2>"]
    for run in steering:
        rows = "".join(
            f"<tr><td>{a['alpha']:+g}</td><td><code>{html.escape(a['continuation'])}</code></td>"
            f"<td>{html.escape(', '.join(repr(t['token']) for t in a['top_next_tokens']))}</td>"
            f"<td>{'' if a['activation_on_continuation'] is None else format(a['activation_on_continuation'], '.3g')}</td></tr>"
            for a in run["alphas"])
        parts.append(f"<h3>{html.escape(run['unit'])} (paired with {html.escape(run['paired_with'])}; "
                     f"|v| = {run['vector_norm']:.3g} per unit α)</h3>"
                     f"<p>logit lens: +v → {html.escape(', '.join(map(repr, run['logit_lens']['plus'])))}; "
                     f"−v → {html.escape(', '.join(map(repr, run['logit_lens']['minus'])))}</p>"
                     f"<p><code>{html.escape(run['prompt'])}</code></p>"
                     f'<table class="kv"><tr><th>α</th><th>continuation</th><th>top next tokens</th>'
                     f"<th>unit activation on continuation</th></tr>{rows}</table>")
    return "".join(parts)


def render(examples: dict, residual: dict, ica: dict, compare: dict, steering: list[dict] | None = None) -> str:
    novel_below = compare["thresholds"]["novel_below"]
    units = examples["units"]
    groups = {kind: [u for u in units if u["kind"] == kind] for kind in ("ica", "sae", "random", "calibration")}
    meta = examples["meta"]
    body = [
        f"<h1>Dark matter of the SAE at {html.escape(meta['hook_name'])} ({html.escape(str(meta['model']))})</h1>",
        headline(residual, ica, compare),
        f"<h2>ICA components ({len(groups['ica'])}), by source kurtosis</h2>",
        *(unit_html(u, novel_below) for u in groups["ica"]),
    ]
    for kind, title in (("sae", "Baseline: density-matched SAE features"), ("random", "Baseline: random whitened units"),
                        ("calibration", "Judge calibration: token classes of known meaning")):
        body.append(f"<details><summary><h2 style='display:inline'>{title} ({len(groups[kind])})</h2></summary>"
                    + "".join(unit_html(u, novel_below) for u in groups[kind]) + "</details>")
    if steering is not None:
        body.append(steering_html(steering))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>dark matter: {html.escape(meta["hook_name"])}</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the static HTML dashboard of one run.")
    parser.add_argument("--examples", type=Path, required=True)
    parser.add_argument("--residual", type=Path, required=True)
    parser.add_argument("--ica", type=Path, required=True)
    parser.add_argument("--compare", type=Path, required=True)
    parser.add_argument("--steering", type=Path, help="the causal stage's steering.json")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    inputs = [args.examples, args.residual, args.ica, args.compare]
    for path in inputs:
        if not path.exists():
            raise UserError(f"{path} not found; run the analysis stages first (`dvc repro`)")
    if args.steering is not None and not args.steering.exists():
        raise UserError(f"{args.steering} not found; run the causal stage first (`dvc repro causal@<run>`)")
    examples, residual, ica, compare = (json.loads(p.read_text()) for p in inputs)
    steering = json.loads(args.steering.read_text()) if args.steering else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(examples, residual, ica, compare, steering))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
