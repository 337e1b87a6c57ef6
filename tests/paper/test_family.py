"""The family of verdict tests: collected once per test, adjusted by Benjamini-Hochberg, and a verdict
that is significant alone but not in its family is not worded as one."""

import numpy as np
import pytest

from darkmatter.paper.format import FAMILY, Family, ci_side, p_side, significant
from darkmatter.paper.provenance import RECORDER, Recorder, track


def _tests(ps: list[float]) -> list[dict]:
    token = RECORDER.set(Recorder())
    try:
        metrics = track({"tests": [{"difference": 0.1, "ci": [0.01, 0.2], "p_permutation": p} for p in ps]}, "m.json")
        return list(metrics["tests"])
    finally:
        RECORDER.reset(token)


def _sides(tests: list[dict], family: Family) -> list[str]:
    token = FAMILY.set(family)
    try:
        return [ci_side(t) for t in tests]
    finally:
        FAMILY.reset(token)


def test_benjamini_hochberg_by_hand():
    """p = (0.01, 0.02, 0.03, 0.5) in a family of 4: adjusted min_{j>=i} p_(j) m / j = (0.04, 0.04, 0.04, 0.5)."""
    tests = _tests([0.01, 0.02, 0.03, 0.5])
    collecting = Family()
    _sides(tests + tests[:1], collecting)  # the first test read twice: counted once
    family = collecting.adjusted()
    assert [round(adj, 12) for _, _, adj in family.members()] == [0.04, 0.04, 0.04, 0.5]
    assert [key for key, _, _ in family.members()][:1] == ["m.json: tests[0]"]


def test_a_verdict_significant_alone_is_not_in_a_family_of_nulls():
    """A planted difference with p = 0.02 and an interval above 0 is worded "above" on its own, and "neither"
    among 19 null tests (its adjusted p is 0.02 * 20 = 0.4); a strong one (p = 0.001) survives both."""
    tests = _tests([0.02, 0.001] + list(np.linspace(0.3, 0.9, 19)))
    alone = Family()
    assert _sides(tests[:2], alone) == ["above", "above"]
    crowd = Family()
    _sides(tests, crowd)
    assert _sides(tests[:2], crowd.adjusted()) == ["neither", "above"]


def test_p_side_and_significant_join_the_family():
    token = RECORDER.set(Recorder())
    try:
        m = track({"novel": {"p_more": 0.01, "p_fewer": 0.99}, "rank": {"p": 0.03}}, "n.json")
        novel, rank = m["novel"], m["rank"]
    finally:
        RECORDER.reset(token)
    collecting = Family()
    token = FAMILY.set(collecting)
    try:
        assert p_side(novel, "p_more", "p_fewer") == "high" and significant(rank, rank["p"])
    finally:
        FAMILY.reset(token)
    assert collecting.raw == {"n.json: novel": 0.02, "n.json: rank": 0.03}
    token = FAMILY.set(collecting.adjusted())
    try:  # two tests: adjusted (0.03, 0.03)
        assert p_side(novel, "p_more", "p_fewer") == "high" and significant(rank, rank["p"])
    finally:
        FAMILY.reset(token)


def test_a_test_the_first_pass_did_not_see_is_a_bug():
    seen, unseen = _tests([0.01, 0.02])
    collecting = Family()
    _sides([seen], collecting)
    with pytest.raises(ValueError, match="not in the family"):
        _sides([unseen], collecting.adjusted())
