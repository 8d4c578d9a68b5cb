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
import shutil
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
                                    "127.0.0.1", server.results_dir.parent / "models")
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

    def first_launches(self) -> list[dict[str, Any]]:
        """Subscribe, offer agent a1 and return the two replicas (one per member) it launches."""
        self.subscribe()
        self.controller.resourceOffers(self.driver, [port_offer("a1")])
        return wait_for(lambda: len(self.launched()) == 2 and self.launched())

    def deploy(self) -> list[dict[str, Any]]:
        """:meth:`first_launches`, then both replicas run and pass their health checks."""
        tasks = self.first_launches()
        for task in tasks:
            self.run(task)
        wait_for(self.controller.all_ready)
        return tasks

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
        tasks = deployment.first_launches()
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
        tasks = deployment.first_launches()
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
        tasks = deployment.deploy()
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


def deploy_and_change_linear(deployment: Deployment, demo: JobSpec, version: str,
                             hold: bool = False) -> tuple[str, str]:
    """Deploy, then serve another linear model file (``linear-<version>.joblib``), as a reloaded
    job does before it retargets the member (``hold``: as a stacking update does, the files served
    until then held): the old linear replica's task id and the new sha256."""
    tasks = deployment.deploy()
    if hold:
        deployment.catalog.hold()
    old = next(t["task_id"]["value"] for t in tasks if payload(t)["model"] == "linear")
    linear = demo.model("linear")
    changed = linear.path.with_name(f"linear-{version}.joblib")
    changed.write_bytes(linear.path.read_bytes() + version.encode())
    new_sha = hashlib.sha256(changed.read_bytes()).hexdigest()
    deployment.catalog.publish_models(dataclasses.replace(demo, models=tuple(
        dataclasses.replace(m, path=changed, sha256=new_sha) if m.name == "linear" else m for m in demo.models)))
    return old, new_sha


def test_rolling_update_starts_new_replicas_before_old_ones_drain(demo: JobSpec, server: ArtifactServer) -> None:
    deployment = Deployment(demo, server)
    try:
        old, new_sha = deploy_and_change_linear(deployment, demo, "v2")
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


def test_a_held_update_keeps_the_old_replica_routed_beside_the_new_one_until_released(
        demo: JobSpec, server: ArtifactServer) -> None:
    """A stacking update (``retarget(hold=True)``): the new replica is ready and routed beside the
    old one, which is not drained until ``release_held``; ``all_ready`` holds once the new one is
    routed (the service switches the gateway then)."""
    deployment = Deployment(demo, server)
    controller = deployment.controller
    try:
        old, new_sha = deploy_and_change_linear(deployment, demo, "v3")
        linear = demo.model("linear")
        assert controller.retarget({"linear": ServedMember("linear", new_sha, 1, 3)}, hold=True) == ["linear"]
        assert controller.held == {"linear": linear.sha256} and not controller.all_ready()
        wait_for(lambda: deployment.driver.revived)
        controller.resourceOffers(deployment.driver, [port_offer("a1", begin=31000, end=31009)])
        [new] = wait_for(lambda: deployment.launched()[2:])
        deployment.run(new)
        wait_for(controller.all_ready)
        assert {r.sha256 for r in deployment.table.ready("linear")} == {linear.sha256, new_sha}
        time.sleep(0.3)
        assert old not in deployment.driver.kills, "a held replica drained before the hold was released"
        controller.release_held()
        wait_for(lambda: old in deployment.driver.kills)
        assert [r.sha256 for r in deployment.table.ready("linear")] == [new_sha] and not controller.held
    finally:
        deployment.close()


