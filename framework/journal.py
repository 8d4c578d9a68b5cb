"""The durable job journal: what a job has done, kept so that a later ``run`` can resume it.

A state directory (by default beside the job file, :func:`default_state_dir`) holds
``journal.sqlite3`` (stdlib :mod:`sqlite3`, WAL mode, schema version in ``PRAGMA user_version``)
and ``results/``.  The database keeps the job's :class:`Fingerprint`, the framework id, every
work item with its state, every attempt at it (Mesos task id, agent, state, reason, message,
detail, times) and every finished result with its sha256: results of up to
:data:`DEFAULT_BLOB_LIMIT` bytes (what executors send inline) in the database itself, larger
ones as ``results/<item key>.npy`` files.

Crash safety
------------
* A result file is written to a temporary name beside its final one, then renamed; the row that
  names it (with its sha256) is committed after the rename.  A result kept in the database is
  committed in the same transaction that marks its item finished.  A process killed at any
  point leaves either no row (the item is simply not finished; an orphan file or temporary is
  swept at the next open) or a complete result.  :meth:`Journal.finished` re-checks every
  result's sha256, so one damaged later (by hand, or by a power loss) only means the item is
  not finished and is computed again.
* ``durability="process"`` (the default) survives the scheduler process dying in any way
  (``kill -9`` included): WAL with ``synchronous=NORMAL`` never loses a committed transaction to
  a process crash, only to an operating-system crash or power loss, and result files are not
  fsynced.  Measured on this project's VM disk a commit costs about 0.2 ms with NORMAL and
  5 ms with FULL, a 64 KiB file fsync about 4 ms and a directory fsync 1.5 ms: FULL plus fsyncs
  would cost 10-30 ms per task against a 1 ms target (``bench/journal_bench.py``).  What a
  power loss can cost in this mode is recomputing the last results (never a wrong one:
  checksums catch torn files, and WAL keeps the database consistent).
* ``durability="power"`` also survives power loss: result files and their directory are fsynced
  before the row is committed, and result rows are committed with ``synchronous=FULL``
  (launches and updates stay NORMAL: losing them only means a reconciliation asks Mesos again).
* Non-terminal updates (TASK_RUNNING...) are written with the next commit, read or close, not
  on their own: a crash loses at most those, which reconciliation restores.

Threads: every method may be called from any thread (one connection, serialised by a lock; a
result file is written outside the lock, its rename, fsyncs and commit inside it).  A journal
may be opened for writing by one process at a time (an advisory ``flock`` on ``lock``, released
by the kernel if the process dies); :meth:`Journal.read` opens one read-only, e.g. for
``mesos-ensemble status`` while a job runs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import tomllib
import urllib.parse
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping

import numpy as np

from executor.protocol import array_to_npy, file_sha256, npy_to_array, sha256_hex
from framework.errors import FrameworkError
from framework.tasks import ACTIVE_MESOS_STATES, ItemState, WorkItem

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DATABASE_NAME = "journal.sqlite3"
RESULTS_DIR = "results"
LOCK_NAME = "lock"
TEMPORARY_SUFFIX = ".tmp"

DEFAULT_BLOB_LIMIT = 64 * 1024
"""Results of up to this many bytes (what an executor sends inline in its status update) are
kept in the database, in the same transaction that marks the item finished; larger ones (those
an executor uploads) as files in ``results/``.  Creating a file costs a new inode: 1-10 ms on
this project's VM disk under load, several times one WAL commit (see ``bench/journal_bench.py``)."""

RESULT_NEUTRAL_TABLES = ("framework", "local_cluster", "pricing", "serve")
"""Top-level tables of the job file left out of its fingerprint: they say where and how tasks
run (master, retries, timeouts, agents, prices, how ``serve`` deploys the members), not what any
work item computes, so changing them (say, a longer ``timeout_seconds`` before resuming) does not
invalidate finished results."""

Durability = Literal["process", "power"]


def default_state_dir(job_file: Path) -> Path:
    """Where a job's journal lives unless ``--state-dir`` says otherwise: beside its job file,
    ``jobs/demo.toml`` -> ``jobs/demo.state/``."""
    return job_file.with_name(job_file.stem + ".state")


class JournalError(FrameworkError):
    """The journal cannot be used (corrupt, newer schema, busy, or asked for something it lacks)."""


class JournalMismatch(JournalError):
    """The job changed since its journal was written; ``changes`` names each change."""

    def __init__(self, message: str, changes: list[str]) -> None:
        super().__init__(message)
        self.changes = changes


class JournalBusy(JournalError):
    """Another live process has this journal open for writing."""


