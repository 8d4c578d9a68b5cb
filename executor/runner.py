"""The executor's pure core: run one task payload and return its output array.

No Mesos here.  The pymesos edge (``executor.main``) calls :func:`run_task` on a worker thread
and turns any exception into TASK_FAILED through :func:`report_failure`: a :class:`MemberError`
(the member's own code raised) is told apart from infrastructure failures (every other error).
"""

from __future__ import annotations

import hashlib
import importlib
import http.client
import io
import math
import mmap
import os
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

import numpy as np

from executor import startup, timeline
from executor.modelfile import UntrustedTypes, load_model
from executor.protocol import (RemoteFile, TaskFailure, TaskPayload, TaskUsage, file_sha256,
                               truncate_traceback)
from executor.textshard import NotATextShard, decode_text, map_text_shard

Downloader = Callable[[str], bytes]


class TaskError(Exception):
    """A task failed for a reason worth showing to the user verbatim: an infrastructure failure
    (download, checksum, loading), unless it is a :class:`MemberError`."""


class MemberError(TaskError):
    """The member's own code raised (its predict/predict_proba/decision_function or fit), or the
    member cannot take the data (no such method, another number of features): deterministic, so
    a retry elsewhere gives the same answer.  Raised ``from`` the member's exception."""


def describe_failure(error: BaseException) -> TaskFailure:
    """What a task's exception means for the framework (see :class:`executor.protocol.TaskFailure`).
    Running out of memory is infrastructure even inside the member's code (another agent, or a
    task with more memory, may do)."""
    remote = getattr(error, "failure", None)
    if isinstance(remote, TaskFailure):  # described where it happened (a worker process)
        return remote
    cause = error.__cause__ if isinstance(error, TaskError) and error.__cause__ is not None else error
    text = "".join(traceback.format_exception(error))
    if isinstance(cause, MemoryError):
        return TaskFailure("infrastructure", "MemoryError", f"out of memory: {error}", truncate_traceback(text))
    if isinstance(error, MemberError):
        return TaskFailure("member_error", type(cause).__name__, str(error), truncate_traceback(text))
    if isinstance(error, TaskError):
        return TaskFailure("infrastructure", type(cause).__name__, str(error), truncate_traceback(text))
    return TaskFailure("infrastructure", type(error).__name__, f"executor error: {type(error).__name__}: {error}",
                       truncate_traceback(text))


def report_failure(task_id: str, error: BaseException, stream: Any = None) -> TaskFailure:
    """Write ``error``'s whole traceback to ``stream`` (default: the executor's stderr, the
    sandbox's ``stderr`` file) under a line naming the task and the failure's kind, and return
    the :class:`TaskFailure` its terminal update carries."""
    failure = describe_failure(error)
    stream = stream if stream is not None else sys.stderr
    text = getattr(error, "text", None)  # a worker process's traceback, as text
    stream.write(f"task {task_id} failed ({failure.kind}): {failure.status_message()}\n"
                 + (text if isinstance(text, str) else "".join(traceback.format_exception(error))))
    stream.flush()
    return failure


def http_download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


PUT_ACCEPTED = (200, 201, 204)
"""The answers that mean an upload (a PUT) was taken."""


