"""The pymesos edge of the executor: Mesos events in, status updates out.

Each LAUNCH runs on a worker thread (the pymesos IO thread must never block), and every status
update is a fresh dict (pymesos mutates the dict it sends; reusing one would reuse its uuid).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import threading
import time
import warnings
import urllib.error
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, TypeVar

import pymesos  # imported at module load, on the main thread: it installs a SIGINT handler

from executor import npycodec, timeline
from executor.protocol import (
    BUNDLE_ITEM_INLINE_LIMIT,
    BundlePayload,
    BundleResult,
    ReplicaPayload,
    ResultEnvelope,
    TaskPayload,
    TaskUsage,
    decode_task,
    inline_envelope,
    sha256_hex,
    uploaded_envelope,
)
from executor.runner import KeptAliveDownloads, SandboxCache, TaskError, fetch_inputs, preimport, report_failure
from executor.workers import Batch, PredictionPool

if TYPE_CHECKING:
    from executor.replica import ReplicaHost

log = logging.getLogger("executor")
T = TypeVar("T")


UPLOADS = KeptAliveDownloads(timeout=120)
"""The executor's connections for result uploads, kept alive between them (and apart from the
downloads', which a task's shard fetches use at the same time)."""


def upload_result(url: str, npy: bytes) -> None:
    """PUT a large result to the framework's artifact server, with its checksum."""
    headers = {"Content-Type": "application/octet-stream", "X-Sha256": sha256_hex(npy)}
    try:
        UPLOADS.put(url, npy, headers)
    except urllib.error.HTTPError as error:
        raise TaskError(f"result upload answered HTTP {error.code}") from error


def build_result_data(payload: TaskPayload, output: Any, usage: TaskUsage | None = None) -> bytes:
    """Encode ``output`` as a result envelope, uploading it first if it is too big to inline."""
    npy = npycodec.encode(output)  # np.save's bytes, its header formatted once per shape
    if len(npy) <= payload.inline_limit:
        return inline_envelope(npy, output.shape, usage).to_json()
    upload_result(payload.result_upload_url, npy)
    return uploaded_envelope(npy, output.shape, usage).to_json()


def bundle_item_inline(payload: TaskPayload, output: Any, usage: TaskUsage,
                       inline_left: int) -> ResultEnvelope | tuple[bytes, tuple[int, ...], TaskUsage]:
    """A bundled item's inline result while the bundle's budget (``inline_left`` bytes) lasts;
    else what :func:`upload_envelope` uploads (its ``.npy`` bytes, shape and usage)."""
    npy = npycodec.encode(output)  # np.save's bytes, its header formatted once per shape
    if len(npy) <= min(inline_left, max(payload.inline_limit, BUNDLE_ITEM_INLINE_LIMIT)):
        return inline_envelope(npy, output.shape, usage)
    return npy, output.shape, usage


def upload_envelope(payload: TaskPayload, npy: bytes, shape: tuple[int, ...], usage: TaskUsage) -> ResultEnvelope:
    """Upload a result too large to travel in the status update; its envelope."""
    upload_result(payload.result_upload_url, npy)
    return uploaded_envelope(npy, shape, usage)


def log_bundle(task_id: str, results: BundleResult, started: float, first_batch: float | None, answered: float,
               encoding: float, encoded: float, sent: float, size: int) -> None:
    """One line per bundle on the executor's stderr, its time split (``perf_counter`` seconds):
    until its first items' inputs were here, from then to its last item's answer (and how much
    of it the items computed, as each measured itself), encoding its results, and sending its
    terminal update (a synchronous round trip to the agent).  ``bench/tiny_tasks_bench.py
    --timeline`` reads these lines back (:data:`BUNDLE_LINE`)."""
    first = first_batch if first_batch is not None else answered
    compute = sum(e.usage.seconds for e in results.results.values() if e.usage is not None)
    log.info("bundle %s: %d items; first inputs after %.2f ms; items computed %.2f ms of %.2f ms; results encoded "
             "in %.2f ms (%d bytes); terminal update sent in %.2f ms", task_id,
             len(results.results) + len(results.failures), (first - started) * 1000, compute * 1000,
             (answered - first) * 1000, (encoded - encoding) * 1000, size, (sent - encoded) * 1000)


