"""darkmatter: what do sparse autoencoders miss?

A DVC pipeline that regenerates the paper "The Dark Matter of Sparse Autoencoders" from
``params.yaml``. Each DVC stage is one module with a thin CLI (``python -m darkmatter.<stage>``)
over pure functions; ``dvc.yaml`` is the stage map.

Importing the package asks PyTorch's CPU allocator for transparent huge pages on buffers of 2 MB
and more (``THP_MEM_ALLOC_ENABLE``, read at torch's first large allocation; set it to 0 to opt
out). The streaming stages allocate [tokens, width] buffers per chunk, which glibc serves with
fresh ``mmap``s whose 4 KB pages fault in one by one: on a 2-core Xeon the residual pass ran
1.16-1.17x faster with huge pages, while an SAE training step, whose buffers are already reused from
the heap (``sae.train.reuse_freed_buffers``), ran 0.98-0.99x (``bench/bench_allocator.py``).
"""

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
