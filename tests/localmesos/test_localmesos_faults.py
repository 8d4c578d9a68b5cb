"""Faults the embedded cluster can inject, seen through the unmodified pymesos scheduler driver:
an agent's process dying, the agent restarting, the master restarting with its state."""
from __future__ import annotations

import queue
from typing import Any

import pytest
from addict import Dict
from pymesos import MesosSchedulerDriver, Scheduler

from framework.localmesos import AgentSpec
from localmesos_helpers import Scheduler as RawScheduler
from localmesos_helpers import basic, command_task, wait_for

TERMINAL = ("TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST", "TASK_GONE",
            "TASK_DROPPED", "TASK_GONE_BY_OPERATOR")


def two_agents() -> list[AgentSpec]:
    return [AgentSpec(hostname=name, resources={"cpus": 2, "mem": 4096}) for name in ("a1", "a2")]


class Sleeper(Scheduler):
    """Launches one long ``sleep`` command task on the first offer from ``hostname``; records
    updates, offers (by hostname), lost agents and (re)registrations."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.launched = False
        self.updates: "queue.Queue[Any]" = queue.Queue()
        self.lost_agents: "queue.Queue[str]" = queue.Queue()
        self.registrations: "queue.Queue[str]" = queue.Queue()
        self.offered_hosts: "queue.Queue[tuple[str, str]]" = queue.Queue()

    def registered(self, driver: Any, framework_id: Any, master_info: Any) -> None:
        self.registrations.put("registered:" + framework_id["value"])

    def reregistered(self, driver: Any, master_info: Any) -> None:
        self.registrations.put("reregistered")

    def resourceOffers(self, driver: Any, offers: Any) -> None:  # noqa: N802
        for offer in offers:
            self.offered_hosts.put((offer.hostname, offer.agent_id.value))
            if self.launched or offer.hostname != self.hostname:
                driver.declineOffer(offer.id, {"refuse_seconds": 0.2})
                continue
            self.launched = True
            task = Dict(task_id={"value": "sleeper"}, agent_id=offer.agent_id, name="sleeper",
                        resources=[{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                                   {"name": "mem", "type": "SCALAR", "scalar": {"value": 32}}],
                        command={"value": "sleep 300"})
            driver.launchTasks(offer.id, [task])

    def statusUpdate(self, driver: Any, update: Any) -> None:  # noqa: N802
        self.updates.put(update)

    def slaveLost(self, driver: Any, agent_id: Any) -> None:  # noqa: N802
        self.lost_agents.put(agent_id["value"])

    def next_update(self, state: str, timeout: float = 20.0) -> Any:
        while True:
            update = self.updates.get(timeout=timeout)
            if update.state == state:
                return update
            assert update.state not in TERMINAL, update


def start_driver(cluster: Any, scheduler: Sleeper, failover_timeout: float = 0.0) -> MesosSchedulerDriver:
    info: dict[str, Any] = {"user": "tester", "name": "faults"}
    if failover_timeout:
        info["failover_timeout"] = failover_timeout
    driver = MesosSchedulerDriver(scheduler, info, cluster.master_address, use_addict=True)
    driver.start()
    return driver


def test_killed_agent_loses_its_tasks_and_executors_then_restarts(make_cluster: Any) -> None:
    cluster = make_cluster(agents=two_agents())
    scheduler = Sleeper("a1")
    driver = start_driver(cluster, scheduler)
    try:
        running = scheduler.next_update("TASK_RUNNING")
        killed_id = running.agent_id.value
        wait_for(cluster.live_processes)
        sessions = cluster.process_records()

        assert cluster.kill_agent("a1") == killed_id
        lost = scheduler.next_update("TASK_LOST")
        assert lost.task_id.value == "sleeper"
        assert lost.reason == "REASON_AGENT_REMOVED"
        assert lost.source == "SOURCE_MASTER"
        assert lost.agent_id.value == killed_id
        assert "uuid" not in lost  # a master-generated update: nothing to acknowledge
        assert scheduler.lost_agents.get(timeout=10) == killed_id  # FAILURE {agent_id} -> slaveLost
        wait_for(lambda: not cluster.live_processes())  # its executor died with it
        assert sessions
        state = cluster.state()
        assert [s["hostname"] for s in state["slaves"]] == ["a2"]
        assert state["unreachable_slaves"] == 1

        new_id = cluster.restart_agent("a1")
        assert new_id != killed_id
        assert [s["hostname"] for s in cluster.state()["slaves"]] == ["a2", "a1"]
        wait_for(lambda: ("a1", new_id) in drain(scheduler.offered_hosts))  # offered again, under its new id
    finally:
        driver.stop()
        driver.join()


def drain(q: "queue.Queue[Any]") -> list[Any]:
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items


@pytest.mark.parametrize("partition_aware", [False, True])
def test_killed_agent_reports_unreachable_to_partition_aware_frameworks(make_cluster: Any,
                                                                         partition_aware: bool) -> None:
    cluster = make_cluster(agents=two_agents())
    extra = {"capabilities": [{"type": "PARTITION_AWARE"}]} if partition_aware else {}
    sched = RawScheduler(cluster.master_address, extra_info=extra)
    offer = next(o for o in sched.offers() if o["hostname"] == "a1")
    sched.launch(offer, [command_task("t-1", offer, "sleep 300")])
    status = sched.update("t-1")
    while status["state"] != "TASK_RUNNING":
        sched.ack(status)
        status = sched.update("t-1")
    sched.ack(status)
    cluster.kill_agent("a1")
    lost = sched.update("t-1")
    assert lost["state"] == ("TASK_UNREACHABLE" if partition_aware else "TASK_LOST")
    assert lost["reason"] == "REASON_AGENT_REMOVED"
    assert sched.next("FAILURE")["failure"] == {"agent_id": offer["agent_id"]}
    # Reconciling the task on the vanished agent says the same.
    assert sched.call("RECONCILE", {"tasks": [{"task_id": {"value": "t-1"}, "agent_id": offer["agent_id"]}]}) \
        == (202, "")
    again = sched.update("t-1")
    assert again["state"] == ("TASK_UNREACHABLE" if partition_aware else "TASK_LOST")
    assert again["reason"] == "REASON_RECONCILIATION"
    sched.call("TEARDOWN")
    sched.close()


def test_master_restart_keeps_state_and_the_framework_fails_over(make_cluster: Any) -> None:
    cluster = make_cluster(agents=two_agents())
    scheduler = Sleeper("a1")
    driver = start_driver(cluster, scheduler, failover_timeout=60)
    try:
        first = scheduler.registrations.get(timeout=10)
        framework_id = first.split(":", 1)[1]
        running = scheduler.next_update("TASK_RUNNING")
        pids = wait_for(cluster.live_processes)

        cluster.restart_master(downtime=0.5)
        assert scheduler.registrations.get(timeout=30) == "reregistered"  # same framework id, new stream
        state = cluster.state()
        assert [f["id"] for f in state["frameworks"]] == [framework_id]
        assert state["frameworks"][0]["connected"]
        driver.reconcileTasks([])
        reconciled = scheduler.next_update("TASK_RUNNING")
        assert reconciled.reason == "REASON_RECONCILIATION"
        assert reconciled.agent_id == running.agent_id
        assert cluster.live_processes() == pids  # the executor never noticed
    finally:
        driver.stop()
        driver.join()
    wait_for(lambda: cluster.state()["completed_frameworks"])
    wait_for(lambda: not cluster.live_processes())


def test_master_restart_beyond_failover_timeout_removes_the_framework(make_cluster: Any) -> None:
    cluster = make_cluster(agents=two_agents())
    sched = RawScheduler(cluster.master_address, failover_timeout=0.5)
    offer = next(o for o in sched.offers() if o["hostname"] == "a1")
    sched.launch(offer, [command_task("t-1", offer, "sleep 300")])
    wait_for(cluster.live_processes)
    cluster.restart_master()
    sched.closed.wait(10)
    assert sched.closed.is_set()  # the subscription broke with the restart
    wait_for(lambda: cluster.state()["completed_frameworks"])  # nobody re-subscribed in time
    wait_for(lambda: not cluster.live_processes())  # its executors were shut down
    again = RawScheduler(cluster.master_address, framework_id=sched.framework_id)
    assert again.next("ERROR")["error"]["message"] == "Framework has been removed"
    again.close()


def test_failover_by_another_principal_is_refused(make_cluster: Any) -> None:
    """Issue 11's hijack: a second principal that read the framework id cannot take the framework over."""
    cluster = make_cluster(credentials={"owner": "s1", "intruder": "s2"})
    owner = RawScheduler(cluster.master_address, headers=basic("owner", "s1"), extra_info={"principal": "owner"})
    owner.offers()
    framework_id = owner.framework_id
    intruder = RawScheduler(cluster.master_address, framework_id=framework_id, headers=basic("intruder", "s2"))
    assert intruder.status == 200
    assert intruder.next("ERROR")["error"]["message"] == "Changing framework's principal is not allowed."
    anonymous = RawScheduler(cluster.master_address, framework_id=framework_id)
    assert anonymous.status == 401
    state = cluster.state()
    assert state["frameworks"][0]["connected"] and not owner.closed.is_set()
    owner.none("ERROR", 0.5)  # the owner was not failed over
    # The owner itself may fail over (a restarted scheduler with the same credentials).
    again = RawScheduler(cluster.master_address, framework_id=framework_id, headers=basic("owner", "s1"),
                         extra_info={"principal": "owner"})
    assert again.next("SUBSCRIBED")["subscribed"]["framework_id"]["value"] == framework_id
    assert owner.next("ERROR")["error"]["message"] == "Framework failed over"
    again.call("TEARDOWN")
    for sched in (owner, intruder, anonymous, again):
        sched.close()
