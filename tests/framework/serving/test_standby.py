"""Standby replicas (``[serve.models.<name>] standby_replicas``): the pure decision of which ready
replicas the gateway's table holds (``placement.route``), their count (``standby_for``), their
launch, price and lower bound, and the controller putting a standby replica in the table the
moment the autoscaler wants one more, or a routed one is lost (no cold start)."""

from __future__ import annotations

import dataclasses
from typing import Any

from factories import make_status
from framework.jobspec import JobSpec
from framework.serving.cost import deployment_cost
from framework.serving.placement import MemberTarget, ReplicaView, ServeSnapshot, decide, route, standby_for
from framework.serving.spec import ReplicaBounds, parse_serve
from test_controller import Deployment, demo, port_offer, server, wait_for  # noqa: F401 (fixtures)
from test_placement import DEMAND, OLD, OPTIONS, agent, replica

__all__ = ["demo", "server"]


def standby_snapshot(replicas: tuple[ReplicaView, ...], routed: int, standby: int,
                     prices: dict[str, float]) -> ServeSnapshot:
    """Member ``m`` wanting ``routed`` replicas in the table and ``standby`` more beside them."""
    return ServeSnapshot(targets={"m": MemberTarget("m", routed + standby, OLD, DEMAND, standby=standby)},
                         replicas=replicas, agent_prices=prices,
                         executors={r.agent_id: frozenset("m") for r in replicas},
                         packing=OPTIONS)


def test_the_spec_reads_standby_replicas_and_defaults_to_none() -> None:
    spec = parse_serve({"models": {"a": {"max_replicas": 3, "standby_replicas": 1}}}, ["a", "b"])
    assert spec.bounds("a") == ReplicaBounds(1, 3, 1) and spec.bounds("b").standby_replicas == 0


def test_standby_never_takes_a_member_above_its_most() -> None:
    assert [standby_for(desired, 1, 3) for desired in (1, 2, 3)] == [1, 1, 0]
    assert standby_for(1, 2, 2) == 1 and standby_for(1, 0, 4) == 0


def test_without_standby_every_ready_replica_is_routed() -> None:
    replicas = (replica("r1", "a"), replica("r2", "b"), replica("r3", "b", state="starting"))
    snap = standby_snapshot(replicas, routed=1, standby=0, prices={"a": 1.0, "b": 2.0})
    assert route(snap) == {"r1", "r2"}  # as before standby: beyond the desired count until drained


def test_the_standby_replica_is_the_one_on_the_most_expensive_agent() -> None:
    replicas = (replica("r1", "cheap"), replica("r2", "dear"))
    snap = standby_snapshot(replicas, routed=1, standby=1, prices={"cheap": 1.0, "dear": 2.0})
    assert route(snap) == {"r1"}


def test_a_scale_up_routes_the_standby_replica_at_once_and_launches_its_successor() -> None:
    replicas = (replica("r1", "cheap"), replica("r2", "dear"))
    snap = standby_snapshot(replicas, routed=2, standby=1, prices={"cheap": 1.0, "dear": 2.0})
    assert route(snap, frozenset({"r1"})) == {"r1", "r2"}  # no replica start in the request path
    decision = decide(snap, [agent("dear", 2.0)], now=0.0)
    assert [(launch.member, launch.agent_id, launch.new_executor) for launch in decision.launches] == \
        [("m", "dear", False)]  # the next standby, in the executor already loaded


def test_a_routed_replica_stays_routed_over_a_standby_one_on_a_cheaper_agent() -> None:
    replicas = (replica("r1", "cheap"), replica("r2", "dear"), replica("r3", "cheap"))
    snap = standby_snapshot(replicas, routed=2, standby=1, prices={"cheap": 1.0, "dear": 2.0})
    assert route(snap, frozenset({"r1", "r2"})) == {"r1", "r2"}  # r3 (new) is the standby: no flapping
    assert route(snap, frozenset()) == {"r1", "r3"}


def test_a_lost_routed_replica_is_replaced_by_the_standby_one() -> None:
    replicas = (replica("r2", "dear"),)  # r1 (routed) ended
    snap = standby_snapshot(replicas, routed=1, standby=1, prices={"cheap": 1.0, "dear": 2.0})
    assert route(snap, frozenset()) == {"r2"}


def test_a_scale_down_sets_one_aside_and_drains_the_rest_from_the_dear_agent() -> None:
    replicas = (replica("r1", "cheap"), replica("r2", "dear"), replica("r3", "dear"))
    snap = standby_snapshot(replicas, routed=1, standby=1, prices={"cheap": 1.0, "dear": 2.0})
    decision = decide(snap, [], now=0.0)
    [drained] = decision.drains
    assert drained.agent_id == "dear" and drained.reason == "scale_down"
    left = tuple(r for r in replicas if r.replica_id != drained.replica_id)
    assert route(dataclasses.replace(snap, replicas=left), frozenset({"r1", "r2", "r3"})) == {"r1"}


