"""Activation cache stage: corpus -> fixed-length token rows -> residual activations on disk.

Layout of the output directory (every array memory-maps with ``np.load(mmap_mode="r")``)::

    acts.npy       [N, d_model]  float32 or float16 (activations.store_dtype)
    tokens.npy     [N]           int32 token ids
    doc_ids.npy    [N]           int32 corpus document id of each token (-1 for BOS)
    positions.npy  [N]           int16 position in its row
    special.npy    [N]           bool  BOS/EOS/PAD or position 0 (|x| ~ 1e5 at position 0)
    meta.json                    model, layer, hook, shapes, fingerprint, special ids

Counts, norms and throughput go to a separate metrics JSON (``metrics/activations.json``),
because DVC forbids a metrics file inside a cached output directory.

N = n_rows * context_length; row r covers tokens [r*T, (r+1)*T).

Why plain ``.npy``: it is the one format numpy and torch memory-map with zero copies and no
extra dependency, and a flat ``[N, d]`` array is what every downstream stage streams over.

Resumability: DVC deletes a stage's outputs before running it, so work in progress lives in
``data/scratch/activations/<fingerprint>/`` as one ``chunk_XXXXX.npz`` per ``chunk_tokens``,
each written to a temporary name and renamed, then sealed by a ``.json`` sidecar holding its
sha256. A rerun keeps every chunk whose sidecar and hash check out and recomputes the rest
(a truncated or corrupt chunk is detected and redone). Finalising moves the chunks one by one into
the final array, filled in the scratch directory too (:func:`finalise`: the disk never holds the
cache twice, and a killed finalise resumes); once the output is written the scratch directory is
deleted. Chunks are computed from the same rows
in the same batches whatever happened before, so the final arrays are bit-identical to an
uninterrupted run. The fingerprint covers everything that changes the numbers (model weights,
layer, site, corpus, context length, batch size, dtype), so stale chunks are never reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from darkmatter.errors import CacheCorruptError, NonFiniteError, UserError, cli
from darkmatter.hashing import fingerprint, sha256_file

ARRAYS = ("acts", "tokens", "doc_ids", "positions", "special")


class Activator(Protocol):
    d_model: int

    def activations(self, tokens, layer: int, site: str): ...


@dataclass(frozen=True)
class Rows:
    """Token rows, each starting with BOS: ``tokens`` and ``doc_ids`` are ``[n_rows, T]``."""

    tokens: np.ndarray
    doc_ids: np.ndarray

    @property
    def n_rows(self) -> int:
        return self.tokens.shape[0]


def pack_rows(
    docs: Iterable[Sequence[int]],
    context_length: int,
    n_rows: int,
    bos_id: int,
    eos_id: int | None,
) -> Rows:
    """Pack tokenised documents into ``n_rows`` rows of ``[BOS] + (T-1)`` tokens.

    Documents are concatenated, each followed by EOS, and cut at row boundaries, so no token
    is padding. ``doc_ids`` records which document every token came from (BOS gets -1).
    Raises :class:`UserError` if the documents hold fewer tokens than requested.
    """
    body = context_length - 1
    need = n_rows * body
    tokens = np.empty(need, dtype=np.int32)
    doc_ids = np.empty(need, dtype=np.int32)
    filled = 0
    for doc_id, ids in enumerate(docs):
        piece = list(ids) + ([eos_id] if eos_id is not None else [])
        take = min(len(piece), need - filled)
        tokens[filled : filled + take] = piece[:take]
        doc_ids[filled : filled + take] = doc_id
        filled += take
        if filled == need:
            break
    if filled < need:
        raise UserError(
            f"corpus holds {filled} tokens but activations.n_tokens needs {need} "
            f"(+{n_rows} BOS); lower activations.n_tokens or add corpus sources"
        )
    out_tokens = np.empty((n_rows, context_length), dtype=np.int32)
    out_docs = np.empty((n_rows, context_length), dtype=np.int32)
    out_tokens[:, 0] = bos_id
    out_docs[:, 0] = -1
    out_tokens[:, 1:] = tokens.reshape(n_rows, body)
    out_docs[:, 1:] = doc_ids.reshape(n_rows, body)
    return Rows(out_tokens, out_docs)


def special_mask(tokens: np.ndarray, special_ids: Sequence[int]) -> np.ndarray:
    """True at BOS/EOS/PAD tokens and at position 0 of every row (``tokens`` is ``[R, T]``)."""
    mask = np.isin(tokens, np.asarray(list(special_ids), dtype=tokens.dtype))
    mask[:, 0] = True
    return mask


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass(frozen=True)
class ChunkPlan:
    """Row ranges of each resumable chunk."""

    n_rows: int
    rows_per_chunk: int

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.rows_per_chunk)

    def rows(self, index: int) -> range:
        start = index * self.rows_per_chunk
        return range(start, min(start + self.rows_per_chunk, self.n_rows))


class ChunkStore:
    """Sealed per-chunk files in a scratch directory; see the module docstring."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _paths(self, index: int) -> tuple[Path, Path]:
        return self.root / f"chunk_{index:05d}.npy", self.root / f"chunk_{index:05d}.json"

    def is_complete(self, index: int, n_rows: int) -> bool:
        """A chunk counts only if sealed, of the expected size and with a matching hash."""
        data, seal = self._paths(index)
        if not (data.exists() and seal.exists()):
            return False
        try:
            info = json.loads(seal.read_text())
        except json.JSONDecodeError:
            return False
        return info.get("n_rows") == n_rows and sha256_file(data) == info.get("sha256")

    def write(self, index: int, acts: np.ndarray, n_rows: int) -> None:
        data, seal = self._paths(index)
        seal.unlink(missing_ok=True)
        tmp = data.with_name(data.name + ".tmp")
        with tmp.open("wb") as fh:
            np.save(fh, acts)
        os.replace(tmp, data)
        _atomic_write_bytes(seal, json.dumps({"n_rows": n_rows, "sha256": sha256_file(data)}).encode())

    def read(self, index: int) -> np.ndarray:
        data, _ = self._paths(index)
        return np.load(data, mmap_mode="r")

    def remove(self, index: int) -> None:
        for path in self._paths(index):
            path.unlink(missing_ok=True)

    @property
    def array(self) -> Path:
        """The final array while it is being filled (renamed into the output when full)."""
        return self.root / "acts.npy.tmp"

    def finalised(self) -> set[int]:
        """Chunks already copied into :attr:`array` (and deleted as chunk files)."""
        progress = self.root / "finalised.json"
        if not (progress.exists() and self.array.exists()):
            return set()
        return set(json.loads(progress.read_text()))

    def mark_finalised(self, done: set[int]) -> None:
        _atomic_write_bytes(self.root / "finalised.json", json.dumps(sorted(done)).encode())


