"""The SAE's axes: SAEs on the main run's cache beside the main SAE.

One SAE is one draw of a training procedure. The axes ask what the draw depends on:

- **L0**: the sparsity coefficient λ. Published JumpReLU sweeps lose less LM loss as L0 rises;
  an SAE whose sweep does otherwise is not trained well enough to read;
- **width**: does the dark matter shrink as the dictionary grows, and does its structure stay?
- **seed** (initialisation and data order): the spread of every headline over SAEs that differ
  in nothing else; the paper's intervals over tokens and ICA fits do not contain it.

The L0 and width points (``sae_axes.points``: name -> the one ``sae`` setting it changes) and
their reference (``{}``: the main recipe unchanged) train for ``sae_axes.train_tokens``, fewer
than the main SAE, to fit the build's budget. The learning rate is constant after its warm-up and
both warm-ups are counted in tokens, so the reference *is* the main SAE after that many tokens
(``tests/sae/test_train.py``); it is copied from the main run's curve snapshot when there is one,
and the main SAE's training curve (``sae_eval.json``) shows how far training moves it from there.
The seed axis (``sae_axes.seeds``) is the main recipe itself, all its tokens, with other seeds:
short SAEs turned out to answer ICA's questions differently from the main SAE, so a seed spread
measured on them would not be the main SAE's. Its members are the main SAE and ``seed-<n>``.

Stages (``dvc.yaml``): ``train_sae_axes`` (``train`` here: every SAE, two at a time on CPU),
``eval_sae_axes`` (``evaluate``: every SAE's held-out reconstruction and ΔLM, one model
load), the dark-matter chain (the residual stage module on the ``sae_axes.chain`` SAEs; ICA and
compare on the ``sae_axes.chain_ica`` ones, ICA with ``chain_ica_seeds`` restarts; the main SAE's
chain is the main run's), and ``sae_axes`` (``summarise``): ``metrics/sae_axes.json`` and its figure.
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
    """The ``sae`` overrides that train ``name``: a point's one setting at the axes' length, or a seed-axis
    SAE's seed at the main recipe's length; no curve either way."""
    axes = params.sae_axes
    if name in axes.seed_names:
        return {"curve_tokens": (), "seed": axes.seed_names[name]}
    if name not in axes.points:
        raise UserError(f"{name!r} is not an SAE of sae_axes; allowed: {', '.join(axes.names)}")
    change = {key: (int(value) if key == "width" else float(value)) for key, value in axes.points[name].items()}
    return {"train_tokens": axes.train_tokens, "curve_tokens": (), **change}


def axis_of(change: dict) -> str | None:
    """The setting a point changes (None for the reference)."""
    return next(iter(change), None)


def train_points(params, cache_dir: Path, saes: Path, out: Path, scratch: Path, main_curve: Path | None = None) -> dict:
    """Train every SAE of the axes, two at a time on a CPU's two cores (the long seed-axis runs first);
    each checkpoints under ``scratch`` like the main SAE, so a killed stage resumes where it stopped.

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
    for name in params.sae_axes.names:
        change = params.sae_axes.points.get(name)
        snapshot = main_curve / str(tokens) if main_curve is not None else None
        if change == {} and snapshot is not None and (snapshot / "cfg.json").exists():
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
    out.write_text(json.dumps({name: report[name] for name in params.sae_axes.names}, indent=2) + "\n")
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
    for name in params.sae_axes.names:
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
    report = {name: report[name] for name in params.sae_axes.names}
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


def main_member(main_metrics: Path) -> dict:
    """The main SAE as a member of the seed axis: its held-out headline and its run's dark-matter chain
    (residual, ICA with as many restarts as a chain SAE's, comparison)."""
    from darkmatter.sae.evaluate import headline

    evaluation = json.loads((main_metrics / "sae_eval.json").read_text())
    config = json.loads((main_metrics / "sae.json").read_text())["config"]
    return {"name": "main", "width": config["width"], "l0_coefficient": config["l0_coefficient"], "seed": config["seed"],
            "train_tokens": config["train_tokens"], **headline(evaluation), **chain_headlines(main_metrics, with_ica=True)}


def summarise(params, metrics_dir: Path, main_metrics: Path) -> dict:
    """``metrics/sae_axes.json``: each axis's points (reference included), the seed axis with its spread
    (the main SAE among its members), the main SAE's curve."""
    axes_cfg = params.sae_axes
    evals = json.loads((metrics_dir / "eval.json").read_text())
    trained = json.loads((metrics_dir / "train.json").read_text())

    def member(name: str, change: dict | None) -> dict:
        config = trained[name]["config"]
        setting = "seed" if change is None else axis_of(change)
        point = {"name": name, "setting": setting, "value": config[setting] if setting else None, "width": config["width"],
                 "l0_coefficient": config["l0_coefficient"], "seed": config["seed"], "train_tokens": config["train_tokens"],
                 "train_seconds": trained[name]["seconds"], **evals[name]}
        if name in axes_cfg.chain:
            point |= chain_headlines(metrics_dir / name, with_ica=name in axes_cfg.chain_ica)
        return point

    points = {name: member(name, change) for name, change in axes_cfg.points.items()}
    reference = next(p for p in points.values() if p["setting"] is None)
    axes = {setting: sorted([p for p in points.values() if p["setting"] == setting] + [reference], key=lambda p: p[setting])
            for setting in AXIS_SETTINGS}
    seeds = [main_member(main_metrics)] + [member(name, None) for name in axes_cfg.seed_names] if axes_cfg.seeds else []
    headline_keys = ("fvu", "l0", "dead_fraction", "delta_loss", "dark_matter_fraction", "kurtosis_r_median",
                     "ica_stable_restarts", "ica_novel_fraction")
    return {
        "train_tokens": axes_cfg.train_tokens,
        "reference": reference["name"],
        "axes": axes,
        "l0_axis_delta_loss_falls": falls_as_l0_rises(axes["l0_coefficient"]),
        "seeds": {"members": seeds, "points": [p["name"] for p in seeds],
                  "spread": {key: spread([p.get(key) for p in seeds]) for key in headline_keys} if len(seeds) > 1 else None},
        "main": {"training_curve": json.loads((main_metrics / "sae_eval.json").read_text()).get("training_curve", [])},
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
    parser.add_argument("--main-eval", type=Path, help="the main run's sae_eval.json (evaluate: the snapshot's numbers)")
    parser.add_argument("--main-metrics", type=Path, help="the main run's metrics (summarise: the main SAE on the seed axis)")
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
    missing = [name for name in ("sae.json", "sae_eval.json", "residual.json", "ica.json", "compare.json")
               if not (args.main_metrics / name).exists()]
    if missing:
        raise UserError(f"{args.main_metrics} lacks {', '.join(missing)}; run `dvc repro compare@{params.main_run}` first")
    summary = summarise(params, args.metrics_dir, args.main_metrics)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, args.figure)
    print(json.dumps({"l0_axis_delta_loss_falls": summary["l0_axis_delta_loss_falls"], "seeds": summary["seeds"]["spread"]}, indent=2))


if __name__ == "__main__":
    main()
