"""Content hashes: sha256 of files (pinned archives, weights, resumable chunks) and short
fingerprints of configurations (what a resumable scratch directory belongs to)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(config: dict) -> str:
    """Short stable hash of everything that changes the numbers a scratch directory holds."""
    blob = json.dumps(config, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
