"""``/metrics`` over HTTP, for a scraper (``kq metrics --listen``, ``kq serve --metrics``).

The standard library's threading HTTP server, in a daemon thread: each
scrape calls ``render()`` for a fresh body, one scrape at a time (a snapshot
is cheap, but two at once would only race each other for the same disk).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .metrics import CONTENT_TYPE


class MetricsServer:
    """Serves ``render()`` at ``/metrics`` on ``host:port`` (port 0: a free one, see ``port``)."""

    def __init__(self, host: str, port: int, render: Callable[[], bytes]):
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
                path = self.path.split("?", 1)[0]
                if path not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics is here")
                    return
                if path == "/":
                    body, kind = b'<html><body><a href="/metrics">/metrics</a></body></html>\n', "text/html"
                else:
                    try:
                        with lock:
                            body, kind = render(), CONTENT_TYPE
                    except Exception as exc:  # a scrape that fails says why; the server goes on
                        self.send_error(500, f"{type(exc).__name__}: {exc}")
                        return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
                pass  # a scrape every few seconds is not news

        family = ThreadingHTTPServer.address_family
        if ":" in host:
            import socket

            family = socket.AF_INET6

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        self._server = Server((host, port), Handler)
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="kq-metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}/metrics"
