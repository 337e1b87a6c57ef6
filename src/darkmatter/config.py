"""Typed, validated view of ``params.yaml``.

Every section is a frozen pydantic dataclass with ``extra="forbid"``, so a typo'd key, a wrong
type, an unknown model or a layer out of range fails at load, before any compute, as one
:class:`~darkmatter.errors.ConfigError` line that names the key and the allowed values.
Stages call :func:`load_params` and read only their own section; with ``--run NAME`` a stage
sees the params of that hub-ladder run instead (:func:`run_params`), so one stage module serves
the default pipeline and every ladder row.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass

from darkmatter.errors import ConfigError
from darkmatter.registry import MODELS, HookSite

STRICT = ConfigDict(extra="forbid")
Device = Literal["auto", "cpu", "cuda"]
WeightDtype = Literal["float32", "bfloat16", "float16"]
StoreDtype = Literal["float32", "float16"]


def _check_layer_in_range(model: str, layer: int) -> None:
    n_layers = MODELS[model].n_layers
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} out of range for {model}; allowed: 0..{n_layers - 1}")


@dataclass(config=STRICT, frozen=True)
class ModelConfig:
    """The subject model and the residual-stream site whose activations we study."""

    name: str = "gemma-3-270m"
    #: One full pipeline per layer (DVC foreach). The first is the main layer: the SAE sweep
    #: and the paper's headline numbers use it.
    layers: Annotated[tuple[int, ...], Field(min_length=1)] = (9,)
    site: HookSite = "resid_post"
    device: Device = "auto"
    #: Weight dtype. bf16/fp16 are allowed only on CUDA: on these CPUs bf16 is ~6x slower.
    dtype: WeightDtype = "float32"
    #: Extra ``HookedTransformer.from_pretrained`` kwargs. Ladder runs take them from the SAE
    #: release (``center_writing_weights`` for gpt2-small-res-jb): the SAE only fits the model
    #: processed the way it was trained on.
    from_pretrained_kwargs: dict[str, bool | int | float | str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
        return name

    @model_validator(mode="after")
    def _layers_in_range(self) -> ModelConfig:
        for layer in self.layers:
            _check_layer_in_range(self.name, layer)
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers {list(self.layers)} has duplicates")
        if self.dtype != "float32" and self.device == "cpu":
            raise ValueError(f"dtype {self.dtype} on cpu is slow and lossy; use float32 on cpu")
        return self

    @property
    def layer(self) -> int:
        """The main layer."""
        return self.layers[0]

    def check_layer(self, layer: int) -> int:
        """``layer`` if it is one of ``layers``, else a one-line ConfigError."""
        if layer not in self.layers:
            raise ConfigError(f"layer {layer} is not in model.layers {list(self.layers)}; add it there")
        return layer


@dataclass(config=STRICT, frozen=True)
class OfflineSource:
    """One pinned offline text source: a Debian .deb or a PyPI sdist, verified by sha256."""

    name: str
    kind: Literal["deb", "sdist"]
    package: str
    version: str
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    licence: str
    #: Glob patterns (relative to the archive root; ``**/`` spans directories) of files to read.
    include: tuple[str, ...]
    #: How to strip markup: reStructuredText, plain text, or a Project Gutenberg play.
    format: Literal["rst", "text", "gutenberg"]
    #: Cap on the words taken from this source, so no single source dominates the mix.
    max_words: Annotated[int, Field(gt=0)]
    #: Glob patterns of matched files to skip (translations, generated or non-prose files).
    exclude: tuple[str, ...] = ()


@dataclass(config=STRICT, frozen=True)
class HubCorpus:
    """A Hugging Face dataset streamed for hub runs (never used by tests: they use a local fixture)."""

    dataset: str = "Skylion007/openwebtext"
    #: Folder of the dataset repo to read (e.g. FineWeb's ``sample/10BT``). Unlike a config
    #: name, it also works offline from a partial download of a multi-config dataset.
    data_dir: str | None = None
    split: str = "train"
    text_field: str = "text"
    n_docs: int = Field(default=20000, gt=0)
    streaming: bool = True


@dataclass(config=STRICT, frozen=True)
class CorpusConfig:
    source: Literal["offline", "hf"] = "offline"
    seed: int = 0
    #: Documents shorter than this (after cleaning) are dropped.
    min_chars: int = Field(default=200, gt=0)
    #: Longer documents are split at paragraph boundaries into pieces of at most this size.
    max_chars: int = Field(default=4000, gt=0)
    offline_sources: tuple[OfflineSource, ...] = ()
    hf: HubCorpus = HubCorpus()

    @model_validator(mode="after")
    def _has_sources(self) -> CorpusConfig:
        if self.source == "offline" and not self.offline_sources:
            raise ValueError("source is 'offline' but offline_sources is empty")
        if self.min_chars >= self.max_chars:
            raise ValueError("min_chars must be smaller than max_chars")
        return self


@dataclass(config=STRICT, frozen=True)
class ActivationsConfig:
    """The activation cache: how many tokens, in what shape, stored how."""

    context_length: int = Field(default=128, gt=1)
    n_tokens: int = Field(default=262144, gt=0)
    #: Tokens per resumable chunk (a multiple of context_length).
    chunk_tokens: int = Field(default=16384, gt=0)
    #: Sequences per forward pass.
    batch_size: int = Field(default=32, gt=0)
    store_dtype: StoreDtype = "float32"

    @model_validator(mode="after")
    def _chunk_multiple(self) -> ActivationsConfig:
        if self.chunk_tokens % self.context_length:
            raise ValueError(
                f"chunk_tokens {self.chunk_tokens} must be a multiple of "
                f"context_length {self.context_length}"
            )
        return self


Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]


@dataclass(config=STRICT, frozen=True)
class SAEConfig:
    """JumpReLU SAE trained with the Gemma Scope recipe (see ``darkmatter.sae_train``)."""

    width: Annotated[int, Field(gt=0)] = 4096
    #: ``step``: λ·L0 with a λ warm-up (Gemma Scope 1); ``quadratic``: Gemma Scope 2 L0 target.
    sparsity: Literal["step", "quadratic"] = "step"
    l0_coefficient: Positive = 1e-4
    #: Required by ``quadratic`` (penalty ``2/target_l0 · (l0 − target_l0)²``).
    target_l0: Positive | None = None
    l0_warm_up_fraction: Fraction = 0.1
    #: ε of the rectangle-kernel pseudo-derivatives (inputs have unit mean squared norm).
    bandwidth: Positive = 0.001
    init_threshold: Annotated[float, Field(ge=0.0)] = 0.001
    lr: Positive = 2e-3
    lr_warm_up_fraction: Fraction = 0.05
    batch_size: Annotated[int, Field(gt=0)] = 1024
    train_tokens: Annotated[int, Field(gt=0)] = 1_000_000
    #: Last fraction of cache rows, never trained on; the eval stage uses them.
    heldout_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    checkpoint_every: Annotated[int, Field(gt=0)] = 200
    seed: int = 0

    @model_validator(mode="after")
    def _target_for_quadratic(self) -> SAEConfig:
        if self.sparsity == "quadratic" and self.target_l0 is None:
            raise ValueError("sparsity 'quadratic' needs target_l0 (e.g. 50)")
        if self.target_l0 is not None and self.target_l0 > self.width:
            raise ValueError(f"target_l0 {self.target_l0} exceeds width {self.width}")
        return self

    def replace(self, **overrides) -> SAEConfig:
        """A copy with the non-None ``overrides`` applied (and validated)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(config=STRICT, frozen=True)
