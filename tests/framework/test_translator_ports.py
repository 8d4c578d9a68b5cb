"""Ports in the translator and the offers (issue 15): read from offers as Mesos sends them, kept per
agent, chosen lowest first, and carried in a TaskInfo as a RANGES resource."""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymesos import MesosSchedulerDriver, Scheduler

from framework import translator
from framework.localmesos import AgentSpec, LocalCluster
from framework.offers import merge_by_agent
from framework.packing import Agent, PriceTable, Resources

TRANSCRIPT = Path("/work/shared/reference/real-mesos/mesos-1.11.1-transcript.json")


def _offer(offer_id: str, agent: str, ports: list[tuple[int, int]], role: str = "*") -> dict:
    """An offer in the shape real Mesos 1.11 sends (ports first, as in the recorded transcript)."""
    return {"id": {"value": offer_id}, "agent_id": {"value": agent}, "hostname": f"{agent}.example",
            "resources": [{"name": "ports", "type": "RANGES", "role": role,
                           "ranges": {"range": [{"begin": b, "end": e} for b, e in ports]}},
                          {"name": "cpus", "type": "SCALAR", "scalar": {"value": 2.0}, "role": "*"},
                          {"name": "mem", "type": "SCALAR", "scalar": {"value": 4096.0}, "role": "*"}],
            "attributes": []}


def test_the_ports_of_a_real_mesos_offer_are_read() -> None:
    if not TRANSCRIPT.exists():
        pytest.skip("no recorded transcript on this machine")
    entries = json.loads(TRANSCRIPT.read_text())
    offer = next(e for e in entries if e["kind"] == "event OFFERS")["event"]["offers"]["offers"][0]
    view = translator.read_offer(offer, "*")
    assert view.ports == ((31000, 32000),)
    assert {name for name, _role, _amount in view.pools} == {"cpus", "mem", "disk"}


def test_only_unreserved_ports_are_read_and_ranges_are_normalised() -> None:
    view = translator.read_offer(_offer("o1", "a", [(31005, 31010), (31000, 31004), (40000, 40000)]), "*")
    assert view.ports == ((31000, 31010), (40000, 40000))
    reserved = translator.read_offer(_offer("o2", "a", [(31000, 32000)], role="serving"), "serving")
    assert reserved.ports == ()


def test_merge_by_agent_keeps_each_agents_ports_and_counts_them() -> None:
    views = [translator.read_offer(_offer("o1", "a", [(31000, 31009)]), "*"),
             translator.read_offer(_offer("o2", "a", [(31010, 31019), (32000, 32000)]), "*"),
             translator.read_offer(_offer("o3", "b", []), "*")]
    a, b = merge_by_agent(views, PriceTable(), {}, {}, {})
    assert a.port_ranges == ((31000, 31019), (32000, 32000)) and a.capacity.ports == 21
    assert a.capacity.cpus == 4.0 and a.offer_ids == ("o1", "o2")
    assert b.port_ranges == () and b.capacity == Resources(cpus=2.0, mem=4096.0)


def test_assign_ports_lowest_first_skipping_those_taken() -> None:
    free = ((31000, 31002), (31010, 31011))
    assert translator.assign_ports(free, 2) == [31000, 31001]
    assert translator.assign_ports(free, 3, taken={31001}) == [31000, 31002, 31010]
    assert translator.assign_ports(free, 0) == []
    with pytest.raises(ValueError, match="5 wanted, the offered ranges hold 4 free"):
        translator.assign_ports(free, 5, taken=[31011])


@st.composite
def _ranges(draw: st.DrawFn) -> list[tuple[int, int]]:
    starts = draw(st.lists(st.integers(31000, 31100), max_size=5))
    return [(s, s + draw(st.integers(-1, 8))) for s in starts]


@given(free=_ranges(), count=st.integers(0, 20), taken=st.sets(st.integers(30990, 31110), max_size=15))
@settings(max_examples=200, deadline=None)
def test_assign_ports_properties(free: list[tuple[int, int]], count: int, taken: set[int]) -> None:
    available = sorted({p for b, e in free for p in range(b, e + 1)} - taken)
    assert list(translator.free_ports(free, taken)) == available
    if count > len(available):
        with pytest.raises(ValueError):
            translator.assign_ports(free, count, taken)
        return
    # exactly the lowest ``count`` free ports not taken: distinct, offered, ascending
    assert translator.assign_ports(free, count, taken) == available[:count]


