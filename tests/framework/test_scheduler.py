"""The pymesos Scheduler subclass, driven step by step with the fake driver (no threads)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
import threading
from typing import Any, Iterator

import pytest
from addict import Dict

from factories import make_offer, make_status
from framework.artifacts import ArtifactServer
from framework.dataset import cut_shards, load_dataset
from framework.demo import train_demo
from framework.catalog import JobCatalog
from framework.jobspec import load_job
from framework.packing import CostModel, PackingOptions, PriceTable
from framework.rounds import RoundDecision, RoundSnapshot, decide, item_demand
from framework.scheduler import EnsembleScheduler, EventKind, OfferPolicy
from framework.translator import OfferView
from framework.tasks import ItemState, Tracker, WorkItem
from harness import FakeDriver


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ArtifactServer]:
    server = ArtifactServer(tmp_path / "results", bind="127.0.0.1").start()
    yield server
    server.stop()


def demo_scheduler(tmp_path: Path, server: ArtifactServer, executors: str = "shared",
                   **options: Any) -> EnsembleScheduler:
    """The demo job's scheduler (2 models x 2 shards), registered with a fake driver."""
    spec = load_job(train_demo(tmp_path / "demo"))
    spec = dataclasses.replace(spec, framework=dataclasses.replace(spec.framework, executors=executors))
    data = load_dataset(spec.data)
    shards = {"data": cut_shards(data.features[:100], 50)}  # 2 shards
    catalog = JobCatalog(spec, server, shards, "python3", server.publish("exec.tgz", spec.models[0].path))
    items = [WorkItem(f"{m.name}.s{s.index:05d}", m.name, s.index) for m in spec.models for s in shards["data"]]
    scheduler = EnsembleScheduler(Tracker(items, max_retries=2), catalog, PriceTable(), CostModel(), PackingOptions(),
                                  OfferPolicy(refuse_seconds=5.0, never_fits_refuse_seconds=300.0), **options)
    scheduler.registered(FakeDriver(scheduler), Dict({"value": "F1"}), Dict({"hostname": "master", "port": 5050}))
    return scheduler


@pytest.fixture(params=["shared"])
def scheduler(tmp_path: Path, server: ArtifactServer, request: pytest.FixtureRequest) -> EnsembleScheduler:
    """Rounds decided inside the callback: each test drives the scheduler step by step."""
    return demo_scheduler(tmp_path, server, request.param, rounds_in_callback=True)


def launched_task_ids(driver: FakeDriver) -> list[str]:
    return [t["task_id"]["value"] for _ids, tasks, _f in driver.launches for t in tasks]


def test_offers_of_one_agent_accepted_in_one_call(scheduler: EnsembleScheduler) -> None:
    driver = FakeDriver(scheduler)
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=1.2, mem=1024), make_offer("a1", cpus=1.2, mem=1024)])
    assert len(driver.launches) == 1
    offer_ids, tasks, filters = driver.launches[0]
    assert len(offer_ids) == 2 and len(tasks) == 4 and filters == {"refuse_seconds": 5.0}
    assert driver.suppressed == 1  # nothing left pending
    # Resources never exceed what the two offers hold together.
    used = sum(r["scalar"]["value"] for t in tasks for r in t["resources"] + t["executor"]["resources"]
               if r["name"] == "cpus")
    assert used <= 2.4 + 1e-9


@pytest.mark.parametrize("scheduler", ["per_model"], indirect=True)
def test_per_model_executor_shared_by_tasks_of_a_model_on_an_agent(scheduler: EnsembleScheduler) -> None:
    driver = FakeDriver(scheduler)
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=4, mem=4096)])
    tasks = driver.launches[0][1]
    by_model: dict[str, set[str]] = {}
    for task in tasks:
        by_model.setdefault(task["name"].split()[0], set()).add(str(task["executor"]))
    assert {k: len(v) for k, v in by_model.items()} == {"linear": 1, "logistic": 1}
    assert {t["executor"]["executor_id"]["value"] for t in tasks} == {"linear.g0", "logistic.g0"}


