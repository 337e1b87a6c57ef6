"""The SAE axes: points resolve to one changed setting, seed-axis SAEs to the main recipe with another seed,
a planted seed spread (the main SAE among its members) comes back, the L0 verdict reads CIs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from darkmatter.config import parse_params
from darkmatter.sae.axes import falls_as_l0_rises, point_overrides, summarise

REPO = Path(__file__).resolve().parents[2]


def params_with(points: dict, chain: list[str], chain_ica: list[str] = (), seeds: list[int] = ()):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["sae_axes"] = {"train_tokens": 300000, "points": points, "seeds": list(seeds), "chain": chain,
                       "chain_ica": list(chain_ica)}
    return parse_params(raw)


def test_a_point_changes_one_setting_and_a_seed_sae_only_the_seed():
    params = params_with({"reference": {}, "w": {"width": 1024}}, [], seeds=[3])
    assert point_overrides(params, "w") == {"train_tokens": 300000, "curve_tokens": (), "width": 1024}
    assert point_overrides(params, "reference") == {"train_tokens": 300000, "curve_tokens": ()}
    assert point_overrides(params, "seed-3") == {"curve_tokens": (), "seed": 3}  # the main recipe's length
    assert params.sae_axes.names == ("seed-3", "reference", "w")
    from darkmatter.errors import UserError

    with pytest.raises(UserError, match="'x' is not an SAE of sae_axes; allowed: seed-3, reference, w"):
        point_overrides(params, "x")


def _point(name, l0, delta, ci):
    return {"name": name, "l0": l0, "delta_loss": delta, "delta_loss_ci": ci}


def test_the_l0_verdict_reads_the_intervals():
    falling = [_point("a", 10, 1.0, [0.9, 1.1]), _point("b", 20, 0.6, [0.5, 0.7]), _point("c", 40, 0.3, [0.2, 0.4])]
    assert falls_as_l0_rises(falling) == {"holds": True, "strictly": True, "rises_outside_ci": []}
    within = [_point("a", 10, 1.0, [0.8, 1.2]), _point("b", 20, 1.05, [0.9, 1.2])]
    assert falls_as_l0_rises(within)["holds"] and not falls_as_l0_rises(within)["strictly"]
    rising = [_point("a", 10, 0.3, [0.2, 0.4]), _point("b", 20, 1.0, [0.9, 1.1])]
    assert falls_as_l0_rises(rising)["rises_outside_ci"] == [("a", "b")]


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


POINTS = {"reference": {}, "wide": {"width": 8192}}


def _headlines(path: Path, dark_matter: float, stable: int | None) -> None:
    _write(path / "residual.json", {"dark_matter_fraction": dark_matter, "kurtosis": {"r": {"quantiles": {"0.5": 1.0}}},
                                    "shape": {}})
    if stable is not None:
        _write(path / "ica.json", {"n_components": 64, "stability": {"n_stable_seeds": stable}})
        novel = {"observed": 0.3, "null_mean": 0.35, "p_two_sided": 0.5}
        _write(path / "compare.json", {"rotation_null": {"novel_fraction": novel}})


def _plant(tmp_path: Path, planted: dict, seeds: dict) -> Path:
    """Axis SAEs (``planted``: point name -> FVU; ``seeds``: seed -> FVU) and the main SAE (FVU 0.09) with
    dark-matter headlines at FVU + 0.01 and 100 x FVU stable components; returns the main run's metrics."""
    evals, trained = {}, {}
    names = {**{name: change for name, change in POINTS.items()}, **{f"seed-{seed}": {"seed": seed} for seed in seeds}}
    fvus = {**planted, **{f"seed-{seed}": fvu for seed, fvu in seeds.items()}}
    for name, change in names.items():
        fvu = fvus.get(name, 0.05)
        evals[name] = {"fvu": fvu, "fvu_with_special": fvu, "l0": 20.0, "dead_fraction": 0.1, "delta_loss": 10 * fvu,
                       "delta_loss_ci": [9 * fvu, 11 * fvu], "kl": fvu, "kl_ci": None, "loss_recovered": 0.9,
                       "loss_recovered_ci": None}
        config = {"width": change.get("width", 4096), "l0_coefficient": 1e-4, "seed": change.get("seed", 0),
                  "train_tokens": 2_000_000 if "seed" in change else 300_000}
        trained[name] = {"config": config, "seconds": 1.0}
        if name in fvus:
            _headlines(tmp_path / name, fvus[name] + 0.01, int(100 * fvus[name]))
    _write(tmp_path / "eval.json", evals)
    _write(tmp_path / "train.json", trained)
    main = tmp_path / "main"
    _headlines(main, 0.10, 9)
    _write(main / "sae.json", {"config": {"width": 4096, "l0_coefficient": 1e-4, "seed": 0, "train_tokens": 2_000_000}})
    _write(main / "sae_eval.json", {"fvu": 0.09, "fvu_with_special": 0.09, "l0": 25.0, "dead_fraction": 0.6,
                                    "training_curve": [], "lm": {"delta_loss": 0.45, "delta_loss_ci": [0.35, 0.55], "kl": 0.4,
                                                                 "kl_ci": None, "loss_recovered": 0.97, "loss_recovered_ci": None}})
    return main