def test_a_held_replica_that_ends_is_replaced_with_its_own_model_file_and_a_roll_back_keeps_it(
        demo: JobSpec, server: ArtifactServer) -> None:
    """During a stacking update the gateway answers with the held replicas: one that ends is
    replaced with the held model file (its URL and sha256), not the new one; a roll-back (the held
    file current again) keeps that replacement and drains the new replica."""
    deployment = Deployment(demo, server)
    controller, driver = deployment.controller, deployment.driver
    try:
        old, new_sha = deploy_and_change_linear(deployment, demo, "v4", hold=True)
        linear = demo.model("linear")
        controller.retarget({"linear": ServedMember("linear", new_sha, 1, 3)}, hold=True)
        controller.resourceOffers(driver, [port_offer("a1")])
        [new] = wait_for(lambda: deployment.launched()[2:])
        assert payload(new)["sha256"] == new_sha
        controller.statusUpdate(driver, make_status(old, "TASK_FAILED", "a1", message="killed"))
        wait_for(lambda: old not in controller.replicas)
        controller.resourceOffers(driver, [port_offer("a1")])
        [again] = wait_for(lambda: deployment.launched()[3:])
        assert payload(again)["sha256"] == linear.sha256
        assert payload(again)["model_url"].endswith(f"linear-{linear.sha256[:16]}.joblib")
        deployment.run(again)
        wait_for(lambda: [r.sha256 for r in deployment.table.ready("linear")] == [linear.sha256])
        assert controller.held == {"linear": linear.sha256} and not controller.all_ready()
        controller.retarget({"linear": ServedMember("linear", linear.sha256, 1, 3)})  # the roll-back
        wait_for(lambda: new["task_id"]["value"] in driver.kills)
        assert [r.replica_id for r in deployment.table.ready("linear")] == [again["task_id"]["value"]]
        assert controller.all_ready() and not controller.held
    finally:
        deployment.close()


def kept_catalog(demo: JobSpec, server: ArtifactServer, tmp_path: Path) -> tuple[JobSpec, ServeCatalog]:
    """The demo job on copies of its model files (under ``tmp_path/files``, free to rewrite) and
    a catalog that keeps its copies under ``tmp_path/kept``, published."""
    models = tmp_path / "files"
    shutil.copytree(demo.model("linear").path.parent, models)
    spec = dataclasses.replace(demo, models=tuple(dataclasses.replace(m, path=models / m.path.name)
                                                  for m in demo.models))
    catalog = ServeCatalog(spec, server, "python3", "unused", "127.0.0.1", tmp_path / "kept")
    catalog.publish_models(spec)
    return spec, catalog


def test_replicas_start_from_a_copy_of_each_model_file_kept_under_its_sha256(demo: JobSpec, server: ArtifactServer,
                                                                             tmp_path: Path) -> None:
    """A model file rewritten in place (for a reload) leaves the URL of the file it replaced
    serving the bytes it had; a file whose bytes are not its sha256 any more is one line, and no
    copy of it is left."""
    import urllib.request

    from framework.errors import JobSpecError

    spec, catalog = kept_catalog(demo, server, tmp_path)
    linear = spec.model("linear")
    before = linear.path.read_bytes()
    linear.path.write_bytes(before + b"changed in place")
    with urllib.request.urlopen(catalog.model_urls["linear"], timeout=10) as response:
        assert response.read() == before
    changed = dataclasses.replace(spec, models=tuple(dataclasses.replace(m, sha256="0" * 64) if m.name == "linear"
                                                     else m for m in spec.models))
    with pytest.raises(JobSpecError, match=r"models \(linear\)\.sha256 does not match linear\.joblib \(it changed "
                                           r"while serve read it: the file has [0-9a-f]{64} now\)$"):
        catalog.keep(changed)
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == sorted(f"{m.sha256}.{m.format}"
                                                                          for m in spec.models)


