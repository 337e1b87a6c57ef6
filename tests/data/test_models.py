"""Subject-model interface: tiny models for logic, the real Gemma 3 270M for the real path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO

from darkmatter.data import activations
from darkmatter.errors import UserError
from darkmatter.data.models import load_subject, spec_for

SENTENCE = "The committee postponed its decision until the river had finished flooding the valley."


def test_unknown_model_and_missing_weights_fail_clearly(tmp_path):
    with pytest.raises(UserError, match="unknown model 'gpt-9'; allowed: gemma-3-270m"):
        spec_for("gpt-9")
    with pytest.raises(UserError, match="run `dvc repro model` first"):
        load_subject("gemma-3-270m", tmp_path / "nothing-here", device="cpu")


def test_subject_interface_on_a_tiny_model(tiny_subject):
    assert (tiny_subject.d_model, tiny_subject.n_layers) == (32, 3)
    assert tiny_subject.hook_name(2) == "blocks.2.hook_resid_post"
    with pytest.raises(UserError, match="allowed: 0..2"):
        tiny_subject.activations(torch.zeros(1, 4, dtype=torch.long), 3)
    tokens = torch.randint(0, 101, (2, 12))
    loss = tiny_subject.loss_per_token(tokens)
    assert loss.shape == (2, 11) and torch.isfinite(loss).all()


def test_loss_hooks_are_applied(tiny_subject):
    tokens = torch.randint(0, 101, (2, 12))
    clean = tiny_subject.loss_per_token(tokens)

    def zero(resid, hook):
        return torch.zeros_like(resid)

    ablated = tiny_subject.loss_per_token(tokens, [("blocks.1.hook_resid_post", zero)])
    assert not torch.allclose(clean, ablated)
    again = tiny_subject.loss_per_token(tokens)  # hooks are removed afterwards
    torch.testing.assert_close(clean, again)


@pytest.mark.real_model
def test_compiled_forward_matches_the_eager_one(tiny_subject, gemma):
    """``compile_forward`` (the activation stage's default) gives the eager residuals, for a full
    batch and for a short last batch padded to the compiled shape; other shapes run eagerly."""
    from darkmatter.data.models import SubjectModel

    for subject, layer, vocab in ((tiny_subject, 1, 101), (gemma, 9, 20_000)):
        compiled = SubjectModel(subject.spec, subject.model, subject.device)
        compiled.compile_forward(batch_rows=3, context=16)
        tokens = torch.randint(3, vocab, (3, 16), generator=torch.Generator().manual_seed(1))
        for batch in (tokens, tokens[:2], tokens[:, :8]):
            eager = subject.activations(batch, layer)
            torch.testing.assert_close(compiled.activations(batch, layer), eager, rtol=1e-4, atol=1e-3)
        assert compiled._compiled is not None and getattr(subject, "_compiled", None) is None


@pytest.mark.real_model
def test_gemma_matches_hf_hidden_states(gemma, gemma_weights):
    from transformers import AutoModelForCausalLM

    assert (gemma.d_model, gemma.n_layers) == (640, 18)
    ids = gemma.tokenizer([SENTENCE], return_tensors="pt")["input_ids"]
    assert ids[0, 0] == gemma.tokenizer.bos_token_id
    ours = gemma.activations(ids, 9)
    hf = AutoModelForCausalLM.from_pretrained(gemma_weights, dtype=torch.float32)
    with torch.no_grad():
        out = hf(ids, labels=ids, output_hidden_states=True)
    reference = out.hidden_states[10]  # hidden_states[0] is the embedding output
    # Position 0 has |x| ~ 1e5; elsewhere |x| ~ 6e3. Agreement is ~1e-7 relative.
    assert (ours - reference).abs().max() < 1e-2
    rel = (ours[:, 1:] - reference[:, 1:]).norm() / reference[:, 1:].norm()
    assert rel < 1e-5
    assert ours[0, 0].norm() > 5 * ours[0, 1:].norm(dim=-1).max()
    torch.testing.assert_close(gemma.loss_per_token(ids).mean(), out.loss, rtol=1e-4, atol=1e-4)


@pytest.mark.real_model
def test_smollm2_matches_hf_hidden_states():
    """The second offline model has no TransformerLens official name: hooked from a local dir."""
    from transformers import AutoModelForCausalLM

    from conftest import prepared_weights

    weights = prepared_weights("smollm2-135m")
    subject = load_subject("smollm2-135m", weights, device="cpu")
    assert (subject.d_model, subject.n_layers) == (576, 30)
    ids = subject.tokenizer([SENTENCE], return_tensors="pt")["input_ids"]
    ours = subject.activations(ids, 15)
    hf = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
    with torch.no_grad():
        reference = hf(ids, output_hidden_states=True).hidden_states[16]
    rel = (ours[:, 1:] - reference[:, 1:]).norm() / reference[:, 1:].norm()
    assert rel < 1e-5


@pytest.mark.real_model
def test_gemma_caches_a_few_hundred_tokens_end_to_end(gemma, gemma_weights, tmp_path):
    """The activations stage CLI on the real model: corpus -> rows -> cache -> metrics."""
    texts = [SENTENCE * 3, "To be, or not to be, that is the question. " * 4, "import os\nos.listdir('.') lists files. " * 3]
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "source": "t", "text": t}) + "\n" for i, t in enumerate(texts * 4)))
    params = tmp_path / "params.yaml"
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["activations"] = {"n_tokens": 320, "chunk_tokens": 128, "batch_size": 2}
    main = raw["run_definitions"][raw["main_run"]]
    main["data"]["context_length"] = 64
    main["subject"]["device"] = "cpu"
    params.write_text(yaml.safe_dump(raw))
    out, metrics = tmp_path / "acts", tmp_path / "metrics.json"
    activations.main([
        "--params", str(params), "--run", raw["main_run"], "--corpus", str(corpus), "--weights", str(gemma_weights),
        "--out", str(out), "--scratch", str(tmp_path / "scratch"), "--metrics", str(metrics),
    ])
    cache = activations.ActivationCache.open(out)
    assert cache.acts.shape == (320, 640) and cache.meta["hook_name"] == "blocks.9.hook_resid_post"
    report = json.loads(metrics.read_text())
    assert report["norm_mean_position0"] > 5 * report["norm_mean_nonspecial"]
    assert report["corpus_tokens"]["total"] > 320
    row = torch.from_numpy(cache.tokens[64:128].astype(np.int64))[None]
    np.testing.assert_allclose(cache.acts[64:128], gemma.activations(row, 9)[0].numpy(), rtol=1e-4, atol=1e-2)
    assert cache.special[::64].all() and not cache.special[1:64].all()


def test_logprobs_from_a_layer_continue_the_full_forward(tiny_subject, gemma):
    """The causal stage's forward from a cached layer-L residual, unembedding only some positions,
    equals the full forward at those positions (tiny model and the real Gemma 3 270M)."""
    import torch

    for subject, layer, vocab in ((tiny_subject, 1, 101), (gemma, 9, 262_144)):
        tokens = torch.randint(3, min(vocab, 20_000), (2, 24), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():  # TransformerLens's own full forward and unembedding
            full = torch.log_softmax(subject.model(tokens).float(), dim=-1)
        positions = torch.tensor([1, 7, 22])
        for site, stop in (("resid_post", layer + 1), ("resid_pre", layer)):
            with torch.inference_mode():
                resid = subject.model(tokens, stop_at_layer=stop)
            part = subject.logprobs_from(resid, layer, site, positions=positions)
            torch.testing.assert_close(part, full[:, positions], atol=2e-3, rtol=1e-4)
        assert subject.logprobs_from(resid, layer, "resid_pre").shape == full.shape
        torch.testing.assert_close(subject.last_logprobs(tokens), full[:, -1], atol=2e-3, rtol=1e-4)
