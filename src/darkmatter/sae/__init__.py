"""SAEs: training (Gemma Scope recipe), pretrained loading, evaluation and the sparsity sweep."""
