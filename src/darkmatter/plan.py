"""What a run will cost, per stage, before it starts: peak host RAM, peak GPU memory, disk and time.

    python -m darkmatter.plan RUN [--device cpu|cuda] [--params params.yaml]
    python -m darkmatter.plan --all --device cuda        # one line per run definition

The formulas come from the run's shapes: tokens N, context T, the model's dimensions (from
TransformerLens's own config of the model; GPT-2's from a table, since TransformerLens reads it from
the Hub), the SAE's width W (the run's ``sae.width``, or the Gemma Scope / jb id), the ICA
components k and each stage's own sizes. Each term says what it counts.

Memory is what a stage holds at its peak: the interpreter and libraries, the loads (TransformerLens
builds a float32 state dict on the host beside the checkpoint, whatever the device), then the work
beside what stays resident (the model, the SAE and its shifted encoder copy, one latent chunk of
``residual.latent_budget_mb``, SAELens's cross-check rows). On CUDA the loads pass through the host
and the rest is on the GPU; the plan counts tensors, so ``nvidia-smi``, which also counts PyTorch's
cached blocks, can read higher.

Time is a stage's start-up (a fresh interpreter importing torch, TransformerLens and SAELens, timed
here when the plan runs; plus the CUDA context), its loads (TransformerLens's conversion, seconds per
weight; the SAE at disk speed), and its work divided by a rate:

- **CPU:** the fp32 GEMM rate is measured here, at plan time (~1 s), and each kind of work runs at
  a fraction of it measured in ``bench/RESULTS.md`` on the default run (activation caching 0.80 of
  its GEMM roofline, the residual pass 0.78, ``bench/bench_scaling.py``'s exponents near 1 for
  tokens); ICA's time is iterations (a data property: the cap, ``ica.max_iter``, bounds it) times
  a per-iteration cost of k · N source values (``ICA_ITER_SECONDS``).
- **CUDA:** assumed rates of one H100 (bfloat16 989 TFLOP/s dense, TF32 495), at an assumed 35% of
  peak, not measured: ``--gpu-tflops`` replaces the assumption.

What is not modelled is printed as such, never as zero: the judge's time (it is a server or a
local model, ``autointerp.backend``), and the corpus download.

Checked against measurement: ``bench/bench_ladder_sim.py`` runs the Gemma 3 1B / 262k chain on
this CPU at reduced tokens and writes the plan's prediction beside each stage's measured peak RSS
and time (bench/RESULTS.md, "Ladder simulation").
"""

from __future__ import annotations

import argparse
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from darkmatter.errors import UserError, cli

GIB = 1 << 30

# ---- measured constants (each with where it was measured) -------------------------------------------

