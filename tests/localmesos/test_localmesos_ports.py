"""The ``ports`` resource (issue 15): agents offer Mesos' default range, a launch names ports of its
offer or is refused as Mesos 1.11 refuses it, and used ports come back only when their task ends."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from framework.localmesos import AgentSpec
from localmesos_helpers import Scheduler, command_task, resources, wait_for

TRANSCRIPT = Path("/work/shared/reference/real-mesos/mesos-1.11.1-transcript.json")


def ports(*pairs: tuple[int, int]) -> dict[str, Any]:
    return {"name": "ports", "type": "RANGES", "ranges": {"range": [{"begin": b, "end": e} for b, e in pairs]}}


def offered_ports(offer: dict[str, Any]) -> list[tuple[int, int]]:
    found = [r for r in offer["resources"] if r["name"] == "ports"]
    return [(r["begin"], r["end"]) for item in found for r in item["ranges"]["range"]]


def until_terminal(sched: Scheduler, task_id: str) -> dict[str, Any]:
    while True:
        status = sched.update(task_id)
        if "uuid" in status:
            sched.ack(status)
        if status["state"] not in ("TASK_STARTING", "TASK_RUNNING", "TASK_KILLING"):
            return status


def test_an_agent_naming_no_ports_offers_the_mesos_default_range_first(make_cluster: Any) -> None:
    cluster = make_cluster(agents=[AgentSpec(hostname="plain", resources={"cpus": 2, "mem": 4096}),
                                   AgentSpec(hostname="closed", resources={"cpus": 2, "mem": 4096, "ports": "[]"})])
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offers = {o["hostname"]: o for o in sched.offers()}
    expected = {**ports((31000, 32000)), "role": "*"}
    if TRANSCRIPT.exists():  # the very item real Mesos 1.11.1 offered
        recorded = next(e for e in json.loads(TRANSCRIPT.read_text()) if e["kind"] == "event OFFERS")
        assert recorded["event"]["offers"]["offers"][0]["resources"][0] == expected
    assert offers["plain"]["resources"][0] == expected
    assert offered_ports(offers["closed"]) == []
    by_host = {a["hostname"]: a for a in cluster.state()["slaves"]}
    assert by_host["plain"]["resources"]["ports"] == "[31000-32000]"
    assert "ports" not in by_host["closed"]["resources"]
    sched.close()


def test_ports_in_use_are_not_offered_until_their_task_ends(cluster: Any) -> None:
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offer = sched.offers()[0]
    assert offered_ports(offer) == [(31000, 32000)]
    sched.launch(offer, [command_task("serve", offer, "sleep 30", resources=resources() + [ports((31000, 31000))])],
                 refuse=0)
    starting = sched.update("serve")
    assert starting["state"] == "TASK_STARTING"
    sched.ack(starting)
    rest = sched.offers()[0]
    assert offered_ports(rest) == [(31001, 32000)]
    state = cluster.state()
    assert state["slaves"][0]["used_resources"]["ports"] == "[31000-31000]"
    assert state["frameworks"][0]["tasks"][0]["resources"]["ports"] == "[31000-31000]"

    # A port not in the offer (one in use, or one never offered) is refused like any resource
    # the offer does not hold: TASK_ERROR, REASON_TASK_INVALID, from the master, no uuid.
    sched.launch(rest, [command_task("taken", rest, "true", resources=resources() + [ports((31000, 31000))])],
                 refuse=0)
    error = sched.update("taken")
    assert error["state"] == "TASK_ERROR" and error["reason"] == "REASON_TASK_INVALID"
    assert error["source"] == "SOURCE_MASTER" and "uuid" not in error
    assert error["message"] == (
        "Total resources ports(allocated: *):[31000-31000]; cpus(allocated: *):0.1; mem(allocated: *):32 required by "
        "task and its executor is more than available ports(allocated: *):[31001-32000]; cpus(allocated: *):1.9; "
        "mem(allocated: *):4064; disk(allocated: *):10000")
    again = sched.offers()[0]
    sched.launch(again, [command_task("far", again, "true", resources=resources() + [ports((40000, 40000))])],
                 refuse=0)
    far = sched.update("far")
    assert far["state"] == "TASK_ERROR"
    assert far["message"].startswith("Total resources ports(allocated: *):[40000-40000]; cpus")
    assert offered_ports(sched.offers()[0]) == [(31001, 32000)]

    assert sched.call("KILL", {"task_id": {"value": "serve"}, "agent_id": offer["agent_id"]})[0] == 202
    assert until_terminal(sched, "serve")["state"] == "TASK_KILLED"
    freed = sched.next("OFFERS", predicate=lambda e: any(begin == 31000 for o in e["offers"]["offers"]
                                                        for begin, _end in offered_ports(o)))
    assert [offered_ports(o) for o in freed["offers"]["offers"]] == [[(31000, 31000)]]
    state = wait_for(lambda: (lambda s: s if "ports" not in s["slaves"][0]["used_resources"] else None)(
        cluster.state()))
    assert state["slaves"][0]["offered_resources"]["ports"] == "[31000-32000]"
    sched.close()


@pytest.mark.parametrize("spec, expected", [({"ports": "[31000-31002, 31005-31005]"}, "[31000-31002, 31005-31005]"),
                                            ({}, "[31000-32000]")])
def test_agent_total_ports(spec: dict[str, Any], expected: str) -> None:
    from framework.localmesos.resources import Resources

    assert Resources.for_agent({"cpus": 1, **spec}).to_state()["ports"] == expected