def test_shared_executor_runs_every_model_on_an_agent(scheduler: EnsembleScheduler) -> None:
    driver = FakeDriver(scheduler)
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=4, mem=4096)])
    tasks = driver.launches[0][1]
    assert {t["name"].split()[0] for t in tasks} == {"linear", "logistic"}
    assert {str(t["executor"]) for t in tasks} == {str(tasks[0]["executor"])}  # identical ExecutorInfo
    executor = tasks[0]["executor"]
    assert executor["executor_id"]["value"] == "ensemble.g0"
    reserve = scheduler.catalog.agent_reserve
    mem = sum(r["scalar"]["value"] for r in executor["resources"] if r["name"] == "mem")
    assert mem == pytest.approx(reserve.mem, abs=1e-6) and reserve.mem > 96.0  # base + both models


def test_shared_executor_reserve_is_left_free_on_a_new_agent(scheduler: EnsembleScheduler) -> None:
    """An offer that the tasks alone would fill: the executor's share must stay free for it."""
    reserve = scheduler.catalog.agent_reserve
    task_cpus = scheduler.catalog.task_resources["linear"].cpus
    driver = FakeDriver(scheduler)
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=2 * task_cpus, mem=4096)])
    tasks = driver.launches[0][1]
    assert len(tasks) == 1  # two tasks would leave no room for the executor
    used = sum(r["scalar"]["value"] for r in tasks[0]["resources"] + tasks[0]["executor"]["resources"]
               if r["name"] == "cpus")
    assert used == pytest.approx(task_cpus + reserve.cpus) and used <= 2 * task_cpus
    # Once the executor runs there, the whole offer goes to tasks.
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=2 * task_cpus, mem=4096)])
    assert len(driver.launches[-1][1]) == 2


def test_unneeded_and_never_fitting_offers_declined_by_reason(scheduler: EnsembleScheduler) -> None:
    driver = FakeDriver(scheduler)
    tiny = make_offer("tiny", cpus=0.05, mem=16)
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=4, mem=4096), tiny, make_offer("a2", cpus=4, mem=4096)])
    declined = dict((ids[0], f["refuse_seconds"]) for ids, f in driver.declines)
    assert declined[tiny["id"]["value"]] == 300.0  # can never hold any task: decline for long
    assert len(driver.launches) == 1  # one agent suffices for the 4 small tasks
    assert sorted(declined.values()) == [5.0, 300.0]


def test_nothing_pending_declines_and_suppresses(scheduler: EnsembleScheduler) -> None:
    driver = FakeDriver(scheduler)
    scheduler.resourceOffers(driver, [make_offer("a1")])
    scheduler.resourceOffers(driver, [make_offer("a1")])
    assert len(driver.launches) == 1 and len(driver.declines) == 1 and driver.suppressed == 1


def test_failure_is_retried_elsewhere_then_gives_up(tmp_path: Path, server: ArtifactServer) -> None:
    now = [100.0]
    scheduler = demo_scheduler(tmp_path, server, rounds_in_callback=True, clock=lambda: now[0])
    driver = FakeDriver(scheduler)
    # a2 offers too little to run anything, but is known from now on.
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=4, mem=4096), make_offer("a2", cpus=0.05, mem=16)])
    first = launched_task_ids(driver)[0]
    scheduler.statusUpdate(driver, make_status(first, "TASK_FAILED", "a1", message="boom"))
    assert driver.revived == 1
    # An infrastructure failure's retry backs off (1 s) before it launches anywhere.
    scheduler.resourceOffers(driver, [make_offer("a2", cpus=4, mem=4096)])
    assert first.replace(".a1", ".a2") not in launched_task_ids(driver)
    now[0] += 1.5
    # The retry avoids a1 while another agent is known.
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=4, mem=4096)])
    assert first.replace(".a1", ".a2") not in launched_task_ids(driver)
    scheduler.resourceOffers(driver, [make_offer("a2", cpus=4, mem=4096)])
    second = first.replace(".a1", ".a2")
    assert second in launched_task_ids(driver)
    scheduler.statusUpdate(driver, make_status(second, "TASK_LOST", "a2", reason="REASON_AGENT_REMOVED"))
    now[0] += 2.5  # the second backoff: 2 s
    # The last attempt may run anywhere, even where it failed before.
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=4, mem=4096)])
    third = first.replace(".a1", ".a3")
    assert third in launched_task_ids(driver)
    scheduler.statusUpdate(driver, make_status(third, "TASK_FAILED", "a1", message="boom again"))
    event = scheduler.events.get_nowait()
    assert event.kind == "gave_up" and event.item is not None and event.item.state is ItemState.FAILED


