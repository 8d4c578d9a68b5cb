"""Fault injection with real processes: ``mesos-ensemble run`` killed (``kill -9``) or interrupted
(SIGINT, SIGTERM) mid-job, in local mode and against a separately running ``local-cluster``, then
run again.  Each case asserts that the output equals the fault-free run's byte for byte, that every
shard was integrated once (one result per item in the journal), that finished items were not
computed again (their attempts in the journal unchanged), that no process the clusters started is
left (from their own process records) and that no stray file is left in the output directory.

"Mid-job" without sleeps: every task takes at least a second (``slow_models``), and the test waits
for the journal to show some, not all, items finished before striking."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from framework.journal import Journal
from framework.localmesos.cluster import live_processes, recorded_processes
from slow_models import write_slow_job

ROOT = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
ITEMS = 24  # 2 models x 12 shards
EXECUTORS_GONE_SECONDS = 30.0


def wait_for(predicate: Any, timeout: float = 120.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def mesos_ensemble(*args: str, **options: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "framework.cli", *args], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options)


def finished_count(state: Path) -> int:
    if not Journal.exists(state):
        return 0
    try:
        with Journal.read(state) as journal:
            return journal.progress().counts.get("finished", 0)
    except Exception:  # created but not initialised yet
        return 0


def attempts_by_item(state: Path) -> dict[str, list[str]]:
    with Journal.read(state) as journal:
        return {key: [a.task_id for a in item.attempts] for key, item in journal.items().items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The fault-free run's output."""
    job = write_slow_job(tmp_path_factory.mktemp("reference") / "job")
    run = mesos_ensemble("run", str(job), "--quiet")
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err
    return (job.parent / "out" / "predictions.csv").read_bytes()


def remember(state: Path) -> tuple[dict[str, list[str]], set[str]]:
    """Each item's attempts (task ids) and the items finished, as the journal has them now."""
    with Journal.read(state) as journal:
        finished = set(journal.finished(verify=False))
    return attempts_by_item(state), finished


def check_resumed(job: Path, state: Path, reference: bytes, before: dict[str, list[str]], finished: set[str],
                  *extra: str) -> str:
    """Run ``job`` again to the end; check the output, the journal and the output directory."""
    run = mesos_ensemble("run", str(job), "--state-dir", str(state), *extra)
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err
    assert (job.parent / "out" / "predictions.csv").read_bytes() == reference
    assert sorted(p.name for p in (job.parent / "out").iterdir()) == ["predictions.csv"]
    with Journal.read(state) as journal:
        assert len(journal.finished()) == ITEMS and journal.completed is not None  # one result per item
    after = attempts_by_item(state)
    for key in finished:
        assert after[key] == before[key], f"{key} was computed again"
    return out


def no_stray_files(job: Path) -> None:
    assert list((job.parent / "out").iterdir()) == []
    strays = [p for p in job.parent.rglob("*") if "partial" in p.name or p.name.endswith(".tmp")]
    assert not strays, strays


@pytest.mark.faults
def test_kill_9_of_run_in_local_mode_then_resume(tmp_path: Path, reference: bytes) -> None:
    job = write_slow_job(tmp_path / "job")
    state, work = tmp_path / "state", tmp_path / "work"
    run = mesos_ensemble("run", str(job), "--state-dir", str(state), "--work-dir", str(work))
    wait_for(lambda: finished_count(state) >= 4 or run.poll() is not None)
    run.kill()
    run.wait()
    assert run.returncode == -signal.SIGKILL
    before, finished = remember(state)
    assert 4 <= len(finished) < ITEMS
    # Executors die with their agent (the killed process): none of them is alive 30 s later.
    records = recorded_processes(work / "cluster")
    assert records
    wait_for(lambda: not live_processes(records), timeout=EXECUTORS_GONE_SECONDS)
    assert sorted(p.name for p in (job.parent / "out").iterdir()) == []

    out = check_resumed(job, state, reference, before, finished, "--work-dir", str(tmp_path / "work2"))
    assert f"{len(finished)} finished task(s) not computed again" in out
    assert not live_processes(recorded_processes(tmp_path / "work2" / "cluster"))


@pytest.mark.faults
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_job_stops_cleanly_then_resumes(tmp_path: Path, reference: bytes, signum: int) -> None:
    job = write_slow_job(tmp_path / "job")
    state = tmp_path / "state"
    run = mesos_ensemble("run", str(job), "--state-dir", str(state))
    wait_for(lambda: finished_count(state) >= 3 or run.poll() is not None)
    with Journal.read(state) as journal:
        work = Path(journal.note("temporary_work_dir") or "")
    assert work.is_dir()
    records = recorded_processes(work / "cluster")
    run.send_signal(signum)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 128 + signum, err
    lines = [line for line in err.splitlines() if line.startswith("mesos-ensemble:")]
    name = signal.Signals(signum).name
    assert len(lines) == 1 and lines[0].startswith(f"mesos-ensemble: interrupted by {name}; "), err
    assert f"tasks finished are kept in {state}; run again to resume" in lines[0]
    assert "Traceback" not in err
    no_stray_files(job)
    assert not work.exists(), "the temporary work directory was left behind"
    assert records and not live_processes(records)
    before, finished = remember(state)
    assert 3 <= len(finished) < ITEMS

    check_resumed(job, state, reference, before, finished)


