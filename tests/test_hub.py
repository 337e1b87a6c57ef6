"""The hub ladder: run definitions checked against SAELens's directory, the real SAELens loaders on
a hand-made HF cache with HF_HUB_OFFLINE=1 (including the Gemma Scope 2 offline fix), and one-line
errors for what a user can get wrong."""

import re

import pytest
import torch
import yaml
from conftest import REPO
from hub_fixtures import gemma_scope_2_sae, jb_sae

from darkmatter.config import load_params
from darkmatter.errors import ConfigError, UserError
from darkmatter.hub import check_fits, load_pretrained_sae, release_entry


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


def test_every_ladder_definition_names_a_real_saelens_sae_at_its_hook():
    ladder = load_params(REPO / "params.yaml").ladder
    assert ladder.runs == (), "the default pipeline runs no ladder row"
    assert {"gpt2-small", "gemma-3-1b-16k", "gemma-3-1b-262k", "gemma-3-4b-262k"} <= set(ladder.definitions)
    for name, run in ladder.definitions.items():
        release, sae = release_entry(run.release, run.sae_id)
        if release.get("conversion_func") == "gemma_3":  # hook comes from the folder: resid_post/layer_N_...
            assert sae["path"].startswith(f"{run.site}/layer_{run.layer}_"), name
            assert release["model"].replace("google/", "") in run.model, name
        else:  # jb: the id is the hook
            assert run.sae_id == f"blocks.{run.layer}.hook_{run.site}", name
    assert ladder.definitions["gpt2-small"].site == "resid_pre", "jb SAEs read resid_pre, not resid_post"
    assert ladder.definitions["gemma-3-4b-262k"].layer == 17, "medium-L0 4B SAEs exist at 9/17/22/29 only"
    assert ladder.definitions["gemma-3-12b-262k"].planned


def test_run_params_bring_the_release_model_kwargs_and_full_sizes():
    default = load_params(REPO / "params.yaml")
    gpt2 = load_params(REPO / "params.yaml", run="gpt2-small")
    assert gpt2.model.name == "gpt2" and gpt2.model.layers == (6,) and gpt2.model.site == "resid_pre"
    assert gpt2.model.from_pretrained_kwargs == {"center_writing_weights": True}
    assert gpt2.corpus.source == "hf" and gpt2.corpus.hf.dataset == "Skylion007/openwebtext"
    assert gpt2.activations.n_tokens == default.ladder.overrides["activations"]["n_tokens"] > default.activations.n_tokens
    assert gpt2.autointerp.max_baseline_units == 200 and gpt2.ica.target == default.ica.target
    gemma = load_params(REPO / "params.yaml", run="gemma-3-1b-262k")
    assert gemma.model.from_pretrained_kwargs == {} and gemma.activations.context_length == 1024
    assert gemma.corpus.hf.data_dir == "sample/10BT"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: r["ladder"]["definitions"]["gpt2-small"].update(release="gemma-scope-2-1b-pt-re"),
     r"unknown SAELens release 'gemma-scope-2-1b-pt-re'; close matches: gemma-scope-2-1b-pt-res"),
    (lambda r: r["ladder"]["definitions"]["gpt2-small"].update(sae_id="blocks.6.hook_resid_post"),
     r"release 'gpt2-small-res-jb' has no SAE 'blocks.6.hook_resid_post'; close matches: .*blocks.6.hook_resid_pre"),
])
def test_unknown_release_or_sae_id_lists_close_matches(tmp_path, edit, message):
    path = _params_with(tmp_path, edit)
    with pytest.raises(ConfigError, match=message):
        load_params(path, run="gpt2-small")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: r["ladder"].update(runs=["gpt2-smal"]), "runs: 'gpt2-smal' is not defined; allowed: .*gpt2-small"),
    (lambda r: r["ladder"].update(runs=["gemma-3-12b-262k"]), "is planned only"),
    (lambda r: r["ladder"]["definitions"]["gpt2-small"].update(layer=12), r"layer 12 out of range for gpt2; allowed: 0..11"),
    (lambda r: r["ladder"]["definitions"]["gpt2-small"].update(model="gemma-3-270m"), "is not a hub model"),
])
def test_bad_ladder_switch_is_one_line(tmp_path, edit, message):
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
    jb_sae(hf_cache, d_in=48, d_sae=96)
    sae = load_pretrained_sae("gpt2-small-res-jb", "blocks.6.hook_resid_pre")
    run = load_params(REPO / "params.yaml").ladder.definitions["gpt2-small"]
    with pytest.raises(UserError, match=re.escape("has d_in 48 but gpt2 has d_model 768")):
        check_fits(sae, run, 768)
    check_fits(sae, run, 48)
    moved = run.__class__(**{**run.__dict__, "layer": 7})
    with pytest.raises(UserError, match=re.escape("reads blocks.6.hook_resid_pre but the run says blocks.7.hook_resid_pre")):
        check_fits(sae, moved, 48)


def test_a_hub_model_or_dataset_missing_offline_is_one_line(hf_cache):
    from darkmatter.corpus import dataset_location
    from darkmatter.models import load_subject

    with pytest.raises(UserError, match=r"cannot load gpt2 from the Hub or the HF cache .*run `hf download gpt2`") as info:
        load_subject("gpt2", device="cpu")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=re.escape(
            "run `hf download HuggingFaceFW/fineweb --repo-type dataset --include 'sample/10BT/*'`")):
        dataset_location("HuggingFaceFW/fineweb", "sample/10BT")