def compute_chunks(
    subject: Activator,
    rows: Rows,
    layer: int,
    site: str,
    store: ChunkStore,
    plan: ChunkPlan,
    batch_size: int,
    store_dtype: str,
    on_chunk: Callable[[int], None] | None = None,
) -> dict:
    """Fill ``store`` with every missing chunk; returns throughput figures of this call."""
    import torch

    context = rows.tokens.shape[1]
    finalised = store.finalised()
    todo = [i for i in range(plan.n_chunks) if i not in finalised and not store.is_complete(i, len(plan.rows(i)))]
    n_todo_tokens = sum(len(plan.rows(i)) for i in todo) * context
    start = time.perf_counter()
    with tqdm(total=n_todo_tokens, unit="tok", unit_scale=True, desc=f"activations L{layer}") as bar:
        for index in todo:
            chunk_rows = plan.rows(index)
            parts = []
            for lo in range(chunk_rows.start, chunk_rows.stop, batch_size):
                hi = min(lo + batch_size, chunk_rows.stop)
                batch = torch.from_numpy(rows.tokens[lo:hi].astype(np.int64))
                acts = subject.activations(batch, layer, site)
                parts.append(acts.reshape(-1, acts.shape[-1]).cpu().numpy())
                bar.update((hi - lo) * context)
            chunk = np.concatenate(parts).astype(store_dtype, copy=False)
            if not np.isfinite(chunk).all():
                bad_rows = np.flatnonzero(~np.isfinite(chunk).all(axis=1))
                raise NonFiniteError(
                    f"NaN/inf in activations of chunk {index} (first bad token {bad_rows[0]} "
                    f"of the chunk); check the model weights (re-run `dvc repro -f model`) "
                    f"and store_dtype (float16 overflows above 65504)"
                )
            store.write(index, chunk, len(chunk_rows))
            if on_chunk is not None:
                on_chunk(index)
    seconds = time.perf_counter() - start
    return {
        "computed_tokens": n_todo_tokens,
        "seconds": seconds,
        "tokens_per_s": n_todo_tokens / seconds if seconds > 0 and n_todo_tokens else None,
        "chunks_computed": len(todo),
        "chunks_reused": plan.n_chunks - len(todo),
    }


