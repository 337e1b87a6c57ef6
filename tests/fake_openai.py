"""A local HTTP server on 127.0.0.1 that speaks the OpenAI API's wire format for chat completions
(with logprobs / top_logprobs) and legacy completions (with echo and logprobs, as vLLM answers),
with a script of error statuses (429, 500) and the refusals of servers that lack a feature.

Its answers are a deterministic function of the request, so a test can plant what comes back:
- a prompt's tokens are its whitespace-led words (``\\s*\\S+``); each has log-probability
  -0.1 × its length without the space (:func:`word_logprob`), the first one None, as vLLM echoes;
- a Yes/No question is answered "Yes" when the prompt contains ``YES_MARK``: log P(Yes) = -0.1,
  log P(No) = -2.5; otherwise the reverse; the top alternatives also hold " yes" at -4.0.
"""

import json
import re
from http.server import BaseHTTPRequestHandler

from loopback import LoopbackServer, send_json

YES_MARK = "<<yes>>"


def word_logprob(word: str) -> float:
    return -0.1 * len(word.strip())


class FakeOpenAI(LoopbackServer):
    """``script``: statuses answered first, in order. ``logprobs``: whether responses carry them.
    ``echo``: whether legacy completions accept ``echo`` (llama.cpp's server does not)."""

    def __init__(self, script=(), logprobs=True, echo=True):
        self.script, self.logprobs, self.echo = list(script), logprobs, echo
        self.requests = []
        super().__init__(self._handler())

    @property
    def url(self):
        return f"{self.root}/v1"

    def chat(self, body):
        prompt = body["messages"][-1]["content"]
        yes = YES_MARK in prompt
        asked = body.get("logprobs")
        text = ("Yes" if yes else "No") if asked else f"explanation {len(prompt)}"
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
        if asked and self.logprobs:
            first, second = (("Yes", -0.1), ("No", -2.5)) if yes else (("No", -0.1), ("Yes", -2.5))
            top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in (first, second, (" yes", -4.0))]
            choice["logprobs"] = {"content": [{"token": first[0], "logprob": first[1], "bytes": None,
                                               "top_logprobs": top[: body.get("top_logprobs", 0)]}]}
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [choice], "usage": {"prompt_tokens": 50, "completion_tokens": 1, "total_tokens": 51}}

    def completion(self, body):
        words = [(m.group(), m.start()) for m in re.finditer(r"\s*\S+", body["prompt"])] + [(" gen", len(body["prompt"]))]
        logprobs = {"tokens": [w for w, _ in words], "text_offset": [at for _, at in words],
                    "token_logprobs": [None] + [word_logprob(w) for w, _ in words[1:]],
                    "top_logprobs": [None] + [{w: word_logprob(w)} for w, _ in words[1:]]}
        choice = {"index": 0, "text": body["prompt"] + " gen", "finish_reason": "length",
                  "logprobs": logprobs if self.logprobs else None}
        return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"], "choices": [choice],
                "usage": {"prompt_tokens": len(words) - 1, "completion_tokens": 1, "total_tokens": len(words)}}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload, headers=()):
                send_json(self, status, payload, headers)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if fake.script:
                    status = fake.script.pop(0)
                    return self._send(status, {"error": {"message": "try later", "type": "server_error", "code": status}},
                                      headers=[("retry-after", "0")] if status == 429 else [])
                if self.path.endswith("/chat/completions"):
                    return self._send(200, fake.chat(body))
                if self.path.endswith("/completions"):
                    if body.get("echo") and not fake.echo:
                        return self._send(400, {"error": {"message": "'echo' is not supported", "type": "invalid_request_error",
                                                          "code": 400}})
                    return self._send(200, fake.completion(body))
                return self._send(404, {"error": {"message": f"no route {self.path}", "code": 404}})

        return Handler
