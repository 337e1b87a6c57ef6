"""The ``openai`` autointerp backend: any server that speaks the OpenAI API (vLLM, llama.cpp's
server, Ollama, OpenRouter, OpenAI), through the real ``openai`` client.

What each request becomes (:func:`openai_params`, also the response cache's key):

- an explanation: chat completions, greedy (temperature 0);
- a Yes/No detection question (``want_logprobs``): chat completions of one token with
  ``logprobs`` and ``top_logprobs``; log P(Yes) and log P(No) are read at the first answer token
  as delphi's classifier scorers read P("1") and P("0"). Every listed spelling of the word counts
  ("Yes", " yes", ...: their probabilities add). A word outside the listed alternatives is given
  the smallest listed log-probability, an upper bound on its own (stored as ``yes_bound`` /
  ``no_bound``). A response without log-probabilities leaves them out (the answer alone counts,
  as with the Messages API);
- a likelihood request (``continuation``): legacy completions of prompt + continuation with
  ``echo: true`` and ``logprobs``, which returns the log-probability of every prompt token
  (vLLM). The continuation's tokens are those whose text offset lies at or after the prompt's
  end; their mean log-probability is the score, as the local judge computes it. Servers that
  refuse ``echo`` (llama.cpp's server) or return no log-probabilities fail with one line naming
  the refusal and the fix.

The key comes from ``OPENAI_API_KEY`` only and is never written anywhere; a server on this
machine needs none. Retries (429, 5xx, timeouts, with ``retry-after``) are the client's own.
"""

from __future__ import annotations

import math
import os

from darkmatter.errors import UserError
from darkmatter.interp.llm import Backend, Request, Response

#: Alternatives asked for at the first answer token (the most servers allow: OpenAI caps it at 20).
TOP_LOGPROBS = 20


def openai_params(model: str, req: Request) -> dict:
    """The request ``req`` becomes on an OpenAI-compatible server: its endpoint and body."""
    if req.continuation is not None:
        return {"endpoint": "completions", "model": model, "prompt": req.prompt + req.continuation,
                "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1, "prompt_chars": len(req.prompt)}
    body = {"endpoint": "chat", "model": model, "temperature": 0, "max_tokens": 1 if req.want_logprobs else req.max_tokens,
            "messages": [{"role": "system", "content": req.system}, {"role": "user", "content": req.prompt}]}
    if req.want_logprobs:
        body |= {"logprobs": True, "top_logprobs": TOP_LOGPROBS}
    return body


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def yes_no_logprobs(top: list) -> dict:
    """log P(Yes), log P(No) from the first answer token's alternatives (``[{token, logprob}]``)."""
    floor = min(alt["logprob"] for alt in top)
    out = {}
    for word in ("yes", "no"):
        spellings = [alt["logprob"] for alt in top if alt["token"].strip().lower() == word]
        out[word] = _logsumexp(spellings) if spellings else floor
        out[f"{word}_bound"] = not spellings
    return out


def continuation_logprob(logprobs: dict | None, prompt_chars: int, end_chars: int, unit: str, url: str) -> float:
    """Mean log-probability of the echoed tokens that start in [prompt_chars, end_chars)."""
    if not logprobs or not logprobs.get("token_logprobs") or not logprobs.get("text_offset"):
        raise UserError(f"openai backend: the server at {url} returned no log-probabilities of the echoed prompt "
                        f"(unit {unit}); scorer 'likelihood' needs completions with echo and logprobs (vLLM); "
                        "use autointerp.scorer: yes_no on this server")
    values = [lp for lp, at in zip(logprobs["token_logprobs"], logprobs["text_offset"])
              if prompt_chars <= at < end_chars and lp is not None]
    if not values:
        raise UserError(f"openai backend: no echoed token of unit {unit}'s continuation came back from {url}; "
                        "the server's echo does not cover the prompt")
    return sum(values) / len(values)


class OpenAIBackend(Backend):
    """The real ``openai`` client against ``base_url`` (None: api.openai.com)."""

    name = "openai"

    def __init__(self, model: str, base_url: str | None = None, max_retries: int = 5, timeout: float = 120.0):
        super().__init__(model)
        try:
            import openai
        except ImportError:  # pragma: no cover - it is a pinned dependency
            raise UserError("the openai package is missing; run scripts/setup.sh") from None
        key = os.environ.get("OPENAI_API_KEY")
        if not key and base_url is None:
            raise UserError("autointerp.backend is 'openai' without a base_url, but OPENAI_API_KEY is not set; set it, "
                            "or set autointerp.base_url to your server (a local server needs no key)")
        self.url = base_url or "https://api.openai.com/v1"
        # A local server ignores the key, but the client insists on one.
        self.client = openai.OpenAI(base_url=base_url, api_key=key or "no-key", max_retries=max_retries, timeout=timeout)
        self._openai = openai

    def payload(self, req: Request) -> dict:
        return openai_params(self.model, req)

    def complete(self, req: Request) -> Response:
        params = dict(self.payload(req))
        endpoint, prompt_chars = params.pop("endpoint"), params.pop("prompt_chars", None)
        try:
            if endpoint == "completions":
                result = self.client.completions.create(**params)
            else:
                result = self.client.chat.completions.create(**params)
        except self._openai.APIConnectionError:
            raise UserError(f"openai backend: cannot reach {self.url} (unit {req.unit}); start the server "
                            "or fix autointerp.base_url") from None
        except self._openai.APIStatusError as exc:
            # The server's own words, first line only; the key is never in them.
            body = exc.body if isinstance(exc.body, dict) else {}
            message = str(body.get("message") or exc.message).strip().splitlines()[0][:300]
            raise UserError(f"openai backend: {self.url} refused unit {req.unit}'s {endpoint} request after retries: "
                            f"{exc.status_code} {message}") from None
        u = result.usage
        usage = {"input_tokens": getattr(u, "prompt_tokens", 0) or 0, "output_tokens": getattr(u, "completion_tokens", 0) or 0}
        choice = result.choices[0]
        if endpoint == "completions":
            logprobs = choice.logprobs.model_dump() if choice.logprobs is not None else None
            score = continuation_logprob(logprobs, prompt_chars, prompt_chars + len(req.continuation), req.unit, self.url)
            return Response("", {"continuation": score}, usage | {"output_tokens": 0})
        text = choice.message.content or ""
        content = choice.logprobs.content if req.want_logprobs and choice.logprobs is not None else None
        if not content or not content[0].top_logprobs:
            return Response(text, None, usage)
        top = [{"token": alt.token, "logprob": alt.logprob} for alt in content[0].top_logprobs]
        return Response(text, yes_no_logprobs(top), usage)
