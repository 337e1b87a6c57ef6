"""Autointerp logic with scripted judges: the metrics, intervals and tests mean what they say."""

import numpy as np
import pytest

from darkmatter.config import AutointerpConfig, ExamplesConfig
from darkmatter.errors import UserError
from darkmatter.interp.autointerp import (answer, best_threshold, detect_request, detection_set, explain_request, marked,
                                          run, select_units, unit_scores)
from darkmatter.interp.examples import check_disjoint, density_matched_features, unit_examples
from darkmatter.interp.llm import Backend, CachedLLM, ReplayBackend, Response, ResponseCache
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


def _calibration(n, signal=True):
    return [_unit("calibration", 900 + i, signal, explanation="the word apple") for i in range(n)]


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


class YesMan(Oracle):
    """Sees the marked word but leans to Yes: its log-odds are +1 on apple, +0.2 elsewhere, so a
    cut-off at 0 says Yes to everything."""

    name = "yesman"

    def complete(self, req):
        resp = super().complete(req)
        if resp.logprobs is None:
            return resp
        return Response("Yes", {"yes": 1.0 if "<<apple>>" in req.prompt else 0.2, "no": 0.0})


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
    s = unit_scores([1, 1, 0, 0], [1, 0, 0, 0], [2.0, 0.5, 0.1, -1.0], 0.3)
    assert s["balanced_accuracy"] == pytest.approx(0.75) and s["f1"] == pytest.approx(2 / 3) and s["auc"] == 1.0
    assert s["balanced_accuracy_calibrated"] == 1.0, "at the cut-off 0.3 the scores separate perfectly"
    assert unit_scores([1, 0], [1, 1], None, None)["auc"] is None


def test_the_cut_off_is_the_middle_of_the_best_plateau():
    assert best_threshold([1, 1, 0, 0], [0.9, 0.8, 0.3, 0.2]) == pytest.approx(0.55)
    assert best_threshold([1, 0], [5.0, 5.0]) < 5.0, "all tied: predict Yes for every item"


def test_the_prompt_names_the_marked_token():
    req = detect_request("ica-1", "apples", _ctx(5, 1.0, " apple", "heldout"), 0, "yes_no")
    assert 'The marked token is " apple".' in req.prompt and "the<< apple>> end5" in req.prompt


def _run(units, backend, root, cfg):
    llm = CachedLLM(backend, ResponseCache(root))
    return run(units, llm, llm, cfg)


def test_a_perfect_judge_scores_one_and_a_coin_about_half(tmp_path):
    units = _pairs(20, sae_signal=False) + [_unit("random", 100 + i, False) for i in range(20)] + _calibration(8)
    cfg = AutointerpConfig(n_bootstrap=500, scorer="yes_no")
    rows, summary = _run(units, Oracle("o"), tmp_path / "a", cfg)
    ica = summary["groups"]["ica"]["balanced_accuracy"]
    assert ica["mean"] == 1.0 and ica["ci"] == [1.0, 1.0]
    assert summary["groups"]["random"]["balanced_accuracy"]["mean"] == 0.5  # says No to everything unmarked
    assert summary["primary_metric"] == "auc" and list(summary["tests"]) == ["auc", "balanced_accuracy_calibrated"]
    test = summary["tests"]["balanced_accuracy_calibrated"]["ica_vs_random"]
    assert not test["paired"] and test["difference"] == pytest.approx(0.5) and test["p_permutation"] < 0.01
    assert test["ci"][0] > 0
    paired = summary["tests"]["balanced_accuracy_calibrated"]["ica_vs_sae"]
    assert paired["paired"] and paired["n"] == 20 and paired["difference"] == pytest.approx(0.5)
    assert paired["p_permutation"] < 0.01 and paired["p_wilcoxon"] < 0.01
    assert summary["tests"]["auc"]["ica_vs_sae"]["difference"] == pytest.approx(0.5)
    assert summary["judge_separates_calibration"]
    assert summary["groups"]["calibration_given"]["auc"]["mean"] == 1.0 and summary["groups"]["calibration"]["n_units"] == 8
    contexts = {g: summary["groups"][g]["contexts_per_unit"] for g in ("ica", "calibration", "calibration_given", "calibration_shuffled")}
    assert contexts == {"ica": 16, "calibration": 16, "calibration_given": 20, "calibration_shuffled": 20}, \
        "the ceiling and its control read every held-out context (10 + 10 here), the other rows 8 + 8"
    assert {r["explanation"] for r in rows if r["kind"] != "calibration_given"} == {"the word apple"}

    _, coin = _run(units, Coin("c"), tmp_path / "b", cfg)
    assert abs(coin["groups"]["ica"]["balanced_accuracy"]["mean"] - 0.5) < 0.1
    tests = coin["tests"]["auc"]
    assert tests["ica_vs_random"]["p_permutation"] > 0.05, "a guessing judge separates nothing"
    assert tests["ica_vs_sae"]["p_permutation"] > 0.05
    assert not coin["judge_separates_calibration"], "so the groups are not ranked"


