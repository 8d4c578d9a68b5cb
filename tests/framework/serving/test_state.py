"""The deployment journal's executors (schema 3): recorded with their replicas' launch, marked
idle, removed once shut down; a schema 2 journal is upgraded with the executors its replicas
name, and read as such before it is."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from framework.serving.state import SCHEMA_VERSION, ExecutorRecord, ReplicaRecord, ServeState, ServeStateError


def test_executors_are_recorded_with_their_launch_marked_idle_and_removed(tmp_path: Path) -> None:
    with ServeState.open(tmp_path / "state") as state:
        state.record_launches([ReplicaRecord("linear.r1", "linear", "a1", "h1", 31000, "ab", "launching",
                                             "ensemble.g0")], [ExecutorRecord("a1", "ensemble.g0", "h1")])
        [executor] = state.executors()
        assert (executor.agent_id, executor.executor_id, executor.hostname, executor.state) == \
            ("a1", "ensemble.g0", "h1", "running")
        state.remove("linear.r1")
        state.set_executor_idle("a1", "ensemble.g0", 1234.5)
        [idle] = state.executors()
        assert idle.state == "idle" and idle.idle_since == 1234.5
        # A replica launched into it again: it runs again (the launch's upsert clears idle_since).
        state.record_launches([], [ExecutorRecord("a1", "ensemble.g0", "h1")])
        assert [e.idle_since for e in state.executors()] == [None]
        state.record_executors([ExecutorRecord("a2", "linear.g7", "h2", 99.0)])
        assert [(e.agent_id, e.state) for e in state.executors()] == [("a1", "running"), ("a2", "idle")]
        state.remove_executor("a1", "ensemble.g0")
        assert [e.executor_id for e in state.executors()] == ["linear.g7"]
    with ServeState.read(tmp_path / "state") as journal:  # what a restarted serve reads
        assert journal.executors() == [ExecutorRecord("a2", "linear.g7", "h2", 99.0, journal.executors()[0].updated_at)]
        state_dir = journal.state_dir
    with ServeState.open(state_dir) as state:
        state.forget_tasks()
        assert state.executors() == [] and state.replicas() == []


def schema_2_journal(state_dir: Path) -> None:
    """A journal as schema 2 wrote it: two replicas in one executor, one in another, one without."""
    state_dir.mkdir()
    db = sqlite3.connect(state_dir / "serve.sqlite3")
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE replicas (task_id TEXT PRIMARY KEY, member TEXT NOT NULL, agent_id TEXT NOT NULL,
            hostname TEXT NOT NULL, port INTEGER NOT NULL, sha256 TEXT NOT NULL, state TEXT NOT NULL,
            executor_id TEXT NOT NULL DEFAULT '', updated_at REAL NOT NULL);
        CREATE TABLE history (tier INTEGER NOT NULL, t REAL NOT NULL, point TEXT NOT NULL, PRIMARY KEY (tier, t));
        CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, t REAL NOT NULL, text TEXT NOT NULL);
        INSERT INTO meta VALUES ('framework_id', 'fw-2');
        INSERT INTO replicas VALUES ('r1', 'linear', 'a1', 'h1', 31000, 'ab', 'TASK_RUNNING', 'ensemble.g1', 1.0);
        INSERT INTO replicas VALUES ('r2', 'logistic', 'a1', 'h1', 31001, 'cd', 'TASK_RUNNING', 'ensemble.g1', 2.0);
        INSERT INTO replicas VALUES ('r3', 'linear', 'a2', 'h2', 31000, 'ab', 'draining', 'ensemble.g4', 3.0);
        INSERT INTO replicas VALUES ('r4', 'linear', 'a3', 'h3', 31000, 'ab', 'launching', '', 4.0);
        INSERT INTO events (t, text) VALUES (5.0, 'member linear: 2 replica(s) wanted (was 1)');
        PRAGMA user_version=2;""")
    db.close()


def test_a_schema_2_journal_gains_the_executors_its_replicas_name(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    schema_2_journal(state_dir)
    expected = [("a1", "ensemble.g1", "h1", "running"), ("a2", "ensemble.g4", "h2", "running")]
    with ServeState.read(state_dir) as old:  # status reads it as it is
        assert [(e.agent_id, e.executor_id, e.hostname, e.state) for e in old.executors()] == expected
    with ServeState.open(state_dir) as state:
        assert int(state._db.execute("PRAGMA user_version").fetchone()[0]) == SCHEMA_VERSION == 4
        assert [(e.agent_id, e.executor_id, e.hostname, e.state) for e in state.executors()] == expected
        assert [e.info for e in state.executors()] == [None, None]  # not known: never launched into again
        state.record_executors([ExecutorRecord("a1", "ensemble.g1", "h1", info='{"executor_id": {"value": "x"}}')])
        state.record_executors([ExecutorRecord("a1", "ensemble.g1", "h1", idle_since=9.0)])  # keeps the info
        assert state.executors()[0].info == '{"executor_id": {"value": "x"}}'
        assert state.framework_id == "fw-2" and [r.task_id for r in state.replicas()] == ["r1", "r2", "r3", "r4"]
        assert [text for _t, text in state.events()] == ["member linear: 2 replica(s) wanted (was 1)"]
    with ServeState.open(state_dir) as again:  # opened twice: migrated once
        assert len(again.executors()) == 2 and again.executors()[0].info is not None


def test_a_journal_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    db = sqlite3.connect(state_dir / "serve.sqlite3")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(ServeStateError, match=f"schema version {SCHEMA_VERSION + 1}"):
        ServeState.open(state_dir)
