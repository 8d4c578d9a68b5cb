"""The progress display: rich bars on a forced terminal (written to a StringIO), plain lines at most
one per interval with an injected clock, nothing when quiet; waiting reasons from real rounds."""

from __future__ import annotations

import io
import re
import threading

import pytest

from rich.console import Console

from framework.balancing import Measurements
from framework.offers import OfferView
from framework.packing import Resources, TaskDemand
from framework.progress import JobProgress, waiting_reason
from framework.rounds import OfferPolicy, RoundSnapshot, decide
from framework.tasks import ItemState, ItemView


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=160, color_system=None if not terminal else "standard",
                   legacy_windows=False), out


def plain_text(out: io.StringIO) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())


def test_live_bars_per_model_and_job_with_events_as_they_happen() -> None:
    terminal, out = console(terminal=True)
    clock = Clock()
    progress = JobProgress(terminal, clock=clock, auto_refresh=False)
    assert progress.mode == "live"
    progress.started("linear", 4, 200)
    progress.started("logistic", 4, 200)
    progress.started("job", 2, 20)  # a model may be called "job": its bar is its own
    for _ in range(4):
        progress.task_done("linear", 50)
    progress.task_done("logistic", 50)
    progress.task_done("job", 10)
    progress.retry("logistic", "logistic.s00001", "TASK_FAILED: executor died")
    progress.backup("logistic", "logistic.s00002", "agent-2")
    progress.waiting("3 tasks wait: mem exhausted on 2 agents")
    progress.waiting("2 tasks wait: mem exhausted on 2 agents")  # only fewer: beside the bar, no new line
    progress.waiting("2 tasks wait: mem exhausted on 2 agents")
    progress.close()
    text = plain_text(out)
    final = text.splitlines()[-4:]  # the bars as the display left them: the job's, then each model's
    bars = {line.split()[0]: line for line in final}
    assert list(bars) == ["job", "linear", "logistic"] and "6/10" in final[0] and "1/2" in final[-1], final
    assert "4/4" in bars["linear"] and "1/4" in bars["logistic"], final
    assert all("rows/s" in line for line in final), text
    assert "2 tasks wait: mem exhausted on 2 agents" in final[0]  # the current reason stays beside the job's bar
    assert text.count("waiting: ") == 1 and "waiting: 2 tasks" not in text
    assert "retry logistic.s00001: TASK_FAILED: executor died" in text
    assert "backup copy of logistic.s00002 on agent-2" in text
    assert "waiting: 3 tasks wait: mem exhausted on 2 agents" in text
    assert "\x1b[" in out.getvalue()  # drawn for a terminal (cursor movement, colour)


def test_log_records_go_through_the_display() -> None:
    import logging

    terminal, out = console(terminal=True)
    progress = JobProgress(terminal, auto_refresh=False)
    progress.started("m", 2, 20)
    logger = logging.getLogger("test_progress.display")
    logger.propagate = False
    logger.addHandler(progress.log_handler())
    try:
        logger.warning("agent a2 lost; its tasks come back as TASK_LOST")
    finally:
        logger.handlers.clear()
        progress.close()
    assert "agent a2 lost; its tasks come back as TASK_LOST" in plain_text(out)


def test_plain_lines_at_most_one_per_interval_and_a_last_one_on_close() -> None:
    pipe, out = console(terminal=False)
    clock = Clock()
    progress = JobProgress(pipe, clock=clock, interval=5.0)
    assert progress.mode == "plain"
    progress.started("linear", 10, 1000)
    for second in range(1, 10):
        clock.now = float(second)
        progress.task_done("linear", 100)
        if second == 2:
            progress.retry("linear", "linear.s00007", "TASK_LOST")
            progress.retry("linear", "linear.s00008", "TASK_LOST")
        if second == 3:
            progress.waiting("1 task waits: cpus exhausted on 1 agent")
    clock.now = 9.5
    progress.tick()  # not due: the last line was at 5 s
    assert len(out.getvalue().splitlines()) == 2
    progress.close()  # the events since 5 s are written now
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines  # at 0 s, at 5 s, on close
    assert lines[0] == "progress: 0/10 shards (0%), 0/1000 rows | linear 0/10"
    assert lines[1].startswith("progress: 5/10 shards (50%), 500/1000 rows, 100 rows/s, ETA 5s | linear 5/10")
    assert "retries: retry linear.s00007: TASK_LOST (+1 more)" in lines[1]
    assert "waiting: 1 task waits: cpus exhausted on 1 agent" in lines[1]
    assert "retries" not in lines[2] and lines[2].startswith("progress: 9/10 shards (90%), 900/1000 rows, 95 rows/s")


