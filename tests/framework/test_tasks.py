"""The work-item state machine and its retry policy."""

from hypothesis import given
from hypothesis import strategies as st

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
    t.launched(running, "a2")  # a backup
    assert t.cancel_model("m") == ["m.s00000.a1", "m.s00000.a2"]
    assert t.all_settled()


def test_backup_that_finishes_first_wins_and_names_the_attempt_to_kill() -> None:
    t = tracker()
    item = t.pending()[0]
    first = t.launched(item, "slow")
    t.on_update(first, "TASK_RUNNING")
    backup = t.launched(item, "fast")
    assert backup == "m.s00000.a2" and item.running_task_ids() == [first, backup]
    assert t.on_update(backup, "TASK_RUNNING").kind == "started"
    done = t.on_update(backup, "TASK_FINISHED")
    assert (done.kind, done.agent_id, done.sibling) == ("finished", "fast", first)
    assert item.task_id == backup and item.agent_id == "fast"  # the result to decode is the backup's
    assert t.on_update(first, "TASK_KILLED").kind == "ignored"
    assert item.state is ItemState.FINISHED and item.running_task_ids() == []


def test_a_failed_attempt_is_dropped_while_its_sibling_runs() -> None:
    t = tracker(max_retries=0)
    item = t.pending()[0]
    first = t.launched(item, "a1")
    backup = t.launched(item, "a2")
    dropped = t.on_update(first, "TASK_FAILED", "disk full")
    assert (dropped.kind, dropped.agent_id) == ("dropped", "a1")
    assert item.task_id == backup and item.agent_id == "a2" and item.backup_task_id is None
    assert item.failed_agents == ["a1"]
    assert item.state is not ItemState.FAILED  # no retry budget was needed
    # Now the only attempt: its failure is an ordinary one (here: no retries left).
    assert t.on_update(backup, "TASK_FAILED", "again").kind == "gave_up"


def test_primary_finishing_first_names_the_backup_to_kill() -> None:
    t = tracker()
    item = t.pending()[0]
    first = t.launched(item, "a1")
    backup = t.launched(item, "a2")
    done = t.on_update(first, "TASK_FINISHED")
    assert (done.kind, done.sibling, item.task_id) == ("finished", backup, first)
    assert t.on_update(backup, "TASK_FINISHED").kind == "ignored"  # one result per item


@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["launch", "backup", "RUNNING", "FINISHED", "FAILED",
                                                               "KILLED", "reject", "cancel"])), max_size=60))
def test_indexes_match_the_item_states(steps: list[tuple[int, str]]) -> None:
    """Whatever happens, pending(), active() and all_settled() agree with a scan of the items."""
    t = Tracker([WorkItem(f"m{n % 2}.s{n}", f"m{n % 2}", n) for n in range(5)], max_retries=2)
    items = list(t.items.values())
    for index, step in steps:
        item = items[index]
        if step == "launch" and item.state is ItemState.PENDING:
            t.launched(item, "a1")
        elif step == "backup" and item.state in (ItemState.LAUNCHED, ItemState.RUNNING) and not item.backup_task_id:
            t.launched(item, "a2")
        elif step in ("RUNNING", "FINISHED", "FAILED", "KILLED") and item.running_task_ids():
            t.on_update(item.running_task_ids()[-1], f"TASK_{step}", "x")
        elif step == "reject" and item.state is ItemState.FINISHED:
            t.reject_result(item, "corrupt")
        elif step == "cancel":
            t.cancel_model(item.model)
    pending = [i.key for i in t.pending()]
    assert len(pending) == len(set(pending)) and set(pending) == {i.key for i in items if i.state is ItemState.PENDING}
    assert {i.key for i in t.active()} == {i.key for i in items if i.state in (ItemState.LAUNCHED, ItemState.RUNNING)}
    assert t.all_settled() == all(i.state in (ItemState.FINISHED, ItemState.FAILED, ItemState.CANCELLED) for i in items)
    assert t.has_pending() == any(i.state is ItemState.PENDING for i in items)
