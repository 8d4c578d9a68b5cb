"""How failures are classified and survived: the tracker's retry policy, the round's backoff and
blame, placement that cannot succeed, timeouts and master loss (pure, or the scheduler driven
step by step with a fake driver and a hand-moved clock: no pymesos, threads or sleeps)."""

from __future__ import annotations

import base64
import dataclasses
import logging
from pathlib import Path
from typing import Iterator

import pytest
from addict import Dict

from executor.protocol import TaskFailure
from factories import make_offer, make_status
from framework.artifacts import ArtifactServer
from framework.packing import AvoidAgents, Resources, TaskDemand
from framework.rounds import decide, describe_unfit, timed_out
from framework.scheduler import EnsembleScheduler, EventKind
from framework.tasks import (BLAME_SECONDS, BLAME_STREAK, BACKOFF_MAX_SECONDS, INFRASTRUCTURE, MEMBER_ERROR,
                             ItemState, ItemView, Tracker, TransitionKind, WorkItem, failure_kind, retry_backoff)
from harness import FakeDriver
from tests.framework.test_rounds import offer, pending, placed, running, snapshot
from tests.framework.test_scheduler import demo_scheduler, launched_task_ids

TRACEBACK = ('Traceback (most recent call last):\n  File "model.py", line 3, in predict\n'
             '    raise ValueError("column 2 is negative")\nValueError: column 2 is negative\n')


def member_error() -> TaskFailure:
    return TaskFailure("member_error", "ValueError", "model m.predict failed: ValueError: column 2 is negative",
                       TRACEBACK)


def launch(tracker: Tracker, key: str, agent: str) -> str:
    return tracker.launched(tracker.items[key], agent)


# --- the tracker ---------------------------------------------------------------------------
def test_failure_kinds() -> None:
    assert failure_kind("TASK_FAILED", "", member_error()) == MEMBER_ERROR
    assert failure_kind("TASK_FAILED", "", TaskFailure("infrastructure", "OSError", "download")) == INFRASTRUCTURE
    # No TaskFailure: the executor never answered (lost, killed by the OOM killer, fetch failed).
    for state in ("TASK_FAILED", "TASK_LOST", "TASK_UNREACHABLE", "TASK_GONE", "TASK_DROPPED", "TASK_KILLED"):
        assert failure_kind(state, "", None) == INFRASTRUCTURE
    # The executor died: whatever it said before, its agent (or memory) is to blame.
    assert failure_kind("TASK_FAILED", "REASON_EXECUTOR_TERMINATED", member_error()) == INFRASTRUCTURE


def test_a_member_error_is_retried_once_elsewhere_then_gives_up_with_its_traceback() -> None:
    tracker = Tracker([WorkItem("m.s0", "m", 0)], max_retries=3)
    first = launch(tracker, "m.s0", "a1")
    transition = tracker.on_update(first, "TASK_FAILED", member_error().status_message(), "", member_error(), 10.0)
    assert transition.kind is TransitionKind.RETRY and transition.kind_of_failure == MEMBER_ERROR
    item = tracker.items["m.s0"]
    assert item.not_before <= 10.0  # deterministic: no point waiting
    assert item.failed_agents == ["a1"] and tracker.avoided_agents(10.0) == frozenset()  # not the agent's fault
    second = launch(tracker, "m.s0", "a2")
    transition = tracker.on_update(second, "TASK_FAILED", member_error().status_message(), "", member_error(), 11.0)
    assert transition.kind is TransitionKind.GAVE_UP and item.state is ItemState.FAILED
    assert item.attempts == 2  # not max_retries + 1
    assert "column 2 is negative" in transition.detail and "\n" not in transition.detail
    assert item.traceback == TRACEBACK


