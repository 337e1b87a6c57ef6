"""params.yaml validation: bad input fails at load with one line naming the key and the fix."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from darkmatter.config import load_params, parse_params
from darkmatter.errors import ConfigError

RAW = yaml.safe_load((REPO / "params.yaml").read_text())
MAIN = "run_definitions.gemma-3-270m-l9"


def _with(path: str, value):
    raw = copy.deepcopy(RAW)
    *parents, leaf = path.replace(MAIN, "run_definitions/gemma-3-270m-l9").split(".")
    node = raw
    for key in parents:
        for part in key.split("/"):
            node = node[part]
    node[leaf] = value
    return raw


def test_repo_params_load():
    params = load_params(REPO / "params.yaml")
    main = params.main
    assert (main.name, main.model.name, main.layer, main.context_length) == ("gemma-3-270m-l9", "gemma-3-270m", 9, 128)
    assert main.sae_source.source == "train" and main.corpus.kind == "offline"
    assert {s.name for s in main.corpus.sources} == {"python-docs", "linux-docs", "shakespeare"}
    assert main.ica == params.ica, "the cpu profile overrides nothing"


@pytest.mark.parametrize(
    "path, value, expected",
    [
        (f"{MAIN}.subject.model", "gpt-5", f"{MAIN}.subject.model: unknown model 'gpt-5'; allowed: gemma-3-270m, gemma-3-270m-random, smollm2-135m"),
        (f"{MAIN}.subject.layer", 18, "layer 18 out of range for gemma-3-270m; allowed: 0..17"),
        (f"{MAIN}.subject.layer", -1, f"{MAIN}.subject.layer: Input should be greater than or equal to 0"),
        (f"{MAIN}.subject.site", "mlp_out", "subject.site: 'mlp_out' is not allowed; allowed: 'resid_pre' or 'resid_post'"),
        (f"{MAIN}.subject.dtype", "int4", "subject.dtype: 'int4' is not allowed"),
        (f"{MAIN}.subject.lyer", 9, f"{MAIN}.subject.lyer: unknown key; allowed: model, layer, site"),
        (f"{MAIN}.data.corpus", "web", f"{MAIN}.data.corpus: 'web' is not in corpora; allowed: offline, openwebtext"),
        (f"{MAIN}.sae", {"source": "pretrained"}, "a pretrained SAE needs release and sae_id"),
        (f"{MAIN}.sizes", {"ica": {}}, f"{MAIN}.sizes.activations: Field required; name every section ({{}} for none)"),
        (f"{MAIN}.sizes.ica", {"seeds": 0}, f"{MAIN}.sizes.ica: seeds: Input should be greater than 0"),
        (f"{MAIN}.sizes.ica", {"sedes": 3}, f"{MAIN}.sizes.ica: sedes: unknown key; allowed: target, n_components"),
        ("runs", [], "runs: Tuple should have at least 1 item"),
        ("runs", ["gemma-3-270m-l9", "gemma-3-270m-l9"], "runs: ['gemma-3-270m-l9', 'gemma-3-270m-l9'] has duplicates"),
        ("main_run", "gpt2-small", "main_run: 'gpt2-small' is not in runs ['gemma-3-270m-l9']; add it there"),
        ("activations.n_tokens", 0, "activations.n_tokens: Input should be greater than 0"),
        ("activations.chunk_tokens", 1000, "activations.chunk_tokens 1000 must be a multiple of data.context_length 128"),
        ("activations.store_dtype", "bfloat16", "allowed: 'float32' or 'float16'"),
        ("activations.n_tokns", 5, "activations.n_tokns: unknown key; allowed: n_tokens, chunk_tokens"),
        ("corpora.offline.kind", "web", "corpora.offline.kind: 'web' is not allowed; allowed: 'offline' or 'hub'"),
        ("corpora.offline.sources", [], "an offline corpus needs sources and no dataset"),
        ("corpus.min_chars", 5000, "min_chars must be smaller than max_chars"),
        ("sae.sparsity", "tanh", "sae.sparsity: 'tanh' is not allowed; allowed: 'step' or 'quadratic'"),
        ("sae.sparsity", "quadratic", "sparsity 'quadratic' needs target_l0"),
        ("sae.target_l0", 10**6, "target_l0 1000000.0 exceeds width 4096"),
        ("sae.width", 0, "sae.width: Input should be greater than 0"),
        ("sae.heldout_fraction", 1.0, "sae.heldout_fraction: Input should be less than 1"),
        ("sae.optimiser", "sgd", "sae.optimiser: unknown key; allowed: width, sparsity"),
        ("ica.backend", "foo", "ica.backend: 'foo' is not allowed; allowed: 'picard', 'python-picard' or 'fastica'"),
        ("sae.curve_tokens", [2000000], "curve_tokens [2000000] not below train_tokens"),
        ("sae.l0_warm_up_tokens", 5000000, "l0_warm_up_tokens 5000000 exceeds train_tokens"),
        ("sae_axes.points", {"wide": {"width": 8192}}, "sae_axes: points: none is the reference ({})"),
        ("sae_axes.points", {"reference": {}, "both": {"width": 1024, "l0_coefficient": 1e-3}},
         "points.both: {'width': 1024, 'l0_coefficient': 0.001} must change one of l0_coefficient, width"),
        ("sae_axes.points", {"reference": {}, "s": {"seed": 1}}, "the seed axis is sae_axes.seeds"),
        ("sae_axes.points", {"reference": {}, "seed-1": {"width": 1024}}, "['seed-1'] is also the name of a seed-axis SAE"),
        ("sae_axes.seeds", [1, 1, 2], "seeds: [1, 1, 2] repeats a seed"),
        ("sae_axes.seeds", [0, 1, 2], "sae_axes.seeds: 0 is sae.seed, the main SAE's own"),
        ("sae_axes.chain", ["reference", "nope"], "chain: ['nope'] are not points or seeds"),
        ("causal.edit_spaces", ["r", "r"], "causal.edit_spaces: ['r', 'r'] repeats a space"),
        ("causal.edit_spaces", ["y"], "causal.edit_spaces.0: 'y' is not allowed; allowed: 'r' or 'x'"),
        ("sae_axes.chain_ica", ["l0-1e-3"], "chain_ica: ['l0-1e-3'] are not in chain"),
        ("sae_axes.train_tokens", 50000, "sae_axes.points.reference (with sae_axes.train_tokens): l0_warm_up_tokens 200000 "
         "exceeds train_tokens 50000"),
    ],
)
def test_bad_params_fail_with_one_line(path, value, expected):
    with pytest.raises(ConfigError) as info:
        parse_params(_with(path, value))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_layer_range_follows_the_model():
    raw = _with(f"{MAIN}.subject", {"model": "smollm2-135m", "layer": 29})
    assert parse_params(raw).main.layer == 29
    with pytest.raises(ConfigError, match="allowed: 0..29"):
        parse_params(_with(f"{MAIN}.subject", {"model": "smollm2-135m", "layer": 30}))


def test_bf16_on_cpu_is_refused():
    with pytest.raises(ConfigError, match="use float32 on cpu"):
        parse_params(_with(f"{MAIN}.subject", {"model": "gemma-3-270m", "layer": 9, "device": "cpu", "dtype": "bfloat16"}))


def test_a_run_merges_its_sizes_over_the_sections():
    raw = _with(f"{MAIN}.sizes", {**RAW["size_profiles"]["cpu"], "ica": {"max_tokens": 1000}})
    params = parse_params(raw)
    assert params.main.ica.max_tokens == 1000 and params.ica.max_tokens == 65536
    assert params.main.ica.seeds == params.ica.seeds, "what the override does not name comes from the section"


def test_an_unknown_run_is_one_line():
    with pytest.raises(ConfigError, match="run 'nope' is not defined in run_definitions; allowed: gemma-3-270m-l9"):
        load_params(REPO / "params.yaml").run("nope")


@pytest.mark.parametrize(
    "module, args",
    [("darkmatter.data.activations", ["--corpus", "c", "--weights", "w", "--out", "acts", "--metrics", "m.json"]),
     ("darkmatter.data.models", ["--out", "m"]), ("darkmatter.validate", ["--out", "ok"])],
)
def test_stage_cli_fails_fast_on_bad_params(tmp_path, module, args):
    """The stage exits 2 with a single `error:` line before loading any model."""
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(_with(f"{MAIN}.subject.layer", 99)))
    proc = subprocess.run(
        [sys.executable, "-m", module, "--params", str(bad), *(["--run", "gemma-3-270m-l9"] if module != "darkmatter.validate" else []),
         *args],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"error: {bad}: {MAIN}.subject: layer 99 out of range for gemma-3-270m; allowed: 0..17"]
    assert not (tmp_path / "ok").exists()


# ---- sizes against data (the validate stage) ----------------------------------------------------

def test_every_run_definition_fits_its_cache():
    """Listed or not: a ladder row's sizes are checked before its chain starts."""
    from darkmatter.validate import check_sizes, size_problem

    params = load_params(REPO / "params.yaml")
    assert {name: size_problem(params.run(name)) for name in params.run_definitions} == dict.fromkeys(params.run_definitions)
    check_sizes(params, "params.yaml")


