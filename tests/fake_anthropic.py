"""A local HTTP server on 127.0.0.1 that speaks the Anthropic Messages API shape (messages and
Message Batches), with a script of error statuses (429, 500) to exercise the client's retries."""

import json
from http.server import BaseHTTPRequestHandler

from loopback import LoopbackServer, send_json


class FakeAnthropic(LoopbackServer):
    """Speaks the Messages API shape; replies from a script of statuses, then 200s."""

    def __init__(self, script=()):
        self.script = list(script)
        self.requests = []
        self.batches = {}
        super().__init__(self._handler())

    @property
    def url(self):
        return self.root

    @staticmethod
    def message(body, i=0):
        prompt = body["messages"][0]["content"]
        text = "Yes" if "Answer Yes or No" in prompt else f"explanation {len(prompt)}"
        return {"id": f"msg_{i}", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 100, "output_tokens": 7, "cache_creation_input_tokens": 20,
                          "cache_read_input_tokens": 50}}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload, headers=(), raw=None):
                send_json(self, status, payload, headers, raw)

            def _batch(self, bid):
                return {"id": bid, "type": "message_batch", "processing_status": "ended",
                        "request_counts": {"processing": 0, "succeeded": len(fake.batches[bid]), "errored": 0,
                                           "canceled": 0, "expired": 0},
                        "created_at": "2026-11-22T00:00:00Z", "expires_at": "2026-11-23T00:00:00Z",
                        "ended_at": "2026-11-22T00:01:00Z", "cancel_initiated_at": None, "archived_at": None,
                        "results_url": f"{fake.url}/v1/messages/batches/{bid}/results"}

            def do_GET(self):
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": None})
                parts = self.path.split("/")
                bid = parts[4]
                if self.path.endswith("/results"):
                    lines = [json.dumps({"custom_id": cid, "result": {"type": "succeeded", "message": fake.message(body)}})
                             for cid, body in fake.batches[bid]]
                    return self._send(200, None, raw=("\n".join(lines) + "\n").encode())
                return self._send(200, self._batch(bid))

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if fake.script:
                    status = fake.script.pop(0)
                    kind = "rate_limit_error" if status == 429 else "api_error"
                    return self._send(status, {"type": "error", "error": {"type": kind, "message": "try later"}},
                                      headers=[("retry-after", "0")] if status == 429 else [])
                if self.path.startswith("/v1/messages/batches"):
                    bid = f"batch_{len(fake.batches)}"
                    fake.batches[bid] = [(r["custom_id"], r["params"]) for r in body["requests"]]
                    return self._send(200, self._batch(bid))
                return self._send(200, fake.message(body, len(fake.requests)))

        return Handler
