"""Typed, validated view of ``params.yaml``: the ground floor of the package.

Every section is a frozen pydantic dataclass with ``extra="forbid"``, so a typo'd key, a wrong
type, an unknown model or a layer out of range fails at load, before any compute, as one
:class:`~darkmatter.errors.ConfigError` line that names the key and the allowed values. This
module imports nothing of the package but its exception types, so every other module may
import it.

**A run is the unit.** ``run_definitions`` names everything one analysis chain needs: the
subject model, layer and site (``subject``), the corpus and context length (``data``), where the
SAE comes from (``sae``: trained here with the ``sae`` settings, or a pretrained SAELens release
and id) and per-section size overrides (``sizes``, usually a YAML alias of a ``size_profiles``
entry). ``runs`` is the one list of runs to build; dvc.yaml writes each per-run stage once, as a
``foreach`` over it. :meth:`Params.run` resolves a name into a :class:`Run`: the definition with
its overrides merged over the analysis sections, validated like the rest of the file.

The model catalog (:data:`MODELS`) lives here too: validation needs it (layer ranges) and it is
metadata only, so nothing heavy is imported.

One module per concern: :mod:`.catalog` (models and shared types), :mod:`.sections` (the analysis
sections), :mod:`.runs` (corpora, run definitions, :class:`Params`), :mod:`.load` (reading the
file) and :mod:`.messages` (one-line errors); every public name is importable from here.
"""

from darkmatter.errors import ConfigError
from darkmatter.config.catalog import (Device, Fraction, HookSite, LOCAL_JUDGES, MODELS, ModelSpec, Positive, STRICT, StoreDtype, WeightDtype, hook_name)
from darkmatter.config.sections import (AXIS_SETTINGS, ActivationsConfig, AutointerpConfig, CausalConfig, CompareConfig, EllipticityConfig, ExamplesConfig, ICAConfig, ProbesConfig, ResidualConfig, SAEAxesConfig, SAEConfig, SAEEvalConfig, SECTIONS, Sizes)
from darkmatter.config.runs import (CorpusSettings, CorpusSource, OfflineSource, Params, Run, RunData, RunDefinition, SAESource, Subject)
from darkmatter.config.load import (add_run_arguments, load_params, parse_params, run_from_args)

__all__ = ["AXIS_SETTINGS", "ActivationsConfig", "AutointerpConfig", "CausalConfig", "CompareConfig", "ConfigError", "CorpusSettings", "CorpusSource", "Device", "EllipticityConfig", "ExamplesConfig", "Fraction", "HookSite", "ICAConfig", "LOCAL_JUDGES", "MODELS", "ModelSpec", "OfflineSource", "Params", "Positive", "ProbesConfig", "ResidualConfig", "Run", "RunData", "RunDefinition", "SAEAxesConfig", "SAEConfig", "SAEEvalConfig", "SAESource", "SECTIONS", "STRICT", "Sizes", "StoreDtype", "Subject", "WeightDtype", "add_run_arguments", "hook_name", "load_params", "parse_params", "run_from_args"]
