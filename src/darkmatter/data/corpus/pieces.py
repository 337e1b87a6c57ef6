"""Documents to corpus pieces: exact dedupe, split at paragraph boundaries, cap, seeded mix.

:func:`dedupe` works at document level, then at paragraph level for paragraphs of at least
:data:`PARA_DEDUPE_MIN_CHARS` characters (short repeated lines such as a play's ``[Exit.]`` or
``Yes, my lord.`` are real text and stay). :func:`split` cuts long documents at paragraph
boundaries into pieces of at most ``max_chars``; :func:`cap` takes a source's pieces in a seeded
shuffled order up to ``max_words``; :func:`mix` shuffles all sources into one seeded order.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from darkmatter.data.corpus.markup import normalise, paragraphs

#: Paragraphs at least this long are deduplicated across the corpus; shorter ones (a play's
#: ``[Exit.]``, a one-line reply) repeat naturally and are kept.
PARA_DEDUPE_MIN_CHARS = 80


@dataclass
class DedupeStats:
    duplicate_documents: int = 0
    duplicate_paragraphs: int = 0


def dedupe(
    texts: Iterable[str],
    seen_docs: set[str] | None = None,
    seen_paras: set[str] | None = None,
    para_min_chars: int = PARA_DEDUPE_MIN_CHARS,
) -> tuple[list[str], DedupeStats]:
    """Exact dedupe after whitespace normalisation, first occurrence wins.

    Documents equal to an earlier one are dropped; then, inside the survivors, paragraphs of at
    least ``para_min_chars`` characters equal to an earlier paragraph are dropped. Pass the same
    ``seen_*`` sets to dedupe across several calls (sources).
    """
    seen_docs = set() if seen_docs is None else seen_docs
    seen_paras = set() if seen_paras is None else seen_paras
    stats = DedupeStats()
    out = []
    for text in texts:
        key = normalise(text)
        if not key:
            continue
        if key in seen_docs:
            stats.duplicate_documents += 1
            continue
        seen_docs.add(key)
        kept = []
        for para in paragraphs(text):
            pkey = normalise(para)
            if len(pkey) >= para_min_chars:
                if pkey in seen_paras:
                    stats.duplicate_paragraphs += 1
                    continue
                seen_paras.add(pkey)
            kept.append(para.strip())
        if kept:
            out.append("\n\n".join(kept))
    return out, stats


_SEPARATORS = ("\n\n", "\n", r"(?<=[.!?;:])\s+", r"\s+")


def _units(text: str, max_chars: int, level: int = 0) -> list[tuple[str, str]]:
    """Cut ``text`` into ``(unit, separator-before-next)`` pieces of at most ``max_chars``."""
    if len(text) <= max_chars:
        return [(text, "")]
    if level >= len(_SEPARATORS):
        return [(text[k:k + max_chars], "") for k in range(0, len(text), max_chars)]
    sep = _SEPARATORS[level]
    joiner = sep if level < 2 else " "
    parts = re.split(sep, text) if level >= 2 else text.split(sep)
    out: list[tuple[str, str]] = []
    for part in parts:
        if not part:
            continue
        sub = _units(part, max_chars, level + 1)
        out.extend(sub[:-1])
        out.append((sub[-1][0], joiner))
    return out


def split(text: str, max_chars: int) -> list[str]:
    """Split ``text`` at paragraph boundaries into pieces of at most ``max_chars`` characters.

    Paragraphs are packed greedily towards an even size (``len / ceil(len / max_chars)``) so the
    last piece is not a stub; a paragraph longer than ``max_chars`` is cut at line, then
    sentence, then word boundaries (a hard cut only for a single longer "word").
    """
    text = text.strip()
    if not text:
        return []
    if len(text) <= max_chars:
        return [text]
    target = len(text) / math.ceil(len(text) / max_chars)
    pieces: list[str] = []
    cur, cur_sep = "", ""
    for unit, sep in _units(text, max_chars):
        if cur and (len(cur) + len(cur_sep) + len(unit) > max_chars or len(cur) >= target):
            pieces.append(cur)
            cur = ""
        cur = f"{cur}{cur_sep}{unit}" if cur else unit
        cur_sep = sep
    if cur:
        pieces.append(cur)
    return [p.strip() for p in pieces if p.strip()]


def n_words(text: str) -> int:
    return len(text.split())


def cap(pieces: Sequence[str], max_words: int, seed: int | str) -> list[str]:
    """Pieces in a shuffled order (``random.Random(seed)``) until ``max_words`` would be exceeded."""
    order = list(pieces)
    random.Random(seed).shuffle(order)
    out, words = [], 0
    for piece in order:
        w = n_words(piece)
        if words + w > max_words:
            break
        out.append(piece)
        words += w
    return out


def mix(sources: Mapping[str, Sequence[str]], seed: int) -> list[dict[str, Any]]:
    """All sources' documents in one ``random.Random(seed)`` shuffle, with ids 0..n-1."""
    rows = [(name, text) for name, texts in sources.items() for text in texts]
    random.Random(seed).shuffle(rows)
    return [{"id": i, "source": name, "text": text} for i, (name, text) in enumerate(rows)]


def pieces(texts: Iterable[str], min_chars: int, max_chars: int) -> tuple[list[str], int]:
    """Split every text, drop pieces under ``min_chars``; also returns how many were dropped."""
    kept, short = [], 0
    for text in texts:
        for piece in split(text, max_chars):
            if len(piece) >= min_chars:
                kept.append(piece)
            else:
                short += 1
    return kept, short
