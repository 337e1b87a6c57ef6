"""Activation cache: packing, masking, resume bit-identity, corruption detection, NaN handling."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from darkmatter.data.activations import (
    ARRAYS,
    ActivationCache,
    CacheSpec,
    build_cache,
    pack_rows,
    special_mask,
)
from darkmatter.errors import CacheCorruptError, NonFiniteError, UserError

BOS, EOS = 1, 2
SPEC = CacheSpec(layer=1, site="resid_post", chunk_tokens=64, batch_size=3, store_dtype="float32", identity={"model": "tiny"})


def _docs(n_docs: int = 40, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 101, size=rng.integers(5, 40)).tolist() for _ in range(n_docs)]


def _rows(n_rows: int = 20, context: int = 16):
    return pack_rows(_docs(), context, n_rows, BOS, EOS)


def _digests(root) -> dict[str, str]:
    return {name: hashlib.sha256((root / f"{name}.npy").read_bytes()).hexdigest() for name in ARRAYS}


def test_pack_rows_keeps_every_token_in_order():
    docs = _docs()
    rows = pack_rows(docs, 16, 10, BOS, EOS)
    assert rows.tokens.shape == (10, 16)
    assert (rows.tokens[:, 0] == BOS).all() and (rows.doc_ids[:, 0] == -1).all()
    stream = [t for doc in docs for t in doc + [EOS]]
    assert rows.tokens[:, 1:].reshape(-1).tolist() == stream[: 10 * 15]
    # doc ids are non-decreasing along the stream and EOS closes each document
    body_docs = rows.doc_ids[:, 1:].reshape(-1)
    assert (np.diff(body_docs) >= 0).all()
    first = len(docs[0])
    assert rows.tokens[:, 1:].reshape(-1)[first] == EOS and body_docs[first] == 0 and body_docs[first + 1] == 1


def test_pack_rows_refuses_a_too_small_corpus():
    with pytest.raises(UserError, match="lower activations.n_tokens"):
        pack_rows([[5, 6, 7]], 16, 4, BOS, EOS)


def test_special_mask_covers_position_zero_and_special_ids():
    tokens = np.array([[BOS, 5, EOS, 6], [7, 8, 0, 9]])
    mask = special_mask(tokens, [0, BOS, EOS])
    assert mask.tolist() == [[True, False, True, False], [True, False, True, False]]


def test_cache_matches_a_direct_forward(tiny_subject, tmp_path):
    rows = _rows()
    metrics = build_cache(tiny_subject, rows, [BOS, EOS], SPEC, tmp_path / "out", tmp_path / "scratch")
    cache = ActivationCache.open(tmp_path / "out")
    direct = tiny_subject.activations(torch.from_numpy(rows.tokens[:4].astype(np.int64)), 1, "resid_post")
    np.testing.assert_allclose(cache.acts[: 4 * 16], direct.reshape(-1, 32).numpy(), rtol=1e-5, atol=1e-5)
    assert cache.tokens.tolist() == rows.tokens.reshape(-1).tolist()
    assert cache.meta["n_tokens"] == 20 * 16 and cache.meta["hook_name"] == "blocks.1.hook_resid_post"
    positions = cache.array("positions")
    assert positions.max() == 15 and cache.special[positions == 0].all()
    assert metrics["n_tokens"] == 320 and metrics["throughput"]["chunks_computed"] == 5


def test_activations_stop_at_the_layer(tiny_subject):
    """resid_post of layer L equals resid_pre of L+1 and matches run_with_cache."""
    tokens = torch.randint(3, 101, (2, 10))
    _, cache = tiny_subject.model.run_with_cache(tokens)
    post = tiny_subject.activations(tokens, 1, "resid_post")
    pre = tiny_subject.activations(tokens, 2, "resid_pre")
    torch.testing.assert_close(post, cache["blocks.1.hook_resid_post"])
    torch.testing.assert_close(pre, post)


class Killed(Exception):
    pass


def _kill_at(chunk: int):
    def on_chunk(index: int) -> None:
        if index == chunk:
            raise Killed

    return on_chunk


def test_killed_run_resumes_bit_identical(tiny_subject, tmp_path):
    rows = _rows()
    build_cache(tiny_subject, rows, [BOS, EOS], SPEC, tmp_path / "clean", tmp_path / "scratch-clean")
    with pytest.raises(Killed):
        build_cache(tiny_subject, rows, [BOS, EOS], SPEC, tmp_path / "out", tmp_path / "scratch", on_chunk=_kill_at(1))
    assert not (tmp_path / "out/acts.npy").exists()
    metrics = build_cache(tiny_subject, rows, [BOS, EOS], SPEC, tmp_path / "out", tmp_path / "scratch")
    assert metrics["throughput"]["chunks_reused"] == 2
    assert metrics["throughput"]["chunks_computed"] == 3
    assert _digests(tmp_path / "out") == _digests(tmp_path / "clean")
    assert list((tmp_path / "scratch").iterdir()) == []  # chunks are removed once finalised


def test_finalise_moves_chunk_by_chunk_and_resumes(tiny_subject, tmp_path, monkeypatch):
    """The disk holds the cache once plus one chunk while finalising (not twice), and a killed
    finalise resumes without recomputing the chunks it had already moved into the array."""
    from dataclasses import replace

    from darkmatter.data.activations import ChunkStore

    rows = pack_rows(_docs(400), 16, 200, BOS, EOS)
    spec = replace(SPEC, chunk_tokens=640)  # five chunks large enough that filesystem blocks do not dominate
    build_cache(tiny_subject, rows, [BOS, EOS], spec, tmp_path / "clean", tmp_path / "scratch-clean")
    final = (tmp_path / "clean/acts.npy").stat().st_size
    peaks, remove = [], ChunkStore.remove

    def remove_then_maybe_die(store, index):  # blocks in use: the array is sparse until written
        peaks.append(sum(p.stat().st_blocks * 512 for p in store.root.iterdir()))
        remove(store, index)
        if index == 2:
            raise Killed

    monkeypatch.setattr(ChunkStore, "remove", remove_then_maybe_die)
    with pytest.raises(Killed):
        build_cache(tiny_subject, rows, [BOS, EOS], spec, tmp_path / "out", tmp_path / "scratch")
    monkeypatch.setattr(ChunkStore, "remove", remove)
    assert not (tmp_path / "out/acts.npy").exists()
    # the array so far plus the chunks not yet moved: the cache plus one chunk (a fifth) and a few
    # filesystem blocks of seals and headers, where copying before deleting needed twice the cache
    assert len(peaks) == 3 and peaks == sorted(peaks, reverse=True) and max(peaks) < 1.5 * final, (peaks, final)
    metrics = build_cache(tiny_subject, rows, [BOS, EOS], spec, tmp_path / "out", tmp_path / "scratch")
    assert metrics["throughput"]["chunks_computed"] == 0 and metrics["throughput"]["chunks_reused"] == 5
    assert _digests(tmp_path / "out") == _digests(tmp_path / "clean")
    assert not (tmp_path / "scratch").exists() or list((tmp_path / "scratch").iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "unsealed"])
def test_damaged_chunk_is_detected_and_redone(tiny_subject, tmp_path, damage):
    rows = _rows()
    scratch = tmp_path / "scratch"
    build_cache(tiny_subject, rows, [BOS, EOS], SPEC, tmp_path / "clean", tmp_path / "scratch-clean")
    with pytest.raises(Killed):  # every chunk sealed, killed before finalising
        build_cache(tiny_subject, rows, [BOS, EOS], SPEC, tmp_path / "out", scratch, on_chunk=_kill_at(4))
    (chunk_dir,) = scratch.iterdir()
    victim = chunk_dir / "chunk_00002.npy"
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        victim.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        data[-7] ^= 0xFF
        victim.write_bytes(bytes(data))
    else:
        (chunk_dir / "chunk_00002.json").unlink()
    metrics = build_cache(tiny_subject, rows, [BOS, EOS], SPEC, tmp_path / "out", scratch)
    assert metrics["throughput"]["chunks_computed"] == 1
    assert _digests(tmp_path / "out") == _digests(tmp_path / "clean")


def test_changed_config_never_reuses_chunks(tiny_subject, tmp_path):
    rows = _rows()
    scratch = tmp_path / "scratch"
    with pytest.raises(Killed):
        build_cache(tiny_subject, rows, [BOS, EOS], SPEC, tmp_path / "a", scratch, on_chunk=_kill_at(4))
    other = CacheSpec(**{**SPEC.__dict__, "layer": 2})
    metrics = build_cache(tiny_subject, rows, [BOS, EOS], other, tmp_path / "b", scratch)
    assert metrics["throughput"]["chunks_reused"] == 0


def test_nan_fails_with_the_chunk_index(tiny_subject, tmp_path):
    class Poisoned:
        d_model = tiny_subject.d_model
        calls = 0

        def activations(self, tokens, layer, site):
            self.calls += 1
            out = tiny_subject.activations(tokens, layer, site).clone()
            if self.calls == 5:  # 4 rows per chunk in batches of 3+1: call 5 is chunk 2
                out[0, 3, 0] = float("nan")
            return out

    with pytest.raises(NonFiniteError, match=r"chunk 2 \(first bad token 3 "):
        build_cache(Poisoned(), _rows(), [BOS, EOS], SPEC, tmp_path / "out", tmp_path / "scratch")


def test_float16_store(tiny_subject, tmp_path):
    spec = CacheSpec(**{**SPEC.__dict__, "store_dtype": "float16"})
    build_cache(tiny_subject, _rows(), [BOS, EOS], spec, tmp_path / "out", tmp_path / "scratch")
    assert ActivationCache.open(tmp_path / "out").acts.dtype == np.float16


def test_open_rejects_a_truncated_cache(tiny_subject, tmp_path):
    build_cache(tiny_subject, _rows(), [BOS, EOS], SPEC, tmp_path / "out", tmp_path / "scratch")
    acts = tmp_path / "out/acts.npy"
    acts.write_bytes(acts.read_bytes()[:1000])
    with pytest.raises(CacheCorruptError, match="truncated or corrupt"):
        ActivationCache.open(tmp_path / "out")