#: RSS of a stage process once torch, TransformerLens and SAELens are imported (0.50 GiB measured,
#: 2026-12-04, torch 2.13 CPU); with CUDA, the context's host side adds ~0.5 GiB (the 1B simulation's
#: SAE-only stages on an H200: 3.2 GiB = this + the SAE's load).
BASE_HOST = {"cpu": 0.5 * GIB, "cuda": 1.0 * GIB}
#: RSS of a stage that imports neither torch nor the model libraries (the dashboard: 0.29-0.41 GiB measured).
BASE_HOST_LIGHT = 0.4 * GIB
#: GPU memory the CUDA context and the allocator's slack take before any tensor.
BASE_GPU = 0.75 * GIB
#: Bytes per parameter of the checkpoint TransformerLens reads: the Hub's Gemma checkpoints are
#: bfloat16, GPT-2's and the offline default's float32 copy are float32. While TransformerLens
#: loads, the Hugging Face model (in the checkpoint's dtype) and a float32 state dict of the
#: HookedTransformer are alive together on the host, whatever the target dtype and device
#: (gemma-3-270m: 2.97 GiB above the base, 2.76 predicted; the 1B shape on CUDA in bfloat16:
#: 7.0 GiB above the base, 7.0 predicted).
CHECKPOINT_BYTES = {"google/": 2, "": 4}
#: Seconds of TransformerLens's load per HookedTransformer weight: its state-dict conversion runs on
#: the host (22 s for gemma-3-270m's 0.45B weights on a loaded 2-core Xeon; ~55 s for the 1B shape's
#: 1.35B on the H200 machine's host, bench/RESULTS.md).
MODEL_LOAD_SECONDS_PER_WEIGHT = 45e-9
#: Seconds to create the CUDA context and its first kernels in a stage process.
CUDA_INIT_SECONDS = 5.0
#: SAELens's ``run_evals`` (the eval_sae cross-check) on one row: float32 arrays alive at its peak, as
#: [context, width] copies (its JumpReLU encode's pre-activations, mask and latents, the dense decode's
#: input) and [context, vocabulary] copies (the clean, spliced and ablated forwards' logits and
#: log-probabilities). 10 in all measured on the 270M / 262k row, where width = vocabulary (a 14.2 GiB
#: peak, 10.2 GiB above the model and the SAE); the split between the two is read from SAELens's code.
#: The latent budget does not bound it.
CROSSCHECK_LATENT_COPIES, CROSSCHECK_LOGIT_COPIES = 4, 6
#: The dashboard stage: reading the examples and writing HTML (1.2 s on a 2-core Xeon, 1.9 s on the
#: H200 machine's host: bench/RESULTS.md, the ladder simulations).
DASHBOARD_SECONDS = 1.5
#: Fraction of the GEMM rate each kind of work reaches (bench/RESULTS.md, AVX2 EPYC): the layer
#: forward (activation caching / roofline); the SAE pass, counted as the code computes it (the
#: encode GEMM, a sparse decode, the moments: the default run's residual pass, 11,240 tok/s at width
#: 4096, is 8.6 MFLOP per token at 97 GFLOP/s of a 151 GFLOP/s GEMM); SAE training.
CPU_EFFICIENCY = {"forward": 0.80, "sae": 0.64, "train": 0.86}
#: ICA's seconds per iteration per source value (k · N) on CPU (Picard-O, one thread per fit): its
#: elementwise score functions over the k × N sources dominate at these k, not the k² N products
#: (time per iteration grew as k^0.98 from k = 32 to 128 at N = 16,384, 2-core Xeon, 2026-12-04).
#: 222 ms per iteration at k = 64, N = 65,536 (bench/RESULTS.md "Scaling of the cost"); within
#: ~2x across 4k-64k tokens and CPUs, where caches change the rate.
ICA_ITER_SECONDS = 0.222 / (64 * 65536)
#: Iterations a Picard fit takes on real dark matter (147–999 measured at tol 1e-7; the cap bounds it).
ICA_ITERATIONS = 500
#: Model weights and SAE tensors read from disk (page cache cold), bytes per second.
LOAD_BYTES_PER_S = 250e6
#: The assumed GPU (one H100 SXM): dense peak FLOP/s by dtype, the fraction of it reached, memory.
GPU_PEAK = {"bfloat16": 989e12, "float32": 495e12}  # float32 matmuls run as TF32 (resolve_device)
GPU_UTILISATION = 0.35
GPU_MEMORY = 80 * GIB
HOST_MEMORY = 64 * GIB


@dataclass(frozen=True)
class ModelShape:
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_head: int
    d_vocab: int
    #: Non-embedding parameters (TransformerLens's ``n_params``).
    n_params: int

    def layer_flops(self, context: int) -> float:
        """Multiply-add FLOPs of one block per token: its weights, and attention over ``context`` keys."""
        return 2 * self.n_params / self.n_layers + 4 * context * self.n_heads * self.d_head

    def checkpoint_params(self) -> int:
        """Parameters of the Hugging Face checkpoint: blocks plus one (tied) embedding."""
        return self.n_params + self.d_vocab * self.d_model

    def weight_count(self) -> int:
        """Parameters of the HookedTransformer: blocks plus an embedding and an (untied) unembedding."""
        return self.n_params + 2 * self.d_vocab * self.d_model


