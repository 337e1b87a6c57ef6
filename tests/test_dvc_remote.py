"""DVC remotes for real: push, delete the local cache, pull, compare hashes.

The local remote is a directory; the SSH remote is a real OpenSSH server on 127.0.0.1
(started by the ``sshd_server`` fixture). Nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DVC = [sys.executable, "-m", "dvc"]


def _run(cmd: list[str], cwd: Path) -> str:
    # A throwaway HOME and no agent: the user's ~/.ssh/config, keys or DVC global config can't interfere.
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env.update(DVC_NO_ANALYTICS="1", HOME=str(cwd.parent / "home"), DVC_GLOBAL_CONFIG_DIR=str(cwd.parent / "dvc-global"))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def dvc_repo(tmp_path):
    """A git + DVC repo tracking a small data directory (binary and text files)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _run(["git", "init", "-q"], repo)
    _run(["git", "config", "user.name", "test"], repo)
    _run(["git", "config", "user.email", "test@localhost"], repo)
    _run([*DVC, "init", "-q"], repo)
    _run([*DVC, "config", "core.analytics", "false"], repo)
    data = repo / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    np.save(data / "acts.npy", rng.standard_normal((256, 64)).astype(np.float32))
    (data / "tokens.bin").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (data / "card.md").write_text("# a data card\n")
    _run([*DVC, "add", "-q", "data"], repo)
    return repo


def _round_trip(repo: Path) -> None:
    data = repo / "data"
    before = _hashes(data)
    assert len(before) == 3
    _run([*DVC, "push"], repo)
    shutil.rmtree(data)
    shutil.rmtree(repo / ".dvc" / "cache")
    assert not data.exists()
    _run([*DVC, "pull"], repo)
    assert _hashes(data) == before


def test_local_remote_round_trip(dvc_repo, tmp_path):
    remote = tmp_path / "remote"
    _run([*DVC, "remote", "add", "-d", "local", str(remote)], dvc_repo)
    _round_trip(dvc_repo)
    assert any(p.is_file() for p in remote.rglob("*"))


@pytest.mark.sshd
def test_ssh_remote_round_trip(dvc_repo, sshd_server):
    host, port, user, keyfile, root = sshd_server
    _run([*DVC, "remote", "add", "-d", "ssh", f"ssh://{user}@{host}:{port}{root}"], dvc_repo)
    _run([*DVC, "remote", "modify", "--local", "ssh", "keyfile", str(keyfile)], dvc_repo)
    _round_trip(dvc_repo)
    stored = [p for p in root.rglob("*") if p.is_file()]
    assert len(stored) >= 3  # the objects really went through sshd into the remote directory


def test_repo_ships_a_default_local_remote():
    config = (Path(__file__).resolve().parents[1] / ".dvc" / "config").read_text()
    assert "remote = local" in config and "analytics = false" in config
