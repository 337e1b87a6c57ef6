"""Pretrained SAEs from the Hugging Face Hub (the model ladder), loaded by SAELens, offline-safe.

A run with ``sae: {source: pretrained, release, sae_id}`` gets its SAE from
``SAE.from_pretrained(release, sae_id)`` in the ``sae`` stage (:mod:`darkmatter.sae.build`),
saved in SAELens's disk format so every downstream stage treats pretrained and self-trained
SAEs alike. :func:`check_pretrained_fits` reads only the SAE's config (no weights) and runs in
the activations stage before any forward pass, so an SAE that does not fit the run's hook or
width fails before compute.

Release lookups read SAELens's ``pretrained_saes.yaml`` directly (no ``import sae_lens``, which
takes ~13 s), so the validate stage checks every run's release and SAE id, and the model
kwargs the release asks for, before any stage runs; a typo gets the close matches.

**Offline loading (air-gapped GPU clusters).** SAELens 6.54's Gemma Scope 2 loader
(``get_gemma_3_config_from_hf``) reads tensor shapes with ``get_safetensors_tensor_shapes``,
which makes raw HTTP range requests to the Hub even when ``params.safetensors`` is already in
the HF cache, so ``HF_HUB_OFFLINE=1`` with a full cache fails. :func:`gemma_3_loader` is the
``converter`` we pass to ``from_pretrained`` instead: it is SAELens's own loader with that one
function replaced, for the duration of the call only, by :func:`cached_shapes`, which reads
the header of the file ``hf_hub_download`` returns (from the cache offline; downloaded online,
where the loader needs the file next anyway). Everything else (config, hook names, weight
renaming) stays SAELens's code. Rewriting the config builder instead would fork ~100 lines.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib.util
from pathlib import Path
from unittest import mock

from darkmatter.errors import ConfigError, UserError


@functools.cache
def sae_directory() -> dict:
    """SAELens's release directory (``pretrained_saes.yaml``), read without importing sae_lens."""
    import yaml

    found = importlib.util.find_spec("sae_lens")
    if found is None or not found.submodule_search_locations:
        raise UserError("the sae-lens package is missing; run scripts/setup.sh")
    path = Path(next(iter(found.submodule_search_locations))) / "pretrained_saes.yaml"
    with path.open() as fh:
        return yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _close(word: str, options: list[str]) -> str:
    near = difflib.get_close_matches(word, options, n=5, cutoff=0.6)
    return f"close matches: {', '.join(near)}" if near else f"{len(options)} exist, none close"


def release_entry(release: str, sae_id: str) -> tuple[dict, dict]:
    """The release and SAE entries of the directory; a one-line error with close matches if absent."""
    directory = sae_directory()
    if release not in directory:
        raise ConfigError(f"unknown SAELens release {release!r}; {_close(release, list(directory))}")
    saes = {s["id"]: s for s in directory[release]["saes"]}
    if sae_id not in saes:
        raise ConfigError(f"release {release!r} has no SAE {sae_id!r}; {_close(sae_id, list(saes))}")
    return directory[release], saes[sae_id]


def release_model_kwargs(release: str, sae_id: str) -> dict:
    """``HookedTransformer.from_pretrained`` kwargs the release says its SAEs need."""
    entry, _ = release_entry(release, sae_id)
    return dict((entry.get("config_overrides") or {}).get("model_from_pretrained_kwargs") or {})


def download_hint(repo_id: str, folder: str) -> str:
    return f"hf download {repo_id} --include '{folder}/*'"


def cached_shapes(repo_id: str, filename: str) -> dict[str, list[int]]:
    """Tensor shapes from the safetensors header of the cached (or downloaded) file."""
    from huggingface_hub import hf_hub_download
    from safetensors import safe_open

    with safe_open(hf_hub_download(repo_id, filename), framework="pt") as fh:
        return {name: list(fh.get_slice(name).get_shape()) for name in fh.keys()}  # noqa: SIM118


def gemma_3_loader(**kwargs):
    """SAELens's Gemma Scope 2 loader, reading tensor shapes from the cached file (module docstring)."""
    from sae_lens.loading import pretrained_sae_loaders as loaders

    with mock.patch.object(loaders, "get_safetensors_tensor_shapes", cached_shapes):
        return loaders.gemma_3_sae_huggingface_loader(**kwargs)


def load_pretrained_sae(release: str, sae_id: str, device: str = "cpu"):
    """``SAE.from_pretrained`` (float32), offline-safe; missing files give one line with the fix."""
    entry, sae = release_entry(release, sae_id)
    from sae_lens import SAE

    converter = gemma_3_loader if entry.get("conversion_func") == "gemma_3" else None
    with _offline_errors(release, sae_id):
        return SAE.from_pretrained(release, sae_id, device=device, dtype="float32", converter=converter)


@contextlib.contextmanager
def _offline_errors(release: str, sae_id: str):
    """A file in neither the HF cache nor reachable becomes one line naming the download command."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    entry, sae = release_entry(release, sae_id)
    try:
        yield
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise UserError(
            f"SAE {release}/{sae_id} is not in the HF cache and the Hub cannot be reached; on a machine with "
            f"access run `{download_hint(entry['repo_id'], sae['path'])}` and copy the HF cache over "
            "(HF_HUB_CACHE), or unset HF_HUB_OFFLINE"
        ) from None


def check_fits(hook: str | None, d_in: int, run, d_model: int) -> None:
    """An SAE reading ``hook`` with width ``d_in`` fits ``run``, or one line saying what differs."""
    src = run.sae_source
    if hook != run.hook_name:
        raise UserError(f"SAE {src.release}/{src.sae_id} reads {hook} but the run says {run.hook_name}; "
                        f"fix the layer/site of run_definitions.{run.name}.subject")
    if d_in != d_model:
        raise UserError(f"SAE {src.release}/{src.sae_id} has d_in {d_in} but {run.model.name} has d_model "
                        f"{d_model}; the SAE belongs to another model")


def check_pretrained_fits(run) -> None:
    """Check a run's pretrained SAE against its hook and model width from configs alone (no weights)."""
    from sae_lens.loading import pretrained_sae_loaders as loaders

    from darkmatter.data.models import hub_config

    src = run.sae_source
    with _offline_errors(src.release, src.sae_id), mock.patch.object(loaders, "get_safetensors_tensor_shapes", cached_shapes):
        cfg = loaders.load_sae_config_from_huggingface(src.release, src.sae_id)
    hook = cfg.get("hook_name") or (cfg.get("metadata") or {}).get("hook_name")
    check_fits(hook, cfg["d_in"], run, hub_config(run.model.name).d_model)


def release_kwargs_problem(run) -> str | None:
    """Why a run's ``subject.from_pretrained_kwargs`` differ from what its release asks for, or None."""
    src = run.sae_source
    wanted = release_model_kwargs(src.release, src.sae_id)
    if dict(run.subject.from_pretrained_kwargs) != wanted:
        return (f"run_definitions.{run.name}.subject.from_pretrained_kwargs is "
                f"{dict(run.subject.from_pretrained_kwargs)} but release {src.release} loads its model with {wanted}; "
                "set them to match (the SAE only fits the model processed the way it was trained on)")
    return None
