"""The dark-matter analysis: the residual pass, ICA of the residual, comparison with the dictionary."""