#: TransformerLens reads GPT-2's config from the Hub; its shape, for planning offline.
GPT2 = ModelShape(12, 768, 3072, 12, 64, 50257, 84934656)


def model_shape(tl_name: str) -> ModelShape:
    if tl_name == "gpt2":
        return GPT2
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    c = get_pretrained_model_config(tl_name)
    return ModelShape(c.n_layers, c.d_model, c.d_mlp, c.n_heads, c.d_head, c.d_vocab, int(c.n_params))


def sae_width(run) -> int:
    """The run's SAE width: trained here, or read from a Gemma Scope id (``width_16k``) or the jb release."""
    src = run.sae_source
    if src.source == "train":
        return run.sae.width
    found = re.search(r"width_(\d+)([km])", src.sae_id)
    if found:  # "16k" is 16,384 and "262k" is 262,144: the power of two the rounded name stands for
        return 2 ** round(math.log2(int(found.group(1)) * (1000 if found.group(2) == "k" else 1_000_000)))
    if src.release == "gpt2-small-res-jb":
        return 24576
    raise UserError(f"run {run.name}: no SAE width in sae_id {src.sae_id!r}; add it to darkmatter.plan.sae_width")


@dataclass
class StageCost:
    stage: str
    host_bytes: float
    gpu_bytes: float
    disk_bytes: float
    #: None: not modelled (``note`` says why).
    seconds: float | None
    note: str = ""


@dataclass(frozen=True)
class Rates:
    """FLOP/s of each kind of work on the planned device, and a stage process's start-up seconds."""

    forward: float
    sae: float
    train: float
    startup: float = 0.0

    @classmethod
    def cpu(cls, gemm_flops: float, startup: float = 0.0) -> Rates:
        return cls(**{kind: gemm_flops * eff for kind, eff in CPU_EFFICIENCY.items()}, startup=startup)

    @classmethod
    def gpu(cls, model_dtype: str, tflops: float | None, startup: float = 0.0) -> Rates:
        fwd = tflops * 1e12 if tflops else GPU_PEAK[model_dtype] * GPU_UTILISATION
        sae = tflops * 1e12 if tflops else GPU_PEAK["float32"] * GPU_UTILISATION
        return cls(forward=fwd, sae=sae, train=sae, startup=startup)


