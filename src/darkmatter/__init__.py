"""darkmatter: what do sparse autoencoders miss?

A DVC pipeline that regenerates the paper "The Dark Matter of Sparse Autoencoders" from
``params.yaml``. Each DVC stage is one module with a thin CLI (``python -m darkmatter.<stage>``)
over pure functions; ``dvc.yaml`` is the stage map.
"""

__version__ = "0.1.0"