def test_the_cost_counts_the_standby_agent_and_the_bound_counts_the_standby_replica() -> None:
    # one agent of 1 cpu fits one replica: the routed one on the cheap agent, the standby on the dear one
    cheap, dear = agent("cheap", 1.0, cpus=1.0), agent("dear", 2.0, cpus=1.0)
    replicas = (replica("r1", "cheap"), replica("r2", "dear"))
    snap = standby_snapshot(replicas, routed=1, standby=1, prices={"cheap": 1.0, "dear": 2.0})
    empty = [dataclasses.replace(a, capacity=a.capacity - DEMAND) for a in (cheap, dear)]
    report = deployment_cost(snap, empty)
    assert (report.cost_per_hour, report.lower_bound_per_hour) == (3.0, 3.0)
    alone = dataclasses.replace(snap, targets={"m": MemberTarget("m", 1, OLD, DEMAND)}, replicas=replicas[:1])
    assert deployment_cost(alone, [dataclasses.replace(cheap, capacity=cheap.capacity - DEMAND), dear]
                           ).lower_bound_per_hour == 1.0


# --- the controller (recording driver, no processes) ---------------------------------------------


def routed_ids(deployment: Deployment, member: str) -> set[str]:
    return {r.replica_id for r in deployment.table.ready(member)}


def test_the_controller_routes_its_standby_replica_on_a_scale_up_and_on_a_loss(demo: JobSpec, server: Any) -> None:
    deployment = Deployment(demo, server, bounds={"linear": (1, 3, 1), "logistic": (1, 1, 1)})  # type: ignore[dict-item]
    controller = deployment.controller
    try:
        deployment.subscribe()
        controller.resourceOffers(deployment.driver, [port_offer("a1", cpus=8.0)])
        tasks = wait_for(lambda: len(deployment.launched()) == 3 and deployment.launched())
        models = sorted(t["task_id"]["value"].split(".")[0] for t in tasks)
        assert models == ["linear", "linear", "logistic"]  # logistic at its most (1): no standby
        for task in tasks:
            deployment.run(task)
        wait_for(lambda: controller.counts()["linear"].get("standby") == 1)
        assert len(routed_ids(deployment, "linear")) == 1 and len(routed_ids(deployment, "logistic")) == 1
        # the autoscaler wants one more: the standby one is in the table within one decision
        with controller.lock:
            controller.desired["linear"] = 2
            # two ready, one routed: not ready until the standby one is in the gateway's table
            assert not controller.all_ready()
        controller.poke()
        wait_for(lambda: len(routed_ids(deployment, "linear")) == 2)
        assert controller.all_ready()
        controller.resourceOffers(deployment.driver, [port_offer("a1", begin=31010, end=31019, cpus=8.0)])
        [successor] = wait_for(lambda: len(deployment.launched()) == 4 and deployment.launched()[3:])
        deployment.run(successor)
        wait_for(lambda: controller.counts()["linear"].get("standby") == 1)
        # a routed replica lost: the standby one takes its place at once
        lost = sorted(routed_ids(deployment, "linear"))[0]
        controller.statusUpdate(deployment.driver, make_status(lost, "TASK_FAILED", "a1"))
        wait_for(lambda: lost not in routed_ids(deployment, "linear") and len(routed_ids(deployment, "linear")) == 2)
        assert successor["task_id"]["value"] in routed_ids(deployment, "linear")
    finally:
        deployment.close()


# --- the bench's step and fall on a simulated cluster (``fleet.Fleet``: the real controller) ------


def test_a_standby_forest_is_routed_in_the_step_s_decision_and_the_fall_keeps_the_cost_at_its_bound() -> None:
    import dataclasses as dc

    from fleet import BENCH_MEMBERS, Fleet
    from test_fall import FALL_AT, STEP_AT, assert_falls_to_the_bound, step_and_fall

    members = tuple(dc.replace(m, standby_replicas=1) if m.name == "forest" else m for m in BENCH_MEMBERS)
    fleet = Fleet(members=members, rate=step_and_fall)
    fleet.run_until(STEP_AT)
    # four replicas need both agents (two forests fill one): the standby's price is paid, and bounded
    assert sorted(m for ms in fleet.placed().values() for m in ms) == ["boosting", "forest", "forest", "logistic"]
    assert (fleet.cost_now(), fleet.bound_now()) == (3.0, 3.0)
    assert len(fleet.table.ready("forest")) == 1 and fleet.controller.counts()["forest"]["standby"] == 1
    wanted_at = routed_at = None
    while fleet.now < FALL_AT:
        fleet.run_until(fleet.now + 0.25)
        if wanted_at is None and fleet.controller.desired["forest"] == 2:
            wanted_at = fleet.now
        if routed_at is None and len(fleet.table.ready("forest")) == 2:
            routed_at = fleet.now
    assert wanted_at is not None and routed_at == wanted_at  # the same decision: no replica start
    fleet.run_until(FALL_AT + 90.0)
    assert_falls_to_the_bound(fleet)
    assert fleet.controller.desired["forest"] == 1 and fleet.controller.counts()["forest"]["standby"] == 1
    assert (fleet.cost_now(), fleet.bound_now()) == (3.0, 3.0)
