"""How a prediction runs in the executor: on the task's own thread, or in a forked worker process.

Threads share one interpreter, so a member whose prediction holds the GIL (a Pipeline whose
first step is a Python-level ``FunctionTransformer``, a ``TfidfVectorizer`` tokenising text)
uses one core whatever the agent has, while tree, histogram-boosting and BLAS predictions
release it and run in parallel on threads.  :class:`PredictionPool` measures this once per
model (:func:`thread_speedup`: a probe prediction alone, then two at once on two threads; how
much sooner the pair ends than twice the one says how many cores threads get) and runs the
predictions of a model whose threads serialise in worker processes.  On an agent whose cores
are busy with other work, threads gain nothing either and the model goes to processes: that
costs a copy of each output through a pipe and the workers' private memory, never exactness.
A text member (``input_format = "text"``) is not probed: it goes to processes (:data:`TEXT_MODE`).

Workers are forked after the model is loaded, so the loaded model is shared copy-on-write
(models are code: a worker holds only what the executor loaded from its allow-listed, checked
files; nothing is unpickled in a worker and nothing crosses the pipe but the task payload, the
shard's path and the output).  A worker runs one task at a time, at most ``size`` exist (the
executor's task slots), and a worker forked before a model was loaded is replaced by a fresh
fork when that model needs it and the pool is full.  Workers never outlive the executor: each
dies with its parent (``PR_SET_PDEATHSIG``), is in the executor's process group (which pymesos
kills on shutdown), and :meth:`PredictionPool.close` kills and reaps them.  A worker that dies
mid-task fails only that task, as an infrastructure failure (the framework retries it).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import stat
import threading
import time
import traceback
from collections import OrderedDict, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Pipe
from typing import Any, Generator, Iterable, Literal

import numpy as np

from executor import timeline
from executor.protocol import TaskFailure, TaskPayload, TaskUsage
from executor.runner import (MAPPED_ARRAYS, SandboxCache, TaskError, compute_measured, describe_failure, model_columns,
                             read_npy)
from executor.textshard import map_text_shard

log = logging.getLogger("executor.workers")

Mode = Literal["thread", "process"]
MODES = ("auto", "thread", "process")

PARALLEL_ENOUGH = 1.4
"""Two probe predictions on two threads at once that end less than this many times sooner than
one after the other serialise (on the GIL): the model's predictions go to worker processes."""

PROBE_SECONDS = 0.02
"""How long one probe prediction should take (its rows are scaled from warm calls, see
:func:`probe_rows`).  The probe's 9 calls (3 for a model clearly parallel on threads, see
:data:`CLEARLY_PARALLEL`) cost each model up to about 10x this in CPU before its first
task computes.  Until 2026-12-02 the rows were scaled from the model's first (cold) call, so the
calls meant to take 0.08 s took 1-5 ms, and on a loaded machine the ratio of two such wall times
sent GIL-bound models to threads (3.5x "faster" on two threads); with warm scaling and the
speedup capped by the pair's measured concurrency (:func:`thread_speedup`), 20 ms calls are
long enough, at a quarter of the CPU that 80 ms calls would now cost."""

PROBE_MIN_ROWS = 64

WHERE: dict[Mode, str] = {"thread": "threads", "process": "worker processes"}
"""A mode as the executor's log says it."""
TEXT_MODE: Mode = "process"
"""Where a text member (``input_format = "text"``) predicts, unprobed: its vectorizer tokenises
in Python, holding the GIL for most of the call, so two threads never beat one (the text suite's
four members probed at 0.3-1.0x), and the probe cost every text model about 0.25 s of wall, one
model at a time, while the executor's other task slot waited for it (1.5 s at the text suite's
start on the shared 2-core machine).  Processes lose nothing that matters to such a model: its
output (a row of probabilities per document) is small beside the tokenising."""


