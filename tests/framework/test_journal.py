"""The job journal: fingerprints that name what changed, the item and attempt life cycle,
checksummed results, and a journal left by a process killed with SIGKILL mid-write."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from executor.protocol import array_to_npy, sha256_hex
from framework.demo import train_demo
from framework.jobspec import load_job
from framework.journal import (
    DATABASE_NAME,
    Fingerprint,
    Journal,
    JournalBusy,
    JournalError,
    JournalMismatch,
    compute_fingerprint,
    default_state_dir,
    job_fingerprint,
    result_file_name,
)
from framework.tasks import ItemState, WorkItem

JOB = """\
# a job
[job]
name = "j"
output = "out.csv"

[data]
path = "data.csv"
rows_per_shard = 10

[[models]]
name = "linear"
path = "linear.joblib"
weight = 1.0

[[models]]
name = "logistic"
path = "logistic.joblib"
weight = 1.0

[framework]
max_retries = 3
"""


def write_job(directory: Path, text: str = JOB) -> dict[str, Path]:
    (directory / "job.toml").write_text(text)
    for name, content in (("linear.joblib", b"linear"), ("logistic.joblib", b"logistic"), ("data.csv", b"x\n1\n")):
        if not (directory / name).exists():
            (directory / name).write_bytes(content)
    return {"models[0] (linear)": directory / "linear.joblib", "models[1] (logistic)": directory / "logistic.joblib",
            "data": directory / "data.csv"}


def fingerprint(directory: Path) -> Fingerprint:
    """The fingerprint of the job in ``directory`` (written first if there is none)."""
    job = directory / "job.toml"
    return compute_fingerprint(job, write_job(directory, job.read_text() if job.exists() else JOB))


def items(models: tuple[str, ...] = ("linear", "logistic"), shards: int = 3) -> list[WorkItem]:
    return [WorkItem(f"{m}.s{s:05d}", m, s) for m in models for s in range(shards)]


# Fingerprints ---------------------------------------------------------------------------------

def test_an_unchanged_job_has_no_differences_and_layout_does_not_count(tmp_path: Path) -> None:
    before = fingerprint(tmp_path)
    (tmp_path / "job.toml").write_text("# reformatted\n" + JOB.replace('weight = 1.0', 'weight   =   1.0'))
    assert before.differences(fingerprint(tmp_path)) == []
    assert Fingerprint.from_json(before.to_json()) == before


def test_a_changed_model_file_is_named_with_both_checksums(tmp_path: Path) -> None:
    before = fingerprint(tmp_path)
    (tmp_path / "logistic.joblib").write_bytes(b"retrained")
    changes = before.differences(fingerprint(tmp_path))
    old, new = sha256_hex(b"logistic"), sha256_hex(b"retrained")
    assert changes == [f"models[1] (logistic): logistic.joblib changed (sha256 {old[:4]}… -> {new[:4]}…)"]


def test_a_changed_field_of_the_job_file_is_named(tmp_path: Path) -> None:
    before = fingerprint(tmp_path)
    text = JOB.replace('name = "logistic"\npath = "logistic.joblib"\nweight = 1.0',
                       'name = "logistic"\npath = "logistic.joblib"\nweight = 2.5')
    (tmp_path / "job.toml").write_text(text)
    assert before.differences(fingerprint(tmp_path)) == ["job.toml: models[1].weight changed (1.0 -> 2.5)"]
    (tmp_path / "job.toml").write_text(text.replace("rows_per_shard = 10", "rows_per_shard = 10\nlabel = \"y\""))
    assert "job.toml: data.label added (\"y\")" in before.differences(fingerprint(tmp_path))


def test_how_tasks_run_is_not_part_of_the_fingerprint(tmp_path: Path) -> None:
    before = fingerprint(tmp_path)
    (tmp_path / "job.toml").write_text(JOB.replace("max_retries = 3", "max_retries = 5\ntimeout_seconds = 99")
                                       + "\n[local_cluster]\nagents = []\n")
    assert before.differences(fingerprint(tmp_path)) == []


def test_a_removed_or_replaced_input_is_named(tmp_path: Path) -> None:
    before = fingerprint(tmp_path)
    (tmp_path / "other.csv").write_bytes(b"x\n2\n")
    after = compute_fingerprint(tmp_path / "job.toml", {"models[0] (linear)": tmp_path / "linear.joblib",
                                                        "data": tmp_path / "other.csv"})
    assert before.differences(after) == ["models[1] (logistic): no longer in the job (was logistic.joblib)",
                                         "data: data.csv replaced by other.csv"]


def test_fingerprint_of_a_real_job(tmp_path: Path) -> None:
    train_demo(tmp_path)
    spec = load_job(tmp_path / "job.toml")
    saved = job_fingerprint(spec)
    assert [f.label for f in saved.inputs] == [f"models[{i}] ({m.name})" for i, m in enumerate(spec.models)] + ["data"]
    assert [f.sha256 for f in saved.inputs[:-1]] == [m.sha256 for m in spec.models]
    assert saved.differences(job_fingerprint(load_job(tmp_path / "job.toml"))) == []
    spec.data.path.write_bytes(spec.data.path.read_bytes() + b"\n")
    assert [c.split(":")[0] for c in saved.differences(job_fingerprint(spec))] == ["data"]


# Opening ------------------------------------------------------------------------------------

def test_reopening_with_the_same_fingerprint_keeps_everything(tmp_path: Path) -> None:
    state = tmp_path / "state"
    fp = fingerprint(tmp_path)
    with Journal.open(state, fp) as journal:
        assert journal.framework_id is None
        journal.save_framework_id("fw-1")
        journal.add_items(items())
        journal.record_launch("linear.s00000", "linear.s00000.a1", "agent-1")
        journal.record_result("linear.s00000", "linear.s00000.a1", np.arange(3.0))
    with Journal.open(state, fp) as journal:
        assert journal.framework_id == "fw-1"
        assert journal.framework_id_saved_at is not None
        assert list(journal.finished()) == ["linear.s00000"]
        np.testing.assert_array_equal(journal.load_result("linear.s00000"), np.arange(3.0))
        assert journal.progress().counts == {"finished": 1, "pending": 5}
        assert journal.fingerprint() == fp


def test_a_changed_job_is_refused_naming_the_change_and_fresh_starts_over(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Journal.open(state, fingerprint(tmp_path)) as journal:
        journal.add_items(items())
        journal.record_result("linear.s00000", "linear.s00000.a1", np.arange(3.0))
    (tmp_path / "linear.joblib").write_bytes(b"changed")
    changed = fingerprint(tmp_path)
    with pytest.raises(JournalMismatch) as raised:
        Journal.open(state, changed)
    message = str(raised.value)
    assert "\n" not in message and "models[0] (linear): linear.joblib changed (sha256" in message
    assert "--fresh" in message and raised.value.changes == [message.split(": ", 2)[2].split("; --fresh")[0]]
    with Journal.open(state, changed, fresh=True) as journal:  # the refusal left the lock free
        assert journal.finished() == {} and journal.progress().total == 0
        assert list((state / "results").iterdir()) == []
    with Journal.open(state, changed) as journal:
        assert journal.progress().total == 0


def test_a_second_writer_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    fp = fingerprint(tmp_path)
    journal = Journal.open(tmp_path / "state", fp)
    with pytest.raises(JournalBusy, match="another mesos-ensemble process is using this journal"):
        Journal.open(tmp_path / "state", fp)
    journal.close()
    journal.close()  # idempotent
    Journal.open(tmp_path / "state", fp).close()


def test_a_reader_sees_progress_while_the_writer_runs_and_cannot_write(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "state", fingerprint(tmp_path)) as journal:
        journal.add_items(items())
        journal.record_launch("linear.s00001", "linear.s00001.a1", "a1")
        journal.record_update("linear.s00001.a1", "TASK_RUNNING")
        with Journal.read(tmp_path / "state") as reader:
            # TASK_RUNNING is written with the writer's next commit or read, not on its own.
            assert reader.progress().counts == {"pending": 5, "launched": 1}
            assert journal.progress().counts == {"pending": 5, "running": 1}
            assert reader.progress().counts == {"pending": 5, "running": 1}
            journal.record_result("linear.s00001", "linear.s00001.a1", np.ones(2))
            assert reader.progress().counts == {"pending": 5, "finished": 1}
            assert list(reader.finished()) == ["linear.s00001"]
            with pytest.raises(JournalError, match="read-only"):
                reader.record_launch("linear.s00002", "x", "a1")
    with pytest.raises(JournalError, match="no journal here"):
        Journal.read(tmp_path / "elsewhere")


def test_a_file_that_is_not_a_journal_is_refused_in_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / DATABASE_NAME).write_bytes(os.urandom(4096))
    with pytest.raises(JournalError, match=r"journal\.sqlite3: not a usable journal .*--fresh starts over"):
        Journal.open(state, fingerprint(tmp_path))
    with Journal.open(state, fingerprint(tmp_path), fresh=True) as journal:
        assert journal.progress().total == 0


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    Journal.open(tmp_path / "state", fingerprint(tmp_path)).close()
    connection = sqlite3.connect(tmp_path / "state" / DATABASE_NAME)
    connection.execute("PRAGMA user_version=7")
    connection.close()
    with pytest.raises(JournalError, match="schema version 7, this mesos-ensemble reads up to 1"):
        Journal.open(tmp_path / "state", fingerprint(tmp_path))
    with pytest.raises(JournalError, match="schema version 7"):
        Journal.read(tmp_path / "state")


def test_an_unreadable_fingerprint_is_refused(tmp_path: Path) -> None:
    Journal.open(tmp_path / "state", fingerprint(tmp_path)).close()
    connection = sqlite3.connect(tmp_path / "state" / DATABASE_NAME)
    with connection:
        connection.execute("UPDATE meta SET value = '{' WHERE key = 'fingerprint'")
    connection.close()
    with pytest.raises(JournalError, match="fingerprint is unreadable .*--fresh starts over"):
        Journal.open(tmp_path / "state", fingerprint(tmp_path))


def test_a_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    connection = sqlite3.connect(tmp_path / "state" / DATABASE_NAME)
    connection.execute("CREATE TABLE other (x)")
    connection.close()
    with pytest.raises(JournalError, match="not a mesos-ensemble journal"):
        Journal.open(tmp_path / "state", fingerprint(tmp_path))


# Items and attempts ---------------------------------------------------------------------------

@pytest.mark.parametrize("blob_limit", [0, 64 * 1024])
def test_an_item_through_launch_running_result_and_finished(tmp_path: Path, blob_limit: int) -> None:
    with Journal.open(tmp_path / "state", fingerprint(tmp_path), blob_limit=blob_limit) as journal:
        journal.add_items(items(shards=1))
        journal.record_launch("linear.s00000", "linear.s00000.a1", "agent-1")
        assert journal.progress().counts == {"launched": 1, "pending": 1}
        assert journal.record_update("linear.s00000.a1", "TASK_RUNNING")
        assert [a.task_id for a in journal.active_attempts()] == ["linear.s00000.a1"]
        output = np.linspace(0, 1, 7)
        record = journal.record_result("linear.s00000", "linear.s00000.a1", array_to_npy(output))
        assert record.sha256 == sha256_hex(array_to_npy(output)) and record.nbytes == len(array_to_npy(output))
        if blob_limit:  # a small result is kept in the database
            assert record.path is None and list((tmp_path / "state" / "results").iterdir()) == []
        else:
            assert record.path == tmp_path / "state" / "results" / "linear.s00000.npy"
            assert sha256_hex(record.path.read_bytes()) == record.sha256
        assert journal.items()["linear.s00000"].attempts[0].state == "TASK_FINISHED"  # with the result
        assert journal.record_update("linear.s00000.a1", "TASK_FINISHED")
        assert journal.active_attempts() == []
        item = journal.items()["linear.s00000"]
        assert (item.model, item.shard, item.state) == ("linear", 0, ItemState.FINISHED)
        assert [(a.task_id, a.agent_id, a.state) for a in item.attempts] == [("linear.s00000.a1", "agent-1",
                                                                               "TASK_FINISHED")]
        assert journal.finished()["linear.s00000"] == record
        np.testing.assert_array_equal(journal.load_result("linear.s00000"), output)
        progress = journal.progress()
        assert (progress.counts, progress.total, progress.attempts) == ({"finished": 1, "pending": 1}, 2, 1)
        assert progress.summary() == "1/2 items finished (1 pending, 1 finished), 1 attempts"


@pytest.mark.parametrize("blob_limit", [250, 64 * 1024])
def test_results_recorded_together_are_each_durable_and_the_first_of_an_item_wins(tmp_path: Path,
                                                                                   blob_limit: int) -> None:
    outputs = {f"linear.s{i:05d}": np.linspace(0, i, 3 + 10 * i) for i in range(3)}  # .npy of 152, 232, 312 bytes
    with Journal.open(tmp_path / "state", fingerprint(tmp_path), blob_limit=blob_limit) as journal:
        journal.add_items(items(models=("linear",), shards=3))
        for key in outputs:
            journal.record_launch(key, f"{key}.a1", "agent-1")
            journal.record_update(f"{key}.a1", "TASK_RUNNING")
        batch = [(key, f"{key}.a1", array_to_npy(output), None) for key, output in outputs.items()]
        batch.append(("linear.s00001", "linear.s00001.a2", array_to_npy(np.zeros(2)), None))  # a late copy
        records = journal.record_results(batch)
        assert [r.item_key for r in records].count("linear.s00001") == 2
        assert {r.task_id for r in records if r.item_key == "linear.s00001"} == {"linear.s00001.a1"}
        assert {r.path is None for r in records} == ({True} if blob_limit > 1000 else {True, False})
    with Journal.open(tmp_path / "state", fingerprint(tmp_path), blob_limit=blob_limit) as journal:  # reopened
        assert sorted(journal.finished()) == sorted(outputs)
        for key, output in outputs.items():
            np.testing.assert_array_equal(journal.load_result(key), output)
            item = journal.items()[key]
            assert item.state is ItemState.FINISHED and item.attempts[0].state == "TASK_FINISHED"


def test_a_failed_attempt_makes_the_item_pending_and_a_given_up_one_failed(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "state", fingerprint(tmp_path)) as journal:
        journal.add_items(items(models=("linear",), shards=1))
        journal.record_launch("linear.s00000", "linear.s00000.a1", "a1")
        journal.record_update("linear.s00000.a1", "TASK_FAILED", "REASON_COMMAND_EXECUTOR_FAILED",
                              "member error: ValueError: boom", detail="Traceback ...\nValueError: boom")
        item = journal.items()["linear.s00000"]
        assert item.state is ItemState.PENDING
        assert (item.attempts[0].reason, item.attempts[0].detail) == ("REASON_COMMAND_EXECUTOR_FAILED",
                                                                      "Traceback ...\nValueError: boom")
        assert journal.attempt_count("linear.s00000") == 1
        journal.record_launch("linear.s00000", "linear.s00000.a2", "a2")
        journal.record_update("linear.s00000.a2", "TASK_FAILED", message="member error: ValueError: boom")
        journal.mark_item("linear.s00000", ItemState.FAILED, "ValueError: boom (twice)")
        assert journal.progress().failures == {"linear.s00000": "ValueError: boom (twice)"}
        journal.record_update("linear.s00000.a2", "TASK_FAILED")  # a late duplicate does not revive it
        assert journal.items()["linear.s00000"].state is ItemState.FAILED
        with pytest.raises(ValueError, match="record_result"):
            journal.mark_item("linear.s00000", ItemState.FINISHED)


def test_a_backup_attempt_keeps_the_item_running_when_the_other_fails(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "state", fingerprint(tmp_path)) as journal:
        journal.add_items(items(models=("linear",), shards=1))
        journal.record_launch("linear.s00000", "linear.s00000.a1", "a1")
        journal.record_update("linear.s00000.a1", "TASK_RUNNING")
        journal.record_launch("linear.s00000", "linear.s00000.a2", "a2")  # backup
        assert journal.items()["linear.s00000"].state is ItemState.RUNNING
        journal.record_update("linear.s00000.a1", "TASK_LOST", "REASON_AGENT_REMOVED")
        assert journal.items()["linear.s00000"].state is ItemState.LAUNCHED
        assert [a.task_id for a in journal.active_attempts()] == ["linear.s00000.a2"]
        journal.record_result("linear.s00000", "linear.s00000.a2", np.zeros(1))
        first = journal.finished()["linear.s00000"]
        # A second result for a finished item (a late sibling) keeps the first.
        assert journal.record_result("linear.s00000", "linear.s00000.a1", np.ones(1)) == first
        np.testing.assert_array_equal(journal.load_result("linear.s00000"), np.zeros(1))
        journal.mark_item("linear.s00000", ItemState.CANCELLED)  # a finished item stays finished
        assert journal.items()["linear.s00000"].state is ItemState.FINISHED


def test_a_running_state_is_written_at_the_next_commit_or_close(tmp_path: Path) -> None:
    state = tmp_path / "state"
    journal = Journal.open(state, fingerprint(tmp_path))
    journal.record_launches([("a", "a.a1", "agent-1"), ("b", "b.a1", "agent-2")])  # one offer round
    journal.record_update("a.a1", "TASK_RUNNING")
    journal.record_update("b.a1", "TASK_STARTING")
    with Journal.read(state) as reader:
        assert {a.task_id: a.state for a in reader.active_attempts()} == {"a.a1": "TASK_STAGING",
                                                                          "b.a1": "TASK_STAGING"}
        journal.record_update("b.a1", "TASK_FAILED", message="executor lost")  # a terminal update commits
        assert {a.task_id: a.state for a in reader.active_attempts()} == {"a.a1": "TASK_RUNNING"}
        assert reader.items()["b"].state is ItemState.PENDING
        journal.record_update("a.a1", "TASK_KILLING")
        journal.close()
        assert {a.task_id: a.state for a in reader.active_attempts()} == {"a.a1": "TASK_KILLING"}
    with Journal.open(state, fingerprint(tmp_path)) as journal:
        assert journal.record_update("a.a1", "TASK_KILLED") and journal.active_attempts() == []
        assert journal.items()["a"].attempts[0].agent_id == "agent-1"


def test_an_update_for_an_unknown_task_is_not_recorded(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "state", fingerprint(tmp_path)) as journal:
        assert journal.record_update("nobody.a1", "TASK_RUNNING") is False
        assert journal.progress().attempts == 0
        journal.record_launch("fold.3", "fold.3.a1", None)  # never added: kept all the same
        assert journal.items()["fold.3"].model == ""


def test_cancelled_items_and_a_forgotten_result(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "state", fingerprint(tmp_path), blob_limit=0) as journal:
        journal.add_items(items(shards=2))
        journal.mark_item("logistic.s00000", ItemState.CANCELLED, "member dropped")
        journal.mark_item("logistic.s00001", ItemState.CANCELLED)
        record = journal.record_result("linear.s00000", "linear.s00000.a1", np.ones(4))
        journal.forget_result("linear.s00000", "rejected by the integrator")
        assert record.path is not None and not record.path.exists()
        assert journal.items()["linear.s00000"].state is ItemState.PENDING
        assert journal.progress().counts == {"pending": 2, "cancelled": 2}
        with pytest.raises(JournalError, match="item linear.s00000 has no result"):
            journal.load_result("linear.s00000")


# Result files ---------------------------------------------------------------------------------

def test_a_damaged_or_missing_result_file_means_not_finished(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Journal.open(state, fingerprint(tmp_path), blob_limit=0) as journal:
        journal.add_items(items())
        for item in items():
            journal.record_result(item.key, item.key + ".a1", np.full(100, item.shard, dtype=np.float64))
    damaged = state / "results" / "linear.s00001.npy"
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    (state / "results" / "logistic.s00002.npy").unlink()
    truncated = state / "results" / "logistic.s00000.npy"
    truncated.write_bytes(truncated.read_bytes()[:50])
    with Journal.read(state) as reader:  # a reader leaves the journal alone
        assert len(reader.finished()) == 3 and len(reader.finished(verify=False)) == 6
        with pytest.raises(JournalError, match="fails its sha256 check"):
            reader.load_result("linear.s00001")
    with Journal.open(state, fingerprint(tmp_path)) as journal:
        assert sorted(journal.finished()) == ["linear.s00000", "linear.s00002", "logistic.s00001"]
        assert journal.progress().counts == {"finished": 3, "pending": 3}
        assert sorted(p.name for p in (state / "results").iterdir()) == [
            "linear.s00000.npy", "linear.s00002.npy", "logistic.s00001.npy"]


def test_a_damaged_or_missing_result_in_the_database_means_not_finished(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Journal.open(state, fingerprint(tmp_path)) as journal:
        journal.add_items(items(shards=1))
        journal.record_result("linear.s00000", "linear.s00000.a1", np.arange(10.0))
        journal.record_result("logistic.s00000", "logistic.s00000.a1", np.arange(20.0))
    connection = sqlite3.connect(state / DATABASE_NAME)
    with connection:
        (data,) = connection.execute("SELECT data FROM results WHERE item_key = 'linear.s00000'").fetchone()
        damaged = data[:40] + bytes([data[40] ^ 0xFF]) + data[41:]
        connection.execute("UPDATE results SET data = ? WHERE item_key = 'linear.s00000'", (damaged,))
    connection.close()
    with Journal.open(state, fingerprint(tmp_path)) as journal:
        with pytest.raises(JournalError, match=r"journal\.sqlite3: result of linear.s00000 fails its sha256"):
            journal.load_result("linear.s00000")
        assert list(journal.finished()) == ["logistic.s00000"]
        assert journal.items()["linear.s00000"].state is ItemState.PENDING
        assert journal.items()["linear.s00000"].detail == "stored result fails its sha256 check"


def test_temporaries_and_orphan_files_are_swept_at_open(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Journal.open(state, fingerprint(tmp_path), blob_limit=0) as journal:
        journal.record_result("a", "a.a1", np.ones(3))
    (state / "results" / ".b.npy.0123456789ab.tmp").write_bytes(b"half")
    (state / "results" / "b.npy").write_bytes(array_to_npy(np.ones(3)))  # renamed, row never committed
    with Journal.open(state, fingerprint(tmp_path)) as journal:
        assert list(journal.finished()) == ["a"]
        assert [p.name for p in (state / "results").iterdir()] == ["a.npy"]


def test_the_default_state_directory_is_beside_the_job_file() -> None:
    assert default_state_dir(Path("/jobs/demo.toml")) == Path("/jobs/demo.state")


def test_result_file_names_are_safe_and_distinct() -> None:
    keys = ["m.s00001", "../etc/passwd", ".hidden", "a/b", "a%2Fb", "x" * 300, "ü"]
    names = [result_file_name(k) for k in keys]
    assert len(set(names)) == len(keys)
    assert all("/" not in n and not n.startswith(".") and n.endswith(".npy") and len(n) < 220 for n in names)
    assert names[0] == "m.s00001.npy"


def test_power_durability_keeps_results_the_same_way(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "state", fingerprint(tmp_path), durability="power") as journal:
        journal.record_launch("a", "a.a1", "agent")
        journal.record_result("a", "a.a1", np.arange(5))
        journal.record_update("a.a1", "TASK_FINISHED")
        assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # back to NORMAL after the result
    with Journal.open(tmp_path / "state", fingerprint(tmp_path)) as journal:
        np.testing.assert_array_equal(journal.load_result("a"), np.arange(5))
    with pytest.raises(ValueError, match="durability"):
        Journal.open(tmp_path / "other", fingerprint(tmp_path), durability="sometimes")  # type: ignore[arg-type]


@pytest.mark.parametrize("blob_limit", [0, 64 * 1024])
def test_writers_on_several_threads(tmp_path: Path, blob_limit: int) -> None:
    """Launches and updates on one thread (pymesos's), results on others (the job's), each
    result recorded twice (the second is ignored, even when racing the first)."""
    keys = [f"m.s{i:05d}" for i in range(60)]
    with Journal.open(tmp_path / "state", fingerprint(tmp_path), blob_limit=blob_limit) as journal:
        journal.add_items([WorkItem(k, "m", i) for i, k in enumerate(keys)])
        for key in keys:
            journal.record_launch(key, key + ".a1", "a1")
        errors: list[BaseException] = []

        def results(part: list[str]) -> None:
            try:
                for key in part:
                    journal.record_result(key, key + ".a1", np.full(50, len(key) + int(key[-5:])))
                    journal.record_result(key, key + ".a1", np.zeros(1))  # duplicate: ignored
            except BaseException as error:  # noqa: B036 - reported below
                errors.append(error)

        def updates() -> None:
            try:
                for key in keys:
                    journal.record_update(key + ".a1", "TASK_RUNNING")
                    journal.progress()
            except BaseException as error:  # noqa: B036
                errors.append(error)

        threads = [threading.Thread(target=results, args=(keys[i::3],)) for i in range(3)]
        threads += [threading.Thread(target=results, args=(keys[i::3],)) for i in range(3)]  # the same keys
        threads.append(threading.Thread(target=updates))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        finished = journal.finished()
        assert sorted(finished) == keys
        for key in keys:
            np.testing.assert_array_equal(journal.load_result(key), np.full(50, len(key) + int(key[-5:])))
        assert journal.progress().counts == {"finished": 60}
        results_dir = tmp_path / "state" / "results"
        assert sorted(p.name for p in results_dir.iterdir()) == ([result_file_name(k) for k in keys] if not blob_limit
                                                                  else [])  # no temporary left by a lost race


# A process killed mid-write ----------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from framework.journal import Fingerprint, Journal

    state, durability, size = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    fingerprint = Fingerprint.from_json((state.parent / "fingerprint.json").read_text())
    journal = Journal.open(state, fingerprint, durability=durability)
    done = set(journal.finished())
    print("opened", len(done), flush=True)
    for i in range(100000):
        key = f"m.s{i:05d}"
        if key in done:
            continue
        task = f"{key}.a{journal.attempt_count(key) + 1}"
        journal.record_launch(key, task, "agent-1")
        journal.record_update(task, "TASK_RUNNING")
        journal.record_result(key, task, np.arange(size, dtype=np.float64) * i)
        journal.record_update(task, "TASK_FINISHED")
        print("finished", key, flush=True)
""")


