"""params.yaml validation: bad input fails at load with one line naming the key and the fix."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from darkmatter.config import load_params, parse_params
from darkmatter.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((REPO / "params.yaml").read_text())


def _with(path: str, value):
    raw = copy.deepcopy(RAW)
    *parents, leaf = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[leaf] = value
    return raw


def test_repo_params_load():
    params = load_params(REPO / "params.yaml")
    assert params.model.name == "gemma-3-270m" and params.model.layer == 9
    assert {s.name for s in params.corpus.offline_sources} == {"python-docs", "linux-docs", "shakespeare"}


@pytest.mark.parametrize(
    "path, value, expected",
    [
        ("model.name", "gpt-5", "model.name: unknown model 'gpt-5'; allowed: gemma-3-270m, smollm2-135m"),
        ("model.layers", [18], "layer 18 out of range for gemma-3-270m; allowed: 0..17"),
        ("model.layers", [9, -1], "allowed: 0..17"),
        ("model.layers", [9, 9], "layers [9, 9] has duplicates"),
        ("model.layers", [], "model.layers: Tuple should have at least 1 item"),
        ("model.site", "mlp_out", "model.site: 'mlp_out' is not allowed; allowed: 'resid_pre' or 'resid_post'"),
        ("model.dtype", "int4", "model.dtype: 'int4' is not allowed"),
        ("activations.n_tokens", 0, "activations.n_tokens: Input should be greater than 0"),
        ("activations.n_tokens", -5, "activations.n_tokens"),
        ("activations.chunk_tokens", 1000, "chunk_tokens 1000 must be a multiple of context_length 128"),
        ("activations.store_dtype", "bfloat16", "allowed: 'float32' or 'float16'"),
        ("activations.n_tokns", 5, "activations.n_tokns: unknown key; allowed: context_length, n_tokens"),
        ("corpus.source", "web", "corpus.source: 'web' is not allowed; allowed: 'offline' or 'hf'"),
        ("corpus.offline_sources", [], "source is 'offline' but offline_sources is empty"),
        ("sae.sparsity", "tanh", "sae.sparsity: 'tanh' is not allowed; allowed: 'step' or 'quadratic'"),
        ("sae.sparsity", "quadratic", "sparsity 'quadratic' needs target_l0"),
        ("sae.target_l0", 10**6, "target_l0 1000000.0 exceeds width 4096"),
        ("sae.width", 0, "sae.width: Input should be greater than 0"),
        ("sae.heldout_fraction", 1.0, "sae.heldout_fraction: Input should be less than 1"),
        ("sae.optimiser", "sgd", "sae.optimiser: unknown key; allowed: width, sparsity"),
        ("sae_sweep.l0_coefficients", [], "sae_sweep.l0_coefficients: Tuple should have at least 1 item"),
        ("sae_sweep.l0_coefficients", [0.001, -1], "sae_sweep.l0_coefficients.1: Input should be greater than 0"),
    ],
)
def test_bad_params_fail_with_one_line(path, value, expected):
    with pytest.raises(ConfigError) as info:
        parse_params(_with(path, value))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_layer_range_follows_the_model():
    params = parse_params(_with("model", {"name": "smollm2-135m", "layers": [29, 3]}))
    assert params.model.layer == 29, "the first listed layer is the main layer"
    with pytest.raises(ConfigError, match="allowed: 0..29"):
        parse_params(_with("model", {"name": "smollm2-135m", "layers": [30]}))


def test_stage_layer_must_be_listed():
    model = parse_params(_with("model.layers", [9, 4])).model
    assert model.check_layer(4) == 4
    with pytest.raises(ConfigError, match=r"layer 5 is not in model.layers \[9, 4\]; add it there"):
        model.check_layer(5)


def test_bf16_on_cpu_is_refused():
    with pytest.raises(ConfigError, match="use float32 on cpu"):
        parse_params(_with("model", {"name": "gemma-3-270m", "device": "cpu", "dtype": "bfloat16"}))


@pytest.mark.parametrize(
    "module, args",
    [("darkmatter.activations", ["--out", "acts", "--metrics", "m.json"]), ("darkmatter.models", [])],
)
def test_stage_cli_fails_fast_on_bad_params(tmp_path, module, args):
    """The stage exits 2 with a single `error:` line before loading any model."""
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(_with("model.layers", [99])))
    proc = subprocess.run(
        [sys.executable, "-m", module, "--params", str(bad), *args],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"error: {bad}: model: layer 99 out of range for gemma-3-270m; allowed: 0..17"]
