"""The SAE's axes: SAEs on the main run's cache that each differ from a reference in one setting.

One SAE is one draw of a training procedure. The axes ask what the draw depends on:

- **L0**: the sparsity coefficient λ. Published JumpReLU sweeps lose less LM loss as L0 rises;
  an SAE whose sweep does otherwise is not trained well enough to read;
- **width**: does the dark matter shrink as the dictionary grows, and does its structure stay?
- **seed** (initialisation and data order): the spread of every headline over SAEs that differ
  in nothing else; the paper's intervals over tokens and ICA fits do not contain it.

Every point (``sae_axes.points``: name -> the one ``sae`` setting it changes) and the reference
(``{}``: the main recipe unchanged) train for ``sae_axes.train_tokens``, fewer than the main SAE,
to fit the build's budget. The learning rate is constant after its warm-up and both warm-ups
are counted in tokens, so the reference *is* the main SAE after that many tokens
(``tests/sae/test_train.py``); it is copied from the main run's curve snapshot when there is one,
and the main SAE's training curve (``sae_eval.json``) shows how far training moves it from there.

Stages (``dvc.yaml``): ``train_sae_axes`` (``train`` here: every point, two at a time on CPU),
``eval_sae_axes`` (``evaluate``: every point's held-out reconstruction and ΔLM, one model
load), the dark-matter chain of the seed axis (the residual stage module on the ``sae_axes.chain``
points; ICA and compare on the ``sae_axes.chain_ica`` points, ICA with ``chain_ica_seeds``
restarts), and ``sae_axes`` (``summarise``): ``metrics/sae_axes.json`` and its figure.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from darkmatter.config import AXIS_SETTINGS
from darkmatter.errors import UserError, cli


def point_overrides(params, name: str) -> dict:
    """The ``sae`` overrides that train point ``name``: its one setting, the axes' length, no curve."""
    points = params.sae_axes.points
    if name not in points:
        raise UserError(f"{name!r} is not a point of sae_axes.points; allowed: {', '.join(points)}")
    change = {key: (int(value) if key in ("width", "seed") else float(value)) for key, value in points[name].items()}
    return {"train_tokens": params.sae_axes.train_tokens, "curve_tokens": (), **change}


def axis_of(change: dict) -> str | None:
    """The setting a point changes (None for the reference)."""
    return next(iter(change), None)


def train_points(params, cache_dir: Path, saes: Path, out: Path, scratch: Path, main_curve: Path | None = None) -> dict:
    """Train every point, two at a time on a CPU's two cores; each checkpoints under ``scratch`` like
    the main SAE, so a killed stage resumes where it stopped.

    The reference is the main SAE after ``train_tokens`` (its schedule is a prefix of the main
    run's): where the main run saved that snapshot (``main_curve/<tokens>``, when ``train_tokens``
    is one of ``sae.curve_tokens``) it is copied, not trained again. One SAE step is a chain of
    small sparse kernels that two threads speed up only ~1.4x, so on CPU two one-thread workers
    train two points at once (joblib, as ICA's restarts); on CUDA they run one after another.
    """
    import os
    import shutil

    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    tokens = params.sae_axes.train_tokens
    report, jobs = {}, []
    for name, change in params.sae_axes.points.items():
        snapshot = main_curve / str(tokens) if main_curve is not None else None
        if not change and snapshot is not None and (snapshot / "cfg.json").exists():
            shutil.rmtree(saes / name, ignore_errors=True)
            shutil.copytree(snapshot, saes / name)
            cfg = params.main.sae.replace(**point_overrides(params, name))
            report[name] = {"source": f"the main SAE's snapshot after {tokens} tokens", "config": asdict(cfg),
                            "steps": tokens // cfg.batch_size, "seconds": None}
        else:
            jobs.append(name)
    from darkmatter.data.models import resolve_device

    on_cuda = resolve_device(params.main.subject.device) != "cpu"
    n_jobs = 1 if on_cuda else max(1, min(len(jobs), os.cpu_count() or 1))
    run = delayed(_train_point if n_jobs == 1 else _train_point_one_thread)
    results = Parallel(n_jobs=n_jobs, return_as="generator")(
        run(params.main, cache_dir, saes / name, scratch, point_overrides(params, name)) for name in jobs)
    report |= dict(zip(jobs, tqdm(results, total=len(jobs), desc="SAE axes", unit="SAE")))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({name: report[name] for name in params.sae_axes.points}, indent=2) + "\n")
    return report


def _train_point(run, cache_dir: Path, out: Path, scratch: Path, overrides: dict) -> dict:
    from darkmatter.data.activations import ActivationCache
    from darkmatter.sae.build import train_on_cache

    return train_on_cache(run, ActivationCache.open(cache_dir), out, scratch, **overrides)


def _train_point_one_thread(*args) -> dict:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    with threadpool_limits(1):
        return _train_point(*args)


