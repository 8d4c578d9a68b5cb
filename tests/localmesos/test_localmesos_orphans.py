"""No orphans: executors die with the process hosting their agent, and a pymesos executor of a
non-checkpointing framework exits when its agent goes away (issue 10, item 4)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from framework.localmesos.cluster import live_processes, recorded_processes
from localmesos_helpers import Scheduler, executor_task, wait_for

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def test_kill_9_of_the_cluster_process_leaves_no_executor(tmp_path: Path) -> None:
    work_dir = tmp_path / "cluster"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    host = subprocess.Popen([sys.executable, str(HERE / "cluster_host.py"), str(work_dir)], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert host.stdout is not None
        assert host.stdout.readline().strip() == "READY"
        records = wait_for(lambda: len(recorded_processes(work_dir)) >= 4 and recorded_processes(work_dir))
        assert len({sid for sid, _ in records}) == 2  # two executor sessions: command and pymesos executor
        assert sorted(live_processes(records)) == sorted(pid for _, pid in records)
        host.send_signal(signal.SIGKILL)
        host.wait()
        wait_for(lambda: not live_processes(records), timeout=30)
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
        for sid in {sid for sid, _ in recorded_processes(work_dir)}:
            try:
                os.killpg(sid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def launch_ensemble_executor(cluster: Any, env: dict[str, str], checkpoint: bool) -> tuple[Any, int]:
    """Start ``python -m executor`` (the project's pymesos executor) and wait until it subscribed."""
    sched = Scheduler(cluster.master_address, extra_info={"checkpoint": checkpoint})
    offer = sched.offers()[0]
    env = {"PYTHONPATH": str(ROOT), **env}
    sched.launch(offer, [executor_task("e-1", offer, "ensemble", f"{sys.executable} -m executor", env=env,
                                       data=b"not a payload")])
    # It answers the (bad) task, so it is subscribed: RUNNING, then FAILED.
    states = []
    while "TASK_FAILED" not in states:
        status = sched.update("e-1", timeout=30)
        states.append(status["state"])
        sched.ack(status)
    pid = wait_for(cluster.executor_pids)[0]
    return sched, pid


def cut_agent_connection(cluster: Any) -> None:
    """The agent goes away without its process dying: its port closes and the streams break."""
    agent = cluster.agents[0]
    agent.server.shutdown()
    agent.server.server_close()
    with cluster.lock:
        for run in agent.runs():
            if run.stream is not None:
                run.stream.close()


@pytest.mark.timeout(120)
def test_executor_without_checkpoint_exits_when_its_agent_goes(make_cluster: Any) -> None:
    cluster = make_cluster()
    sched, _pid = launch_ensemble_executor(cluster, {}, checkpoint=False)
    assert os.environ.get("MESOS_CHECKPOINT") is None
    env = open_environ(cluster)
    assert env["MESOS_CHECKPOINT"] == "0"  # as real Mesos sets it; the executor must read it as false
    cut_agent_connection(cluster)
    wait_for(lambda: not cluster.live_processes(), timeout=30)
    sched.close()


@pytest.mark.timeout(120)
def test_checkpointing_executor_retries_until_its_recovery_timeout(make_cluster: Any) -> None:
    cluster = make_cluster()
    sched, pid = launch_ensemble_executor(cluster, {"MESOS_RECOVERY_TIMEOUT": "3secs"}, checkpoint=True)
    env = open_environ(cluster)
    assert env["MESOS_CHECKPOINT"] == "1"
    cut_agent_connection(cluster)
    stderr = sandbox_stderr(cluster)
    wait_for(lambda: "connect to" in stderr.read_text(), timeout=30)  # it retries the agent first
    wait_for(lambda: not cluster.live_processes(), timeout=60)  # then gives up after the timeout
    assert "connect reach deadline" in stderr.read_text()
    sched.close()


def open_environ(cluster: Any) -> dict[str, str]:
    """The environment the agent gave the (single) executor, read from its process."""
    pid = cluster.process_records()[-1][1]
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def sandbox_stderr(cluster: Any) -> Path:
    runs = [run for agent in cluster.agents for run in agent.runs() + agent.completed_runs]
    return runs[0].directory / "stderr"
