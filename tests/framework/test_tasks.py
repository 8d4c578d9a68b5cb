"""The work-item state machine and its retry policy."""

from framework.tasks import ItemState, Tracker, WorkItem


def tracker(max_retries: int = 2) -> Tracker:
    return Tracker([WorkItem("m.s00000", "m", 0), WorkItem("m.s00001", "m", 1)], max_retries)


def test_each_attempt_gets_its_own_task_id() -> None:
    t = tracker()
    item = t.pending()[0]
    first = t.launched(item, "a1")
    assert first == "m.s00000.a1"
    assert t.on_update(first, "TASK_FAILED", "boom").kind == "retry"
    assert item.state is ItemState.PENDING and item.failed_agents == ["a1"]
    second = t.launched(item, "a2")
    assert second == "m.s00000.a2"
    assert t.on_update(first, "TASK_FINISHED").kind == "ignored"  # a stale attempt cannot finish the item
    assert t.on_update(second, "TASK_RUNNING").kind == "started"
    assert t.on_update(second, "TASK_FINISHED").kind == "finished"


def test_gives_up_after_max_retries() -> None:
    t = tracker(max_retries=1)
    item = t.pending()[0]
    assert t.on_update(t.launched(item, "a1"), "TASK_LOST", "agent gone", "REASON_AGENT_REMOVED").kind == "retry"
    transition = t.on_update(t.launched(item, "a1"), "TASK_ERROR", "bad")
    assert transition.kind == "gave_up" and item.state is ItemState.FAILED
    assert "TASK_LOST (REASON_AGENT_REMOVED): agent gone" in item.failures[0]


def test_cancel_model_returns_running_items_and_settles() -> None:
    t = tracker()
    running = t.pending()[0]
    t.launched(running, "a1")
    assert t.cancel_model("m") == [running]
    assert t.all_settled()