def finalise(
    store: ChunkStore, plan: ChunkPlan, rows: Rows, special_ids: Sequence[int], out: Path, d_model: int, store_dtype: str
) -> None:
    """Move the sealed chunks into one array and write it, with the token metadata, into ``out``.

    Each chunk file is deleted as soon as its rows are in the array (flushed, and recorded in the
    store's progress file), so the disk holds the cache once plus one chunk, not twice: 21.5 GB at
    the peak for Gemma 3 4B's full-size cache otherwise. The array fills in the scratch directory,
    which DVC does not clear, so a finalise that is killed resumes where it stopped.
    """
    from numpy.lib.format import open_memmap

    context = rows.tokens.shape[1]
    n_tokens = rows.n_rows * context
    done = store.finalised()
    if done:
        acts = open_memmap(store.array, mode="r+")
        if acts.shape != (n_tokens, d_model) or acts.dtype != np.dtype(store_dtype):
            raise CacheCorruptError(f"{store.array} does not hold this cache; delete {store.root} and rerun the stage")
    else:
        acts = open_memmap(store.array, mode="w+", dtype=store_dtype, shape=(n_tokens, d_model))
    for index in range(plan.n_chunks):
        if index in done:
            continue
        chunk_rows = plan.rows(index)
        if not store.is_complete(index, len(chunk_rows)):
            raise CacheCorruptError(f"chunk {index} failed its hash check while finalising; rerun the stage")
        acts[chunk_rows.start * context : chunk_rows.stop * context] = store.read(index)
        acts.flush()
        done.add(index)
        store.mark_finalised(done)
        store.remove(index)
    del acts
    out.mkdir(parents=True, exist_ok=True)
    shutil.move(store.array, out / "acts.npy")
    positions = np.broadcast_to(np.arange(context, dtype=np.int16), rows.tokens.shape)
    np.save(out / "tokens.npy", rows.tokens.reshape(-1))
    np.save(out / "doc_ids.npy", rows.doc_ids.reshape(-1))
    np.save(out / "positions.npy", np.ascontiguousarray(positions).reshape(-1))
    np.save(out / "special.npy", special_mask(rows.tokens, special_ids).reshape(-1))


@dataclass(frozen=True)
class ActivationCache:
    """Read side of the cache: memory-mapped arrays plus ``meta.json``."""

    root: Path
    meta: dict

    @classmethod
    def open(cls, root: str | Path) -> ActivationCache:
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.exists():
            raise CacheCorruptError(f"{root} is not an activation cache (no meta.json); run `dvc repro activations`")
        meta = json.loads(meta_path.read_text())
        cache = cls(root, meta)
        for name in ARRAYS:
            path = root / f"{name}.npy"
            if not path.exists():
                raise CacheCorruptError(f"{path} is missing; rerun `dvc repro -f activations`")
            try:
                array = np.load(path, mmap_mode="r")
            except ValueError as exc:
                raise CacheCorruptError(f"{path} is truncated or corrupt ({exc}); rerun `dvc repro -f activations`") from None
            if array.shape[0] != meta["n_tokens"]:
                raise CacheCorruptError(
                    f"{path} holds {array.shape[0]} rows, meta.json says {meta['n_tokens']}; "
                    "rerun `dvc repro -f activations`"
                )
        return cache

    def array(self, name: str) -> np.ndarray:
        return np.load(self.root / f"{name}.npy", mmap_mode="r")

    @property
    def acts(self) -> np.ndarray:
        return self.array("acts")

    @property
    def tokens(self) -> np.ndarray:
        return self.array("tokens")

    @property
    def special(self) -> np.ndarray:
        return self.array("special")


@dataclass(frozen=True)
class CacheSpec:
    """Everything :func:`build_cache` needs besides the model and the rows."""

    layer: int
    site: str
    chunk_tokens: int
    batch_size: int
    store_dtype: str
    identity: dict  # model/corpus provenance that goes into the fingerprint and meta.json


