"""The running framework's live status: a JSON document and a small HTML page, served over HTTP.

The document is built by a pure function (:func:`status_document`) from a :class:`StatusView`
of the job (tasks by state, per-model progress, agents used, cost so far, recent events), with
every secret the framework holds redacted from it. :class:`StatusServer` is the thin HTTP edge:
``GET /status`` answers the document as JSON, ``GET /`` the page (self-contained, refreshing
itself every two seconds, no external assets). Its address goes into ``FrameworkInfo.webui_url``
(so a Mesos UI links to it) and, written atomically, into the job's state directory
(:func:`write_address`), where ``mesos-ensemble status`` finds it (:func:`read_live`).
"""

from __future__ import annotations

import html
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from framework import atomic

log = logging.getLogger(__name__)

ADDRESS_FILE = "live-status.json"
"""In the job's state directory while it runs: where its status server listens."""

REFRESH_SECONDS = 2
REDACTED = "<redacted>"
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:left;border-bottom:1px solid #ddd}
.bar{display:inline-block;width:12em;height:.8em;background:#eee;margin-right:.5em}
.bar div{height:100%;background:#4a8}.waiting{color:#a60}time{color:#777}
"""
"""The pages' style sheet (the job's page and a deployment's, ``framework.serving.page``)."""


@dataclass(frozen=True)
class StatusView:
    """What the status reports, as values (taken from the running job in one go)."""

    job: str
    state: str
    """starting, running, finished or failed."""
    master: str | None
    framework_id: str | None
    started_at: float
    """Wall-clock time (seconds since the epoch) the run started."""
    now: float
    progress: Mapping[str, Any]
    """The job's counts (``Counts.to_json``)."""
    models: Mapping[str, Mapping[str, Any]]
    """Per model, its counts (``Counts.to_json``)."""
    tasks_by_state: Mapping[str, int]
    agents_used: Sequence[str]
    executors: int
    cost: float
    """The sum of the costs of the offer rounds' plans so far (agents newly used + unit prices)."""
    lower_bound: float
    """The sum of those rounds' lower bounds."""
    waiting: str | None
    events: Sequence[tuple[float, str]] = field(default_factory=tuple)
    """The latest events, (wall-clock time, text), oldest first."""


def status_document(view: StatusView, secrets: Iterable[str | None] = ()) -> dict[str, Any]:
    """The status as one JSON object, with every one of ``secrets`` replaced by ``<redacted>``
    wherever it would appear (an event's text may quote a URL that carries a token)."""
    document: dict[str, Any] = {
        "job": view.job,
        "state": view.state,
        "master": view.master,
        "framework_id": view.framework_id,
        "started_at": round(view.started_at, 3),
        "elapsed_seconds": round(max(0.0, view.now - view.started_at), 3),
        "progress": dict(view.progress),
        "models": {name: dict(counts) for name, counts in view.models.items()},
        "tasks_by_state": dict(sorted(view.tasks_by_state.items())),
        "agents_used": sorted(view.agents_used),
        "executors": view.executors,
        "cost": round(view.cost, 6),
        "lower_bound": round(view.lower_bound, 6),
        "waiting": view.waiting,
        "events": [{"at": round(at, 3), "text": text} for at, text in view.events][::-1],
    }
    return _redact(document, [s for s in secrets if s])


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {_redact(k, secrets): _redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, secrets) for v in value]
    return value


def _bar(done: int, total: int) -> str:
    share = 0.0 if not total else min(1.0, done / total)
    return (f'<div class="bar"><div style="width:{share * 100:.1f}%"></div></div>'
            f"<span>{done}/{total}</span>")


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} s"