def test_a_kept_copy_goes_once_nothing_runs_or_names_it(demo: JobSpec, server: ArtifactServer,
                                                        tmp_path: Path) -> None:
    """``prune`` keeps the job's files, the held ones and those a replica runs; a reload's copy
    (kept when it was checked, then refused) goes too, and its URL answers 404."""
    import urllib.error
    import urllib.request

    spec, catalog = kept_catalog(demo, server, tmp_path)
    old = spec.model("linear")
    old_url = catalog.model_urls["linear"]
    new_file = tmp_path / "files" / "linear-v2.joblib"
    new_file.write_bytes(old.path.read_bytes() + b"v2")
    new = dataclasses.replace(old, path=new_file, sha256=hashlib.sha256(new_file.read_bytes()).hexdigest())
    reloaded = dataclasses.replace(spec, models=tuple(new if m.name == "linear" else m for m in spec.models))
    kept = tmp_path / "kept"

    def files() -> set[str]:
        return {p.name for p in kept.iterdir()}

    assert catalog.prune(set()) == [] and len(files()) == len(spec.models)
    catalog.keep(reloaded)  # checked, then refused: the job stays on the old file
    assert f"{new.sha256}.joblib" in files()
    assert [p.name for p in catalog.prune(set())] == [f"{new.sha256}.joblib"]
    catalog.hold()  # a stacking update holds the files the old replicas run...
    catalog.publish_models(reloaded)  # ... while the new ones start
    assert catalog.prune(set()) == [] and files() == {f"{m.sha256}.{m.format}" for m in spec.models + reloaded.models}
    catalog.release()  # switched: the old replicas drain
    assert catalog.prune({old.sha256}) == []
    assert [p.name for p in catalog.prune(set())] == [f"{old.sha256}.joblib"]
    assert files() == {f"{m.sha256}.{m.format}" for m in reloaded.models}
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(old_url, timeout=10)
    assert gone.value.code == 404
    with urllib.request.urlopen(catalog.model_urls["linear"], timeout=10) as response:
        assert response.read() == new_file.read_bytes()


def test_journal_keeps_replicas_and_a_restart_adopts_the_running_ones(demo: JobSpec, server: ArtifactServer,
                                                                      tmp_path: Path) -> None:
    state = ServeState.open(tmp_path / "state")
    deployment = Deployment(demo, server, state=state)
    try:
        tasks = deployment.deploy()
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


def test_an_executor_journaled_idle_by_a_killed_serve_is_shut_down_by_the_next(demo: JobSpec, server: ArtifactServer,
                                                                              tmp_path: Path) -> None:
    """The journal keeps every executor of ours (schema 3): recorded with its first replica's
    launch, marked idle once its replicas have ended.  A ``serve`` that dies while its executor
    waits idle for its ``SHUTDOWN`` leaves it in the journal, and the next ``serve`` sends it."""
    state = ServeState.open(tmp_path / "state")
    deployment = Deployment(demo, server, state=state)
    deployment.controller.executor_idle_seconds = 3600.0  # this serve dies before it would shut it down
    try:
        tasks = deployment.first_launches()
        assert [(e.agent_id, e.executor_id, e.hostname, e.state) for e in state.executors()] == [
            ("a1", "ensemble.g0", "a1.example", "running")]  # journaled before the launch was sent
        for task in tasks:
            deployment.run(task)
        wait_for(deployment.controller.all_ready)
        for task in tasks:  # both replicas end (no offer: none replaces them there)
            deployment.controller.statusUpdate(deployment.driver, make_status(task["task_id"]["value"], "TASK_KILLED"))
        [idle] = wait_for(lambda: [e for e in state.executors() if e.state == "idle"])
        assert idle.executor_id == "ensemble.g0" and idle.idle_since is not None
        assert state.replicas() == [] and deployment.driver.shutdowns == []
    finally:
        deployment.close()  # killed: the executor's SHUTDOWN was never sent
        state.close()

    state = ServeState.open(tmp_path / "state")
    again = Deployment(demo, server, state=state)
    again.controller.executor_idle_seconds = 0.5
    try:
        assert again.controller.adopt(state.replicas(), state.executors()) == 0
        again.controller.avoid_earlier_executors(7)
        again.controller.reregistered(again.driver, {"hostname": "master", "port": 5050})
        assert wait_for(lambda: again.driver.shutdowns) == [("a1", "ensemble.g0")]
        assert state.executors() == [], "a shut-down executor stayed in the journal"
        # New replicas go to a new executor (the earlier run's ExecutorInfo is not reused).
        again.controller.resourceOffers(again.driver, [port_offer("a1")])
        tasks = wait_for(lambda: len(again.launched()) == 2 and again.launched())
        assert {t["executor"]["executor_id"]["value"] for t in tasks} == {"ensemble.g7"}
        assert [(e.executor_id, e.state) for e in state.executors()] == [("ensemble.g7", "running")]
    finally:
        again.close()
        state.close()