def test_plain_last_line_at_the_end_shows_no_eta_and_no_waiting() -> None:
    pipe, out = console(terminal=False)
    clock = Clock()
    progress = JobProgress(pipe, clock=clock, interval=5.0)
    progress.started("a", 1, 10)
    progress.started("b", 1, 10)
    progress.waiting("1 task waits for offers")
    clock.now = 2.0
    progress.task_done("a", 10)
    progress.member_failed("b", "gave up after 4 attempts")
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[1] == ("progress: 1/2 shards (50%), 10/20 rows, 5 rows/s, ETA 2s | a 1/1, b 0/1 failed | "
                        "dropped: member b failed: gave up after 4 attempts | waiting: 1 task waits for offers")
    assert "\x1b[" not in out.getvalue()


def test_plain_tick_writes_a_due_line_for_events_between_lines() -> None:
    pipe, out = console(terminal=False)
    clock = Clock()
    progress = JobProgress(pipe, clock=clock, interval=5.0)
    progress.note("framework subscribed to 127.0.0.1:5050")  # before any task: the note alone
    assert out.getvalue() == "framework subscribed to 127.0.0.1:5050\n"
    clock.now = 5.0
    progress.started("m", 2, 20)
    clock.now = 6.0
    progress.backup("m", "m.s00000", "a2")  # within the interval: held back
    clock.now = 9.0
    progress.tick()  # not due yet
    assert len(out.getvalue().splitlines()) == 2
    clock.now = 10.0
    progress.tick()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[2].startswith("progress: 0/2 shards")
    assert "backups: backup copy of m.s00000 on a2 (it straggles)" in lines[2]
    clock.now = 20.0
    progress.tick()
    assert len(out.getvalue().splitlines()) == 3  # nothing new: no line


def test_quiet_writes_nothing() -> None:
    for terminal in (True, False):
        target, out = console(terminal)
        progress = JobProgress(target, mode="quiet")
        progress.started("m", 2, 20)
        progress.task_done("m", 10)
        progress.retry("m", "m.s00001", "TASK_FAILED")
        progress.waiting("1 task waits for offers")
        progress.member_failed("m", "gave up")
        progress.tick()
        progress.close()
        assert out.getvalue() == ""
        assert progress.job.done == 1 and progress.job.retries == 1  # still counted


def test_events_from_another_thread_while_the_main_thread_reports() -> None:
    pipe, out = console(terminal=False)
    progress = JobProgress(pipe, interval=0.0)
    progress.started("m", 200, 200)

    def retries() -> None:
        for i in range(100):
            progress.retry("m", f"m.s{i:05d}", "TASK_LOST")

    thread = threading.Thread(target=retries)
    thread.start()
    for _ in range(200):
        progress.task_done("m", 1)
    thread.join()
    progress.close()
    assert progress.job.done == 200 and progress.job.retries == 100
    assert out.getvalue().splitlines()[-1].startswith("progress: 200/200 shards")


def _snapshot(keys: list[str]) -> RoundSnapshot:
    return RoundSnapshot(
        pending=tuple(ItemView(k, "m", "predict", ItemState.PENDING, 0, None, None, None, ()) for k in keys),
        active=(), demands={"m": TaskDemand("", "m", Resources(cpus=1.0, mem=1024.0), Resources())},
        executor_keys={"m": "ensemble"}, executor_models={"ensemble": frozenset({"m"})}, agent_reserve=Resources(),
        executors=frozenset(), executor_generation={}, measurements=Measurements(), started_at={},
        known_agents=frozenset(), retried_at={}, max_retries=3, suppressed=False,
        policy=OfferPolicy(refuse_seconds=5.0, never_fits_refuse_seconds=300.0))


def _offer(agent: str, cpus: float, mem: float) -> OfferView:
    return OfferView(f"o-{agent}", agent, agent, (("cpus", "*", cpus), ("mem", "*", mem)), {})


def test_waiting_reason_from_a_round_where_memory_runs_out() -> None:
    keys = [f"m.s{i}" for i in range(5)]
    decision = decide(_snapshot(keys), [_offer("a1", 8, 1024), _offer("a2", 8, 1024)], now=0.0)
    assert len(decision.tasks) == 2
    task = {"m": Resources(cpus=1.0, mem=1024.0)}
    assert waiting_reason(decision, 3, task) == "3 tasks wait: mem exhausted on 2 agents"
    assert waiting_reason(decision, 3) == "3 tasks wait for offers (2 agents in the last round)"
    assert waiting_reason(decision, 0) is None
    assert waiting_reason(None, 1) == "1 task waits for the first offers"


def test_waiting_reason_when_no_offer_fits_any_task() -> None:
    decision = decide(_snapshot(["m.s0", "m.s1"]), [_offer("tiny", 0.5, 64)], now=0.0)
    assert not decision.launches
    reason = waiting_reason(decision, 2)
    assert reason is not None and reason.startswith("2 tasks wait: ") and "exhausted on 1 agent" in reason


