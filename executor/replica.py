"""A serving replica: one loaded model behind an HTTP server, inside the executor (issue 15).

A replica task (:class:`executor.protocol.ReplicaPayload`) loads its model once, through the
executor's :class:`~executor.runner.SandboxCache` (downloaded, sha256-checked, the skops
allow-list applied, exactly as for a batch task), decides once where its predictions run
(threads, or the executor's forked :class:`~executor.workers.PredictionPool` workers for a model
whose predictions hold the GIL), and then answers on its port until it is killed:

* ``POST /v1/predict``: the body is an ``.npy`` array (float64, 2-D, the model's columns in
  order; read with ``allow_pickle=False``); the answer is the ``.npy`` of
  ``getattr(model, output)(X)`` with an ``X-Compute-Seconds`` header.  400 (JSON ``{"error"}``,
  one line) for a body that is not such an array, 413 for more than ``max_batch_rows`` rows,
  500 (JSON ``{"error", "kind"}``, ``kind`` from :class:`~executor.protocol.TaskFailure`:
  ``member_error`` when the model raised), 503 while draining.
* ``GET /v1/health``: 200 ``{"model", "sha256", "task_id", "ready": true, "in_flight", ...}``,
  503 (``"ready": false, "draining": true``) from the moment a kill arrives.

The server is aiohttp on an asyncio loop of its own, on a thread of its own (HTTP/1.1
keep-alive, concurrent requests); predictions run off the loop on a thread pool as big as the
task's cpus.  A kill drains: health turns 503 at once, new predictions get 503, the ones in
flight finish (up to the task's kill grace period, 10 s by default), then the server closes its
port and the task is reported TASK_KILLED.  Nothing here knows Mesos: the executor's edge
(``executor.main``) hands each replica a ``send(state, message, data)`` callable.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
from aiohttp import web

from executor import npycodec
from executor.protocol import RemoteFile, ReplicaPayload, ReplicaReady, TaskPayload
from executor.runner import MemberError, SandboxCache, TaskError, describe_failure, report_failure
from executor.workers import Mode, PredictionPool

log = logging.getLogger("executor.replica")

Send = Callable[[str, "str | None", "bytes | None"], None]
"""How a replica reports its task's state: ``send(state, message, data)``."""

DEFAULT_KILL_GRACE = 10.0
"""Seconds a killed replica waits for its requests in flight when the task names no grace period."""
SHUTDOWN_GRACE = 2.0
"""At executor shutdown, the most a replica waits for its requests in flight (the agent kills the
executor's process group after its own shutdown grace period, 5 s by default)."""
PROBE_FLOATS = 4_000_000
"""The synthetic rows a replica probes its model's threading on hold at most this many numbers."""
NPY = "application/x-npy"
START_PHASES = ("executor_start", "fetch", "load", "probe", "warm_up", "listen")
"""The steps of a replica's start that its TASK_RUNNING update times (:class:`ReplicaReady`
``phases``, seconds): ``executor_start``, from the executor process's start to this task's
arrival (only for the first replica of a fresh executor: interpreter, imports, subscription);
``fetch``, the model file downloaded and its sha256 checked (0 when the sandbox has it);
``load``, the model unpickled (scikit-learn imported on an executor's first load);
``probe``, where its predictions run decided (0 when known already); ``warm_up``, one call;
``listen``, the HTTP server bound."""