def test_a_judge_that_leans_to_yes_is_read_at_the_cut_off_its_calibration_units_choose(tmp_path):
    units = _pairs(6, sae_signal=False) + [_unit("random", 100 + i, False) for i in range(6)] + _calibration(6)
    rows, summary = _run(units, YesMan("y"), tmp_path, AutointerpConfig(n_bootstrap=200, scorer="yes_no"))
    groups = summary["groups"]
    assert groups["ica"]["balanced_accuracy"]["mean"] == 0.5, "as answered (cut-off 0): Yes to everything"
    assert groups["ica"]["balanced_accuracy_calibrated"]["mean"] == 1.0 and groups["ica"]["auc"]["mean"] == 1.0
    assert groups["calibration_given"]["balanced_accuracy_calibrated"]["mean"] == 1.0
    cuts = {r["unit"]: r["threshold"] for r in rows}
    assert 0.2 < cuts["ica-0"] < 1.0, "chosen between the two levels of the score"
    assert groups["random"]["balanced_accuracy_calibrated"]["mean"] == 0.5


def test_a_calibration_units_cut_off_is_chosen_without_it(tmp_path):
    """Two calibration units, one with its scores shifted by +5: each one's cut-off comes from the
    other alone; every other unit's from both."""

    class Shifted(YesMan):
        def complete(self, req):
            resp = super().complete(req)
            if resp.logprobs is not None and "end900" in req.prompt:  # unit 900's held-out contexts
                resp.logprobs["yes"] += 5.0
            return resp

    units = _calibration(2) + _pairs(3) + [_unit("random", 100 + i, False) for i in range(3)]
    rows, _ = _run(units, Shifted("s"), tmp_path, AutointerpConfig(n_bootstrap=50, scorer="yes_no", detect_positives=5, detect_negatives=5))
    cuts = {r["unit"]: r["threshold"] for r in rows}
    labels = [1] * 5 + [0] * 5
    plain, shifted = [1.0] * 5 + [0.2] * 5, [6.0] * 5 + [5.2] * 5
    assert cuts["calibration-900"] == cuts["calibration-900/given"] == pytest.approx(best_threshold(labels, plain))
    assert cuts["calibration-901"] == pytest.approx(best_threshold(labels, shifted))
    assert cuts["ica-0"] == pytest.approx(best_threshold(labels * 2, plain + shifted))
    assert cuts["calibration-900"] != cuts["ica-0"], "its own shifted scores would have moved it"


def test_a_replayed_run_makes_no_calls_and_gives_the_same_numbers(tmp_path):
    units = _pairs(4) + [_unit("random", 100 + i, False) for i in range(4)] + _calibration(4)
    cfg = AutointerpConfig(n_bootstrap=100, scorer="yes_no")
    live = CachedLLM(Oracle("o"), ResponseCache(tmp_path))
    rows, summary = run(units, live, live, cfg)
    assert live.stats["calls"] > 0

    oracle = Oracle("o")
    replay = CachedLLM(ReplayBackend("o", "oracle", oracle.payload), ResponseCache(tmp_path))
    again, summary_again = run(units, replay, replay, cfg)
    assert replay.stats["calls"] == 0 and replay.stats["cache_hits"] == live.stats["calls"] + live.stats["cache_hits"]
    assert again == rows and summary_again == summary


class Reader(Scripted):
    """A likelihood judge that reads: it explains a unit by the word marked in its first example,
    and scores an explanation high exactly where it names the marked word."""

    name = "reader"

    def complete(self, req):
        if req.continuation is None:
            return Response(f"the word {req.prompt.split('<<')[1].split('>>')[0]}")
        word = req.prompt.split("<<")[1].split(">>")[0]
        return Response("", {"continuation": -1.0 if f"the word {word}" in req.continuation else -4.0})

    def payload(self, req):
        return {"prompt": req.prompt, "continuation": req.continuation}