def test_without_chain_ica_the_seeds_carry_no_ica_spread_even_with_stale_ica_metrics(tmp_path):
    params = params_with(POINTS, ["seed-1", "seed-2"], seeds=[1, 2])
    main = _plant(tmp_path, {}, {1: 0.12, 2: 0.17})
    spread = summarise(params, tmp_path, main)["seeds"]["spread"]
    assert spread["dark_matter_fraction"]["n"] == 3
    # the main SAE's own ICA ran (its run's chain); the seeds' stale ica.json is not read
    assert spread["ica_stable_restarts"]["n"] == 1 and spread["ica_novel_fraction"]["n"] == 1


def test_a_planted_seed_spread_comes_back_with_the_main_sae_among_its_members(tmp_path):
    """Two seed-axis SAEs and the main SAE with planted headlines: the summary's spread is their mean, SD and
    range; the short reference is on the width axis, not on the seed axis."""
    params = params_with(POINTS, ["reference", "seed-1", "seed-2"], ["reference", "seed-1", "seed-2"], seeds=[1, 2])
    main = _plant(tmp_path, {"reference": 0.30}, {1: 0.12, 2: 0.17})
    summary = summarise(params, tmp_path, main)
    spread = summary["seeds"]["spread"]
    values = np.array([0.09, 0.12, 0.17])
    assert summary["seeds"]["points"] == ["main", "seed-1", "seed-2"]
    assert [m["train_tokens"] for m in summary["seeds"]["members"]] == [2_000_000] * 3
    assert spread["fvu"]["mean"] == pytest.approx(values.mean())
    assert spread["fvu"]["sd"] == pytest.approx(values.std(ddof=1))
    assert (spread["fvu"]["min"], spread["fvu"]["max"]) == (pytest.approx(0.09), pytest.approx(0.17))
    assert spread["dark_matter_fraction"]["mean"] == pytest.approx(np.mean([0.10, 0.13, 0.18]))
    assert (spread["ica_stable_restarts"]["min"], spread["ica_stable_restarts"]["max"]) == (9, 17)
    assert [p["name"] for p in summary["axes"]["width"]] == ["reference", "wide"]  # the reference is on every axis
    assert summary["axes"]["width"][0]["ica_stable_restarts"] == 30
    assert set(summary["axes"]) == {"l0_coefficient", "width"}