BUNDLE_LINE = re.compile(r"bundle (\S+): (\d+) items; first inputs after ([\d.]+) ms; items computed ([\d.]+) ms of "
                         r"([\d.]+) ms; results encoded in ([\d.]+) ms \((\d+) bytes\); terminal update sent in "
                         r"([\d.]+) ms")
"""How :func:`log_bundle`'s line reads (for whoever parses a sandbox's stderr)."""


BUNDLE_BATCH = 16
"""A bundle's items are fetched and computed at most this many at a time: a model that predicts in
worker processes gets them in one message, the next batch queued behind it (see
``PredictionPool.compute_stream``), while the next ones' shards still download.  A batch is cut
short where its next item's shard is not here yet (issue 13's profile: a bundle on fresh shards
kept its slot idle until sixteen downloads were done before its first item computed)."""


def submit_or_run(pool: ThreadPoolExecutor, function: Callable[..., T], *args: Any) -> "Future[T]":
    """``pool.submit(function, *args)``; once the pool is shut down (the executor stopping), the
    call runs here and its outcome is the returned future's."""
    try:
        return pool.submit(function, *args)
    except RuntimeError:  # shut down
        done: Future[T] = Future()
        try:
            done.set_result(function(*args))
        except Exception as error:
            done.set_exception(error)
        return done


