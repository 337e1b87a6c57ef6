"""A run's ICA components in formats other tools load: a SAELens SAE folder and a Neuronpedia export.

    python -m darkmatter.export RUN OUT      # reads data/runs/RUN/{ica,examples,autointerp}

**SAELens** (``OUT/saelens``: ``cfg.json`` + ``sae_weights.safetensors``, written by SAELens's own
``save_model``, loaded by ``SAE.load_from_disk``). A ``standard`` SAE of width 2k whose latents are the
components' sources split by sign: with U the unmixing filters (rows u_j) and μ their mean,
``encode(t)[j] = max(s_j, 0)`` and ``encode(t)[k + j] = max(−s_j, 0)`` where s_j = u_j·(t − μ) is the
project's own source (``analysis.ica.Components.sources``; b_dec = μ is subtracted from the input, W_enc
= [Uᵀ, −Uᵀ], b_enc = 0). Its decoder rows are the mixing directions (a_j, and −a_j), so ``decode(encode(t))
= μ + Σ s_j a_j``: t's projection on the k whitened principal components ICA saw. A standard SAE's ReLU
is why the split: one latent per component would lose every negative source.

Its input is **not x**: it is the ICA target t at the run's hook, r = x − SAE(x) with the run's SAE
(``ica.target: residual``), or r minus its ridge prediction from x (``nonlinear``). The folder's
metadata says which (``darkmatter_input``), and applying it to x computes nothing of this project's.

**Neuronpedia** (``OUT/neuronpedia/<model>/<layer>-<source set>/``): gzipped JSONL batches in the layout
of Neuronpedia's exports (``features/``, ``activations/``, ``explanations/``; fields as its
``neuronpedia-utils`` write them): per component its mixing direction as the feature's vector, its
held-out firing fraction and activation histogram; its top and quantile contexts with per-token
source values (a special token, which the analysis excludes, reads 0); the judge's explanation where
autointerp ran. Written with ``json`` and ``gzip``: Neuronpedia publishes the layout, not a library.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np

from darkmatter.errors import UserError, cli

TARGET_INPUT = {
    "residual": "r = x - SAE(x): the activation at hook_name minus the run's SAE reconstruction of it",
    "nonlinear": "r - ridge(x): r = x - SAE(x) at hook_name minus its ridge prediction from x "
                 "(coefficients in the run's residual stage output, stats.npz ridge_coef)",
}


def saelens_sae(mixing: np.ndarray, unmixing: np.ndarray, mean: np.ndarray, metadata: dict):
    """The sign-split standard SAE of the module docstring (float32)."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    k, d = unmixing.shape
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * k, apply_b_dec_to_input=True, metadata=SAEMetadata(**metadata)))
    tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    sae.load_state_dict({"W_enc": tensor(np.concatenate([unmixing, -unmixing]).T), "b_enc": torch.zeros(2 * k),
                         "W_dec": tensor(np.concatenate([mixing, -mixing])), "b_dec": tensor(mean)})
    return sae


def sources_from_latents(latents: np.ndarray) -> np.ndarray:
    """s from the exported SAE's [N, 2k] latents: positive part minus negative part."""
    k = latents.shape[1] // 2
    return latents[:, :k] - latents[:, k:]


def _jsonl_gz(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode(), mtime=0))


