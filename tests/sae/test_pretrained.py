"""Pretrained SAEs (the hub ladder): run definitions checked against SAELens's directory, the real SAELens loaders on
a hand-made HF cache with HF_HUB_OFFLINE=1 (including the Gemma Scope 2 offline fix), and one-line
errors for what a user can get wrong."""

import dataclasses
import re

import pytest
import torch
import yaml
from conftest import REPO
from hub_fixtures import gemma_scope_2_sae, jb_sae, tiny_gpt2

from darkmatter.config import load_params
from darkmatter.errors import ConfigError, UserError
from darkmatter.sae.pretrained import check_fits, check_pretrained_fits, load_pretrained_sae, release_entry
from darkmatter.validate import check_runs


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty HF hub cache that huggingface_hub (hence SAELens) reads, offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _params_with(tmp_path, edit):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_every_pretrained_run_names_a_real_saelens_sae_at_its_hook():
    params = load_params(REPO / "params.yaml")
    assert params.runs == ("gemma-3-270m-l9",), "the default pipeline runs no hub row"
    pretrained = {name: d for name, d in params.run_definitions.items() if d.sae.source == "pretrained"}
    assert {"gpt2-small", "gemma-3-1b-16k", "gemma-3-1b-262k", "gemma-3-4b-262k", "gemma-2-2b-l20"} <= set(pretrained)
    for name, d in pretrained.items():
        release, sae = release_entry(d.sae.release, d.sae.sae_id)
        if release.get("conversion_func") == "gemma_3":  # hook comes from the folder: resid_post/layer_N_...
            assert sae["path"].startswith(f"{d.subject.site}/layer_{d.subject.layer}_"), name
            assert release["model"].replace("google/", "") in d.subject.model, name
        elif release.get("conversion_func") == "gemma_2":  # Gemma Scope 1 residual SAEs: layer_N/width_.../..., resid_post
            assert sae["path"].startswith(f"layer_{d.subject.layer}/") and d.subject.site == "resid_post", name
            assert release["model"] in d.subject.model, name
        else:  # jb: the id is the hook
            assert d.sae.sae_id == d.subject.hook_name, name
    assert pretrained["gpt2-small"].subject.site == "resid_pre", "jb SAEs read resid_pre, not resid_post"
    assert pretrained["gemma-3-4b-262k"].subject.layer == 17, "medium-L0 4B SAEs exist at 9/17/22/29 only"
    assert pretrained["gemma-3-12b-262k"].planned
    check_runs(params, "params.yaml")  # releases, ids and model kwargs all agree with SAELens's directory


