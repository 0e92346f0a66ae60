"""The base of the fake model servers that tests and benchmarks start: replies with a body, logs nothing."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler


class QuietHandler(BaseHTTPRequestHandler):
    """``http.server`` handler with reply helpers and no request log on stderr."""

    def send_body(self, status: int, data: bytes, content_type: str | None = None) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, status: int, body) -> None:
        self.send_body(status, json.dumps(body).encode(), "application/json")

    def log_message(self, *args):
        pass