def http_put(url: str, body: bytes, headers: dict[str, str], timeout: float) -> None:
    """PUT ``body`` through urllib (one connection per call); HTTPError unless the server answers
    one of :data:`PUT_ACCEPTED`."""
    request = urllib.request.Request(url, data=body, method="PUT", headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if response.status not in PUT_ACCEPTED:
            raise urllib.error.HTTPError(url, response.status, response.reason, response.headers, None)


_DOWNLOADERS: "weakref.WeakSet[KeptAliveDownloads]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for downloads in list(_DOWNLOADERS):
        downloads._forget_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


class KeptAliveDownloads:
    """GET and PUT over kept-alive HTTP/1.1 connections (a few per server, shared by the executor's
    threads): a new connection per shard (and a new server thread for it) was a visible part of
    a small task's cost.  Other schemes go through :func:`http_download` and :func:`http_put`."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self._idle: dict[tuple[str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        _DOWNLOADERS.add(self)

    def _forget_in_child(self) -> None:
        """In a forked child: drop the parent's connections without closing them (their sockets
        are the parent's; the child closes inherited descriptors itself)."""
        self._lock = threading.Lock()
        for connections in self._idle.values():
            for connection in connections:
                if connection.sock is not None:
                    connection.sock.detach()
                    connection.sock = None
        self._idle = {}

    def __call__(self, url: str) -> bytes:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            return http_download(url)
        return self._send("GET", url, None, {}, (200,))

    def put(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        """PUT ``body`` (a result's upload) to ``url``: over a kept-alive connection for an ``http``
        URL (a new connection per upload was a connection and a server thread per task), through
        :func:`http_put` for other schemes; HTTPError unless the server answers one of
        :data:`PUT_ACCEPTED`."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            http_put(url, body, headers, self.timeout)
            return
        self._send("PUT", url, body, headers, PUT_ACCEPTED)

    def _send(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
              accepted: tuple[int, ...]) -> bytes:
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        key = (parts.hostname, parts.port or 80)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        with self._lock:
            kept = self._idle.get(key, [])
            connection = kept.pop() if kept else None
        if connection is not None:
            try:
                return self._request(key, connection, method, url, target, body, headers, accepted)
            except urllib.error.HTTPError:  # an answer (an OSError too): not worth a second try
                raise
            except (OSError, http.client.HTTPException):  # the server closed it meanwhile: once more, anew
                pass
        return self._request(key, http.client.HTTPConnection(*key, timeout=self.timeout), method, url, target, body,
                             headers, accepted)

    def _request(self, key: tuple[str, int], connection: http.client.HTTPConnection, method: str, url: str,
                 target: str, body: bytes | None, headers: dict[str, str], accepted: tuple[int, ...]) -> bytes:
        try:
            connection.request(method, target, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except BaseException:
            connection.close()
            raise
        if response.status not in accepted:
            connection.close()
            raise urllib.error.HTTPError(url, response.status, response.reason, response.headers, None)
        if response.will_close:
            connection.close()
        else:
            with self._lock:
                self._idle.setdefault(key, []).append(connection)
        return data


UNPICKLING = threading.Lock()
"""One model load at a time per process: unpickling imports modules, and two threads importing
parts of one package at once can deadlock on CPython's module locks (seen with a forest and a
histogram gradient boosting model: ``_DeadlockError`` in ``sklearn.ensemble``)."""


PREIMPORTED = ("sklearn", "sklearn.base", "sklearn.exceptions", "joblib")
"""What every model load imports first (``executor.modelfile.load_model``): scikit-learn's import
is most of an executor's start (about 1.5 s of CPU; ``scipy.stats`` through
``sklearn.utils.fixes`` is its largest part)."""


def preimport(modules: Iterable[str] = PREIMPORTED) -> threading.Thread:
    """Import ``modules`` on a background thread, holding :data:`UNPICKLING` (a model load waits
    for it rather than importing the same package at once): started with the executor, the import
    overlaps its registration, its first LAUNCH and that task's downloads instead of following
    them.  A module that fails to import is left to the model load that needs it to report."""

    def run() -> None:
        with UNPICKLING:
            for name in modules:
                try:
                    importlib.import_module(name)
                except Exception:  # noqa: S112 - the model load reports it, on the task
                    continue
            timeline.mark("preimported")

    thread = threading.Thread(target=run, name="preimport", daemon=True)
    thread.start()
    return thread


MAPPED_ARRAYS = 64
"""Shard arrays an executor keeps mapped (mapping one again costs a file open and a header parse
per task; found by profiling many small tasks)."""

_NPY_MAGIC_1_0 = b"\x93NUMPY\x01\x00"
_NPY_HEADERS: dict[bytes, tuple[tuple[int, ...], np.dtype[Any]]] = {}
"""Headers of ``.npy`` files mapped so far (their shape and dtype), so that a header seen before is
not parsed again: ``np.load``'s ``ast.literal_eval`` of it was most of mapping a small shard."""