@pytest.fixture()
def external_cluster(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``mesos-ensemble local-cluster`` in its own process (authentication on): its master
    address and work directory (which holds ``secret`` and the process records)."""
    work = tmp_path / "cluster"
    work.mkdir()
    cluster = mesos_ensemble("local-cluster", "--agents", "2", "--port", "0", "--work-dir", str(work))
    try:
        assert cluster.stdout is not None
        master = cluster.stdout.readline().strip()
        assert master, cluster.stderr.read() if cluster.stderr else ""
        wait_for(lambda: (work / "secret").is_file(), timeout=30)
        yield master, work
    finally:
        cluster.send_signal(signal.SIGTERM)
        cluster.communicate(timeout=120)
        wait_for(lambda: not live_processes(recorded_processes(work)), timeout=EXECUTORS_GONE_SECONDS)


@pytest.mark.faults
def test_kill_9_of_run_against_an_external_master_then_adopt(tmp_path: Path, reference: bytes,
                                                             external_cluster: tuple[str, Path]) -> None:
    master, cluster_work = external_cluster
    job = write_slow_job(tmp_path / "job", delay=3.0, master=master,
                         framework_extra=f'principal = "mesos-ensemble"\nsecret_file = "{cluster_work / "secret"}"\n')
    state = tmp_path / "state"
    run = mesos_ensemble("run", str(job), "--state-dir", str(state))

    def some_finished_some_running() -> bool:
        if finished_count(state) < 2:
            return False
        with Journal.read(state) as journal:
            return any(a.state == "TASK_RUNNING" for a in journal.active_attempts())
    wait_for(lambda: some_finished_some_running() or run.poll() is not None, timeout=300)
    run.kill()
    run.wait()
    before, finished = remember(state)
    with Journal.read(state) as journal:
        running = {a.item_key: a.task_id for a in journal.active_attempts() if a.state == "TASK_RUNNING"}
        framework_id = journal.framework_id
    assert running and framework_id

    out = check_resumed(job, state, reference, before, finished)
    after = attempts_by_item(state)
    adopted = [key for key, task in running.items() if after[key][-1] == task]
    assert adopted, f"no running task was adopted: before {running}, after {after}"
    assert "running task(s) adopted" in out
    with Journal.read(state) as journal:
        assert journal.framework_id == framework_id  # re-subscribed as the same framework


@pytest.mark.faults
def test_keep_running_leaves_tasks_for_the_next_run(tmp_path: Path, reference: bytes,
                                                     external_cluster: tuple[str, Path]) -> None:
    master, cluster_work = external_cluster
    job = write_slow_job(tmp_path / "job", delay=3.0, master=master,
                         framework_extra=f'principal = "mesos-ensemble"\nsecret_file = "{cluster_work / "secret"}"\n')
    state = tmp_path / "state"
    run = mesos_ensemble("run", str(job), "--state-dir", str(state), "--keep-running")

    def running_now() -> bool:
        with Journal.read(state) as journal:
            return any(a.state == "TASK_RUNNING" for a in journal.active_attempts())
    wait_for(lambda: (finished_count(state) >= 2 and running_now()) or run.poll() is not None, timeout=300)
    run.send_signal(signal.SIGTERM)
    _out, err = run.communicate(timeout=120)
    assert run.returncode == 143, err
    assert "its tasks keep running for the next run to adopt" in err
    before, finished = remember(state)
    out = check_resumed(job, state, reference, before, finished)
    assert "running task(s) adopted" in out


def test_slow_model_predicts_exactly_as_linear_regression(tmp_path: Path) -> None:
    """The fault tests' model: slow, and otherwise a LinearRegression (quick)."""
    import joblib
    import numpy as np

    job = write_slow_job(tmp_path / "job", delay=0.01)
    model = joblib.load(job.parent / "slow_a.joblib")
    from sklearn.linear_model import LinearRegression

    assert isinstance(model, LinearRegression) and type(model) is not LinearRegression
    plain = LinearRegression()
    plain.__dict__.update(model.__dict__)
    rows = np.random.default_rng(0).normal(size=(5, 4))
    assert np.array_equal(model.predict(rows), plain.predict(rows))
    shutil.rmtree(tmp_path / "job")
