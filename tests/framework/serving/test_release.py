"""A released agent is really released, on the embedded cluster: after a scale-down empties an
agent, the controller shuts down (Mesos ``SHUTDOWN``) our executor there once it has stayed idle,
its process is gone (no orphan), and the agent's whole resources are offered again."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

import cluster_records
from deploy_helpers import Served, held_out_rows, post, wait_for
from framework.localmesos import LocalCluster
from framework.localmesos.cluster import live_processes
from framework.serving.controller import ServedMember
from framework.serving.state import ExecutorRecord, ServeState
from test_serve_cli import live, mesos_ensemble, run_cli
from test_serve_cluster import spread_job


def test_scale_down_that_empties_an_agent_shuts_its_executor_down_and_offers_the_agent_whole(
        tmp_path: Path) -> None:
    job = spread_job(tmp_path / "job")  # one replica of each member on each of two agents
    with Served(job, tmp_path / "state") as served:
        controller = served.controller
        controller.executor_idle_seconds = 1.0
        [cluster] = cluster_records.started
        assert len({r.agent_id for r in controller.replicas.values()}) == 2
        offers: list[dict[str, Any]] = []
        receive = controller.resourceOffers

        def recording(driver: Any, batch: list[Any]) -> None:
            offers.extend(batch)
            receive(driver, batch)

        controller.resourceOffers = recording  # the driver calls the scheduler's attribute
        executor_pids = set(cluster.executor_pids())
        assert len(executor_pids) == 2
        # Scale down to one replica of each member: both go on one agent (the other is released).
        controller.retarget({name: ServedMember(name, t.sha256, 1, 1) for name, t in controller.targets.items()})
        wait_for(lambda: len(controller.replicas) == 2 and len({r.agent_id for r in controller.replicas.values()})
                 == 1 and controller.all_ready())
        [kept] = {r.agent_id for r in controller.replicas.values()}
        [(released, executor_id)] = wait_for(lambda: controller.shutdowns)
        assert released != kept
        # The executor exits: the master no longer lists it, its process (and its launcher) is gone.
        state = wait_for(lambda: (s := cluster.state()) and not [
            e for f in s["frameworks"] for e in f["executors"] if e["slave_id"] == released] and s)
        [agent] = [a for a in state["slaves"] if a["id"] == released]
        wait_for(lambda: len(cluster.executor_pids()) == 1)
        gone = executor_pids - set(cluster.executor_pids())
        assert len(gone) == 1
        wait_for(lambda: not set(cluster.live_processes()) & gone)
        # Nothing of ours holds the released agent, and it is offered whole again.
        total = agent["resources"]
        wait_for(lambda: any(o["agent_id"]["value"] == released and _scalar(o, "cpus") == total["cpus"]
                             and _scalar(o, "mem") == total["mem"] for o in list(offers)))
        assert all(r.agent_id == kept for r in controller.replicas.values())
        assert (released, executor_id) not in controller.hosting
        assert [agent for agent, _ in controller.shutdowns] == [released]  # never the agent still serving
        assert len(controller.ready("linear")) == 1 and len(controller.ready("logistic")) == 1


def _scalar(offer: dict[str, Any], name: str) -> float:
    return sum(r["scalar"]["value"] for r in offer["resources"] if r["name"] == name and "scalar" in r)


@pytest.mark.faults
def test_an_executor_idle_when_serve_is_killed_is_shut_down_by_the_restarted_serve(
        tmp_path: Path, cluster: LocalCluster) -> None:
    """``serve`` (a real process) is killed with SIGKILL in the window between an executor's last
    replica ending (a scale-down released its agent) and that executor's ``SHUTDOWN``; the
    restarted ``serve`` finds the idle executor in the journal and shuts it down: its process is
    gone and its agent is whole again for the cluster, while the kept replicas keep serving."""
    job = spread_job(tmp_path / "job")  # one replica of each member on each agent
    state = tmp_path / "state"
    columns, rows = held_out_rows(job)
    first = mesos_ensemble("serve", job, "--master", cluster.master_address, "--state-dir", state)
    try:
        document = wait_for(lambda: live(state, first.pid) or first.poll() is not None)
        assert first.poll() is None, first.communicate()
        expected = post(document["url"], {"columns": columns, "data": rows[:5]})[1]["predictions"]
        assert len(cluster.executor_pids()) == 2
        # Scale down to one replica of each member (a reload of the bounds): one agent is released.
        job.write_text(job.read_text().replace("min_replicas = 2\nmax_replicas = 2",
                                               "min_replicas = 1\nmax_replicas = 1"))
        assert run_cli("serve", job, "--reload", "--state-dir", state).returncode == 0

        def idle() -> list[ExecutorRecord]:
            with ServeState.read(state) as journal:
                return [e for e in journal.executors() if e.state == "idle"]
        [released] = wait_for(idle, interval=0.01)
        first.kill()  # inside the executor's idle time (EXECUTOR_IDLE_SECONDS): no SHUTDOWN sent
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
    assert idle() == [released], "the executor's SHUTDOWN was sent before serve was killed"
    ours = [e for f in cluster.state()["frameworks"] for e in f["executors"]]
    assert released.executor_id in {e["executor_id"] for e in ours if e["slave_id"] == released.agent_id}
    records = cluster.process_records()
    assert len(cluster.executor_pids()) == 2  # without the journal's row it would stay until a teardown

    second = mesos_ensemble("serve", job, "--master", cluster.master_address, "--state-dir", state)
    try:
        document = wait_for(lambda: live(state, second.pid) or second.poll() is not None)
        assert second.poll() is None, second.communicate()
        # The released agent's executor is shut down: the master lists nothing of ours there, its
        # processes are gone, and the agent is whole (all its resources free) again.
        snapshot = wait_for(lambda: (s := cluster.state()) and not [
            e for f in s["frameworks"] for e in f["executors"] if e["slave_id"] == released.agent_id] and s)
        [agent] = [a for a in snapshot["slaves"] if a["id"] == released.agent_id]
        wait_for(lambda: len(cluster.executor_pids()) == 1)
        kept = set(cluster.executor_pids())
        wait_for(lambda: set(live_processes(records)) <= kept | {p for s, p in records if s in kept})
        free = wait_for(lambda: [a for a in cluster.state()["slaves"] if a["id"] == released.agent_id
                                 and a["free_resources"]["cpus"] == a["resources"]["cpus"]
                                 and a["free_resources"]["mem"] == a["resources"]["mem"]])
        assert free and agent["resources"]["cpus"] > 0
        with ServeState.read(state) as journal:
            assert released.executor_id not in {e.executor_id for e in journal.executors()
                                                 if e.agent_id == released.agent_id}
            assert len(journal.replicas()) == 2 and {r.agent_id for r in journal.replicas()} != {released.agent_id}
        status, answer = post(document["url"], {"columns": columns, "data": rows[:5]})
        assert status == 200 and answer["predictions"] == expected
        second.send_signal(signal.SIGINT)
        _out, err = second.communicate(timeout=120)
    finally:
        if second.poll() is None:
            second.kill()
            second.communicate()
    assert second.returncode == 130, err
    assert "adopting 2 replica(s) of the earlier serve and 2 executor(s)" in err