def test_the_tracebacks_last_line_is_added_when_the_message_lacks_it() -> None:
    tracker = Tracker([WorkItem("m.s0", "m", 0)], max_retries=3)
    failure = TaskFailure("member_error", "KeyError", "model m.predict failed", 'Traceback ...\nKeyError: "col"\n')
    transition = tracker.on_update(launch(tracker, "m.s0", "a1"), "TASK_FAILED", failure.status_message(), "",
                                   failure, 0.0)
    assert transition.detail.endswith('[KeyError: "col"]')


def test_infrastructure_failures_back_off_and_use_every_retry() -> None:
    tracker = Tracker([WorkItem("m.s0", "m", 0)], max_retries=3)
    item = tracker.items["m.s0"]
    now = 100.0
    waits = []
    for attempt in range(1, 4):
        task_id = launch(tracker, "m.s0", f"a{attempt}")
        transition = tracker.on_update(task_id, "TASK_LOST", "agent removed", "REASON_AGENT_REMOVED", None, now)
        assert transition.kind is TransitionKind.RETRY and transition.kind_of_failure == INFRASTRUCTURE
        waits.append(item.not_before - now)
        now = item.not_before
    assert waits == [1.0, 2.0, 4.0]
    transition = tracker.on_update(launch(tracker, "m.s0", "a4"), "TASK_FAILED", "", "", None, now)
    assert transition.kind is TransitionKind.GAVE_UP and item.attempts == 4
    assert retry_backoff(20) == BACKOFF_MAX_SECONDS


def test_an_agent_failing_different_items_in_a_row_is_avoided_by_the_whole_job() -> None:
    items = [WorkItem(f"m.s{i}", "m", i) for i in range(BLAME_STREAK + 2)]
    tracker = Tracker(items, max_retries=3)
    # The same item failing twice there counts once; a finished task there ends the streak.
    for key in ("m.s0", "m.s0"):
        tracker.on_update(launch(tracker, key, "bad"), "TASK_FAILED", "", "", None, 0.0)
    tracker.on_update(launch(tracker, "m.s1", "bad"), "TASK_FINISHED")
    assert tracker.avoided_agents(0.0) == frozenset()
    blamed = None
    for item in items[2:]:
        assert blamed is None
        blamed = tracker.on_update(launch(tracker, item.key, "bad"), "TASK_LOST", "", "", None, 50.0).blamed
    assert blamed == "bad"
    assert tracker.avoided_agents(50.0) == {"bad"}
    assert tracker.avoided_agents(50.0 + BLAME_SECONDS + 1) == frozenset()


def test_member_errors_never_blame_the_agent() -> None:
    tracker = Tracker([WorkItem(f"m.s{i}", "m", i) for i in range(5)], max_retries=3)
    for i in range(5):
        tracker.on_update(launch(tracker, f"m.s{i}", "a1"), "TASK_FAILED", "", "", member_error(), 0.0)
    assert tracker.avoided_agents(0.0) == frozenset()


# --- the round -----------------------------------------------------------------------------
def backing_off(key: str, until: float, failed: tuple[str, ...] = ()) -> ItemView:
    return pending(key, attempts=1, failed=failed)._replace(not_before=until)


def test_a_retry_waits_for_its_backoff_and_offers_come_back_then() -> None:
    snap = snapshot((backing_off("m.s0", until=12.0),))
    decision = decide(snap, [offer("a1")], now=10.0)
    assert placed(decision) == {} and not decision.suppress  # nobody would revive a suppressed framework
    assert [d.refuse_seconds for d in decision.declines] == [2.0]
    assert placed(decide(snap, [offer("a1")], now=12.0)) == {"m.s0": "a1"}


def test_a_backing_off_retry_does_not_stop_other_work_nor_speculation_waits_for_it() -> None:
    snap = snapshot((backing_off("m.s0", until=12.0), pending("m.s1")))
    decision = decide(snap, [offer("a1")], now=10.0)
    assert placed(decision) == {"m.s1": "a1"} and not decision.suppress


