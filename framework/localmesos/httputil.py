"""HTTP plumbing shared by the master and the agents: JSON request handling and event streams."""
from __future__ import annotations

import base64
import json
import queue
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

from . import recordio

JSON = "application/json"


class HTTPError(Exception):
    """An error answer: status code, plain-text body and optional headers."""

    def __init__(self, status: int, message: str = "", headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class EventStream:
    """One subscriber stream; events are queued and written by the handler thread.

    Queuing never blocks the caller, so events can be sent while holding the cluster lock.
    """

    _CLOSE = object()

    def __init__(self, stream_id: str = "", heartbeat: Optional[Callable[[], dict[str, Any]]] = None,
                 heartbeat_interval: float = 15.0) -> None:
        self.stream_id = stream_id
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._heartbeat = heartbeat
        self._heartbeat_interval = heartbeat_interval
        self.closed = threading.Event()
        self.on_close: Optional[Callable[["EventStream"], None]] = None

    def send(self, event: dict[str, Any]) -> None:
        if not self.closed.is_set():
            self._queue.put(event)

    def close(self, delay: float = 0.0) -> None:
        """Finish the stream after the already queued events (optionally after ``delay`` seconds)."""
        if delay > 0:
            timer = threading.Timer(delay, lambda: self._queue.put(self._CLOSE))
            timer.daemon = True
            timer.start()
        else:
            self._queue.put(self._CLOSE)

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        """Write the chunked response until closed or the peer goes away (runs on the handler thread)."""
        handler.close_connection = True
        sock: socket.socket = handler.connection
        next_heartbeat = _now() + self._heartbeat_interval
        try:
            while True:
                timeout = max(0.0, min(0.25, next_heartbeat - _now()))
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    item = None
                if item is self._CLOSE:
                    handler.wfile.write(b"0\r\n\r\n")
                    handler.wfile.flush()
                    break
                if item is None:
                    if _peer_closed(sock):
                        break
                    if self._heartbeat is not None and _now() >= next_heartbeat:
                        # Periodic, like the master's heartbeater (not reset by other events).
                        item = self._heartbeat()
                        next_heartbeat = _now() + self._heartbeat_interval
                    else:
                        continue
                if item is not None:
                    data = recordio.encode_event(item)
                    handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    handler.wfile.flush()
        except (OSError, ValueError):
            pass
        finally:
            self.closed.set()
            if self.on_close is not None:
                self.on_close(self)


def _now() -> float:
    import time
    return time.monotonic()


def _peer_closed(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return data == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class Handler(BaseHTTPRequestHandler):
    """Base request handler: HTTP/1.1 keep-alive, quiet logging, helpers."""

    protocol_version = "HTTP/1.1"
    server_version = "localmesos"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status: int, body: bytes | str = b"", content_type: str = "text/plain; charset=utf-8",
              headers: Optional[dict[str, str]] = None) -> None:
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send_response(status)
        if body:
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def reply_json(self, status: int, data: Any) -> None:
        self.reply(status, json.dumps(data), JSON)

    def reply_error(self, error: HTTPError) -> None:
        self.reply(error.status, error.message, headers=error.headers)

    def start_stream(self, headers: Optional[dict[str, str]] = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", JSON)
        self.send_header("Transfer-Encoding", "chunked")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.flush()

    def parse_call(self, kind: str) -> dict[str, Any]:
        """Check method and content type, parse the JSON body (Mesos' error texts)."""
        body = self.read_body()
        if self.command != "POST":
            raise HTTPError(405, f"Expecting one of {{ 'POST' }}, but received '{self.command}'",
                            {"Allow": "POST"})
        content_type = self.headers.get("Content-Type")
        if content_type is None:
            raise HTTPError(400, "Expecting 'Content-Type' to be present")
        if content_type == "application/x-protobuf":
            raise HTTPError(415, "localmesos only supports 'Content-Type' application/json")
        if content_type != JSON:
            raise HTTPError(415, "Expecting 'Content-Type' of application/json or application/x-protobuf")
        accept = self.headers.get("Accept")
        if accept and not any(a.split(";")[0].strip() in ("*/*", JSON, "application/*")
                              for a in accept.split(",")):
            raise HTTPError(406, "Expecting 'Accept' to allow application/json or application/x-protobuf")
        try:
            text = body.decode("utf-8")
            call = json.loads(text)
        except UnicodeDecodeError as exc:
            raise HTTPError(400, f"Failed to parse body into JSON: {exc}") from None
        except json.JSONDecodeError as exc:
            near = exc.doc[exc.pos:].split("\n", 1)[0]
            raise HTTPError(400, f"Failed to parse body into JSON: syntax error at line {exc.lineno} "
                                 f"near: {near}") from None
        if not isinstance(call, dict):
            raise HTTPError(400, "Failed to convert JSON into Call protobuf: Expecting a JSON object")
        return call

    def basic_auth(self) -> Optional[tuple[str, str]]:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            principal, _, secret = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return principal, secret


class Server(ThreadingHTTPServer):
    """Threading HTTP server whose handler threads never block interpreter exit."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, owner: Any) -> None:
        super().__init__(address, handler)
        self.owner = owner

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Peers that hang up are normal (pymesos closes streams abruptly); report anything else."""
        import sys
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def start(self, name: str) -> threading.Thread:
        # shutdown() waits for the loop to poll: a short interval keeps stopping a cluster quick.
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True)
        thread.start()
        return thread


def b64decode_strict(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("expected a base64 string")
    return base64.b64decode(value.encode("ascii"), validate=True)


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
