"""Exports of the ICA components: the SAELens folder loads through SAELens and encodes to the
project's own sources and decodes through its mixing directions; the Neuronpedia export holds every
component, its contexts and its explanation in the published layout."""

import gzip
import json

import numpy as np
import pytest
import torch

from darkmatter.analysis.ica import Whitener, to_components
from darkmatter.config import load_params
from darkmatter.errors import UserError
from darkmatter.export import export, saelens_sae, sources_from_latents

D, K = 12, 4


@pytest.fixture
def components():
    """Components as the ica stage makes them: PCA-whitening of t, a rotation, sign and order fixed."""
    rng = np.random.default_rng(0)
    t = rng.laplace(size=(2000, D)) @ rng.normal(size=(D, D)) + rng.normal(size=D)
    mean = t.mean(0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(t - mean, rowvar=False))
    order = np.argsort(-eigenvalues)
    whitener = Whitener.from_pca(mean, eigenvalues[order], eigenvectors[:, order], K)
    w = np.linalg.qr(rng.normal(size=(K, K)))[0]
    return to_components(w, whitener, whitener(t), float(np.trace(np.cov(t, rowvar=False)))), t


def test_the_saelens_folder_encodes_to_the_projects_sources_and_decodes_through_the_mixing(tmp_path, components):
    from sae_lens import SAE

    comps, t = components
    saelens_sae(comps.mixing, comps.unmixing, comps.mean, {"hook_name": "blocks.3.hook_resid_post"}).save_model(str(tmp_path))
    loaded = SAE.load_from_disk(str(tmp_path))
    assert loaded.cfg.d_in == D and loaded.cfg.d_sae == 2 * K
    x = torch.as_tensor(t[:300], dtype=torch.float32)
    with torch.no_grad():
        latents = loaded.encode(x)
        recon = loaded.decode(latents)
    s = comps.sources(t[:300])
    got = sources_from_latents(latents.numpy())
    assert np.abs(got - s).max() < 1e-4 * np.abs(s).max()
    assert (latents[:, :K] * latents[:, K:]).abs().max() == 0, "a component's two latents never fire together"
    assert np.allclose(recon.numpy(), comps.mean + s @ comps.mixing, atol=1e-3 * np.abs(t).max())
    # the decoder rows are what each component writes; the encoder columns how it is read
    assert np.allclose(loaded.W_dec[:K].detach().numpy(), comps.mixing, atol=1e-6)
    assert np.allclose(loaded.W_enc[:, :K].detach().numpy().T, comps.unmixing, atol=1e-6)


def _run_dir(tmp_path, comps, explained=True):
    run_dir = tmp_path / "data/runs/r"
    (run_dir / "ica").mkdir(parents=True)
    np.savez(run_dir / "ica/components.npz", mixing=comps.mixing, unmixing=comps.unmixing, mean=comps.mean)
    context = {"token_index": 41, "focus": 1, "split": "heldout", "tokens": ["a", " cat", "<eos>"],
               "activations": [0.5, 3.0, None]}
    units = [{"kind": "ica", "id": j, "max_activation": 3.0 + j, "active_fraction": 0.01 * (j + 1),
              "histogram": {"counts": [5, 2, 1], "edges": [0.0, 1.0, 2.0, 3.0]},
              "top": [context], "quantiles": [context | {"quantile": 2}]} for j in range(K)]
    units.append({"kind": "random", "id": 0})
    (run_dir / "examples").mkdir()
    (run_dir / "examples/examples.json").write_text(json.dumps({"meta": {
        "model": "google/gemma-3-270m", "hook_name": "blocks.9.hook_resid_post", "ica_target": "residual"}, "units": units}))
    metrics = tmp_path / "metrics/runs/r"
    if explained:
        (run_dir / "autointerp").mkdir()
        (run_dir / "autointerp/results.json").write_text(json.dumps(
            [{"unit": "ica-1", "kind": "ica", "explanation": "cats"}, {"unit": "random-0", "kind": "random", "explanation": "x"}]))
        metrics.mkdir(parents=True)
        (metrics / "autointerp.json").write_text(json.dumps({"explainer": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
    return run_dir, metrics


def test_the_neuronpedia_export_holds_every_component_its_contexts_and_explanations(tmp_path, components):
    comps, _ = components
    run = load_params().run("gemma-3-270m-l9")
    run_dir, metrics = _run_dir(tmp_path, comps)
    written = export(run, run_dir, metrics, tmp_path / "out")
    root = tmp_path / "out/neuronpedia/gemma-3-270m/9-darkmatter-ica-residual"
    assert written["neuronpedia"] == str(root) and written["components"] == K and written["explanations"] == 1

    def read(folder):
        return [json.loads(line) for line in gzip.decompress((root / folder / "batch-0.jsonl.gz").read_bytes()).splitlines()]

    features, activations, explanations = read("features"), read("activations"), read("explanations")
    assert [f["index"] for f in features] == [str(j) for j in range(K)]
    assert np.allclose(features[2]["vector"], comps.mixing[2]) and features[2]["hookName"] == "blocks.9.hook_resid_post"
    assert features[3]["frac_nonzero"] == pytest.approx(0.04) and features[0]["freq_hist_data_bar_values"] == [0.5, 1.5, 2.5]
    assert len(activations) == 2 * K and len({a["id"] for a in activations}) == 2 * K
    first = activations[0]
    assert first["values"] == [0.5, 3.0, 0.0] and first["maxValueTokenIndex"] == 1 and first["layer"] == features[0]["layer"]
    assert explanations == [{"id": "9-darkmatter-ica-residual-1-explanation", "modelId": "gemma-3-270m",
                             "layer": "9-darkmatter-ica-residual", "index": "1", "description": "cats",
                             "authorId": "darkmatter", "typeName": "darkmatter-autointerp",
                             "explanationModelName": "HuggingFaceTB/SmolLM2-135M-Instruct"}]
    cfg = json.loads((tmp_path / "out/saelens/cfg.json").read_text())
    assert cfg["architecture"] == "standard" and cfg["d_sae"] == 2 * K
    assert cfg["metadata"]["darkmatter_input"].startswith("r = x - SAE(x)"), "the folder says its input is not x"


def test_an_export_without_the_runs_outputs_names_the_stage(tmp_path):
    run = load_params().run("gemma-3-270m-l9")
    with pytest.raises(UserError, match=r"components.npz not found; run `dvc repro ica@gemma-3-270m-l9`"):
        export(run, tmp_path / "nothing", tmp_path, tmp_path / "out")
