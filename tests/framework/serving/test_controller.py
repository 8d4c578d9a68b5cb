"""The serving controller against a recording driver (no processes): replicas launched with
ports into our executor, registered in the replica table once running and healthy, replaced when
they end, drained to scale down, rolled to a changed model (new first), re-adopted from the
deployment journal."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import harness
from factories import make_offer, make_status
from framework.artifacts import ArtifactServer
from framework.demo import train_demo
from framework.jobspec import JobSpec, load_job
from framework.serving.controller import LiveReplica, ServedMember, ServingController
from framework.serving.routing import ReplicaTable
from framework.serving.service import ServeCatalog
from framework.serving.state import ServeState
from harness import FakeDriver


wait_for = partial(harness.wait_for, timeout=10.0, interval=0.01)


def port_offer(agent: str, begin: int = 31000, end: int = 31009, cpus: float = 2.0, mem: float = 4096.0,
               price: float = 1.0) -> Any:
    offer = make_offer(agent, cpus=cpus, mem=mem, attributes={"price": price})
    offer.resources.append({"name": "ports", "type": "RANGES", "role": "*",
                            "ranges": {"range": [{"begin": begin, "end": end}]}})
    return offer


class LockedDriver(FakeDriver):
    """A recording driver whose lists the test reads while the controller's worker writes."""

    def __init__(self, scheduler: Any) -> None:
        super().__init__(scheduler)
        self.shutdowns: list[tuple[str, str]] = []

    def shutdownExecutor(self, executor_id: Any, agent_id: Any) -> None:  # noqa: N802 (the SHUTDOWN call)
        self.shutdowns.append((agent_id["value"], executor_id["value"]))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> JobSpec:
    return load_job(train_demo(tmp_path_factory.mktemp("demo")))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ArtifactServer]:
    server = ArtifactServer(tmp_path / "results", bind="127.0.0.1").start()
    yield server
    server.stop()


class Deployment:
    def __init__(self, spec: JobSpec, server: ArtifactServer, state: ServeState | None = None,
                 bounds: dict[str, tuple[int, int]] | None = None, healthy: Callable[[LiveReplica], bool] | None = None
                 ) -> None:
        self.catalog = ServeCatalog(spec, server, "python3", server.publish("exec.tgz", spec.models[0].path),
                                    "127.0.0.1")
        self.catalog.publish_models(spec)
        self.table = ReplicaTable()
        bounds = bounds or {}
        targets = {m.name: ServedMember(m.name, m.sha256, *bounds.get(m.name, (1, 3))) for m in spec.models}
        self.checked: list[str] = []

        def check(replica: LiveReplica) -> bool:
            self.checked.append(replica.task_id)
            return healthy(replica) if healthy else True

        self.controller = ServingController(targets, self.catalog, self.table, spec.pricing, loopback=False,
                                            state=state, health_check=check)
        self.driver = LockedDriver(self.controller)
        self.controller.start(self.driver)

    def subscribe(self) -> None:
        self.controller.registered(self.driver, {"value": "F1"}, {"hostname": "master", "port": 5050})

    def launched(self) -> list[dict[str, Any]]:
        return [task for _offers, tasks, _filters in self.driver.launches for task in tasks]

    def run(self, task: dict[str, Any], agent: str = "a1", mode: str = "thread",
            phases: dict[str, float] | None = None) -> None:
        data = base64.b64encode(json.dumps({"port": 1, "pid": 4242, "predict_mode": mode,
                                            "phases": phases or {}}).encode()).decode()
        self.controller.statusUpdate(self.driver, make_status(task["task_id"]["value"], "TASK_RUNNING", agent,
                                                              data=data))

    def close(self) -> None:
        self.controller.close()


def payload(task: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.b64decode(task["data"]))


def ports_of(task: dict[str, Any]) -> list[int]:
    [resource] = [r for r in task["resources"] if r["name"] == "ports"]
    return [r["begin"] for r in resource["ranges"]["range"]]


