"""Markup to prose: reStructuredText (Sphinx included), Project Gutenberg plays, plain text.

Written with the standard library :mod:`re` on purpose: docutils is not a dependency, and it
would *render* the documents (resolving roles, failing on unknown Sphinx directives) rather
than strip them to the prose a reader sees. The rules are listed in :func:`strip_rst`.
Directive bodies are kept for the directives that carry prose (admonitions, version notes, and
object descriptions such as ``.. function::``, where most of the Python library reference
lives) and dropped for all others (code, tables, toctrees, ``kernel-doc``, ...).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Sequence


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