def render_html(document: Mapping[str, Any]) -> str:
    """The status page for ``document`` (self-contained; it reloads itself)."""
    e = html.escape
    job = document["progress"]
    rows = "".join(
        f"<tr><td>{e(name)}</td><td>{_bar(m['done'], m['tasks'])}</td><td>{m['rows_done']}/{m['rows']}</td>"
        f"<td>{_rate(m['rows_per_second'])}</td>"
        f"<td>{_seconds(m['eta_seconds'])}</td><td>{m['retries']}</td><td>{m['backups']}</td>"
        f"<td>{e(m['failed'] or '')}</td></tr>"
        for name, m in document["models"].items())
    states = ", ".join(f"{e(k)} {v}" for k, v in document["tasks_by_state"].items()) or "-"
    events = "".join(
        f"<li><time>{e(time.strftime('%H:%M:%S', time.localtime(ev['at'])))}</time> {e(ev['text'])}</li>"
        for ev in document["events"]) or "<li>none yet</li>"
    waiting = f'<p class="waiting">waiting: {e(document["waiting"])}</p>' if document["waiting"] else ""
    refresh = (f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
               if document["state"] in ("starting", "running") else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{refresh}
<title>{e(document['job'])}: {e(document['state'])} - mesos-ensemble</title>
<style>{STYLE}</style></head><body>
<h1>{e(document['job'])} <small>({e(document['state'])})</small></h1>
<p>master {e(str(document['master'] or '-'))}; framework {e(str(document['framework_id'] or '-'))};
running for {_seconds(document['elapsed_seconds'])}</p>
<p>job: {_bar(job['done'], job['tasks'])} tasks; {job['rows_done']}/{job['rows']} rows;
ETA {_seconds(job['eta_seconds'])}; {job['retries']} retries, {job['backups']} backups</p>
{waiting}
<table><tr><th>model</th><th>shards</th><th>rows</th><th>rows/s</th><th>ETA</th><th>retries</th>
<th>backups</th><th>failed</th></tr>{rows}</table>
<p>tasks by state: {states}</p>
<p>agents used: {e(', '.join(document['agents_used']) or '-')}; executors {document['executors']};
cost so far {document['cost']:g} (lower bound {document['lower_bound']:g})</p>
<h2>Recent events</h2><ul>{events}</ul>
<p><a href="status">status as JSON</a></p>
</body></html>
"""


class StatusServer:
    """Serves ``document()`` as JSON at ``/status`` and as a page at ``/`` (``render(document)``:
    a job's page unless told otherwise), in a thread."""

    def __init__(self, document: Callable[[], dict[str, Any]], bind: str = "127.0.0.1", port: int = 0,
                 advertise_host: str | None = None, render: Callable[[Mapping[str, Any]], str] | None = None) -> None:
        self.document = document
        self.render = render or render_html
        self._server = ThreadingHTTPServer((bind, port), self._handler_class())
        self._server.daemon_threads = True
        self.advertise_host = advertise_host or (bind if bind not in ("0.0.0.0", "") else socket.getfqdn())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="status-server", daemon=True)

    @property
    def url(self) -> str:
        """The page's address (``/status`` below it is the JSON)."""
        return f"http://{self.advertise_host}:{self._server.server_address[1]}/"

    def start(self) -> "StatusServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path not in ("/", "/index.html", "/status"):
                    self._send(404, "text/plain; charset=utf-8", b"not found: / (page) or /status (JSON)\n")
                    return
                try:
                    document = server.document()
                except Exception as error:  # the job's state could not be read: say so, stay up
                    log.debug("status document failed", exc_info=True)
                    text = f"status unavailable: {type(error).__name__}\n"
                    self._send(500, "text/plain; charset=utf-8", text.encode())
                    return
                if path == "/status":
                    self._send(200, "application/json", json.dumps(document, indent=1).encode())
                else:
                    self._send(200, "text/html; charset=utf-8", server.render(document).encode())

            def _send(self, code: int, kind: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
                log.debug("status server: " + format, *args)

        return Handler


def write_address(state_dir: Path, url: str, job: str) -> Path:
    """Record, atomically, that ``job`` runs here now and serves its status at ``url``."""
    return atomic.write_text(state_dir / ADDRESS_FILE,
                             json.dumps({"url": url, "job": job, "pid": os.getpid(), "since": time.time()}))


def remove_address(state_dir: Path) -> None:
    (state_dir / ADDRESS_FILE).unlink(missing_ok=True)


def read_live(state_dir: Path, timeout: float = 2.0) -> tuple[str, dict[str, Any]] | None:
    """The live status of the job running from ``state_dir`` (its address and document), or None
    when no run records one or its server does not answer (the run ended or was killed)."""
    try:
        recorded = json.loads((state_dir / ADDRESS_FILE).read_text(encoding="utf-8"))
        url = str(recorded["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/status", timeout=timeout) as response:
            document = json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    if not isinstance(document, dict) or document.get("job") != recorded.get("job"):
        return None
    return url, document


def describe(url: str, document: Mapping[str, Any]) -> str:
    """The live status as the command line prints it."""
    job = document["progress"]
    lines = [f"{document['job']}: {document['state']} (live, from {url})",
             f"  progress: {job['done']}/{job['tasks']} tasks, {job['rows_done']}/{job['rows']} rows"
             + (f", ETA {job['eta_seconds']:.0f} s" if job.get("eta_seconds") is not None else "")
             + f"; {job['retries']} retries, {job['backups']} backups",
             "  tasks by state: " + (", ".join(f"{k} {v}" for k, v in document["tasks_by_state"].items()) or "-")]
    for name, m in document["models"].items():
        lines.append(f"  model {name}: {m['done']}/{m['tasks']}" + (f" failed: {m['failed']}" if m["failed"] else ""))
    lines.append(f"  agents used: {', '.join(document['agents_used']) or '-'}; cost so far {document['cost']:g}")
    if document["waiting"]:
        lines.append(f"  waiting: {document['waiting']}")
    lines.append(f"  framework id: {document['framework_id'] or '-'}; master {document['master'] or '-'}")
    return "\n".join(lines)