class SAESweepConfig:
    """Sparsity–fidelity sweep: one short training run per L0 coefficient (DVC foreach)."""

    l0_coefficients: Annotated[tuple[Positive, ...], Field(min_length=1)] = (3e-5, 1e-4, 3e-4)
    train_tokens: Annotated[int, Field(gt=0)] = 300_000
    #: Held-out rows for each point's ΔLM loss (fewer than the main SAE's, to fit the budget).
    lm_rows: Annotated[int, Field(gt=0)] = 8


@dataclass(config=STRICT, frozen=True)
class SAEEvalConfig:
    """Held-out evaluation of an SAE."""

    #: Held-out rows run through the full model for ΔLM loss and KL (full forwards are costly on CPU).
    lm_rows: Annotated[int, Field(gt=0)] = 32
    lm_batch_rows: Annotated[int, Field(gt=0)] = 4
    #: A feature is "dense" if it fires on more than this fraction of held-out tokens.
    dense_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1


@dataclass(config=STRICT, frozen=True)
class ResidualConfig:
    """The dark-matter pass: r = x − SAE(x) streamed over the cache (``darkmatter.residual``)."""

    #: Cap on one chunk of SAE latents (tokens × d_sae × 4 B, twice for encode temporaries), so
    #: 262k and 1M widths stream in small token chunks instead of an N × d_sae matrix.
    latent_budget_mb: Annotated[int, Field(gt=0)] = 2048
    #: Random unit directions: the Gaussian-projection baseline for kurtosis.
    n_random_directions: Annotated[int, Field(gt=0)] = 256
    #: Ridge penalty for r ≈ W x + b, relative to the mean eigenvalue of x's covariance.
    ridge_alpha: Annotated[float, Field(ge=0.0)] = 1e-3
    seed: int = 0


