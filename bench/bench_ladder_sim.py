"""The ladder at real widths without the Hub: the Gemma 3 1B / Gemma Scope 2 262k chain on random
weights, each stage's peak memory and time beside what ``darkmatter.plan`` predicted.

    python bench/bench_ladder_sim.py [--tokens 16384] [--device cpu|cuda] [--work DIR] [--keep]

What is real and what is simulated:
- **Shapes are real.** A ``google/gemma-3-1b-pt`` snapshot in a hand-made HF cache
  (``tests/hub_fixtures.py``'s layout): Gemma 3 1B's own config (26 layers, d_model 1152, d_mlp
  6912, the 262,144-token vocabulary; TransformerLens hard-codes it, so the weights must have
  these shapes), with transformers' random initialisation (seed 0), saved in bfloat16, and the
  Gemma 3 tokenizer of the offline default run. A Gemma Scope 2 folder
  ``resid_post/layer_13_width_262k_l0_medium`` of width 262,144 × 1,152 in the release's layout
  (random unit decoder rows, encoder = decoderᵀ), with one threshold set so that the random
  model's layer-13 activations fire ~65 latents per token (Gemma Scope 2's "medium" L0 is 60 at
  this layer).
- **The chain is the pipeline's own.** Each per-run stage's command is read from ``dvc.yaml`` and
  run as DVC would run it, in a workspace whose ``params.yaml`` is the repository's with
  ``gemma-3-1b-262k`` resized (below). ``validate`` runs first. DVC itself is not needed (so the
  same script runs on a bare GPU machine, ``bench/gpu_check.sh``).
- **Reduced: tokens, not widths.** ``--tokens`` (default 16,384 = 16 rows of context 1,024) in
  place of 1M, a quarter of the rows held out (so that causal and the LM splices have rows), ICA
  on a third of the train tokens per fit (the fit and its two resamples are disjoint). Kept: the
  width (262,144), ICA's 128 components, the examples' and autointerp's unit counts, the probes'
  16k SAE. Also reduced, because their cost is a count of null samples or edited forwards, not a
  width: compare's random rotations (20; each is 128 directions against 262k decoder rows), the
  causal stage's rows and edits, and the probe SAE's training tokens. ``autointerp`` is left out:
  its cost is the judge's (a server or a local model), which the plan does not model either.

Measured per stage: wall seconds and the peak RSS of the stage's process (``os.wait4``'s
``ru_maxrss``); on CUDA also the peak GPU memory in use (``nvidia-smi``, polled every 0.2 s,
above the idle level). The plan is taken for the same params, run and device (on CPU it measures
this CPU's GEMM rate in the same run). The benchmark fails (exit 1) if a stage fails, if a peak
RSS exceeds ``--ram-gib`` (this machine's 24 GiB), or if a prediction of peak RSS or time is off
by more than ±30%; it says which.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))

from hub_fixtures import gemma_scope_2_sae, hub_copy_of, snapshot, text_dataset  # noqa: E402

TARGET_L0 = 65
#: Stages of the chain in dvc.yaml's order (autointerp left out: module docstring).
CHAIN = ("corpus", "model", "activations", "sae", "eval_sae", "residual", "ica", "compare", "examples",
         "causal", "probes", "dashboard")
TOLERANCE = 0.30
GIB = 1 << 30


# ---- what is simulated ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """One ladder row's model and SAE, as the hand-made HF cache holds them."""

    run: str
    model: str
    sae_repo: str
    sae_folder: str
    layer: int
    d_model: int
    width: int
    #: Overrides of the 270M config.json that give the model's shape (TransformerLens hard-codes each
    #: Gemma's dimensions, so random weights must have them); None: the real 270M weights, linked.
    config: dict | None = None

    @property
    def label(self) -> str:
        return f"`{self.run}` ({self.model}, SAE width {self.width:,})"


def _gemma_3_1b_config() -> dict:
    n_layers = 26
    return {"_model_name_or_path": "google/gemma-3-1b-pt", "hidden_size": 1152, "intermediate_size": 6912,
            "num_hidden_layers": n_layers, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
            "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layers)],
            "dtype": "bfloat16"}