def test_blamed_agents_are_avoided_while_others_are_known() -> None:
    items = (pending("m.s0"), pending("m.s1"))
    snap = snapshot(items, avoided_agents=frozenset({"bad"}), known_agents=frozenset({"bad", "good"}))
    decision = decide(snap, [offer("bad"), offer("good", cpus=1)], now=0.0)
    assert placed(decision) == {"m.s0": "good"}
    assert any("o-bad" in d.offer_ids for d in decision.declines)
    # With no other agent known, a blamed agent is better than none.
    alone = snapshot(items, avoided_agents=frozenset({"bad"}), known_agents=frozenset({"bad"}))
    assert set(placed(decide(alone, [offer("bad")], now=0.0)).values()) == {"bad"}


def test_a_task_that_fits_no_agent_is_judged_per_agent_with_the_packers_reasons() -> None:
    big = TaskDemand("", "big", Resources(cpus=64.0, mem=256.0), Resources())
    snap = snapshot((pending("big.s0", "big"), pending("m.s0")), models=("m", "big"))
    snap = dataclasses.replace(snap, demands={**snap.demands, "big": big},
                               executor_keys={"m": "ensemble", "big": "ensemble"})
    decision = decide(snap, [offer("a1"), offer("a2")], now=0.0)
    assert placed(decision) == {"m.s0": "a1"} or placed(decision) == {"m.s0": "a2"}
    assert set(decision.unfit["big"]) == {"a1", "a2"} and decision.fits == {"m"}
    assert describe_unfit(decision.unfit["big"].values()) == "cpus exhausted on 2 agents"
    # Agents judged before are not judged again.
    again = decide(dataclasses.replace(snap, unfit_agents={"big": frozenset({"a1"})}), [offer("a1"), offer("a2")],
                   now=1.0)
    assert set(again.unfit["big"]) == {"a2"}


def test_an_agent_busy_with_our_own_tasks_is_not_judged_unfit() -> None:
    """a1 offers 1 cpu because two of our tasks run there: the pending task would fit once they end."""
    snap = snapshot((pending("m.s2"),), active=(running("m.s0", "a1"), running("m.s1", "a1")),
                    demands={"m": TaskDemand("", "m", Resources(cpus=2.0, mem=256.0), Resources())})
    decision = decide(snap, [offer("a1", cpus=1.0)], now=0.0)
    assert placed(decision) == {} and decision.unfit == {} and decision.fits == {"m"}


def test_timed_out_tasks_count_from_compute_start() -> None:
    active = (running("m.s0", "a1"), running("m.s1", "a1"), running("x.s0", "a1", model="x"))
    since = {"m.s0.a1": 0.0, "m.s1.a1": 50.0, "x.s0.a1": 0.0}
    assert timed_out(active, since, {"m": 30.0}, now=60.0) == [("m.s0.a1", 30.0)]
    assert timed_out(active, {}, {"m": 30.0}, now=600.0) == []  # still fetching inputs


# --- the scheduler, step by step ----------------------------------------------------------
@pytest.fixture
def server(tmp_path: Path) -> Iterator[ArtifactServer]:
    server = ArtifactServer(tmp_path / "results", bind="127.0.0.1").start()
    yield server
    server.stop()


def failed_status(task_id: str, agent: str, failure: TaskFailure) -> Dict:
    return make_status(task_id, "TASK_FAILED", agent, data=base64.b64encode(failure.to_json()).decode(),
                       message=failure.status_message())


