"""A Hugging Face dataset as a corpus source (hub runs), offline-safe.

:func:`build_hf` streams the first ``n_docs`` rows through the same whitespace cleanup, dedupe,
split, length filter and shuffle as the offline sources.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from darkmatter.data.corpus.card import corpus_card
from darkmatter.data.corpus.markup import clean_whitespace
from darkmatter.data.corpus.pieces import dedupe, mix, n_words, pieces
from darkmatter.errors import UserError


def dataset_location(dataset: str, data_dir: str | None = None) -> str:
    """What to hand ``datasets.load_dataset``: the Hub id, or offline its snapshot in the HF cache.

    datasets 4.x resolves a Hub id through the Hub API even when every file is cached, so with
    ``HF_HUB_OFFLINE=1`` it fails on a full cache; the cached snapshot directory loads the same
    files through the same builder. A local path is used as it is.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if Path(dataset).exists() or not constants.HF_HUB_OFFLINE:
        return dataset
    try:
        return snapshot_download(dataset, repo_type="dataset", local_files_only=True)
    except LocalEntryNotFoundError:
        include = f" --include '{data_dir}/*'" if data_dir else ""
        raise UserError(
            f"dataset {dataset} is not in the HF cache and HF_HUB_OFFLINE is set; on a machine with access run "
            f"`hf download {dataset} --repo-type dataset{include}` and copy the HF cache over (HF_HUB_CACHE)"
        ) from None


def build_hf(settings, source, load_dataset: Callable[..., Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The hub corpus: the first ``n_docs`` rows of ``source.dataset``, cleaned and shuffled.

    ``settings`` is the shared :class:`~darkmatter.config.CorpusSettings`, ``source`` a hub
    :class:`~darkmatter.config.CorpusSource`.
    """
    if load_dataset is None:
        from datasets import load_dataset
    location = dataset_location(source.dataset, source.data_dir)
    try:
        ds = load_dataset(location, data_dir=source.data_dir, split=source.split, streaming=source.streaming)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; one line for the user
        raise UserError(
            f"could not load dataset {source.dataset!r} split {source.split!r}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}; check the corpus in params.yaml and Hub access "
            f"(HF_HUB_OFFLINE must be unset for a dataset not yet in the cache)"
        ) from None
    texts, rows = [], 0
    for row in tqdm(itertools.islice(ds, source.n_docs), total=source.n_docs, desc=f"read {source.dataset}", unit=" docs"):
        rows += 1
        if source.text_field not in row:
            raise UserError(f"dataset {source.dataset!r} has no field {source.text_field!r}; fields: {', '.join(row)}")
        value = row[source.text_field]
        if isinstance(value, str) and value.strip():
            texts.append(clean_whitespace(value))
    docs, stats = dedupe(texts)
    kept, short = pieces(docs, settings.min_chars, settings.max_chars)
    kept, dup = dedupe(kept, para_min_chars=math.inf)
    records = mix({"hf": kept}, settings.seed)
    card_source = {
        "name": "hf", "kind": "hf", "dataset": source.dataset, "data_dir": source.data_dir, "split": source.split,
        "text_field": source.text_field, "licence": "see the dataset card on the Hugging Face Hub",
        "rows_read": rows, "duplicate_documents": stats.duplicate_documents + dup.duplicate_documents,
        "duplicate_paragraphs": stats.duplicate_paragraphs, "pieces_too_short": short,
        "documents": len(records), "words": sum(n_words(r["text"]) for r in records),
        "characters": sum(len(r["text"]) for r in records),
    }
    return records, corpus_card(settings, "hf", [card_source], records)
