"""Autointerp logic with scripted judges: the metrics, intervals and tests mean what they say."""

import numpy as np
import pytest

from darkmatter.interp.autointerp import (
    answer,
    bootstrap_mean_ci,
    compare_groups,
    detection_set,
    explain_request,
    marked,
    run,
    select_units,
    unit_scores,
)
from darkmatter.config import AutointerpConfig
from darkmatter.interp.examples import density_matched_features
from darkmatter.interp.llm import Backend, CachedLLM, Response, ResponseCache


def _ctx(i, act, word):
    return {"token_index": i, "focus": 1, "activation": act, "tokens": ["the", word, f" end{i}"], "activations": [0, act, 0]}


def _unit(kind, uid, signal):
    """Activating contexts mark 'apple'; negatives mark 'stone'. ``signal`` False hides the difference."""
    pos, neg = ("apple", "stone") if signal else ("thing", "thing")
    return {"kind": kind, "id": uid, "stable": True,
            "top": [_ctx(1000 * uid + i, 9 - i, pos) for i in range(8)],
            "quantiles": [_ctx(1000 * uid + 100 + i, 3.0, pos) for i in range(10)],
            "non_activating": [_ctx(1000 * uid + 200 + i, 0.0, neg) for i in range(10)]}


class Oracle(Backend):
    """Explains 'apple'; says Yes exactly when the marked token is <<apple>> (a perfect judge)."""

    name = "oracle"

    def complete(self, req):
        if "Yes or No" in req.prompt:
            yes = "<<apple>>" in req.prompt
            return Response("Yes" if yes else "No", {"yes": 0.0 if yes else -3.0, "no": -3.0 if yes else 0.0})
        return Response("the word apple")


class Coin(Backend):
    """A judge that guesses: seeded coin flips."""

    name = "coin"

    def __init__(self, model):
        super().__init__(model)
        self.rng = np.random.default_rng(0)

    def complete(self, req):
        heads = bool(self.rng.integers(2))
        return Response("Yes" if heads else "No", {"yes": float(heads), "no": 0.5})


def test_marked_and_detection_set_hold_out_what_the_explainer_saw():
    unit = _unit("ica", 1, True)
    unit["quantiles"][0] = unit["top"][0]  # overlap must be dropped
    dset = detection_set(unit, 5, 5)
    shown = {c["token_index"] for c in unit["top"]}
    assert sum(label for _, label in dset) == 5 and len(dset) == 10
    assert not shown & {c["token_index"] for c, label in dset if label}
    assert marked(unit["top"][0]) == "the<<apple>> end1000"
    assert "the<<apple>> end1000 [9.00]" in explain_request(unit, 8).prompt
    assert answer(" yes.") == 1 and answer("No") == 0


def test_unit_scores_balanced_accuracy_f1_auc():
    s = unit_scores([1, 1, 0, 0], [1, 0, 0, 0], [2.0, 0.5, 0.1, -1.0])
    assert s["balanced_accuracy"] == pytest.approx(0.75) and s["f1"] == pytest.approx(2 / 3) and s["auc"] == 1.0
    assert unit_scores([1, 0], [1, 1], None)["auc"] is None


def test_a_perfect_judge_scores_one_and_a_coin_about_half(tmp_path):
    units = [_unit("ica", i, True) for i in range(20)] + [_unit("random", 100 + i, False) for i in range(20)]
    cfg = AutointerpConfig(n_bootstrap=500)
    rows, summary = run(units, CachedLLM(Oracle("o"), ResponseCache(tmp_path / "a")), cfg)
    ica = summary["groups"]["ica"]["balanced_accuracy"]
    assert ica["mean"] == 1.0 and ica["ci"] == [1.0, 1.0]
    assert summary["groups"]["random"]["balanced_accuracy"]["mean"] == 0.5  # says No to everything unmarked
    test = summary["tests"]["ica_vs_random"]
    assert test["difference"] == pytest.approx(0.5) and test["p_permutation"] < 0.01 and test["ci"][0] > 0
    assert summary["tests"]["ica_vs_sae"]["difference"] is None, "no SAE units: no comparison, not a fake one"
    assert {r["explanation"] for r in rows} == {"the word apple"}

    _, coin = run(units, CachedLLM(Coin("c"), ResponseCache(tmp_path / "b")), cfg)
    assert abs(coin["groups"]["ica"]["balanced_accuracy"]["mean"] - 0.5) < 0.1
    assert coin["tests"]["ica_vs_random"]["p_permutation"] > 0.05, "a guessing judge separates nothing"


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = bootstrap_mean_ci(rng.uniform(0.4, 0.8, 10), 2000, rng)
    large = bootstrap_mean_ci(rng.uniform(0.4, 0.8, 1000), 2000, rng)
    assert small[1] < small[0] < small[2] and large[1] < large[0] < large[2]
    assert (large[2] - large[1]) < (small[2] - small[1])
    assert compare_groups(np.array([0.5]), np.array([]), 100, rng)["p_permutation"] is None


def test_density_matching_picks_the_nearest_unused_feature():
    frequency = np.array([0.0, 0.0005, 0.01, 0.02, 0.03, 0.5])
    features, matched = density_matched_features(np.array([0.021, 0.011]), frequency, 0.001, 3)
    assert features.tolist() == [3, 2, 4] and matched.tolist() == [0, 1, 0]
    assert 1 not in features and 0 not in features, "inactive features are never baselines"


def test_select_units_caps_each_group():
    units = [{"kind": k, "id": i} for k in ("ica", "sae", "random") for i in range(5)]
    chosen = select_units(units, {"ica": 5, "sae": 2, "random": 0})
    assert [u["kind"] for u in chosen] == ["ica"] * 5 + ["sae"] * 2
