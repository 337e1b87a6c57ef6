"""Autointerp logic with scripted judges: the metrics, intervals and tests mean what they say."""

import numpy as np
import pytest

from darkmatter.config import AutointerpConfig, ExamplesConfig
from darkmatter.errors import UserError
from darkmatter.interp.autointerp import answer, detection_set, explain_request, marked, run, select_units, unit_scores
from darkmatter.interp.examples import check_disjoint, density_matched_features, unit_examples
from darkmatter.interp.llm import Backend, CachedLLM, Response, ResponseCache
from darkmatter.stats import mean_with_ci, monte_carlo_p, paired_difference, unpaired_difference


def _ctx(i, act, word, split):
    return {"token_index": i, "focus": 1, "activation": act, "tokens": ["the", word, f" end{i}"], "activations": [0, act, 0],
            "split": split, "start": i - 1, "stop": i + 2}


def _unit(kind, uid, signal, **extra):
    """Activating contexts mark 'apple'; negatives mark 'stone'. ``signal`` False hides the difference."""
    pos, neg = ("apple", "stone") if signal else ("thing", "thing")
    return {"kind": kind, "id": uid, "stable": True, **extra,
            "top": [_ctx(10000 * uid + 10 * i, 9 - i, pos, "train") for i in range(8)],
            "quantiles": [_ctx(10000 * uid + 1000 + 10 * i, 3.0, pos, "heldout") for i in range(10)],
            "non_activating": [_ctx(10000 * uid + 2000 + 10 * i, 0.0, neg, "heldout") for i in range(10)]}


def _pairs(n, ica_signal=True, sae_signal=True):
    """n ICA units, each with its density-matched SAE feature (ids 500+i)."""
    ica = [_unit("ica", i, ica_signal, matched_sae_feature=500 + i) for i in range(n)]
    sae = [_unit("sae", 500 + i, sae_signal, matched_to_ica=i) for i in range(n)]
    return ica + sae


class Scripted(Backend):
    def payload(self, req):
        return {"system": req.system, "prompt": req.prompt}


class Oracle(Scripted):
    """Explains 'apple'; says Yes exactly when the marked token is <<apple>> (a perfect judge)."""

    name = "oracle"

    def complete(self, req):
        if "Yes or No" in req.prompt:
            yes = "<<apple>>" in req.prompt
            return Response("Yes" if yes else "No", {"yes": 0.0 if yes else -3.0, "no": -3.0 if yes else 0.0})
        return Response("the word apple")


class Coin(Scripted):
    """A judge that guesses: seeded coin flips."""

    name = "coin"

    def __init__(self, model):
        super().__init__(model)
        self.rng = np.random.default_rng(0)

    def complete(self, req):
        heads = bool(self.rng.integers(2))
        return Response("Yes" if heads else "No", {"yes": float(heads), "no": 0.5})


def test_detection_comes_from_heldout_rows_and_explanations_from_train_rows():
    unit = _unit("ica", 1, True)
    dset = detection_set(unit, 5, 5)
    assert sum(label for _, label in dset) == 5 and len(dset) == 10
    assert {c["split"] for c, _ in dset} == {"heldout"}
    assert marked(unit["top"][0]) == "the<<apple>> end10000"
    assert "the<<apple>> end10000 [9.00]" in explain_request(unit, 8).prompt
    assert answer(" yes.") == 1 and answer("No") == 0
    unit["quantiles"][0] = unit["top"][0]  # a train context among the positives: refused, not silently scored
    with pytest.raises(UserError, match="detection contexts must come from held-out rows"):
        detection_set(unit, 5, 5)


def test_examples_explain_on_train_and_detect_on_the_heldout_rows_own_quantiles():
    """A sparse unit: its top train tokens are huge; its held-out positives must still cover the
    held-out rows' own range (all quantiles), not just the low end left after excluding the top."""
    rng = np.random.default_rng(0)
    acts = np.zeros(4000)
    train, detect = np.arange(0, 3000), np.arange(3000, 4000)
    acts[rng.choice(train, 30, replace=False)] = rng.uniform(50, 100, 30)
    held_active = rng.choice(detect, 40, replace=False)
    acts[held_active] = rng.uniform(1, 10, 40)
    cfg = ExamplesConfig(top_k=10, n_quantiles=5, per_quantile=2, n_non_activating=10)
    chosen = unit_examples(acts, 0.0, cfg, np.random.default_rng(1), train, detect)
    assert set(chosen["top"]) <= set(train) and min(acts[chosen["top"]]) >= 50
    positives = [t for _, t in chosen["quantiles"]]
    assert set(positives) <= set(held_active) and len(positives) == 10
    assert sorted({q for q, _ in chosen["quantiles"]}) == [0, 1, 2, 3, 4], "every held-out quantile is represented"
    assert max(acts[positives]) > np.quantile(acts[held_active], 0.8)
    assert set(chosen["non_activating"]) <= set(detect) and all(acts[chosen["non_activating"]] == 0)