def test_finished_update_hands_data_to_main_thread(scheduler: EnsembleScheduler) -> None:
    driver = FakeDriver(scheduler)
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=4, mem=4096)])
    task_id = launched_task_ids(driver)[0]
    scheduler.statusUpdate(driver, make_status(task_id, "TASK_RUNNING", "a1"))
    scheduler.statusUpdate(driver, make_status(task_id, "TASK_FINISHED", "a1", data="ZGF0YQ=="))
    event = scheduler.events.get_nowait()
    assert (event.kind, event.data) == ("finished", "ZGF0YQ==")


def test_callback_errors_never_reach_the_driver(scheduler: EnsembleScheduler) -> None:
    driver = FakeDriver(scheduler)
    broken = make_offer("a1")
    broken["resources"][0]["scalar"] = "garbage"  # a malformed resource makes the adapter fail
    scheduler.resourceOffers(driver, [broken])  # must not raise
    event = scheduler.events.get_nowait()
    assert event.kind == "fatal" and "resourceOffers" in event.detail


def test_executor_terminated_forgets_the_executor(tmp_path: Path, server: ArtifactServer) -> None:
    now = [100.0]
    scheduler = demo_scheduler(tmp_path, server, "per_model", rounds_in_callback=True, clock=lambda: now[0])
    driver = FakeDriver(scheduler)
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=4, mem=4096)])
    task = driver.launches[0][1][0]
    model = task["name"].split()[0]
    scheduler.statusUpdate(driver, make_status(task["task_id"]["value"], "TASK_FAILED", "a1",
                                               reason="REASON_EXECUTOR_TERMINATED", message="Executor terminated"))
    assert task["executor"]["executor_id"]["value"] == f"{model}.g0"
    assert ("a1", model) not in scheduler.executors
    now[0] += 1.5  # past the retry's backoff (an executor lost is an infrastructure failure)
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=4, mem=4096)])
    relaunched = driver.launches[-1][1][0]
    assert relaunched["executor"]["executor_id"]["value"] == f"{model}.g1"


def test_a_model_whose_shared_executor_died_gets_executors_of_its_own(scheduler: EnsembleScheduler) -> None:
    """Whichever member crashed the shared executor must not take the others down again."""
    task_cpus = scheduler.catalog.task_resources["linear"].cpus
    reserve = scheduler.catalog.agent_reserve
    driver = FakeDriver(scheduler)
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=2 * task_cpus + reserve.cpus, mem=4096)])
    first = driver.launches[-1][1]
    assert {t["executor"]["executor_id"]["value"] for t in first} == {"ensemble.g0"}
    for task in first:  # the process died: every task in it fails
        scheduler.statusUpdate(driver, make_status(task["task_id"]["value"], "TASK_FAILED", "a1",
                                                   reason="REASON_EXECUTOR_TERMINATED", message="Executor terminated"))
    assert scheduler.catalog.isolated == {"linear", "logistic"} and not scheduler.executors
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=8, mem=8192)])
    relaunched = driver.launches[-1][1]
    executors = {t["name"].split()[0]: t["executor"]["executor_id"]["value"] for t in relaunched}
    assert executors == {"linear": "linear.g0", "logistic": "logistic.g0"}
    for task in relaunched:  # each isolated executor carries the model's own executor resources
        own = scheduler.catalog.executor_resources[task["name"].split()[0]]
        mem = sum(r["scalar"]["value"] for r in task["executor"]["resources"] if r["name"] == "mem")
        assert mem == pytest.approx(own.mem) and own.mem < reserve.mem