def neuronpedia_records(units: list[dict], mixing: np.ndarray, explanations: dict, model_id: str, source_id: str,
                        hook_name: str, explainer: str | None) -> tuple[list[dict], list[dict], list[dict]]:
    """(features, activations, explanations) records of the ICA ``units`` (examples.json's)."""
    features, activations, explained = [], [], []
    for unit in units:
        j, index = unit["id"], str(unit["id"])
        edges = np.asarray(unit["histogram"]["edges"])
        contexts = [(c, None) for c in unit["top"]] + [(c, c["quantile"]) for c in unit["quantiles"]]
        for n, (c, quantile) in enumerate(contexts):
            values = [0.0 if v is None else float(v) for v in c["activations"]]
            activations.append({"id": f"{source_id}-{index}-{n}", "tokens": c["tokens"], "index": index, "layer": source_id,
                                "modelId": model_id, "maxValue": max(values), "maxValueTokenIndex": int(np.argmax(values)),
                                "minValue": min(values), "values": values, "creatorId": "darkmatter",
                                "dataSource": c["split"], "dataIndex": str(c["token_index"]),
                                "binContains": None if quantile is None else float(quantile),
                                "qualifyingTokenIndex": c["focus"]})
        features.append({"modelId": model_id, "layer": source_id, "index": index, "creatorId": "darkmatter",
                         "maxActApprox": float(unit["max_activation"]), "hasVector": True,
                         "vector": [float(v) for v in mixing[j]], "vectorLabel": f"ICA component {j} (mixing direction)",
                         "hookName": hook_name, "frac_nonzero": float(unit["active_fraction"]),
                         "freq_hist_data_bar_heights": [float(h) for h in unit["histogram"]["counts"]],
                         "freq_hist_data_bar_values": [float(v) for v in (edges[:-1] + edges[1:]) / 2],
                         "neg_str": [], "neg_values": [], "pos_str": [], "pos_values": []})
        if f"ica-{j}" in explanations:
            explained.append({"id": f"{source_id}-{index}-explanation", "modelId": model_id, "layer": source_id,
                              "index": index, "description": explanations[f"ica-{j}"], "authorId": "darkmatter",
                              "typeName": "darkmatter-autointerp", "explanationModelName": explainer})
    return features, activations, explained


def export(run, run_dir: Path, metrics_dir: Path, out: Path) -> dict:
    """Both exports of ``run`` from its outputs under ``run_dir`` (and its autointerp metrics under
    ``metrics_dir``, for the explainer's name); returns what was written."""
    paths = {"components": run_dir / "ica/components.npz", "examples": run_dir / "examples/examples.json"}
    for name, path in paths.items():
        if not path.exists():
            raise UserError(f"{path} not found; run `dvc repro {'ica' if name == 'components' else 'examples'}@{run.name}` first")
    comps = dict(np.load(paths["components"]))
    examples = json.loads(paths["examples"].read_text())
    meta = examples["meta"]
    layer = run.layer
    metadata = {"model_name": meta["model"], "hook_name": meta["hook_name"], "context_size": run.context_length,
                "prepend_bos": True, "darkmatter_run": run.name, "darkmatter_input": TARGET_INPUT[meta["ica_target"]],
                "darkmatter_latents": "latent j = max(s_j, 0), latent k + j = max(-s_j, 0); s_j = u_j . (input - b_dec)"}
    sae = saelens_sae(comps["mixing"], comps["unmixing"], comps["mean"], metadata)
    sae.save_model(str(out / "saelens"))

    results = run_dir / "autointerp/results.json"
    rows = json.loads(results.read_text()) if results.exists() else []
    explanations = {r["unit"]: r["explanation"] for r in rows if r["kind"] == "ica" and r.get("explanation")}
    report = metrics_dir / "autointerp.json"
    explainer = json.loads(report.read_text()).get("explainer") if rows and report.exists() else None
    model_id = meta["model"].split("/")[-1].lower()
    source_id = f"{layer}-darkmatter-ica-{meta['ica_target']}"
    units = [u for u in examples["units"] if u["kind"] == "ica"]
    features, activations, explained = neuronpedia_records(units, comps["mixing"], explanations, model_id, source_id,
                                                          meta["hook_name"], explainer)
    root = out / "neuronpedia" / model_id / source_id
    for folder, records in (("features", features), ("activations", activations), ("explanations", explained)):
        if records:
            _jsonl_gz(root / folder / "batch-0.jsonl.gz", records)
    return {"saelens": str(out / "saelens"), "neuronpedia": str(root), "components": len(units),
            "contexts": len(activations), "explanations": len(explained)}


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import load_params

    parser = argparse.ArgumentParser(description="Export a run's ICA components as a SAELens folder and a Neuronpedia export.")
    parser.add_argument("run", help="a run name of params.yaml (e.g. gemma-3-270m-l9)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=Path("data/runs"), help="where the runs' outputs are")
    parser.add_argument("--metrics", type=Path, default=Path("metrics/runs"), help="where the runs' metrics are")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    run = params.run(args.run)
    print(json.dumps(export(run, args.data / args.run, args.metrics / args.run, args.out), indent=1))


if __name__ == "__main__":
    main()
