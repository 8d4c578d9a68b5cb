"""The pure offer round: hand-built snapshots and offers in, a RoundDecision out (no pymesos,
threads or sleeps; the clock is an argument)."""

from __future__ import annotations

import dataclasses
import logging

from framework.balancing import Measurements
from framework.packing import AvoidAgents, Resources, TaskDemand
from framework.rounds import (AVOID_FAILED_AGENTS_SECONDS, OfferPolicy, RoundDecision, RoundSnapshot, decide,
                              item_demand, wants_backup_offers)
from framework.tasks import ItemState, ItemView
from framework.offers import OfferView

TASK = Resources(cpus=1.0, mem=256.0)


def offer(agent: str, cpus: float = 4.0, mem: float = 4096.0, offer_id: str | None = None) -> OfferView:
    return OfferView(offer_id or f"o-{agent}", agent, f"{agent}.example", (("cpus", "*", cpus), ("mem", "*", mem)), {})


def pending(key: str, model: str = "m", attempts: int = 0, failed: tuple[str, ...] = ()) -> ItemView:
    return ItemView(key, model, "predict", ItemState.PENDING, attempts, None, None, None, failed)


def running(key: str, agent: str, model: str = "m", attempt: int = 1) -> ItemView:
    return ItemView(key, model, "predict", ItemState.RUNNING, attempt, f"{key}.a{attempt}", agent, None, ())