def test_task_info_carries_the_ports_as_a_ranges_resource() -> None:
    cpus = {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}}
    info = translator.task_info("r1", "replica", "a", [cpus], {"executor_id": {"value": "e"}}, b"{}",
                                ports=[31002])
    assert info["resources"] == [cpus, {"name": "ports", "type": "RANGES",
                                        "ranges": {"range": [{"begin": 31002, "end": 31002}]}}]
    assert translator.task_info("t1", "task", "a", [cpus], {}, b"{}")["resources"] == [cpus]
    several = translator.ports_resource([31005, 31001, 31002])
    assert several["ranges"]["range"] == [{"begin": 31001, "end": 31002}, {"begin": 31005, "end": 31005}]


class PortsScheduler(Scheduler):
    """Reads offers through the translator and the offers code; the first one launches two
    command tasks on two ports assigned in one round; later offers are only recorded."""

    def __init__(self) -> None:
        self.agents: "queue.Queue[Agent]" = queue.Queue()
        self.updates: "queue.Queue[Any]" = queue.Queue()
        self.launched: list[int] = []

    def resourceOffers(self, driver: Any, offers: Any) -> None:
        views = [translator.read_offer(o, "*") for o in offers]
        for agent in merge_by_agent(views, PriceTable(), {}, {}, {}):
            self.agents.put(agent)
            if self.launched:
                driver.declineOffer([translator.id_message(i) for i in agent.offer_ids], {"refuse_seconds": 0.2})
                continue
            tasks = []
            for name in ("first", "second"):
                (port,) = translator.assign_ports(agent.port_ranges, 1, taken=self.launched)
                self.launched.append(port)
                cpus = {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}}
                mem = {"name": "mem", "type": "SCALAR", "scalar": {"value": 32}}
                tasks.append({"task_id": translator.id_message(name), "agent_id": translator.id_message(agent.agent_id),
                              "name": name, "resources": [cpus, mem, translator.ports_resource([port])],
                              "command": {"value": "sleep 60"}})
            driver.launchTasks([translator.id_message(i) for i in agent.offer_ids], tasks, {"refuse_seconds": 0.2})

    def statusUpdate(self, driver: Any, update: Any) -> None:
        self.updates.put(translator.read_status(update))


def _next_agent(scheduler: PortsScheduler, predicate: Any, timeout: float = 20.0) -> Agent:
    deadline = time.monotonic() + timeout
    while True:
        agent = scheduler.agents.get(timeout=max(0.01, deadline - time.monotonic()))
        if predicate(agent):
            return agent


def test_ports_assigned_from_a_live_offer_are_launched_and_come_back(tmp_path: Path) -> None:
    cluster = LocalCluster(agents=[AgentSpec("agent-1", {"cpus": 2, "mem": 1024, "ports": "[31000-31009]"})],
                           work_dir=tmp_path / "cluster", allocation_interval=0.1,
                           command_kill_grace_period=1.0).start()
    scheduler = PortsScheduler()
    driver = MesosSchedulerDriver(scheduler, {"user": "tester", "name": "ports-test"}, cluster.master_address,
                                  use_addict=True)
    driver.start()
    try:
        first = _next_agent(scheduler, lambda a: True)
        assert first.port_ranges == ((31000, 31009),) and first.capacity.ports == 10
        assert scheduler.launched == [31000, 31001]
        running: set[str] = set()
        while running != {"first", "second"}:
            update = scheduler.updates.get(timeout=20)
            assert update.state in ("TASK_STARTING", "TASK_RUNNING"), update
            running |= {update.task_id} if update.state == "TASK_RUNNING" else set()
        rest = _next_agent(scheduler, lambda a: True)
        assert rest.port_ranges == ((31002, 31009),) and rest.capacity.ports == 8
        for name in ("first", "second"):
            driver.killTask(translator.id_message(name))
        _next_agent(scheduler, lambda a: a.port_ranges == ((31000, 31009),))
    finally:
        driver.stop()
        cluster.stop()