def test_an_idle_executor_of_a_killed_serve_waits_out_its_idle_time_and_one_that_serves_again_is_kept(
        demo: JobSpec, server: ArtifactServer, tmp_path: Path) -> None:
    """The idle time counts from when the earlier ``serve`` saw the executor idle (wall clock): a
    long-idle one is shut down at once, one just idle waits; one whose adopted replica still runs
    (the journal said running) is not shut down."""
    from framework.serving.state import ExecutorRecord, ReplicaRecord

    deployment = Deployment(demo, server)
    deployment.controller.executor_idle_seconds = 30.0
    try:
        now = time.time()
        executors = [ExecutorRecord("a1", "ensemble.g3", "a1.example", now - 3600.0),
                     ExecutorRecord("a2", "ensemble.g3", "a2.example", now),
                     ExecutorRecord("a3", "ensemble.g3", "a3.example")]
        replica = ReplicaRecord("linear.replica-old-1", "linear", "a3", "a3.example", 31000,
                                demo.model("linear").sha256, "TASK_RUNNING", "ensemble.g3")
        assert deployment.controller.adopt([replica], executors) == 1
        deployment.subscribe()
        wait_for(lambda: deployment.driver.reconciles)
        deployment.controller.statusUpdate(deployment.driver, make_status("linear.replica-old-1", "TASK_RUNNING",
                                                                          "a3"))
        assert wait_for(lambda: deployment.driver.shutdowns) == [("a1", "ensemble.g3")]
        time.sleep(0.5)  # ticks go by: a2 has been idle for far less than 30 s, a3 serves
        assert deployment.driver.shutdowns == [("a1", "ensemble.g3")]
        assert deployment.controller.hosting[("a3", "ensemble.g3")] is None
        assert deployment.controller.hosting[("a2", "ensemble.g3")] is not None
    finally:
        deployment.close()


def test_a_master_failover_reconciles_every_known_replica_keeps_them_serving_and_scaling_works_after(
        demo: JobSpec, server: ArtifactServer, tmp_path: Path) -> None:
    """The master fails over while serving: the driver re-subscribes under the same framework id
    (``reregistered``); the controller asks the master about every replica it knows (explicit
    reconciliation), keeps them in the table meanwhile and after, and still scales."""
    state = ServeState.open(tmp_path / "state")
    deployment = Deployment(demo, server, state=state, bounds={"linear": (1, 3), "logistic": (1, 1)})
    try:
        tasks = deployment.deploy()
        known = sorted(t["task_id"]["value"] for t in tasks)
        deployment.driver.framework_id = "F1"
        deployment.controller.disconnected(deployment.driver)
        deployment.controller.reregistered(deployment.driver, {"hostname": "master", "port": 5050})
        [reconciled] = wait_for(lambda: deployment.driver.reconciles)
        assert sorted(t["task_id"]["value"] for t in reconciled) == known  # explicit, not implicit ([])
        assert deployment.controller.framework_id == "F1" and state.framework_id == "F1"
        assert sorted(r.replica_id for m in ("linear", "logistic") for r in deployment.table.ready(m)) == known
        for task in tasks:  # the master's answers (REASON_RECONCILIATION): nothing changes
            deployment.controller.statusUpdate(deployment.driver, make_status(
                task["task_id"]["value"], "TASK_RUNNING", reason="REASON_RECONCILIATION", uuid=None))
        deployment.controller.retarget({"linear": ServedMember("linear", demo.model("linear").sha256, 2, 3)})
        deployment.controller.resourceOffers(deployment.driver, [port_offer("a1", begin=31000, end=31009)])
        [added] = wait_for(lambda: deployment.launched()[2:])
        assert payload(added)["model"] == "linear"
        assert deployment.driver.kills == [] and deployment.controller.replaced == 0
        assert sorted(r.replica_id for m in ("linear", "logistic") for r in deployment.table.ready(m)) == known
    finally:
        deployment.close()
        state.close()


