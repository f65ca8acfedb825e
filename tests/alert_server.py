"""Test helpers: an HTTP server of the test's own on loopback that records every request, and a dead one."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Recorded:
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def params(self) -> dict[str, str]:
        """The query, decoded (each key once)."""
        return {k: v[0] for k, v in urllib.parse.parse_qs(self.query, strict_parsing=True).items()}


class RecordingServer:
    """Answers each messenger's API as the real one does when all is well; ``fail[path] = n`` answers the
    next n requests to path with HTTP 500, ``answers[path]`` replaces the JSON answered there."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.fail: dict[str, int] = {}
        self.answers: dict[str, dict] = {}
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                path, _, query = self.path.partition("?")
                with owner.lock:
                    owner.requests.append(Recorded(path, query, dict(self.headers), body))
                    failing = owner.fail.get(path, 0)
                    if failing:
                        owner.fail[path] = failing - 1
                if failing:
                    self.send_error(500, "told to fail")
                    return
                answer = owner.answers.get(path) or (
                    {"ok": True, "result": {}} if "/sendMessage" in path else {"errcode": 0, "errmsg": "ok"})
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> RecordingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "requests") -> list[Recorded]:
        """The recorded requests matching ``predicate``, once there is at least one."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [r for r in self.requests if predicate(r)]
            if found:
                return found
            assert time.monotonic() < deadline, f"no {what} within {timeout}s; got {self.requests}"
            time.sleep(0.05)


class DeadEndpoint:
    """A port that takes connections and never answers: every request hangs until the client's timeout."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/dead"

    def __enter__(self) -> DeadEndpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()