#: The benchmark: Gemma 3 1B's shape on random weights, Gemma Scope 2's 262k SAE at layer 13.
GEMMA_3_1B_262K = Shape("gemma-3-1b-262k", "google/gemma-3-1b-pt", "google/gemma-scope-2-1b-pt",
                        "resid_post/layer_13_width_262k_l0_medium", 13, 1152, 262144, _gemma_3_1b_config())
#: The tests' size-reduced chain: the real Gemma 3 270M weights and a 16k SAE (tests/test_ladder_sim.py).
GEMMA_3_270M_16K = Shape("gemma-3-270m-gs2-16k", "google/gemma-3-270m", "google/gemma-scope-2-270m-pt",
                         "resid_post/layer_9_width_16k_l0_medium", 9, 640, 16384)


# ---- the hand-made HF cache ---------------------------------------------------------------------


def tokenizer_source() -> Path:
    """The Gemma 3 tokenizer: the offline default run's model folder, or the xz copy a GPU machine carries."""
    local = REPO / "data/runs/gemma-3-270m-l9/model"
    if (local / "tokenizer.json").exists():
        return local
    carried = REPO / ".devcarry/gemma-tokenizer"
    if (carried / "tokenizer.json.xz").exists() and not (carried / "tokenizer.json").exists():
        import lzma

        (carried / "tokenizer.json").write_bytes(lzma.decompress((carried / "tokenizer.json.xz").read_bytes()))
    if not (carried / "tokenizer.json").exists():
        raise SystemExit("no Gemma 3 tokenizer: run `dvc repro model@gemma-3-270m-l9` (or carry .devcarry/gemma-tokenizer)")
    return carried


def build_model(cache: Path, shape: Shape, weights: Path | None = None, seed: int = 0) -> Path:
    """The model's snapshot (idempotent): random weights of ``shape.config``, or links to ``weights``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if shape.config is None:
        if weights is None:
            raise SystemExit(f"{shape.run}: the real weights' folder is needed (the tests' gemma_weights fixture)")
        return hub_copy_of(cache, shape.model, weights)
    snap = snapshot(cache, shape.model)
    if (snap / "model.safetensors").exists() or (snap / "model.safetensors.index.json").exists():
        return snap
    source = tokenizer_source()
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(source / name, snap / name)
    config_json = json.dumps(json.loads((source / "config.json").read_text()) | shape.config, indent=2)
    (snap / "config.json").write_text(config_json)
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(snap)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.to(torch.bfloat16).save_pretrained(snap)
    (snap / "config.json").write_text(config_json)  # save_pretrained rewrote it
    return snap


def layer_activations(snap: Path, layer: int, texts: list[str], n_tokens: int) -> np.ndarray:
    """The model's residual after block ``layer`` on ``n_tokens`` non-initial tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(snap)
    model = AutoModelForCausalLM.from_pretrained(snap, dtype=torch.float32)
    ids = tokenizer(" ".join(texts), return_tensors="pt").input_ids[:, : n_tokens + 1]
    with torch.inference_mode():
        hidden = model(ids, output_hidden_states=True).hidden_states[layer + 1][0, 1:]
    return hidden.numpy()


def threshold_for_l0(acts: np.ndarray, w_enc: np.ndarray, b_enc: np.ndarray, l0: float) -> float:
    """One JumpReLU threshold at which ``acts`` fire ``l0`` latents per token on average."""
    pre = acts @ w_enc + b_enc
    return float(np.quantile(pre, 1.0 - l0 / pre.shape[1]))