def test_scheduler_gives_a_member_error_one_retry_and_logs_its_traceback(
        tmp_path: Path, server: ArtifactServer, caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    scheduler = demo_scheduler(tmp_path, server, rounds_in_callback=True, clock=lambda: now[0])
    driver = FakeDriver(scheduler)
    caplog.set_level(logging.INFO, "framework.scheduler")
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=4, mem=4096), make_offer("a2", cpus=4, mem=4096)])
    first = launched_task_ids(driver)[0]
    where = next(t["agent_id"]["value"] for _ids, ts, _f in driver.launches for t in ts
                 if t["task_id"]["value"] == first)
    scheduler.statusUpdate(driver, failed_status(first, where, member_error()))
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=4, mem=4096), make_offer("a2", cpus=4, mem=4096)])
    second = first.replace(".a1", ".a2")
    elsewhere = [t["agent_id"]["value"] for _ids, ts, _f in driver.launches for t in ts
                 if t["task_id"]["value"] == second]
    assert elsewhere and elsewhere[0] != where  # at once (no backoff), on the other agent
    scheduler.statusUpdate(driver, failed_status(second, elsewhere[0], member_error()))
    event = scheduler.events.get_nowait()
    assert event.kind is EventKind.GAVE_UP and "ValueError: column 2 is negative" in event.detail
    assert "raise ValueError" in caplog.text  # the whole executor-side traceback, for --verbose


def test_scheduler_kills_a_task_past_its_models_timeout_and_retries_it(tmp_path: Path, server: ArtifactServer) -> None:
    now = [100.0]
    scheduler = demo_scheduler(tmp_path, server, rounds_in_callback=True, clock=lambda: now[0],
                               timeouts={"linear": 30.0})
    driver = FakeDriver(scheduler)
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=4, mem=4096)])
    task = next(t for t in launched_task_ids(driver) if t.startswith("linear"))
    now[0] += 100.0  # fetching inputs is not computing
    assert scheduler.check_timeouts(driver) == []
    scheduler.statusUpdate(driver, make_status(task, "TASK_RUNNING", "a1"))
    now[0] += 31.0
    assert scheduler.check_timeouts(driver) == [task]
    assert scheduler.check_timeouts(driver) == []  # killed once
    assert driver.kills == [task]
    scheduler.statusUpdate(driver, make_status(task, "TASK_KILLED", "a1", message="killed by the framework"))
    item = scheduler.tracker.item_for_task(task)
    assert item is not None and item.state is ItemState.PENDING and item.infrastructure_failures == 1
    assert "timeout of 30 s" in item.failures[-1]


def test_scheduler_fails_a_model_that_no_known_agent_can_run(tmp_path: Path, server: ArtifactServer) -> None:
    now = [100.0]
    scheduler = demo_scheduler(tmp_path, server, rounds_in_callback=True, clock=lambda: now[0])
    driver = FakeDriver(scheduler)
    tiny = dict(cpus=0.3, mem=4096)  # the executor starts, no task fits beside it
    scheduler.resourceOffers(driver, [make_offer("a1", **tiny)])
    waiting = [scheduler.events.get_nowait() for _ in range(scheduler.events.qsize())]
    assert {e.kind for e in waiting} == {EventKind.WAITING}
    assert sorted(e.detail for e in waiting) == [f"2 task(s) of model {m} wait: cpus exhausted on 1 agent"
                                                for m in ("linear", "logistic")]
    scheduler.resourceOffers(driver, [make_offer("a2", **tiny)])
    kinds = [scheduler.events.get_nowait().kind for _ in range(scheduler.events.qsize())]
    assert EventKind.UNPLACEABLE not in kinds  # not before an agent declined as unneeded would be offered again
    now[0] += scheduler.policy.refuse_seconds
    scheduler.check_placement()
    events = [scheduler.events.get_nowait() for _ in range(scheduler.events.qsize())]
    unplaceable = [e for e in events if e.kind is EventKind.UNPLACEABLE]
    assert unplaceable and "none of the 2 known agents" in unplaceable[0].detail
    assert "cpus exhausted on 2 agents" in unplaceable[0].detail


def test_scheduler_fails_waiting_work_after_the_placement_timeout(tmp_path: Path, server: ArtifactServer) -> None:
    now = [100.0]
    scheduler = demo_scheduler(tmp_path, server, rounds_in_callback=True, clock=lambda: now[0],
                               placement_timeout=60.0)
    driver = FakeDriver(scheduler)
    scheduler.known_agents.add("silent")  # an agent that never offers
    scheduler.resourceOffers(driver, [make_offer("a1", cpus=0.3, mem=4096)])
    now[0] += 59.0
    scheduler.check_placement()
    kinds = [scheduler.events.get_nowait().kind for _ in range(scheduler.events.qsize())]
    assert set(kinds) == {EventKind.WAITING}
    now[0] += 2.0
    scheduler.check_placement()
    kinds = [scheduler.events.get_nowait().kind for _ in range(scheduler.events.qsize())]
    assert EventKind.UNPLACEABLE in kinds