def lock_state_dir(state_dir: Path, busy_message: str) -> int:
    """Create ``state_dir`` and take its lock file's exclusive lock without waiting; the returned
    descriptor holds the lock until it is closed.  :class:`JournalError` when the directory cannot
    be used, :class:`JournalBusy` (``busy_message``) when another process holds it."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        lock_file = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise JournalError(f"cannot use the state directory {state_dir}: {error.strerror}") from error
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_file)
        raise JournalBusy(busy_message) from None
    return lock_file


# Fingerprint ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputFile:
    """One input of the job, by the place the job file gives it (``label``) and its checksum."""

    label: str
    name: str
    sha256: str


@dataclass(frozen=True)
class Fingerprint:
    """What a job's results depend on: its job file's canonical content (TOML parsed, the
    :data:`RESULT_NEUTRAL_TABLES` left out, dumped as sorted JSON, so comments and layout do not
    count) and the sha256 of every model and data file."""

    job_name: str
    job_sha256: str
    job_content: dict[str, Any]
    inputs: tuple[InputFile, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> "Fingerprint":
        fields = json.loads(raw)
        return cls(fields["job_name"], fields["job_sha256"], fields["job_content"],
                   tuple(InputFile(**f) for f in fields["inputs"]))

    def differences(self, current: "Fingerprint") -> list[str]:
        """Each way ``current`` differs from this (saved) fingerprint, one phrase per change."""
        changes = [f"{self.job_name}: {c}" for c in _content_changes(self.job_content, current.job_content, "")]
        if not changes and self.job_sha256 != current.job_sha256:  # cannot happen unless hashing changed
            changes.append(f"{self.job_name} changed "
                           f"(sha256 {_short(self.job_sha256)} -> {_short(current.job_sha256)})")
        saved = {f.label: f for f in self.inputs}
        now = {f.label: f for f in current.inputs}
        for label, before in saved.items():
            after = now.get(label)
            if after is None:
                changes.append(f"{label}: no longer in the job (was {before.name})")
            elif after.name != before.name:
                changes.append(f"{label}: {before.name} replaced by {after.name}")
            elif after.sha256 != before.sha256:
                changes.append(f"{label}: {after.name} changed (sha256 {_short(before.sha256)} -> "
                               f"{_short(after.sha256)})")
        changes += [f"{label}: new input {f.name}" for label, f in now.items() if label not in saved]
        return changes


def _short(digest: str) -> str:
    return digest[:4] + "…"


def _content_changes(before: Any, after: Any, where: str) -> list[str]:
    """The field paths (``models[1].weight``) whose values differ, with both values."""
    if isinstance(before, dict) and isinstance(after, dict):
        changes = []
        for key in sorted(set(before) | set(after)):
            path = f"{where}.{key}" if where else str(key)
            if key not in after:
                changes.append(f"{path} removed")
            elif key not in before:
                changes.append(f"{path} added ({_value(after[key])})")
            else:
                changes += _content_changes(before[key], after[key], path)
        return changes
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [c for i, (b, a) in enumerate(zip(before, after)) for c in _content_changes(b, a, f"{where}[{i}]")]
    if isinstance(before, list) and isinstance(after, list):
        return [f"{where} has {len(after)} entries (was {len(before)})"]
    return [] if before == after else [f"{where} changed ({_value(before)} -> {_value(after)})"]


def _value(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def canonical_job_content(job_file: Path) -> dict[str, Any]:
    """The job file's tables that determine results, as plain JSON-able data."""
    with job_file.open("rb") as handle:
        content = tomllib.load(handle)
    content = {k: v for k, v in content.items() if k not in RESULT_NEUTRAL_TABLES}
    return json.loads(json.dumps(content, sort_keys=True, default=str))  # dates etc. as strings


def compute_fingerprint(job_file: Path, inputs: Mapping[str, Path]) -> Fingerprint:
    """The fingerprint of ``job_file`` and of ``inputs``: label (``models[1] (logistic)``,
    ``data``) to the file's path.  Reads each file once."""
    content = canonical_job_content(job_file)
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    files = tuple(InputFile(label, Path(path).name, _input_sha256(Path(path))) for label, path in inputs.items())
    return Fingerprint(job_file.name, sha256_hex(canonical), content, files)


def _input_sha256(path: Path) -> str:
    """A file's sha256; a directory's (data read as one table from its files): of its files'
    names and sha256s, so adding, removing or changing a file changes it."""
    if not path.is_dir():
        return file_sha256(path)
    listing = "\n".join(f"{p.name} {file_sha256(p)}" for p in sorted(path.iterdir()) if p.is_file())
    return sha256_hex(listing.encode())


def job_fingerprint(spec: Any) -> Fingerprint:
    """The fingerprint of a loaded :class:`framework.jobspec.JobSpec`: its job file, each model
    (labelled ``models[i] (name)``), the data and, for stacking, the training data."""
    inputs: dict[str, Path] = {f"models[{i}] ({m.name})": m.path for i, m in enumerate(spec.models)}
    inputs["data"] = spec.data.path
    for index, source in enumerate(getattr(spec, "sources", ())):
        inputs[f"sources[{index}] ({source.name})"] = source.path
    if spec.stacking is not None:
        inputs["stacking.train"] = spec.stacking.train.path
    return compute_fingerprint(spec.source, inputs)


# Records -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttemptRecord:
    """One Mesos task run for a work item, as last reported."""

    task_id: str
    item_key: str
    agent_id: str | None
    state: str
    reason: str
    message: str
    detail: str
    launched_at: float
    updated_at: float

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_MESOS_STATES


@dataclass(frozen=True)
class ItemRecord:
    """A work item as the journal knows it."""

    key: str
    model: str
    shard: int
    operation: str
    fold: int | None
    state: ItemState
    detail: str
    attempts: tuple[AttemptRecord, ...] = ()


