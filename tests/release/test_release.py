"""Reviewers' paths for real: a static tree served by an HTTP server on 127.0.0.1, and the bundle.

A toy DVC pipeline (two stages, a directory output and a file output) is built, committed and
published; a fresh ``git clone`` pulls from the HTTP remote or imports the bundle, and then
``dvc status`` is clean and ``dvc repro`` runs no stage (each stage logs its runs outside the repo).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

DVC = [sys.executable, "-m", "dvc"]
RELEASE = [sys.executable, "-m", "darkmatter.release"]

MAKE = """import pathlib, sys
out = pathlib.Path("out"); out.mkdir(exist_ok=True)
for i in range(3):
    (out / f"part{i}.txt").write_text(str(i) * (i + 1) * 1000)
open(sys.argv[1], "a").write("make\\n")
"""
TOTAL = """import pathlib, sys
n = sum(len(p.read_text()) for p in sorted(pathlib.Path("out").iterdir()))
pathlib.Path("total.txt").write_text(str(n))
open(sys.argv[1], "a").write("total\\n")
"""


def _env(tmp: Path) -> dict:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", HOME=str(tmp / "home"), DVC_GLOBAL_CONFIG_DIR=str(tmp / "dvc-global"))
    env.pop("SSH_AUTH_SOCK", None)
    return env


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(cwd.parent), capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def built_repo(tmp_path):
    """A committed git + DVC repo whose two-stage pipeline has run; stages log to ``tmp/ran.log``."""
    repo = tmp_path / "repo"
    repo.mkdir()
    log = tmp_path / "ran.log"
    for cmd in (["git", "init", "-q"], ["git", "config", "user.name", "t"], ["git", "config", "user.email", "t@localhost"],
                [*DVC, "init", "-q"]):
        _run(cmd, repo)
    (repo / "make.py").write_text(MAKE)
    (repo / "total.py").write_text(TOTAL)
    (repo / "dvc.yaml").write_text(f"""stages:
  make:
    cmd: python make.py {log}
    deps: [make.py]
    outs: [out]
  total:
    cmd: python total.py {log}
    deps: [total.py, out]
    outs: [total.txt]
