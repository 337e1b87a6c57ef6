"""Causal tests of the dark matter (ablation, error-node split, steering, attribution)."""