def _npy_layout(handle: BinaryIO) -> tuple[tuple[int, ...], np.dtype[Any], int] | None:
    """The shape, dtype and data offset of the plain ``.npy`` file open in ``handle`` (format
    1.0, C order, a plain dtype, the file's size matching), its header parsed once per process
    (:data:`_NPY_HEADERS`); None for anything else (``np.load`` handles it)."""
    head = handle.read(10)
    if len(head) != 10 or head[:8] != _NPY_MAGIC_1_0:
        return None
    start = 10 + int.from_bytes(head[8:10], "little")
    header = handle.read(start - 10)
    size = os.fstat(handle.fileno()).st_size
    known = _NPY_HEADERS.get(header)
    if known is None:
        try:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(io.BytesIO(head[8:] + header))
        except Exception:  # noqa: BLE001 - np.load says what is wrong
            return None
        if fortran or dtype.hasobject or dtype.names is not None or dtype.kind == "V":
            return None
        known = (tuple(shape), dtype)
        if len(_NPY_HEADERS) >= 512:
            _NPY_HEADERS.clear()
        _NPY_HEADERS[header] = known
    shape, dtype = known
    if not shape or size - start != math.prod(shape) * dtype.itemsize:
        return None
    return shape, dtype, start


def map_npy(path: Path | str) -> np.ndarray:
    """``np.load(path, mmap_mode="r", allow_pickle=False)``: the same read-only ``np.memmap``, in
    a quarter of the time for a header seen before.  Anything off the plain path (another format
    version, Fortran order, object or structured dtypes, a file of the wrong size) goes through
    ``np.load`` itself, which maps it or raises its own error as before.  The file is mapped by its
    path as a ``str`` (``filename`` made absolute, not resolved): given a ``Path``, ``np.memmap``
    resolves it through every directory of a deep sandbox path, two thirds of mapping a small
    shard (0.1 ms of 0.14, measured 2026-12-02)."""
    path = os.fspath(path)
    with open(path, "rb") as handle:
        layout = _npy_layout(handle)
    if layout is None:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    shape, dtype, start = layout
    return np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape, order="C")


READ_NPY_BYTES = 256 * 1024
""":func:`read_npy` reads a ``.npy`` file of at most this many bytes rather than mapping it: a
small shard's mapping (``mmap``, its page faults, ``munmap`` when dropped) cost a prediction
worker about 0.1 ms of CPU per item, reading it about a third of that (issue 13's tiny tasks,
250-row shards of 40 KB).  A worker keeps its last :data:`MAPPED_ARRAYS` shards, so at most
this many bytes of each are its own memory."""
_PAGE = mmap.ALLOCATIONGRANULARITY


def read_npy(path: Path | str) -> np.ndarray:
    """The ``.npy`` file ``path`` as a read-only array: read into memory when it is at most
    :data:`READ_NPY_BYTES` (its data at the same address modulo the page size as a mapping would
    put it, so that vectorised loops split it alike: outputs bit for bit those on the mapped
    shard), else :func:`map_npy`."""
    path = os.fspath(path)
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size > READ_NPY_BYTES:
            layout = None
        else:
            layout = _npy_layout(handle)
        if layout is not None:
            shape, dtype, start = layout
            nbytes = math.prod(shape) * dtype.itemsize
            buffer = np.empty(nbytes + _PAGE, dtype=np.uint8)
            skew = (start - buffer.ctypes.data) % _PAGE  # a mapping's data starts at ``start`` mod the page
            data = buffer[skew:skew + nbytes]
            handle.seek(start)
            if handle.readinto(data.data) == nbytes:
                array = data.view(dtype).reshape(shape)
                array.flags.writeable = False
                return array
    return map_npy(path)