@dataclass(config=STRICT, frozen=True)
class ICAConfig:
    """PCA-whitening + ICA of the dark matter (``darkmatter.ica``)."""

    #: ``residual``: r itself; ``nonlinear``: r minus its ridge prediction from x.
    target: Literal["residual", "nonlinear"] = "residual"
    #: Whitened dimensions; ``auto`` = fewest PCs reaching ``auto_variance``, capped at ``max_components``.
    n_components: Annotated[int, Field(gt=1)] | Literal["auto"] = "auto"
    auto_variance: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    max_components: Annotated[int, Field(gt=1)] = 64
    #: ``picard``: Picard-O (ortho, extended); ``fastica``: scikit-learn parallel logcosh.
    backend: Literal["picard", "fastica"] = "picard"
    #: Independent restarts; components are matched across them for stability.
    seeds: Annotated[int, Field(gt=0)] = 3
    #: A component is stable if its best match has |cos| above this in every other seed.
    stable_threshold: Fraction = 0.9
    max_iter: Annotated[int, Field(gt=0)] = 1000
    #: Convergence tolerance; None = the backend's own default (Picard: 1e-7 on the max
    #: |relative gradient|; FastICA: 1e-4 on the max change of W).
    tol: Positive | None = None
    #: Non-special tokens used to fit ICA (a seeded subsample when the cache holds more).
    max_tokens: Annotated[int, Field(gt=0)] = 65536
    seed: int = 0


@dataclass(config=STRICT, frozen=True)
class CompareConfig:
    """ICA mixing directions vs SAE decoder rows, and the kurtosis gap (``darkmatter.compare``)."""

    #: Max |cos| below this: a direction the SAE does not have ("novel").
    novel_below: Fraction = 0.3
    #: Max |cos| above this: the SAE has it.
    match_above: Fraction = 0.8
    #: Random unit directions per baseline (whole space; r's top-k PCA subspace).
    n_random: Annotated[int, Field(gt=0)] = 1000
    #: An SAE feature is "active" if it fires on more than this fraction of non-special tokens.
    active_frequency: Fraction = 0.001
    #: Decoder rows per block of the cosine computation (bounds memory at 1M widths).
    decoder_chunk: Annotated[int, Field(gt=0)] = 65536
    seed: int = 0

    @model_validator(mode="after")
    def _ordered(self) -> CompareConfig:
        if self.novel_below >= self.match_above:
            raise ValueError("novel_below must be smaller than match_above")
        return self


@dataclass(config=STRICT, frozen=True)
class ExamplesConfig:
    """Contexts per unit for the dashboard and autointerp (``darkmatter.examples``)."""

    #: Highest-activating contexts kept per unit.
    top_k: Annotated[int, Field(gt=0)] = 20
    #: Activation quantile bins above the unit's activity threshold, and samples per bin.
    n_quantiles: Annotated[int, Field(gt=0)] = 10
    per_quantile: Annotated[int, Field(gt=0)] = 2
    #: Contexts below the threshold (negatives for detection scoring).
    n_non_activating: Annotated[int, Field(ge=0)] = 20
    #: Tokens shown on each side of the activating token.
    window: Annotated[int, Field(ge=0)] = 8
    #: Baseline units: randomly sampled active SAE features and random unit directions in x.
    n_sae_features: Annotated[int, Field(ge=0)] = 32
    n_random_directions: Annotated[int, Field(ge=0)] = 32
    #: A dense unit (ICA source, random direction; z-scored) "activates" above this z.
    z_threshold: Positive = 2.0
    seed: int = 0


