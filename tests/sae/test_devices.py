"""The ladder's GPU runs: the SAE goes where the subject model and the activations are.

CUDA runs where a GPU is present (CI has none: that test is skipped there and runs on a GPU
machine); without one, asking for CUDA fails with one line before anything is loaded.
"""

import numpy as np
import pytest
import torch
from conftest import random_jumprelu_sae

from darkmatter.errors import UserError
from darkmatter.sae.io import to_device


def test_cuda_without_a_gpu_is_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match=r"subject.device is 'cuda' but torch sees no GPU; set it to auto or cpu") as info:
        to_device(random_jumprelu_sae(8, 16), "cuda")
    assert "\n" not in str(info.value)


def test_auto_keeps_the_sae_with_the_model():
    sae = to_device(random_jumprelu_sae(8, 16), "auto")
    assert sae.W_dec.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_splice_and_the_residual_pass_run_on_cuda(tiny_subject, tmp_path):
    from conftest import write_cache

    from darkmatter.analysis.residual import accumulate, analyse
    from darkmatter.causal.effects import batches, prediction_effects, scored_positions
    from darkmatter.config import ResidualConfig
    from darkmatter.data.activations import ActivationCache
    from darkmatter.sae.evaluate import lm_report
    from darkmatter.sae.reconstruction import reconstruction_stats
    from darkmatter.sae.splice import splice_edits

    tiny_subject.model.to("cuda")
    tiny_subject.device = "cuda"
    d = tiny_subject.d_model
    sae = to_device(random_jumprelu_sae(d, 4 * d, threshold=0.0), "cuda")
    acts = np.random.default_rng(1).standard_normal((64 * 8, d)).astype(np.float32)
    cache = ActivationCache.open(write_cache(tmp_path, acts, 64))
    data = list(batches(cache, np.arange(6, 8), 2, scored_positions(64, 8), "cuda"))
    effects = prediction_effects(tiny_subject, 1, "resid_post", data, splice_edits(sae, None, float("inf"), 0, ("nonspecial", "zero")), "cuda")
    stats = lm_report(effects | {"positions": scored_positions(64, 8)}, np.arange(2), 100, 0)
    assert np.isfinite(stats["delta_loss"]) and stats["kl"] >= 0
    assert reconstruction_stats(sae, acts, np.asarray(cache.special), np.arange(64 * 6, 64 * 8), 0.1)["n_tokens"] == 128
    report, _ = analyse(accumulate(sae, cache, 0.25, ResidualConfig(n_random_directions=8)), 1e-3)
    assert np.isfinite(report["dark_matter_fraction"])
