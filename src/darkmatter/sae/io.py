"""An SAE saved in SAELens's disk format: load it, and check it reads the space a cache holds.

Every stage after ``sae`` goes through here, so trained and pretrained SAEs are treated alike.
"""

from __future__ import annotations

from pathlib import Path

from darkmatter.errors import UserError


def load_sae(path: str | Path):
    """Load an SAE saved in SAELens format (:func:`check_compatible` checks it fits a cache)."""
    from sae_lens import SAE

    path = Path(path)
    if not (path / "cfg.json").exists():
        raise UserError(f"{path} holds no SAE (no cfg.json); run the sae stage first (`dvc repro sae@<run>`)")
    return SAE.load_from_disk(str(path), device="cpu").eval()


def check_compatible(sae, cache) -> None:
    """Fail clearly if the SAE reads a different space than the cache holds (cf. SAELens #445)."""
    d_in, d_model = sae.cfg.d_in, cache.meta["d_model"]
    if d_in != d_model:
        raise UserError(f"SAE d_in {d_in} does not match the cache's d_model {d_model}; the SAE is for another model")
    hook = sae.cfg.metadata.hook_name
    if hook is not None and hook != cache.meta["hook_name"]:
        raise UserError(
            f"SAE was trained at {hook} but the cache holds {cache.meta['hook_name']}; "
            "cache the layer/site the SAE was trained on (the run's subject.layer and subject.site)"
        )


def to_device(sae, device: str):
    """The SAE on the run's device (``auto``: CUDA when present), where the subject model and the
    activations are: an SAE left on the CPU next to a CUDA model fails at the first hook."""
    from darkmatter.data.models import resolve_device

    return sae.to(resolve_device(device))