def measured_startup_seconds(repeats: int = 2) -> float:
    """Seconds a fresh interpreter here takes to import torch, TransformerLens and SAELens, as every stage
    does: the best of ``repeats`` (the first also warms the page cache, as a pipeline's first stage does)."""
    import subprocess
    import sys

    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, transformer_lens, sae_lens"], check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def measured_gemm_flops(n: int = 1024, repeats: int = 5) -> float:
    """This CPU's fp32 GEMM rate, best of ``repeats`` n×n products."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def plan(run, device: str, rates: Rates, ica_iterations: float | None = None) -> list[StageCost]:
    """Every per-run stage's cost for ``run`` on ``device`` (module docstring). ``ica_iterations``:
    Picard's iterations per fit, when known (a data property; default :data:`ICA_ITERATIONS`)."""
    from darkmatter.analysis.compare import cosine_blocks
    from darkmatter.interp.examples import DENSITY_TOKENS
    from darkmatter.analysis.stream import LATENT_COPIES, SPARSE_DECODE_BELOW, latent_chunk_tokens
    from darkmatter.data.split import split_rows
    from darkmatter.sae.splice import VARIANTS

    shape = model_shape(run.model.tl_name or run.model.name)
    gpu = device == "cuda"
    model_dtype = "bfloat16" if gpu and run.subject.dtype in ("auto", "bfloat16") else "float32"
    wbytes = 2 if model_dtype == "bfloat16" else 4
    T, d, W, L = run.context_length, shape.d_model, sae_width(run), run.layer
    n_rows = run.activations.n_tokens // T
    train_rows, held_rows = split_rows(n_rows, run.sae.heldout_fraction)
    N, n_held, n_train = n_rows * T, len(held_rows) * T, len(train_rows) * T
    k = run.ica.max_components
    budget = run.residual.latent_budget_mb << 20
    chunk = latent_chunk_tokens(W, budget)
    store = 2 if run.activations.store_dtype == "float16" else 4

    model_dev = shape.weight_count() * wbytes                      # the HookedTransformer's weights, where they run
    checkpoint = next(b for prefix, b in CHECKPOINT_BYTES.items() if run.model.name.startswith(prefix))
    load_host = shape.checkpoint_params() * checkpoint + shape.weight_count() * 4   # TransformerLens's load, on the host
    sae_bytes = (2 * d * W + 2 * W + d) * 4
    encoder_copy = (d + 1) * W * 4                                 # SAEForward's shifted encoder (analysis.stream)
    to_layer = (L + 1) * shape.layer_flops(T)                      # per token, embedding to the hook
    rest = (shape.n_layers - L - 1) * shape.layer_flops(T)         # per token, hook to the last block
    unembed_row = 2 * shape.d_vocab * d                            # per read-out position
    sae_pass = 2 * d * W * (1 + SPARSE_DECODE_BELOW)              # per token: the encode GEMM, a sparse decode
    base_host, base_gpu = BASE_HOST[device], (BASE_GPU if gpu else 0.0)
    # a forward's live activations: batch × T × the widest layer, a few copies; attention scores per head
    def forward_work(rows: int) -> float:
        return rows * T * (4 * max(shape.d_mlp, d) + shape.n_heads * T) * wbytes * 2

    start = rates.startup + (CUDA_INIT_SECONDS if gpu else 0.0)
    load_model = shape.weight_count() * MODEL_LOAD_SECONDS_PER_WEIGHT
    load_sae = sae_bytes / LOAD_BYTES_PER_S

    def footprint(host_work: float = 0.0, device_work: float = 0.0, model: bool = False, sae: bool = True,
                  streams: bool = True) -> tuple[float, float]:
        """(host, GPU) peak of a stage: its loads (the SAE first, then TransformerLens's model), then its
        work beside what stays resident. On CUDA the loads pass through the host and the rest lives on the GPU."""
        sae_resident = (sae_bytes + (encoder_copy if streams else 0.0)) if sae else 0.0
        loading = max(load_host if model else 0.0, sae_bytes if sae else 0.0) if gpu else \
            (sae_bytes if sae else 0.0) + (load_host if model else 0.0)
        resident = (model_dev if model else 0.0) + sae_resident + device_work
        if gpu:
            return base_host + loading + host_work, base_gpu + resident
        return base_host + max(loading, resident) + host_work, 0.0

    def stream_chunk(tokens: int) -> float:
        """A stream chunk's latents, pre-activations, x and r, for a pass over ``tokens`` (a short pass
        encodes fewer tokens than the budget allows)."""
        c = min(chunk, tokens)
        return c * W * 4 * LATENT_COPIES + c * d * 4 * 3

    latent_chunk = stream_chunk(chunk)
    costs: list[StageCost] = []

    # activations: the forward to the hook over every token, written chunk by chunk
    a = run.activations
    host, dev = footprint(a.chunk_tokens * d * 4, forward_work(a.batch_size), model=True, sae=False)
    costs.append(StageCost("activations", host, dev, N * (d * store + 4 + 4 + 2 + 1) + a.chunk_tokens * d * store,
                           start + load_model + N * to_layer / rates.forward))

    # sae: trained here (the sae section), or the pretrained tensors copied into the run's folder
    if run.sae_source.source == "train":
        s = run.sae
        host, dev = footprint(s.batch_size * W * 4 * 6, sae_bytes * 3, streams=False)
        costs.append(StageCost("sae", host, dev, sae_bytes * (1 + len(s.curve_tokens)),
                               start + s.train_tokens * 6 * d * W / rates.train))
    else:  # on the host only, whatever the device: loaded through SAELens and saved
        costs.append(StageCost("sae", BASE_HOST["cpu"] + sae_bytes, 0.0, sae_bytes, rates.startup + 2 * load_sae,
                               "pretrained: loaded through SAELens and saved"))

    # eval_sae: reconstruction over the held-out tokens, the geometry tokens, LM splices on lm_rows, and
    # SAELens's own evaluation of whole rows (the cross-check), whose temporaries the latent budget does not bound
    e = run.sae_eval
    lm_rows = min(e.lm_rows, len(held_rows))
    lm_flops = lm_rows * (1 + len(VARIANTS)) * (T * rest + e.positions_per_row * unembed_row)
    lm_flops += e.crosscheck_rows * 4 * (T * (to_layer + rest) + T * unembed_row)  # SAELens's run_evals: full forwards
    crosscheck = min(e.crosscheck_rows, e.lm_batch_rows) * T * 4 * (
        CROSSCHECK_LATENT_COPIES * W + CROSSCHECK_LOGIT_COPIES * shape.d_vocab)
    host, dev = footprint(min(e.geometry_tokens, n_train) * d * 4 * 2,
                          max(stream_chunk(max(n_held, min(e.geometry_tokens, n_train))), forward_work(e.lm_batch_rows), crosscheck), model=True)
    # SAE passes: the held-out and geometry tokens; per LM batch one reconstruction for each SAE spliced (the run's
    # and its curve snapshots) and for the cross-check's rows
    spliced = 1 + (len(run.sae.curve_tokens) if run.sae_source.source == "train" else 0)
    sae_tokens = n_held + min(e.geometry_tokens, n_train) + (spliced * lm_rows + e.crosscheck_rows) * T
    costs.append(StageCost("eval_sae", host, dev, 0.0, start + load_model + load_sae
                           + sae_tokens * sae_pass / rates.sae + lm_flops / rates.forward,
                           f"SAELens cross-check on {e.crosscheck_rows} rows" if e.crosscheck_rows else ""))

    # residual: x and r streamed through the SAE; moments of [x, r] in float64
    moments = (2 * d) ** 2 * 8 * 2
    host, dev = footprint(0.0, stream_chunk(N) + moments)
    costs.append(StageCost("residual", host, dev, 4 * d * d * 8,
                           start + load_sae + N * (sae_pass + 2 * (2 * d) ** 2) / rates.sae))

    # ica: the target of the fit samples and the held-out tokens, whitened; parallel Picard fits
    i = run.ica
    fit_tokens = min(i.max_tokens, n_train)
    n_fits = i.seeds * (1 + i.resamples)
    workers = 1 if gpu else min(n_fits, 2)
    z = fit_tokens * k * 8
    ica_host = (1 + i.resamples) * z + n_held * k * 8 + workers * 6 * z
    host, dev = footprint(ica_host, stream_chunk(max(fit_tokens, n_held)))
    iter_s = ICA_ITER_SECONDS * k * fit_tokens
    if gpu:  # Picard on CUDA in float64: ~k² N FLOPs a few times per iteration, at float64 rates (~1/15 of TF32)
        iter_s = 20 * k * k * fit_tokens / (GPU_PEAK["float32"] / 15 * GPU_UTILISATION)
    iterations = min(i.max_iter, ica_iterations or ICA_ITERATIONS)
    ica_seconds = math.ceil(n_fits / workers) * iterations * iter_s
    costs.append(StageCost("ica", host, dev, k * d * 8 * 4 + n_held * k * 4,
                           start + load_sae + ((1 + i.resamples) * fit_tokens + n_held) * sae_pass / rates.sae + ica_seconds,
                           f"ICA at {iterations:.0f} iterations per fit ({n_fits} fits)"))

    # compare: max |cos| of the components, random directions and random rotations against every decoder row,
    # a normalised block of decoder rows and a block of cosines at a time (within the budget)
    c = run.compare
    n_dirs = k + c.n_random + c.n_rotations * k
    block_rows, block_dirs = cosine_blocks(n_dirs, W, d, budget)
    host, dev = footprint(n_dirs * d * 8 * 2, block_rows * (d + block_dirs) * 4, streams=False)
    costs.append(StageCost("compare", host, dev, n_dirs * 8 * 2, start + load_sae + 2 * n_dirs * d * W / rates.sae))

    # examples: the units' activations over every token (ICA sources, SAE latents, random units)
    ex = run.examples
    units = k * 2 + ex.n_random_units
    host, dev = footprint(N * units * 4 * 2, stream_chunk(N))
    density_tokens = min(DENSITY_TOKENS, n_train)                # the ICA densities' sample, then every token
    costs.append(StageCost("examples", host, dev, N * units * 2,
                           start + load_sae + ((N + density_tokens) * sae_pass + N * 2 * d * units) / rates.sae))

    # causal: a gradient pass, exact ablations and subspaces over rows (forwards from the hook), steering
    ca = run.causal
    per_row = T * rest + ca.positions_per_row * unembed_row
    sizes = sorted({max(1, round(f * k)) for f in ca.subspace_fractions})
    subspace_edits = sum(2 + ca.n_random_subspaces if m < k else 3 for m in sizes)
    n_edits = 1 + 3 * (ca.exact_top + ca.exact_random) + subspace_edits + 3
    steer_tokens = ca.n_steer * 2 * len(ca.steer_alphas) * sum(ca.steer_prompt_tokens + t for t in range(ca.steer_new_tokens))
    causal_flops = 3 * ca.attribution_rows * per_row + n_edits * ca.rows * per_row
    causal_flops += steer_tokens * (to_layer + rest + unembed_row)
    host, dev = footprint(3 * k * d * 4 * 3, forward_work(ca.batch_rows) * 3 + k * d * 4 * 3 + latent_chunk, model=True)
    costs.append(StageCost("causal", host, dev, 0.0, start + load_model + load_sae + causal_flops / rates.forward
                           + ca.rows * T * sae_pass / rates.sae))

    # probes: per probed layer two small SAEs trained here (on the activations and on the affine map's
    # residual), one after the other; the run's SAE's firing counts and columns, and the small SAEs'; the
    # paired forward to the deepest probed layer
    p = run.probes
    pw = p.sae_width
    small_saes = 2 * (1 + len(p.extra_layers))
    host, dev = footprint(p.n_tokens * d * 4 * 3, pw * d * 4 * 8 + stream_chunk(p.n_tokens) + forward_work(p.batch_size), model=True)
    costs.append(StageCost("probes", host, dev, small_saes * pw * d * 4 * 2, start + load_model + load_sae
                           + small_saes * p.sae_train_tokens * 6 * d * pw / rates.train
                           + 2 * p.n_tokens * (sae_pass + small_saes * 4 * d * pw) / rates.sae
                           + p.n_tokens * (to_layer + len(p.extra_layers) * shape.n_layers * shape.layer_flops(T)) / rates.forward,
                           "the probes' logistic fits are not modelled"))

    # dashboard and autointerp: the examples' text; the judge is not modelled
    costs.append(StageCost("dashboard", BASE_HOST_LIGHT, 0.0, units * 200e3, DASHBOARD_SECONDS))
    costs.append(StageCost("autointerp", BASE_HOST["cpu"], 0.0, 0.0, None, f"judge: backend {run.autointerp.backend}, not modelled"))
    return costs