def test_min_replicas_launch_with_ports_and_join_the_table_once_running(demo: JobSpec, server: ArtifactServer) -> None:
    deployment = Deployment(demo, server)
    try:
        deployment.subscribe()
        deployment.controller.resourceOffers(deployment.driver, [port_offer("a1")])
        tasks = wait_for(lambda: len(deployment.launched()) == 2 and deployment.launched())
        assert sorted(payload(t)["model"] for t in tasks) == ["linear", "logistic"]
        assert sorted(p for t in tasks for p in ports_of(t)) == [31000, 31001]  # one port each, never shared
        for task in tasks:
            body = payload(task)
            assert body["kind"] == "replica" and body["port"] == ports_of(task)[0] and body["host"] == "127.0.0.1"
            assert body["sha256"] == demo.model(body["model"]).sha256
            assert task["executor"]["executor_id"]["value"] == "ensemble.g0"  # the shared executor
        assert deployment.table.ready("linear") == []  # not before TASK_RUNNING and a health check
        for task in tasks:
            deployment.run(task)
        wait_for(lambda: deployment.table.ready("linear") and deployment.table.ready("logistic"))
        [linear] = deployment.table.ready("linear")
        port = payload(next(t for t in tasks if payload(t)["model"] == "linear"))["port"]
        assert linear.url == f"http://a1.example:{port}" and linear.agent_id == "a1"  # the agent's hostname
        assert deployment.controller.all_ready()
        # Nothing more is wanted: later offers are declined (not suppressed: a re-pack needs offers).
        deployment.controller.resourceOffers(deployment.driver, [port_offer("a2")])
        wait_for(lambda: deployment.driver.declines)
        assert len(deployment.launched()) == 2
    finally:
        deployment.close()


def test_later_replicas_of_a_model_are_launched_with_the_predict_mode_its_first_one_measured(
        demo: JobSpec, server: ArtifactServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="framework.serving.controller")
    deployment = Deployment(demo, server)
    try:
        deployment.subscribe()
        deployment.controller.resourceOffers(deployment.driver, [port_offer("a1")])
        tasks = wait_for(lambda: len(deployment.launched()) == 2 and deployment.launched())
        assert [payload(t)["predict_mode"] for t in tasks] == [None, None]  # nothing measured yet: they probe
        for task in tasks:
            mode = "process" if payload(task)["model"] == "linear" else "thread"
            deployment.run(task, mode=mode, phases={"executor_start": 1.25, "load": 0.5, "probe": 0.75})
        wait_for(deployment.controller.all_ready)
        # Each ready replica's start is logged step by step (the executor's own timing in brackets).
        ready = [r.getMessage() for r in caplog.records if " ready at " in r.getMessage()]
        assert len(ready) == 2 and all("(executor_start 1.25, load 0.50, probe 0.75)" in line for line in ready)
        with deployment.controller.lock:
            deployment.controller.desired["linear"] = 2
            deployment.controller.desired["logistic"] = 2
        deployment.controller.poke()
        wait_for(lambda: deployment.driver.revived)
        deployment.controller.resourceOffers(deployment.driver, [port_offer("a1", begin=31002)])
        later = wait_for(lambda: len(deployment.launched()) == 4 and deployment.launched()[2:])
        assert {payload(t)["model"]: payload(t)["predict_mode"] for t in later} == {"linear": "process",
                                                                                   "logistic": "thread"}
    finally:
        deployment.close()