def expected_result(key: str, size: int) -> np.ndarray:
    return np.arange(size, dtype=np.float64) * int(key[-5:])


@pytest.mark.parametrize("durability,size", [("process", 16384), ("power", 16384), ("process", 1024)])
def test_a_journal_left_by_sigkill_mid_write_opens_cleanly(tmp_path: Path, durability: str, size: int) -> None:
    """Eight rounds: a writer records results (of ``size`` float64: 128 KiB ones as files, 8 KiB
    ones in the database) as fast as it can, is killed with SIGKILL at a random moment, and the
    journal is reopened and checked; the next round resumes it."""
    state = tmp_path / "state"
    (tmp_path / "fingerprint.json").write_text(fingerprint(tmp_path).to_json())
    rng = random.Random(10)
    finished_so_far, caught_in_flight, temporaries_left = 0, 0, 0
    for _round in range(8):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(state), durability, str(size)],
                                  stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        assert writer.stdout is not None
        assert writer.stdout.readline().split() == ["opened", str(finished_so_far)]
        threading.Event().wait(rng.uniform(0.01, 0.1))  # let it write for a while
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        assert writer.returncode == -signal.SIGKILL
        lines = writer.stdout.read().split("\n")[:-1]  # the last one may be cut short by the kill
        reported = [line.split()[1] for line in lines]
        temporaries_left += any(p.name.endswith(".tmp") for p in (state / "results").iterdir())
        with Journal.read(state) as reader:  # what `status` does, before anything repairs the journal
            assert reader.progress().counts.get("finished", 0) >= finished_so_far + len(reported)

        with Journal.open(state, Fingerprint.from_json((tmp_path / "fingerprint.json").read_text())) as journal:
            finished = journal.finished()
            # Every result reported as recorded is there and intact; the one being written when
            # the process died may or may not be (never a part of it).
            assert set(reported) <= set(finished)
            assert finished_so_far + len(reported) <= len(finished) <= finished_so_far + len(reported) + 1
            for key in finished:
                np.testing.assert_array_equal(journal.load_result(key), expected_result(key, size))
            assert journal.progress().counts.get("finished") == len(finished)
            files = sorted(result_file_name(k) for k, r in finished.items() if r.path is not None)
            assert len(files) == (len(finished) if size * 8 > 64 * 1024 else 0)
            assert sorted(p.name for p in (state / "results").iterdir()) == files  # no temporary or orphan
            in_flight = [i for i in journal.items().values() if i.state is not ItemState.FINISHED]
            assert len(in_flight) <= 1 and all(i.key not in finished for i in in_flight)
            caught_in_flight += bool(in_flight)
            finished_so_far = len(finished)
    # The kills did land mid-item (between its launch and its result's commit), not only between items.
    assert caught_in_flight >= 1, (caught_in_flight, temporaries_left)