def _word_units(kind, start, n, signal=True):
    """Units that each fire on their own word (``w<id>``), so each has its own explanation."""
    units = [_unit(kind, start + i, signal) for i in range(n)]
    for u in units:
        for ctx in u["top"] + u["quantiles"]:
            ctx["tokens"][1] = f"w{u['id']}" if signal else "thing"
        if kind == "calibration":
            u["explanation"] = f"the word w{u['id']}"
    return units


def test_a_likelihood_judge_that_reads_is_told_apart_from_one_given_the_wrong_explanation(tmp_path):
    units = _pairs(6, sae_signal=False) + _word_units("random", 100, 8, signal=False) + _word_units("calibration", 900, 8)
    rows, summary = _run(units, Reader("r"), tmp_path, AutointerpConfig(n_bootstrap=500))
    groups, tests = summary["groups"], summary["tests"]["auc"]
    assert summary["primary_metric"] == "auc" and groups["calibration_given"]["auc"]["mean"] == 1.0
    assert groups["calibration_shuffled"]["auc"]["mean"] == 0.5 and groups["calibration_shuffled"]["n_units"] == 8
    shuffled = {r["unit"]: r["explanation"] for r in rows if r["kind"] == "calibration_shuffled"}
    assert shuffled["calibration-900/shuffled"] == "the word w901" and shuffled["calibration-907/shuffled"] == "the word w900"
    reads = tests["given_vs_shuffled"]
    assert reads["paired"] and reads["n"] == 8 and reads["difference"] == 0.5 and reads["p_permutation"] < 0.01
    assert groups["random"]["auc"]["mean"] == 0.5 and summary["judge_separates_calibration"]
    assert groups["ica"]["balanced_accuracy"] is None and groups["ica"]["f1"] is None, "a likelihood judge answers nothing"
    assert groups["ica"]["balanced_accuracy_calibrated"]["mean"] == 1.0
    ica0 = next(r for r in rows if r["unit"] == "ica-0")
    assert -1.5 < ica0["threshold"] < 1.5, "between the centred levels, +1.5 and -1.5"


def test_likelihood_scores_are_centred_on_each_units_own_contexts(tmp_path):
    """Two calibration units whose explanations differ in prior log-probability by 10 nats: centred,
    one cut-off serves both."""

    class Offset(Reader):
        def complete(self, req):
            resp = super().complete(req)
            if req.continuation is not None and "w901" in req.continuation:
                resp.logprobs["continuation"] -= 10.0
            return resp

    units = _word_units("calibration", 900, 2) + _pairs(2) + _word_units("random", 100, 3, signal=False)
    rows, _ = _run(units, Offset("o"), tmp_path, AutointerpConfig(n_bootstrap=50))
    given = {r["unit"]: r for r in rows if r["kind"] == "calibration_given"}
    assert all(r["balanced_accuracy_calibrated"] == 1.0 for r in given.values()), "one cut-off serves both"
    assert given["calibration-900/given"]["threshold"] == pytest.approx(given["calibration-901/given"]["threshold"])


def test_the_likelihood_request_scores_the_explanation_after_the_marked_excerpt():
    req = detect_request("ica-1", "apples\n and  pears", _ctx(5, 1.0, " apple", "heldout"), 0, "likelihood")
    assert req.prompt.startswith("Excerpt: the<< apple>> end5") and 'The marked token is " apple".' in req.prompt
    assert req.continuation == " apples and pears" and not req.want_logprobs
    assert detect_request("u", "", _ctx(5, 1.0, "x", "heldout"), 0, "likelihood").continuation == " nothing"


def test_the_messages_api_cannot_be_a_likelihood_judge():
    for messages_api in ({"backend": "anthropic"}, {"backend": "replay", "replay_of": "anthropic"}):
        with pytest.raises(ValueError, match="set autointerp.scorer: yes_no"):
            AutointerpConfig(**messages_api)
        AutointerpConfig(**messages_api, scorer="yes_no")
    AutointerpConfig(backend="replay")  # a replay of the local judge has its log-probabilities


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
    with pytest.raises(UserError, match="no calibration units"):
        select_units(units, 4, 2)
    units += _calibration(3)
    chosen = select_units(units, 4, 2)
    assert [u["kind"] for u in chosen].count("calibration") == 3
    ica = [u for u in chosen if u["kind"] == "ica"]
    assert [u["id"] for u in ica] == [0, 2, 5, 7], "a uniform spread over the ranking"
    assert [u["matched_to_ica"] for u in chosen if u["kind"] == "sae"] == [0, 2, 5, 7]
    assert [u["kind"] for u in chosen].count("random") == 2