def test_a_replica_that_ends_is_removed_and_replaced(demo: JobSpec, server: ArtifactServer) -> None:
    deployment = Deployment(demo, server)
    try:
        deployment.subscribe()
        deployment.controller.resourceOffers(deployment.driver, [port_offer("a1")])
        tasks = wait_for(lambda: len(deployment.launched()) == 2 and deployment.launched())
        for task in tasks:
            deployment.run(task)
        wait_for(deployment.controller.all_ready)
        linear = next(t for t in tasks if payload(t)["model"] == "linear")
        revived = deployment.driver.revived
        deployment.controller.statusUpdate(deployment.driver, make_status(
            linear["task_id"]["value"], "TASK_FAILED", "a1", reason="REASON_EXECUTOR_TERMINATED",
            message="executor exited"))
        wait_for(lambda: not deployment.table.ready("linear"))
        wait_for(lambda: deployment.driver.revived > revived)  # offers wanted again
        deployment.controller.resourceOffers(deployment.driver, [port_offer("a1")])
        [replacement] = wait_for(lambda: deployment.launched()[2:])
        assert payload(replacement)["model"] == "linear"
        # Its executor died: the replacement starts a new one (another generation).
        assert replacement["executor"]["executor_id"]["value"] == "ensemble.g1"
        assert "resources" in replacement["executor"]
        assert deployment.controller.replaced == 1
    finally:
        deployment.close()


def test_scale_down_drains_the_replica_on_the_most_expensive_agent(demo: JobSpec, server: ArtifactServer) -> None:
    deployment = Deployment(demo, server, bounds={"linear": (2, 3), "logistic": (1, 1)})
    try:
        deployment.subscribe()
        deployment.controller.resourceOffers(deployment.driver, [port_offer("cheap", cpus=1.2, price=1.0),
                                                                 port_offer("dear", cpus=1.2, price=5.0)])
        tasks = wait_for(lambda: len(deployment.launched()) == 3 and deployment.launched())
        for task in tasks:
            deployment.run(task, task["agent_id"]["value"])
        wait_for(deployment.controller.all_ready)
        on_dear = [t["task_id"]["value"] for t in tasks if t["agent_id"]["value"] == "dear"
                   and payload(t)["model"] == "linear"]
        with deployment.controller.lock:
            deployment.controller.desired["linear"] = 1
        deployment.controller.poke()
        if on_dear:  # the packer put a linear replica on the dear agent: that one goes
            wait_for(lambda: on_dear[0] in deployment.driver.kills)
        killed = wait_for(lambda: deployment.driver.kills)
        assert len(killed) == 1
        assert len(deployment.table.ready("linear")) == 1
        assert killed[0] not in {r.replica_id for r in deployment.table.ready("linear")}
    finally:
        deployment.close()


def test_rolling_update_starts_new_replicas_before_old_ones_drain(demo: JobSpec, server: ArtifactServer) -> None:
    deployment = Deployment(demo, server)
    try:
        deployment.subscribe()
        deployment.controller.resourceOffers(deployment.driver, [port_offer("a1")])
        tasks = wait_for(lambda: len(deployment.launched()) == 2 and deployment.launched())
        for task in tasks:
            deployment.run(task)
        wait_for(deployment.controller.all_ready)
        old = next(t["task_id"]["value"] for t in tasks if payload(t)["model"] == "linear")
        # The job reloaded with another linear model file: served, then the member retargeted.
        linear = demo.model("linear")
        changed = linear.path.with_name("linear-v2.joblib")
        changed.write_bytes(linear.path.read_bytes() + b"\0")
        new_sha = hashlib.sha256(changed.read_bytes()).hexdigest()
        deployment.catalog.publish_models(dataclasses.replace(demo, models=tuple(
            dataclasses.replace(m, path=changed, sha256=new_sha) if m.name == "linear" else m for m in demo.models)))
        deployment.controller.retarget({"linear": ServedMember("linear", new_sha, 1, 3)})
        wait_for(lambda: deployment.driver.revived)
        deployment.controller.resourceOffers(deployment.driver, [port_offer("a1", begin=31000, end=31009)])
        [new] = wait_for(lambda: deployment.launched()[2:])
        assert payload(new)["sha256"] == new_sha and ports_of(new) == [31002]
        assert payload(new)["model_url"].endswith(f"linear-{new_sha[:16]}.joblib")  # the old ones' ports stay taken
        time.sleep(0.3)
        assert old not in deployment.driver.kills, "the old replica drained before the new one was ready"
        assert [r.replica_id for r in deployment.table.ready("linear")] == [old]
        deployment.run(new)
        wait_for(lambda: old in deployment.driver.kills)
        assert [r.sha256 for r in deployment.table.ready("linear")] == [new_sha]
    finally:
        deployment.close()


