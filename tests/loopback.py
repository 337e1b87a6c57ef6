"""A JSON server on 127.0.0.1 in a thread: what the fake API servers of the tests share."""

import json
import threading
from http.server import ThreadingHTTPServer


class LoopbackServer:
    """Serves ``handler`` (a BaseHTTPRequestHandler class) while the ``with`` block runs; afterwards
    its port refuses connections (an unreachable server, not a silent one)."""

    def __init__(self, handler):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def root(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def send_json(handler, status: int, payload, headers=(), raw: bytes | None = None) -> None:
    """Answer ``handler``'s request with ``payload`` as JSON (or ``raw`` bytes), ``headers`` added."""
    data = raw if raw is not None else json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    for k, v in headers:
        handler.send_header(k, v)
    handler.send_header("content-length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
