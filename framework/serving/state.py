"""A deployment's journal: what ``mesos-ensemble serve`` must know to come back after a restart.

The state directory (``--state-dir``, by default ``JOB.serve-state/`` beside the job file) holds
``serve.sqlite3`` (stdlib :mod:`sqlite3`, WAL, ``synchronous=NORMAL``, schema version in ``PRAGMA
user_version``: the conventions of :mod:`framework.journal`), ``lock`` (an advisory ``flock`` held
by the one live ``serve`` of this directory, released by the kernel when it dies) and
``serve.json`` (the live process's pid and gateway address, for ``serve --reload`` and
``status``; written then renamed, removed on a clean exit).

The database keeps the framework id (so a restarted ``serve`` re-subscribes with it and its
replicas are not torn down) and every replica launched and not yet known to be gone: Mesos task
id, member, agent id and hostname, port, the model's sha256, and the last state seen.  A
replica is recorded *before* its launch is sent, so a ``serve`` killed at any point leaves no
running replica it does not know of; a terminal state removes the row.

Schema 2 adds what people watching the deployment read (``mesos-ensemble status``, the status
page, the report): ``history`` (the sampled points of :mod:`framework.serving.history`, per tier
of resolution, pruned to each tier's retention), ``events`` (scaling, re-packs, updates, with
their reasons; the latest :data:`EVENTS_KEPT`) and the ``deployment`` snapshot in ``meta`` (the
members and replicas as last sampled).

Schema 3 adds ``executors``: every executor of ours believed to run (agent id, executor id, the
agent's hostname, ``running`` or ``idle`` with the wall-clock time since when it has had no
replica).  It is recorded with the first replica launched into it (same transaction, before the
launch is sent) and for every executor of an adopted replica, marked idle when its last replica
ends, and removed once its ``SHUTDOWN`` is sent or it is known gone (its agent lost, it exited).
A ``serve`` killed while an executor waits idle for its ``SHUTDOWN`` thus leaves a row the next
``serve`` reads: it re-adopts the executor and shuts it down once its idle time is up.  A schema 2
journal gains the table filled from its replicas' executors.

Schema 4 adds each executor's ``info``: the ExecutorInfo it was launched with (JSON), so that a
restarted ``serve`` launches new replicas into an executor it re-adopted (Mesos takes a task into
a running executor only with the ExecutorInfo that started it).  Rows of an earlier schema have
none: such an executor is not launched into again, and is shut down once idle.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from framework.errors import FrameworkError
from framework.journal import LOCK_NAME, JournalError, lock_state_dir

SCHEMA_VERSION = 4
DATABASE_NAME = "serve.sqlite3"
LIVE_NAME = "serve.json"
EVENTS_KEPT = 1000


def default_serve_state_dir(job_file: Path) -> Path:
    """``jobs/demo.toml`` -> ``jobs/demo.serve-state/`` (apart from ``run``'s ``demo.state/``)."""
    return job_file.with_name(job_file.stem + ".serve-state")


class ServeStateError(FrameworkError):
    """The state directory cannot be used (busy, corrupt, newer schema)."""


@dataclass(frozen=True)
class ReplicaRecord:
    """One replica as journaled."""

    task_id: str
    member: str
    agent_id: str
    hostname: str
    port: int
    sha256: str
    state: str
    """``launching`` (recorded, launch sent), or the last Mesos state seen (TASK_RUNNING...), or
    ``draining`` (a kill sent to scale down or roll)."""
    executor_id: str = ""
    updated_at: float = 0.0


@dataclass(frozen=True)
class ExecutorRecord:
    """One executor of ours as journaled (schema 3; its ``info`` schema 4)."""

    agent_id: str
    executor_id: str
    hostname: str = ""
    idle_since: float | None = None
    """Wall-clock time (``time.time()``) since which it has had no replica; None while it has one."""
    updated_at: float = 0.0
    info: str | None = None
    """The ExecutorInfo it was launched with, as JSON (schema 4; None: not known)."""

    @property
    def state(self) -> str:
        return "running" if self.idle_since is None else "idle"


class ServeState:
    """The journal of one deployment (see the module docstring).  Thread-safe."""

    def __init__(self, state_dir: Path, connection: sqlite3.Connection, lock_file: int | None) -> None:
        self.state_dir = state_dir
        self._db = connection
        self._lock_file = lock_file
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, state_dir: Path | str) -> "ServeState":
        """Open (or create) the deployment journal for writing; refuse one another live ``serve`` holds."""
        state_dir = Path(state_dir)
        try:
            lock_file = lock_state_dir(state_dir, f"{state_dir}: another mesos-ensemble serve is using this state "
                                                  f"directory (serve --reload --state-dir {state_dir} signals it)")
        except JournalError as error:
            raise ServeStateError(str(error)) from None
        try:
            state = cls(state_dir, _connect(state_dir / DATABASE_NAME, readonly=False), lock_file)
            state._initialise()
        except BaseException:
            os.close(lock_file)
            raise
        return state

    @classmethod
    def read(cls, state_dir: Path | str) -> "ServeState":
        """Open an existing deployment journal read-only (no lock)."""
        state_dir = Path(state_dir)
        if not (state_dir / DATABASE_NAME).is_file():
            raise ServeStateError(f"{state_dir}: no deployment journal here ({DATABASE_NAME} missing)")
        state = cls(state_dir, _connect(state_dir / DATABASE_NAME, readonly=True), None)
        state._check_version()
        return state

    def _check_version(self) -> int:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise ServeStateError(f"{self.state_dir / DATABASE_NAME}: schema version {version}, this "
                                  f"mesos-ensemble reads up to {SCHEMA_VERSION}")
        return version

    def _initialise(self) -> None:
        with self._lock:
            version = self._check_version()
            if version == 0:
                self._db.executescript("""
                    BEGIN;
                    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                    CREATE TABLE IF NOT EXISTS replicas (
                        task_id TEXT PRIMARY KEY, member TEXT NOT NULL, agent_id TEXT NOT NULL,
                        hostname TEXT NOT NULL, port INTEGER NOT NULL, sha256 TEXT NOT NULL,
                        state TEXT NOT NULL, executor_id TEXT NOT NULL DEFAULT '',
                        updated_at REAL NOT NULL);
                    COMMIT;""")
            if version < 2:
                self._db.executescript("""
                    BEGIN;
                    CREATE TABLE IF NOT EXISTS history (
                        tier INTEGER NOT NULL, t REAL NOT NULL, point TEXT NOT NULL, PRIMARY KEY (tier, t));
                    CREATE TABLE IF NOT EXISTS events (
                        id INTEGER PRIMARY KEY AUTOINCREMENT, t REAL NOT NULL, text TEXT NOT NULL);
                    PRAGMA user_version=2;
                    COMMIT;""")
            if version < 3:
                # The executors an earlier schema knew only through its replicas' rows.
                self._db.executescript("""
                    BEGIN;
                    CREATE TABLE IF NOT EXISTS executors (
                        agent_id TEXT NOT NULL, executor_id TEXT NOT NULL, hostname TEXT NOT NULL DEFAULT '',
                        state TEXT NOT NULL, idle_since REAL, updated_at REAL NOT NULL,
                        PRIMARY KEY (agent_id, executor_id));
                    INSERT OR IGNORE INTO executors (agent_id, executor_id, hostname, state, idle_since, updated_at)
                        SELECT agent_id, executor_id, max(hostname), 'running', NULL, max(updated_at)
                        FROM replicas WHERE executor_id != '' GROUP BY agent_id, executor_id;
                    PRAGMA user_version=3;
                    COMMIT;""")
            if version < 4:
                self._db.executescript(f"""
                    BEGIN;
                    ALTER TABLE executors ADD COLUMN info TEXT;
                    PRAGMA user_version={SCHEMA_VERSION};
                    COMMIT;""")

    # framework id ------------------------------------------------------------------------
    @property
    def framework_id(self) -> str | None:
        return self._meta("framework_id") or None

    def save_framework_id(self, framework_id: str) -> None:
        """Keep the framework id (``""`` forgets it: the next ``serve`` subscribes anew)."""
        self._set_meta("framework_id", framework_id)

    def _meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    # replicas ----------------------------------------------------------------------------
    def record_launches(self, replicas: Iterable[ReplicaRecord], executors: Iterable[ExecutorRecord] = ()) -> None:
        """Record replicas about to be launched and the executors they go to (one transaction),
        before the launch is sent."""
        now = time.time()
        rows = [(r.task_id, r.member, r.agent_id, r.hostname, r.port, r.sha256, r.state, r.executor_id, now)
                for r in replicas]
        executor_rows = [(e.agent_id, e.executor_id, e.hostname, e.state, e.idle_since, now, e.info)
                         for e in executors]
        if not rows and not executor_rows:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO replicas VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.executemany(_UPSERT_EXECUTOR, executor_rows)
            self._db.execute("COMMIT")

    def set_state(self, task_id: str, state: str) -> None:
        with self._lock:
            self._db.execute("UPDATE replicas SET state = ?, updated_at = ? WHERE task_id = ?",
                             (state, time.time(), task_id))

    def remove(self, task_id: str) -> None:
        """The replica is gone (a terminal update)."""
        with self._lock:
            self._db.execute("DELETE FROM replicas WHERE task_id = ?", (task_id,))

    def replicas(self) -> list[ReplicaRecord]:
        with self._lock:
            rows = self._db.execute("SELECT task_id, member, agent_id, hostname, port, sha256, state, executor_id, "
                                    "updated_at FROM replicas ORDER BY task_id").fetchall()
        return [ReplicaRecord(*row) for row in rows]

    def forget_tasks(self) -> None:
        """Forget every replica and executor (their framework is gone: torn down, or its cluster
        was the embedded one of the ``serve`` that died)."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM replicas")
            self._db.execute("DELETE FROM executors")
            self._db.execute("COMMIT")

    # executors ---------------------------------------------------------------------------
    def record_executors(self, executors: Iterable[ExecutorRecord]) -> None:
        """Record (or update) executors of ours, one transaction."""
        now = time.time()
        rows = [(e.agent_id, e.executor_id, e.hostname, e.state, e.idle_since, now, e.info) for e in executors]
        if rows:
            with self._lock:
                self._db.execute("BEGIN")
                self._db.executemany(_UPSERT_EXECUTOR, rows)
                self._db.execute("COMMIT")

    def set_executor_idle(self, agent_id: str, executor_id: str, idle_since: float | None) -> None:
        """Since when (wall clock) the executor has had no replica; None: it has one again."""
        with self._lock:
            self._db.execute("UPDATE executors SET state = ?, idle_since = ?, updated_at = ? "
                             "WHERE agent_id = ? AND executor_id = ?",
                             ("running" if idle_since is None else "idle", idle_since, time.time(), agent_id,
                              executor_id))

    def remove_executor(self, agent_id: str, executor_id: str) -> None:
        """The executor is shut down (its ``SHUTDOWN`` sent) or known gone."""
        with self._lock:
            self._db.execute("DELETE FROM executors WHERE agent_id = ? AND executor_id = ?", (agent_id, executor_id))

    def executors(self) -> list[ExecutorRecord]:
        with self._lock:
            if not self._has("executors"):  # a schema 2 journal read-only: its replicas tell
                rows = self._db.execute("SELECT agent_id, executor_id, max(hostname), NULL, max(updated_at), NULL "
                                        "FROM replicas WHERE executor_id != '' GROUP BY agent_id, executor_id "
                                        "ORDER BY agent_id, executor_id").fetchall()
            else:
                columns = {str(row[1]) for row in self._db.execute("PRAGMA table_info(executors)")}
                info = "info" if "info" in columns else "NULL"  # a schema 3 journal read-only has none
                rows = self._db.execute(f"SELECT agent_id, executor_id, hostname, idle_since, updated_at, {info} "
                                        "FROM executors ORDER BY agent_id, executor_id").fetchall()
        return [ExecutorRecord(str(a), str(e), str(h), None if idle is None else float(idle), float(at),
                               None if info is None else str(info))
                for a, e, h, idle, at, info in rows]

    # what people watching read: history, events, snapshot ----------------------------------
    def _has(self, table: str) -> bool:
        """Whether the database has ``table`` (a schema 1 journal read-only has no history)."""
        return self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                (table,)).fetchone() is not None

    def add_points(self, points: Iterable[tuple[int, float, str]]) -> None:
        """Store points, each (tier, time, its JSON), one transaction (a point at the same tier
        and time replaces the earlier one)."""
        rows = list(points)
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO history (tier, t, point) VALUES (?, ?, ?)", rows)
            self._db.execute("COMMIT")

    def points(self, tier: int, start: float = float("-inf"), end: float = float("inf")) -> list[str]:
        """The JSON of the points of ``tier`` with ``start <= t < end``, oldest first."""
        with self._lock:
            if not self._has("history"):
                return []
            rows = self._db.execute("SELECT point FROM history WHERE tier = ? AND t >= ? AND t < ? ORDER BY t",
                                    (tier, start, end)).fetchall()
        return [str(row[0]) for row in rows]

    def last_point_time(self, tier: int) -> float | None:
        with self._lock:
            if not self._has("history"):
                return None
            row = self._db.execute("SELECT max(t) FROM history WHERE tier = ?", (tier,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def prune(self, cutoffs: Iterable[tuple[int, float]]) -> None:
        """Drop each ``(tier, before)``'s points older than ``before``, and all but the latest
        :data:`EVENTS_KEPT` events."""
        with self._lock:
            self._db.execute("BEGIN")
            for tier, before in cutoffs:
                self._db.execute("DELETE FROM history WHERE tier = ? AND t < ?", (tier, before))
            self._db.execute("DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?", (EVENTS_KEPT,))
            self._db.execute("COMMIT")

    def add_events(self, events: Iterable[tuple[float, str]]) -> None:
        rows = list(events)
        if rows:
            with self._lock:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT INTO events (t, text) VALUES (?, ?)", rows)
                self._db.execute("COMMIT")

    def events(self, limit: int = 50) -> list[tuple[float, str]]:
        """The latest ``limit`` events (time, text), oldest first."""
        with self._lock:
            if not self._has("events"):
                return []
            rows = self._db.execute("SELECT t, text FROM events ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [(float(t), str(text)) for t, text in reversed(rows)]

    def save_snapshot(self, snapshot: dict[str, Any]) -> None:
        """The deployment as last sampled (members, replicas with agent and price), as JSON."""
        self._set_meta("deployment", json.dumps(snapshot))

    def snapshot(self) -> dict[str, Any]:
        text = self._meta("deployment")
        try:
            document = json.loads(text) if text else {}
        except ValueError:
            return {}
        return document if isinstance(document, dict) else {}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()
            if self._lock_file is not None:
                os.close(self._lock_file)

    def __enter__(self) -> "ServeState":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_UPSERT_EXECUTOR = ("INSERT INTO executors (agent_id, executor_id, hostname, state, idle_since, updated_at, info) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(agent_id, executor_id) DO UPDATE SET "
                    "hostname = excluded.hostname, state = excluded.state, idle_since = excluded.idle_since, "
                    "updated_at = excluded.updated_at, info = coalesce(excluded.info, executors.info)")


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    try:
        if readonly:
            connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                         check_same_thread=False)
        else:
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=5000")
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as error:
        raise ServeStateError(f"{path}: not a usable deployment journal ({error})") from error
    return connection


# The live process: pid and gateway address -----------------------------------------------------
def write_live(state_dir: Path, pid: int, url: str, job: str, status_url: str | None = None) -> None:
    """Say where the running ``serve`` is (``serve --reload`` signals this pid; ``status`` shows
    its status page's address)."""
    target = state_dir / LIVE_NAME
    temporary = target.with_name(f".{LIVE_NAME}.{os.getpid()}.tmp")
    document: dict[str, Any] = {"pid": pid, "url": url, "job": job}
    if status_url:
        document["status_url"] = status_url
    temporary.write_text(json.dumps(document) + "\n")
    os.replace(temporary, target)


def read_live(state_dir: Path) -> dict[str, Any] | None:
    """The running ``serve``'s pid, url and job, if its state directory is locked by a live process."""
    try:
        document = json.loads((state_dir / LIVE_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or not isinstance(document.get("pid"), int) or not _locked(state_dir):
        return None
    return document


def remove_live(state_dir: Path) -> None:
    (state_dir / LIVE_NAME).unlink(missing_ok=True)


def _locked(state_dir: Path) -> bool:
    """Whether a live process holds the state directory's lock."""
    try:
        handle = os.open(state_dir / LOCK_NAME, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(handle)
    return False