class EnsembleExecutor(pymesos.Executor):
    """A pymesos ``Executor``: runs the prediction tasks of one model, or of every model on its
    agent, on ``workers`` threads; tasks share loaded models and downloaded shards.  A model
    whose predictions serialise on the GIL predicts in forked worker processes instead
    (``predictions``, see :mod:`executor.workers`; ``mode`` forces one way)."""

    def __init__(self, sandbox: Path, workers: int, mode: str = "auto") -> None:
        self.sandbox = sandbox
        self.cache = SandboxCache(sandbox)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="task")
        self.status_sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="status")
        """Sends a bundle's TASK_RUNNING while its items compute (each update is a synchronous round
        trip to the agent); the bundle's terminal update waits for it, so that they arrive in order."""
        self.uploads = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="upload")
        """Uploads a bundle's large results while its next items compute (an upload is a few ms
        of HTTP, which the item's slot spent idle when it came between two computations)."""
        self.predictions = PredictionPool(workers, self.cache, mode)
        self.killed: set[str] = set()
        self.lock = threading.Lock()
        self.replicas: ReplicaHost | None = None
        """Serving replicas (``executor.replica``, imported with aiohttp by the first one)."""

    # pymesos callbacks (IO thread): return fast, never raise.
    def registered(self, driver: Any, executor_info: Any, framework_info: Any, agent_info: Any) -> None:
        timeline.mark("subscribed")
        log.info("registered executor %s on %s", executor_info.get("executor_id"), agent_info.get("hostname"))

    def reregistered(self, driver: Any, agent_info: Any) -> None:
        log.info("re-registered with agent %s", agent_info.get("hostname"))

    def disconnected(self, driver: Any) -> None:
        log.warning("disconnected from the agent")

    def launchTask(self, driver: Any, task: Any) -> None:  # noqa: N802 (pymesos name)
        timeline.mark("first_launch")
        try:
            self.pool.submit(self._run, driver, task)
        except Exception:  # pool shut down: the executor is going away
            log.exception("could not start task %s", task.get("task_id"))

    def killTask(self, driver: Any, task_id: Any) -> None:  # noqa: N802
        # A running prediction cannot be interrupted safely; report KILLED now and drop its result.
        # A serving replica drains first (it reports TASK_KILLED itself).
        with self.lock:
            self.killed.add(task_id["value"])
            if self.replicas is not None and self.replicas.kill(task_id["value"]):
                return
        self._send(driver, task_id["value"], "TASK_KILLED", message="killed by the framework")

    def frameworkMessage(self, driver: Any, message: Any) -> None:  # noqa: N802
        log.info("framework message ignored")

    def shutdown(self, driver: Any) -> None:
        log.info("shutdown requested")
        if self.replicas is not None:
            self.replicas.shutdown()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.status_sender.shutdown(wait=False)
        self.uploads.shutdown(wait=False, cancel_futures=True)
        self.predictions.close()

    def error(self, driver: Any, message: str) -> None:
        log.error("executor error from the agent: %s", message)

    # Work (worker threads).
    def _run(self, driver: Any, task: Any) -> None:
        task_id = task["task_id"]["value"]
        if self._was_killed(task_id):  # killed while queued behind other tasks: never starts
            return
        # TASK_STARTING while the inputs download and the model loads (not sent when they are
        # already here); TASK_RUNNING once the task computes, so that the framework measures
        # stragglers (and timeouts) from compute start.  Both go on the status thread (each update
        # is a synchronous round trip to the agent, which the download and the computation no
        # longer wait for); the terminal update waits for them, so that they arrive in order.
        sent: list[Future[None]] = []
        try:
            payload = decode_task(pymesos.decode_data(task["data"]))
            if isinstance(payload, ReplicaPayload):
                self._serve(driver, task_id, payload, task)
                return
            first = payload.items[0] if isinstance(payload, BundlePayload) else payload
            if not self.cache.holds(first.model, first.model_file, first.shard):
                sent.append(self._send_soon(driver, task_id, "TASK_STARTING"))
            if isinstance(payload, BundlePayload):
                self._run_bundle(driver, task_id, payload, sent)
                return
            model, shard = fetch_inputs(payload, self.cache)
            if self._was_killed(task_id):
                return
            sent.append(self._send_soon(driver, task_id, "TASK_RUNNING"))
            output, usage = self.predictions.compute(payload, model, shard)
            state, message, data = "TASK_FINISHED", None, build_result_data(payload, output,
                                                                            self._with_mode(payload, usage))
        except Exception as error:  # answer every failure, saying whether the member's own code raised
            failure = report_failure(task_id, error)  # its whole traceback goes to the sandbox's stderr
            state, message, data = "TASK_FAILED", failure.status_message(), failure.to_json()
        wait_futures(sent)  # TASK_STARTING and TASK_RUNNING first (each logs its own failure)
        if self._was_killed(task_id):  # already reported TASK_KILLED: a task has one terminal state
            return
        self._send(driver, task_id, state, message=message, data=data)

    def _serve(self, driver: Any, task_id: str, payload: ReplicaPayload, task: Any) -> None:
        """A long-lived serving replica (``executor.replica``): TASK_STARTING now, TASK_RUNNING
        once its model is loaded and its port listens; it drains when killed."""
        from executor.replica import ReplicaHost

        self._send(driver, task_id, "TASK_STARTING")
        with self.lock:
            if task_id in self.killed:  # killed before it registered: TASK_KILLED was sent
                return
            if self.replicas is None:
                self.replicas = ReplicaHost(self.cache, self.predictions)
            self.replicas.register(task_id, payload, task,
                                   lambda state, message, data: self._send(driver, task_id, state, message, data))
        self.replicas.load(task_id)

    def _run_bundle(self, driver: Any, task_id: str, bundle: BundlePayload, sent: list["Future[None]"]) -> None:
        """Run a bundle's items one after the other (each on its own shard, measured alone) and
        report them all in ONE terminal update, after the updates in ``sent`` (its TASK_STARTING,
        on the status thread); an item's failure is reported for that item only."""
        started = time.perf_counter()
        first_batch: float | None = None
        results: BundleResult = BundleResult()
        inline_left = bundle.inline_limit
        running: Future[None] | None = None
        # The shards download one after the other while the items compute (an item waits only
        # for its own shard; a failed download is reported by the item itself).
        threading.Thread(target=self._prefetch, args=(task_id, bundle), name="prefetch", daemon=True).start()

        def batches() -> Iterator[Batch]:
            """The items' inputs, at most BUNDLE_BATCH at a time (fetched while the batch before
            computes); a batch goes as soon as its next item's shard is still downloading, so that
            items whose inputs are here never wait behind other items' downloads."""
            nonlocal running, first_batch
            items = iter(bundle.items)
            payload = next(items, None)
            while payload is not None:
                if self._was_killed(task_id):
                    return
                fetched: Batch = []
                while payload is not None and len(fetched) < BUNDLE_BATCH:
                    if fetched and not self.cache.holds_inputs(payload):
                        break  # downloading yet: this batch computes meanwhile
                    try:
                        model, shard = fetch_inputs(payload, self.cache)
                        fetched.append((payload, model, shard))
                    except Exception as error:  # this item failed; the bundle's other items go on
                        results.failures[payload.task_id] = report_failure(payload.task_id, error)
                    payload = next(items, None)
                if fetched and running is None:
                    running = self._send_soon(driver, task_id, "TASK_RUNNING")
                if fetched and first_batch is None:
                    first_batch = time.perf_counter()
                if fetched:
                    yield fetched

        uploading: dict[str, Future[ResultEnvelope]] = {}  # item task id: its result's upload
        with closing(self.predictions.compute_stream(batches())) as computed:
            for fetched, outcomes in computed:
                for (payload, _model, _shard), outcome in zip(fetched, outcomes):
                    try:
                        if isinstance(outcome, Exception):
                            raise outcome
                        output, usage = outcome
                        envelope = bundle_item_inline(payload, output, self._with_mode(payload, usage), inline_left)
                        if isinstance(envelope, ResultEnvelope):
                            inline_left -= envelope.nbytes
                            results.results[payload.task_id] = envelope
                            continue
                        # Uploaded while the next items compute; at most a batch's worth waits.
                        waiting = [f for f in uploading.values() if not f.done()]
                        if len(waiting) >= BUNDLE_BATCH:
                            wait_futures(waiting[:1])
                        uploading[payload.task_id] = self._upload_soon(payload, *envelope)
                    except Exception as error:  # this item failed; the bundle's other items go on
                        results.failures[payload.task_id] = report_failure(payload.task_id, error)
        for item_task_id, upload in uploading.items():
            try:
                results.results[item_task_id] = upload.result()
            except Exception as error:  # this item's upload failed; the bundle's other items go on
                results.failures[item_task_id] = report_failure(item_task_id, error)
        answered = time.perf_counter()
        wait_futures(sent + ([running] if running is not None else []))  # TASK_STARTING and TASK_RUNNING first
        if self._was_killed(task_id):
            return
        failed = len(results.failures)
        message = (f"{failed} of {len(bundle.items)} bundled task(s) failed: "
                   f"{next(iter(results.failures.values())).status_message()}") if failed else None
        encoding = time.perf_counter()
        data = results.to_json()
        encoded = time.perf_counter()
        self._send(driver, task_id, "TASK_FINISHED", message=message, data=data)
        log_bundle(task_id, results, started, first_batch, answered, encoding, encoded, time.perf_counter(),
                   len(data))

    def _with_mode(self, payload: TaskPayload, usage: TaskUsage) -> TaskUsage:
        """``usage`` with where this executor's probe put the model (the framework remembers a
        measured ``thread`` for later runs, which then skip the probe)."""
        measured = self.predictions.measured_mode(payload)
        return usage if measured is None else dataclasses.replace(usage, measured_mode=measured)

    def _prefetch(self, task_id: str, bundle: BundlePayload) -> None:
        for payload in bundle.items:
            if self._was_killed(task_id):
                return
            try:
                self.cache.array_file(payload.shard, f"shard {payload.shard_index}")
            except Exception:  # noqa: S110 - the item's own fetch reports it
                pass

    def _upload_soon(self, payload: TaskPayload, npy: bytes, shape: tuple[int, ...],
                     usage: TaskUsage) -> "Future[ResultEnvelope]":
        """:func:`upload_envelope` on an upload thread (or here, if the executor is shutting down)."""
        return submit_or_run(self.uploads, upload_envelope, payload, npy, shape, usage)

    def _send_soon(self, driver: Any, task_id: str, state: str) -> "Future[None]":
        """:meth:`_send` of a task's TASK_STARTING or TASK_RUNNING on the status thread (or here, if
        the executor is shutting down); not sent once the task is killed (TASK_KILLED is its last
        word)."""
        return submit_or_run(self.status_sender, self._send_unless_killed, driver, task_id, state)

    def _send_unless_killed(self, driver: Any, task_id: str, state: str) -> None:
        if not self._was_killed(task_id):
            self._send(driver, task_id, state)

    def _was_killed(self, task_id: str) -> bool:
        with self.lock:
            return task_id in self.killed

    def _send(self, driver: Any, task_id: str, state: str, message: str | None = None,
              data: bytes | None = None) -> None:
        status: dict[str, Any] = {"task_id": {"value": task_id}, "state": state}
        if message:
            status["message"] = message[:4000]
        if data is not None:
            status["data"] = pymesos.encode_data(data)
        try:
            driver.sendStatusUpdate(status)
        except Exception:
            log.exception("could not send %s for %s", state, task_id)


