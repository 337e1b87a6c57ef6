"""Dataset-geometry probes: are a layer's SAE features predictable from layer 0, and is that more
than token identity? (seed 002, with the controls it lacked; stage: :mod:`darkmatter.probes.stage`)."""
