"""The corpus: pinned offline packages or a hub dataset, stripped to prose (stage: ``__main__``)."""
