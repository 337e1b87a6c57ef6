"""Data: corpus, subject models and the activation cache."""