""")
    _run([*DVC, "repro", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "built"], repo)
    log.unlink()
    return repo


@pytest.fixture
def http_server():
    """Serve a directory read-only over HTTP on 127.0.0.1; yields (root, url)."""
    servers = []

    def start(root: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(root))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/dvc"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _clone(repo: Path, name: str) -> Path:
    clone = repo.parent / name
    _run(["git", "clone", "-q", str(repo), str(clone)], repo.parent)
    return clone


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted([*root.glob("out/*"), root / "total.txt"])}


def _assert_nothing_to_do(clone: Path, built: Path) -> None:
    assert _digests(clone) == _digests(built)
    assert "up to date" in _run([*DVC, "status"], clone).stdout
    _run([*DVC, "repro"], clone)
    assert not (clone.parent / "ran.log").exists(), "dvc repro recomputed a stage after the pull"


def test_http_remote_serves_a_fresh_clone_that_then_recomputes_nothing(built_repo, http_server, tmp_path):
    site = tmp_path / "site"
    out = _run([*RELEASE, "publish", str(site / "dvc")], built_repo).stdout
    assert "published 5 objects" in out  # out/.dir, its 3 files, total.txt
    url = http_server(site)
    clone = _clone(built_repo, "clone")
    _run([*DVC, "remote", "add", "--local", "reviewers", url], clone)
    assert not (clone / "out").exists()
    _run([*RELEASE, "pull"], clone)
    _assert_nothing_to_do(clone, built_repo)


def test_bundle_round_trip_into_a_fresh_clone(built_repo, tmp_path):
    archive = tmp_path / "release" / "artefacts.tar"
    _run([*RELEASE, "bundle", str(archive)], built_repo)
    assert (tmp_path / "release" / "artefacts.tar.sha256").exists()
    clone = _clone(built_repo, "clone")
    out = _run([*RELEASE, "import", str(archive)], clone).stdout
    assert "imported 5 objects" in out
    _assert_nothing_to_do(clone, built_repo)


@pytest.mark.parametrize("damage", ["tamper", "truncate"])
def test_a_damaged_bundle_fails_its_checksum_with_one_line(built_repo, tmp_path, damage):
    archive = tmp_path / "artefacts.tar"
    _run([*RELEASE, "bundle", str(archive)], built_repo)
    data = bytearray(archive.read_bytes())
    if damage == "tamper":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 2:]
    archive.write_bytes(bytes(data))
    clone = _clone(built_repo, "clone")
    proc = _run([*RELEASE, "import", str(archive)], clone, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "sha256" in lines[0] and "download it again" in lines[0], proc.stderr
    assert not list((clone / ".dvc").glob("cache/files/md5/*/*")), "a damaged bundle put objects in the cache"


def test_a_bundle_for_another_lock_is_refused(built_repo, tmp_path):
    archive = tmp_path / "artefacts.tar"
    _run([*RELEASE, "bundle", str(archive)], built_repo)
    clone = _clone(built_repo, "clone")
    (clone / "make.py").write_text(MAKE.replace("1000", "999"))
    _run([*DVC, "repro", "-q"], clone)
    proc = _run([*RELEASE, "import", str(archive)], clone, check=False)
    assert proc.returncode == 2 and "another dvc.lock" in proc.stderr


def test_pull_names_an_unreachable_remote_and_its_url(built_repo, http_server, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/dvc"
    clone = _clone(built_repo, "clone")
    _run([*DVC, "remote", "add", "--local", "reviewers", dead], clone)
    proc = _run([*RELEASE, "pull"], clone, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "'reviewers'" in proc.stderr and dead in proc.stderr and "unreachable" in proc.stderr

    empty = http_server(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    _run([*DVC, "remote", "modify", "--local", "reviewers", "url", empty], clone)
    proc = _run([*RELEASE, "pull"], clone, check=False)
    assert proc.returncode == 2 and "not published" in proc.stderr and empty in proc.stderr


def test_the_repository_ships_a_read_only_http_remote_for_reviewers():
    from dvc.repo import Repo

    with Repo(str(Path(__file__).resolve().parents[2])) as repo:
        url = repo.config["remote"]["reviewers"]["url"]
    assert url.startswith("https://")


def test_the_arxiv_tarball_compiles_on_its_own_and_the_citation_parses(tmp_path):
    import shutil
    import tarfile

    import yaml

    from darkmatter.release.paper import arxiv_tarball, citation_cff

    repo = Path(__file__).resolve().parents[2]
    ws = tmp_path / "ws"
    for name in ("paper", "figures"):
        shutil.copytree(repo / name, ws / name, ignore=shutil.ignore_patterns("main.pdf"))
    names = arxiv_tarball(ws, tmp_path / "arxiv.tar.gz", "gemma-3-270m-l9")
    assert {"main.tex", "main.bbl", "generated/macros.tex", "generated/provenance.tex", "figures/sae_axes.pdf"} <= set(names)
    assert not any(n.endswith(".png") for n in names)  # only what the LaTeX includes
    src = tmp_path / "arxiv"
    with tarfile.open(tmp_path / "arxiv.tar.gz") as tar:
        tar.extractall(src, filter="data")
    for _ in range(2):  # as arXiv does: pdflatex only, no bibtex, nothing outside the tarball
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "main.tex"], cwd=src,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-2000:]
    log = (src / "main.log").read_text(errors="replace")
    assert "undefined" not in log, "a citation or reference is unresolved without bibtex"

    cff = yaml.safe_load(citation_cff(ws))
    assert cff["cff-version"] == "1.2.0" and cff["authors"] and cff["preferred-citation"]["type"] == "article"