def test_a_plain_function_gets_one_message_per_event_and_no_line_per_resumed_result() -> None:
    from framework.progress import CallbackProgress, as_progress

    messages: list[str] = []
    progress = as_progress(messages.append)
    assert isinstance(progress, CallbackProgress) and as_progress(progress) is progress
    progress.started("m", 3, 30)
    progress.task_done("m", 10, "m.s00000", resumed=True)
    progress.task_done("m", 10, "m.s00001")
    progress.retry("m", "m.s00002", "TASK_LOST")
    progress.backup("m", "m.s00002", "a2")
    progress.waiting("1 task waits for offers")
    progress.waiting("1 task waits for offers")
    progress.note("framework subscribed")
    assert messages == ["3 task(s) of m (30 rows)", "done m.s00001", "retry m.s00002: TASK_LOST",
                        "backup copy of m.s00002 on a2", "waiting: 1 task waits for offers", "framework subscribed"]
    assert progress.job.done == 2 and progress.job.retries == 1
    assert [text for _at, text in progress.recent] == [
        "retry m.s00002: TASK_LOST", "backup copy of m.s00002 on a2 (it straggles)",
        "waiting: 1 task waits for offers", "framework subscribed"]
    assert as_progress(None).mode == "quiet"


def test_results_taken_from_the_journal_count_as_done_but_not_in_the_rate() -> None:
    clock = Clock()
    progress = JobProgress(console(terminal=False)[0], mode="quiet", clock=clock)
    progress.started("m", 4, 400)
    for key in ("m.s0", "m.s1"):
        progress.task_done("m", 100, key, resumed=True)
    clock.now = 10.0
    progress.task_done("m", 100, "m.s2")
    state = progress.to_json()
    assert state["job"]["done"] == 3 and state["job"]["resumed"] == 2 and state["job"]["rows_done"] == 300
    assert state["job"]["rows_per_second"] == 10.0  # 100 rows computed in 10 s, not 300
    assert state["job"]["eta_seconds"] == 10.0 and state["models"]["m"]["done"] == 3
    json_text = __import__("json").dumps(state)
    assert "m.s2" not in json_text  # finished tasks are counts, not events


def test_the_watch_reports_retries_backups_and_why_tasks_wait_from_the_round() -> None:
    """JobWatch between a real tracker, a real round's decision and the display."""
    from framework.tasks import Tracker, WorkItem
    from framework.watch import JobWatch

    pipe, out = console(terminal=False)
    progress = JobProgress(pipe, interval=0.0)
    tracker = Tracker([WorkItem(f"m.s{i}", "m", i) for i in range(5)], max_retries=3)

    class Scheduler:  # the attributes of EnsembleScheduler the watch reads
        lock = threading.RLock()
        framework_id = "F1"
        hostnames = {"a1": "host-1"}
        executors: dict[tuple[str, str], int] = {("a1", "ensemble"): 0}

    Scheduler.tracker = tracker  # type: ignore[attr-defined]
    watch = JobWatch(progress, "demo", {"m": Resources(cpus=1.0, mem=1024.0)})
    watch.attach(Scheduler, "127.0.0.1:5050")
    progress.started("m", 5, 50)
    decision = decide(_snapshot([f"m.s{i}" for i in range(5)]), [_offer("a1", 8, 1024), _offer("a2", 8, 1024)],
                      now=0.0)
    Scheduler.on_round(decision)  # type: ignore[attr-defined]  # as the scheduler does on each round
    for agent_id, task in decision.tasks:
        tracker.launched(tracker.items[task.item_key], agent_id)
    first = tracker.items[decision.tasks[0][1].item_key]
    tracker.on_update(first.task_id or "", "TASK_LOST", "agent gone", now=1.0)
    watch.tick()
    text = out.getvalue()
    assert f"retry {first.key}: " in text and "agent gone" in text
    assert "waiting: 4 tasks wait: mem exhausted on 2 agents" in text  # 3 never launched + the retry
    assert watch.state == "running" and watch.cost == decision.plan.cost > 0  # type: ignore[union-attr]
    view = watch.view()
    assert view.tasks_by_state == {"launched": 1, "pending": 4}
    assert view.agents_used == ["a2", "host-1"]  # by hostname where known; the lost attempt's agent counts
    assert view.progress["retries"] == 1 and view.waiting == "4 tasks wait: mem exhausted on 2 agents"
    watch.tick()
    assert out.getvalue().count("retry ") == 1  # a failure is reported once


@pytest.mark.parametrize("terminal", [True, False])
def test_a_held_display_shows_nothing_until_released_and_nothing_if_never_released(terminal: bool) -> None:
    target, out = console(terminal)
    progress = JobProgress(target, auto_refresh=False, interval=0.0)
    progress.hold()
    progress.note("running demo")
    progress.started("m", 2, 20)
    progress.waiting("2 tasks wait for the first offers")
    assert out.getvalue() == ""  # a run refused here (bad credentials) writes only its error
    progress.release()
    progress.task_done("m", 10, "m.s0")
    progress.close()
    text = plain_text(out)
    assert "running demo" in text and "waiting: 2 tasks wait for the first offers" in text and "1/2" in text

    target, out = console(terminal)
    never = JobProgress(target, auto_refresh=False)
    never.hold()
    never.note("running demo")
    never.started("m", 2, 20)
    never.close()
    assert out.getvalue() == "" and never.job.tasks == 2