def build_cache(cache: Path, shape: Shape = GEMMA_3_1B_262K, weights: Path | None = None, n_docs: int = 2000) -> dict:
    """Model, SAE and FineWeb-shaped text in ``cache`` (idempotent); returns the SAE's calibration."""
    from safetensors.numpy import load_file, save_file

    snap = build_model(cache, shape, weights)
    shard = text_dataset(cache, "HuggingFaceFW/fineweb", n_docs=n_docs, config_dir="sample/10BT")
    folder = snapshot(cache, shape.sae_repo) / shape.sae_folder
    record = folder / "calibration.json"
    if record.exists():
        return json.loads(record.read_text())
    gemma_scope_2_sae(cache, repo_id=shape.sae_repo, folder=shape.sae_folder, d_in=shape.d_model, d_sae=shape.width)
    params = load_file(str(folder / "params.safetensors"))
    import pyarrow.parquet as pq

    texts = pq.read_table(next(shard.glob("*.parquet"))).column("text").to_pylist()[:40]
    acts = layer_activations(snap, shape.layer, texts, 512)
    params["b_enc"] = np.zeros(shape.width, np.float32)
    threshold = threshold_for_l0(acts, params["w_enc"], params["b_enc"], TARGET_L0)
    params["threshold"] = np.full(shape.width, threshold, np.float32)
    save_file(params, str(folder / "params.safetensors"))
    fired = ((acts @ params["w_enc"]) > threshold).sum(1)
    calibration = {"threshold": threshold, "l0_on_calibration_tokens": float(fired.mean()), "tokens": len(acts),
                   "norm_median": float(np.median(np.linalg.norm(acts, axis=1)))}
    record.write_text(json.dumps(calibration, indent=1))
    return calibration


# ---- the workspace and the chain --------------------------------------------------------------------