def test_per_model_executors_hold_one_member_each_and_a_crash_replaces_only_its_member(
        demo: JobSpec, server: ArtifactServer, tmp_path: Path) -> None:
    """``executors = "per_model"``: each member's replicas go to executors of its own (with their
    own resources); one of them dying takes only its member's replica, replaced in a new
    generation of that member's executor, and the journal follows the executors."""
    spec = dataclasses.replace(demo, framework=dataclasses.replace(demo.framework, executors="per_model"))
    state = ServeState.open(tmp_path / "state")
    deployment = Deployment(spec, server, state=state)
    try:
        deployment.subscribe()
        deployment.controller.resourceOffers(deployment.driver, [port_offer("a1", cpus=4.0, mem=8192.0)])
        tasks = wait_for(lambda: len(deployment.launched()) == 2 and deployment.launched())
        executor_of = {payload(t)["model"]: t["executor"] for t in tasks}
        assert {m: e["executor_id"]["value"] for m, e in executor_of.items()} == {"linear": "linear.g0",
                                                                                 "logistic": "logistic.g0"}
        assert all(any(r["name"] == "cpus" for r in e["resources"]) for e in executor_of.values())
        for task in tasks:
            deployment.run(task)
        wait_for(deployment.controller.all_ready)
        assert sorted(e.executor_id for e in state.executors()) == ["linear.g0", "logistic.g0"]
        linear = next(t for t in tasks if payload(t)["model"] == "linear")
        deployment.controller.statusUpdate(deployment.driver, make_status(
            linear["task_id"]["value"], "TASK_FAILED", reason="REASON_EXECUTOR_TERMINATED", message="exited"))
        wait_for(lambda: not deployment.table.ready("linear") and deployment.driver.revived)
        deployment.controller.resourceOffers(deployment.driver, [port_offer("a1", cpus=4.0, mem=8192.0)])
        [replacement] = wait_for(lambda: deployment.launched()[2:])
        assert payload(replacement)["model"] == "linear"
        assert replacement["executor"]["executor_id"]["value"] == "linear.g1"
        assert len(deployment.table.ready("logistic")) == 1 and deployment.driver.kills == []
        assert deployment.controller.replaced == 1
        assert sorted(e.executor_id for e in state.executors()) == ["linear.g1", "logistic.g0"]
    finally:
        deployment.close()
        state.close()


def test_an_agent_lost_takes_its_replicas_and_executor_and_they_are_replaced_elsewhere(
        demo: JobSpec, server: ArtifactServer, tmp_path: Path) -> None:
    state = ServeState.open(tmp_path / "state")
    deployment = Deployment(demo, server, state=state)
    try:
        tasks = deployment.deploy()
        # The master's word: the agent is gone (FAILURE), its tasks TASK_LOST (no uuid to acknowledge).
        deployment.controller.slaveLost(deployment.driver, {"value": "a1"})
        for task in tasks:
            deployment.controller.statusUpdate(deployment.driver, make_status(
                task["task_id"]["value"], "TASK_LOST", reason="REASON_AGENT_REMOVED", uuid=None))
        wait_for(lambda: not deployment.controller.replicas and deployment.driver.revived)
        assert deployment.table.ready("linear") == [] and deployment.table.ready("logistic") == []
        assert not [h for h in deployment.controller.hosting if h[0] == "a1"] and state.executors() == []
        assert deployment.driver.shutdowns == []  # nothing to shut down on a lost agent
        deployment.controller.resourceOffers(deployment.driver, [port_offer("a2")])
        replacements = wait_for(lambda: len(deployment.launched()) == 4 and deployment.launched()[2:])
        assert {t["agent_id"]["value"] for t in replacements} == {"a2"}
        assert sorted(payload(t)["model"] for t in replacements) == ["linear", "logistic"]
        for task in replacements:
            deployment.run(task, "a2")
        wait_for(deployment.controller.all_ready)
        assert [(e.agent_id, e.state) for e in state.executors()] == [("a2", "running")]
        assert deployment.controller.replaced == 2
    finally:
        deployment.close()
        state.close()


class DroppingDriver(LockedDriver):
    """Drops what it is asked while disconnected, as pymesos does (``killTask``, ``launchTasks``...)."""

    connected = True

    def __init__(self, scheduler: Any) -> None:
        super().__init__(scheduler)
        self.dropped: list[dict[str, Any]] = []

    def killTask(self, task_id: Any) -> None:  # noqa: N802
        if self.connected:
            super().killTask(task_id)

    def launchTasks(self, offer_ids: Any, tasks: list[dict[str, Any]], filters: Any = None) -> None:  # noqa: N802
        if self.connected:
            super().launchTasks(offer_ids, tasks, filters)
        else:
            self.dropped.extend(tasks)


