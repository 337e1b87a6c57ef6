"""The causal stage's bad-input checks (one line, before compute) and its selection logic."""

import json

import numpy as np
import pytest

from darkmatter.causal.stage import IDENTITY_TOLERANCE, check_inputs, identity_check, load_inputs, pick_exact, top_k_shares
from darkmatter.config import CausalConfig, ConfigError, load_params
from darkmatter.errors import UserError


def test_a_direction_index_out_of_range_names_the_fix():
    with pytest.raises(UserError, match=r"causal.steer_components \[64\] out of range: the run has 64 ICA components"):
        check_inputs(CausalConfig(steer_components=(3, 64)), k=64, n_heldout_rows=100)


def test_too_few_heldout_rows_names_the_fix():
    with pytest.raises(UserError, match="exceeds the 10 held-out rows"):
        check_inputs(CausalConfig(attribution_rows=8, rows=8), k=64, n_heldout_rows=10)


def test_a_non_finite_alpha_fails_at_params_load(tmp_path):
    import yaml

    params = yaml.safe_load(open("params.yaml"))
    params["causal"]["steer_alphas"] = [-8.0, float("nan")]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="steering strengths must be finite"):
        load_params(path)


def test_a_run_without_ica_outputs_names_the_stage(tmp_path):
    class Args:
        components, examples, stats = tmp_path / "ica/components.npz", tmp_path / "examples.json", tmp_path / "stats.npz"

    class Run:
        name = "r"

    with pytest.raises(UserError, match=r"needs the run's ica outputs; run `dvc repro ica@r` first"):
        load_inputs(Args, Run)
    (tmp_path / "ica").mkdir()
    np.savez(Args.components, mixing=np.eye(2))
    Args.examples.write_text(json.dumps({"units": []}))
    with pytest.raises(UserError, match=r"residual@r"):
        load_inputs(Args, Run)


def test_pick_exact_takes_the_top_and_a_seeded_sample_of_the_rest():
    predicted = np.array([0.1, 5.0, 0.2, 3.0, 0.0, 0.3, 0.4])
    chosen = pick_exact(predicted, top=2, extra=2, seed=0)
    assert {1, 3} <= set(chosen) and len(chosen) == 4
    np.testing.assert_array_equal(chosen, pick_exact(predicted, top=2, extra=2, seed=0))


def test_top_k_shares_count_each_groups_units_among_the_top():
    scores = {"a": np.array([[9.0, 8.0], [0.0, 0.0]]), "b": np.array([[1.0, 0.0, 0.0], [5.0, 6.0, 7.0]])}
    shares = top_k_shares(scores, k=2)
    assert shares["a"]["per_row"] == [2, 0] and shares["b"]["per_row"] == [0, 2]
    assert shares["a"]["share_of_units"] == pytest.approx(0.4)


def test_one_subspace_in_two_bases_is_an_identity_check_not_a_bootstrap_test():
    rng = np.random.default_rng(0)
    loss = rng.gamma(2.0, 0.1, 64).astype(np.float32)
    rounding = loss * (1 + rng.choice([-1, 1], 64) * np.finfo(np.float32).eps)  # another basis: float32 rounding
    check = identity_check(loss, rounding)
    assert check["agree"] and "ci" not in check and 0 < check["max_abs_difference"] < 1e-6
    broken = loss.copy()
    broken[5] += 10 * IDENTITY_TOLERANCE  # an edit that removed something else on one row
    assert not identity_check(loss, broken)["agree"]
