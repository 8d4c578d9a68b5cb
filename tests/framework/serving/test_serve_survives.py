"""What a shared cluster does to a deployment, end to end on the embedded cluster (real executor
processes, real HTTP): members in executors of their own (``executors = "per_model"``) answer
exactly, scale both ways and survive a replica's crash without touching the other member; a
master failover while serving leaves the replicas answering, the framework re-registers under
the same id, the controller reconciles and still scales."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path
from typing import Any

import pytest

import cluster_records
from deploy_helpers import Served, predict, serve_job, wait_for
from framework.localmesos import LocalCluster
from test_serve_cluster import Client

BOUNDS = "min_replicas = 1\nmax_replicas = 1"
"""Fixed bounds: the counts change only as the test retargets them (not with the machine's load)."""


def bounds(controller: Any, member: str, low: int, high: int) -> None:
    """Retarget one member's replica bounds (what a reload of them does)."""
    target = controller.targets[member]
    controller.retarget({member: dataclasses.replace(target, min_replicas=low, max_replicas=high)})


@pytest.mark.faults
def test_per_model_executors_answer_exactly_scale_both_ways_and_isolate_a_crash(
        tmp_path: Path, batch_reference: Any) -> None:
    columns, rows, expected = batch_reference
    job = serve_job(tmp_path / "job", framework='executors = "per_model"',
                    models={"linear": "min_replicas = 2\nmax_replicas = 2", "logistic": BOUNDS})
    # linear's two replicas on two agents (each in a linear executor of its own there)
    job.write_text(job.read_text().replace('output = "predict"\n',
                                           'output = "predict"\nconstraints = { max_per_agent = 1 }\n', 1))
    with Served(job, tmp_path / "state") as served:
        controller = served.controller
        controller.executor_idle_seconds = 1.0
        [cluster] = cluster_records.started
        # Each member's replicas run in executors of its own (one process per agent and member).
        # Waited for: a replica that could not bind its port (another program took it) is replaced.
        wait_for(lambda: controller.all_ready() and len(controller.replicas) == 3)
        executors = {(r.agent_id, r.executor_id) for r in controller.replicas.values()}
        assert {r.member: {r.executor_id.rpartition(".g")[0]} for r in controller.replicas.values()} == {
            "linear": {"linear"}, "logistic": {"logistic"}}
        assert len(executors) == 3
        wait_for(lambda: len(cluster.executor_pids()) == 3)  # an executor left by a failed replica is shut down
        answers = [value for start in range(0, len(rows), 50)
                   for value in predict(served.url, columns, rows[start:start + 50])]
        assert answers == expected
        # Scale logistic up to 2 (into its executor or a new one of its own), then back down to 1.
        bounds(controller, "logistic", 2, 2)
        wait_for(lambda: len(controller.ready("logistic")) == 2)
        assert all(r.executor_id.startswith("logistic.") for r in controller.ready("logistic"))
        assert predict(served.url, columns, rows[:50]) == expected[:50]
        bounds(controller, "logistic", 1, 1)
        wait_for(lambda: len([r for r in controller.replicas.values() if r.member == "logistic"]) == 1)
        # An executor emptied by the scale-down is shut down (per-model executors are released too).
        wait_for(lambda: len(cluster.executor_pids()) == len({(r.agent_id, r.executor_id)
                                                              for r in controller.replicas.values()}))
        # A linear replica's executor crashes (kill -9): only that replica is replaced; the other
        # linear replica answers meanwhile, and logistic's executor, a process of its own, never notices.
        victim = controller.ready("linear")[0]
        [logistic] = controller.ready("logistic")
        assert victim.pid and logistic.pid and victim.pid != logistic.pid
        replaced = controller.replaced
        with Client(served.url, columns, rows) as client:
            wait_for(lambda: len(client.statuses) >= 5)
            os.kill(victim.pid, signal.SIGKILL)
            wait_for(lambda: victim.task_id not in controller.replicas)
            wait_for(lambda: len(controller.ready("linear")) == 2 and controller.all_ready())
            answered = len(client.statuses)
            wait_for(lambda: len(client.statuses) >= answered + 5)
        assert client.failures == [], client.failures[:3]
        assert controller.replaced >= replaced + 1
        assert [r.task_id for r in controller.ready("logistic")] == [logistic.task_id]
        assert predict(served.url, columns, rows[:50]) == expected[:50]


@pytest.mark.faults
def test_a_master_failover_while_serving_keeps_answering_reconciles_and_scales_after(
        tmp_path: Path, cluster: LocalCluster, batch_reference: Any) -> None:
    columns, rows, expected = batch_reference
    job = serve_job(tmp_path / "job", framework=f'master = "{cluster.master_address}"\nfailover_timeout = 60',
                    models={"linear": BOUNDS, "logistic": BOUNDS})
    job.write_text(job.read_text().replace('master = "local"', "", 1))
    with Served(job, tmp_path / "state") as served:
        controller = served.controller
        framework_id = controller.framework_id
        before = {r.task_id: r.pid for r in controller.replicas.values()}
        pids = set(cluster.executor_pids())
        reconciled: list[str] = []
        receive = controller.statusUpdate

        def recording(driver: Any, status: Any) -> None:
            if status.get("reason") == "REASON_RECONCILIATION":
                reconciled.append(status["task_id"]["value"])
            receive(driver, status)

        controller.statusUpdate = recording  # the driver calls the scheduler's attribute
        with Client(served.url, columns, rows) as client:
            wait_for(lambda: len(client.statuses) >= 5)
            cluster.restart_master(downtime=1.0)
            # Re-registered under the same framework id; every known replica reconciled explicitly.
            wait_for(lambda: sorted(set(reconciled)) == sorted(before))
            [framework] = [f for f in cluster.state()["frameworks"] if f["connected"]]
            assert framework["id"] == framework_id == controller.framework_id
            answered = len(client.statuses)
            wait_for(lambda: len(client.statuses) >= answered + 5)
        assert client.failures == [], client.failures[:3]  # answered throughout (replicas kept running)
        assert {r.task_id: r.pid for r in controller.replicas.values()} == before
        assert set(cluster.executor_pids()) == pids and controller.replaced == 0
        assert controller.all_ready()
        # Scaling works after the failover: a linear replica more, then back down.
        bounds(controller, "linear", 2, 2)
        wait_for(lambda: len(controller.ready("linear")) == 2)
        assert predict(served.url, columns, rows[:50]) == expected[:50]
        bounds(controller, "linear", 1, 1)
        wait_for(lambda: len([r for r in controller.replicas.values() if r.member == "linear"]) == 1)
        wait_for(lambda: len(controller.ready("linear")) == 1)
    tasks = [t for f in cluster.state()["frameworks"] for t in f["tasks"]]
    assert not [t for t in tasks if t["state"] in ("TASK_RUNNING", "TASK_STARTING")]