@dataclass(frozen=True)
class ResultRecord:
    """A finished item's result: where it is (``path``: its ``.npy`` file; None: a small result
    kept in the database itself), its sha256 and size, and the task that made it."""

    item_key: str
    task_id: str
    path: Path | None
    sha256: str
    nbytes: int
    recorded_at: float


@dataclass(frozen=True)
class JournalProgress:
    """What ``mesos-ensemble status`` shows: items by state and the framework id."""

    counts: dict[str, int]
    total: int
    attempts: int
    framework_id: str | None
    framework_id_saved_at: float | None
    created_at: float
    updated_at: float | None = None
    job_name: str = ""
    failures: dict[str, str] = field(default_factory=dict)
    completed: str | None = None
    """What the job's end wrote (see :meth:`Journal.mark_completed`), or None while it is unfinished."""

    def summary(self) -> str:
        order = [s.value for s in ItemState]
        parts = [f"{self.counts[s]} {s}" for s in order if self.counts.get(s)]
        return f"{self.counts.get('finished', 0)}/{self.total} items finished ({', '.join(parts) or 'none'}), " \
               f"{self.attempts} attempts"


# The journal ---------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE items (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, shard INTEGER NOT NULL, operation TEXT NOT NULL,
    fold INTEGER, state TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '', updated_at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE attempts (
    task_id TEXT PRIMARY KEY, item_key TEXT NOT NULL REFERENCES items(key), agent_id TEXT,
    state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', message TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '', launched_at REAL NOT NULL, updated_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX attempts_by_item ON attempts(item_key, state);
CREATE TABLE results (
    item_key TEXT PRIMARY KEY REFERENCES items(key), task_id TEXT NOT NULL, path TEXT, data BLOB,
    sha256 TEXT NOT NULL, nbytes INTEGER NOT NULL, recorded_at REAL NOT NULL,
    CHECK ((path IS NULL) != (data IS NULL)));
"""

_SETTLED = (ItemState.FINISHED.value, ItemState.FAILED.value, ItemState.CANCELLED.value)
_RUNNING_TASK_STATES = ("TASK_RUNNING", "TASK_KILLING", "TASK_FINISHED")  # finished: result not yet recorded
_LAUNCHED_TASK_STATES = tuple(sorted(ACTIVE_MESOS_STATES - set(_RUNNING_TASK_STATES)))


def _sql_list(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)  # our own constants, never user input


_REFRESH_ITEM = f"""
UPDATE items SET updated_at = :now, state = CASE
    WHEN EXISTS (SELECT 1 FROM attempts WHERE item_key = :key AND state IN ({_sql_list(_RUNNING_TASK_STATES)}))
        THEN '{ItemState.RUNNING.value}'
    WHEN EXISTS (SELECT 1 FROM attempts WHERE item_key = :key AND state IN ({_sql_list(_LAUNCHED_TASK_STATES)}))
        THEN '{ItemState.LAUNCHED.value}'
    ELSE '{ItemState.PENDING.value}' END
WHERE key = :key AND state NOT IN ({_sql_list(_SETTLED)})
"""


_ResultRow = tuple[str, str, str | None, bytes | None, str, int]
"""A result row to insert: item key, task id, its file (relative to the state directory) or None,
its ``.npy`` bytes when kept in the database, sha256, size in bytes."""
_KEYS_PER_QUERY = 500
"""Item keys looked up in one ``IN (...)`` query (SQLite before 3.32 took at most 999 parameters)."""


def result_file_name(item_key: str) -> str:
    """A file name for ``item_key``'s result: the key percent-quoted (one key, one name; never
    hidden, never a path), or its sha256 if very long."""
    name = urllib.parse.quote(item_key, safe="-_.~")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > 200:
        name = "key-" + sha256_hex(item_key.encode())
    return name + ".npy"


class Journal:
    """The journal of one job in ``state_dir`` (see the module's docstring)."""

    def __init__(self, state_dir: Path, connection: sqlite3.Connection, lock_file: int | None,
                 durability: Durability, writable: bool, blob_limit: int = DEFAULT_BLOB_LIMIT) -> None:
        self.state_dir = state_dir
        self.blob_limit = blob_limit
        self.path = state_dir / DATABASE_NAME
        self.results_dir = state_dir / RESULTS_DIR
        self.durability = durability
        self.writable = writable
        self._db = connection
        self._lock_file = lock_file
        self._lock = threading.Lock()
        self._closed = False
        self._attempts: dict[str, tuple[str, tuple[str, ...]]] = {}
        """task id -> (item key, its last (state, reason, message, detail)): updates are checked
        and compared without a query."""
        self._deferred: dict[str, tuple[tuple[str, ...], float]] = {}
        """Non-terminal updates not written yet, by task id: (values, time)."""

    # Opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, state_dir: Path | str, fingerprint: Fingerprint, fresh: bool = False,
             durability: Durability = "process", blob_limit: int = DEFAULT_BLOB_LIMIT) -> "Journal":
        """Open (or create) the journal of the job ``fingerprint`` describes.

        An existing journal of another fingerprint is refused with :class:`JournalMismatch`
        naming every change, unless ``fresh``, which starts over (deleting its results).
        Results of up to ``blob_limit`` bytes are kept in the database, larger ones as files."""
        if durability not in ("process", "power"):
            raise ValueError(f"durability must be 'process' or 'power', not {durability!r}")
        state_dir = Path(state_dir)
        lock_file = lock_state_dir(state_dir, f"{state_dir}: another mesos-ensemble process is using this journal")
        try:
            if fresh:
                cls._remove(state_dir)
            journal = cls(state_dir, cls._connect(state_dir / DATABASE_NAME, readonly=False), lock_file,
                          durability, writable=True, blob_limit=blob_limit)
        except BaseException:
            os.close(lock_file)
            raise
        try:
            journal._initialise(fingerprint)
            journal._sweep_results_dir()
            journal._load_attempts()
        except BaseException:
            journal.close()
            raise
        return journal

    @classmethod
    def read(cls, state_dir: Path | str) -> "Journal":
        """Open an existing journal read-only (no fingerprint check, no lock): for ``status``."""
        state_dir = Path(state_dir)
        if not (state_dir / DATABASE_NAME).is_file():
            raise JournalError(f"{state_dir}: no journal here ({DATABASE_NAME} missing)")
        journal = cls(state_dir, cls._connect(state_dir / DATABASE_NAME, readonly=True), None, "process", False)
        try:
            journal._check_version()
        except BaseException:
            journal.close()
            raise
        return journal

    @staticmethod
    def exists(state_dir: Path | str) -> bool:
        return (Path(state_dir) / DATABASE_NAME).is_file()

    @staticmethod
    def _remove(state_dir: Path) -> None:
        for suffix in ("", "-wal", "-shm"):
            (state_dir / (DATABASE_NAME + suffix)).unlink(missing_ok=True)
        results = state_dir / RESULTS_DIR
        if results.is_dir():
            for entry in results.iterdir():
                entry.unlink()

    @staticmethod
    def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
        try:
            if readonly:
                connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                             isolation_level=None, check_same_thread=False)
            else:
                connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute("PRAGMA busy_timeout=5000")
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as error:
            raise JournalError(f"{path}: not a usable journal ({error}); --fresh starts over") from error
        return connection

    def _check_version(self) -> int:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise JournalError(f"{self.path}: journal schema version {version}, this mesos-ensemble reads "
                               f"up to {SCHEMA_VERSION}; use a newer mesos-ensemble or --fresh")
        return version

    def _initialise(self, fingerprint: Fingerprint) -> None:
        with self._lock:
            version = self._check_version()
            if version == 0:
                tables = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if tables:
                    raise JournalError(f"{self.path}: not a mesos-ensemble journal; --fresh starts over")
                with self._transaction():  # one transaction: a journal exists whole or not at all
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                    self._set_meta("fingerprint", fingerprint.to_json())
                    self._set_meta("created_at", repr(time.time()))
                return
            try:
                saved = Fingerprint.from_json(self._meta("fingerprint") or "")
            except (ValueError, KeyError, TypeError) as error:
                raise JournalError(f"{self.path}: the journal's job fingerprint is unreadable ({error}); "
                                   "--fresh starts over") from error
            changes = saved.differences(fingerprint)
            if changes:
                raise JournalMismatch(f"{self.state_dir}: the job changed since its journal was written: "
                                      f"{'; '.join(changes)}; --fresh starts over", changes)

    def _sweep_results_dir(self) -> None:
        """Delete temporaries and files no row names (left by a process killed mid-write)."""
        self.results_dir.mkdir(exist_ok=True)
        with self._lock:
            named = {row[0] for row in self._db.execute("SELECT path FROM results WHERE path IS NOT NULL")}
        for entry in self.results_dir.iterdir():
            if f"{RESULTS_DIR}/{entry.name}" not in named:
                log.info("journal: removing %s (not a recorded result)", entry)
                entry.unlink(missing_ok=True)

    # Internals -----------------------------------------------------------------------------
    def _transaction(self) -> "_Transaction":
        """A write transaction; it first writes the deferred non-terminal updates."""
        return _Transaction(self._db, self._apply_deferred)

    def _apply_deferred(self) -> None:
        deferred, self._deferred = self._deferred, {}
        for task_id, (values, at) in deferred.items():
            self._db.execute("UPDATE attempts SET state = ?, reason = ?, message = ?, detail = ?, updated_at = ? "
                             "WHERE task_id = ?", (*values, at, task_id))
            self._refresh_item(self._attempts[task_id][0], at)

    def _flush_deferred(self) -> None:
        """Write the deferred updates now (the lock held): before a read, and at close."""
        if self._deferred and self.writable and not self._closed:
            with self._transaction():
                pass

    def _load_attempts(self) -> None:
        with self._lock:
            self._attempts = {row[0]: (row[1], tuple(row[2:])) for row in self._db.execute(
                "SELECT task_id, item_key, state, reason, message, detail FROM attempts")}

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def _writing(self) -> None:
        if self._closed:
            raise JournalError(f"{self.path}: journal is closed")
        if not self.writable:
            raise JournalError(f"{self.path}: journal was opened read-only")

    def _ensure_item(self, key: str, now: float) -> None:
        """An item never given to :meth:`add_items` is kept with an unknown model and shard."""
        self._ensure_items([key], now)

    def _ensure_items(self, keys: list[str], now: float) -> None:
        """:meth:`_ensure_item` for several keys (each statement once, executemany)."""
        self._db.executemany("INSERT OR IGNORE INTO items(key, model, shard, operation, state, updated_at) "
                             "VALUES (?, '', -1, 'predict', ?, ?)",
                             [(key, ItemState.PENDING.value, now) for key in keys])

    def _refresh_item(self, key: str, now: float) -> None:
        """Derive an unsettled item's state from its attempts: running if one runs (or finished
        without its result recorded yet), launched if one is staging, else pending."""
        self._db.execute(_REFRESH_ITEM, {"key": key, "now": now})

    # Writing (any thread) ------------------------------------------------------------------
    @property
    def framework_id(self) -> str | None:
        """The framework id saved by :meth:`save_framework_id`, if any."""
        with self._lock:
            return self._meta("framework_id")

    @property
    def framework_id_saved_at(self) -> float | None:
        with self._lock:
            saved = self._meta("framework_id_saved_at")
        return float(saved) if saved is not None else None

    def save_framework_id(self, framework_id: str) -> None:
        """Keep the framework id the master assigned (call it from ``registered``)."""
        with self._lock:
            self._writing()
            with self._transaction():
                self._set_meta("framework_id", framework_id)
                self._set_meta("framework_id_saved_at", repr(time.time()))

    def mark_completed(self, description: str) -> None:
        """The whole job ended and wrote its output (``description`` says what, e.g. the output's
        path): a later ``run`` says so and rewrites nothing."""
        with self._lock:
            self._writing()
            with self._transaction():
                self._set_meta("completed", description)

    @property
    def completed(self) -> str | None:
        """What :meth:`mark_completed` recorded, or None while the job is unfinished."""
        with self._lock:
            return self._meta("completed")

    def note(self, key: str) -> str | None:
        """A value kept with :meth:`set_note` (e.g. the work directory of the last run)."""
        with self._lock:
            return self._meta(f"note.{key}")

    def set_note(self, key: str, value: str | None) -> None:
        """Keep (or, with None, drop) a small value for the next run."""
        with self._lock:
            self._writing()
            with self._transaction():
                if value is None:
                    self._db.execute("DELETE FROM meta WHERE key = ?", (f"note.{key}",))
                else:
                    self._set_meta(f"note.{key}", value)

    def add_items(self, items: Iterable[WorkItem]) -> None:
        """Register work items (pending); items already journaled keep what the journal knows."""
        now = time.time()
        rows = [(i.key, i.model, i.shard, i.operation, i.fold, ItemState.PENDING.value, now) for i in items]
        with self._lock:
            self._writing()
            with self._transaction():
                self._db.executemany("INSERT OR IGNORE INTO items(key, model, shard, operation, fold, state, "
                                     "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def record_launch(self, item_key: str, task_id: str, agent_id: str | None) -> None:
        """A task was launched (or is about to be) for ``item_key`` on ``agent_id``; committed
        before returning (record it before the launch goes to Mesos)."""
        self.record_launches([(item_key, task_id, agent_id)])

    def record_launches(self, launches: Iterable[tuple[str, str, str | None]]) -> None:
        """Several ``(item key, task id, agent id)`` launches (one offer round) in one commit."""
        now = time.time()
        launches = list(launches)
        with self._lock:
            self._writing()
            with self._transaction():  # each statement once for the round's launches (executemany)
                self._ensure_items([item_key for item_key, _task_id, _agent_id in launches], now)
                self._db.executemany("INSERT INTO attempts(task_id, item_key, agent_id, state, launched_at, "
                                     "updated_at) VALUES (?, ?, ?, 'TASK_STAGING', ?, ?) ON CONFLICT(task_id) DO "
                                     "UPDATE SET agent_id = excluded.agent_id, updated_at = excluded.updated_at",
                                     [(task_id, item_key, agent_id, now, now)
                                      for item_key, task_id, agent_id in launches])
                self._db.executemany(_REFRESH_ITEM, [{"key": item_key, "now": now}
                                                     for item_key, _task_id, _agent_id in launches])
            for item_key, task_id, _agent_id in launches:
                self._attempts.setdefault(task_id, (item_key, ("TASK_STAGING", "", "", "")))

    def record_update(self, task_id: str, state: str, reason: str = "", message: str = "",
                      detail: str = "") -> bool:
        """A status update for ``task_id`` (``detail``: e.g. the executor's traceback of a member
        error).  Returns False, recording nothing, for a task the journal never launched.

        A terminal update is committed before returning.  A non-terminal one (TASK_RUNNING...)
        is written with the next commit, or before the next read or :meth:`close`, saving a
        commit per task: a crash loses at most such states, which a reconciliation with Mesos
        restores.  An update that changes nothing (TASK_FINISHED after :meth:`record_result`,
        an update Mesos resends) is not written again."""
        now = time.time()
        values = (state, reason or "", message or "", detail or "")
        with self._lock:
            self._writing()
            known = self._attempts.get(task_id)
            if known is None:
                return False
            item_key, last = known
            if last == values or (state == "TASK_FINISHED" == last[0] and not any(values[1:])):
                return True
            self._attempts[task_id] = (item_key, values)
            if state in ACTIVE_MESOS_STATES:
                self._deferred[task_id] = (values, now)
                return True
            with self._transaction():
                self._db.execute("UPDATE attempts SET state = ?, reason = ?, message = ?, detail = ?, "
                                 "updated_at = ? WHERE task_id = ?",
                                 (*values, now, task_id))
                self._refresh_item(item_key, now)
            return True

    def record_result(self, item_key: str, task_id: str, result: bytes | np.ndarray) -> ResultRecord:
        """Keep ``item_key``'s result (``.npy`` bytes, or an array) and mark the item finished.

        Returns once the result is durable (see the module's docstring), so the caller may
        acknowledge the Mesos update after it.  An item already finished keeps its first result
        (the first attempt to finish wins) and that record is returned."""
        npy = result if isinstance(result, bytes) else array_to_npy(result)
        digest = sha256_hex(npy)
        self._writing()
        if len(npy) <= self.blob_limit:
            return self._record_result_row(item_key, task_id, npy, digest, None)
        existing = self._result_row(item_key)
        if existing is not None:  # do not write a file for nothing
            return existing
        name = result_file_name(item_key)
        final = self.results_dir / name
        temporary = self.results_dir / f".{name}.{uuid.uuid4().hex[:12]}{TEMPORARY_SUFFIX}"
        power = self.durability == "power"
        _write_file(temporary, npy, fsync=power)
        try:
            return self._record_result_row(item_key, task_id, npy, digest, (temporary, final))
        finally:
            temporary.unlink(missing_ok=True)  # only left if another thread won the race

    def _record_result_row(self, item_key: str, task_id: str, npy: bytes, digest: str,
                           files: tuple[Path, Path] | None) -> ResultRecord:
        """Commit the result's row (the bytes themselves, or the file ``files[0]`` renamed to
        ``files[1]`` first); the attempt is marked TASK_FINISHED and the item FINISHED with it."""
        now = time.time()
        power = self.durability == "power"
        with self._lock:
            self._writing()
            existing = self._result_row_locked(item_key)
            if existing is not None:  # another thread recorded it meanwhile
                return existing
            if files is not None:
                os.replace(*files)
                if power:
                    _fsync_directory(self.results_dir)
            if power:
                self._db.execute("PRAGMA synchronous=FULL")
            relative = f"{RESULTS_DIR}/{files[1].name}" if files else None
            try:
                with self._transaction():
                    self._insert_result(item_key, task_id, relative, None if files else npy, digest, len(npy), now)
                self._finished_attempt(item_key, task_id)
            finally:
                if power:
                    self._db.execute("PRAGMA synchronous=NORMAL")
        return ResultRecord(item_key, task_id, files[1] if files else None, digest, len(npy), now)

    def record_results(self, results: Iterable[tuple[str, str, bytes, str | None]]) -> list[ResultRecord]:
        """:meth:`record_result` for several results (item key, task id, ``.npy`` bytes, their
        sha256 if already known), those kept in the database committed in ONE transaction (a
        commit per result was most of a small task's journal cost); returns once all are durable."""
        records: list[ResultRecord] = []
        inline: list[tuple[str, str, bytes, str]] = []
        for item_key, task_id, npy, digest in results:
            if len(npy) > self.blob_limit:
                records.append(self.record_result(item_key, task_id, npy))
            else:
                inline.append((item_key, task_id, npy, digest or sha256_hex(npy)))
        if not inline:
            return records
        now = time.time()
        power = self.durability == "power"
        with self._lock:
            self._writing()
            if power:
                self._db.execute("PRAGMA synchronous=FULL")
            try:
                with self._transaction():
                    existing = self._result_rows_locked([item_key for item_key, _task_id, _npy, _digest in inline])
                    inserted: list[_ResultRow] = []
                    for item_key, task_id, npy, digest in inline:
                        if item_key in existing:  # the first attempt to finish wins
                            records.append(existing[item_key])
                            continue
                        record = existing[item_key] = ResultRecord(item_key, task_id, None, digest, len(npy), now)
                        records.append(record)
                        inserted.append((item_key, task_id, None, npy, digest, len(npy)))
                    self._insert_results(inserted, now)
                for item_key, task_id, *_rest in inserted:
                    self._finished_attempt(item_key, task_id)
            finally:
                if power:
                    self._db.execute("PRAGMA synchronous=NORMAL")
        return records

    def _insert_result(self, item_key: str, task_id: str, relative: str | None, data: bytes | None, digest: str,
                       nbytes: int, now: float) -> None:
        """In a transaction, the lock held: the result's row, its item FINISHED, its attempt TASK_FINISHED."""
        self._insert_results([(item_key, task_id, relative, data, digest, nbytes)], now)

    def _insert_results(self, results: list[_ResultRow], now: float) -> None:
        """:meth:`_insert_result` for several results, each statement once for all of them (executemany)."""
        self._ensure_items([item_key for item_key, *_rest in results], now)
        self._db.executemany("INSERT INTO results(item_key, task_id, path, data, sha256, nbytes, recorded_at) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)", [(*row, now) for row in results])
        self._db.executemany("UPDATE items SET state = ?, detail = '', updated_at = ? WHERE key = ?",
                             [(ItemState.FINISHED.value, now, item_key) for item_key, *_rest in results])
        self._db.executemany("UPDATE attempts SET state = 'TASK_FINISHED', updated_at = ? "
                             "WHERE task_id = ? AND item_key = ?",
                             [(now, task_id, item_key) for item_key, task_id, *_rest in results])

    def _finished_attempt(self, item_key: str, task_id: str) -> None:
        """After the commit: the attempt that delivered ``item_key``'s result is TASK_FINISHED."""
        if self._attempts.get(task_id, ("",))[0] == item_key:
            self._attempts[task_id] = (item_key, ("TASK_FINISHED", "", "", ""))

    def mark_item(self, item_key: str, state: ItemState, detail: str = "") -> None:
        """Set an item's state where the tracker decides it: FAILED (gave up; ``detail`` says
        why), CANCELLED (its member was dropped) or PENDING (to be launched again).  A FINISHED
        item cannot be marked: its result is kept until :meth:`forget_result`."""
        if state is ItemState.FINISHED:
            raise ValueError("an item becomes finished through record_result")
        now = time.time()
        with self._lock:
            self._writing()
            with self._transaction():
                self._ensure_item(item_key, now)
                row = self._db.execute("SELECT state FROM items WHERE key = ?", (item_key,)).fetchone()
                if row[0] == ItemState.FINISHED.value:
                    return
                self._db.execute("UPDATE items SET state = ?, detail = ?, updated_at = ? WHERE key = ?",
                                 (state.value, detail, now, item_key))
                if state in (ItemState.PENDING, ItemState.LAUNCHED, ItemState.RUNNING):
                    self._refresh_item(item_key, now)

    def forget_result(self, item_key: str, why: str = "") -> None:
        """Drop ``item_key``'s result (corrupt or unusable): the item is pending again."""
        now = time.time()
        with self._lock:
            self._writing()
            row = self._db.execute("SELECT path FROM results WHERE item_key = ?", (item_key,)).fetchone()
            if row is None:
                return
            with self._transaction():
                self._db.execute("DELETE FROM results WHERE item_key = ?", (item_key,))
                self._db.execute("UPDATE items SET state = ?, detail = ?, updated_at = ? WHERE key = ?",
                                 (ItemState.PENDING.value, why, now, item_key))
                self._refresh_item(item_key, now)
            if row[0] is not None:
                (self.state_dir / row[0]).unlink(missing_ok=True)

    # Reading (any thread) ------------------------------------------------------------------
    def _result_row(self, item_key: str) -> ResultRecord | None:
        with self._lock:
            return self._result_row_locked(item_key)

    def _result_row_locked(self, item_key: str) -> ResultRecord | None:
        return self._result_rows_locked([item_key]).get(item_key)

    def _result_rows_locked(self, item_keys: list[str]) -> dict[str, ResultRecord]:
        """:meth:`_result_row_locked` for several items: those that have a result, by key."""
        found: dict[str, ResultRecord] = {}
        for start in range(0, len(item_keys), _KEYS_PER_QUERY):
            chunk = item_keys[start:start + _KEYS_PER_QUERY]
            rows = self._db.execute("SELECT item_key, task_id, path, sha256, nbytes, recorded_at FROM results "
                                    f"WHERE item_key IN ({', '.join('?' * len(chunk))})", chunk).fetchall()
            found.update((row[0], self._result_record(row)) for row in rows)
        return found

    def _result_record(self, row: tuple[Any, ...]) -> ResultRecord:
        path = self.state_dir / row[2] if row[2] is not None else None
        return ResultRecord(row[0], row[1], path, row[3], int(row[4]), float(row[5]))

    def _result_bytes(self, record: ResultRecord) -> bytes:
        """The stored bytes of ``record`` (OSError if its file cannot be read; KeyError if its
        row is gone)."""
        if record.path is not None:
            return record.path.read_bytes()
        with self._lock:
            row = self._db.execute("SELECT data FROM results WHERE item_key = ?", (record.item_key,)).fetchone()
        if row is None or row[0] is None:
            raise KeyError(record.item_key)
        return bytes(row[0])

    def _check(self, record: ResultRecord) -> str | None:
        """None if the stored result matches its record, else what is wrong with it."""
        try:
            data = self._result_bytes(record)
        except (FileNotFoundError, KeyError):
            return "missing"
        except OSError as error:
            return f"unreadable ({error.strerror})"
        except sqlite3.Error as error:
            return f"unreadable ({error})"
        if len(data) != record.nbytes:
            return f"has {len(data)} bytes, expected {record.nbytes}"
        if hashlib.sha256(data).hexdigest() != record.sha256:
            return "fails its sha256 check"
        return None

    def finished(self, verify: bool = True) -> dict[str, ResultRecord]:
        """Every finished item's result, by item key.  With ``verify`` each file is read and its
        sha256 checked: an item whose file is missing or damaged is left out (and, in a writable
        journal, forgotten, so that it is pending again)."""
        with self._lock:
            rows = self._db.execute("SELECT item_key, task_id, path, sha256, nbytes, recorded_at FROM results "
                                    "ORDER BY item_key").fetchall()
        records = {row[0]: self._result_record(row) for row in rows}
        if not verify:
            return records
        good: dict[str, ResultRecord] = {}
        for key, record in records.items():
            problem = self._check(record)
            if problem is None:
                good[key] = record
                continue
            log.warning("journal: result of %s is not usable (%s); it will be computed again", key, problem)
            if self.writable and not self._closed:
                self.forget_result(key, f"stored result {problem}")
        return good

    def load_result(self, item_key: str) -> np.ndarray:
        """The finished result of ``item_key``, checked against its sha256 (JournalError if the
        item is not finished or its file is missing or damaged)."""
        record = self._result_row(item_key)
        if record is None:
            raise JournalError(f"{self.path}: item {item_key} has no result")
        where = record.path or self.path
        try:
            npy = self._result_bytes(record)
        except KeyError:
            raise JournalError(f"{self.path}: item {item_key} has no result") from None
        except (OSError, sqlite3.Error) as error:
            raise JournalError(f"{where}: result of {item_key} unreadable: "
                               f"{getattr(error, 'strerror', None) or error}") from error
        if sha256_hex(npy) != record.sha256 or len(npy) != record.nbytes:
            raise JournalError(f"{where}: result of {item_key} fails its sha256 check")
        return npy_to_array(npy)

    def items(self) -> dict[str, ItemRecord]:
        """Every journaled item with its attempts (oldest first)."""
        with self._lock:
            self._flush_deferred()
            item_rows = self._db.execute("SELECT key, model, shard, operation, fold, state, detail FROM items "
                                         "ORDER BY key").fetchall()
            attempt_rows = self._db.execute(
                "SELECT task_id, item_key, agent_id, state, reason, message, detail, launched_at, updated_at "
                "FROM attempts ORDER BY launched_at, task_id").fetchall()
        attempts: dict[str, list[AttemptRecord]] = {}
        for row in attempt_rows:
            attempts.setdefault(row[1], []).append(AttemptRecord(*row))
        return {r[0]: ItemRecord(r[0], r[1], int(r[2]), r[3], r[4], ItemState(r[5]), r[6],
                                 tuple(attempts.get(r[0], ()))) for r in item_rows}

    def active_attempts(self) -> list[AttemptRecord]:
        """Attempts last known to be staging, starting, running or being killed: the tasks a
        resumed job reconciles and adopts."""
        placeholders = ",".join("?" * len(ACTIVE_MESOS_STATES))
        with self._lock:
            self._flush_deferred()
            rows = self._db.execute(
                "SELECT task_id, item_key, agent_id, state, reason, message, detail, launched_at, updated_at "
                f"FROM attempts WHERE state IN ({placeholders}) ORDER BY launched_at, task_id",
                tuple(sorted(ACTIVE_MESOS_STATES))).fetchall()
        return [AttemptRecord(*row) for row in rows]

    def attempt_count(self, item_key: str) -> int:
        """How many tasks were launched for ``item_key`` (a resumed tracker numbers on from it,
        so a task id is never reused)."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM attempts WHERE item_key = ?",
                                        (item_key,)).fetchone()[0])

    def progress(self) -> JournalProgress:
        """Items by state, attempts and the framework id (for ``mesos-ensemble status``)."""
        with self._lock:
            self._flush_deferred()
            counts = {s: int(n) for s, n in self._db.execute("SELECT state, count(*) FROM items GROUP BY state")}
            attempts = int(self._db.execute("SELECT count(*) FROM attempts").fetchone()[0])
            updated = self._db.execute("SELECT max(updated_at) FROM items").fetchone()[0]
            failures = {k: d for k, d in self._db.execute("SELECT key, detail FROM items WHERE state = ?",
                                                          (ItemState.FAILED.value,))}
            framework_id, saved_at = self._meta("framework_id"), self._meta("framework_id_saved_at")
            created = self._meta("created_at")
            fingerprint = self._meta("fingerprint")
            completed = self._meta("completed")
        return JournalProgress(
            counts=counts, total=sum(counts.values()), attempts=attempts, framework_id=framework_id,
            framework_id_saved_at=float(saved_at) if saved_at else None,
            created_at=float(created) if created else 0.0, updated_at=updated,
            job_name=Fingerprint.from_json(fingerprint).job_name if fingerprint else "", failures=failures,
            completed=completed)

    def fingerprint(self) -> Fingerprint:
        with self._lock:
            return Fingerprint.from_json(self._meta("fingerprint") or "")

    # Closing -------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the database and release the lock (idempotent).  The journal stays on disk."""
        with self._lock:
            if self._closed:
                return
            try:
                self._flush_deferred()
            finally:
                self._closed = True
                self._db.close()
            if self._lock_file is not None:
                os.close(self._lock_file)  # releases the flock
                self._lock_file = None

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Transaction:
    """BEGIN IMMEDIATE, ``on_begin()``, ... COMMIT, or ROLLBACK on an exception."""

    def __init__(self, connection: sqlite3.Connection, on_begin: Callable[[], None]) -> None:
        self.db = connection
        self.on_begin = on_begin

    def __enter__(self) -> None:
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
            self.on_begin()

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if not self.db.in_transaction:
            return
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _write_file(path: Path, data: bytes, fsync: bool) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view):]
        if fsync:
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