def fits(costs: list[StageCost], device: str) -> list[str]:
    """One line per stage whose peak exceeds the machine the README sizes the ladder for."""
    problems = []
    for c in costs:
        if c.host_bytes > HOST_MEMORY:
            problems.append(f"{c.stage}: host {c.host_bytes / GIB:.1f} GiB > {HOST_MEMORY / GIB:.0f} GiB")
        if device == "cuda" and c.gpu_bytes > GPU_MEMORY:
            problems.append(f"{c.stage}: GPU {c.gpu_bytes / GIB:.1f} GiB > {GPU_MEMORY / GIB:.0f} GiB")
    return problems


def plan_run(params: Path | str, run: str, device: str = "cpu", gpu_tflops: float | None = None,
             gemm_flops: float | None = None, startup_seconds: float | None = None,
             ica_iterations: float | None = None) -> list[StageCost]:
    """The plan of run ``run`` of ``params`` on ``device``: what is not given is measured here (this
    CPU's GEMM rate, on ``cpu``; a stage's start-up, always)."""
    from darkmatter.config import load_params

    r = load_params(params).run(run, check_chunks=False)
    model_dtype = "bfloat16" if r.subject.dtype in ("auto", "bfloat16") else "float32"
    startup = measured_startup_seconds() if startup_seconds is None else startup_seconds
    rates = (Rates.gpu(model_dtype, gpu_tflops, startup) if device == "cuda"
             else Rates.cpu(gemm_flops or measured_gemm_flops(), startup))
    return plan(r, device, rates, ica_iterations)


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "not modelled"
    return f"{s:.0f} s" if s < 600 else f"{s / 60:.0f} min" if s < 36000 else f"{s / 3600:.1f} h"


