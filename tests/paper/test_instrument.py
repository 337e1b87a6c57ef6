"""The instrument's wording: planted numbers give the verdicts they must."""

from __future__ import annotations

from darkmatter.paper.instrument import bar_word, curve_verdict, seed_spread_phrase, seed_verdicts


def test_a_bar_is_met_only_with_its_whole_interval():
    assert bar_word(0.5, [0.4, 0.59], 0.6) == "meets"
    assert bar_word(0.5, [0.4, 0.65], 0.6) == "misses"  # the point meets it, the interval does not
    assert bar_word(0.98, [0.975, 0.985], 0.97, below_is_good=False) == "meets"
    assert bar_word(0.98, [0.965, 0.985], 0.97, below_is_good=False) == "misses"
    assert bar_word(0.079, None, 0.08) == "meets" and bar_word(0.081, None, 0.08) == "misses"


def _point(name, p, novel, null):
    return {"name": name, "ica_novel_p_two_sided": p, "ica_novel_fraction": novel, "ica_novel_null_mean": null}


def test_seed_agreement_counts_each_verdict():
    same = {"axes": {"seed": [_point("a", 0.4, 0.3, 0.35), _point("b", 0.6, 0.4, 0.35)]}, "seeds": {"points": ["a", "b"]}}
    assert seed_verdicts(same)["SeedNovelAgreement"] == "the same for all 2 SAE seeds (does not differ significantly from)"
    split = {"axes": {"seed": [_point("a", 0.01, 0.5, 0.35), _point("b", 0.6, 0.4, 0.35), _point("c", 0.02, 0.1, 0.35)]},
             "seeds": {"points": ["a", "b", "c"]}}
    assert seed_verdicts(split)["SeedNovelAgreement"] == (
        "not the same across SAE seeds (1 of 3: exceeds; 1 of 3: does not differ significantly from; 1 of 3: falls below)")


def _curve_point(tokens, fvu, delta, ci):
    return {"tokens": tokens, "fvu": fvu, "delta_loss": delta, "delta_loss_ci": ci}


def test_the_curve_says_whether_training_still_moves_the_sae():
    moving = {"training_curve": [_curve_point(10**6, 0.10, 0.6, [0.5, 0.7]), _curve_point(2 * 10**6, 0.09, 0.5, [0.4, 0.6])]}
    assert curve_verdict(moving).startswith("still improving")
    flat = {"training_curve": [_curve_point(10**6, 0.090, 0.45, [0.35, 0.55]), _curve_point(2 * 10**6, 0.089, 0.44, [0.34, 0.54])]}
    assert curve_verdict(flat).startswith("close to converged")
    assert curve_verdict({}) == "no training curve was recorded"


def test_a_seed_spread_is_printed_as_its_range_or_as_absent():
    spread = {"fvu": {"n": 3, "mean": 0.13, "sd": 0.036, "min": 0.10, "max": 0.17}, "ica_novel_fraction": {"n": 0}}
    assert seed_spread_phrase(spread, "fvu", 500000) == "the recipe after 500{,}000 training tokens, 3 SAE seeds: 0.100--0.170"
    assert seed_spread_phrase(spread, "ica_novel_fraction", 500000) == "no SAE-seed spread in this build"
    assert seed_spread_phrase(None, "fvu", 500000) == "no SAE-seed spread in this build"
