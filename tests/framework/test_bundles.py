"""Several small work items in one Mesos task: how bundles are sized (pure), grouped by the offer
round, tracked per item, and how one bundle's status update is fanned out to its items."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from executor.protocol import (BundlePayload, BundleResult, ResultEnvelope, TaskFailure, array_to_npy, decode_task,
                               inline_envelope)
from addict import Dict

from factories import make_offer, make_status
from framework.artifacts import ArtifactServer
from framework.catalog import JobCatalog
from framework.dataset import cut_shards, load_dataset
from framework.demo import train_demo
from framework.packing import CostModel, PackingOptions, PriceTable
from framework.scheduler import EnsembleScheduler, EventKind
from harness import FakeDriver
from framework.errors import JobSpecError
from framework.preflight import rows_per_shard
from framework.job import JobRunner
from framework.jobspec import load_job
from harness import InProcessMesos
from framework.balancing import (AUTO_MIN_SHARD_ROWS, MAX_BUNDLE_ITEMS, Measurements, SpeculationPolicy,
                                 MIN_BUNDLE_SECONDS, auto_rows_per_shard, bundle_sizes, stragglers)
from framework.offers import OfferView
from framework.packing import Resources, TaskDemand
from framework.rounds import OfferPolicy, RoundSnapshot, decide, timed_out
from framework.tasks import ItemState, ItemView, Tracker, TransitionKind, WorkItem
from framework.translator import StatusUpdate, fan_out
from framework.results import decode_result_npy

TASK = Resources(cpus=1.0, mem=256.0)


def offer(agent: str, cpus: float = 4.0, mem: float = 4096.0) -> OfferView:
    return OfferView(f"o-{agent}", agent, f"{agent}.example", (("cpus", "*", cpus), ("mem", "*", mem)), {})


def pending(key: str, model: str = "m", attempts: int = 0, failed: tuple[str, ...] = ()) -> ItemView:
    return ItemView(key, model, "predict", ItemState.PENDING, attempts, None, None, None, failed)


def snapshot(pending_items: tuple[ItemView, ...], models: tuple[str, ...], **changes: object) -> RoundSnapshot:
    base = RoundSnapshot(
        pending=pending_items, active=(),
        demands={m: TaskDemand("", m, TASK, Resources()) for m in models},
        executor_keys={m: "ensemble" for m in models}, executor_models={"ensemble": frozenset(models)},
        agent_reserve=Resources(), executors=frozenset(), executor_generation={},
        measurements=Measurements(), started_at={}, known_agents=frozenset(), retried_at={},
        max_retries=3, suppressed=False, policy=OfferPolicy(refuse_seconds=5.0, never_fits_refuse_seconds=300.0),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def measured(**means: float) -> Measurements:
    measurements = Measurements()
    for model, seconds in means.items():
        measurements.record(model, "a1", seconds, seconds)
    return measurements


# --- sizing ------------------------------------------------------------------------------------
def test_auto_shards_are_fine_for_the_cores_but_never_tiny_nor_huge() -> None:
    assert auto_rows_per_shard(1_000_000, 20, cores=2) == 62_500  # 8 shards per core
    assert auto_rows_per_shard(100_000, 20, cores=2) == 6_250
    assert auto_rows_per_shard(5_000, 20, cores=64) == AUTO_MIN_SHARD_ROWS  # not 10-row shards
    assert auto_rows_per_shard(569, 30, cores=4) == 569  # small data: one shard
    assert auto_rows_per_shard(10_000_000, 20, cores=2) == 100_000  # a task's memory stays small
    assert auto_rows_per_shard(10_000_000, 1000, cores=2) == 2_097  # 16 MiB of features at most
    assert auto_rows_per_shard(1, 3, cores=0) == 1
    # Text is measured by its bytes, not as one number per row: 16 MiB of it at most.
    assert auto_rows_per_shard(1_000_000, 0, cores=2, text_bytes=2_008) == 8_355
    assert auto_rows_per_shard(1_000_000, 2, cores=2, text_bytes=200) == 62_500  # short documents: as before


def test_bundles_compute_for_about_a_second_unless_that_leaves_cores_idle() -> None:
    items = [pending(f"fast.s{i}", "fast") for i in range(1000)] + [pending(f"slow.s{i}", "slow") for i in range(10)]
    items += [pending(f"new.s{i}", "new") for i in range(50)]
    sizes = bundle_sizes(items, measured(fast=0.004, slow=2.0), cores=2)
    assert sizes["fast"] == 250  # 1 s of 4 ms items
    assert sizes["slow"] == 1  # already long
    assert sizes["new"] == 1  # not measured yet: probed alone
    # Less work left: bundles shrink so that every core still gets at least two.
    sizes = bundle_sizes(items[:400], measured(fast=0.004), cores=4)
    assert sizes["fast"] == 50  # 400 x 4 ms = 1.6 s over 4 cores x 2 bundles = 0.2 s
    assert bundle_sizes([pending(f"fast.s{i}", "fast") for i in range(10_000)], measured(fast=1e-5),
                        cores=1)["fast"] == MAX_BUNDLE_ITEMS
    folds = [ItemView(f"f{i}", "fast", "cv_fit_predict", ItemState.PENDING, 0, None, None, None, ())
             for i in range(10)]
    assert bundle_sizes(folds, measured(**{"fast (cv_fit_predict)": 0.001}), cores=1)["fast (cv_fit_predict)"] == 1


def test_bundles_at_the_end_of_a_job_are_never_shorter_than_a_round_trip_is_worth() -> None:
    # 40 x 4 ms = 0.16 s over 4 cores x 2 bundles would be 20 ms bundles: each would idle its slot
    # for a round trip longer than its compute.  They compute for MIN_BUNDLE_SECONDS instead.
    items = [pending(f"fast.s{i}", "fast") for i in range(40)]
    assert bundle_sizes(items, measured(fast=0.004), cores=4)["fast"] == round(MIN_BUNDLE_SECONDS / 0.004)
    assert bundle_sizes(items[:7], measured(fast=0.004), cores=4)["fast"] == 7  # less than that left: all of it
    assert bundle_sizes(items, measured(fast=2.0), cores=4)["fast"] == 1  # long items still go alone


# --- the offer round ---------------------------------------------------------------------------
def test_a_round_groups_a_measured_models_items_into_bundles_and_probes_alone() -> None:
    items = tuple(pending(f"fast.s{i:03d}", "fast") for i in range(100)) + (pending("new.s0", "new"),)
    state = snapshot(items, models=("fast", "new"), measurements=measured(fast=0.01), cores=2.0,
                     bundle_prefix="t1r0")
    decision = decide(state, [offer("a1", cpus=2)], now=0.0)
    tasks = [task for _agent, task in decision.tasks]
    # 1 s of measured work over 2 cores, two bundles per core: bundles of 25 items (0.25 s); two
    # Mesos tasks fit: the unmeasured model's probe, alone, then the first bundle.
    assert decision.mesos_tasks == 2 and len(tasks) == 26 and not decision.suppress
    probe = next(task for task in tasks if task.model == "new")
    assert probe.carrier is None and probe.task_id == "new.s0.a1"
    bundled = [task for task in tasks if task.model == "fast"]
    assert [task.item_key for task in bundled] == [f"fast.s{i:03d}" for i in range(25)]
    assert {(task.carrier, task.bundle_size) for task in bundled} == {("fast.bundle-t1r0-fast.s000", 25)}
    assert all(task.task_id == f"{task.item_key}.a1" for task in tasks)  # each item keeps its own task id


def test_a_retry_that_avoids_its_failed_agent_goes_alone() -> None:
    items = (pending("fast.s99", "fast", attempts=1, failed=("a2",)),)
    items += tuple(pending(f"fast.s{i:02d}", "fast") for i in range(99))
    state = snapshot(items, models=("fast",), measurements=measured(fast=0.01), cores=1.0)
    decision = decide(state, [offer("a1", cpus=4)], now=0.0)
    by_item = {task.item_key: task for _agent, task in decision.tasks}
    assert by_item["fast.s99"].carrier is None  # 1 s over 4 cores: bundles of 12, and the retry alone
    assert decision.mesos_tasks == 4 and len(by_item) == 1 + 3 * 12


def test_a_bundle_is_one_task_for_the_packer_and_for_per_agent_limits() -> None:
    # Two cpus: two single-cpu Mesos tasks fit, each carrying several items.
    items = tuple(pending(f"fast.s{i:02d}", "fast") for i in range(40))
    state = snapshot(items, models=("fast",), measurements=measured(fast=0.01), cores=2.0)
    decision = decide(state, [offer("a1", cpus=2)], now=0.0)
    assert decision.mesos_tasks == 2 and len(decision.tasks) == 20  # 0.4 s over 2 cores x 2 bundles: 10 each


# --- the tracker and the scheduler's view -------------------------------------------------------
def bundled_tracker(n: int = 3) -> tuple[Tracker, list[WorkItem]]:
    items = [WorkItem(f"m.s{i}", "m", i) for i in range(n)]
    tracker = Tracker(items, max_retries=3)
    for item in items:
        tracker.launched(item, "a1", carrier="B", bundle_size=n)
    return tracker, items


def test_the_tracker_maps_a_bundle_to_its_items_and_back() -> None:
    tracker, items = bundled_tracker()
    assert tracker.bundled_tasks("B") == ["m.s0.a1", "m.s1.a1", "m.s2.a1"]
    assert tracker.bundled_tasks("m.s0.a1") is None
    assert tracker.carrier_of("m.s1.a1") == "B" and tracker.carrier_of("other") == "other"
    assert tracker.mesos_tasks(["m.s0.a1", "m.s2.a1", "x.a1"]) == ["B", "x.a1"]
    view = tracker.active_views()[0]
    assert view.carrier == "B" and view.bundle_size == 3 and view.mesos_task_id == "B"
    tracker.on_update("m.s0.a1", "TASK_FINISHED")
    assert tracker.alive_in_bundle("m.s0.a1") == ["m.s1.a1", "m.s2.a1"]
    assert tracker.on_update("m.s1.a1", "TASK_LOST").kind is TransitionKind.RETRY
    retry = tracker.items["m.s1"]
    tracker.launched(retry, "a2")  # retried alone
    assert retry.carrier is None and retry.bundle_size == 1 and tracker.carrier_of("m.s1.a2") == "m.s1.a2"


def test_stragglers_and_timeouts_allow_for_the_items_before_them_in_a_bundle() -> None:
    tracker, _items = bundled_tracker(10)
    views = tracker.active_views()
    elapsed = {view.task_id or "": 5.0 for view in views}
    policy = SpeculationPolicy(factor=2.0, margin_seconds=1.0)
    assert stragglers(views, elapsed, measured(m=0.5), policy) == []  # 5 s < 2 x 10 x 0.5 s + 1 s
    assert len(stragglers(views, {k: 12.0 for k in elapsed}, measured(m=0.5), policy)) == 10
    assert timed_out(views, {k: 0.0 for k in elapsed}, {"m": 1.0}, now=5.0) == []
    assert len(timed_out(views, {k: 0.0 for k in elapsed}, {"m": 1.0}, now=10.5)) == 10


# --- fanning a bundle's update out --------------------------------------------------------------
def test_a_finished_bundle_gives_each_item_its_result_or_its_failure() -> None:
    npy = array_to_npy(np.arange(3.0))
    outcome = BundleResult(results={"t1": inline_envelope(npy, (3,))},
                           failures={"t2": TaskFailure("member_error", "ValueError", "bad input")})
    update = StatusUpdate("B", "TASK_FINISHED", data=base64.b64encode(outcome.to_json()).decode(), agent_id="a1")
    parts = {part.task_id: part for part in fan_out(update, ["t1", "t2", "t3"])}
    assert parts["t1"].state == "TASK_FINISHED" and parts["t1"].agent_id == "a1"
    envelope = parts["t1"].envelope  # decoded once, not encoded again for the main thread to decode
    assert isinstance(envelope, ResultEnvelope) and parts["t1"].data is None
    assert base64.b64decode(envelope.npy_b64 or "") == npy
    decoded = decode_result_npy(None, "t1", envelope)  # type: ignore[arg-type]  # inline: no server
    assert decoded.npy == npy and np.array_equal(decoded.output, np.arange(3.0))
    assert parts["t2"].state == "TASK_FAILED" and parts["t2"].message == "member error: bad input"
    failure = TaskFailure.from_status(parts["t2"].data, parts["t2"].message)
    assert failure is not None and failure.is_member_error
    assert parts["t3"].state == "TASK_FAILED" and parts["t3"].message.startswith("infrastructure:")


def test_any_other_bundle_update_goes_to_every_item() -> None:
    update = StatusUpdate("B", "TASK_LOST", reason="REASON_AGENT_REMOVED", message="gone", agent_id="a1")
    parts = fan_out(update, ["t1", "t2"])
    assert [dataclasses.replace(p, task_id="B") for p in parts] == [update, update]
    assert [p.task_id for p in parts] == ["t1", "t2"]
    garbage = StatusUpdate("B", "TASK_FINISHED", data=base64.b64encode(b"{}").decode())
    assert {p.state for p in fan_out(garbage, ["t1", "t2"])} == {"TASK_FAILED"}


# --- a whole job ---------------------------------------------------------------------------------
def per_shard_mean(demo_dir: Path, rows_per_shard: int) -> np.ndarray:
    """What the job computes: each member on each shard alone (LinearRegression's last bits
    depend on the batch), then the mean."""
    features = np.loadtxt(demo_dir / "test.csv", delimiter=",", skiprows=1)[:, :-1]
    linear, logistic = joblib.load(demo_dir / "linear.joblib"), joblib.load(demo_dir / "logistic.joblib")
    parts = []
    for start in range(0, len(features), rows_per_shard):
        shard = features[start:start + rows_per_shard]
        parts.append(np.mean(np.stack([linear.predict(shard), logistic.predict_proba(shard)[:, 1]]), axis=0))
    return np.concatenate(parts)


def test_tiny_tasks_travel_in_bundles_and_the_output_is_bit_for_bit_per_shard(tmp_path: Path) -> None:
    demo = train_demo(tmp_path / "demo")
    demo.write_text(demo.read_text().replace("rows_per_shard = 50", "rows_per_shard = 3"))
    failed_once: set[str] = set()

    def fail_one_bundled_item_once(payload: Any, agent: str) -> str | None:
        if payload.task_id == "linear.s00040.a1" and payload.task_id not in failed_once:
            failed_once.add(payload.task_id)
            return "boom"
        return None

    factory = InProcessMesos.factory([{"agent": "a1", "cpus": 2, "mem": 2048}], tmp_path / "sandboxes",
                                     fail=fail_one_bundled_item_once)
    outcome = JobRunner(load_job(demo), start_local_cluster=False, driver_factory=factory,
                        state_dir=tmp_path / "state").run()
    output = np.loadtxt(outcome.output, delimiter=",", skiprows=1)
    assert np.array_equal(output, per_shard_mean(demo.parent, 3))
    assert outcome.tasks == 2 * 57
    assert outcome.mesos_tasks < outcome.task_attempts  # several items per Mesos task
    assert failed_once == {"linear.s00040.a1"}  # its retry (attempt 2) succeeded
    assert outcome.task_attempts == outcome.tasks + 1
    driver = factory.last  # type: ignore[attr-defined]
    carried = {}
    for _offers, tasks, _filters in driver.launches:
        for task in tasks:
            decoded = decode_task(base64.b64decode(task["data"]))
            for payload in decoded.items if isinstance(decoded, BundlePayload) else [decoded]:
                carried[payload.task_id] = task["task_id"]["value"]
    assert carried["linear.s00040.a1"] != "linear.s00040.a1"  # the failed item was in a bundle ...
    assert carried["linear.s00040.a2"] == "linear.s00040.a2"  # ... and was retried alone
    assert len(driver.acks) == len(set(carried.values())) * 2  # one for TASK_RUNNING, one for the end


def test_rows_per_shard_defaults_to_auto_sized_for_the_local_agents(tmp_path: Path) -> None:
    demo = train_demo(tmp_path / "demo")
    text = demo.read_text()
    demo.write_text(text.replace("rows_per_shard = 50\n", ""))
    spec = load_job(demo)
    assert spec.data.rows_per_shard == "auto"
    assert rows_per_shard(spec, 100_000, 30) == auto_rows_per_shard(100_000, 30, cores=4.0)  # two 2-cpu agents
    demo.write_text(text.replace("rows_per_shard = 50", 'rows_per_shard = "auto"'))
    assert load_job(demo).data.rows_per_shard == "auto"
    assert rows_per_shard(load_job(demo), 171, 30) == 171  # small data: one shard
    demo.write_text(text.replace("rows_per_shard = 50", 'rows_per_shard = "many"'))
    expected = r"data\.rows_per_shard must be int, got 'many' \(a number of rows, or \"auto\"\)"
    with pytest.raises(JobSpecError, match=expected):
        load_job(demo)
    demo.write_text(text)
    assert rows_per_shard(load_job(demo), 100_000, 30) == 50  # explicit: as today


class RevivesWatched(FakeDriver):
    """A FakeDriver that notes, at each REVIVE, how many results the main thread had queued."""

    events_at_revive: list[int]

    def reviveOffers(self, roles: Any = ()) -> None:  # noqa: N802
        self.events_at_revive = [*getattr(self, "events_at_revive", []), self.scheduler.events.qsize()]
        super().reviveOffers(roles)


def test_the_scheduler_launches_bundles_and_fans_their_update_out(tmp_path: Path) -> None:
    spec = load_job(train_demo(tmp_path / "demo"))
    shards = {"data": cut_shards(load_dataset(spec.data).features[:100], 10)}  # 10 shards
    server = ArtifactServer(tmp_path / "results", bind="127.0.0.1").start()
    try:
        catalog = JobCatalog(spec, server, shards, "python3", server.publish("exec.tgz", spec.models[0].path))
        items = [WorkItem(f"linear.s{s.index:05d}", "linear", s.index) for s in shards["data"]]
        scheduler = EnsembleScheduler(Tracker(items, max_retries=2), catalog, PriceTable(), CostModel(),
                                      PackingOptions(), OfferPolicy(), rounds_in_callback=True)
        driver = RevivesWatched(scheduler)
        scheduler.registered(driver, Dict({"value": "F1"}), Dict({"hostname": "master", "port": 5050}))
        scheduler.measurements.record("linear", "a1", 0.05, 0.05)  # bundles of 5: the other 5 items wait
        # Room for the executor and one 0.5-cpu task (the executor's 0.01 cpus come out of it), not two.
        scheduler.resourceOffers(driver, [make_offer("a1", cpus=0.75, mem=4096)])
        [(_offers, [task], _filters)] = driver.launches  # one Mesos task carrying several items
        bundle = decode_task(base64.b64decode(task["data"]))
        assert isinstance(bundle, BundlePayload) and bundle.task_id == task["task_id"]["value"]
        carried = [payload.task_id for payload in bundle.items]
        assert 1 < len(carried) < len(items) and carried[0] == "linear.s00000.a1"
        npy = array_to_npy(np.zeros(10))
        outcome = BundleResult(results={t: inline_envelope(npy, (10,)) for t in carried[1:]},
                               failures={carried[0]: TaskFailure("infrastructure", "OSError", "disk full")})
        scheduler.statusUpdate(driver, make_status(bundle.task_id, "TASK_RUNNING"))
        assert len(driver.acks) == 1  # one acknowledgement for the bundle's update
        revives = driver.revived
        scheduler.statusUpdate(driver, make_status(bundle.task_id, "TASK_FINISHED",
                                                   data=base64.b64encode(outcome.to_json()).decode()))
        # One REVIVE, sent before the bundle's items were handled (the offer is on its way meanwhile).
        assert driver.revived == revives + 1 and driver.events_at_revive[-1] == 0
        events = [scheduler.events.get_nowait() for _ in range(scheduler.events.qsize())]
        assert [e.kind for e in events] == [EventKind.FINISHED] * (len(carried) - 1)
        assert [e.item.task_id for e in events if e.item] == carried[1:]
        assert [e.status is not None for e in events] == [False] * (len(carried) - 2) + [True]  # acked last
        assert len(driver.acks) == 1  # the finished update: by the main thread, once its results are durable
        failed = scheduler.tracker.items["linear.s00000"]
        assert failed.state is ItemState.PENDING and failed.attempts == 1  # retried (alone: it failed on a1)
        assert "disk full" in failed.failures[-1]
    finally:
        server.stop()
