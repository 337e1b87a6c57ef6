"""Pretrained SAEs from the Hugging Face Hub for the model ladder, loaded by SAELens, offline-safe.

The ``ladder_sae`` stage loads a run's SAE with ``SAE.from_pretrained(release, sae_id)``, checks
that it fits the run (its hook, and ``d_in`` against the model's config, no weights loaded)
before anything is computed (the activations stage waits for it), and saves it in SAELens's
disk format, so every downstream stage treats pretrained and self-trained SAEs alike
(``SAE.load_from_disk``).

Release lookups read SAELens's ``pretrained_saes.yaml`` directly (no ``import sae_lens``, which
takes ~13 s), so a typo'd release or SAE id fails at params load with the close matches.

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

import argparse
import difflib
import functools
import importlib.util
import json
from pathlib import Path
from unittest import mock

from darkmatter.errors import ConfigError, UserError, cli


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
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    entry, sae = release_entry(release, sae_id)
    from sae_lens import SAE

    converter = gemma_3_loader if entry.get("conversion_func") == "gemma_3" else None
    try:
        return SAE.from_pretrained(release, sae_id, device=device, dtype="float32", converter=converter)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise UserError(
            f"SAE {release}/{sae_id} is not in the HF cache and the Hub cannot be reached; on a machine with "
            f"access run `{download_hint(entry['repo_id'], sae['path'])}` and copy the HF cache over "
            "(HF_HUB_CACHE), or unset HF_HUB_OFFLINE"
        ) from None


def check_fits(sae, run, d_model: int) -> None:
    """The SAE reads the run's hook and the model's width, or one line saying what differs."""
    expected = f"blocks.{run.layer}.hook_{run.site}"
    hook = sae.cfg.metadata.hook_name
    if hook != expected:
        raise UserError(f"SAE {run.release}/{run.sae_id} reads {hook} but the run says {expected}; "
                        "fix the run's layer/site in ladder.definitions")
    if sae.cfg.d_in != d_model:
        raise UserError(f"SAE {run.release}/{run.sae_id} has d_in {sae.cfg.d_in} but {run.model} has d_model "
                        f"{d_model}; the SAE belongs to another model")


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import load_params
    from darkmatter.models import hub_config, sha256_file

    parser = argparse.ArgumentParser(description="Load a ladder run's pretrained SAE (SAELens) and save it to disk.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--run", required=True, help="a name in ladder.definitions")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args(argv)
    params = load_params(args.params, run=args.run)  # validates the run and its release first
    run = params.ladder.definitions[args.run]
    sae = load_pretrained_sae(run.release, run.sae_id)
    check_fits(sae, run, hub_config(run.model).d_model)
    args.out.mkdir(parents=True, exist_ok=True)
    sae.save_model(str(args.out))
    entry, info = release_entry(run.release, run.sae_id)
    report = {"run": args.run, "release": run.release, "sae_id": run.sae_id, "repo_id": entry["repo_id"],
              "path": info["path"], "architecture": sae.cfg.architecture(), "d_in": sae.cfg.d_in,
              "d_sae": sae.cfg.d_sae, "hook_name": sae.cfg.metadata.hook_name,
              "model_from_pretrained_kwargs": params.model.from_pretrained_kwargs,
              "published_l0": info.get("l0"), "weights_sha256": sha256_file(args.out / "sae_weights.safetensors")}
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