def evaluate_points(params, saes: Path, cache_dir: Path, weights: Path, out: Path, trained: dict,
                    main_eval: dict | None = None) -> dict:
    """Every point's held-out reconstruction and headline ΔLM (the model loaded once, the clean and
    zero-ablated forwards shared by every point). A point copied from the main SAE's curve snapshot
    (``trained``: train.json) takes that snapshot's evaluation from ``main_eval`` (sae_eval.json:
    the same SAE on the same rows and positions) instead of a second one."""
    from darkmatter.data.activations import ActivationCache
    from darkmatter.data.models import load_run_subject
    from darkmatter.sae.evaluate import evaluate_saes, headline
    from darkmatter.sae.io import load_sae, to_device

    run = params.main
    curve = {p["tokens"]: p for p in (main_eval or {}).get("training_curve", [])}
    report, loaded = {}, {}
    for name in params.sae_axes.points:
        folder = saes / name
        if not (folder / "cfg.json").exists():
            raise UserError(f"{folder} holds no SAE; run `dvc repro train_sae_axes` first")
        entry = trained[name]
        copied = entry["source"] != "train"  # train_on_cache's reports say "train"; a copied snapshot names itself
        snapshot = curve.get(entry["steps"] * entry["config"]["batch_size"]) if copied else None
        if snapshot is not None:
            report[name] = {key: value for key, value in snapshot.items() if key != "tokens"}
        else:
            loaded[name] = to_device(load_sae(folder), run.subject.device)
    if loaded:
        reports = evaluate_saes(load_run_subject(run, weights), loaded, ActivationCache.open(cache_dir), run)
        report |= {name: headline(reports[name]) for name in loaded}
    report = {name: report[name] for name in params.sae_axes.points}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def chain_headlines(metrics_dir: Path, with_ica: bool) -> dict:
    """The dark-matter headlines of one SAE: its residual's, and ICA's where the point is in ``chain_ica``."""
    residual = json.loads((metrics_dir / "residual.json").read_text())
    out = {
        "dark_matter_fraction": residual["dark_matter_fraction"],
        "kurtosis_r_median": residual["kurtosis"]["r"]["quantiles"]["0.5"],
        "kurtosis_r_minus_random": residual["shape"],
    }
    if not with_ica:
        return out
    ica = json.loads((metrics_dir / "ica.json").read_text())
    novel = json.loads((metrics_dir / "compare.json").read_text())["rotation_null"]["novel_fraction"]
    return out | {
        "ica_components": ica["n_components"],
        "ica_stable_restarts": ica["stability"].get("n_stable_seeds"),
        "ica_novel_fraction": novel["observed"],
        "ica_novel_null_mean": novel["null_mean"],
        "ica_novel_p_two_sided": novel["p_two_sided"],
    }