def test_the_reference_is_the_main_snapshot_and_the_other_points_train_two_at_a_time(tmp_path):
    """The reference is copied from the main SAE's curve (the prefix property makes it the same SAE);
    the other SAEs train in two one-thread workers and come out as a run of their own would: a point for
    the axes' length, a seed-axis SAE for the main recipe's."""
    import torch
    from sae_lens import SAE

    from darkmatter.data.activations import ActivationCache
    from darkmatter.sae.axes import train_points
    from darkmatter.sae.build import train_on_cache
    from conftest import write_cache

    rng = np.random.default_rng(0)
    acts = (300 * (rng.standard_normal((3200, 8)) @ rng.standard_normal((8, 16)))).astype(np.float32)
    cache_dir = write_cache(tmp_path / "cache", acts, context_length=32)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["sae"] |= {"width": 64, "batch_size": 256, "l0_warm_up_tokens": 512, "lr_warm_up_tokens": 256,
                   "dead_window_tokens": 1024, "compile": False, "train_tokens": 3072, "curve_tokens": [2048]}
    raw["sae_axes"] = {"train_tokens": 2048, "points": {"reference": {}, "narrow": {"width": 32}}, "seeds": [1],
                       "chain": [], "chain_ica": []}
    params = parse_params(raw)
    snapshot = tmp_path / "curve" / "2048"
    snapshot.mkdir(parents=True)
    (snapshot / "cfg.json").write_text('{"planted": true}')
    (snapshot / "sae_weights.safetensors").write_bytes(b"planted weights")

    report = train_points(params, cache_dir, tmp_path / "saes", tmp_path / "train.json", tmp_path / "scratch",
                          tmp_path / "curve")
    assert (tmp_path / "saes" / "reference" / "sae_weights.safetensors").read_bytes() == b"planted weights"
    assert report["reference"]["seconds"] is None and report["reference"]["config"]["train_tokens"] == 2048
    assert list(json.loads((tmp_path / "train.json").read_text())) == ["seed-1", "reference", "narrow"]
    assert report["narrow"]["config"]["width"] == 32 and report["seed-1"]["config"]["seed"] == 1
    assert report["narrow"]["steps"] == 8 and report["seed-1"]["config"]["width"] == 64

    alone = train_on_cache(params.main, ActivationCache.open(cache_dir), tmp_path / "alone", tmp_path / "scratch-alone",
                           **point_overrides(params, "seed-1"))
    assert alone["steps"] == report["seed-1"]["steps"] == 12
    ours = SAE.load_from_disk(str(tmp_path / "saes" / "seed-1")).state_dict()
    for name, value in SAE.load_from_disk(str(tmp_path / "alone")).state_dict().items():
        torch.testing.assert_close(ours[name], value, rtol=1e-4, atol=1e-6)


def test_without_the_main_snapshot_the_reference_is_trained(tmp_path):
    """``train_tokens`` off the main curve: no snapshot to copy, so the reference trains like any point."""
    from darkmatter.sae.axes import train_points
    from conftest import write_cache

    rng = np.random.default_rng(1)
    cache_dir = write_cache(tmp_path / "cache", (100 * rng.standard_normal((1600, 16))).astype(np.float32), 32)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["sae"] |= {"width": 32, "batch_size": 256, "l0_warm_up_tokens": 256, "lr_warm_up_tokens": 256, "compile": False}
    raw["sae_axes"] = {"train_tokens": 1024, "points": {"reference": {}}, "chain": [], "chain_ica": []}
    report = train_points(parse_params(raw), cache_dir, tmp_path / "saes", tmp_path / "train.json", tmp_path / "scratch",
                          tmp_path / "no-curve")
    assert report["reference"]["steps"] == 4 and report["reference"]["seconds"] > 0
    assert (tmp_path / "saes" / "reference" / "cfg.json").exists()


def test_a_copied_snapshot_keeps_the_main_runs_evaluation_of_it(tmp_path):
    """The reference copied from the main SAE's curve is that snapshot: its numbers come from sae_eval.json
    (same SAE, same rows), matched by the tokens it trained on, and nothing is evaluated twice."""
    from darkmatter.sae.axes import evaluate_points

    params = params_with({"reference": {}}, [])
    (tmp_path / "saes" / "reference").mkdir(parents=True)
    (tmp_path / "saes" / "reference" / "cfg.json").write_text("{}")
    planted = {"fvu": 0.17, "l0": 62.5, "dead_fraction": 0.14, "delta_loss": 2.0, "delta_loss_ci": [1.8, 2.2]}
    main_eval = {"training_curve": [{"tokens": 299776, "fvu": 0.1}, {"tokens": 300032, **planted}]}
    trained = {"reference": {"source": "the main SAE's snapshot", "steps": 1172, "config": {"batch_size": 256}, "seconds": None}}
    report = evaluate_points(params, tmp_path / "saes", tmp_path / "no-cache", tmp_path / "no-model",
                             tmp_path / "eval.json", trained, main_eval)
    assert report == {"reference": planted} == json.loads((tmp_path / "eval.json").read_text())
