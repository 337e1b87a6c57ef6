"""The DVC cache objects behind the current ``dvc.lock``: what a reviewer needs to skip every stage.

DVC's own index lists each stage's cached outputs (``cache: false`` outputs live in git); a
directory output is one ``.dir`` manifest object plus one object per file (DVC 3 layout:
``files/md5/<2 hex>/<30 hex>``, the same under a cache and under a remote).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from darkmatter.errors import UserError

OBJECT_ID = re.compile(r"^[0-9a-f]{32}(\.dir)?$")


@dataclass(frozen=True)
class CacheObject:
    oid: str  # md5, with a ``.dir`` suffix for a directory manifest
    stage: str  # the stage whose output it belongs to
    path: str  # the output's path in the workspace (for a file of a directory: the file's path)
    size: int

    @property
    def relpath(self) -> str:
        """Its path under a DVC 3 cache or remote root."""
        return relative_object_path(self.oid)


def relative_object_path(oid: str) -> str:
    if not OBJECT_ID.match(oid):
        raise UserError(f"{oid!r} is not a DVC md5 object id; the manifest or dvc.lock is corrupt")
    return f"files/md5/{oid[:2]}/{oid[2:]}"


def cache_root(repo_root: Path) -> Path:
    return Path(repo_root) / ".dvc" / "cache"


def lock_objects(repo_root: Path, require_local: bool = True) -> list[CacheObject]:
    """Every cached output object of ``dvc.lock``, directory manifests before their files, deduplicated.

    With ``require_local`` a missing object fails with one line (build or pull it first).
    """
    from dvc.repo import Repo

    root = cache_root(repo_root)
    found: dict[str, CacheObject] = {}
    with Repo(str(repo_root)) as repo:
        for stage in repo.index.stages:
            for out in stage.outs:
                if not out.use_cache:
                    continue
                oid = out.hash_info.value
                if not oid:
                    raise UserError(f"output {out.def_path} of stage {stage.addressing} has no hash in dvc.lock; "
                                    "run `dvc repro` (or `dvc commit`) first")
                found.setdefault(oid, CacheObject(oid, stage.addressing, str(out.def_path), 0))
                if out.hash_info.isdir:
                    for entry in _dir_entries(root, oid, stage.addressing, str(out.def_path), require_local):
                        found.setdefault(entry.oid, entry)
    objects = []
    for obj in found.values():
        file = root / obj.relpath
        if not file.exists():
            if require_local:
                raise UserError(f"{obj.path} (stage {obj.stage}) is not in the local DVC cache; "
                                "run `dvc pull` or `dvc repro` first")
            objects.append(obj)
            continue
        objects.append(CacheObject(obj.oid, obj.stage, obj.path, file.stat().st_size))
    return objects


def _dir_entries(root: Path, oid: str, stage: str, out_path: str, require_local: bool) -> list[CacheObject]:
    manifest = root / relative_object_path(oid)
    if not manifest.exists():
        if require_local:
            raise UserError(f"{out_path} (stage {stage}) is not in the local DVC cache; run `dvc pull` or `dvc repro` first")
        return []
    return [CacheObject(e["md5"], stage, f"{out_path}/{e['relpath']}", 0) for e in json.loads(manifest.read_text())]