def test_journal_keeps_replicas_and_a_restart_adopts_the_running_ones(demo: JobSpec, server: ArtifactServer,
                                                                      tmp_path: Path) -> None:
    state = ServeState.open(tmp_path / "state")
    deployment = Deployment(demo, server, state=state)
    try:
        deployment.subscribe()
        deployment.controller.resourceOffers(deployment.driver, [port_offer("a1")])
        tasks = wait_for(lambda: len(deployment.launched()) == 2 and deployment.launched())
        for task in tasks:
            deployment.run(task)
        wait_for(deployment.controller.all_ready)
        assert state.framework_id == "F1"
        wait_for(lambda: {r.state for r in state.replicas()} == {"TASK_RUNNING"})
    finally:
        deployment.close()
        state.close()

    state = ServeState.open(tmp_path / "state")
    records = state.replicas()
    assert sorted(r.member for r in records) == ["linear", "logistic"]
    again = Deployment(demo, server, state=state)
    try:
        assert again.controller.adopt(records) == 2
        again.controller.avoid_earlier_executors(7)
        again.controller.reregistered(again.driver, {"hostname": "master", "port": 5050})
        wait_for(lambda: again.driver.reconciles)
        assert sorted(t["task_id"]["value"] for t in again.driver.reconciles[0]) == sorted(r.task_id for r in records)
        for task in tasks:
            again.run(task)  # the reconciliation's answer
        wait_for(again.controller.all_ready)
        again.controller.resourceOffers(again.driver, [port_offer("a1")])
        wait_for(lambda: again.driver.declines)
        assert again.launched() == [], "an adopted replica was launched again"
        assert sorted(r.replica_id for m in ("linear", "logistic") for r in again.table.ready(m)) == \
            sorted(r.task_id for r in records)
    finally:
        again.close()
        state.close()


def test_an_adopted_executor_left_without_replicas_is_shut_down(demo: JobSpec, server: ArtifactServer,
                                                               tmp_path: Path) -> None:
    """A restarted ``serve`` knows an earlier run's executor from its adopted replicas' journal
    rows: once those replicas have ended and it stayed idle, it is shut down like one of ours
    (no orphan executor holding the agent), and the executor that still has a replica is not."""
    from framework.serving.state import ReplicaRecord

    deployment = Deployment(demo, server)
    deployment.controller.executor_idle_seconds = 0.2
    try:
        records = [ReplicaRecord("linear.replica-old-1", "linear", "a1", "a1.example", 31000,
                                 demo.model("linear").sha256, "TASK_RUNNING", "ensemble.g3"),
                   ReplicaRecord("logistic.replica-old-2", "logistic", "a2", "a2.example", 31001,
                                 demo.model("logistic").sha256, "TASK_RUNNING", "ensemble.g3")]
        assert deployment.controller.adopt(records) == 2
        deployment.subscribe()
        wait_for(lambda: deployment.driver.reconciles)
        deployment.controller.statusUpdate(deployment.driver, make_status("linear.replica-old-1", "TASK_FAILED",
                                                                          "a1", message="model server exited"))
        deployment.controller.statusUpdate(deployment.driver, make_status("logistic.replica-old-2", "TASK_RUNNING",
                                                                          "a2"))
        wait_for(lambda: deployment.driver.shutdowns)
        time.sleep(1.0)  # several idle periods: the a2 executor, still serving, is never shut down
        assert deployment.driver.shutdowns == [("a1", "ensemble.g3")]
        assert ("a1", "ensemble.g3") not in deployment.controller.hosting
        assert deployment.controller.hosting[("a2", "ensemble.g3")] is None
    finally:
        deployment.close()