class BadRequest(Exception):
    """A request body that is not what ``POST /v1/predict`` takes (one line saying why)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def read_rows(body: bytes, n_features: int | None, max_rows: int, model: str, input_format: str = "float64"
              ) -> np.ndarray:
    """The rows of a predict request: an ``.npy`` float64 2-D array with the model's number of
    columns and 1..``max_rows`` rows (native byte order), or for a text member (``input_format``
    ``text``) a 1-D unicode array, one document per row; :class:`BadRequest` otherwise."""
    if not body:
        raise BadRequest("empty body: expected an .npy array (float64, 2-D)")
    try:
        rows = npycodec.decode(body, npycodec.read_array)
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise BadRequest("body is an object (pickled) array: expected float64 numbers, "
                             "read with allow_pickle=False") from error
        raise BadRequest(f"body is not an .npy array: {error}") from error
    except Exception as error:  # numpy raises several types for a malformed header
        raise BadRequest(f"body is not an .npy array: {type(error).__name__}: {error}") from error
    if input_format == "text":
        if rows.dtype.kind != "U" or rows.ndim != 1:
            raise BadRequest(f"array has dtype {rows.dtype} and shape {list(rows.shape)}: model {model} takes text, "
                             "a 1-D unicode array (one document per row)")
        if rows.shape[0] == 0:
            raise BadRequest("array has no rows")
        if rows.shape[0] > max_rows:
            raise BadRequest(f"array has {rows.shape[0]} rows: this replica takes at most {max_rows} "
                             "per request (max_batch_rows)", status=413)
        return rows
    if rows.dtype.kind != "f" or rows.dtype.itemsize != 8:
        raise BadRequest(f"array dtype is {rows.dtype}: expected float64")
    if rows.ndim != 2:
        raise BadRequest(f"array has shape {list(rows.shape)}: expected 2-D (rows, columns)")
    if rows.shape[0] == 0:
        raise BadRequest("array has no rows")
    if n_features is not None and rows.shape[1] != n_features:
        raise BadRequest(f"array has {rows.shape[1]} columns: model {model} takes {n_features}")
    if rows.shape[0] > max_rows:
        raise BadRequest(f"array has {rows.shape[0]} rows: this replica takes at most {max_rows} "
                         "per request (max_batch_rows)", status=413)
    return rows.astype(np.float64, copy=False)


def output_npy(output: np.ndarray, what: str) -> bytes:
    """The ``.npy`` bytes of a model's output; labels held as Python strings travel as a numpy
    string array (an object array could only travel pickled)."""
    if output.dtype == object:
        if all(isinstance(value, str) for value in output.flat):
            output = output.astype(np.str_)
        else:
            raise MemberError(f"{what} returned an object array, which cannot be sent without pickle")
    return npycodec.encode(output)


def task_cpus(task: Mapping[str, Any]) -> float:
    """The cpus a TaskInfo asks for (0 when it names none)."""
    return sum(float(r.get("scalar", {}).get("value", 0.0)) for r in task.get("resources", ()) or ()
               if r.get("name") == "cpus")


def kill_grace(task: Mapping[str, Any]) -> float:
    """Seconds a killed replica may drain: the TaskInfo's ``kill_policy.grace_period``, else
    :data:`DEFAULT_KILL_GRACE`."""
    nanoseconds = ((task.get("kill_policy") or {}).get("grace_period") or {}).get("nanoseconds")
    try:
        return max(0.0, int(nanoseconds) / 1e9) if nanoseconds is not None else DEFAULT_KILL_GRACE
    except (TypeError, ValueError):
        return DEFAULT_KILL_GRACE


class Replica:
    """One loaded model served over HTTP on ``payload.host:payload.port``."""

    def __init__(self, task_id: str, payload: ReplicaPayload, model: Any, predictions: PredictionPool,
                 threads: int) -> None:
        self.task_id, self.payload, self.model, self.predictions = task_id, payload, model, predictions
        n_features = getattr(model, "n_features_in_", None) if payload.input_format != "text" else None
        self.n_features = int(n_features) if isinstance(n_features, (int, np.integer)) else None
        # The per-request payload the prediction pool (and its workers) run: no URL (the token
        # stays in the executor), the model's sandbox file and checksum as its key.
        self.request = TaskPayload(
            task_id=task_id, operation="predict", model_name=payload.model, model=RemoteFile("", payload.sha256),
            model_file=payload.model_file, method=payload.output, shard=RemoteFile("", ""), shard_index=0,
            result_upload_url="", model_format=payload.format, trusted_types=list(payload.trusted_types),
            input_format=payload.input_format)
        self.request_json = self.request.to_json()
        self.threads = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix=f"replica-{payload.model}")
        self.mode: Mode = "thread"
        self.port = 0
        self.draining = False
        self.in_flight = 0
        self.abandoned = False
        """A drain ran out of grace with predictions still computing: they are not waited for."""
        self.served = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._idle: asyncio.Event | None = None

    # Before serving.
    def check_output(self) -> None:
        """MemberError (the task fails as a member error) when the model has no ``output`` method."""
        if not callable(getattr(self.model, self.payload.output, None)):
            raise MemberError(f"model {self.payload.model} ({type(self.model).__name__}) has no method "
                              f"{self.payload.output}")

    def warm_up(self) -> None:
        """One call on a row of zeros, so that the first request does not pay for what the model
        sets up on its first call (lazy imports, caches); a model that raises on it is left alone."""
        if self.n_features is None or self.mode != "thread":
            return
        try:
            getattr(self.model, self.payload.output)(np.zeros((1, self.n_features)))
        except Exception:  # noqa: S110 - its requests will say so
            pass

    def choose_mode(self) -> Mode:
        """Where this model's predictions run (see ``PredictionPool.model_mode``): as decided
        already in this executor (another replica of the model probed it), else as the payload
        says an earlier replica measured (``predict_mode``), else probed on synthetic rows of the
        model's width (a text model is not probed: it goes to worker processes, as a batch text
        member does, see ``workers.TEXT_MODE``); a numeric
        model of unknown width predicts on threads unless the executor forces processes
        (``MESOS_ENSEMBLE_PREDICT``)."""
        known = self.predictions.known_mode(self.request)
        if known is None and self.payload.predict_mode in ("thread", "process"):
            known = self.predictions.adopt_mode(self.request, "process" if self.payload.predict_mode == "process"
                                                else "thread")
        if known is not None:
            self.mode = known
        elif self.predictions.forced != "auto":
            self.mode = self.predictions.model_mode(self.request, self.model, np.empty((0, 0)))
        elif self.payload.input_format == "text":
            self.mode = self.predictions.model_mode(self.request, self.model, np.empty(0, dtype=object))
        elif self.n_features is not None and self.n_features > 0:
            rows = max(1, min(200_000, PROBE_FLOATS // self.n_features))
            sample = np.random.default_rng(0).standard_normal((rows, self.n_features))
            self.mode = self.predictions.model_mode(self.request, self.model, sample)
        return self.mode

    def start(self) -> int:
        """Listen on the payload's host and port and return the port bound; TaskError when the
        port cannot be bound (taken, not allowed, no such address)."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"replica-http-{self.payload.model}", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self.port = asyncio.run_coroutine_threadsafe(self._listen(), loop).result()
        except OSError as error:
            self._close_loop()
            raise TaskError(f"replica of {self.payload.model} cannot listen on {self.payload.host}:"
                            f"{self.payload.port}: {error.strerror or error}") from error
        except BaseException:
            self._close_loop()
            raise
        return self.port

    async def _listen(self) -> int:
        width = self.n_features if self.n_features is not None else 1 << 15
        app = web.Application(client_max_size=max(1 << 20, self.payload.max_batch_rows * width * 8 + (1 << 16)))
        app.router.add_get("/v1/health", self._health)
        app.router.add_post("/v1/predict", self._predict)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)  # drained before it closes
        await runner.setup()
        try:
            await web.TCPSite(runner, self.payload.host, self.payload.port, backlog=1024).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._idle = runner, asyncio.Event()
        self._idle.set()
        return int(runner.addresses[0][1])

    # HTTP handlers (the replica's loop).
    async def _health(self, request: web.Request) -> web.StreamResponse:
        body = {"model": self.payload.model, "sha256": self.payload.sha256, "task_id": self.task_id,
                "ready": not self.draining, "in_flight": self.in_flight, "served": self.served,
                "predict_mode": self.mode, "output": self.payload.output}
        if self.draining:
            body["draining"] = True
        return web.json_response(body, status=503 if self.draining else 200)

    async def _predict(self, request: web.Request) -> web.StreamResponse:
        if self.draining:
            return web.json_response({"error": f"replica of {self.payload.model} is draining"}, status=503)
        assert self._idle is not None
        self.in_flight += 1
        self._idle.clear()
        try:
            response = await self._answer(request)
            # Written out here, so that a drain waiting for this request waits for its answer too.
            await response.prepare(request)
            await response.write_eof()
            return response
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
            rows = read_rows(body, self.n_features, self.payload.max_batch_rows, self.payload.model,
                             self.payload.input_format)
        except web.HTTPRequestEntityTooLarge as error:
            return web.json_response({"error": f"body too large: {error.text}"}, status=413)
        except BadRequest as error:
            return web.json_response({"error": str(error)}, status=error.status)
        try:
            npy, seconds = await asyncio.get_running_loop().run_in_executor(self.threads, self._compute, rows)
        except Exception as error:  # the model raised, or its worker process died
            failure = describe_failure(error)
            log.warning("replica %s of %s: %s", self.task_id, self.payload.model, failure.status_message())
            return web.json_response({"error": " ".join(failure.message.split()), "kind": failure.kind}, status=500)
        self.served += 1
        return web.Response(body=npy, content_type=NPY, headers={"X-Compute-Seconds": f"{seconds:.6f}"})

    def _compute(self, rows: np.ndarray) -> tuple[bytes, float]:
        """The model's output for ``rows`` as ``.npy`` bytes, and the seconds the prediction took
        (a worker thread of this replica)."""
        started = time.perf_counter()
        output, _usage = self.predictions.compute_rows(self.request, self.model, rows, self.request_json)
        seconds = time.perf_counter() - started
        return output_npy(output, f"model {self.payload.model}.{self.payload.output}"), seconds

    # Stopping.
    def begin_drain(self) -> None:
        """From now on health answers 503 and new predictions are refused with 503."""
        self.draining = True

    def stop(self, grace: float) -> None:
        """Drain (requests in flight finish, for up to ``grace`` seconds), close the port, end
        the loop's thread.  Any thread but the replica's loop."""
        self.begin_drain()
        loop = self._loop
        if loop is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._drain(grace), loop).result(grace + 30)
            except Exception:
                log.exception("replica %s of %s did not close cleanly", self.task_id, self.payload.model)
        self._close_loop()
        # Nothing in flight (the usual end of a drain): wait for the prediction threads to end, so
        # none outlives the replica; a prediction still running past the grace is not waited for.
        self.threads.shutdown(wait=not (self.in_flight or self.abandoned), cancel_futures=True)

    async def _drain(self, grace: float) -> None:
        if self._idle is not None and self.in_flight:
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except asyncio.TimeoutError:
                self.abandoned = True  # closing the port cancels their handlers, not their threads
                log.warning("replica %s of %s: %d request(s) still in flight after %.1f s; closing",
                            self.task_id, self.payload.model, self.in_flight, grace)
        if self._runner is not None:
            await self._runner.cleanup()

    def _close_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/stat", "rb") as stat_file:
            started_ticks = int(stat_file.read().rsplit(b")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


@dataclass
class _Entry:
    """A replica task the executor runs: loading, serving, or draining."""

    task_id: str
    payload: ReplicaPayload
    send: Send
    threads: int
    grace: float
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds each step of the start took (:data:`START_PHASES`), filled as it loads."""
    replica: Replica | None = None
    terminal: bool = False
    drainer: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class ReplicaHost:
    """The replica tasks of one executor, by task id (models shared through its sandbox cache,
    GIL-bound predictions through its prediction pool).  Every task gets exactly one terminal
    update: TASK_FAILED (could not load or listen) or TASK_KILLED (killed, or executor shutdown)."""

    def __init__(self, cache: SandboxCache, predictions: PredictionPool) -> None:
        self.cache, self.predictions = cache, predictions
        self._entries: dict[str, _Entry] = {}
        self._ended: set[str] = set()  # replica tasks that reported their terminal state
        self._lock = threading.Lock()
        self._fresh = True
        """No replica registered yet: the first one's start includes the executor's own."""

    def register(self, task_id: str, payload: ReplicaPayload, task: Mapping[str, Any], send: Send) -> None:
        """Take a replica task (not loaded yet: see :meth:`load`); a kill from now on is this host's."""
        threads = max(1, math.ceil(task_cpus(task) - 1e-9))
        entry = _Entry(task_id, payload, send, threads, kill_grace(task))
        with self._lock:
            fresh, self._fresh = self._fresh, False
            self._entries[task_id] = entry
        age = process_age() if fresh else None
        if age is not None:
            entry.phases["executor_start"] = round(age, 3)

    def owns(self, task_id: str) -> bool:
        with self._lock:
            return task_id in self._entries

    def load(self, task_id: str) -> None:
        """Load the registered replica's model, bind its port and report TASK_RUNNING (with a
        :class:`ReplicaReady`), or TASK_FAILED; blocks while the model downloads and loads."""
        with self._lock:
            entry = self._entries.get(task_id)
        if entry is None:
            return
        payload, replica, phases = entry.payload, None, entry.phases
        clock = [time.perf_counter()]

        def timed(phase: str) -> None:
            now = time.perf_counter()
            phases[phase] = round(now - clock[0], 4)
            clock[0] = now
        try:
            self.cache.file(payload.remote, payload.model_file, f"model file {payload.model_file}")
            timed("fetch")
            model = self.cache.model(payload.remote, payload.model_file, payload.model, payload.format,
                                     payload.trusted_types)
            timed("load")
            replica = Replica(task_id, payload, model, self.predictions, entry.threads)
            replica.check_output()
            mode = replica.choose_mode()
            timed("probe")
            replica.warm_up()
            timed("warm_up")
            with entry.lock:
                if entry.terminal:  # killed while loading: reported already, never serves
                    return
            port = replica.start()
            timed("listen")
        except Exception as error:  # the model cannot be loaded or the port cannot be bound
            failure = report_failure(task_id, error)
            self._forget(task_id)
            with entry.lock:
                if not entry.terminal:
                    entry.terminal = True
                    entry.send("TASK_FAILED", failure.status_message(), failure.to_json())
            return
        with entry.lock:
            if not entry.terminal:
                entry.replica = replica
                log.info("replica %s of %s serves on port %d (%s predictions, %d threads; started in %s)",
                         task_id, payload.model, port, mode, entry.threads,
                         ", ".join(f"{k} {v:.3f} s" for k, v in phases.items()))
                entry.send("TASK_RUNNING", None, ReplicaReady(port, os.getpid(), mode, dict(phases)).to_json())
                return
        replica.stop(0.0)  # killed while it bound its port

    def kill(self, task_id: str, grace: float | None = None) -> bool:
        """Begin draining ``task_id`` (health answers 503 at once; TASK_KILLED once its requests
        in flight are done, within its grace period); False when it is not a replica of this host."""
        with self._lock:
            entry = self._entries.get(task_id)
            if entry is None:
                return task_id in self._ended  # a second kill: reported already
        with entry.lock:
            if entry.terminal or entry.drainer is not None:
                return True
            if entry.replica is None:  # still loading: nothing to drain
                entry.terminal = True
                self._forget(task_id)
                entry.send("TASK_KILLED", "killed by the framework while loading its model", None)
                return True
            entry.replica.begin_drain()
            entry.drainer = threading.Thread(target=self._drain, args=(entry, entry.grace if grace is None else grace),
                                             name=f"drain-{task_id}", daemon=True)
            entry.drainer.start()
        return True

    def _drain(self, entry: _Entry, grace: float) -> None:
        assert entry.replica is not None
        entry.replica.stop(grace)
        self._forget(entry.task_id)
        with entry.lock:
            if not entry.terminal:
                entry.terminal = True
                entry.send("TASK_KILLED", f"replica drained ({entry.replica.served} requests served)", None)

    def _forget(self, task_id: str) -> None:
        with self._lock:
            self._entries.pop(task_id, None)
            self._ended.add(task_id)

    def shutdown(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop every replica (each drains for at most ``grace`` seconds, all at once) and wait
        until their ports are closed."""
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            self.kill(entry.task_id, min(grace, entry.grace))
        for entry in entries:
            drainer = entry.drainer
            if drainer is not None:
                drainer.join(grace + 15)

    def ports(self) -> dict[str, int]:
        """The port each serving replica listens on, by task id."""
        with self._lock:
            entries = list(self._entries.values())
        return {e.task_id: e.replica.port for e in entries if e.replica is not None and not e.terminal}

