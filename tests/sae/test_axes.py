"""The SAE axes: points resolve to one changed setting, a planted seed spread comes back, the L0 verdict reads CIs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from darkmatter.config import parse_params
from darkmatter.sae.axes import falls_as_l0_rises, point_overrides, summarise

REPO = Path(__file__).resolve().parents[2]


def params_with(points: dict, chain: list[str], chain_ica: list[str] = ()):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["sae_axes"] = {"train_tokens": 300000, "points": points, "chain": chain, "chain_ica": list(chain_ica)}
    return parse_params(raw)


def test_a_point_changes_one_setting_and_trains_for_the_axes_length():
    params = params_with({"reference": {}, "w": {"width": 1024}, "s": {"seed": 3}}, [])
    assert point_overrides(params, "w") == {"train_tokens": 300000, "curve_tokens": (), "width": 1024}
    assert isinstance(point_overrides(params, "s")["seed"], int)
    assert point_overrides(params, "reference") == {"train_tokens": 300000, "curve_tokens": ()}
    from darkmatter.errors import UserError

    with pytest.raises(UserError, match="'x' is not a point of sae_axes.points; allowed: reference, w, s"):
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


SEED_POINTS = {"reference": {}, "seed-1": {"seed": 1}, "seed-2": {"seed": 2}, "wide": {"width": 8192}}


def _plant(tmp_path: Path, points: dict, planted: dict) -> None:
    evals, trained = {}, {}
    for name, change in points.items():
        fvu = planted.get(name, 0.05)
        evals[name] = {"fvu": fvu, "fvu_with_special": fvu, "l0": 20.0, "dead_fraction": 0.1, "delta_loss": 10 * fvu,
                       "delta_loss_ci": [9 * fvu, 11 * fvu], "kl": fvu, "kl_ci": None, "loss_recovered": 0.9,
                       "loss_recovered_ci": None}
        config = {"width": change.get("width", 4096), "l0_coefficient": 1e-4, "seed": change.get("seed", 0)}
        trained[name] = {"config": config, "seconds": 1.0}
        if name in planted:
            _write(tmp_path / name / "residual.json", {"dark_matter_fraction": planted[name] + 0.01,
                                                        "kurtosis": {"r": {"quantiles": {"0.5": 1.0}}}, "shape": {}})
            _write(tmp_path / name / "ica.json", {"n_components": 64, "stability": {"n_stable_seeds": int(100 * planted[name])}})
            novel = {"observed": 0.3, "null_mean": 0.35, "p_two_sided": 0.5}
            _write(tmp_path / name / "compare.json", {"rotation_null": {"novel_fraction": novel}})
    _write(tmp_path / "eval.json", evals)
    _write(tmp_path / "train.json", trained)


def test_without_chain_ica_the_seeds_carry_no_ica_spread_even_with_stale_ica_metrics(tmp_path):
    params = params_with(SEED_POINTS, ["reference", "seed-1", "seed-2"])
    _plant(tmp_path, SEED_POINTS, {"reference": 0.10, "seed-1": 0.12, "seed-2": 0.17})
    spread = summarise(params, tmp_path, {"training_curve": []})["seeds"]["spread"]
    assert spread["dark_matter_fraction"]["n"] == 3
    assert spread["ica_stable_restarts"] == {"n": 0} and spread["ica_novel_fraction"] == {"n": 0}


def test_a_planted_seed_spread_comes_back(tmp_path):
    """Three SAE seeds with planted headlines: the summary's spread is their mean, SD and range."""
    points = SEED_POINTS
    params = params_with(points, ["reference", "seed-1", "seed-2"], ["reference", "seed-1", "seed-2"])
    planted = {"reference": 0.10, "seed-1": 0.12, "seed-2": 0.17}
    _plant(tmp_path, points, planted)
    summary = summarise(params, tmp_path, {"training_curve": []})
    spread = summary["seeds"]["spread"]
    values = np.array(list(planted.values()))
    assert summary["seeds"]["points"] == ["reference", "seed-1", "seed-2"]
    assert spread["fvu"]["mean"] == pytest.approx(values.mean())
    assert spread["fvu"]["sd"] == pytest.approx(values.std(ddof=1))
    assert (spread["fvu"]["min"], spread["fvu"]["max"]) == (pytest.approx(0.10), pytest.approx(0.17))
    assert spread["dark_matter_fraction"]["mean"] == pytest.approx(values.mean() + 0.01)
    assert spread["ica_stable_restarts"]["max"] == 17
    assert [p["name"] for p in summary["axes"]["width"]] == ["reference", "wide"]  # the reference is on every axis


def test_the_reference_is_the_main_snapshot_and_the_other_points_train_two_at_a_time(tmp_path):
    """The reference is copied from the main SAE's curve (the prefix property makes it the same SAE);
    the other points train in two one-thread workers and come out as a run of their own would."""
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
                   "dead_window_tokens": 1024, "compile": False}
    raw["sae_axes"] = {"train_tokens": 2048, "points": {"reference": {}, "seed-1": {"seed": 1}, "narrow": {"width": 32}},
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
    assert list(json.loads((tmp_path / "train.json").read_text())) == ["reference", "seed-1", "narrow"]
    assert report["narrow"]["config"]["width"] == 32 and report["seed-1"]["config"]["seed"] == 1

    alone = train_on_cache(params.main, ActivationCache.open(cache_dir), tmp_path / "alone", tmp_path / "scratch-alone",
                           **point_overrides(params, "seed-1"))
    assert alone["steps"] == report["seed-1"]["steps"] == 8
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