def test_overlapping_windows_are_caught():
    shown = [{"token_index": 10, "start": 5, "stop": 16}]
    check_disjoint(shown, [{"token_index": 30, "start": 25, "stop": 36}])
    with pytest.raises(AssertionError, match="overlaps"):
        check_disjoint(shown, [{"token_index": 18, "start": 13, "stop": 24}])


def test_unit_scores_balanced_accuracy_f1_auc():
    s = unit_scores([1, 1, 0, 0], [1, 0, 0, 0], [2.0, 0.5, 0.1, -1.0])
    assert s["balanced_accuracy"] == pytest.approx(0.75) and s["f1"] == pytest.approx(2 / 3) and s["auc"] == 1.0
    assert unit_scores([1, 0], [1, 1], None)["auc"] is None


def test_a_perfect_judge_scores_one_and_a_coin_about_half(tmp_path):
    units = _pairs(20, sae_signal=False) + [_unit("random", 100 + i, False) for i in range(20)]
    cfg = AutointerpConfig(n_bootstrap=500)
    rows, summary = run(units, CachedLLM(Oracle("o"), ResponseCache(tmp_path / "a")), cfg)
    ica = summary["groups"]["ica"]["balanced_accuracy"]
    assert ica["mean"] == 1.0 and ica["ci"] == [1.0, 1.0]
    assert summary["groups"]["random"]["balanced_accuracy"]["mean"] == 0.5  # says No to everything unmarked
    test = summary["tests"]["ica_vs_random"]
    assert not test["paired"] and test["difference"] == pytest.approx(0.5) and test["p_permutation"] < 0.01
    assert test["ci"][0] > 0
    paired = summary["tests"]["ica_vs_sae"]
    assert paired["paired"] and paired["n"] == 20 and paired["difference"] == pytest.approx(0.5)
    assert paired["p_permutation"] < 0.01 and paired["p_wilcoxon"] < 0.01
    assert {r["explanation"] for r in rows} == {"the word apple"}

    _, coin = run(units, CachedLLM(Coin("c"), ResponseCache(tmp_path / "b")), cfg)
    assert abs(coin["groups"]["ica"]["balanced_accuracy"]["mean"] - 0.5) < 0.1
    assert coin["tests"]["ica_vs_random"]["p_permutation"] > 0.05, "a guessing judge separates nothing"
    assert coin["tests"]["ica_vs_sae"]["p_permutation"] > 0.05


def test_the_paired_test_sees_what_the_unpaired_one_misses():
    """Pairs that differ by a small constant over a large spread between pairs."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.9, 30)
    a, b = base + 0.03 + rng.normal(0, 0.005, 30), base
    assert paired_difference(a, b, 2000, rng)["p_permutation"] < 0.01
    assert unpaired_difference(a, b, 2000, rng)["p_permutation"] > 0.05


def test_intervals_need_enough_values_and_p_values_are_never_zero():
    rng = np.random.default_rng(0)
    small = mean_with_ci(rng.uniform(0.4, 0.8, 10), 2000, rng)
    large = mean_with_ci(rng.uniform(0.4, 0.8, 1000), 2000, rng)
    assert small["ci"][0] < small["mean"] < small["ci"][1] and large["ci"][0] < large["mean"] < large["ci"][1]
    assert (large["ci"][1] - large["ci"][0]) < (small["ci"][1] - small["ci"][0])
    two = mean_with_ci(np.array([0.4, 0.9]), 2000, rng)
    assert two["ci"] is None and two["n"] == 2, "no interval from n = 2"
    assert unpaired_difference(np.array([0.5]), np.array([]), 100, rng)["p_permutation"] is None
    assert monte_carlo_p(np.zeros(99), 1.0) == pytest.approx(0.01), "(1 + 0) / (1 + 99)"
    assert monte_carlo_p(np.ones(99), 1.0) == 1.0


def test_density_matching_gives_every_component_its_own_nearest_unused_feature():
    frequency = np.array([0.0, 0.0005, 0.01, 0.02, 0.03, 0.5])
    features = density_matched_features(np.array([0.021, 0.011, 0.021]), frequency, 0.001)
    assert features.tolist() == [3, 2, 4]
    assert 1 not in features and 0 not in features, "inactive features are never baselines"
    with pytest.raises(UserError, match="fewer than the 5 ICA components"):
        density_matched_features(np.full(5, 0.02), frequency, 0.001)


def test_select_units_spreads_ica_and_brings_each_ones_partner():
    units = _pairs(8) + [_unit("random", 100 + i, False) for i in range(5)]
    chosen = select_units(units, 4, 2)
    ica = [u for u in chosen if u["kind"] == "ica"]
    assert [u["id"] for u in ica] == [0, 2, 5, 7], "a uniform spread over the ranking"
    assert [u["matched_to_ica"] for u in chosen if u["kind"] == "sae"] == [0, 2, 5, 7]
    assert [u["kind"] for u in chosen].count("random") == 2