def test_work_added_before_registration_is_revived_on_registration(scheduler: EnsembleScheduler) -> None:
    """pymesos asserts a framework id in reviveOffers: the scheduler must not call it earlier."""
    scheduler.framework_id = None  # as between driver.start() and SUBSCRIBED

    class StrictDriver(FakeDriver):
        def reviveOffers(self, roles=()):  # noqa: ANN001, N802
            assert scheduler.framework_id is not None, "REVIVE before SUBSCRIBED"
            super().reviveOffers(roles)

    driver = StrictDriver(scheduler)
    scheduler.add_work(driver, [WorkItem("logistic.extra", "logistic", 0)])
    assert driver.revived == 0
    scheduler.registered(driver, Dict({"value": "F1"}), Dict({"hostname": "m", "port": 5050}))
    assert driver.revived == 1 and scheduler.events.empty()


@pytest.mark.parametrize("slow", ["linear", "logistic"])
def test_probes_each_model_then_launches_the_longest_measured_first(scheduler: EnsembleScheduler, slow: str) -> None:
    """Measured state steers which tasks take scarce capacity: first one task of each model (to
    measure it), then the model whose tasks take longest."""
    task_cpus = scheduler.catalog.task_resources["linear"].cpus
    reserve = scheduler.catalog.agent_reserve
    driver = FakeDriver(scheduler)
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=2 * task_cpus + reserve.cpus, mem=4096)])
    probes = driver.launches[-1][1]
    assert sorted(t["name"].split()[0] for t in probes) == ["linear", "logistic"]
    for task in probes:
        item = scheduler.tracker.item_for_task(task["task_id"]["value"])
        assert item is not None
        scheduler.statusUpdate(driver, make_status(task["task_id"]["value"], "TASK_FINISHED", "a1"))
        scheduler.record_usage(item, 2.0 if item.model == slow else 0.1, 0.1)
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=task_cpus, mem=4096)])
    assert [t["name"].split()[0] for t in driver.launches[-1][1]] == [slow]
    assert scheduler.last_plan is not None
    snapshot = scheduler.snapshot()
    demand = item_demand(snapshot, snapshot.pending[0], snapshot.known_agents, now=0.0)
    assert demand.duration == 0.1  # measured, since the job file gives none


def test_an_agent_too_small_for_the_shared_executor_is_named_once(scheduler: EnsembleScheduler,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    reserve = scheduler.catalog.agent_reserve
    driver = FakeDriver(scheduler)
    for _ in range(2):
        scheduler.resourceOffers(driver, [make_offer("small", cpus=4, mem=reserve.mem - 1)])
    warnings = [r.getMessage() for r in caplog.records if "shared executor needs" in r.getMessage()]
    assert len(warnings) == 1 and "executors = \"per_model\"" in warnings[0]
    assert driver.launches == []  # nothing fits next to the executor there


def test_shared_executor_threads_cover_every_task_that_fits(scheduler: EnsembleScheduler) -> None:
    """On a large agent the shared executor runs all the tasks Mesos gives it at once."""
    task_cpus = scheduler.catalog.task_resources["linear"].cpus
    driver = FakeDriver(scheduler)
    scheduler.resourceOffers(driver, [make_offer("big", cpus=16, mem=65536)])
    variables = driver.launches[-1][1][0]["executor"]["command"]["environment"]["variables"]
    workers = {v["name"]: v["value"] for v in variables}["MESOS_ENSEMBLE_WORKERS"]
    assert int(workers) == int(16 // task_cpus) > 8


def test_a_straggler_brings_offers_back_at_most_once_per_refuse_period(tmp_path: Path, server: ArtifactServer) -> None:
    clock = [1000.0]
    scheduler = demo_scheduler(tmp_path, server, rounds_in_callback=True, clock=lambda: clock[0])
    task_cpus = scheduler.catalog.task_resources["linear"].cpus
    reserve = scheduler.catalog.agent_reserve
    driver = FakeDriver(scheduler)
    two_tasks = 2 * task_cpus + reserve.cpus
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=two_tasks, mem=8192),
                                      make_offer("a2", cpus=two_tasks, mem=8192)])  # everything launched
    assert scheduler.suppressed and not scheduler.tracker.has_pending()
    first = [(ids, t) for ids, tasks, _f in driver.launches for t in tasks]
    assert {t["agent_id"]["value"] for _ids, t in first} == {"a1", "a2"}  # both run our executor now
    for _ids, task in first[1:]:
        item = scheduler.tracker.item_for_task(task["task_id"]["value"])
        agent = task["agent_id"]["value"]
        scheduler.statusUpdate(driver, make_status(task["task_id"]["value"], "TASK_FINISHED", agent))
        scheduler.record_usage(item, 0.01, 0.01)
    straggler, where = first[0][1]["task_id"]["value"], first[0][1]["agent_id"]["value"]
    revived = driver.revived
    clock[0] += 60.0  # a minute fetching its inputs (no TASK_RUNNING yet) is not straggling
    scheduler.speculate(driver)
    assert driver.revived == revived
    scheduler.statusUpdate(driver, make_status(straggler, "TASK_RUNNING", where))  # computing from now
    scheduler.speculate(driver)
    assert driver.revived == revived  # not overdue yet
    clock[0] += 60.0  # it has now run a minute
    scheduler.speculate(driver)
    scheduler.speculate(driver)
    assert driver.revived == revived + 1 and not scheduler.suppressed
    # The backup goes to another agent the job uses, never to the straggler's own nor a new one.
    launches_before = len(driver.launches)
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=8, mem=8192), make_offer("a2", cpus=8, mem=8192),
                                      make_offer("a3", cpus=8, mem=8192)])
    backups = [t for _ids, tasks, _f in driver.launches[launches_before:] for t in tasks]
    other = "a2" if where == "a1" else "a1"
    assert len(backups) == 1 and backups[0]["agent_id"]["value"] == other and scheduler.backups_launched == 1
    straggling = scheduler.tracker.item_for_task(straggler)
    assert straggling is not None and scheduler.tracker.item_for_task(backups[0]["task_id"]["value"]) is straggling
    assert straggling.backup_task_id == backups[0]["task_id"]["value"]


