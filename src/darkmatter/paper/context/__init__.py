"""What each template of ``paper/sections`` is rendered with: one module per section of the paper.

A context holds numbers already formatted (:mod:`darkmatter.paper.format`), intervals, and
verdicts as enumerated keys whose wordings live in the templates. No sentence of the paper is
written here.
"""

from darkmatter.paper.context import autointerp, causal, family, headline, instrument, probes, tables

__all__ = ["autointerp", "causal", "family", "headline", "instrument", "probes", "tables"]
