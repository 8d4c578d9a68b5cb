"""The wire schema between the framework and its executors.

A task's ``TaskInfo.data`` carries a :class:`TaskPayload` as JSON.  The terminal status
update's ``data`` carries a :class:`ResultEnvelope` as JSON: the result itself when it is
small, or a pointer to the copy the executor uploaded to the framework's artifact server.
Several small tasks may travel as one Mesos task: a :class:`BundlePayload`, answered by one
terminal update carrying a :class:`BundleResult` (see :func:`decode_task`).  A long-lived
serving replica is a :class:`ReplicaPayload` (see ``executor.replica``): its TASK_RUNNING update
carries a :class:`ReplicaReady`.

Results are numpy arrays serialised with ``np.save`` (``.npy`` bytes): exact, typed, and
readable without pickle.  This module is shared by both sides, so it imports only numpy.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

PROTOCOL_VERSION = 3
INLINE_RESULT_LIMIT = 64 * 1024
"""Results up to this many ``.npy`` bytes travel inside the status update; larger ones are uploaded."""
BUNDLE_INLINE_LIMIT = 1024 * 1024
"""A bundle's results travel inside its one status update while their ``.npy`` bytes add up to at
most this much (each at most :data:`BUNDLE_ITEM_INLINE_LIMIT`); the rest are uploaded one by one."""
BUNDLE_ITEM_INLINE_LIMIT = 256 * 1024
BUNDLE_SCHEMA = "mesos-ensemble/bundle/1"
BUNDLE_RESULT_SCHEMA = "mesos-ensemble/bundle-result/1"

Operation = Literal["predict", "cv_fit_predict"]
InputFormat = Literal["float64", "text"]


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
"""Each dataclass's field names, looked up once: ``dataclasses.fields`` per value was half of
encoding a bundled item's payload for its prediction worker (issue 13's executor profile)."""


def _fields_of(value: Any) -> dict[str, Any]:
    """A dataclass instance's fields, for ``json.dumps(default=...)``: the same JSON as
    ``json.dumps(asdict(value))`` at a third of the cost (``asdict`` deep-copies every nested
    value first; a bundle encodes its items' payloads and results several times on their way)."""
    kind = type(value)
    names = _FIELD_NAMES.get(kind)
    if names is None:
        if isinstance(value, type) or not hasattr(value, "__dataclass_fields__"):
            raise TypeError(f"{kind.__name__} is not JSON serializable")
        names = _FIELD_NAMES[kind] = tuple(f.name for f in fields(value))
    return {name: getattr(value, name) for name in names}


def json_bytes(value: Any) -> bytes:
    """``value`` (dataclasses, nested, in dicts and lists) as sorted-key JSON bytes."""
    return json.dumps(value, default=_fields_of, sort_keys=True).encode()


@dataclass(frozen=True)
class RemoteFile:
    """A file the executor downloads itself (URL with the job's token) and checks by sha256."""

    url: str
    sha256: str


@dataclass(frozen=True)
class ShardPart:
    """Some columns of one shard file: a task's input is its parts' columns side by side, in order
    (a job with ``[[sources]]`` serves each source's columns in files of their own)."""

    file: RemoteFile
    columns: list[int]


@dataclass(frozen=True)
class TaskPayload:
    """What one task asks of the executor.

    ``predict``: load ``model`` (downloaded into the sandbox as ``model_file`` unless already
    there; a ``model_format`` file, for skops with ``trusted_types`` on top of the default
    allow-list, see ``executor.modelfile``), read the feature rows of ``shard``, keep the
    model's ``columns`` and call ``method`` on them.  An executor keeps
    what it downloads: the tasks of other models on the same shard reuse the copy.
    ``cv_fit_predict``: clone the model, fit it on ``train_rows`` of ``shard`` with ``labels``,
    and call ``method`` on ``test_rows`` (one fold of a stacking cross-validation).
    """

    task_id: str
    operation: Operation
    model_name: str
    model: RemoteFile
    model_file: str
    method: str
    shard: RemoteFile
    shard_index: int
    result_upload_url: str
    columns: list[int] = field(default_factory=list)
    """The shard's columns this model takes, in order; empty: all of them."""
    labels: RemoteFile | None = None
    train_rows: list[int] = field(default_factory=list)
    test_rows: list[int] = field(default_factory=list)
    model_format: str = "joblib"
    """``joblib`` or ``skops``."""
    trusted_types: list[str] = field(default_factory=list)
    """skops: the job's ``trusted_types``, allowed on top of the default allow-list."""
    inline_limit: int = INLINE_RESULT_LIMIT
    version: int = PROTOCOL_VERSION
    inputs: list[ShardPart] = field(default_factory=list)
    """When given, the model's input instead of ``shard``/``columns``: these parts' columns side
    by side (each file downloaded once per executor, like a shard)."""
    input_format: InputFormat = "float64"
    """What ``shard`` holds: ``float64``, a 2-D matrix of features (the model takes ``columns``);
    ``text``, a text shard (one string column's rows as UTF-8 bytes and offsets, see
    ``executor.textshard``), which the model gets decoded, one document per row (a 1-D object
    array of ``str``, as scikit-learn's text vectorizers take)."""
    predict_mode: str | None = None
    """``thread``: an earlier run's probe measured this model file's ``method`` parallel on
    threads (see ``executor.workers``), so the executor takes threads without probing it again;
    None: the executor decides (probes)."""

    def to_json(self) -> bytes:
        return json_bytes(self)

    @classmethod
    def from_json(cls, raw: bytes) -> "TaskPayload":
        return _task_payload(json.loads(raw))


@dataclass(frozen=True)
class ResultEnvelope:
    """The terminal update's data: an inline ``.npy`` (base64) or a pointer to an upload."""

    kind: Literal["inline", "uploaded"]
    sha256: str
    nbytes: int
    npy_b64: str | None = None
    shape: list[int] = field(default_factory=list)
    usage: "TaskUsage | None" = None

    def to_json(self) -> bytes:
        return json_bytes(self)

    @classmethod
    def from_json(cls, raw: bytes) -> "ResultEnvelope":
        fields: dict[str, Any] = json.loads(raw)
        if fields.get("usage") is not None:
            fields["usage"] = TaskUsage(**fields["usage"])
        return cls(**fields)


@dataclass(frozen=True)
class TaskUsage:
    """What one task cost, as its executor measured it: wall seconds and CPU seconds of the
    task's thread for its own work (predict, or fit and predict), without the model load and
    shard download that the executor's other tasks share."""

    seconds: float
    cpu_seconds: float
    measured_mode: str | None = None
    """Where this executor's probe put the model's predictions (``thread`` or ``process``); None
    when it did not probe (one task slot, a forced mode, a text member, a mode given by the
    payload).  The framework remembers a measured ``thread`` for later runs."""


@dataclass(frozen=True)
class BundlePayload:
    """Several small tasks of one model that travel as ONE Mesos task (``task_id``): the executor
    runs ``items`` one after the other (each on its own shard, so each output is what the item
    alone gives) and answers with ONE terminal update carrying a :class:`BundleResult`.  Each
    item keeps its own task id (the framework tracks, retries and journals items, not bundles)."""

    task_id: str
    items: list[TaskPayload]
    inline_limit: int = BUNDLE_INLINE_LIMIT
    schema: str = BUNDLE_SCHEMA
    version: int = PROTOCOL_VERSION

    def to_json(self) -> bytes:
        return json_bytes({"task_id": self.task_id, "items": self.items, "inline_limit": self.inline_limit,
                           "schema": self.schema, "version": self.version})


REPLICA_KIND = "replica"
REPLICA_OUTPUTS = ("predict", "predict_proba", "decision_function")
DEFAULT_MAX_BATCH_ROWS = 4096
REPLICA_MODEL_DIR = "replica-models"


@dataclass(frozen=True)
class ReplicaPayload:
    """A long-lived serving replica (``TaskInfo.data`` with ``"kind": "replica"``): load ``model``
    once (``model_url``, checked by ``sha256``; a ``format`` file, for skops with
    ``trusted_types`` on top of the default allow-list, as for a batch task), then answer
    ``POST /v1/predict`` on ``host:port`` with ``getattr(model, output)(X)`` until killed.
    ``port`` 0 binds any free port (the TASK_RUNNING update says which).  The URL carries the
    job's artifact token, as a :class:`TaskPayload`'s do: never log it."""

    model: str
    model_url: str
    sha256: str
    port: int
    output: str = "predict"
    format: str = "joblib"
    trusted_types: list[str] = field(default_factory=list)
    host: str = "0.0.0.0"  # noqa: S104 - a replica serves the gateway, on another host
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS
    """The most rows one request may carry (the gateway's batches are at most this big)."""
    predict_mode: str | None = None
    """Where an earlier replica of this model file found its predictions run best ("thread" or
    "process", its :class:`ReplicaReady` said): the replica takes it instead of probing again
    (None: the executor probes, unless it knows the model already)."""
    input_format: InputFormat = "float64"
    """What a request's ``.npy`` body holds: ``float64``, the model's columns (2-D); ``text``, one
    document per row (a 1-D fixed-width unicode array), handed to the model as it is, as a batch
    task's text shard is."""
    kind: str = REPLICA_KIND
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if self.input_format not in ("float64", "text"):
            raise ValueError(f"replica input_format {self.input_format!r}: expected float64 or text")
        if self.output not in REPLICA_OUTPUTS:
            raise ValueError(f"replica output {self.output!r}: expected one of {', '.join(REPLICA_OUTPUTS)}")
        if self.format not in ("joblib", "skops"):
            raise ValueError(f"replica model format {self.format!r}: expected joblib or skops")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"replica port {self.port!r}: expected an integer in 0..65535")
        if not isinstance(self.max_batch_rows, int) or self.max_batch_rows < 1:
            raise ValueError(f"replica max_batch_rows {self.max_batch_rows!r}: expected a positive integer")
        if self.predict_mode not in (None, "thread", "process"):
            raise ValueError(f"replica predict_mode {self.predict_mode!r}: expected thread, process or null")
        if not self.model or "/" in self.model or self.model.startswith("."):
            raise ValueError(f"replica model name {self.model!r}: expected a plain name")

    @property
    def remote(self) -> RemoteFile:
        return RemoteFile(self.model_url, self.sha256)

    @property
    def model_file(self) -> str:
        """The sandbox file the model is kept in: named by its checksum too, so that an update of
        the model (a new sha256) served by the same executor never collides with the old one."""
        return f"{REPLICA_MODEL_DIR}/{self.model}-{self.sha256[:16]}.{self.format}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "ReplicaPayload":
        fields = json.loads(raw)
        if not isinstance(fields, dict) or fields.get("kind") != REPLICA_KIND:
            raise ValueError("not a replica payload (no \"kind\": \"replica\")")
        return _replica_payload(fields)