def table(costs: list[StageCost]) -> str:
    rows = ["| stage | host RAM | GPU memory | disk | time | note |", "|---|---|---|---|---|---|"]
    for c in costs:
        rows.append(f"| {c.stage} | {c.host_bytes / GIB:.1f} GiB | {c.gpu_bytes / GIB:.1f} GiB | {c.disk_bytes / GIB:.2f} GiB "
                    f"| {_fmt_seconds(c.seconds)} | {c.note} |")
    known = [c.seconds for c in costs if c.seconds is not None]
    rows.append(f"| **peak / total** | {max(c.host_bytes for c in costs) / GIB:.1f} GiB | {max(c.gpu_bytes for c in costs) / GIB:.1f} GiB "
                f"| {sum(c.disk_bytes for c in costs) / GIB:.2f} GiB | {_fmt_seconds(sum(known))} | |")
    return "\n".join(rows)


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import load_params

    parser = argparse.ArgumentParser(prog="python -m darkmatter.plan", description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", help="a name in run_definitions")
    parser.add_argument("--all", action="store_true", help="every run definition, one summary line each")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--gpu-tflops", type=float, help="replace the assumed H100 rate (TFLOP/s reached)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if not args.all and args.run not in params.run_definitions:
        raise UserError(f"unknown run {args.run!r}; allowed: {', '.join(params.run_definitions)}")
    gemm = measured_gemm_flops() if args.device == "cpu" else None
    startup = measured_startup_seconds()
    where = (f"this CPU (fp32 GEMM {gemm / 1e9:.0f} GFLOP/s measured now)" if gemm else
             f"one H100 (assumed {args.gpu_tflops or GPU_UTILISATION * GPU_PEAK['bfloat16'] / 1e12:.0f} TFLOP/s reached)")
    if args.all:
        print(f"Per run on {where}: the largest stage's host RAM and GPU memory, total disk and time\n")
        print("| run | host RAM | GPU memory | disk | time | fits |\n|---|---|---|---|---|---|")
        for name in params.run_definitions:
            costs = plan_run(args.params, name, args.device, args.gpu_tflops, gemm, startup)
            known = sum(c.seconds for c in costs if c.seconds is not None)
            problems = fits(costs, args.device)
            print(f"| {name} | {max(c.host_bytes for c in costs) / GIB:.1f} GiB | {max(c.gpu_bytes for c in costs) / GIB:.1f} GiB "
                  f"| {sum(c.disk_bytes for c in costs) / GIB:.1f} GiB | {_fmt_seconds(known)} | {'; '.join(problems) or 'yes'} |")
        return
    costs = plan_run(args.params, args.run, args.device, args.gpu_tflops, gemm, startup)
    print(f"Run {args.run} on {where}:\n")
    print(table(costs))
    for line in fits(costs, args.device):
        print(f"does not fit: {line}")


if __name__ == "__main__":
    main()