def test_a_drain_during_a_master_failover_is_killed_once_subscribed_again(demo: JobSpec, server: ArtifactServer,
                                                                          tmp_path: Path) -> None:
    """pymesos drops a kill sent while it is disconnected (the master failing over): the drain's
    kill waits until the framework is subscribed again, and a drained replica is reconciled with
    the others (it must not run on, unknown to anyone)."""
    deployment = Deployment(demo, server, bounds={"linear": (2, 3), "logistic": (1, 1)})
    driver = deployment.driver = DroppingDriver(deployment.controller)
    deployment.controller._driver = driver
    try:
        deployment.subscribe()
        deployment.controller.resourceOffers(driver, [port_offer("a1")])
        tasks = wait_for(lambda: len(deployment.launched()) == 3 and deployment.launched())
        for task in tasks:
            deployment.run(task)
        wait_for(deployment.controller.all_ready)
        driver.connected = False  # the master fails over
        deployment.controller.disconnected(driver)
        with deployment.controller.lock:
            deployment.controller.desired["linear"] = 1
        deployment.controller.poke()
        [drained] = wait_for(lambda: [r.task_id for r in deployment.controller.replicas.values()
                                      if r.state.value == "draining"])
        time.sleep(1.0)  # past the drain: its kill is due, but cannot be sent
        assert driver.kills == [] and drained not in {r.replica_id for r in deployment.table.ready("linear")}
        driver.connected = True
        driver.framework_id = "F1"
        deployment.controller.reregistered(driver, {"hostname": "master", "port": 5050})
        assert wait_for(lambda: driver.kills) == [drained]
        [reconciled] = driver.reconciles  # the first subscription had no replica to reconcile
        assert sorted(t["task_id"]["value"] for t in reconciled) == sorted(t["task_id"]["value"] for t in tasks)
    finally:
        deployment.close()


def test_a_replica_the_earlier_serve_was_draining_is_killed_not_served(demo: JobSpec, server: ArtifactServer) -> None:
    from framework.serving.state import ReplicaRecord

    deployment = Deployment(demo, server)
    try:
        sha = {m: demo.model(m).sha256 for m in ("linear", "logistic")}
        records = [ReplicaRecord("linear.replica-old-1", "linear", "a1", "a1.example", 31000, sha["linear"],
                                 "TASK_RUNNING", "ensemble.g3"),
                   ReplicaRecord("linear.replica-old-2", "linear", "a1", "a1.example", 31001, sha["linear"],
                                 "draining", "ensemble.g3"),
                   ReplicaRecord("logistic.replica-old-3", "logistic", "a1", "a1.example", 31002, sha["logistic"],
                                 "TASK_RUNNING", "ensemble.g3")]
        assert deployment.controller.adopt(records) == 3
        deployment.subscribe()
        assert wait_for(lambda: deployment.driver.kills) == ["linear.replica-old-2"]
        for record in records:  # the reconciliation's answers
            deployment.controller.statusUpdate(deployment.driver, make_status(record.task_id, "TASK_RUNNING", "a1"))
        wait_for(deployment.controller.all_ready)
        assert [r.replica_id for r in deployment.table.ready("linear")] == ["linear.replica-old-1"]
    finally:
        deployment.close()


