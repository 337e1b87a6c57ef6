"""SAEs: training (Gemma Scope recipe), pretrained loading, evaluation, the splice diagnosis and the SAE axes."""
