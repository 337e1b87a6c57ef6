"""The analysis stages end to end (CLIs: residual -> ica -> compare -> examples -> dashboard) on a
synthetic cache with planted sources the SAE does not have: ICA must find them, call them novel,
and the dashboard must show them."""

import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, write_cache

from darkmatter.analysis.ica import abs_cos

D, CTX, N = 24, 64, 64 * 400


def planted_cache(root):
    """Dictionary part in dims 0..15 (what the SAE knows), 3 planted sparse sources in 16..23."""
    rng = np.random.default_rng(0)
    atoms = np.zeros((32, D))
    atoms[:, :16] = rng.standard_normal((32, 16))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = rng.exponential(2.0, (N, 32)) * (rng.random((N, 32)) < 0.05)
    planted = np.zeros((3, D))
    planted[:, 16:] = rng.standard_normal((3, 8))
    planted /= np.linalg.norm(planted, axis=1, keepdims=True)
    sources = rng.exponential(3.0, (N, 3)) * (rng.random((N, 3)) < 0.1)
    acts = codes @ atoms + sources @ planted + 0.2 * rng.standard_normal((N, D))
    acts[::CTX] *= 30  # position 0
    tokens = rng.integers(1000, 20000, N)
    write_cache(root / "cache", acts.astype(np.float32), CTX, tokens=tokens)
    return atoms, planted


def oracle_sae(atoms, path):
    """A JumpReLU SAE whose dictionary is exactly the atoms (encoder = decoderᵀ)."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D, d_sae=len(atoms)))
    with torch.no_grad():
        sae.W_dec.copy_(torch.from_numpy(atoms).float())
        sae.W_enc.copy_(torch.from_numpy(atoms.T).float())
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.threshold.fill_(0.5)
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    sae.save_model(str(path))


def small_params(path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["run_definitions"][raw["main_run"]]["subject"]["device"] = "cpu"
    raw["residual"] |= {"n_random_directions": 32}
    raw["ica"] |= {"n_components": 12, "seeds": 2, "max_tokens": 20000}
    raw["compare"] |= {"n_random": 200}
    raw["examples"] |= {"top_k": 5, "n_quantiles": 4, "per_quantile": 1, "n_non_activating": 3, "n_random_units": 3}
    raw["compare"] |= {"n_rotations": 200}
    path.write_text(yaml.safe_dump(raw))


@pytest.mark.real_model  # the examples stage decodes tokens with the real Gemma tokenizer
def test_stages_find_planted_sources_and_call_them_novel(tmp_path, gemma_weights):
    from darkmatter.analysis import compare, ica, residual
    from darkmatter.interp import dashboard, examples

    atoms, planted = planted_cache(tmp_path)
    oracle_sae(atoms, tmp_path / "sae")
    small_params(tmp_path / "params.yaml")
    common = ["--params", str(tmp_path / "params.yaml"), "--run", "gemma-3-270m-l9", "--sae", str(tmp_path / "sae")]
    m, data, fig = tmp_path / "metrics", tmp_path / "data", tmp_path / "figures"
    residual.main([*common, "--cache", str(tmp_path / "cache"), "--out", str(data / "residual"),
                   "--metrics", str(m / "residual.json"), "--figures", str(fig)])
    ica.main([*common, "--cache", str(tmp_path / "cache"), "--stats", str(data / "residual/stats.npz"),
              "--out", str(data / "ica"), "--metrics", str(m / "ica.json"), "--figures", str(fig)])
    compare.main([*common, "--stats", str(data / "residual/stats.npz"), "--components", str(data / "ica/components.npz"),
                  "--out", str(data / "compare"), "--metrics", str(m / "compare.json"), "--figures", str(fig)])
    examples.main([*common, "--cache", str(tmp_path / "cache"), "--weights", str(gemma_weights),
                   "--stats", str(data / "residual/stats.npz"), "--components", str(data / "ica/components.npz"),
                   "--comparison", str(data / "compare/comparison.npz"), "--out", str(data / "examples.json")])
    dashboard.main(["--examples", str(data / "examples.json"), "--residual", str(m / "residual.json"),
                    "--ica", str(m / "ica.json"), "--compare", str(m / "compare.json"), "--out", str(tmp_path / "index.html")])

    ica_report = json.loads((m / "ica.json").read_text())
    assert ica_report["all_converged"] and ica_report["n_components"] == 12
    comps = np.load(data / "ica/components.npz")
    cos = abs_cos(planted, comps["mixing"])
    found = cos.argmax(axis=1)
    assert (cos.max(axis=1) > 0.9).all(), "every planted direction is recovered by a mixing direction"
    assert comps["stable"][found].all()
    comparison = np.load(data / "compare/comparison.npz")
    assert (comparison["ica_max_cos"][found] < 0.3).all(), "the SAE lacks them: novel"
    report = json.loads((m / "compare.json").read_text())
    assert report["ica"]["novel"] >= 3 and report["ica"]["n"] == 12
    assert report["rotation_null"]["n_rotations"] == 200
    assert report["rotation_null"]["novel_fraction"]["p_more"] < 0.05, "more novel than random rotations"
    gap = report["kurtosis_gap"]
    assert gap["n_active_features"] > 0 and gap["like_for_like"]["difference"] is not None
    assert gap["ica_vs_random_whitened"]["ci"][0] > 0, "the planted sources are heavier-tailed than random whitened units"
    fits = report["ica_fits"]
    assert [f["fit"] for f in fits] == ["reference", "seed 1", "resample 1", "resample 2"] == ["reference", *comps["other_fits"]]
    assert comps["other_mixing"].shape == (3, 12, comps["mixing"].shape[1]) and comps["other_kurtosis"].shape == (3, 12)
    assert all(f["ica_vs_random_whitened"]["ci"][0] > 0 and f["novel_fraction"]["p_more"] < 0.05 for f in fits), \
        "every fit finds the planted sources"

    units = json.loads((data / "examples.json").read_text())["units"]
    kinds = [u["kind"] for u in units]
    assert kinds.count("ica") == 12 and kinds.count("sae") == 12 and kinds.count("random") == 3
    ica_units = {u["id"]: u for u in units if u["kind"] == "ica"}
    for sae in (u for u in units if u["kind"] == "sae"):
        assert ica_units[sae["matched_to_ica"]]["matched_sae_feature"] == sae["id"], "one partner per component"
    for unit in units:
        top = unit["top"][0]
        assert top["activations"][top["focus"]] == pytest.approx(top["activation"], rel=1e-3)
        assert all(isinstance(t, str) for t in top["tokens"])
        assert all(c["activation"] <= unit["threshold"] for c in unit["non_activating"])
        assert {c["split"] for c in unit["top"]} == {"train"}, "explanations come from train rows"
        assert {c["split"] for c in unit["quantiles"] + unit["non_activating"]} <= {"heldout"}, "detection: held-out"
        assert all(c["activation"] > unit["threshold"] for c in unit["quantiles"])
    for ext in ("png", "pdf"):
        for name in ("kurtosis", "pca_spectrum", "error_norms", "ica_components", "decoder_similarity", "kurtosis_gap"):
            assert (fig / f"{name}.{ext}").stat().st_size > 1000

    sections = _sections(tmp_path / "index.html")
    assert len(sections) == len(units)
    assert {f"ica-{j}" for j in found} <= set(sections)


def _sections(path):
    class Collector(HTMLParser):
        def __init__(self):
            super().__init__()
            self.ids = []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "section" and "unit" in attrs.get("class", ""):
                self.ids.append(attrs["id"])

    parser = Collector()
    parser.feed(path.read_text())
    return parser.ids