def _replica_payload(fields: dict[str, Any]) -> ReplicaPayload:
    if fields.get("version") != PROTOCOL_VERSION:
        raise ValueError(f"replica payload version {fields.get('version')!r}, expected {PROTOCOL_VERSION}")
    known = set(ReplicaPayload.__dataclass_fields__)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"replica payload: unknown field(s) {', '.join(unknown)}")
    return ReplicaPayload(**{**fields, "trusted_types": list(fields.get("trusted_types", []))})


@dataclass(frozen=True)
class ReplicaReady:
    """A replica's TASK_RUNNING ``data``: where it listens (``port``: the one it bound), its
    executor's ``pid``, whether its predictions run on threads or in worker processes, and how
    long each step of its start took (``phases``: seconds by step, in order, measured by the
    executor: see ``executor.replica.START_PHASES``; absent from an older executor's)."""

    port: int
    pid: int
    predict_mode: Literal["thread", "process"]
    phases: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "ReplicaReady":
        fields = json.loads(raw)
        phases = fields.get("phases") or {}
        return cls(port=int(fields["port"]), pid=int(fields["pid"]), predict_mode=fields["predict_mode"],
                   phases={str(k): float(v) for k, v in phases.items()} if isinstance(phases, dict) else {})


def decode_task(raw: bytes) -> "TaskPayload | BundlePayload | ReplicaPayload":
    """A TaskInfo's data: one task's payload, a bundle of them, or a serving replica."""
    fields: dict[str, Any] = json.loads(raw)
    if fields.get("version") != PROTOCOL_VERSION:
        raise ValueError(f"task payload version {fields.get('version')!r}, expected {PROTOCOL_VERSION}")
    if fields.get("kind") == REPLICA_KIND:
        return _replica_payload(fields)
    if fields.get("schema") == BUNDLE_SCHEMA:
        return BundlePayload(task_id=str(fields["task_id"]), items=[_task_payload(i) for i in fields["items"]],
                             inline_limit=int(fields["inline_limit"]))
    return _task_payload(fields)