def build_cache(
    subject: Activator,
    rows: Rows,
    special_ids: Sequence[int],
    spec: CacheSpec,
    out: Path,
    scratch: Path,
    on_chunk: Callable[[int], None] | None = None,
    extra_metrics: dict | None = None,
) -> dict:
    """Compute (or resume) and finalise the cache in ``out``; returns the metrics dict."""
    context = rows.tokens.shape[1]
    plan = ChunkPlan(rows.n_rows, spec.chunk_tokens // context)
    fp = fingerprint({**asdict(spec), "rows_sha256": hashlib.sha256(rows.tokens.tobytes()).hexdigest()})
    store = ChunkStore(scratch / fp)
    throughput = compute_chunks(
        subject, rows, spec.layer, spec.site, store, plan, spec.batch_size, spec.store_dtype, on_chunk
    )
    finalise(store, plan, rows, special_ids, out, subject.d_model, spec.store_dtype)
    shutil.rmtree(store.root)  # the finished cache is the DVC output; the chunks were only for resuming
    n_tokens = rows.n_rows * context
    meta = {
        **spec.identity,
        "layer": spec.layer,
        "site": spec.site,
        "hook_name": f"blocks.{spec.layer}.hook_{spec.site}",
        "d_model": subject.d_model,
        "context_length": context,
        "n_rows": rows.n_rows,
        "n_tokens": n_tokens,
        "store_dtype": spec.store_dtype,
        "special_token_ids": list(special_ids),
        "fingerprint": fp,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {
        "n_tokens": n_tokens,
        **summarise(ActivationCache.open(out)),
        "throughput": throughput,
        **(extra_metrics or {}),
    }


def summarise(cache: ActivationCache, block: int = 65536) -> dict:
    """Counts and norms that show the position-0 outliers and the effect of masking them."""
    acts, special = cache.acts, cache.special
    positions = cache.array("positions")
    norms = np.concatenate(
        [np.linalg.norm(np.asarray(acts[i : i + block], dtype=np.float32), axis=1) for i in range(0, len(acts), block)]
    )
    pos0 = positions == 0
    return {
        "n_special": int(special.sum()),
        "special_fraction": float(special.mean()),
        "norm_mean_all": float(norms.mean()),
        "norm_mean_nonspecial": float(norms[~special].mean()),
        "norm_max_nonspecial": float(norms[~special].max()),
        "norm_mean_position0": float(norms[pos0].mean()),
    }


def _tokenise_corpus(tokenizer, docs_path: Path, batch: int = 256) -> tuple[list[list[int]], dict]:
    """Token ids of every corpus document, and token counts per source."""
    texts, sources = [], []
    with docs_path.open() as fh:
        for line in fh:
            doc = json.loads(line)
            texts.append(doc["text"])
            sources.append(doc["source"])
    ids: list[list[int]] = []
    for lo in tqdm(range(0, len(texts), batch), desc="tokenising corpus", unit="batch"):
        ids.extend(tokenizer(texts[lo : lo + batch], add_special_tokens=False)["input_ids"])
    per_source: dict[str, int] = {}
    for src, doc in zip(sources, ids):
        per_source[src] = per_source.get(src, 0) + len(doc)
    return ids, {"total": sum(per_source.values()), "per_source": per_source}


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import add_run_arguments, run_from_args

    parser = argparse.ArgumentParser(description="Cache residual-stream activations of a run's subject model.")
    add_run_arguments(parser)
    parser.add_argument("--corpus", type=Path, required=True, help="the run's docs.jsonl")
    parser.add_argument("--weights", type=Path, required=True, help="the run's model directory (model stage)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scratch", type=Path, default=Path("data/scratch/activations"))
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args(argv)
    run = run_from_args(args)
    cfg, subject_cfg = run.activations, run.subject
    if not args.corpus.exists():
        raise UserError(f"{args.corpus} not found; run the corpus stage first (`dvc repro corpus@{run.name}`)")
    if run.sae_source.source == "pretrained":  # a misfit fails here, before any forward pass
        from darkmatter.sae.pretrained import check_pretrained_fits

        check_pretrained_fits(run)

    from darkmatter.data.models import load_run_subject

    subject = load_run_subject(run, args.weights)
    tokenizer = subject.tokenizer
    doc_ids, corpus_tokens = _tokenise_corpus(tokenizer, args.corpus)
    n_rows = -(-cfg.n_tokens // run.context_length)
    rows = pack_rows(doc_ids, run.context_length, n_rows, tokenizer.bos_token_id, tokenizer.eos_token_id)
    provenance = args.weights / "provenance.json"
    identity = {
        "model": run.model.name,
        "compiled_forward": cfg.compile,
        "weights": json.loads(provenance.read_text()) if provenance.exists() else run.model.name,
        "dtype": subject_cfg.dtype,
        **({"from_pretrained_kwargs": subject_cfg.from_pretrained_kwargs} if subject_cfg.from_pretrained_kwargs else {}),
        "corpus_sha256": sha256_file(args.corpus),
    }
    spec = CacheSpec(run.layer, subject_cfg.site, cfg.chunk_tokens, cfg.batch_size, cfg.store_dtype, identity)
    if cfg.compile:
        subject.compile_forward(cfg.batch_size, run.context_length)
    metrics = build_cache(
        subject, rows, subject.special_token_ids(), spec, args.out, args.scratch,
        extra_metrics={"corpus_tokens": corpus_tokens},
    )
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