# --- the decision worker: rounds off the IO thread ---------------------------------------------
class GatedDecide:
    """``decide``, held at its start until ``release``: what the IO thread does meanwhile is seen."""

    def __init__(self) -> None:
        self.entered, self.gate = threading.Event(), threading.Event()
        self.offers_seen: list[list[str]] = []

    def __call__(self, snapshot: RoundSnapshot, offers: Any, now: float) -> RoundDecision:
        self.offers_seen.append([o.offer_id for o in offers])
        self.entered.set()
        assert self.gate.wait(30), "the test never released the round"
        return decide(snapshot, offers, now)

    def release(self) -> None:
        self.gate.set()


@pytest.fixture
def gated(tmp_path: Path, server: ArtifactServer) -> Iterator[tuple[EnsembleScheduler, GatedDecide]]:
    gate = GatedDecide()
    scheduler = demo_scheduler(tmp_path, server, decide=gate)
    yield scheduler, gate
    gate.release()
    scheduler.close()


def test_offers_are_decided_off_the_io_thread_while_updates_go_on(
        gated: tuple[EnsembleScheduler, GatedDecide]) -> None:
    scheduler, gate = gated
    driver = FakeDriver(scheduler)
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=1.2, mem=1024)])  # returns at once
    assert gate.entered.wait(10) and driver.launches == [] and driver.declines == []
    # While the round is being decided, the IO thread handles updates (the lock is free).
    scheduler.statusUpdate(driver, make_status("unknown.a1", "TASK_RUNNING"))
    assert scheduler.lock.acquire(timeout=5)
    scheduler.lock.release()
    gate.release()
    assert scheduler.wait_idle()
    assert len(driver.launches) == 1 and driver.launches[0][1]


def test_an_offer_rescinded_while_decided_is_never_accepted(gated: tuple[EnsembleScheduler, GatedDecide]) -> None:
    scheduler, gate = gated
    driver = FakeDriver(scheduler)
    gone, kept = make_offer("a1", cpus=4, mem=4096), make_offer("a1", cpus=4, mem=4096)
    other = make_offer("a2", cpus=4, mem=4096)
    scheduler.resourceOffers(driver, [gone, kept, other])
    assert gate.entered.wait(10)
    scheduler.offerRescinded(driver, gone["id"])
    gate.release()
    assert scheduler.wait_idle()
    used = [o for ids, _tasks, _f in driver.launches for o in ids] + [o for ids, _f in driver.declines for o in ids]
    assert gone["id"]["value"] not in used  # neither accepted nor declined: it is gone
    assert kept["id"]["value"] in [o for ids, _f in driver.declines for o in ids]  # the agent's others go back
    # Whatever a1 was to run stays pending (or went to a2): no task was lost with the offer.
    counts = scheduler.tracker.counts()
    launched = [t["task_id"]["value"] for _ids, tasks, _f in driver.launches for t in tasks]
    assert counts.get("pending", 0) + counts.get("launched", 0) == 4 and counts.get("launched", 0) == len(launched)
    assert all(t["agent_id"]["value"] == "a2" for _ids, tasks, _f in driver.launches for t in tasks)