def spread(values: list[float | None]) -> dict:
    """Mean, SD (n − 1) and range over the SAEs that have the value (``n`` 0: none has it)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if not len(v):
        return {"n": 0}
    return {"n": int(len(v)), "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
            "min": float(v.min()), "max": float(v.max())}


def falls_as_l0_rises(points: list[dict]) -> dict:
    """Does ΔLM fall as L0 rises? Neighbours by L0: a rise in ΔLM counts against it only where the
    two intervals do not overlap (the sweep's shape, read within its CIs)."""
    ordered = sorted(points, key=lambda p: p["l0"])
    rises = [(a["name"], b["name"]) for a, b in zip(ordered, ordered[1:])
             if b["delta_loss"] > a["delta_loss"] and b["delta_loss_ci"][0] > a["delta_loss_ci"][1]]
    strictly = all(b["delta_loss"] < a["delta_loss"] for a, b in zip(ordered, ordered[1:]))
    return {"holds": not rises, "strictly": strictly, "rises_outside_ci": rises}


def summarise(params, metrics_dir: Path, main_eval: dict) -> dict:
    """``metrics/sae_axes.json``: each axis's points (reference included), the seed spread, the main SAE's curve."""
    axes_cfg = params.sae_axes
    evals = json.loads((metrics_dir / "eval.json").read_text())
    trained = json.loads((metrics_dir / "train.json").read_text())
    points = {}
    for name, change in axes_cfg.points.items():
        train = trained[name]
        point = {"name": name, "setting": axis_of(change), "value": train["config"][axis_of(change)] if change else None,
                 "width": train["config"]["width"], "l0_coefficient": train["config"]["l0_coefficient"],
                 "seed": train["config"]["seed"], "train_seconds": train["seconds"], **evals[name]}
        if name in axes_cfg.chain:
            point |= chain_headlines(metrics_dir / name, with_ica=name in axes_cfg.chain_ica)
        points[name] = point
    reference = next(p for p in points.values() if p["setting"] is None)
    axes = {}
    for setting in AXIS_SETTINGS:
        members = [p for p in points.values() if p["setting"] == setting] + [reference]
        axes[setting] = sorted(members, key=lambda p: p[setting])
    seeds = [p for p in points.values() if p["setting"] in (None, "seed")]
    headline_keys = ("fvu", "l0", "dead_fraction", "delta_loss", "dark_matter_fraction", "kurtosis_r_median",
                     "ica_stable_restarts", "ica_novel_fraction")
    return {
        "train_tokens": axes_cfg.train_tokens,
        "reference": reference["name"],
        "axes": axes,
        "l0_axis_delta_loss_falls": falls_as_l0_rises(axes["l0_coefficient"]),
        "seeds": {"points": [p["name"] for p in seeds],
                  "spread": {key: spread([p.get(key) for p in seeds]) for key in headline_keys} if len(seeds) > 1 else None},
        "main": {"training_curve": main_eval.get("training_curve", [])},
    }


def plot(summary: dict, out_stem: Path) -> None:
    """Three panels: FVU and ΔLM against L0 along the L0 axis, the same against width, and the main SAE's curve."""
    from darkmatter.figures import save_figure, subplots

    fig, axes = subplots(1, 3, figsize=(11.0, 3.0))
    for ax, setting, x_key, label in ((axes[0], "l0_coefficient", "l0", "L0 (held-out)"),
                                      (axes[1], "width", "width", "width (latents)")):
        pts = summary["axes"][setting]
        x = [p[x_key] for p in pts]
        y = [p["delta_loss"] for p in pts]
        err = np.array([[p["delta_loss"] - p["delta_loss_ci"][0], p["delta_loss_ci"][1] - p["delta_loss"]] for p in pts]).T
        ax.errorbar(x, y, yerr=err, fmt="o-", color="C0", capsize=3, label="ΔLM (nats)")
        twin = ax.twinx()
        twin.plot(x, [p["fvu"] for p in pts], "s--", color="C1", label="FVU")
        twin.set_ylabel("FVU (held-out)", color="C1")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("ΔLM (nats/token)", color="C0")
        ax.grid(alpha=0.3)
    curve = summary["main"]["training_curve"]
    if curve:
        t = [p["tokens"] for p in curve]
        err = np.array([[p["delta_loss"] - p["delta_loss_ci"][0], p["delta_loss_ci"][1] - p["delta_loss"]] for p in curve]).T
        axes[2].errorbar(t, [p["delta_loss"] for p in curve], yerr=err, fmt="o-", color="C0", capsize=3)
        twin = axes[2].twinx()
        twin.plot(t, [p["fvu"] for p in curve], "s--", color="C1")
        twin.set_ylabel("FVU (held-out)", color="C1")
        axes[2].set_xscale("log")
        axes[2].axvline(summary["train_tokens"], color="0.6", lw=0.8, ls=":")
    axes[2].set_xlabel("training tokens (main SAE)")
    axes[2].set_ylabel("ΔLM (nats/token)", color="C0")
    axes[2].grid(alpha=0.3)
    save_figure(fig, out_stem)


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import load_params

    parser = argparse.ArgumentParser(description="Evaluate and summarise the SAE axes on the main run's cache.")
    parser.add_argument("action", choices=("train", "evaluate", "summarise"))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--saes", type=Path, default=Path("data/sae_axes/saes"), help="one SAE folder per point")
    parser.add_argument("--metrics-dir", type=Path, default=Path("metrics/sae_axes"))
    parser.add_argument("--cache", type=Path, help="the main run's activation cache (train, evaluate)")
    parser.add_argument("--scratch", type=Path, default=Path("data/scratch/sae"), help="training checkpoints (train)")
    parser.add_argument("--main-curve", type=Path, help="the main SAE's training-curve snapshots (train: the reference)")
    parser.add_argument("--weights", type=Path, help="the main run's model directory (evaluate)")
    parser.add_argument("--main-eval", type=Path, help="the main run's sae_eval.json (evaluate: the snapshot's numbers; summarise)")
    parser.add_argument("--out", type=Path, default=Path("metrics/sae_axes.json"))
    parser.add_argument("--figure", type=Path, default=Path("figures/sae_axes"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if args.action == "train":
        report = train_points(params, args.cache, args.saes, args.metrics_dir / "train.json", args.scratch, args.main_curve)
        print(json.dumps({name: {"steps": r["steps"], "seconds": r["seconds"]} for name, r in report.items()}, indent=2))
        return
    if args.action == "evaluate":
        trained = json.loads((args.metrics_dir / "train.json").read_text())
        main_eval = json.loads(args.main_eval.read_text()) if args.main_eval is not None else None
        report = evaluate_points(params, args.saes, args.cache, args.weights, args.metrics_dir / "eval.json", trained, main_eval)
        print(json.dumps(report, indent=2))
        return
    if not args.main_eval.exists():
        raise UserError(f"{args.main_eval} is missing; run `dvc repro eval_sae@{params.main_run}` first")
    summary = summarise(params, args.metrics_dir, json.loads(args.main_eval.read_text()))
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, args.figure)
    print(json.dumps({"l0_axis_delta_loss_falls": summary["l0_axis_delta_loss_falls"], "seeds": summary["seeds"]}, indent=2))


if __name__ == "__main__":
    main()