def test_a_launch_lost_to_a_master_failover_is_reconciled_as_lost_and_replaced(
        demo: JobSpec, server: ArtifactServer) -> None:
    """Offers handled just as the master fails over: the driver drops the launch.  The replicas,
    recorded as launching, are reconciled once subscribed again; the master knows nothing of them
    (TASK_LOST), so they are replaced."""
    deployment = Deployment(demo, server)
    driver = deployment.driver = DroppingDriver(deployment.controller)
    deployment.controller._driver = driver
    try:
        deployment.subscribe()
        driver.connected = False
        deployment.controller.resourceOffers(driver, [port_offer("a1")])
        lost = wait_for(lambda: len(driver.dropped) == 2 and [t["task_id"]["value"] for t in driver.dropped])
        assert deployment.launched() == []
        driver.connected = True
        driver.framework_id = "F1"
        deployment.controller.reregistered(driver, {"hostname": "master", "port": 5050})
        [reconciled] = wait_for(lambda: driver.reconciles)
        assert sorted(t["task_id"]["value"] for t in reconciled) == sorted(lost)
        for task_id in lost:
            deployment.controller.statusUpdate(driver, make_status(task_id, "TASK_LOST", reason="REASON_RECONCILIATION",
                                                                   uuid=None))
        wait_for(lambda: not set(lost) & set(deployment.controller.replicas))
        deployment.controller.resourceOffers(driver, [port_offer("a1")])
        tasks = wait_for(lambda: len(deployment.launched()) == 2 and deployment.launched())
        assert sorted(payload(t)["model"] for t in tasks) == ["linear", "logistic"]
        for task in tasks:
            deployment.run(task)
        wait_for(deployment.controller.all_ready)
    finally:
        deployment.close()


class Teardown(LockedDriver):
    """Stops as pymesos does: TEARDOWN (and the framework id forgotten) only while connected."""

    connected = True
    failover: bool | None = None
    framework_id: str | None = "F1"

    def stop(self, failover: bool = False) -> None:
        self.failover = failover
        if not failover and self.connected:
            self.framework_id = None


@pytest.mark.parametrize("connected", [True, False])
def test_a_stop_that_tears_the_framework_down_forgets_it_in_the_journal(demo: JobSpec, tmp_path: Path,
                                                                        connected: bool) -> None:
    """Torn down (TEARDOWN sent: the driver is connected), the next serve must subscribe anew;
    not connected, the framework and its replicas live on at the master: the journal keeps them."""
    from framework.serving.service import ServeRunner
    from framework.serving.state import ExecutorRecord, ReplicaRecord

    state = ServeState.open(tmp_path / "state")
    try:
        state.save_framework_id("F1")
        state.record_launches([ReplicaRecord("r1", "linear", "a1", "h1", 31000, "ab", "TASK_RUNNING", "ensemble.g0")],
                              [ExecutorRecord("a1", "ensemble.g0", "h1")])
        driver = Teardown(None)
        driver.connected = connected
        runner = ServeRunner(tmp_path / "job.toml", demo, tmp_path / "state")
        runner._stop_driver(driver, state)
        assert driver.failover is False
        if connected:
            assert state.framework_id is None and state.replicas() == [] and state.executors() == []
        else:
            assert state.framework_id == "F1" and len(state.replicas()) == 1 and len(state.executors()) == 1
    finally:
        state.close()


def test_a_restart_launches_into_the_executor_it_adopted_with_its_journaled_info(
        demo: JobSpec, server: ArtifactServer, tmp_path: Path) -> None:
    """The journal keeps each executor's ExecutorInfo: a restarted ``serve`` that wants one more
    replica on the agent of an adopted running replica launches it into that executor (same id,
    same ExecutorInfo: Mesos refuses another under that id) instead of starting one beside it."""
    state = ServeState.open(tmp_path / "state")
    deployment = Deployment(demo, server, state=state)
    try:
        tasks = deployment.deploy()
        wait_for(lambda: {r.state for r in state.replicas()} == {"TASK_RUNNING"})
    finally:
        deployment.close()
        state.close()

    state = ServeState.open(tmp_path / "state")
    [executor] = state.executors()
    assert executor.info is not None and json.loads(executor.info) == tasks[0]["executor"]
    again = Deployment(demo, server, state=state)
    try:
        again.controller.adopt(state.replicas(), state.executors())
        again.controller.avoid_earlier_executors(7)
        again.subscribe()
        wait_for(lambda: again.driver.reconciles)
        for task in tasks:
            again.run(task)
        wait_for(again.controller.all_ready)
        with again.controller.lock:
            again.controller.desired["linear"] = 2
        again.controller.resourceOffers(again.driver, [port_offer("a1", begin=31010, end=31019)])
        [launch] = wait_for(lambda: again.launched())
        assert launch["executor"] == tasks[0]["executor"]  # into the running executor, not ensemble.g7
        assert payload(launch)["model"] == "linear" and again.controller.reused == {("a1", executor.executor_id)}
    finally:
        again.close()
        state.close()