@pytest.mark.parametrize("section, overrides, expected", [
    # the audit's finding: 64 + 64 causal rows against the 102 held-out rows of 1,024 rows of context 1,024
    ("causal", {"attribution_rows": 64, "rows": 64},
     r"run gemma-3-270m-gs2-16k: causal.attribution_rows \+ causal.rows = 128 exceeds the 102 held-out rows; lower them"),
    ("sae_eval", {"lm_rows": 103}, r"run gemma-3-270m-gs2-16k: sae_eval.lm_rows 103 exceeds the 102 held-out rows"),
    # GPT-2 small, the first `*full` row, at its context 128: 8,192 rows, 819 held out
    ("probes", {"n_tokens": 1048576}, r"run gpt2-small: probes.n_tokens asks for 6554 training and 1638 validation rows, "
                                      r"but the cache has 7373 train and 819 held-out rows; lower probes.n_tokens"),
    ("ica", {"max_tokens": 400000}, r"run gpt2-small: ica.max_tokens 400000 .* asks 1200000 train tokens, "
                                    r"the train rows hold at most 943744; lower ica.max_tokens"),
])
def test_a_size_the_cache_cannot_hold_is_one_line(section, overrides, expected):
    from darkmatter.validate import check_sizes

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["size_profiles"]["full"][section] = {**raw["size_profiles"]["full"][section], **overrides}  # every `*full` row
    with pytest.raises(ConfigError, match=expected) as info:
        check_sizes(parse_params(raw), "params.yaml")
    assert "\n" not in str(info.value)


def test_dtype_auto_is_bfloat16_on_cuda_and_float32_on_cpu():
    from darkmatter.data.models import resolve_dtype

    params = load_params(REPO / "params.yaml")
    gemma_rows = [n for n, d in params.run_definitions.items() if d.subject.model.startswith("google/gemma")]
    assert gemma_rows and all(params.run_definitions[n].subject.dtype == "auto" for n in gemma_rows)
    assert resolve_dtype("auto", "cuda") == "bfloat16" and resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("float32", "cuda") == "float32"
    parse_params(_with(f"{MAIN}.subject.dtype", "auto"))  # allowed on any device: float32 where there is no GPU
