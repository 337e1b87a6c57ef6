"""One checksummed archive of the artefacts behind ``dvc.lock``, and its import into a clone.

``bundle`` writes an uncompressed tar (the payload is float arrays and weights, which do not
compress) holding ``MANIFEST.json`` first (commit, the ``dvc.lock`` it was made for, every object
with its stage, path and size) and the cache objects under ``objects/files/md5/...``; beside it,
``<archive>.sha256`` in ``sha256sum`` format. One file, so a reviewer's download is one large
transfer however many small files the outputs hold (the HTTP remote fetches them one by one).

``import`` checks the archive's sha256 before reading it (a truncated or tampered archive fails
with one line), checks that the manifest was made for this clone's ``dvc.lock``, copies each
object into ``.dvc/cache`` verifying its md5, then runs ``dvc checkout``: ``dvc status`` is clean
and ``dvc repro`` recomputes nothing. DVC has no archive export; this is the part it lacks.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from tqdm.auto import tqdm

from darkmatter.errors import CacheCorruptError, UserError
from darkmatter.paper.build import code_commit
from darkmatter.release.objects import cache_root, lock_objects, relative_object_path

MANIFEST = "MANIFEST.json"
FORMAT = "darkmatter-dvc-bundle/1"


def file_digest(path: Path, algorithm: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def lock_digest(repo_root: Path) -> str:
    lock = Path(repo_root) / "dvc.lock"
    if not lock.exists():
        raise UserError(f"{lock} not found; run `dvc repro` first (a bundle holds what dvc.lock references)")
    return file_digest(lock, "sha256")


def write_bundle(repo_root: Path, archive: Path) -> Path:
    """Write ``archive`` and ``archive.sha256``; returns the checksum file."""
    repo_root, archive = Path(repo_root), Path(archive)
    objects = lock_objects(repo_root)
    manifest = {
        "format": FORMAT,
        "commit": code_commit(repo_root),
        "dvc_lock_sha256": lock_digest(repo_root),
        "objects": [{"oid": o.oid, "stage": o.stage, "path": o.path, "size": o.size} for o in objects],
    }
    root = cache_root(repo_root)
    partial = archive.with_name(archive.name + ".partial")
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime = len(data), 0
        tar.addfile(info, io.BytesIO(data))
        for obj in tqdm(objects, desc="bundle", unit="object"):
            info = tar.gettarinfo(root / obj.relpath, arcname=f"objects/{obj.relpath}")
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o444
            with open(root / obj.relpath, "rb") as f:
                tar.addfile(info, f)
    os.replace(partial, archive)
    checksum = archive.with_name(archive.name + ".sha256")
    checksum.write_text(f"{file_digest(archive, 'sha256')}  {archive.name}\n")
    return checksum


def expected_sha256(archive: Path, sha256: str | None) -> str:
    if sha256:
        return sha256.lower()
    sidecar = archive.with_name(archive.name + ".sha256")
    if not sidecar.exists():
        raise UserError(f"no checksum for {archive}: put {sidecar.name} beside it or pass --sha256 "
                        "(the value on the release page)")
    return sidecar.read_text().split()[0].lower()


def import_bundle(repo_root: Path, archive: Path, sha256: str | None = None, checkout: bool = True) -> int:
    """Verify ``archive``, copy its objects into the clone's cache, ``dvc checkout``; returns the object count."""
    repo_root, archive = Path(repo_root), Path(archive)
    if not archive.exists():
        raise UserError(f"{archive} not found; download the release bundle first")
    want = expected_sha256(archive, sha256)
    got = file_digest(archive, "sha256")
    if got != want:
        raise CacheCorruptError(f"{archive}: sha256 {got[:16]}... does not match the expected {want[:16]}... "
                                "(truncated or tampered); download it again")
    root = cache_root(repo_root)
    with tarfile.open(archive, "r") as tar:
        manifest = json.loads(tar.extractfile(MANIFEST).read())
        if manifest.get("format") != FORMAT:
            raise UserError(f"{archive} is not a darkmatter bundle (format {manifest.get('format')!r})")
        if manifest["dvc_lock_sha256"] != lock_digest(repo_root):
            raise UserError(f"{archive} was made for another dvc.lock (commit {manifest.get('commit')}); "
                            "check out that commit, or use the bundle released with this one")
        for entry in tqdm(manifest["objects"], desc="import", unit="object"):
            relpath = relative_object_path(entry["oid"])  # validates the id: no path traversal
            target = root / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            md5 = hashlib.md5()
            with tar.extractfile(f"objects/{relpath}") as src, open(partial, "wb") as dst:
                while block := src.read(1 << 22):
                    md5.update(block)
                    dst.write(block)
            if not entry["oid"].endswith(".dir") and md5.hexdigest() != entry["oid"]:
                partial.unlink()
                raise CacheCorruptError(f"{archive}: object for {entry['path']} fails its md5; the archive is corrupt")
            os.replace(partial, target)
    if checkout:
        proc = subprocess.run([sys.executable, "-m", "dvc", "checkout", "--force"], cwd=repo_root,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise UserError(f"dvc checkout failed after the import: {proc.stderr.strip().splitlines()[-1:]}")
    return len(manifest["objects"])