def _task_payload(fields: dict[str, Any]) -> TaskPayload:
    if fields.get("version") != PROTOCOL_VERSION:
        raise ValueError(f"task payload version {fields.get('version')!r}, expected {PROTOCOL_VERSION}")
    fields = dict(fields)
    fields["model"] = RemoteFile(**fields["model"])
    fields["shard"] = RemoteFile(**fields["shard"])
    if fields.get("labels") is not None:
        fields["labels"] = RemoteFile(**fields["labels"])
    fields["inputs"] = [ShardPart(RemoteFile(**p["file"]), list(p["columns"])) for p in fields.get("inputs", [])]
    if fields.get("predict_mode") not in (None, "thread"):
        raise ValueError(f"task payload predict_mode {fields['predict_mode']!r}: expected thread or null")
    return TaskPayload(**fields)


@dataclass(frozen=True)
class BundleResult:
    """A bundle's terminal update data: per item task id, its :class:`ResultEnvelope` or its
    :class:`TaskFailure` (an item that failed does not fail the others)."""

    results: dict[str, ResultEnvelope] = field(default_factory=dict)
    failures: dict[str, "TaskFailure"] = field(default_factory=dict)
    schema: str = BUNDLE_RESULT_SCHEMA

    def to_json(self) -> bytes:
        return json_bytes({"schema": self.schema, "results": self.results, "failures": self.failures})

    @classmethod
    def from_json(cls, raw: bytes) -> "BundleResult":
        """Decode :meth:`to_json`'s bytes (ValueError if they are not a bundle result)."""
        try:
            fields: Any = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"not a bundle result: {error}") from error
        if not isinstance(fields, dict) or fields.get("schema") != BUNDLE_RESULT_SCHEMA:
            raise ValueError("not a bundle result (no bundle-result schema)")
        results = {}
        for task_id, envelope in fields.get("results", {}).items():
            if envelope.get("usage") is not None:
                envelope = {**envelope, "usage": TaskUsage(**envelope["usage"])}
            results[task_id] = ResultEnvelope(**envelope)
        failures = {task_id: TaskFailure(kind=f["kind"], error_type=str(f.get("error_type", "")),
                                         message=str(f.get("message", "")), traceback=str(f.get("traceback", "")))
                    for task_id, f in fields.get("failures", {}).items()}
        return cls(results, failures)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def array_to_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_to_array(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def inline_envelope(npy: bytes, shape: tuple[int, ...], usage: TaskUsage | None = None) -> ResultEnvelope:
    return ResultEnvelope("inline", sha256_hex(npy), len(npy), base64.b64encode(npy).decode(), list(shape), usage)


def uploaded_envelope(npy: bytes, shape: tuple[int, ...], usage: TaskUsage | None = None) -> ResultEnvelope:
    return ResultEnvelope("uploaded", sha256_hex(npy), len(npy), None, list(shape), usage)


FailureKind = Literal["member_error", "infrastructure"]
TASK_FAILURE_SCHEMA = "mesos-ensemble/task-failure/1"
MAX_TRACEBACK_CHARS = 8000
"""A failure's traceback travels in its status update cut to its last this many characters (the
innermost frames and the exception); the executor's stderr in the sandbox keeps all of it."""
MAX_FAILURE_MESSAGE_CHARS = 1000
FAILURE_MESSAGE_PREFIX: dict[str, str] = {"member_error": "member error: ", "infrastructure": "infrastructure: "}
"""How a failed task's status message starts, by kind (for people and for a framework that sees
only the message)."""


@dataclass(frozen=True)
class TaskFailure:
    """Why a task failed: the terminal TASK_FAILED update's ``data`` carries it as JSON, and its
    message starts with :data:`FAILURE_MESSAGE_PREFIX`.

    ``kind`` is ``member_error`` when the member's own code raised (its predict, predict_proba,
    decision_function or fit) or the member cannot take the data (no such method, another
    number of features): retrying elsewhere gives the same answer, so a framework retries it at
    most once.  ``infrastructure`` is everything else (a download or checksum failure, a model
    file the agent's Python cannot load, out of memory, a bug in the executor): worth retrying
    elsewhere.  ``error_type`` is the exception's class name, ``traceback`` the end of its
    traceback (see :data:`MAX_TRACEBACK_CHARS`)."""

    kind: FailureKind
    error_type: str
    message: str
    traceback: str = ""
    schema: str = TASK_FAILURE_SCHEMA

    @property
    def is_member_error(self) -> bool:
        return self.kind == "member_error"

    def status_message(self) -> str:
        """One line for the status update's ``message``: the kind's prefix, then what happened."""
        text = " ".join(self.message.split()) or self.error_type
        if len(text) > MAX_FAILURE_MESSAGE_CHARS:
            text = text[:MAX_FAILURE_MESSAGE_CHARS - 3] + "..."
        return FAILURE_MESSAGE_PREFIX[self.kind] + text

    def to_json(self) -> bytes:
        return json_bytes(self)

    @classmethod
    def from_json(cls, raw: bytes) -> "TaskFailure":
        """Decode :meth:`to_json`'s bytes (ValueError if they are not a task failure)."""
        try:
            fields: Any = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"not a task failure: {error}") from error
        if not isinstance(fields, dict) or fields.get("schema") != TASK_FAILURE_SCHEMA:
            raise ValueError("not a task failure (no task-failure schema)")
        if fields.get("kind") not in FAILURE_MESSAGE_PREFIX:
            raise ValueError(f"task failure of unknown kind {fields.get('kind')!r}")
        return cls(kind=fields["kind"], error_type=str(fields.get("error_type", "")),
                   message=str(fields.get("message", "")), traceback=str(fields.get("traceback", "")))

    @classmethod
    def from_status(cls, data_b64: str | None, message: str = "") -> "TaskFailure | None":
        """The failure a TASK_FAILED update reports: from its ``data`` (base64, as pymesos gives
        it) if that holds one, else from a message with a kind's prefix; None when the update
        is not from this executor's failure path (say, the agent's own TASK_FAILED)."""
        if data_b64:
            try:
                return cls.from_json(base64.b64decode(data_b64))
            except (ValueError, TypeError):
                pass
        for kind, prefix in FAILURE_MESSAGE_PREFIX.items():
            if message.startswith(prefix):
                return cls(kind, "", message[len(prefix):])  # type: ignore[arg-type]
        return None


def truncate_traceback(text: str, limit: int = MAX_TRACEBACK_CHARS) -> str:
    """``text`` if short enough, else its last ``limit`` characters after a line saying how
    much was cut (the innermost frames and the exception are at the end)."""
    if len(text) <= limit:
        return text
    kept = text[-limit:]
    kept = kept[kept.find("\n") + 1:] if "\n" in kept[:-1] else kept  # start at a line
    return f"[... {len(text) - len(kept)} characters of traceback cut; the executor's stderr has them ...]\n{kept}"