def test_an_offer_rescinded_before_its_round_is_left_out(gated: tuple[EnsembleScheduler, GatedDecide]) -> None:
    scheduler, gate = gated
    driver = FakeDriver(scheduler)
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=0.05, mem=16)])
    assert gate.entered.wait(10)
    late = make_offer("a2", cpus=4, mem=4096)
    scheduler.resourceOffers(driver, [late])  # queued behind the running round
    scheduler.offerRescinded(driver, late["id"])
    gate.release()
    assert scheduler.wait_idle()
    assert gate.offers_seen[1:] == [[]] or gate.offers_seen[1:] == []
    assert all(late["id"]["value"] not in ids for ids, _t, _f in driver.launches)


def test_offers_arriving_during_a_round_are_batched_into_the_next(
        gated: tuple[EnsembleScheduler, GatedDecide]) -> None:
    scheduler, gate = gated
    driver = FakeDriver(scheduler)
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=0.05, mem=16, offer_id="first")])
    assert gate.entered.wait(10)
    for name in ("b1", "b2", "b3"):
        scheduler.resourceOffers(driver, [make_offer(name, cpus=0.05, mem=16, offer_id=f"o-{name}")])
    gate.release()
    assert scheduler.wait_idle()
    assert gate.offers_seen == [["first"], ["o-b1", "o-b2", "o-b3"]]


def test_items_cancelled_while_decided_are_not_launched(gated: tuple[EnsembleScheduler, GatedDecide]) -> None:
    scheduler, gate = gated
    driver = FakeDriver(scheduler)
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=8, mem=8192)])
    assert gate.entered.wait(10)
    scheduler.cancel_model(driver, "linear")
    gate.release()
    assert scheduler.wait_idle()
    models = sorted(t["name"].split()[0] for _ids, tasks, _f in driver.launches for t in tasks)
    assert models == ["logistic", "logistic"]
    assert {i.state for i in scheduler.tracker.items.values() if i.model == "linear"} == {ItemState.CANCELLED}


def test_an_executor_lost_while_decided_is_not_relied_on(gated: tuple[EnsembleScheduler, GatedDecide]) -> None:
    scheduler, gate = gated
    driver = FakeDriver(scheduler)
    gate.release()
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=0.7, mem=4096)])  # one task and the executor
    assert scheduler.wait_idle() and len(launched_task_ids(driver)) == 1
    gate.gate.clear()
    gate.entered.clear()
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=4, mem=4096)])
    assert gate.entered.wait(10)  # decided as if the executor ran on a1 ...
    scheduler.slaveLost(driver, Dict({"value": "a1"}))  # ... but it is gone
    gate.release()
    assert scheduler.wait_idle()
    assert len(launched_task_ids(driver)) == 1 and driver.declines[-1][1] == {"refuse_seconds": 5.0}


def test_a_failing_round_becomes_the_jobs_fatal_event(tmp_path: Path, server: ArtifactServer) -> None:
    def broken(snapshot: RoundSnapshot, offers: list[OfferView], now: float) -> RoundDecision:
        raise RuntimeError("bug in decide")

    scheduler = demo_scheduler(tmp_path, server, decide=broken)
    driver = FakeDriver(scheduler)
    scheduler.resourceOffers(driver, [make_offer("a1")])
    event = scheduler.events.get(timeout=10)
    assert event.kind is EventKind.FATAL and "bug in decide" in event.detail
    assert scheduler.wait_idle()
    scheduler.close()
    scheduler.resourceOffers(driver, [make_offer("a1")])  # after close: dropped, nothing raised
    assert driver.launches == [] and scheduler.events.empty()