class SandboxCache:
    """What an executor has downloaded into its sandbox, each file once, checked by sha256.

    Models are loaded once and shared by all their tasks; shards and labels are kept as ``.npy``
    files and memory-mapped, so the tasks of every model on one shard share one download.
    Thread-safe: concurrent tasks that need the same file wait for one download.
    """

    def __init__(self, sandbox: Path, download: Downloader | None = None) -> None:
        self.sandbox, self.download = sandbox, download or KeptAliveDownloads()
        self._models: dict[tuple[str, str], Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._checked: set[tuple[str, str]] = set()  # (sandbox file, sha256) known to match
        self._arrays: OrderedDict[str, np.ndarray] = OrderedDict()  # sha256 -> mapped array, oldest first

    def _lock_for(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def file(self, remote: RemoteFile, name: str, what: str) -> Path:
        """``remote`` as the sandbox file ``name``: a file already there (say, placed by the
        Mesos fetcher) must match the checksum; otherwise it is downloaded and checked."""
        path = self.sandbox / name
        with self._lock_for(name):
            if (name, remote.sha256) in self._checked:
                return path
            if path.is_file():
                actual = file_sha256(path)
                if actual != remote.sha256:
                    raise TaskError(f"{what}: sha256 mismatch (expected {remote.sha256}, got {actual})")
                self._checked.add((name, remote.sha256))
                return path
            try:
                data = self.download(remote.url)
            except Exception as error:
                raise TaskError(f"could not download {what}: {error}") from error
            if hashlib.sha256(data).hexdigest() != remote.sha256:
                raise TaskError(f"{what}: sha256 mismatch after download")
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.part")
            temporary.write_bytes(data)
            temporary.replace(path)
            self._checked.add((name, remote.sha256))
            return path

    def array(self, remote: RemoteFile, what: str, text: bool = False) -> np.ndarray:
        """A shard or label array, memory-mapped from the sandbox copy (the last
        :data:`MAPPED_ARRAYS` mapped are kept: every member's task on a shard maps it once);
        ``text``: a text shard, mapped as its bytes (see ``executor.textshard``)."""
        mapped = self._arrays.get(remote.sha256)
        if mapped is not None:
            return mapped
        path = self.array_file(remote, what)
        timeline.mark("first_shard")
        try:
            mapped = map_text_shard(path) if text else map_npy(path)
        except NotATextShard as error:
            raise TaskError(f"{what} is not a text shard: {error}") from error
        except Exception as error:
            raise TaskError(f"{what} is not a valid .npy array: {error}") from error
        with self._guard:
            self._arrays[remote.sha256] = mapped
            while len(self._arrays) > MAPPED_ARRAYS:
                self._arrays.popitem(last=False)
        return mapped

    def array_file(self, remote: RemoteFile, what: str) -> Path:
        """The sandbox file of a shard or label array, downloaded and checked once, not mapped
        (a bundle's prefetch: mapping there too mapped each item's shard twice in the executor,
        the prefetched mapping evicted from :data:`MAPPED_ARRAYS` before its item came)."""
        return self.file(remote, f"cache/{remote.sha256}.npy", what)

    def model(self, remote: RemoteFile, name: str, model_name: str, model_format: str = "joblib",
              trusted_types: Iterable[str] = ()) -> Any:
        """The loaded model, loaded once per executor: a joblib file, or a skops file whose types
        the allow-list (the default plus ``trusted_types``) allows, checked again here."""
        key = (name, remote.sha256)
        with self._lock_for(f"load:{name}"):
            if key not in self._models:
                try:
                    self._models[key] = self._load(remote, name, model_name, model_format, trusted_types)
                finally:  # the executor's start ends with its first model load, whatever its outcome
                    if startup.release():
                        timeline.mark("collector_released")
            return self._models[key]

    def _load(self, remote: RemoteFile, name: str, model_name: str, model_format: str,
              trusted_types: Iterable[str]) -> Any:
        """``name`` fetched into the sandbox (if not there, checked) and loaded."""
        path = self.file(remote, name, f"model file {name}")
        timeline.mark(f"model_fetched:{model_name}")
        try:
            with UNPICKLING:
                timeline.mark(f"model_load:{model_name}")
                model, _version = load_model(path, model_format, trusted_types)
            timeline.mark(f"model_loaded:{model_name}")
            return model
        except UntrustedTypes as error:
            raise TaskError(f"model file {name} of {model_name} was not loaded: {error}") from error
        except Exception as error:  # joblib/pickle/skops raise many types for a bad file
            raise TaskError(f"model file {name} of {model_name} could not be loaded: "
                            f"{type(error).__name__}: {error}") from error

    def holds(self, model: RemoteFile, model_file: str, shard: RemoteFile) -> bool:
        """Whether ``model`` is loaded and ``shard`` is in the sandbox, checked: a task on them
        computes at once."""
        shard_file = (f"cache/{shard.sha256}.npy", shard.sha256)
        return (model_file, model.sha256) in self._models and shard_file in self._checked

    def holds_inputs(self, payload: TaskPayload) -> bool:
        """Whether :func:`fetch_inputs` would return at once for ``payload`` (its model loaded, its
        shard or every part of it in the sandbox, checked): it downloads nothing."""
        if (payload.model_file, payload.model.sha256) not in self._models:
            return False
        files = [part.file for part in payload.inputs] if payload.inputs else [payload.shard]
        return all((f"cache/{remote.sha256}.npy", remote.sha256) in self._checked for remote in files)

    def loaded_models(self) -> dict[tuple[str, str], Any]:
        """Every model loaded so far, by (sandbox file, sha256)."""
        with self._guard:
            return dict(self._models)

    @property
    def models_loaded(self) -> int:
        return len(self._models)


def call_method(model: Any, method: str, features: np.ndarray, model_name: str) -> np.ndarray:
    function = getattr(model, method, None)
    if function is None:
        raise MemberError(f"model {model_name} ({type(model).__name__}) has no method {method}")
    expected = getattr(model, "n_features_in_", None)
    if expected is not None and features.ndim == 2 and features.shape[1] != expected:
        raise MemberError(
            f"model {model_name} expects {expected} features, the shard has {features.shape[1]}"
        )
    try:
        return np.asarray(function(features))
    except Exception as error:
        raise MemberError(f"model {model_name}.{method} failed: {type(error).__name__}: {error}") from error


def fetch_inputs(payload: TaskPayload, cache: SandboxCache) -> tuple[Any, np.ndarray]:
    """The task's model (loaded once per executor) and its shard (downloaded once per executor,
    memory-mapped): the part of a task whose cost the executor's other tasks share."""
    model = cache.model(payload.model, payload.model_file, payload.model_name, payload.model_format,
                        payload.trusted_types)
    if payload.inputs:
        return model, assemble_parts(payload, cache)
    if payload.input_format == "text":  # its bytes, decoded where the member runs (model_columns)
        return model, cache.array(payload.shard, f"text shard {payload.shard_index}", text=True)
    features = cache.array(payload.shard, f"shard {payload.shard_index}")
    if payload.input_format != "float64":
        raise TaskError(f"unknown input format {payload.input_format!r}")
    if features.ndim != 2:
        raise TaskError(f"shard {payload.shard_index} has shape {features.shape}, expected 2 dimensions")
    return model, features


def assemble_parts(payload: TaskPayload, cache: SandboxCache) -> np.ndarray:
    """The model's input from its parts (``[[sources]]``): each part's file downloaded once per
    executor and memory-mapped, its columns taken and placed side by side, in the model's order."""
    pieces: list[np.ndarray] = []
    for number, part in enumerate(payload.inputs):
        array = cache.array(part.file, f"shard {payload.shard_index} part {number}")
        if array.ndim != 2 or (array.shape[0] != pieces[0].shape[0] if pieces else False):
            raise TaskError(f"shard {payload.shard_index} part {number} has shape {array.shape}, expected "
                            f"{pieces[0].shape[0] if pieces else 'some'} rows in 2 dimensions")
        if part.columns and max(part.columns) >= array.shape[1]:
            raise TaskError(f"model {payload.model_name} takes column {max(part.columns)} of shard "
                            f"{payload.shard_index} part {number}, which has {array.shape[1]}")
        pieces.append(array[:, part.columns])
    return np.ascontiguousarray(np.concatenate(pieces, axis=1), dtype=np.float64)


def model_columns(payload: TaskPayload, features: np.ndarray) -> np.ndarray:
    """The columns of the shard that this task's model takes.  Text: a text shard's bytes (a
    1-D ``uint8`` mapping, see ``executor.textshard``) decoded to a 1-D object array of ``str``
    (a few ms per 5,000 documents, where the member runs: the shard travels to a worker process
    as its path, never as strings); rows that are strings already (a 1-D ``str`` or object
    array in memory) as they are."""
    if payload.input_format == "text":
        if features.ndim == 1 and features.dtype.kind in "UO":
            return features
        try:
            return decode_text(features)
        except NotATextShard as error:
            raise TaskError(f"text shard {payload.shard_index} is not a text shard: {error}") from error
    if payload.columns:
        if max(payload.columns) >= features.shape[1]:
            raise TaskError(f"model {payload.model_name} takes column {max(payload.columns)}, "
                            f"shard {payload.shard_index} has {features.shape[1]}")
        return features[:, payload.columns]
    return features


def run_task(payload: TaskPayload, cache: SandboxCache) -> np.ndarray:
    """Run one task and return its output (predictions, probabilities or fold predictions)."""
    model, shard = fetch_inputs(payload, cache)
    return compute(payload, model, shard, cache)


def compute_measured(payload: TaskPayload, model: Any, shard: np.ndarray,
                     cache: SandboxCache) -> tuple[np.ndarray, TaskUsage]:
    """:func:`compute`, and what it cost: wall and CPU seconds of this thread (the inputs are
    already fetched, so the model load and shard download the executor shares are not counted)."""
    timeline.mark(f"compute:{payload.model_name}")
    started, cpu_started = time.perf_counter(), time.thread_time()
    output = compute(payload, model, shard, cache)
    return output, TaskUsage(round(time.perf_counter() - started, 6), round(time.thread_time() - cpu_started, 6))


def compute(payload: TaskPayload, model: Any, shard: np.ndarray, cache: SandboxCache) -> np.ndarray:
    """The task's own work on fetched inputs: the model's columns of the shard, then its method
    (or one cross-validation fold).

    The member sees a plain ``ndarray`` view of the mapped shard (no copy, same bytes, still
    read-only), never the ``np.memmap`` itself: every slice of a memmap runs its Python-level
    ``__array_finalize__``/``__array_wrap__``, which made a member that works row by row in
    Python (``numpy.apply_along_axis`` in a ``FunctionTransformer``) about 3x slower (profiled
    with py-spy on ``bench/cores_bench.py --suite gil``: 75% of the workers' samples)."""
    features = np.asarray(model_columns(payload, shard))
    if payload.operation == "predict":
        return call_method(model, payload.method, features, payload.model_name)
    if payload.operation == "cv_fit_predict":
        return cv_fit_predict(model, features, payload, cache)
    raise TaskError(f"unknown operation {payload.operation!r}")


def cv_fit_predict(model: Any, features: np.ndarray, payload: TaskPayload, cache: SandboxCache) -> np.ndarray:
    """One cross-validation fold: fit a clone on the train rows, apply ``method`` to the test rows."""
    from executor.folds import fit_fold, rows

    if payload.labels is None:
        raise TaskError("cv_fit_predict needs labels")
    labels = cache.array(payload.labels, "labels")
    try:
        estimator = fit_fold(model, features, labels, payload.train_rows)
    except Exception as error:
        raise MemberError(f"model {payload.model_name} could not be fitted: {type(error).__name__}: {error}") from error
    return call_method(estimator, payload.method, features[rows(payload.test_rows)], payload.model_name)