RELEASES_THE_GIL = frozenset({
    "sklearn.ensemble._forest.RandomForestClassifier", "sklearn.ensemble._forest.RandomForestRegressor",
    "sklearn.ensemble._forest.ExtraTreesClassifier", "sklearn.ensemble._forest.ExtraTreesRegressor",
    "sklearn.tree._classes.DecisionTreeClassifier", "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
    "sklearn.neighbors._classification.KNeighborsClassifier", "sklearn.neighbors._regression.KNeighborsRegressor",
    "sklearn.linear_model._logistic.LogisticRegression",
})
"""scikit-learn estimators (by their exact class: a subclass may predict in Python) whose
predictions run in compiled code that releases the GIL (tree traversal, histogram boosting's
OpenMP loop, k-neighbours' distance reductions, BLAS) with little Python per call: their
predictions run on threads without a probe.  Issue 13: the mixed benchmark's four members
(logistic regression, random forest, histogram boosting, k-neighbours) each probed at their first
task, 0.1-0.3 s of a task slot with the probe's second thread on the other core, and under the
job's own load (the other slot computing) the probes measured them serial and sent all four to
worker processes, so no verdict was kept for the next run either; two threads in one process ran
the same tasks at 1.04-1.14x the physical limit.  A class that moves in a later scikit-learn is
simply probed again."""
DERIVED_MIN_ROWS = 2_000
""":func:`derived_mode` speaks only for calls of at least this many rows: with fewer, a call's own
Python (input checks, the estimator's per-call set-up) holds the GIL for most of it, whatever the
compiled part does.  ``bench/tiny_tasks_bench.py``'s explicit job (250-row items) took 14.02 s on
threads without a probe and 9.62 s with the probe deciding (2026-12-02 18:38 and 19:01 UTC); its
6,250-row items, and the mixed benchmark's, ran on threads at joblib's speed or better."""


def derived_mode(model: Any, rows: int) -> Mode | None:
    """``thread`` for a model whose exact class is in :data:`RELEASES_THE_GIL`, called on at least
    :data:`DERIVED_MIN_ROWS` rows at a time; else None (probe it)."""
    kind = type(model)
    releases = f"{kind.__module__}.{kind.__qualname__}" in RELEASES_THE_GIL
    return "thread" if releases and rows >= DERIVED_MIN_ROWS else None


class WorkerDied(TaskError):
    """A worker process died while running a task (killed, out of memory, crashed): an
    infrastructure failure of that task alone."""


class RemoteTaskError(TaskError):
    """A task failed inside a worker process: its failure as the worker described it (the
    traceback, which cannot cross the pipe as an object, travels as text)."""

    def __init__(self, failure: TaskFailure, text: str) -> None:
        super().__init__(failure.message)
        self.failure, self.text = failure, text


CLEARLY_PARALLEL = PARALLEL_ENOUGH * 1.25
"""A probe whose first rounds already measure threads this much faster stops there (see
:func:`thread_speedup`): the remaining rounds could only lower the ratio by a fifth to change the
verdict, and calls that hold the GIL can never show it (their concurrency caps it near 1)."""


def thread_speedup(function: Any, features: np.ndarray, repeats: int = 3, clear: float | None = None) -> float:
    """How many times sooner two calls of ``function`` on ``features`` end on two threads at
    once than one after the other (about 1 when the calls hold the GIL, about 2 when they
    release it and the machine has a second core free); the best of ``repeats`` of each, since
    other work on the machine only ever slows a call down.

    Capped by the pair's concurrency (both threads' CPU seconds over the pair's wall seconds,
    the best of the repeats): calls that hold the GIL never use more than about one core
    between them, whereas the ratio of two wall times taken at different moments can be
    anything when other work preempts one of them (a GIL-bound model measured 3.5x on a loaded
    machine, and went to threads).

    ``clear``: stop after the first round whose measure reaches it (a model that clearly
    releases the GIL needs no more rounds: each model's first task waits for its probe, one
    model probing at a time, and the mixed bench's four probes were about 0.9 s of its start's
    wall at load 6, 2026-12-02)."""
    alone = pair = float("inf")
    concurrency = 0.0
    for _ in range(repeats):  # interleaved, so that a burst of other work slows both alike
        alone = min(alone, _concurrent_seconds(function, features, 1)[0])
        wall, cpu = _concurrent_seconds(function, features, 2)
        pair = min(pair, wall)
        concurrency = max(concurrency, cpu / wall if wall > 0 else 2.0)
        if clear is not None and min(2 * alone / pair if pair > 0 else 2.0, concurrency) >= clear:
            break
    return min(2 * alone / pair if pair > 0 else 2.0, concurrency)


