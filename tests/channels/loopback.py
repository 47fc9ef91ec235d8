"""A tiny HTTP server on 127.0.0.1 for provider tests: each test gives it a handler that plays the provider —
checking what the provider checks and answering with the provider's documented shapes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Request:
    method: str
    path: str
    raw_query: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self):
        return json.loads(self.body)


Reply = tuple[int, dict | list | bytes | str] | tuple[int, dict | list | bytes | str, dict[str, str]]


class Loopback:
    def __init__(self, handler: Callable[[Request], Reply]) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self.delay = 0.0
        outer = self

        class H(BaseHTTPRequestHandler):
            def _any(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                parts = urlsplit(self.path)
                req = Request(self.command, parts.path, parts.query, dict(parse_qsl(parts.query)),
                              {k.lower(): v for k, v in self.headers.items()}, body)
                outer.requests.append(req)
                if outer.delay:
                    time.sleep(outer.delay)
                reply = outer.handler(req)
                status, payload = reply[0], reply[1]
                extra = reply[2] if len(reply) == 3 else {}
                if isinstance(payload, (dict, list)):
                    raw, ctype = json.dumps(payload, ensure_ascii=False).encode(), "application/json"
                elif isinstance(payload, str):
                    raw, ctype = payload.encode(), "text/plain; charset=utf-8"
                else:
                    raw, ctype = payload, "application/octet-stream"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(raw)))
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            do_GET = do_POST = _any

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Loopback:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
