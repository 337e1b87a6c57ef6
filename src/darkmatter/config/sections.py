"""The analysis sections of ``params.yaml``; a run may override any of them through ``sizes``."""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

from darkmatter.config.catalog import LOCAL_JUDGES, STRICT, Fraction, Positive, StoreDtype


# ---- analysis sections (a run may override any of them through ``sizes``) ---------------------

@dataclass(config=STRICT, frozen=True)
class ActivationsConfig:
    """The activation cache: how many tokens, in what chunks, stored how."""

    n_tokens: int = Field(default=262144, gt=0)
    #: Tokens per resumable chunk (a multiple of the run's context length).
    chunk_tokens: int = Field(default=16384, gt=0)
    #: Sequences per forward pass.
    batch_size: int = Field(default=32, gt=0)
    store_dtype: StoreDtype = "float32"
    #: Run the forward through ``torch.compile`` (``SubjectModel.compile_forward``): ~1.2× on CPU.
    compile: bool = True


@dataclass(config=STRICT, frozen=True)
class SAEConfig:
    """JumpReLU SAE trained with the Gemma Scope recipe (see ``darkmatter.sae.train``)."""

    width: Annotated[int, Field(gt=0)] = 4096
    #: ``step``: λ·L0 with a λ warm-up (Gemma Scope 1); ``quadratic``: Gemma Scope 2 L0 target.
    sparsity: Literal["step", "quadratic"] = "step"
    l0_coefficient: Positive = 1e-4
    #: Required by ``quadratic`` (penalty ``2/target_l0 · (l0 − target_l0)²``).
    target_l0: Positive | None = None
    #: λ rises linearly from 0 over this many training tokens (Gemma Scope: 10k steps), then stays.
    l0_warm_up_tokens: Annotated[int, Field(ge=0)] = 200_000
    #: ε of the rectangle-kernel pseudo-derivatives (inputs have unit mean squared norm).
    bandwidth: Positive = 0.001
    init_threshold: Annotated[float, Field(ge=0.0)] = 0.001
    #: If set, each feature's initial threshold fires it on this fraction of a training sample
    #: (instead of ``init_threshold`` for all).
    init_firing_rate: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    lr: Positive = 2e-3
    #: Adam's β2 (β1 is 0, as in Gemma Scope). A feature that fires rarely gets a gradient rarely; its
    #: second-moment estimate decays in between, and its next step is that much larger.
    adam_beta2: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.999
    #: The learning rate rises over this many tokens, then stays constant: with no decay, the SAE after
    #: its first N tokens is what a run of N tokens would give (the training curve and the SAE axes rest on it).
    lr_warm_up_tokens: Annotated[int, Field(ge=0)] = 100_000
    #: Anthropic's pre-activation loss on dead features, c·Σ_dead relu(t − pre)·‖d‖ (SAELens's
    #: ``pre_act_loss_coefficient``); null for none.
    pre_act_loss_coefficient: Positive | None = None
    #: SAELens's TopK auxiliary loss (Gao et al. 2024) on the dead features: the top d_in/2 dead
    #: pre-activations of each token reconstruct the live features' error; null for none.
    aux_loss_coefficient: Positive | None = None
    #: A feature that has not fired on this many training tokens is dead (SAELens's dead-feature window).
    dead_window_tokens: Annotated[int, Field(gt=0)] = 250_000
    #: Re-point the dead features at badly reconstructed tokens (``darkmatter.sae.resample``) every this
    #: many training tokens, up to ``resample_until_tokens`` (null: half of train_tokens); null for never.
    resample_every_tokens: Annotated[int, Field(gt=0)] | None = None
    resample_until_tokens: Annotated[int, Field(gt=0)] | None = None
    batch_size: Annotated[int, Field(gt=0)] = 1024
    train_tokens: Annotated[int, Field(gt=0)] = 1_000_000
    #: The SAE is also saved after these many training tokens (the training curve), each below train_tokens.
    curve_tokens: tuple[Annotated[int, Field(gt=0)], ...] = ()
    #: Last fraction of cache rows, never trained on; every held-out number uses them.
    heldout_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    checkpoint_every: Annotated[int, Field(gt=0)] = 200
    seed: int = 0
    #: Compile the element-wise passes of the fused training forward (``darkmatter.sae.fused``).
    compile: bool = True

    @model_validator(mode="after")
    def _target_for_quadratic(self) -> SAEConfig:
        if self.sparsity == "quadratic" and self.target_l0 is None:
            raise ValueError("sparsity 'quadratic' needs target_l0 (e.g. 50)")
        if self.target_l0 is not None and self.target_l0 > self.width:
            raise ValueError(f"target_l0 {self.target_l0} exceeds width {self.width}")
        for name in ("l0_warm_up_tokens", "lr_warm_up_tokens"):
            if getattr(self, name) > self.train_tokens:
                raise ValueError(f"{name} {getattr(self, name)} exceeds train_tokens {self.train_tokens}; "
                                 "the warm-up would not end")
        if self.resample_every_tokens is not None and self.resample_every_tokens < self.batch_size:
            raise ValueError(f"resample_every_tokens {self.resample_every_tokens} is less than one batch of {self.batch_size}")
        late = [t for t in self.curve_tokens if t >= self.train_tokens]
        if late:
            raise ValueError(f"curve_tokens {late} not below train_tokens {self.train_tokens}; the last point is the SAE itself")
        return self

    def resample_steps(self) -> frozenset[int]:
        """The training steps after which dead features are resampled (none unless asked)."""
        if self.resample_every_tokens is None:
            return frozenset()
        every = self.resample_every_tokens // self.batch_size
        until = (self.resample_until_tokens or self.train_tokens // 2) // self.batch_size
        return frozenset(range(every, until + 1, every))

    def replace(self, **overrides) -> SAEConfig:
        """A copy with the non-None ``overrides`` applied (and validated)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


#: The settings an SAE axis may vary (``sae_axes.points``), one per point.
AXIS_SETTINGS = ("l0_coefficient", "width")


@dataclass(config=STRICT, frozen=True)
class SAEAxesConfig:
    """SAEs beside the main run's (``darkmatter.sae.axes``): the L0 and width axes, each point changing one
    ``sae`` setting of a short reference, and the seed axis, the main SAE retrained with other seeds."""

    #: Training tokens of every point and of the reference: the main SAE after this many tokens.
    train_tokens: Annotated[int, Field(gt=0)] = 250_000
    #: name -> the one setting it changes (``l0_coefficient`` or ``width``); ``{}`` is the reference.
    points: dict[str, dict[str, int | float]] = dataclasses.field(default_factory=lambda: {"reference": {}})
    #: The seed axis: the main recipe unchanged (all of ``sae.train_tokens``) but for the seed of initialisation
    #: and data order; each is the SAE ``seed-<n>``, and the main SAE is the axis's own member.
    seeds: tuple[Annotated[int, Field(ge=0)], ...] = ()
    #: SAEs (points or seeds) whose residual r is streamed like the main run's (its FVU and kurtosis headlines).
    chain: tuple[str, ...] = ()
    #: Chain SAEs that also get ICA and the decoder comparison (ICA's headlines; ~1 min each on 2 cores).
    chain_ica: tuple[str, ...] = ()
    #: ICA restarts and disjoint resamples on a ``chain_ica`` SAE (the main run's restarts, without its
    #: disjoint resamples: two restarts run as one round of the two parallel fits).
    chain_ica_seeds: Annotated[int, Field(ge=1)] = 2
    chain_ica_resamples: Annotated[int, Field(ge=0)] = 0

    @property
    def seed_names(self) -> dict[str, int]:
        """The seed axis's SAEs by name (``seed-<n>``)."""
        return {f"seed-{seed}": seed for seed in self.seeds}

    @property
    def names(self) -> tuple[str, ...]:
        """Every SAE these axes train: the seed axis's first (the long runs), then the points."""
        return (*self.seed_names, *self.points)

    @model_validator(mode="after")
    def _one_setting_each(self) -> SAEAxesConfig:
        if {} not in self.points.values():
            raise ValueError("points: none is the reference ({}); every axis is read against it")
        for name, change in self.points.items():
            if len(change) > 1 or set(change) - set(AXIS_SETTINGS):
                raise ValueError(f"points.{name}: {change} must change one of {', '.join(AXIS_SETTINGS)} (or none: the "
                                 "reference); the seed axis is sae_axes.seeds")
        if len(set(self.seeds)) < len(self.seeds):
            raise ValueError(f"seeds: {list(self.seeds)} repeats a seed; list each once")
        clash = [name for name in self.seed_names if name in self.points]
        if clash:
            raise ValueError(f"points: {clash} is also the name of a seed-axis SAE; rename the point")
        unknown = [c for c in self.chain if c not in self.names]
        if unknown:
            raise ValueError(f"chain: {unknown} are not points or seeds; allowed: {', '.join(self.names)}")
        unchained = [c for c in self.chain_ica if c not in self.chain]
        if unchained:
            raise ValueError(f"chain_ica: {unchained} are not in chain (ICA reads the chain's residual); add them to chain")
        return self


@dataclass(config=STRICT, frozen=True)
class SAEEvalConfig:
    """Held-out evaluation of an SAE (``darkmatter.sae.evaluate``, ``darkmatter.sae.splice``)."""

    #: Held-out rows, spread over the held-out set, on which the SAE is spliced into the model.
    lm_rows: Annotated[int, Field(gt=0)] = 32
    lm_batch_rows: Annotated[int, Field(gt=0)] = 4
    #: Predictions read out per row, spread evenly (the unembedding is most of a forward's cost).
    positions_per_row: Annotated[int, Field(gt=0)] = 32
    #: Train tokens (a seeded sample) for r's mean and covariance: the same-norm noise and error-part variants.
    geometry_tokens: Annotated[int, Field(gt=0)] = 65536
    #: A feature is "dense" if it fires on more than this fraction of held-out tokens.
    dense_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    #: Held-out rows on which SAELens's own evaluation code is run beside ours (``darkmatter.sae.crosscheck``); 0 = none.
    crosscheck_rows: Annotated[int, Field(ge=0)] = 2
    n_bootstrap: Annotated[int, Field(gt=0)] = 2000
    seed: int = 0


@dataclass(config=STRICT, frozen=True)
class ResidualConfig:
    """The dark-matter pass: r = x − SAE(x) streamed over the cache (``darkmatter.analysis.residual``)."""

    #: The chunk budget of every stage: a chunk of SAE latents (tokens × d_sae × 4 B, twice for encode
    #: temporaries), or compare's block of decoder cosines, stays under it, so 262k and 1M widths stream
    #: in small chunks instead of an N × d_sae matrix.
    latent_budget_mb: Annotated[int, Field(gt=0)] = 2048
    #: Random unit directions: the Gaussian-projection baseline for kurtosis.
    n_random_directions: Annotated[int, Field(gt=0)] = 256
    #: Ridge penalty for r ≈ W x + b, relative to the mean eigenvalue of x's covariance.
    ridge_alpha: Annotated[float, Field(ge=0.0)] = 1e-3
    #: A non-special token is a high-norm outlier if ‖x‖ exceeds this many times the median ‖x‖
    #: of non-special tokens (~0.03% of tokens, mostly apostrophes, at ~10x the median here).
    outlier_norm_factor: Annotated[float, Field(gt=1.0)] = 5.0
    #: Exclude outliers from the analysis (ICA, comparisons, examples, autointerp) like special
    #: tokens; the residual's headline numbers are reported both ways regardless.
    exclude_outliers: bool = True
    seed: int = 0


@dataclass(config=STRICT, frozen=True)
class ICAConfig:
    """PCA-whitening + ICA of the dark matter (``darkmatter.analysis.ica``)."""

    #: ``residual``: r itself; ``nonlinear``: r minus its ridge prediction from x.
    target: Literal["residual", "nonlinear"] = "residual"
    #: Whitened dimensions; ``auto`` = fewest PCs reaching ``auto_variance``, capped at ``max_components``.
    n_components: Annotated[int, Field(gt=1)] | Literal["auto"] = "auto"
    auto_variance: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    max_components: Annotated[int, Field(gt=1)] = 64
    #: ``picard``: Picard-O (ortho, extended) in torch, CPU or CUDA; ``python-picard``: the same
    #: algorithm in numpy (the reference); ``fastica``: scikit-learn parallel logcosh.
    backend: Literal["picard", "python-picard", "fastica"] = "picard"
    #: Restarts from other random rotations on the same tokens (seed stability).
    seeds: Annotated[int, Field(gt=0)] = 2
    #: Refits on disjoint token samples of the train rows (resampling stability).
    resamples: Annotated[int, Field(ge=0)] = 2
    #: A component is stable if its match has |cos| above this (rows of W, in whitened space) in
    #: every restart and every resample; with seeds 1 and resamples 0 stability is not measured.
    stable_threshold: Fraction = 0.9
    max_iter: Annotated[int, Field(gt=0)] = 1000
    #: Convergence tolerance; None = the backend's own default (Picard: 1e-7 on the max
    #: |relative gradient|; FastICA: 1e-4 on the max change of W).
    tol: Positive | None = None
    #: Tokens each fit uses: a seeded sample of the train rows' analysed tokens.
    max_tokens: Annotated[int, Field(gt=0)] = 65536
    seed: int = 0


@dataclass(config=STRICT, frozen=True)
class CompareConfig:
    """ICA mixing directions vs SAE decoder rows, and the kurtosis gap (``darkmatter.analysis.compare``)."""

    #: Max |cos| below this: a direction the SAE does not have ("novel").
    novel_below: Fraction = 0.3
    #: Max |cos| above this: the SAE has it.
    match_above: Fraction = 0.8
    #: Random unit directions in the whole space (a reference for max |cos|).
    n_random: Annotated[int, Field(gt=0)] = 1000
    #: Random rotations W of the whitened space: the null distribution of the statistics of the
    #: k mixing directions V Λ^{1/2} Wᵀ taken together.
    n_rotations: Annotated[int, Field(gt=0)] = 1000
    #: Bootstrap resamples for the kurtosis-gap confidence intervals.
    n_bootstrap: Annotated[int, Field(gt=0)] = 2000
    #: An SAE feature is "active" if it fires on more than this fraction of held-out analysed tokens.
    active_frequency: Fraction = 0.001
    seed: int = 0

    @model_validator(mode="after")
    def _ordered(self) -> CompareConfig:
        if self.novel_below >= self.match_above:
            raise ValueError("novel_below must be smaller than match_above")
        return self


@dataclass(config=STRICT, frozen=True)
class EllipticityConfig:
    """Is the dark matter elliptical (ICA's rotation unidentifiable)? (``darkmatter.analysis.ellipticity``)."""

    #: Spherical surrogates (each token's norm kept, its direction uniform): the null of the test.
    n_surrogates: Annotated[int, Field(ge=20)] = 200
    #: Cluster-bootstrap resamples (whole held-out documents) for the BCa intervals.
    n_bootstrap: Annotated[int, Field(gt=0)] = 2000
    seed: int = 0


@dataclass(config=STRICT, frozen=True)
class ExamplesConfig:
    """Contexts per unit for the dashboard and autointerp (``darkmatter.interp.examples``)."""

    #: Highest-activating contexts kept per unit.
    top_k: Annotated[int, Field(gt=0)] = 20
    #: Activation quantile bins above the unit's activity threshold, and samples per bin.
    n_quantiles: Annotated[int, Field(gt=0)] = 10
    per_quantile: Annotated[int, Field(gt=0)] = 2
    #: Contexts below the threshold (negatives for detection scoring).
    n_non_activating: Annotated[int, Field(ge=0)] = 20
    #: Tokens shown on each side of the activating token.
    window: Annotated[int, Field(ge=0)] = 8
    #: Random units: s = q·z for random unit q in the ICA's whitened space (same target, same
    #: whitening as the ICA components; not optimised). Every ICA component also gets one
    #: density-matched SAE feature.
    n_random_units: Annotated[int, Field(ge=0)] = 32
    #: A dense unit (ICA source, random direction; z-scored) "activates" above this z.
    z_threshold: Positive = 2.0
    seed: int = 0


@dataclass(config=STRICT, frozen=True)
class AutointerpConfig:
    """Explain + detection scoring of units (``darkmatter.interp.autointerp``, ``darkmatter.interp.llm``)."""

    #: ``local``: an offline judge on CPU (``local_model``, ``local_explainer``); ``anthropic``:
    #: Messages API (key from ANTHROPIC_API_KEY only); ``openai``: any OpenAI-compatible server at
    #: ``base_url`` serving ``model`` (vLLM, llama.cpp, Ollama, OpenRouter; key from OPENAI_API_KEY
    #: only, none for a local server); ``replay``: the response cache only.
    backend: Literal["local", "anthropic", "openai", "replay"] = "local"
    model: str = "claude-sonnet-5-5"
    #: The local judge that scores detection, and the one that writes explanations (names of
    #: :data:`LOCAL_JUDGES`; both may be the same), and their arithmetic. ``auto`` resolves by the
    #: CPU the stage runs on (:func:`darkmatter.interp.judges.resolve`; the metrics record what it resolved to).
    local_model: str = "auto"
    local_explainer: str = "auto"
    #: ``bfloat16`` needs a CPU with bf16 units (amx_bf16 or avx512_bf16); the stage refuses it elsewhere.
    local_numerics: Literal["auto", "float32", "bfloat16"] = "auto"
    #: How detection is scored. ``likelihood``: the judge's mean log-probability of the explanation
    #: written after the excerpt and its marked token (language modelling, which small local judges
    #: do far better than following a Yes/No instruction; needs a local judge's log-probabilities).
    #: ``yes_no``: the judge answers whether the unit fires; log P(Yes) − log P(No) where the
    #: backend gives log-probabilities (local; openai where the server returns them), the answers
    #: alone otherwise (anthropic).
    scorer: Literal["likelihood", "yes_no"] = "likelihood"
    #: Which backend's cached responses ``replay`` reads.
    replay_of: Literal["local", "anthropic", "openai"] = "local"
    #: The server of backend openai (e.g. http://127.0.0.1:8000/v1 for ``vllm serve``; None:
    #: api.openai.com), or an Anthropic endpoint override (a proxy, or the loopback server in tests).
    base_url: str | None = None
    #: Requests in flight at once (anthropic, openai).
    concurrency: Annotated[int, Field(gt=0)] = 4
    #: The client's own retries of a request (429, 5xx, timeouts; anthropic, openai).
    max_retries: Annotated[int, Field(ge=0)] = 5
    #: Message Batches API: half price, asynchronous (anthropic only).
    use_batches: bool = False
    #: ICA components scored (a uniform sample over the kurtosis ranking when fewer than k), each
    #: paired with its density-matched SAE feature.
    n_ica_units: Annotated[int, Field(ge=0)] = 32
    #: Random units scored (the unpaired baseline).
    n_random_units: Annotated[int, Field(ge=0)] = 16
    #: Top contexts shown to the explainer.
    explain_top: Annotated[int, Field(gt=0)] = 8
    #: Held-out detection contexts per unit: activating (across quantiles) and not.
    detect_positives: Annotated[int, Field(gt=0)] = 8
    detect_negatives: Annotated[int, Field(gt=0)] = 8
    #: Held-out contexts per class (activating and not) for the calibration units' true- and
    #: wrong-explanation rows: the judge's ceiling and its control. More than the other units get,
    #: because one unit's AUC from 8 + 8 contexts has a sampling SD near 0.15, which would hide
    #: whether the judge sees anything.
    calibration_contexts: Annotated[int, Field(gt=0)] = 20
    n_bootstrap: Annotated[int, Field(gt=0)] = 2000
    seed: int = 0

    @field_validator("local_model", "local_explainer")
    @classmethod
    def _known_judge(cls, name: str) -> str:
        if name != "auto" and name not in LOCAL_JUDGES:
            raise ValueError(f"unknown local judge {name!r}; allowed: auto, {', '.join(LOCAL_JUDGES)}")
        return name

    @model_validator(mode="after")
    def _scorer_has_log_probabilities(self) -> AutointerpConfig:
        messages_api = self.backend == "anthropic" or (self.backend == "replay" and self.replay_of == "anthropic")
        if self.scorer == "likelihood" and messages_api:
            raise ValueError("scorer 'likelihood' needs a local judge's log-probabilities, which the Messages API does not "
                             "give; with backend anthropic set autointerp.scorer: yes_no")
        return self


@dataclass(config=STRICT, frozen=True)
class CausalConfig:
    """Causal tests of the dark matter: ablation, error-node split, steering, attribution
    (``darkmatter.causal``). Sized so the stage adds a few minutes to the default build on 2 cores."""

    #: Held-out rows for the gradient pass (attribution, and the cheap ranking of all units) ...
    attribution_rows: Annotated[int, Field(gt=0)] = 8
    #: ... and, disjoint from them, the held-out rows of the exact ablations.
    rows: Annotated[int, Field(gt=0)] = 8
    batch_rows: Annotated[int, Field(gt=0)] = 4
    #: Predictions read out per row (evenly spaced; edits apply at every position). The
    #: unembedding and softmax dominate a forward from a middle layer; a subsample cuts them.
    positions_per_row: Annotated[int, Field(gt=0)] = 32
    #: ``project``: x − (x·v̂)v̂; ``mean``: x − ((x − μ)·v̂)v̂ with μ the train rows' mean of x.
    #: Mean-ablation is the default: projecting a direction out also removes its average, and
    #: the residual stream's large mean makes that catastrophic for any direction that overlaps it
    #: (a random direction then "matters" more than any feature).
    ablation: Literal["project", "mean"] = "mean"
    #: Where the ablations act, the first the primary (``darkmatter.causal.edits``): ``r``, the dark matter
    #: alone, x − ((r − μ_r)·v̂)v̂ with r = x − SAE(x); ``x``, the activation, which also removes what the SAE
    #: reconstructs along v̂. Every space ablates the same units.
    edit_spaces: Annotated[tuple[Literal["r", "x"], ...], Field(min_length=1, max_length=2)] = ("r", "x")
    #: Ablated exactly per group: the top units by predicted |Δloss|, plus a seeded sample of the rest.
    exact_top: Annotated[int, Field(ge=0)] = 8
    exact_random: Annotated[int, Field(ge=0)] = 4
    #: Subspace sizes as fractions of k, for ICA, PCA and random subspaces (1.0: the identity check).
    subspace_fractions: Annotated[tuple[Annotated[float, Field(gt=0.0, le=1.0)], ...], Field(min_length=1)] = (0.125, 0.25, 0.5, 1.0)
    n_random_subspaces: Annotated[int, Field(gt=0)] = 3
    #: ICA components to steer (indices), each with its matched SAE feature; empty: the
    #: ``n_steer`` components with the largest predicted effect.
    steer_components: tuple[Annotated[int, Field(ge=0)], ...] = ()
    n_steer: Annotated[int, Field(ge=0)] = 2
    #: Steering strengths, in units of the component's source standard deviation (‖a_j‖ per unit α).
    steer_alphas: Annotated[tuple[float, ...], Field(min_length=1)] = (-8.0, 0.0, 8.0)
    steer_prompt_tokens: Annotated[int, Field(gt=1)] = 24
    steer_new_tokens: Annotated[int, Field(gt=0)] = 10
    #: Units per row counted as "top" by |activation × gradient|.
    attribution_top_k: Annotated[int, Field(gt=0)] = 10
    n_bootstrap: Annotated[int, Field(gt=0)] = 1000
    seed: int = 0

    @field_validator("edit_spaces")
    @classmethod
    def _each_space_once(cls, spaces: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(spaces)) < len(spaces):
            raise ValueError(f"{list(spaces)} repeats a space; list r and x at most once each")
        return spaces

    @field_validator("steer_alphas")
    @classmethod
    def _finite(cls, alphas: tuple[float, ...]) -> tuple[float, ...]:
        bad = [a for a in alphas if not math.isfinite(a)]
        if bad:
            raise ValueError(f"steering strengths must be finite numbers; got {bad}")
        return alphas


@dataclass(config=STRICT, frozen=True)
class ProbesConfig:
    """Dataset-geometry probes (``darkmatter.probes``): are layer-L SAE features predictable from
    the layer-0 residual, beyond what token identity alone predicts? Sized so the stage adds a
    few minutes to the default build on 2 cores."""

    #: Layers probed besides the run's own (each gets an SAE trained here); the default run adds
    #: a deep layer. Checked against the run's model when the run resolves.
    extra_layers: tuple[Annotated[int, Field(ge=0)], ...] = (15,)
    #: Tokens of the paired data (whole rows of the run's context): train rows from the cache's
    #: train rows, validation rows from its held-out rows.
    n_tokens: Annotated[int, Field(gt=0)] = 49152
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    #: Token types (ids) left out of every probe's training: the held-out-type evaluation.
    heldout_type_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    #: Features probed per SAE: a seeded sample of those with enough positives ...
    n_features: Annotated[int, Field(gt=0)] = 100
    #: ... or exactly these feature indices (an index out of range or without enough positives fails by name).
    features: tuple[Annotated[int, Field(ge=0)], ...] = ()
    #: Positives a feature needs among the training tokens, and among the validation tokens.
    min_positives: Annotated[int, Field(gt=0)] = 20
    min_val_positives: Annotated[int, Field(gt=0)] = 10
    #: Cap on the positives per split (each balanced by as many inactive tokens).
    max_positives: Annotated[int, Field(gt=0)] = 500
    #: Inverse L2 strength of the logistic probes (scikit-learn ``C``), on standardised inputs.
    c: Positive = 1.0
    #: Newton iterations per probe (it converges in ~10; a probe that does not is named in the metrics).
    max_iter: Annotated[int, Field(gt=0)] = 100
    #: The affine layer-0 -> layer-L map: closed-form ridge, or the seed's Adam fit on the MSE.
    map_solver: Literal["ridge", "adam"] = "ridge"
    #: Ridge penalty relative to the mean eigenvalue of the layer-0 covariance.
    ridge_alpha: Annotated[float, Field(ge=0.0)] = 1e-3
    adam_lr: Positive = 1e-2
    adam_epochs: Annotated[int, Field(gt=0)] = 30
    #: The baseline and residual SAEs of experiment 2 (and the extra layers' SAEs): the ``sae``
    #: section with this width and training length and the Gemma Scope 2 quadratic L0 target, the
    #: same for both, so their features are compared at the same sparsity (with one λ the residual,
    #: which lacks x's large mean, trains ~7x denser and dense features are harder to predict).
    sae_width: Annotated[int, Field(gt=0)] = 2048
    sae_train_tokens: Annotated[int, Field(gt=0)] = 120000
    #: Their batch and learning rate: a short run's own (the main SAE's 256 and 3e-4 suit 2M presentations).
    sae_batch_size: Annotated[int, Field(gt=0)] = 1024
    sae_lr: Positive = 2e-3
    sae_target_l0: Positive = 50.0
    sae_l0_coefficient: Positive = 3e-3
    #: Rows per forward pass of the paired-data forward.
    batch_size: Annotated[int, Field(gt=0)] = 16
    n_bootstrap: Annotated[int, Field(gt=0)] = 2000
    seed: int = 0


#: Sections a run may override (``sizes``), with their types.
SECTIONS: dict[str, type] = {
    "activations": ActivationsConfig, "sae": SAEConfig, "sae_eval": SAEEvalConfig, "residual": ResidualConfig,
    "ica": ICAConfig, "compare": CompareConfig, "ellipticity": EllipticityConfig, "examples": ExamplesConfig, "autointerp": AutointerpConfig,
    "causal": CausalConfig, "probes": ProbesConfig,
}


@dataclass(config=STRICT, frozen=True)
class Sizes:
    """Per-section overrides of one run, merged over the sections of params.yaml.

    Every section is named (``{}`` for none) because each per-run stage tracks exactly its own
    section's overrides as a DVC params dependency, and DVC refuses a missing key.
    """

    activations: dict[str, Any]
    sae: dict[str, Any]
    sae_eval: dict[str, Any]
    residual: dict[str, Any]
    ica: dict[str, Any]
    compare: dict[str, Any]
    ellipticity: dict[str, Any]
    examples: dict[str, Any]
    autointerp: dict[str, Any]
    causal: dict[str, Any]
    probes: dict[str, Any]
