"""Interpretation: contexts per unit, the dashboard, and autointerp with its LLM judges."""
