"""The ``sae`` stage: a run's SAE, trained here or loaded pretrained, saved in SAELens's disk format.

``sae: {source: train}`` trains a JumpReLU SAE with the Gemma Scope recipe on the run's cache
(:mod:`darkmatter.sae.train`), with its training-curve snapshots in ``--curve``. ``sae: {source: pretrained,
release, sae_id}`` loads it with SAELens (:mod:`darkmatter.sae.pretrained`) and checks it reads
the cache's hook and width. Either way
the output is an ordinary SAELens SAE (``SAE.load_from_disk``) and every later stage treats
the two alike; the metrics file says which it was.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict
from pathlib import Path

from darkmatter.data.activations import ActivationCache
from darkmatter.data.split import split_rows, token_index
from darkmatter.errors import cli
from darkmatter.hashing import sha256_file


def train_on_cache(run, cache: ActivationCache, out: Path, scratch: Path, curve_out: Path | None = None, **overrides) -> dict:
    """Train the run's SAE (with ``overrides`` of its ``sae`` section) on the train rows of ``cache``
    (special tokens out) and save it to ``out``; the training-curve snapshots go to ``curve_out``."""
    from darkmatter.data.models import resolve_device
    from darkmatter.sae.train import to_inference_sae, train

    cfg = run.sae.replace(**overrides)
    train_rows, _ = split_rows(cache.meta["n_rows"], cfg.heldout_fraction)
    index = token_index(cache, train_rows)
    identity = {"cache": cache.meta["fingerprint"]}
    metadata = {
        "model_name": cache.meta["model"],
        "hook_name": cache.meta["hook_name"],
        "context_size": cache.meta["context_length"],
        "prepend_bos": True,
        "trained_by": "darkmatter.sae.train (Gemma Scope JumpReLU recipe)",
    }
    training_sae, metrics = train(cache.acts, index, cfg, scratch, identity, resolve_device(run.subject.device),
                                  curve_out=curve_out, metadata=metadata)
    sae = to_inference_sae(training_sae, metrics["input_scale"], metadata)
    shutil.rmtree(out, ignore_errors=True)
    sae.save_model(str(out))
    return {"source": "train", "config": asdict(cfg), "train_tokens_available": int(len(index)), **metrics}


def load_for_run(run, cache: ActivationCache, out: Path) -> dict:
    """Load the run's pretrained SAE, check it fits the cache's hook and width, save it to ``out``."""
    from darkmatter.sae.pretrained import check_fits, load_pretrained_sae, release_entry

    src = run.sae_source
    sae = load_pretrained_sae(src.release, src.sae_id)
    check_fits(sae.cfg.metadata.hook_name, sae.cfg.d_in, run, cache.meta["d_model"])
    shutil.rmtree(out, ignore_errors=True)
    sae.save_model(str(out))
    entry, info = release_entry(src.release, src.sae_id)
    return {"source": "pretrained", "release": src.release, "sae_id": src.sae_id, "repo_id": entry["repo_id"],
            "path": info["path"], "architecture": sae.cfg.architecture(), "d_in": sae.cfg.d_in,
            "d_sae": sae.cfg.d_sae, "hook_name": sae.cfg.metadata.hook_name,
            "model_from_pretrained_kwargs": dict(run.subject.from_pretrained_kwargs),
            "published_l0": info.get("l0"), "weights_sha256": sha256_file(out / "sae_weights.safetensors")}


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import add_run_arguments, run_from_args

    parser = argparse.ArgumentParser(description="Train or load a run's SAE and save it in SAELens format.")
    add_run_arguments(parser)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--curve", type=Path, default=None, help="directory for the training-curve snapshots")
    parser.add_argument("--scratch", type=Path, default=Path("data/scratch/sae"))
    args = parser.parse_args(argv)
    run = run_from_args(args)
    cache = ActivationCache.open(args.cache)
    if args.curve is not None:
        args.curve.mkdir(parents=True, exist_ok=True)  # a stage output even where the SAE has no curve
    if run.sae_source.source == "train":
        report = train_on_cache(run, cache, args.out, args.scratch, args.curve)
    else:
        report = load_for_run(run, cache, args.out)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