@dataclass(config=STRICT, frozen=True)
class AutointerpConfig:
    """Explain + detection scoring of units (``darkmatter.autointerp``, ``darkmatter.llm``)."""

    #: ``local``: SmolLM2-135M-Instruct on CPU (offline, weak); ``anthropic``: Messages API
    #: (key from ANTHROPIC_API_KEY only); ``replay``: the response cache only.
    backend: Literal["local", "anthropic", "replay"] = "local"
    model: str = "claude-sonnet-5-5"
    local_model: str = "SmolLM2-135M-Instruct"
    #: Which backend's cached responses ``replay`` reads.
    replay_of: Literal["local", "anthropic"] = "local"
    #: Anthropic endpoint override (a proxy, or the loopback server in tests).
    base_url: str | None = None
    concurrency: Annotated[int, Field(gt=0)] = 4
    #: Message Batches API: half price, asynchronous (anthropic only).
    use_batches: bool = False
    max_ica_units: Annotated[int, Field(ge=0)] = 64
    #: SAE features and random directions each (hub runs: 200).
    max_baseline_units: Annotated[int, Field(ge=0)] = 16
    #: Top contexts shown to the explainer.
    explain_top: Annotated[int, Field(gt=0)] = 8
    #: Held-out detection contexts per unit: activating (across quantiles) and not.
    detect_positives: Annotated[int, Field(gt=0)] = 5
    detect_negatives: Annotated[int, Field(gt=0)] = 5
    n_bootstrap: Annotated[int, Field(gt=0)] = 2000
    seed: int = 0


@dataclass(config=STRICT, frozen=True)
class LadderRun:
    """One rung of the hub ladder: a hub model, a pretrained SAE at its hook, a web-text corpus."""

    #: Row label in the paper's ladder table.
    label: str
    #: Registry name of a hub model (``darkmatter.registry``).
    model: str
    #: SAELens release and SAE id (``sae_lens/pretrained_saes.yaml``).
    release: str
    sae_id: str
    #: Where the SAE reads the residual stream; checked against the loaded SAE's hook.
    layer: Annotated[int, Field(ge=0)]
    site: HookSite
    #: Key of ``ladder.corpora``.
    corpus: str
    #: Tokens per cached row: the SAE's training context (jb: 128; Gemma Scope 2: 1024).
    context_length: Annotated[int, Field(gt=1)] = 128
    #: Listed in the paper as planned; the switch refuses it (too large for one GPU here).
    planned: bool = False

    @model_validator(mode="after")
    def _hub_model(self) -> LadderRun:
        spec = MODELS.get(self.model)
        if spec is None or spec.source != "hub":
            hub = [name for name, m in MODELS.items() if m.source == "hub"]
            raise ValueError(f"model {self.model!r} is not a hub model; allowed: {', '.join(hub)}")
        _check_layer_in_range(self.model, self.layer)
        return self


@dataclass(config=STRICT, frozen=True)
class LadderConfig:
    """The hub ladder (README "Hub ladder"): real pretrained SAEs on GPT-2 small and Gemma 3.

    ``runs`` is the switch: each name listed gets the whole pipeline under ``data/ladder/<run>/``
    and ``metrics/ladder/<run>/``, with ``overrides`` (full sizes) applied on top of params.yaml.
    """

    runs: tuple[str, ...] = ()
    device: Device = "auto"
    #: Subject-model weights; bf16/fp16 need CUDA. The analysis is fp32 either way.
    dtype: WeightDtype = "float32"
    corpora: dict[str, HubCorpus] = Field(default_factory=dict)
    definitions: dict[str, LadderRun] = Field(default_factory=dict)
    #: Params sections merged over params.yaml for every ladder run, e.g. ``{ica: {max_tokens: ...}}``.
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> LadderConfig:
        for name, run in self.definitions.items():
            if run.corpus not in self.corpora:
                raise ValueError(f"definitions.{name}.corpus {run.corpus!r} unknown; allowed: {', '.join(self.corpora)}")
        runnable = [name for name, run in self.definitions.items() if not run.planned]
        for name in self.runs:
            if name not in self.definitions:
                raise ValueError(f"runs: {name!r} is not defined; allowed: {', '.join(runnable)}")
            if self.definitions[name].planned:
                raise ValueError(f"runs: {name!r} is planned only (see its definition); remove it from runs")
        if len(set(self.runs)) != len(self.runs):
            raise ValueError(f"runs {list(self.runs)} has duplicates")
        for section in self.overrides:
            if section not in ("activations", "sae_eval", "residual", "ica", "compare", "examples", "autointerp"):
                raise ValueError(f"overrides.{section}: not an analysis section")
        return self


