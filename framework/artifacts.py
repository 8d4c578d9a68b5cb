"""The framework's artifact server: hands declared files to the Mesos fetcher and executors,
and receives large results.

Only files and buffers registered by the job are served, under a per-job random token
(``/<token>/files/<name>``); anything else is 404.  Results are PUT to
``/<token>/results/<task_id>`` with an ``X-Sha256`` header, checked, and written atomically.
The token never appears in the server's log (it is replaced by ``<token>``).  What holds no
secret, the executor package (this project's own code), can be served without it
(``/public/<name>``), so that the URLs in an ExecutorInfo, which Mesos shows in
``/master/state`` and its fetcher logs in the sandbox, carry no token.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import shutil
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote

log = logging.getLogger(__name__)


class ArtifactServer:
    """A small HTTP server run by the framework for one job."""

    def __init__(self, results_dir: Path, bind: str = "0.0.0.0", port: int = 0,
                 advertise_host: str | None = None) -> None:
        self.token = secrets.token_urlsafe(24)
        self.results_dir = results_dir
        results_dir.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, Path | tuple[bytes | memoryview, ...]] = {}
        self._public: dict[str, Path] = {}
        self._expected_results: set[str] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((bind, port), self._handler_class())
        self._server.daemon_threads = True
        self.advertise_host = advertise_host or _default_host(bind)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="artifact-server", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.advertise_host}:{self.port}/{self.token}"

    def start(self) -> "ArtifactServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def publish(self, name: str, path: Path) -> str:
        """Serve ``path`` as ``name``; return its URL."""
        with self._lock:
            self._files[name] = path
        return f"{self.base_url}/files/{quote(name)}"

    def withdraw(self, path: Path) -> list[str]:
        """Stop serving ``path`` under every name it was published as; return those names."""
        with self._lock:
            names = [name for name, served in self._files.items() if served == path]
            for name in names:
                del self._files[name]
        return names

    def publish_public(self, name: str, path: Path) -> str:
        """Serve ``path`` as ``name`` without the token (only for files that hold no secret)."""
        with self._lock:
            self._public[name] = path
        return f"http://{self.advertise_host}:{self.port}/public/{quote(name)}"

    def redact(self, text: str) -> str:
        """``text`` with the token replaced by ``<token>``."""
        return text.replace(self.token, "<token>")

    def publish_buffer(self, name: str, parts: tuple[bytes | memoryview, ...]) -> str:
        """Serve the concatenation of ``parts`` (kept in memory, not copied) as ``name``."""
        with self._lock:
            self._files[name] = parts
        return f"{self.base_url}/files/{quote(name)}"

    def expect_result(self, task_id: str) -> str:
        """Accept one upload for ``task_id``; return the URL to PUT it to."""
        with self._lock:
            self._expected_results.add(task_id)
        return f"{self.base_url}/results/{quote(task_id)}"

    def result_path(self, task_id: str) -> Path:
        return self.results_dir / f"{task_id}.npy"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                log.debug("artifact server: %s", server.redact(format % args))

            def setup(self) -> None:
                super().setup()
                # Kept-alive connections: the headers and the body are separate writes, and Nagle's
                # algorithm would hold the body for the client's delayed ACK (40 ms per download).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def handle(self) -> None:
                # Executors keep their connections open between downloads: one that dies (killed
                # with its job) resets it, which is no error of the server's worth a traceback.
                try:
                    super().handle()
                except (ConnectionResetError, BrokenPipeError):
                    self.close_connection = True

            def _route(self) -> tuple[str, str] | None:
                parts = self.path.split("?", 1)[0].split("/", 3)
                if len(parts) == 3 and parts[0] == "" and parts[1] == "public":
                    return "public", unquote(parts[2])
                if len(parts) != 4 or parts[0] != "" or not secrets.compare_digest(parts[1], server.token):
                    return None
                return parts[2], unquote(parts[3])

            def _reply(self, status: HTTPStatus, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                route = self._route()
                source: Path | tuple[bytes | memoryview, ...] | None = None
                with server._lock:
                    if route and route[0] == "files":
                        source = server._files.get(route[1])
                    elif route and route[0] == "public":
                        source = server._public.get(route[1])
                if source is None or (isinstance(source, Path) and not source.is_file()):
                    self._reply(HTTPStatus.NOT_FOUND, b"not found\n")
                    return
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "application/octet-stream")
                size = source.stat().st_size if isinstance(source, Path) else sum(len(p) for p in source)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                if isinstance(source, Path):
                    with source.open("rb") as handle:
                        shutil.copyfileobj(handle, self.wfile)
                else:
                    for part in source:
                        self.wfile.write(part)

            def do_PUT(self) -> None:  # noqa: N802
                route = self._route()
                with server._lock:
                    allowed = route is not None and route[0] == "results" and route[1] in server._expected_results
                if not allowed:
                    self._reply(HTTPStatus.NOT_FOUND, b"not an expected result\n")
                    return
                assert route is not None
                length = int(self.headers.get("Content-Length", "-1"))
                expected = self.headers.get("X-Sha256", "")
                if length < 0 or not expected:
                    self._reply(HTTPStatus.BAD_REQUEST, b"Content-Length and X-Sha256 are required\n")
                    return
                target = server.result_path(route[1])
                temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
                digest = hashlib.sha256()
                with temporary.open("wb") as handle:
                    remaining = length
                    while remaining:
                        block = self.rfile.read(min(remaining, 1 << 20))
                        if not block:
                            break
                        digest.update(block)
                        handle.write(block)
                        remaining -= len(block)
                if remaining or digest.hexdigest() != expected:
                    temporary.unlink(missing_ok=True)
                    self._reply(HTTPStatus.BAD_REQUEST, b"truncated upload or sha256 mismatch\n")
                    return
                temporary.replace(target)
                self._reply(HTTPStatus.CREATED)

        return Handler


def _default_host(bind: str) -> str:
    if bind not in ("0.0.0.0", ""):
        return bind
    return socket.getfqdn() or "127.0.0.1"
