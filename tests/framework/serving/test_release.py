"""A released agent is really released, on the embedded cluster: after a scale-down empties an
agent, the controller shuts down (Mesos ``SHUTDOWN``) our executor there once it has stayed idle,
its process is gone (no orphan), and the agent's whole resources are offered again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cluster_records
from deploy_helpers import Served, wait_for
from framework.serving.controller import ServedMember
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
