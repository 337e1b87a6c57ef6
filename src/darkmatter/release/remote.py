"""A read-only HTTP(S) DVC remote for reviewers: publish a static tree, pull with a clear error.

``publish`` pushes what the current ``dvc.lock`` references into a directory with DVC's own
``push`` (to a throwaway remote given as a config override, so no config file changes). The
directory is a DVC 3 remote tree (``files/md5/..``): any static host can serve it, and a clone
reads it as the ``reviewers`` remote of ``.dvc/config`` (``dvc pull -r reviewers``). HTTP remotes
have no run-cache, so reviewers run plain ``dvc pull``, never ``dvc repro --pull``.

``pull`` first asks the remote for one object of this ``dvc.lock``: an unreachable host or a
tree published for another commit fails with one line naming the remote and the URL, before
DVC's retries and many-line tracebacks.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from darkmatter.errors import UserError
from darkmatter.release.objects import lock_objects

PUBLISH_REMOTE = "darkmatter-publish"


def publish(repo_root: Path, target: Path, jobs: int = 4) -> int:
    """Push every cached output of ``dvc.lock`` into ``target``; returns the number of objects there."""
    from dvc.repo import Repo

    repo_root, target = Path(repo_root).resolve(), Path(target).resolve()
    objects = lock_objects(repo_root)  # fails with one line if the local cache lacks any of them
    target.mkdir(parents=True, exist_ok=True)
    with Repo(str(repo_root), config={"remote": {PUBLISH_REMOTE: {"url": str(target)}}}) as repo:
        repo.push(remote=PUBLISH_REMOTE, jobs=jobs)
    missing = [o.path for o in objects if not (target / o.relpath).exists()]
    if missing:
        raise UserError(f"dvc push left {len(missing)} objects out of {target} (first: {missing[0]}); rerun publish")
    return len(objects)


def remote_url(repo_root: Path, name: str) -> str:
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        remotes = repo.config.get("remote", {})
        if name not in remotes:
            raise UserError(f"no DVC remote named {name!r}; known: {', '.join(sorted(remotes)) or 'none'} (dvc remote list)")
        return remotes[name]["url"]


def check_remote(repo_root: Path, name: str, timeout: float = 15.0) -> str:
    """Fail with one line unless remote ``name`` serves this ``dvc.lock``'s first object; returns its URL."""
    url = remote_url(repo_root, name)
    if not url.startswith(("http://", "https://")):
        return url  # local, SSH, ...: DVC's own errors name the path
    probe = lock_objects(repo_root, require_local=False)[0]
    object_url = f"{url.rstrip('/')}/{probe.relpath}"
    try:
        with urllib.request.urlopen(urllib.request.Request(object_url, method="HEAD"), timeout=timeout):
            pass
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise UserError(f"remote {name!r} at {url} does not hold this commit's artefacts ({probe.path} is "
                            "missing); the authors have not published this dvc.lock there") from None
        raise UserError(f"remote {name!r} at {url} answered HTTP {exc.code} for {probe.path}; "
                        "check the URL (dvc remote list) or the host's access settings") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"remote {name!r} at {url} is unreachable ({reason}); check the URL "
                        "(dvc remote list) and your network") from None
    return url


def pull(repo_root: Path, name: str, targets: list[str] | None = None) -> None:
    """``dvc pull -r name [targets]`` after :func:`check_remote`."""
    check_remote(repo_root, name)
    proc = subprocess.run([sys.executable, "-m", "dvc", "pull", "-r", name, *(targets or [])], cwd=repo_root)
    if proc.returncode != 0:
        raise UserError(f"dvc pull -r {name} failed (exit {proc.returncode}); see DVC's message above")