DEFAULT_RECOVERY_TIMEOUT = 15 * 60.0
"""Mesos' default ``--recovery_timeout``: how long a checkpointing executor waits for its agent."""
REGISTRATION_TIMEOUT = 60.0
"""Mesos' default ``--executor_registration_timeout``: a non-checkpointing executor that cannot
reach its agent for this long gives up (once subscribed, it exits as soon as the agent goes)."""


def checkpointing(env: Mapping[str, str]) -> bool:
    """``MESOS_CHECKPOINT`` as Mesos means it: "1" for a checkpointing framework, "0" otherwise
    (pymesos reads any non-empty string, "0" included, as true)."""
    return env.get("MESOS_CHECKPOINT", "").strip().lower() in ("1", "true", "yes")


def reconnect_timeout(env: Mapping[str, str]) -> float:
    """Seconds the executor keeps trying to reach its agent before it gives up and exits:
    ``MESOS_RECOVERY_TIMEOUT`` (e.g. "15mins") when checkpointing, else the registration timeout."""
    if not checkpointing(env):
        return REGISTRATION_TIMEOUT
    value = env.get("MESOS_RECOVERY_TIMEOUT", "").strip()
    if not value:
        return DEFAULT_RECOVERY_TIMEOUT
    try:
        return float(pymesos.utils.parse_duration(value))
    except (AssertionError, ValueError):
        log.warning("MESOS_RECOVERY_TIMEOUT=%r is not a duration; using %.0f s", value, DEFAULT_RECOVERY_TIMEOUT)
        return DEFAULT_RECOVERY_TIMEOUT


