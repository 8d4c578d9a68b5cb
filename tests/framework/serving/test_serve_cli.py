"""``mesos-ensemble serve`` as a user runs it: bad input is one line and exit 2 before anything
launches; a running serve answers curl-like requests, reloads on ``serve --reload`` and stops on
SIGTERM (exit 143) leaving no process behind; killed with ``kill -9`` against a separately running
cluster, a new serve with the same state directory re-adopts the running replicas."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from framework.localmesos import LocalCluster
from framework.localmesos.cluster import live_processes, recorded_processes
from framework.serving.state import ServeState
from deploy_helpers import held_out_rows, post, serve_job, wait_for

ROOT = Path(__file__).resolve().parents[3]
ENV = {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}


def mesos_ensemble(*args: Any, **options: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "framework.cli", *map(str, args)], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options)


def run_cli(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "framework.cli", *map(str, args)], cwd=ROOT, env=ENV, text=True,
                          capture_output=True, timeout=300)


def live(state: Path, pid: int | None = None) -> dict[str, Any] | None:
    try:
        document = json.loads((state / "serve.json").read_text())
    except (OSError, ValueError):
        return None
    return document if pid is None or document.get("pid") == pid else None


def test_bad_serve_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    job = serve_job(tmp_path / "job", serve="max_batch_rows = 0")
    done = run_cli("serve", job, "--state-dir", tmp_path / "state")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("mesos-ensemble: error: ") and "serve.max_batch_rows" in line
    assert not (tmp_path / "state").exists(), "serve created its state before checking its input"
    nothing = run_cli("serve", job, "--reload", "--state-dir", tmp_path / "state")
    assert nothing.returncode == 2 and "no serve runs from this state directory" in nothing.stderr


def test_serve_answers_reloads_and_stops_on_sigterm(tmp_path: Path) -> None:
    job = serve_job(tmp_path / "job")
    state, work = tmp_path / "state", tmp_path / "work"
    serve = mesos_ensemble("serve", job, "--state-dir", state, "--work-dir", work, "--json")
    try:
        document = wait_for(lambda: live(state) or serve.poll() is not None)
        assert serve.poll() is None, serve.communicate()
        columns, rows = held_out_rows(job)
        status, answer = post(document["url"], {"rows": [dict(zip(columns, rows[0]))]})
        assert status == 200 and len(answer["predictions"]) == 1
        reload = run_cli("serve", job, "--reload", "--state-dir", state)
        assert reload.returncode == 0 and f"pid {serve.pid}" in reload.stdout
        assert serve.stderr is not None
        seen = []
        for line in serve.stderr:  # the reload's line (the job file re-checked) before the signal
            seen.append(line)
            if "reload" in line:
                break
        records = recorded_processes(work / "cluster")
        assert records
        serve.send_signal(signal.SIGTERM)
        out, rest = serve.communicate(timeout=120)
        err = "".join(seen) + rest
    finally:
        if serve.poll() is None:
            serve.kill()
    assert serve.returncode == 143, err
    first = json.loads(out.splitlines()[0])  # --json: one document once serving
    assert first["url"] == document["url"] and first["replicas"]["linear"]["ready"] == 1
    assert "reloaded" in err and "no model changed" in err
    assert [line for line in err.splitlines() if line.startswith("mesos-ensemble:")] == [
        "mesos-ensemble: interrupted by SIGTERM"]
    assert "Traceback" not in err
    wait_for(lambda: not live_processes(records), timeout=30)
    assert not (state / "serve.json").exists()


@pytest.mark.faults
def test_a_killed_serve_restarted_re_adopts_its_running_replicas(tmp_path: Path, cluster: LocalCluster) -> None:
    job = serve_job(tmp_path / "job")
    state = tmp_path / "state"
    columns, rows = held_out_rows(job)
    first = mesos_ensemble("serve", job, "--master", cluster.master_address, "--state-dir", state)
    try:
        document = wait_for(lambda: live(state, first.pid) or first.poll() is not None)
        assert first.poll() is None, first.communicate()
        expected = post(document["url"], {"columns": columns, "data": rows[:5]})[1]["predictions"]
        with ServeState.read(state) as journal:
            framework_id, replicas = journal.framework_id, sorted(r.task_id for r in journal.replicas())
        assert framework_id and len(replicas) == 2
        first.kill()
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    second = mesos_ensemble("serve", job, "--master", cluster.master_address, "--state-dir", state)
    try:
        document = wait_for(lambda: live(state, second.pid) or second.poll() is not None)
        assert second.poll() is None, second.communicate()
        status, answer = post(document["url"], {"columns": columns, "data": rows[:5]})
        assert status == 200 and answer["predictions"] == expected
        with ServeState.read(state) as journal:
            assert journal.framework_id == framework_id
            assert sorted(r.task_id for r in journal.replicas()) == replicas, "the replicas were not adopted"
            [executor] = journal.executors()
        # One more linear replica (a reload): launched into the adopted executor with its journaled
        # ExecutorInfo, its model fetched from this serve's artifact server.
        job.write_text(job.read_text() + "\n[serve.models.linear]\nmin_replicas = 2\n")
        second.send_signal(signal.SIGHUP)

        def third_running() -> list[Any]:
            with ServeState.read(state) as journal:
                return [r for r in journal.replicas() if r.task_id not in replicas and r.state == "TASK_RUNNING"]
        [third] = wait_for(third_running)
        assert third.executor_id == executor.executor_id and third.agent_id == executor.agent_id
        with ServeState.read(state) as journal:
            assert [e.executor_id for e in journal.executors()] == [executor.executor_id]
        second.send_signal(signal.SIGINT)
        _out, err = second.communicate(timeout=120)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 130, err
    assert "adopting 2 replica(s)" in err
    with ServeState.read(state) as journal:  # torn down: the next serve subscribes anew (not as a removed id)
        assert journal.framework_id is None and journal.replicas() == [] and journal.executors() == []
    tasks = [t for f in cluster.state()["frameworks"] for t in f["tasks"]]
    assert not [t for t in tasks if t["state"] in ("TASK_RUNNING", "TASK_STARTING")]