def test_master_loss_is_timed_from_the_disconnection_and_ends_on_reregistration(
        tmp_path: Path, server: ArtifactServer) -> None:
    now = [100.0]
    scheduler: EnsembleScheduler = demo_scheduler(tmp_path, server, rounds_in_callback=True, clock=lambda: now[0])
    driver = FakeDriver(scheduler)
    assert scheduler.master_lost_for() == 0.0
    scheduler.disconnected(driver)
    now[0] += 45.0
    assert scheduler.master_lost_for() == 45.0
    scheduler.reregistered(driver, Dict({"hostname": "master", "port": 5050}))
    assert scheduler.master_lost_for() == 0.0


# --- the job file's fields ----------------------------------------------------------------
def test_timeouts_in_the_job_file(tmp_path: Path) -> None:
    from framework.demo import train_demo
    from framework.errors import JobSpecError
    from framework.jobspec import load_job

    job = train_demo(tmp_path / "demo")
    plain = load_job(job)
    assert (plain.framework.master_timeout, plain.framework.placement_timeout) == (60.0, 60.0)
    assert [m.timeout for m in plain.models] == [None, None]
    text = job.read_text()
    job.write_text(text.replace('name = "mesos-ensemble-demo"', 'name = "mesos-ensemble-demo"\nmaster_timeout = 5\n'
                                'placement_timeout = 7.5').replace("mem = 128", "mem = 128\ntimeout = 30", 1))
    spec = load_job(job)
    assert (spec.framework.master_timeout, spec.framework.placement_timeout) == (5.0, 7.5)
    assert [m.timeout for m in spec.models] == [30.0, None]
    job.write_text(text.replace("mem = 128", "mem = 128\ntimeout = 0", 1))
    with pytest.raises(JobSpecError, match=r"models\[0\] \(linear\)\.timeout.*must be a positive number, got 0"):
        load_job(job)
    job.write_text(text.replace('name = "mesos-ensemble-demo"', 'name = "mesos-ensemble-demo"\nmaster_timeout = -1'))
    with pytest.raises(JobSpecError, match=r"framework\.master_timeout.*must be a positive number"):
        load_job(job)


def test_a_plain_task_is_judged_to_fit_without_a_pack_per_model_and_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13: with one slot free, every other model with pending work was judged by a pack of
    its own each round (1-2 ms each).  A task without constraints whose resources and executor fit
    the agent alone fits without one; a constrained one is still judged by the packer."""
    import framework.rounds as rounds

    calls: list[int] = []
    real_pack = rounds.pack
    monkeypatch.setattr(rounds, "pack", lambda tasks, *rest: (calls.append(len(tasks)), real_pack(tasks, *rest))[1])
    models = ("m0", "m1", "m2", "m3")
    items = tuple(pending(f"{m}.s{i}", m) for m in models for i in range(3))
    snap = snapshot(items, models=models)
    decision = decide(snap, [offer("a1", cpus=1.0)], now=0.0)
    assert len(placed(decision)) == 1 and decision.fits == set(models) and decision.unfit == {}
    assert calls == [1]  # the round's plan only
    calls.clear()
    spread = TaskDemand("", "m1", Resources(cpus=1.0, mem=256.0), Resources(), (AvoidAgents(frozenset({"zz"})),))
    decision = decide(dataclasses.replace(snap, demands={**snap.demands, "m1": spread}), [offer("a1", cpus=1.0)],
                      now=0.0)
    assert decision.fits == set(models) and calls == [1, 1]  # the plan, then m1 judged by the packer