def make_driver(executor: pymesos.Executor, env: Mapping[str, str]) -> pymesos.MesosExecutorDriver:
    """A pymesos executor driver whose agent-loss behaviour follows the agent's environment:
    without checkpointing it exits (killing its process group after the grace period) as soon as
    its agent connection breaks; with checkpointing it retries for ``MESOS_RECOVERY_TIMEOUT``."""
    driver = pymesos.MesosExecutorDriver(executor, use_addict=True, timeout=reconnect_timeout(env))
    driver.checkpoint = checkpointing(env)
    return driver


def main() -> int:
    """Entry point of ``python -m executor``, started by a Mesos agent."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Shards are arrays without column names; the framework matched each member's columns to
    # its feature_names_in_ before launching, so scikit-learn's per-call warning is noise here.
    warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)
    started = timeline.process_started()
    if started is not None:
        timeline.mark("process", started)
    timeline.mark("imported")  # pymesos, numpy and the executor's modules (this module's imports)
    preimport()  # scikit-learn's import overlaps the registration and the first task's downloads
    sandbox = Path(os.environ.get("MESOS_SANDBOX") or os.getcwd())
    workers = max(1, int(float(os.environ.get("MESOS_ENSEMBLE_WORKERS", "1"))))
    executor = EnsembleExecutor(sandbox, workers, os.environ.get("MESOS_ENSEMBLE_PREDICT", "auto"))
    driver = make_driver(executor, os.environ)
    try:
        driver.run()
    finally:
        executor.predictions.close()
    return 0
