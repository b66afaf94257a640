"""A loopback HTTP server for download tests: serves byte strings, counts requests, can misbehave on purpose."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional


@dataclass
class Route:
    """What the server answers for one path.

    Attributes:
        body: Full body; ``Content-Length`` always announces ``len(body)``.
        status: HTTP status code.
        truncate_to: Send only this many bytes, then close the connection (a broken transfer).
        delay_s: Sleep this long after the headers, before the body (to make downloads overlap).
    """

    body: bytes
    status: int = 200
    truncate_to: Optional[int] = None
    delay_s: float = 0.0


class LoopbackServer:
    """``ThreadingHTTPServer`` on ``127.0.0.1`` with a free port, in a daemon thread.

    Use as a context manager (or through the ``loopback_server`` fixture of ``tests/conftest.py``);
    ``hits[path]`` counts GET requests per path (query string dropped, 404s included), ``requests`` lists every
    GET's raw request target (query string kept) in arrival order, ``stop()`` shuts it down early so a test can
    prove that no network access happens afterwards.
    """

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: collections.Counter[str] = collections.Counter()
        self.requests: list[str] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                path = self.path.split("?", 1)[0]
                with owner._lock:
                    owner.hits[path] += 1
                    owner.requests.append(self.path)
                route = owner.routes.get(path)
                if route is None:
                    self.send_error(404, "not found")
                    return
                self.send_response(route.status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                if route.delay_s:
                    time.sleep(route.delay_s)
                body = route.body if route.truncate_to is None else route.body[: route.truncate_to]
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval keeps shutdown() (once per test) from adding half a second.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._running = False

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` (which starts with ``/``)."""
        return self.base_url + path

    def add(self, path: str, body: bytes, **kwargs: object) -> str:
        """Serve ``body`` at ``path`` (see :class:`Route` for options); returns its URL."""
        self.routes[path] = Route(body, **kwargs)  # type: ignore[arg-type]
        return self.url(path)

    @property
    def total_hits(self) -> int:
        """All GET requests received so far."""
        return sum(self.hits.values())

    def start(self) -> LoopbackServer:
        self._thread.start()
        self._running = True
        return self

    def stop(self) -> None:
        """Stop serving and free the port (idempotent)."""
        if self._running:
            self._server.shutdown()
            self._server.server_close()
            self._running = False

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