def sim_sizes(tokens: int, context: int = 1024) -> dict:
    """The run's sizes at ``tokens`` (module docstring: what is reduced and why)."""
    rows = tokens // context
    heldout = 0.25
    train_tokens = (rows - int(np.ceil(rows * heldout))) * context
    return {
        "activations": {"n_tokens": tokens, "chunk_tokens": min(tokens, 8192), "batch_size": 4},
        "sae": {"heldout_fraction": heldout},
        "sae_eval": {"lm_rows": 2, "lm_batch_rows": 2, "geometry_tokens": min(16384, train_tokens), "crosscheck_rows": 1},
        "residual": {},
        "ica": {"n_components": 128, "max_components": 128, "max_tokens": train_tokens // 3},
        "compare": {"n_random": 1000, "n_rotations": 20, "n_bootstrap": 200},
        "ellipticity": {"n_surrogates": 20, "n_bootstrap": 200},
        "examples": {"n_random_units": 200},
        "autointerp": {"n_ica_units": 128, "n_random_units": 200},
        "causal": {"attribution_rows": 1, "rows": 2, "batch_rows": 1, "exact_top": 2, "exact_random": 1, "n_steer": 1,
                   "steer_new_tokens": 4, "subspace_fractions": [0.25, 1.0], "n_random_subspaces": 1, "n_bootstrap": 200},
        "probes": {"extra_layers": [], "n_tokens": 4 * context, "sae_width": 16384, "sae_train_tokens": 65536,
                   "n_features": 10, "min_positives": 5, "min_val_positives": 2, "n_bootstrap": 200},
    }


def workspace(work: Path, tokens: int, device: str, shape: Shape = GEMMA_3_1B_262K, context: int = 1024) -> Path:
    """A fresh pipeline workspace: params.yaml with the run resized and on ``device``, the paper's folders."""
    ws = work / "ws"
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", ws / "dvc.yaml")
    shutil.copytree(REPO / "metrics", ws / "metrics")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["runs"] = [raw["main_run"], shape.run]
    definition = raw["run_definitions"][shape.run]
    definition["sizes"] = copy.deepcopy(sim_sizes(tokens, context))
    definition["subject"]["device"] = device
    definition["data"]["context_length"] = context
    raw["corpora"]["fineweb"]["n_docs"] = 2000
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return ws


def stage_command(stage: str, run: str) -> list[str]:
    """``stage``'s command for ``run``, from dvc.yaml (``python`` is this interpreter)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    spec = stages[stage].get("do", stages[stage])
    words = shlex.split(spec["cmd"].replace("${item}", run))
    return [sys.executable if w == "python" else w for w in words]


class GpuPeak:
    """Peak GPU memory in use while a stage runs, above the level before it (nvidia-smi, polled)."""

    def __init__(self):
        self.base = self.used()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def used() -> int:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, check=True).stdout
        return int(out.split()[0]) << 20

    def _poll(self):
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.used())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def bytes(self) -> int:
        return self.peak - self.base


#: Runs argv[2:] and writes [exit code, its ru_maxrss in KiB] to argv[1]. A process's ru_maxrss starts
#: at its parent's peak RSS (the kernel keeps the high-water mark across fork and exec), so a stage
#: spawned by a large parent (a test process holding a model) would read the parent's peak; this
#: launcher is small, and its child's count starts from it.
LAUNCHER = ("import json, os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); _, s, u = os.wait4(p.pid, 0); "
            "open(sys.argv[1], 'w').write(json.dumps([os.waitstatus_to_exitcode(s), u.ru_maxrss]))")


def run_stage(cmd: list[str], cwd: Path, env: dict, log: Path, gpu: bool) -> dict:
    """Run one stage; its wall seconds, peak RSS (bytes) and, on CUDA, peak GPU memory."""
    start = time.perf_counter()
    monitor = GpuPeak() if gpu else contextlib.nullcontext()
    usage = log.with_suffix(".rusage")
    with log.open("w") as out, monitor:
        subprocess.run([sys.executable, "-c", LAUNCHER, str(usage), *cmd], cwd=cwd, env=env, stdout=out,
                       stderr=subprocess.STDOUT, check=True)
    returncode, maxrss_kib = json.loads(usage.read_text())
    result = {"seconds": time.perf_counter() - start, "peak_rss_bytes": maxrss_kib * 1024, "returncode": returncode}
    if gpu:
        result["peak_gpu_bytes"] = monitor.bytes
    return result


def run_chain(ws: Path, cache: Path, shape: Shape = GEMMA_3_1B_262K, stages=CHAIN, gpu: bool = False, echo=print) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "HF_HOME": str(ws / "hf-home"), "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "TQDM_DISABLE": "1"}
    logs = ws / "logs"
    logs.mkdir(exist_ok=True)
    measured = {}
    for stage in ("validate", *stages):
        cmd = [sys.executable, "-m", "darkmatter.validate", "--params", "params.yaml", "--out", "data/params.valid"] \
            if stage == "validate" else stage_command(stage, shape.run)
        result = run_stage(cmd, ws, env, logs / f"{stage}.log", gpu)
        measured[stage] = result
        echo(f"{stage:12s} {result['seconds']:8.1f} s  peak RSS {result['peak_rss_bytes'] / GIB:6.2f} GiB"
             + (f"  GPU {result['peak_gpu_bytes'] / GIB:6.2f} GiB" if gpu else "") + ("" if result["returncode"] == 0 else "  FAILED"))
        if result["returncode"] != 0:
            tail = (logs / f"{stage}.log").read_text()[-3000:]
            raise SystemExit(f"stage {stage} failed (exit {result['returncode']}); log {logs / f'{stage}.log'}:\n{tail}")
    return measured


# ---- the comparison --------------------------------------------------------------------------------

def compare(measured: dict, predicted: dict, ram_bytes: float) -> tuple[list[dict], list[str]]:
    """Rows of measured beside predicted, and one line per failure."""
    rows, failures = [], []
    for stage, m in measured.items():
        p = predicted.get(stage)
        row = {"stage": stage, **m}
        if m["peak_rss_bytes"] > ram_bytes:
            failures.append(f"{stage}: peak RSS {m['peak_rss_bytes'] / GIB:.1f} GiB exceeds {ram_bytes / GIB:.0f} GiB")
        if p is not None:
            row |= {"predicted_host_bytes": p.host_bytes, "predicted_gpu_bytes": p.gpu_bytes, "predicted_seconds": p.seconds,
                    "rss_ratio": m["peak_rss_bytes"] / p.host_bytes,
                    "time_ratio": m["seconds"] / p.seconds if p.seconds else None}
            for what in ("rss_ratio", "time_ratio"):
                if row[what] is not None and abs(row[what] - 1) > TOLERANCE:
                    failures.append(f"{stage}: measured / predicted {what.split('_')[0]} = {row[what]:.2f}, outside 1 ± {TOLERANCE}")
        rows.append(row)
    return rows, failures


def markdown(rows: list[dict], info: dict, failures: list[str], gpu: bool) -> str:
    head = ("| stage | seconds | predicted | ratio | peak RSS | predicted | ratio |" + (" peak GPU | predicted |" if gpu else "")
            + "\n|---|---|---|---|---|---|---|" + ("---|---|" if gpu else ""))
    lines = [head]
    for r in rows:
        pred_s = r.get("predicted_seconds")
        line = (f"| {r['stage']} | {r['seconds']:.0f} | {pred_s:.0f} | {r['time_ratio']:.2f} |" if pred_s else
                f"| {r['stage']} | {r['seconds']:.0f} | – | – |")
        if "predicted_host_bytes" in r:
            line += f" {r['peak_rss_bytes'] / GIB:.2f} GiB | {r['predicted_host_bytes'] / GIB:.2f} GiB | {r['rss_ratio']:.2f} |"
        else:
            line += f" {r['peak_rss_bytes'] / GIB:.2f} GiB | – | – |"
        if gpu:
            line += f" {r.get('peak_gpu_bytes', 0) / GIB:.2f} GiB | " + (
                f"{r['predicted_gpu_bytes'] / GIB:.2f} GiB |" if "predicted_gpu_bytes" in r else "– |")
        lines.append(line)
    total = sum(r["seconds"] for r in rows)
    verdict = ("**Within ±30% everywhere.**" if not failures else
               "**Outside ±30% (the benchmark fails):** " + "; ".join(failures) + ".")
    return "\n".join([
        f"Device: {info['device']}.", "",
        f"`lscpu` flags: {info['flags']}", "",
        f"Run `{info['run']}` at {info['tokens']:,} tokens (context {info['context']:,}), width {info['width']:,}, ICA k = 128; the SAE's one threshold "
        f"{info['calibration']['threshold']:.3f} fires {info['calibration']['l0_on_calibration_tokens']:.1f} latents per token "
        f"on the random model's layer-13 activations ({info['calibration']['tokens']} tokens). Sizes: `bench/bench_ladder_sim.py` "
        f"(`sim_sizes`). Predictions: `darkmatter.plan` for the same params"
        + (f", this CPU's fp32 GEMM rate measured in the same run: {info['gemm_gflops']:.0f} GFLOP/s" if info.get("gemm_gflops") else "")
        + (f"; a stage's start-up {info['startup_seconds']:.1f} s; ICA at the fits' mean {info['ica_iterations']:.0f} iterations "
           "(a data property the plan otherwise assumes)." if "ica_iterations" in info else "."),
        *([f"Rerun later, with the code and load of that time (the GEMM rate and start-up measured then): "
           + ", ".join(f"{stage} ({when})" for stage, when in info["rerun"].items()) + "."] if info.get("rerun") else []),
        "", "\n".join(lines), "",
        f"Total {total:.0f} s = {total / 60:.1f} min; largest peak RSS {max(r['peak_rss_bytes'] for r in rows) / GIB:.1f} GiB "
        f"(this machine: {info['ram_gib']:.0f} GiB). {verdict}",
    ])


def machine_info(device: str) -> dict:
    from common import cpu_flags, machine

    return {"machine": machine(), "flags": cpu_flags(), "device": device,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ladder-sim"))
    parser.add_argument("--keep", action="store_true", help="reuse the HF cache built by an earlier run")
    parser.add_argument("--ram-gib", type=float, default=24.0, help="fail if a stage's peak RSS exceeds this")
    parser.add_argument("--out", type=Path, default=HERE / "ladder_sim.json")
    parser.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    parser.add_argument("--section-out", type=Path, help="write the RESULTS.md section here instead (a GPU machine's copy)")
    parser.add_argument("--replan", action="store_true",
                        help="compare the plan with the measurements of the last run in --work (no stage runs)")
    parser.add_argument("--rerun", nargs="+", choices=CHAIN, metavar="STAGE",
                        help="rerun these stages in the last run's workspace (--work), then compare as --replan does; "
                             "this machine's GEMM rate and start-up are measured again")
    parser.add_argument("--build-cache", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tokens % 1024 or args.tokens < 12288:
        raise SystemExit(f"--tokens {args.tokens}: use a multiple of 1024, at least 12288 (a quarter of the rows, held out, "
                         "must hold causal's 3)")

    shape, cache = GEMMA_3_1B_262K, args.work / "hf-cache"
    if args.build_cache:
        print(json.dumps(build_cache(cache)))
        return 0
    from darkmatter import plan

    ws, record = args.work / "ws", args.work / "measured.json"
    if args.replan or args.rerun:
        saved = json.loads(record.read_text())
        calibration, measured, args.tokens, gemm = saved["calibration"], saved["measured"], saved["tokens"], saved["gemm"]
        startup = saved.get("startup") or plan.measured_startup_seconds()
        if args.rerun:
            measured |= {stage: result for stage, result in run_chain(ws, cache, shape, tuple(args.rerun),
                                                                      gpu=args.device == "cuda").items() if stage != "validate"}
            gemm = plan.measured_gemm_flops() if args.device == "cpu" else None
            startup = plan.measured_startup_seconds()
            saved |= {"measured": measured, "gemm": gemm, "startup": startup,
                      "rerun": saved.get("rerun", {}) | {stage: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                                                         for stage in args.rerun}}
            record.write_text(json.dumps(saved))
    else:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
        # Built in a child process, so that this one stays small (no model, no torch) while the stages run.
        built = subprocess.run([sys.executable, __file__, "--build-cache", "--work", str(args.work)], capture_output=True, text=True)
        if built.returncode != 0:
            raise SystemExit(f"building the HF cache failed:\n{built.stderr[-3000:]}")
        calibration = json.loads(built.stdout.strip().splitlines()[-1])
        print(f"SAE threshold {calibration['threshold']:.4f}: L0 {calibration['l0_on_calibration_tokens']:.1f} on calibration tokens")
        ws = workspace(args.work, args.tokens, args.device, shape)
        measured = run_chain(ws, cache, shape, gpu=args.device == "cuda")
        # this machine's rates, in the same run: the CPU's GEMM, a stage's imports
        gemm = plan.measured_gemm_flops() if args.device == "cpu" else None
        startup = plan.measured_startup_seconds()
        record.write_text(json.dumps({"calibration": calibration, "measured": measured, "tokens": args.tokens, "gemm": gemm,
                                      "startup": startup}))

    fits = json.loads((ws / "metrics/runs" / shape.run / "ica.json").read_text())["runs"]
    iterations = float(np.mean([f["n_iter"] for f in fits]))  # a data property: the plan is checked at the fits' own
    predicted = {c.stage: c for c in plan.plan_run(ws / "params.yaml", shape.run, args.device, gemm_flops=gemm,
                                                    startup_seconds=startup, ica_iterations=iterations)}
    rows, failures = compare(measured, predicted, args.ram_gib * GIB)
    info = machine_info(args.device) | {"run": shape.run, "width": shape.width, "tokens": args.tokens, "context": 1024, "calibration": calibration,
                                         "ica_iterations": iterations, "startup_seconds": startup,
                                         "ram_gib": args.ram_gib, "gemm_gflops": gemm / 1e9 if gemm else None}
    if (args.replan or args.rerun) and saved.get("rerun"):
        info["rerun"] = saved["rerun"]
    args.out.write_text(json.dumps({"info": info, "stages": rows, "failures": failures}, indent=1) + "\n")
    body = markdown(rows, info, failures, args.device == "cuda")
    print(body)
    title = "Ladder simulation: Gemma 3 1B shape, SAE 262k" + (" (CUDA)" if args.device == "cuda" else "")
    if args.section_out:
        args.section_out.write_text(f"## {title}\n\n_{info['date']}; {info['machine']}_\n\n{body}\n")
    elif not args.no_results:
        from common import write_section

        write_section(title, body)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