def snapshot(pending_items: tuple[ItemView, ...] = (), active: tuple[ItemView, ...] = (),
             models: tuple[str, ...] = ("m",), **changes: object) -> RoundSnapshot:
    base = RoundSnapshot(
        pending=pending_items, active=active,
        demands={m: TaskDemand("", m, TASK, Resources()) for m in models},
        executor_keys={m: "ensemble" for m in models},
        executor_models={"ensemble": frozenset(models)},
        agent_reserve=Resources(),
        executors=frozenset(), executor_generation={},
        measurements=Measurements(), started_at={}, known_agents=frozenset(), retried_at={},
        max_retries=3, suppressed=False,
        policy=OfferPolicy(refuse_seconds=5.0, never_fits_refuse_seconds=300.0),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def placed(decision: RoundDecision) -> dict[str, str]:
    """item key -> agent id"""
    return {task.item_key: agent for agent, task in decision.tasks}


def test_one_accept_per_agent_with_all_its_offers_and_a_task_id_per_attempt() -> None:
    items = tuple(pending(f"m.s{i}") for i in range(4))
    decision = decide(snapshot(items), [offer("a1", cpus=2, offer_id="x"), offer("a1", cpus=2, offer_id="y")], now=0.0)
    assert len(decision.launches) == 1
    launch = decision.launches[0]
    assert launch.offer_ids == ("x", "y") and launch.agent.capacity.cpus == 4
    assert sorted(t.task_id for t in launch.tasks) == [f"m.s{i}.a1" for i in range(4)]
    assert [(s.key, s.generation) for s in launch.executors] == [("ensemble", 0)]  # started with the first ACCEPT
    assert decision.declines == () and decision.suppress  # nothing left pending
    assert decision.agents_seen == {"a1": "a1.example"}


def test_declines_say_why_and_how_long() -> None:
    items = tuple(pending(f"m.s{i}") for i in range(2))
    decision = decide(snapshot(items), [offer("a1"), offer("tiny", cpus=0.5, mem=64), offer("a2")], now=0.0)
    declines = {d.agent_id: (d.reason, d.refuse_seconds) for d in decision.declines}
    assert len(decision.launches) == 1  # one agent suffices
    assert declines.pop("tiny") == ("never_fits", 300.0)
    assert list(declines.values()) == [("unneeded", 5.0)]


def test_scarce_offers_take_the_first_in_launch_order_and_no_suppress() -> None:
    items = tuple(pending(f"m.s{i}") for i in range(5))
    decision = decide(snapshot(items), [offer("a1", cpus=2)], now=0.0)
    assert sorted(placed(decision)) == ["m.s0", "m.s1"]
    assert not decision.suppress


def test_idle_round_declines_everything_at_once_and_suppresses_once() -> None:
    decision = decide(snapshot(), [offer("a1"), offer("a2")], now=0.0)
    assert decision.launches == () and decision.suppress
    declines = [(d.offer_ids, d.reason, d.refuse_seconds) for d in decision.declines]
    assert declines == [(("o-a1", "o-a2"), "unneeded", 5.0)]
    already = decide(snapshot(suppressed=True), [offer("a1")], now=0.0)
    assert not already.suppress and len(already.declines) == 1


def test_probes_first_then_longest_measured_first() -> None:
    measured = Measurements()
    measured.record("short", "h", 0.1, 0.1)
    measured.record("long", "h", 5.0, 5.0)
    items = (pending("short.s0", "short"), pending("long.s0", "long"), pending("new.s0", "new"),
             pending("new.s1", "new"))
    snap = snapshot(items, models=("short", "long", "new"), measurements=measured)
    decision = decide(snap, [offer("a1", cpus=2)], now=0.0)
    assert sorted(placed(decision)) == ["long.s0", "new.s0"]  # the probe of "new", then the longest


def test_a_retry_avoids_its_failed_agent_for_ten_seconds_unless_last_attempt() -> None:
    retry = pending("m.s0", attempts=1, failed=("a1",))
    snap = snapshot((retry,), known_agents=frozenset({"a1", "a2"}), retried_at={"m.s0": 100.0})
    at_once = decide(snap, [offer("a1")], now=101.0)
    assert placed(at_once) == {} and at_once.declines[0].agent_id == "a1"
    assert placed(decide(snap, [offer("a1"), offer("a2")], now=101.0)) == {"m.s0": "a2"}
    later = decide(snap, [offer("a1")], now=100.0 + AVOID_FAILED_AGENTS_SECONDS + 0.1)
    assert placed(later) == {"m.s0": "a1"}
    assert later.tasks[0][1].task_id == "m.s0.a2"
    last = dataclasses.replace(snap, pending=(pending("m.s0", attempts=3, failed=("a1", "a2", "a1")),))
    assert placed(decide(last, [offer("a1")], now=101.0)) == {"m.s0": "a1"}
    only_known = dataclasses.replace(snap, known_agents=frozenset({"a1"}))
    assert placed(decide(only_known, [offer("a1")], now=101.0)) == {"m.s0": "a1"}  # no other agent known
    demand = item_demand(snap, retry, {"a1", "a2"}, now=101.0)
    assert AvoidAgents(frozenset({"a1"})) in demand.constraints


def test_executor_reserve_on_agents_without_our_executor_and_one_warning() -> None:
    items = tuple(pending(f"m.s{i}") for i in range(4))
    reserve = Resources(cpus=1.0, mem=512.0)
    snap = snapshot(items, agent_reserve=reserve)
    fresh = decide(snap, [offer("a1", cpus=2)], now=0.0)
    assert len(fresh.tasks) == 1 and fresh.launches[0].executors  # one task plus the executor
    running_there = dataclasses.replace(snap, executors=frozenset({("a1", "ensemble")}))
    warm = decide(running_there, [offer("a1", cpus=2)], now=0.0)
    assert len(warm.tasks) == 2 and warm.launches[0].executors == ()  # the executor runs: all for tasks
    small = decide(snap, [offer("small", cpus=4, mem=300)], now=0.0)
    assert small.launches == () and small.warned_agents == {"small"}
    assert [line.level for line in small.log if "shared executor needs" in line.message] == [logging.WARNING]
    again = decide(dataclasses.replace(snap, reserve_warned=frozenset({"small"})), [offer("small", mem=300)], now=0.0)
    assert again.warned_agents == frozenset() and not any("shared executor" in line.message for line in again.log)


def test_executor_generation_follows_lost_executors() -> None:
    snap = snapshot((pending("m.s0"),), executor_generation={("a1", "ensemble"): 2})
    assert [(s.key, s.generation) for s in decide(snap, [offer("a1")], now=0.0).launches[0].executors] == [
        ("ensemble", 2)]


def test_a_straggler_gets_a_backup_only_on_another_agent_in_use() -> None:
    measured = Measurements()
    measured.record("m", "h", 1.0, 1.0)
    slow = running("m.s0", "a1")
    snap = snapshot(active=(slow, running("m.s1", "a2")), measurements=measured,
                    started_at={"m.s0.a1": 0.0, "m.s1.a1": 59.5},  # m.s1 started just now
                    executors=frozenset({("a1", "ensemble"), ("a2", "ensemble")}), suppressed=True)
    assert not wants_backup_offers(snap, now=2.0)  # 2 s < 2 x 1 s + 1 s
    assert wants_backup_offers(snap, now=60.0)
    assert decide(snap, [offer("a1"), offer("a2")], now=2.0).launches == ()
    decision = decide(snap, [offer("a1"), offer("a2"), offer("a3")], now=60.0)
    assert [(agent, t.task_id, t.backup) for agent, t in decision.tasks] == [("a2", "m.s0.a2", True)]
    assert len(decision.backups) == 1 and not decision.suppress  # already suppressed
    assert {d.agent_id for d in decision.declines} == {"a1", "a3"}
    assert all(d.reason == "unneeded" for d in decision.declines)
    assert any(line.level == logging.WARNING and "backup" in line.message for line in decision.log)
    only_new = decide(snap, [offer("a3")], now=60.0)  # a new agent would cost more: never used for a backup
    assert only_new.launches == ()


def test_models_of_their_own_executor_start_one_executor_per_model() -> None:
    items = (pending("a.s0", "a"), pending("a.s1", "a"), pending("b.s0", "b"))
    snap = snapshot(items, models=("a", "b"), executor_keys={"a": "a", "b": "b"},
                    executor_models={"a": frozenset({"a"}), "b": frozenset({"b"})},
                    executors=frozenset({("a1", "b")}))
    launch = decide(snap, [offer("a1")], now=0.0).launches[0]
    assert [s.key for s in launch.executors] == ["a"]  # b's executor already runs there
    assert {t.item_key: t.executor_key for t in launch.tasks} == {"a.s0": "a", "a.s1": "a", "b.s0": "b"}


def test_decide_reads_nothing_but_its_arguments() -> None:
    items = tuple(pending(f"m.s{i}") for i in range(3))
    snap = snapshot(items)
    offers = [offer("a1", cpus=2), offer("a2", cpus=2)]
    first, second = decide(snap, offers, now=5.0), decide(snap, offers, now=5.0)
    assert placed(first) == placed(second) and first.declines == second.declines
    assert snap.pending == items  # the snapshot is not changed
