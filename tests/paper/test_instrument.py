"""The instrument's wording: planted numbers give the verdict keys they must, and the template words
each key as it must (``macros_instrument.tex.j2`` rendered with the real metrics' context, the
planted part replaced)."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import REPO

from darkmatter.paper.context.instrument import (bar, curve_state, macro_context, macro_numbers, seed_chain, seed_novelty,
                                                 seed_spread, width_chain)
from darkmatter.paper.templates import Templates

RUN = REPO / "metrics/runs/gemma-3-270m-l9"


@pytest.fixture(scope="module")
def metrics():
    """``(sae_eval, sae, sae_axes)`` of the committed main run."""
    return tuple(json.loads(path.read_text()) for path in (RUN / "sae_eval.json", RUN / "sae.json", REPO / "metrics/sae_axes.json"))


@pytest.fixture(scope="module")
def words(metrics):
    """The words template rendered with the real context, ``planted`` entries replacing its own."""
    templates = Templates(REPO / "paper/sections")
    context = macro_context(*metrics)

    def render(**planted):
        return templates.words("macros_instrument.tex.j2", {**copy.deepcopy(context), **planted})
    return render


def test_a_bar_is_met_only_with_its_whole_interval(words):
    assert bar(0.5, [0.4, 0.59], 0.6) == "meets"
    assert bar(0.5, [0.4, 0.65], 0.6) == "misses"  # the point meets it, the interval does not
    assert bar(0.98, [0.975, 0.985], 0.97, below_is_good=False) == "meets"
    assert bar(0.98, [0.965, 0.985], 0.97, below_is_good=False) == "misses"
    assert bar(0.079, None, 0.08) == "meets" and bar(0.081, None, 0.08) == "misses"
    w = words(bars={"delta_loss": "misses", "recovered": "meets", "fvu": "misses", "dead": "meets"},
              meets=["recovered", "dead"], misses=["delta_loss", "fvu"])
    assert (w["SaeBarDeltaLoss"], w["SaeBarRecovered"]) == ("misses", "meets")
    assert w["SaeBarsSummary"] == "meets the loss-recovered and dead-latent bars and misses the $\\Delta$LM and FVU bars"
    assert words(meets=[], misses=["fvu"])["SaeBarsSummary"] == "misses every bar set for it"
    assert words(meets=["fvu"], misses=[])["SaeBarsSummary"] == "meets every bar set for it"


def _point(name, p, novel, null):
    return {"name": name, "ica_novel_p_two_sided": p, "ica_novel_fraction": novel, "ica_novel_null_mean": null}


def test_seed_agreement_counts_each_verdict(words):
    same = {"seeds": {"members": [_point("main", 0.4, 0.3, 0.35), _point("seed-1", 0.6, 0.4, 0.35)]}}
    assert seed_novelty(same)["verdicts"] == ["neither", "neither"]
    assert words(seed_novelty=seed_novelty(same))["SeedNovelAgreement"] == (
        "the same for all 2 SAE seeds (their novel fraction does not differ significantly from the rotation null's)")
    split = {"seeds": {"members": [_point("a", 0.01, 0.5, 0.35), _point("b", 0.6, 0.4, 0.35), _point("c", 0.02, 0.1, 0.35)]}}
    assert seed_novelty(split)["verdicts"] == ["above", "neither", "below"]
    assert words(seed_novelty=seed_novelty(split))["SeedNovelAgreement"] == (
        "not the same across SAE seeds (1 of 3: exceeds; 1 of 3: does not differ significantly from; 1 of 3: falls below)")
    unmeasured = {"seeds": {"members": [_point("main", 0.4, 0.3, 0.35), {"name": "seed-1"}]}}
    assert seed_novelty(unmeasured) is None
    assert words(seed_novelty=None)["SeedNovelAgreement"] == "not measured (the seed axis's chain did not run)"


def _width(width, fraction, p=None, novel=0.5):
    point = {"name": f"w{width}", "width": width, "dark_matter_fraction": fraction}
    return point if p is None else point | {"ica_novel_fraction": novel, "ica_novel_null_mean": 0.4, "ica_novel_p_two_sided": p}


def test_the_width_chain_words_each_widths_verdict(words):
    assert width_chain([_width(1024, 0.2), {"name": "w2048", "width": 2048}]) is None  # the chain skipped a width
    assert words(width_chain=None)["WidthChainSentence"].startswith("The dark matter was not measured along the width axis")
    residual_only = width_chain([_width(1024, 0.25), _width(4096, 0.2)])
    assert words(width_chain=residual_only)["WidthChainSentence"] == (
        "Along the width axis (1{,}024 and 4{,}096 latents, Table~\\ref{tab:chain}) the dark-matter fraction is "
        "0.250 and 0.200 (ICA did not run on them).")
    agree = width_chain([_width(1024, 0.25, 0.01), _width(4096, 0.2, 0.02, novel=0.6)])
    assert words(width_chain=agree)["WidthChainSentence"].endswith(
        "and ICA's novel fraction 50\\% and 60\\%; the novel fraction exceeds the rotation null's at every width.")
    split = width_chain([_width(1024, 0.25, 0.5), _width(2048, 0.2, 0.01), _width(4096, 0.2, 0.5)])
    assert words(width_chain=split)["WidthChainSentence"].endswith(
        "the novel fraction does not differ significantly from the rotation null's at widths 1{,}024 and 4{,}096, "
        "and exceeds the rotation null's at width 2{,}048.")


def _curve_point(tokens, fvu, delta, ci):
    return {"tokens": tokens, "fvu": fvu, "delta_loss": delta, "delta_loss_ci": ci}


def test_the_curve_says_whether_training_still_moves_the_sae(words):
    moving = {"training_curve": [_curve_point(10**6, 0.10, 0.6, [0.5, 0.7]), _curve_point(2 * 10**6, 0.09, 0.5, [0.4, 0.6])]}
    assert curve_state(moving)["state"] == "improving"
    assert words(curve=curve_state(moving))["SaeCurveVerdict"] == (
        "still improving: from 1{,}000{,}000 to 2{,}000{,}000 training tokens FVU moves from 0.100 to 0.090 and "
        "$\\Delta$LM from 0.60 to 0.50")
    flat = {"training_curve": [_curve_point(10**6, 0.090, 0.45, [0.35, 0.55]), _curve_point(2 * 10**6, 0.089, 0.44, [0.34, 0.54])]}
    assert curve_state(flat)["state"] == "converged"
    assert words(curve=curve_state(flat))["SaeCurveVerdict"].startswith("close to converged")
    assert curve_state({}) is None
    assert words(curve=curve_state({}))["SaeCurveVerdict"] == "no training curve was recorded"


def test_a_seed_spread_is_printed_as_its_range_or_as_absent(words):
    spread = {"fvu": {"n": 3, "mean": 0.13, "sd": 0.036, "min": 0.10, "max": 0.17}, "ica_novel_fraction": {"n": 0}}
    assert seed_spread(spread, "fvu", 3) == {"n": "3", "span": "0.100--0.170"}
    assert seed_spread(spread, "ica_novel_fraction", 2) is None and seed_spread(None, "fvu", 3) is None
    w = words(seed_spread={"fvu": seed_spread(spread, "fvu", 3),
                                                          "kurt_r": seed_spread(spread, "ica_novel_fraction", 2),
                                                          "novel": seed_spread(None, "fvu", 3)})
    assert w["SeedSpreadFvu"] == "3 SAE seeds of the main recipe: 0.100--0.170"
    assert w["SeedSpreadKurtR"] == "no SAE-seed spread in this build"
    assert w["SeedSpreadNovel"] == "no SAE-seed spread in this build"


def test_the_seed_chain_words_follow_how_far_it_ran(metrics):
    ev, train, axes = metrics
    templates = Templates(REPO / "paper/sections")
    stats = {"n": 3, "min": 0.1, "max": 0.2}
    for spread, chain, headline in (
            ({"fvu": stats, "dark_matter_fraction": stats, "ica_novel_fraction": stats, "ica_stable_restarts": stats}, "ica",
             "the dark-matter headlines below carry their spread (Table~\\ref{tab:chain}), and their ICA novelty verdict is"),
            ({"fvu": stats, "dark_matter_fraction": stats, "ica_novel_fraction": {"n": 0}}, "residual",
             "the FVU and kurtosis headlines below carry the same seed spread (ICA's do not"),
            (None, "none", "the dark-matter headlines below carry no seed spread")):
        assert seed_chain(spread) == chain
        planted = copy.deepcopy(axes)
        planted["seeds"]["spread"] = spread
        w = templates.words("macros_instrument.tex.j2", macro_context(ev, train, planted))
        assert w["SeedHeadlineSentence"].startswith(headline)
        assert (w["SeedStableSentence"] != "") == (chain == "ica")
        assert (w["SeedRangeSaeFvu"] == "(not measured)") == (spread is None)
        assert not set(w) & set(macro_numbers(ev, train, planted))  # a macro is a number or words, not both


def test_the_diagnosis_macros_exist_only_with_a_diagnosis(metrics):
    ev, train, axes = metrics
    templates = Templates(REPO / "paper/sections")
    assert "NoiseIsoVerdict" in templates.words("macros_instrument.tex.j2", macro_context(ev, train, axes))
    planted = copy.deepcopy(ev)
    del planted["lm"]["diagnosis"]
    w = templates.words("macros_instrument.tex.j2", macro_context(planted, train, axes))
    assert not {"NoiseIsoVerdict", "KLExponentVerdict", "PartsVerdict"} & set(w)
    assert "NoiseCovP" not in macro_numbers(planted, train, axes)