@dataclass(config=STRICT, frozen=True)
class Params:
    """All of ``params.yaml``. Sections are required: params.yaml is the one source of truth."""

    model: ModelConfig
    corpus: CorpusConfig
    activations: ActivationsConfig
    sae: SAEConfig
    sae_sweep: SAESweepConfig
    sae_eval: SAEEvalConfig
    residual: ResidualConfig
    ica: ICAConfig
    compare: CompareConfig
    examples: ExamplesConfig
    autointerp: AutointerpConfig
    ladder: LadderConfig


def _allowed_keys(loc: tuple) -> list[str]:
    """Field names of the dataclass that holds the offending key at ``loc``."""
    cls: Any = Params
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        hint = typing.get_type_hints(cls)[part]
        args = typing.get_args(hint)
        cls = next((a for a in args if hasattr(a, "__dataclass_fields__")), hint)
    return list(cls.__dataclass_fields__)


def _one_line(exc: ValidationError, origin: str) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        msg = f"unknown key; allowed: {', '.join(_allowed_keys(err['loc']))}"
    elif err["type"] == "literal_error":
        msg = f"{err.get('input')!r} is not allowed; {msg.replace('Input should be', 'allowed:')}"
    return f"{origin}: {key}: {msg}"


def parse_params(raw: dict[str, Any], origin: str = "params.yaml") -> Params:
    """Validate a params mapping; raise :class:`ConfigError` with one line on the first problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level")
    try:
        return Params(**raw)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, origin)) from None


def load_params(path: str | Path = "params.yaml", run: str | None = None) -> Params:
    """params.yaml, validated; with ``run``, the params of that hub-ladder run (:func:`run_params`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found; run from the repository root or pass --params")
    with path.open() as fh:
        raw = yaml.safe_load(fh) or {}
    params = parse_params(raw, origin=str(path))
    return params if run is None else run_params(raw, params, run, origin=str(path))


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def run_params(raw: dict[str, Any], params: Params, run: str, origin: str = "params.yaml") -> Params:
    """The params a ladder run's stages see: its model, layer, site and corpus, the SAE release's
    model kwargs, and ``ladder.overrides``, validated like params.yaml itself.

    Checks the release and SAE id against SAELens's directory (close matches on a typo) before
    any stage does work.
    """
    from darkmatter.hub import release_model_kwargs

    ladder = params.ladder
    if run not in ladder.definitions:
        raise ConfigError(f"{origin}: ladder run {run!r} is not defined; allowed: {', '.join(ladder.definitions)}")
    d = ladder.definitions[run]
    if d.planned:
        raise ConfigError(f"{origin}: ladder run {run!r} is planned only; it cannot be run")
    merged = _merged(raw, ladder.overrides)
    merged["model"] = {"name": d.model, "layers": [d.layer], "site": d.site, "device": ladder.device,
                       "dtype": ladder.dtype, "from_pretrained_kwargs": release_model_kwargs(d.release, d.sae_id)}
    merged["corpus"] = {**merged["corpus"], "source": "hf", "hf": raw["ladder"]["corpora"][d.corpus]}
    merged["activations"] = {**merged["activations"], "context_length": d.context_length}
    return parse_params(merged, origin=f"{origin} (ladder run {run})")


def add_params_arguments(parser) -> None:
    """``--params`` and ``--run``, shared by every stage CLI."""
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--run", default=None,
                        help="a hub-ladder run (ladder.definitions): its model, SAE, corpus and full sizes")


def params_from_args(args) -> Params:
    return load_params(args.params, run=args.run)
