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
MAX_BODY_BYTES = 16 * 2**20
"""Largest request body read (413 above it). Real Mesos sets no limit; 16 MiB is far above any
call a framework sends (task ``data`` should stay small) and bounds what one client can make the
master buffer."""


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

    body_timeout = 30.0
    """Seconds a client may take to send a request body (a slow or stalled client loses its connection)."""

    def read_body(self) -> bytes:
        """The whole request body, by Content-Length or chunked framing. Raises HTTPError (and the
        connection is closed after the answer): 400 for an invalid length, broken chunking or a body
        shorter than announced, 413 above ``MAX_BODY_BYTES`` (nothing more is read)."""
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        lengths = self.headers.get_all("Content-Length") or []
        if chunked or lengths:
            self.close_connection = True  # set back below once the whole body was read
        self.connection.settimeout(self.body_timeout)
        try:
            if chunked:
                body = self._read_chunked()
            elif not lengths:
                body = b""
            else:
                if len(set(lengths)) != 1 or not lengths[0].strip().isdigit():
                    raise HTTPError(400, "Invalid 'Content-Length' header")
                length = int(lengths[0])
                if length > MAX_BODY_BYTES:
                    raise HTTPError(413, f"Request body larger than {MAX_BODY_BYTES} bytes")
                body = self.rfile.read(length)
                if len(body) != length:
                    raise HTTPError(400, f"Request body shorter than its Content-Length ({len(body)} < {length})")
        except OSError:
            raise HTTPError(400, "Request body not received") from None
        finally:
            self.connection.settimeout(None)
        self.close_connection = False
        return body

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            line = self.rfile.readline(1024)
            text = line.split(b";", 1)[0].strip()
            if not line.endswith(b"\n") or not text or any(c not in b"0123456789abcdefABCDEF" for c in text):
                raise HTTPError(400, "Invalid chunked request body")
            length = int(text, 16)
            if length == 0:
                while True:  # trailers, up to the empty line
                    trailer = self.rfile.readline(1024)
                    if not trailer.endswith(b"\n"):
                        raise HTTPError(400, "Invalid chunked request body")
                    if trailer in (b"\r\n", b"\n"):
                        return b"".join(parts)
            size += length
            if size > MAX_BODY_BYTES:
                raise HTTPError(413, f"Request body larger than {MAX_BODY_BYTES} bytes")
            data = self.rfile.read(length)
            if len(data) != length or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise HTTPError(400, "Invalid chunked request body")
            parts.append(data)

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
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def reply_json(self, status: int, data: Any) -> None:
        self.reply(status, json.dumps(data), JSON)

    def discard_body(self) -> bool:
        """Read (and drop) the body of a request answered without it; False (after answering the
        body's error) when the body itself is invalid."""
        try:
            self.read_body()
        except HTTPError as error:
            self.reply_error(error)
            return False
        return True

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
            call = json.loads(text, parse_constant=_reject_constant)
        except UnicodeDecodeError as exc:
            raise HTTPError(400, f"Failed to parse body into JSON: {exc}") from None
        except (RecursionError, ValueError) as exc:
            if isinstance(exc, json.JSONDecodeError):
                near = exc.doc[exc.pos:].split("\n", 1)[0]
                raise HTTPError(400, f"Failed to parse body into JSON: syntax error at line {exc.lineno} "
                                     f"near: {near[:100]}") from None
            raise HTTPError(400, f"Failed to parse body into JSON: {str(exc)[:100]}") from None
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


def _reject_constant(name: str) -> Any:
    """JSON has no NaN or Infinity (Python's parser would accept them; Mesos' does not)."""
    raise ValueError(f"invalid JSON literal {name}")


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