def _concurrent_seconds(function: Any, features: np.ndarray, threads: int) -> tuple[float, float]:
    """Wall seconds of ``threads`` threads calling ``function`` on ``features`` at once (from the
    first call's start to the last one's end, timed on the calling threads themselves: the thread
    that starts them may get the GIL back only after a GIL-bound call has run for a switch
    interval, 5 ms), and the CPU seconds the calling threads used in all."""
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []
    spans: list[tuple[float, float, float]] = []  # per call: wall start, wall end, CPU seconds

    def call() -> None:
        barrier.wait()
        started, cpu_started = time.perf_counter(), time.thread_time()
        try:
            function(features)
        except BaseException as error:  # the real task will raise it again, as a member error
            errors.append(error)
        spans.append((started, time.perf_counter(), time.thread_time() - cpu_started))

    workers = [threading.Thread(target=call, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return max(end for _, end, _ in spans) - min(start for start, _, _ in spans), sum(cpu for _, _, cpu in spans)


def probe_rows(function: Any, features: np.ndarray) -> np.ndarray:
    """A slice of ``features`` on which one call of ``function`` takes about
    :data:`PROBE_SECONDS`: a first call of :data:`PROBE_MIN_ROWS` rows warms the model up (its
    first call can take 10x the next: the probe's calls were scaled from it and took 2 ms instead
    of 80, too short to measure threads on), then calls of 4x as many rows (the faster of two
    each) until one takes a quarter of :data:`PROBE_SECONDS`, from which the rows are scaled."""
    function(np.ascontiguousarray(features[:PROBE_MIN_ROWS]))
    rows = PROBE_MIN_ROWS
    while True:
        sample = np.ascontiguousarray(features[:rows])
        seconds = float("inf")
        for _ in range(2):  # the faster of two: other work on the machine only slows a call down
            started = time.perf_counter()
            function(sample)
            seconds = min(seconds, max(time.perf_counter() - started, 1e-5))
        if seconds >= PROBE_SECONDS / 4 or rows >= len(features):
            break
        rows *= 4
    rows = int(len(sample) * PROBE_SECONDS / seconds)
    return np.ascontiguousarray(features[:max(PROBE_MIN_ROWS, min(rows, len(features)))])


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this process when the thread that forked it ends
    (``PR_SET_PDEATHSIG``; the pool forks on a thread that lives as long as the process)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def _close_sockets(keep: int) -> None:
    """Close every socket a fresh worker inherited but ``keep``: the executor's connection to its
    agent (whose end the agent must see when the executor goes) and other workers' pipes."""
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        fd = int(name)
        try:
            if fd != keep and stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)
        except OSError:
            pass


def _serve(conn: Connection, models: dict[tuple[str, str], Any], cache: SandboxCache) -> None:
    """A worker's loop: a task (model key, payload, shard path or rows) in, ``("ok", output, usage)`` or
    ``("failed", failure, traceback text)`` out, until the pipe closes."""
    last: tuple[Any, TaskPayload] | None = None  # a replica's requests repeat one payload
    mapped: OrderedDict[str, np.ndarray] = OrderedDict()  # a shard's items come one after another
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if isinstance(message, list):  # a bundle's tasks: computed one after the other, one reply
            conn.send([_serve_one(request, models, cache, mapped, None)[0] for request in message])
            continue
        reply, last = _serve_one(message, models, cache, mapped, last)
        conn.send(reply)


def _serve_one(request: tuple[tuple[str, str], bytes, Any], models: dict[tuple[str, str], Any], cache: SandboxCache,
               mapped: "OrderedDict[str, np.ndarray]",
               last: tuple[Any, TaskPayload] | None) -> tuple[tuple[Any, ...], tuple[Any, TaskPayload] | None]:
    """One task in a worker: ``("ok", output, usage)`` or ``("failed", failure, traceback text)``."""
    key, payload_json, shard_path = request
    try:
        if last is None or last[0] != payload_json:
            last = (payload_json, TaskPayload.from_json(payload_json))
        payload = last[1]
        # A batch task's shard is a file the worker maps; a replica's request rows come inline.
        shard = (_mapped(mapped, shard_path, payload.input_format == "text") if isinstance(shard_path, str)
                 else shard_path)
        output, usage = compute_measured(payload, models[key], shard, cache)
        return ("ok", output, usage), last
    except Exception as error:
        return ("failed", describe_failure(error), "".join(traceback.format_exception(error))), last


def _mapped(mapped: "OrderedDict[str, np.ndarray]", path: str, text: bool = False) -> np.ndarray:
    """The shard file ``path`` mapped (``text``: a text shard, as its bytes; a small shard is read
    instead, see :func:`~executor.runner.read_npy`), kept for the next tasks on it (the last
    :data:`~executor.runner.MAPPED_ARRAYS`): a sandbox's shard files are named by their sha256 and
    never change, and mapping one per task was a visible part of a small task's cost."""
    shard = mapped.get(path)
    if shard is None:
        shard = mapped[path] = map_text_shard(path) if text else read_npy(path)
        while len(mapped) > MAPPED_ARRAYS:
            mapped.popitem(last=False)
    else:
        mapped.move_to_end(path)
    return shard


Batch = list[tuple[TaskPayload, Any, np.ndarray]]
"""Tasks of one bundle with their fetched inputs: (payload, model, shard)."""
Outcome = tuple[np.ndarray, TaskUsage] | Exception
"""A task's output and usage, or why it failed."""


@dataclass
class Worker:
    pid: int
    conn: Connection
    models: frozenset[tuple[str, str]]
    busy: bool = field(default=False)
    _closing: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def close_connection(self) -> None:
        """Close the pipe to the worker, once: the pool's ``close`` and a task thread that saw
        the worker die may both get here, and closing a descriptor twice could close another
        file that reused its number."""
        with self._closing:
            if not self.conn.closed:
                self.conn.close()


class PredictionPool:
    """Runs each task's computation on the calling thread or in a worker process, per model
    (``mode``: "auto" measures, "thread" and "process" force one way; ``size``: the most
    workers at once, the executor's task slots)."""

    def __init__(self, size: int, cache: SandboxCache, mode: str = "auto") -> None:
        if mode not in MODES:
            raise ValueError(f"prediction mode {mode!r}: expected one of {', '.join(MODES)}")
        self.size, self.cache, self.forced = max(1, size), cache, mode
        self.modes: dict[tuple[str, str], Mode] = {}
        self.measured: dict[tuple[str, str], float] = {}
        """Per model: how much two probe threads gained over one (see :func:`thread_speedup`)."""
        self._workers: list[Worker] = []
        self._free = threading.Condition()
        self._probing: dict[tuple[str, str], threading.Lock] = {}
        self._one_probe = threading.Lock()
        """One model probes at a time: two probes at once (four threads) would each see the other's
        threads as contention and send both models to processes."""
        self._closed = False
        self._forker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fork")

    # The one call the executor makes.
    def compute(self, payload: TaskPayload, model: Any, shard: np.ndarray) -> tuple[np.ndarray, TaskUsage]:
        """The task's output and usage, computed where its model's predictions run best."""
        if self.mode(payload, model, shard) == "thread":
            return compute_measured(payload, model, shard, self.cache)
        assert isinstance(shard, np.memmap)  # see mode
        return self._in_worker(payload, shard)

    def compute_many(self, tasks: list[tuple[TaskPayload, Any, np.ndarray]]
                     ) -> list[tuple[np.ndarray, TaskUsage] | Exception]:
        """Several tasks of one bundle: each one's output and usage, or its exception, in order.
        Tasks whose model predicts in worker processes go to ONE worker in one message (it
        computes them back to back and answers once): a round trip through the pipe per task
        (two wake-ups of two processes) was most of a small task's overhead on a busy machine."""
        outcomes: list[tuple[np.ndarray, TaskUsage] | Exception | None] = [None] * len(tasks)
        batches: dict[tuple[str, str], list[int]] = defaultdict(list)
        for index, (payload, model, shard) in enumerate(tasks):
            try:
                if self.mode(payload, model, shard) == "thread":
                    outcomes[index] = compute_measured(payload, model, shard, self.cache)
                else:
                    batches[(payload.model_file, payload.model.sha256)].append(index)
            except Exception as error:  # this task failed; the others go on
                outcomes[index] = error
        for key, indices in batches.items():
            if len(indices) == 1:
                payload, _model, shard = tasks[indices[0]]
                try:
                    outcomes[indices[0]] = self._in_worker(payload, shard)
                except Exception as error:
                    outcomes[indices[0]] = error
                continue
            try:
                batch = self._in_worker_batch(key, [tasks[i] for i in indices])
            except Exception as error:  # no worker (the executor is shutting down): each of them fails
                batch = [error] * len(indices)
            for index, outcome in zip(indices, batch):
                outcomes[index] = outcome
        return [outcome if outcome is not None else TaskError("not computed") for outcome in outcomes]

    def compute_stream(self, batches: Iterable[Batch]) -> Generator[tuple[Batch, list[Outcome]], None, None]:
        """:meth:`compute_many` over a bundle's consecutive batches: each batch with its outcomes,
        in order.  A batch of one model's items predicting in worker processes is sent to its
        worker BEFORE the previous batch's answer is read, so the worker computes the next batch
        while the caller encodes this one's results and fetches the batch after: it never waits
        for the executor between batches (issue 13's profile: a worker idled a process wake-up
        per batch).  At most one batch waits at the worker (requests are a few KB, far below a
        pipe's buffer).  If the worker dies, the items it held (the batch computing and the one
        waiting) fail as :class:`WorkerDied`; later batches go to another worker."""
        worker: Worker | None = None
        worker_key: tuple[str, str] | None = None
        held: deque[Batch] = deque()  # sent to ``worker``, not answered yet, oldest first
        try:
            for batch in batches:
                key = self._worker_key(batch)
                if worker is not None and key != worker_key:
                    yield from self._answers(worker, held, keep=0)
                    self._let_go(worker)
                    worker = None
                if key is None:
                    yield batch, self.compute_many(batch)
                    continue
                if worker is None:
                    worker, worker_key = self._checkout(key), key
                held.append(batch)
                try:
                    worker.conn.send(self._requests(key, batch))
                except (EOFError, OSError) as error:  # it died on the batch before
                    yield from self._held_fail(worker, held, error)
                    worker = None
                    continue
                yield from self._answers(worker, held, keep=1)
                if worker.conn.closed:  # it died (reaped by ``_answers``)
                    worker = None
            if worker is not None:
                yield from self._answers(worker, held, keep=0)
                self._let_go(worker)
                worker = None
        finally:  # the caller stopped early (its task was killed): the worker is returned idle
            if worker is not None:
                self._answers(worker, held, keep=0)
                self._let_go(worker)

    def _worker_key(self, batch: Batch) -> tuple[str, str] | None:
        """The model's key when every task of ``batch`` predicts in worker processes with one model."""
        keys = set()
        try:
            for payload, model, shard in batch:
                if self.mode(payload, model, shard) != "process":
                    return None
                keys.add((payload.model_file, payload.model.sha256))
        except Exception:  # noqa: BLE001 - compute_many reports each task's own failure
            return None
        return keys.pop() if len(keys) == 1 else None

    @staticmethod
    def _requests(key: tuple[str, str], batch: Batch) -> list[tuple[tuple[str, str], bytes, Any]]:
        return [(key, payload.to_json(), str(shard.filename) if isinstance(shard, np.memmap) else shard)
                for payload, _model, shard in batch]

    def _answers(self, worker: Worker, held: "deque[Batch]", keep: int) -> list[tuple[Batch, list[Outcome]]]:
        """The worker's answers to the oldest held batches until ``keep`` are left; if it died,
        every held batch fails and the worker is reaped (its connection closed)."""
        answered: list[tuple[Batch, list[Outcome]]] = []
        while len(held) > keep and not worker.conn.closed:
            try:
                replies = worker.conn.recv()
            except (EOFError, OSError) as error:
                return answered + self._held_fail(worker, held, error)
            batch = held.popleft()
            answered.append((batch, [(reply[1], reply[2]) if reply[0] == "ok" else RemoteTaskError(reply[1], reply[2])
                                     for reply in replies]))
        return answered

    def _held_fail(self, worker: Worker, held: "deque[Batch]",
                   error: BaseException) -> list[tuple[Batch, list[Outcome]]]:
        """The held batches of a worker that died, each task failed; the worker reaped."""
        status = self._reap(worker)
        failed: list[tuple[Batch, list[Outcome]]] = []
        for batch in held:
            outcomes: list[Outcome] = []
            for payload, _model, _shard in batch:
                failure = WorkerDied(f"prediction worker {worker.pid} of model {payload.model_name} died ({status}) "
                                     "while running the task")
                failure.__cause__ = error
                outcomes.append(failure)
            failed.append((batch, outcomes))
        held.clear()
        return failed

    def _let_go(self, worker: Worker) -> None:
        if not worker.conn.closed:
            self._checkin(worker)

    def mode(self, payload: TaskPayload, model: Any, shard: np.ndarray) -> Mode:
        """Where ``payload``'s model predicts: decided once per model (cross-validation fits and
        in-memory shards always run on threads)."""
        if payload.operation != "predict" or not isinstance(shard, np.memmap) or shard.filename is None:
            return "thread"
        return self.model_mode(payload, model, shard)

    def model_mode(self, payload: TaskPayload, model: Any, sample: np.ndarray) -> Mode:
        """Where ``payload``'s model predicts, decided once per model (probed on ``sample``'s
        rows) unless the executor forces one way."""
        if self.forced != "auto":
            return "process" if self.forced == "process" else "thread"
        if payload.predict_mode == "thread":  # an earlier run's probe measured it: no probe here
            return self.adopt_mode(payload, "thread", "as an earlier run's probe measured")
        key = (payload.model_file, payload.model.sha256)
        with self._mode_lock(key):
            if key not in self.modes:
                unprobed = self._without_probe(payload, model, len(sample))
                if unprobed is not None:  # decided without waiting for another model's probe
                    self.modes[key] = unprobed
                    return unprobed
                with self._one_probe:
                    self.modes[key] = self._choose(key, payload, model, sample)
            return self.modes[key]

    def measured_mode(self, payload: TaskPayload) -> Mode | None:
        """Where this executor's probe put ``payload``'s model (None: it was not probed here)."""
        key = (payload.model_file, payload.model.sha256)
        with self._free:
            return self.modes.get(key) if key in self.measured else None

    def _mode_lock(self, key: tuple[str, str]) -> threading.Lock:
        """The lock deciding one model's mode: one probe or adoption per model at once."""
        with self._free:
            return self._probing.setdefault(key, threading.Lock())

    def known_mode(self, payload: TaskPayload) -> Mode | None:
        """Where ``payload``'s model predicts, when that is decided already (forced by the
        executor, probed, or taken from an earlier measurement: :meth:`adopt_mode`); else None."""
        if self.forced != "auto":
            return "process" if self.forced == "process" else "thread"
        with self._free:
            return self.modes.get((payload.model_file, payload.model.sha256))

    def adopt_mode(self, payload: TaskPayload, measured: Mode,
                   source: str = "as an earlier replica measured") -> Mode:
        """Take the mode an earlier probe of the same model file found (another replica's, on
        another executor, or an earlier run's: ``source`` says which, for the log), instead of
        probing here; the executor's own rule still comes first
        (one task slot or one core: threads, which lose nothing there; a forced mode).  A mode
        decided here already stays.  Returns the mode the model's predictions now take."""
        if self.forced != "auto":
            return "process" if self.forced == "process" else "thread"
        key = (payload.model_file, payload.model.sha256)
        with self._mode_lock(key):
            if key not in self.modes:
                chosen: Mode = "thread" if self.size < 2 or cores() < 2 else measured
                self.modes[key] = chosen
                log.info("model %s: predictions run in %s, %s (not probed here)",
                         payload.model_name, WHERE[chosen], source)
            return self.modes[key]

    def compute_rows(self, payload: TaskPayload, model: Any, rows: np.ndarray,
                     payload_json: bytes | None = None) -> tuple[np.ndarray, TaskUsage]:
        """A serving replica's request: ``rows`` in memory, predicted where :meth:`model_mode`
        (decided when the replica loaded its model) put the model; in a worker process the rows
        travel through the pipe (with ``payload_json``, ``payload.to_json()`` made once by the
        replica rather than on every request)."""
        key = (payload.model_file, payload.model.sha256)
        if self.forced == "process" or (self.forced == "auto" and self.modes.get(key) == "process"):
            return self._in_worker(payload, rows, payload_json)
        return compute_measured(payload, model, rows, self.cache)

    def _without_probe(self, payload: TaskPayload, model: Any, rows: int) -> Mode | None:
        """Where ``payload``'s model predicts when that needs no probe: one task slot or one core
        (threads lose nothing), a text member (:data:`TEXT_MODE`), a class known to release the
        GIL called on ``rows`` rows at a time (:func:`derived_mode`); else None."""
        if self.size < 2 or cores() < 2:
            return "thread"
        if payload.input_format == "text":
            log.info("model %s: a text member, not probed: predictions run in worker processes", payload.model_name)
            return TEXT_MODE
        derived = derived_mode(model, rows)
        if derived is not None:
            log.info("model %s: a %s, whose predictions release the GIL, not probed: predictions run in %s",
                     payload.model_name, type(model).__name__, WHERE[derived])
        return derived

    def _choose(self, key: tuple[str, str], payload: TaskPayload, model: Any, shard: np.ndarray) -> Mode:
        """The probe's verdict (called when :meth:`_without_probe` has none)."""
        function = getattr(model, payload.method, None)
        if function is None:
            return "thread"  # the task fails as a member error on its thread
        timeline.mark(f"probe:{payload.model_name}")
        cpu = time.process_time()
        try:
            rows = probe_rows(function, model_columns(payload, shard))
            used = thread_speedup(function, rows, clear=CLEARLY_PARALLEL)
        except Exception:  # the member raises: its task will say so, on a thread
            return "thread"
        finally:
            timeline.mark(f"probed:{payload.model_name}")
        self.measured[key] = used
        chosen: Mode = "thread" if used >= PARALLEL_ENOUGH else "process"
        log.info("model %s: two probe threads were %.2fx as fast as one on %d rows: predictions run in %s "
                 "(%s s of the executor's CPU while it probed)", payload.model_name, used, len(rows), WHERE[chosen],
                 f"{time.process_time() - cpu:.3f}")
        return chosen

    # Worker processes.
    def _in_worker(self, payload: TaskPayload, shard: np.ndarray,
                   payload_json: bytes | None = None) -> tuple[np.ndarray, TaskUsage]:
        key = (payload.model_file, payload.model.sha256)
        worker = self._checkout(key)
        # A mapped shard travels as its path; in-memory rows (a replica's request) as themselves
        # (pickled through the pipe with their memory layout, so the worker computes on what came).
        source = str(shard.filename) if isinstance(shard, np.memmap) else shard
        try:
            worker.conn.send((key, payload_json or payload.to_json(), source))
            reply = worker.conn.recv()
        except (EOFError, OSError) as error:
            status = self._reap(worker)
            raise WorkerDied(f"prediction worker {worker.pid} of model {payload.model_name} died ({status}) "
                             "while running the task") from error
        self._checkin(worker)
        if reply[0] == "ok":
            return reply[1], reply[2]
        raise RemoteTaskError(reply[1], reply[2])

    def _in_worker_batch(self, key: tuple[str, str], tasks: list[tuple[TaskPayload, Any, np.ndarray]]
                         ) -> list[tuple[np.ndarray, TaskUsage] | Exception]:
        """:meth:`_in_worker` for several tasks of one model in one message; if the worker dies,
        each of them fails as a task whose worker died."""
        worker = self._checkout(key)
        requests = [(key, payload.to_json(), str(shard.filename) if isinstance(shard, np.memmap) else shard)
                    for payload, _model, shard in tasks]
        try:
            worker.conn.send(requests)
            replies = worker.conn.recv()
        except (EOFError, OSError) as error:
            status = self._reap(worker)
            died: list[tuple[np.ndarray, TaskUsage] | Exception] = []
            for payload, _model, _shard in tasks:
                failure = WorkerDied(f"prediction worker {worker.pid} of model {payload.model_name} died ({status}) "
                                     "while running the task")
                failure.__cause__ = error
                died.append(failure)
            return died
        self._checkin(worker)
        return [(reply[1], reply[2]) if reply[0] == "ok" else RemoteTaskError(reply[1], reply[2]) for reply in replies]

    def _checkout(self, key: tuple[str, str]) -> Worker:
        """An idle worker that holds model ``key``, forking one when there is room (or in place
        of an idle worker forked before the model was loaded); else wait for one."""
        with self._free:
            while True:
                if self._closed:
                    raise TaskError("the executor is shutting down")
                idle = [w for w in self._workers if not w.busy]
                holding = [w for w in idle if key in w.models]
                if holding:
                    holding[0].busy = True
                    return holding[0]
                if len(self._workers) >= self.size and idle:
                    self._retire(idle[0])
                if len(self._workers) < self.size:
                    worker = self._fork()
                    worker.busy = True
                    self._workers.append(worker)
                    return worker
                self._free.wait()

    def _checkin(self, worker: Worker) -> None:
        with self._free:
            worker.busy = False
            self._free.notify_all()

    def _fork(self) -> Worker:
        """A worker forked now (under the pool's lock), holding every model loaded so far.  The
        fork happens on the pool's own thread, which lives as long as the pool: the kernel's
        parent-death signal follows the forking *thread*, and a task thread may end first.  That
        thread never predicts, which also keeps GNU OpenMP working in the child: a child forked
        from a thread that has run an OpenMP region (a histogram boosting model's probe, say)
        waits forever in its own first one, for pool threads that exist only in the parent."""
        return self._forker.submit(self._fork_here).result()

    def _fork_here(self) -> Worker:
        models = dict(self.cache.loaded_models())
        parent_end, child_end = Pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker: only this thread exists here
            status = 0
            try:
                _die_with_parent(parent)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                parent_end.close()
                _close_sockets(keep=child_end.fileno())  # the executor's connections and other workers' pipes
                _serve(child_end, models, self.cache)
            except BaseException:
                status = 1
            finally:
                os._exit(status)
        child_end.close()
        log.info("forked prediction worker %d (%d models)", pid, len(models))
        return Worker(pid, parent_end, frozenset(models))

    def _retire(self, worker: Worker) -> None:
        """Stop an idle worker (under the pool's lock)."""
        self._workers.remove(worker)
        worker.close_connection()  # its loop ends at EOF
        _kill_and_wait(worker.pid)

    def _reap(self, worker: Worker) -> str:
        """Forget a worker that died (its task fails alone) and say how it ended."""
        with self._free:
            if worker in self._workers:
                self._workers.remove(worker)
            self._free.notify_all()
        worker.close_connection()
        return _kill_and_wait(worker.pid)

    @property
    def worker_pids(self) -> list[int]:
        with self._free:
            return [w.pid for w in self._workers]

    def close(self) -> None:
        """Kill and reap every worker; tasks waiting for one fail (the executor is going away)."""
        with self._free:
            self._closed = True
            workers, self._workers = list(self._workers), []
            self._free.notify_all()
        for worker in workers:
            _kill_and_wait(worker.pid)
            worker.close_connection()
        self._forker.shutdown(wait=False)


def _kill_and_wait(pid: int) -> str:
    """SIGKILL ``pid`` (a worker of ours) and reap it; how it ended, as words."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        _pid, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return "already reaped"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"