def test_a_run_brings_its_model_kwargs_and_full_sizes():
    params = load_params(REPO / "params.yaml")
    default, gpt2 = params.main, params.run("gpt2-small")
    assert (gpt2.model.name, gpt2.layer, gpt2.subject.site) == ("gpt2", 6, "resid_pre")
    assert gpt2.subject.from_pretrained_kwargs == {"center_writing_weights": True}
    assert gpt2.corpus.kind == "hub" and gpt2.corpus.dataset == "Skylion007/openwebtext"
    assert gpt2.activations.n_tokens == params.size_profiles["full"].activations["n_tokens"] > default.activations.n_tokens
    assert gpt2.autointerp.n_random_units == 200 and gpt2.ica.target == default.ica.target
    gemma = params.run("gemma-3-1b-262k")
    assert gemma.subject.from_pretrained_kwargs == {} and gemma.context_length == 1024
    assert gemma.corpus.data_dir == "sample/10BT"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: r["run_definitions"]["gpt2-small"]["sae"].update(release="gemma-scope-2-1b-pt-re"),
     r"run_definitions.gpt2-small.sae: unknown SAELens release 'gemma-scope-2-1b-pt-re'; close matches: gemma-scope-2-1b-pt-res"),
    (lambda r: r["run_definitions"]["gpt2-small"]["sae"].update(sae_id="blocks.6.hook_resid_post"),
     r"release 'gpt2-small-res-jb' has no SAE 'blocks.6.hook_resid_post'; close matches: .*blocks.6.hook_resid_pre"),
    (lambda r: r["run_definitions"]["gpt2-small"]["subject"].update(from_pretrained_kwargs={}),
     r"from_pretrained_kwargs is \{\} but release gpt2-small-res-jb loads its model with \{'center_writing_weights': True\}"),
])
def test_the_validate_stage_checks_releases_ids_and_model_kwargs(tmp_path, edit, message):
    path = _params_with(tmp_path, edit)
    with pytest.raises(ConfigError, match=message) as info:
        check_runs(load_params(path), str(path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: r.update(runs=["gemma-3-270m-l9", "gpt2-smal"]), "runs: 'gpt2-smal' is not defined in run_definitions; allowed: .*gpt2-small"),
    (lambda r: r.update(runs=["gemma-3-270m-l9", "gemma-3-12b-262k"]), "is planned only"),
    (lambda r: r["run_definitions"]["gpt2-small"]["subject"].update(layer=12),
     r"run_definitions.gpt2-small.subject: layer 12 out of range for gpt2; allowed: 0..11"),
    (lambda r: r["run_definitions"]["gpt2-small"]["subject"].update(model="gemma-3-270m"), "a pretrained SAE needs a hub model"),
])
def test_bad_run_switch_is_one_line(tmp_path, edit, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_params(_params_with(tmp_path, edit))
    assert "\n" not in str(info.value)


def test_gemma_scope_2_loads_offline_from_the_cache_only_with_our_converter(hf_cache, monkeypatch):
    """SAELens's own loader makes raw HTTP range requests even offline (the bug); ours reads the cache."""
    import requests
    from sae_lens import SAE

    folder = gemma_scope_2_sae(hf_cache, d_in=64, d_sae=128)
    requested = []

    def no_network(url, **kwargs):
        requested.append(url)
        raise requests.ConnectionError("no network")

    monkeypatch.setattr(requests, "get", no_network)
    with pytest.raises(requests.ConnectionError):
        SAE.from_pretrained("gemma-scope-2-270m-pt-res", "layer_9_width_16k_l0_medium")
    assert requested and "params.safetensors" in requested[0], "SAELens went to the network for the shapes"

    requested.clear()
    sae = load_pretrained_sae("gemma-scope-2-270m-pt-res", "layer_9_width_16k_l0_medium")
    assert not requested, "nothing left the machine"
    assert type(sae).__name__ == "JumpReLUSAE" and sae.cfg.d_in == 64 and sae.cfg.d_sae == 128
    assert sae.cfg.metadata.hook_name == "blocks.9.hook_resid_post"
    from safetensors.torch import load_file

    raw = load_file(folder / "params.safetensors")
    assert torch.equal(sae.W_dec, raw["w_dec"]) and torch.equal(sae.threshold, raw["threshold"])


def test_jb_release_loads_offline_with_its_model_kwargs(hf_cache):
    jb_sae(hf_cache, d_in=48, d_sae=96)
    sae = load_pretrained_sae("gpt2-small-res-jb", "blocks.6.hook_resid_pre")
    assert type(sae).__name__ == "StandardSAE" and (sae.cfg.d_in, sae.cfg.d_sae) == (48, 96)
    assert sae.cfg.metadata.hook_name == "blocks.6.hook_resid_pre"
    assert sae.cfg.metadata.model_from_pretrained_kwargs == {"center_writing_weights": True}


def test_no_cache_and_no_network_says_what_to_download(hf_cache):
    with pytest.raises(UserError) as info:
        load_pretrained_sae("gemma-scope-2-1b-pt-res", "layer_13_width_262k_l0_medium")
    message = str(info.value)
    assert "hf download google/gemma-scope-2-1b-pt --include 'resid_post/layer_13_width_262k_l0_medium/*'" in message
    assert "\n" not in message


def test_an_sae_that_does_not_fit_the_run_fails_before_compute(hf_cache):
    """check_pretrained_fits reads configs only (no SAE weights, no model weights): the activations
    stage calls it before its first forward pass."""
    jb_sae(hf_cache, d_in=48, d_sae=96)
    tiny_gpt2(hf_cache, d_model=64)
    params = load_params(REPO / "params.yaml")
    run = params.run("gpt2-small")
    with pytest.raises(UserError, match=re.escape("has d_in 48 but gpt2 has d_model 64")):
        check_pretrained_fits(run)
    check_fits("blocks.6.hook_resid_pre", 48, run, 48)
    moved = dataclasses.replace(run, subject=dataclasses.replace(run.subject, layer=7))
    with pytest.raises(UserError, match=re.escape("reads blocks.6.hook_resid_pre but the run says blocks.7.hook_resid_pre")):
        check_fits("blocks.6.hook_resid_pre", 48, moved, 48)


def test_a_hub_model_or_dataset_missing_offline_is_one_line(hf_cache):
    from darkmatter.data.corpus.hub import dataset_location
    from darkmatter.data.models import load_subject

    with pytest.raises(UserError, match=r"cannot load gpt2 from the Hub or the HF cache .*run `hf download gpt2`") as info:
        load_subject("gpt2", device="cpu")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=re.escape(
            "run `hf download HuggingFaceFW/fineweb --repo-type dataset --include 'sample/10BT/*'`")):
        dataset_location("HuggingFaceFW/fineweb", "sample/10BT")
