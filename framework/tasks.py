"""Work items and their life cycle: a pure state machine with the retry policy.

A *work item* is one unit of the job (a model predicting one shard, or one stacking fold).
Each attempt at it is a Mesos task with its own task id (``<item>.a<attempt>``).  At most two
attempts run at once: the item's attempt and a *backup* (a speculative copy of a straggler on
another agent); the first to finish wins.  The tracker turns Mesos task states into item
transitions; nothing here talks to Mesos.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import NamedTuple

from executor.protocol import Operation


class ItemState(str, Enum):
    PENDING = "pending"      # waiting for an offer
    LAUNCHED = "launched"    # sent to Mesos, no update yet
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"        # gave up after the allowed retries
    CANCELLED = "cancelled"  # no longer needed (its member was dropped)


TERMINAL_MESOS_STATES = frozenset(
    {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_LOST", "TASK_ERROR", "TASK_DROPPED",
     "TASK_GONE", "TASK_GONE_BY_OPERATOR", "TASK_UNREACHABLE", "TASK_UNKNOWN"}
)
ACTIVE_MESOS_STATES = frozenset({"TASK_STAGING", "TASK_STARTING", "TASK_RUNNING", "TASK_KILLING"})


def attempt_task_id(item_key: str, attempt: int) -> str:
    """The Mesos task id of an item's ``attempt`` (1-based).  The tracker maps task ids back to
    their items (``Tracker.item_for_task``); nothing parses them."""
    return f"{item_key}.a{attempt}"


class TransitionKind(StrEnum):
    """What a status update meant for its item."""

    STARTED = "started"
    FINISHED = "finished"
    RETRY = "retry"
    GAVE_UP = "gave_up"
    IGNORED = "ignored"
    DROPPED = "dropped"   # an attempt failed while the item's other attempt runs on


@dataclass
class WorkItem:
    """One unit of work and its attempts."""

    key: str
    model: str
    shard: int
    operation: Operation = "predict"
    fold: int | None = None
    state: ItemState = ItemState.PENDING
    attempts: int = 0
    task_id: str | None = None
    agent_id: str | None = None
    backup_task_id: str | None = None
    backup_agent_id: str | None = None
    failed_agents: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def next_task_id(self) -> str:
        return attempt_task_id(self.key, self.attempts + 1)

    def view(self) -> "ItemView":
        """An immutable copy of what an offer round reads (see ``framework.rounds``)."""
        return ItemView(self.key, self.model, self.operation, self.state, self.attempts, self.task_id, self.agent_id,
                        self.backup_task_id, tuple(self.failed_agents))

    def running_task_ids(self) -> list[str]:
        """The Mesos tasks of this item that may still run (its attempt and any backup)."""
        if self.state not in (ItemState.LAUNCHED, ItemState.RUNNING):
            return []
        return [t for t in (self.task_id, self.backup_task_id) if t]


class ItemView(NamedTuple):
    """A work item as one offer round sees it: a value, safe to read off the tracker's lock."""

    key: str
    model: str
    operation: Operation
    state: ItemState
    attempts: int
    task_id: str | None
    agent_id: str | None
    backup_task_id: str | None
    failed_agents: tuple[str, ...]

    def next_task_id(self) -> str:
        return attempt_task_id(self.key, self.attempts + 1)


@dataclass(frozen=True)
class Transition:
    """What an update meant (see :class:`TransitionKind`).  ``agent_id``: where the attempt the
    update is about ran; ``sibling``: the other attempt to kill, on finished."""

    kind: TransitionKind
    item: WorkItem | None = None
    detail: str = ""
    agent_id: str | None = None
    sibling: str | None = None


ACTIVE_ITEM_STATES = (ItemState.LAUNCHED, ItemState.RUNNING)


class Tracker:
    """Tracks every work item through its attempts; decides retries.

    Item states change only through the tracker's methods, which keep the pending and active
    items indexed (and their views cached): an offer round or an update costs the same with ten
    or ten thousand items.
    """

    def __init__(self, items: list[WorkItem], max_retries: int) -> None:
        self.items: dict[str, WorkItem] = {}
        self.max_retries = max_retries
        self._by_task: dict[str, WorkItem] = {}
        self._pending: dict[str, WorkItem] = {}
        self._active: dict[str, WorkItem] = {}
        self._views: dict[str, ItemView] = {}  # each item's view, dropped whenever the item changes
        self.add(items)

    def add(self, items: list[WorkItem]) -> None:
        for item in items:
            self.items[item.key] = item
            self._move(item, item.state)
            self._view(item)  # built now rather than in the first offer round's snapshot

    def _move(self, item: WorkItem, state: ItemState) -> None:
        self._views.pop(item.key, None)
        item.state = state
        self._pending.pop(item.key, None)
        self._active.pop(item.key, None)
        if state is ItemState.PENDING:
            self._pending[item.key] = item
        elif state in ACTIVE_ITEM_STATES:
            self._active[item.key] = item

    def pending(self) -> list[WorkItem]:
        """Items waiting for an offer, in the order they became pending."""
        return list(self._pending.values())

    def pending_views(self) -> tuple[ItemView, ...]:
        """:meth:`pending` as immutable views (built again only for items changed since the last call)."""
        return tuple(self._view(item) for item in self._pending.values())

    def active_views(self) -> tuple[ItemView, ...]:
        return tuple(self._view(item) for item in self._active.values())

    def _view(self, item: WorkItem) -> ItemView:
        view = self._views.get(item.key)
        if view is None:
            view = self._views[item.key] = item.view()
        return view

    def has_pending(self) -> bool:
        return bool(self._pending)

    def active(self) -> list[WorkItem]:
        return list(self._active.values())

    def item_for_task(self, task_id: str) -> WorkItem | None:
        return self._by_task.get(task_id)

    def launched(self, item: WorkItem, agent_id: str) -> str:
        """Record a launch attempt (a pending item's, or a running item's backup); return the
        Mesos task id to use."""
        self._views.pop(item.key, None)
        task_id = item.next_task_id()
        item.attempts += 1
        if item.state is ItemState.PENDING:
            item.task_id, item.agent_id = task_id, agent_id
            self._move(item, ItemState.LAUNCHED)
        else:
            assert item.state in (ItemState.LAUNCHED, ItemState.RUNNING) and item.backup_task_id is None
            item.backup_task_id, item.backup_agent_id = task_id, agent_id
        self._by_task[task_id] = item
        return task_id

    def on_update(self, task_id: str, state: str, message: str = "", reason: str = "") -> Transition:
        """Apply a Mesos status update for ``task_id``."""
        item = self._by_task.get(task_id)
        if item is None or task_id not in item.running_task_ids():
            return Transition(TransitionKind.IGNORED, item, f"stale or unknown task {task_id} ({state})")
        self._views.pop(item.key, None)
        backup = task_id == item.backup_task_id
        agent_id = item.backup_agent_id if backup else item.agent_id
        sibling = item.task_id if backup else item.backup_task_id
        if state in ACTIVE_MESOS_STATES:
            if state == "TASK_RUNNING":
                self._move(item, ItemState.RUNNING)
            return Transition(TransitionKind.STARTED, item, agent_id=agent_id)
        if state == "TASK_FINISHED":
            self._move(item, ItemState.FINISHED)
            item.task_id, item.agent_id = task_id, agent_id  # the attempt whose result counts
            item.backup_task_id = item.backup_agent_id = None
            return Transition(TransitionKind.FINISHED, item, agent_id=agent_id, sibling=sibling)
        description = f"{state}{' (' + reason + ')' if reason else ''}: {message or 'no message'}"
        if sibling is not None:
            # The other attempt runs on: this one is dropped, not retried.
            item.failures.append(f"attempt {task_id} on {agent_id}: {description}")
            if agent_id:
                item.failed_agents.append(agent_id)  # a later retry avoids it too
            if not backup:
                item.task_id, item.agent_id = item.backup_task_id, item.backup_agent_id
            item.backup_task_id = item.backup_agent_id = None
            return Transition(TransitionKind.DROPPED, item, description, agent_id=agent_id)
        return dataclasses.replace(self.attempt_failed(item, description), agent_id=agent_id)

    def attempt_failed(self, item: WorkItem, description: str) -> Transition:
        """An attempt ended badly: retry it (elsewhere if possible) or give up."""
        self._views.pop(item.key, None)
        item.failures.append(f"attempt {item.attempts} on {item.agent_id}: {description}")
        if item.agent_id:
            item.failed_agents.append(item.agent_id)
        if item.attempts > self.max_retries:
            self._move(item, ItemState.FAILED)
            return Transition(TransitionKind.GAVE_UP, item, description)
        self._move(item, ItemState.PENDING)
        return Transition(TransitionKind.RETRY, item, description)

    def reject_result(self, item: WorkItem, description: str) -> Transition:
        """A finished attempt's result was unusable (corrupt data): it counts as a failed attempt."""
        self._move(item, ItemState.RUNNING)
        return self.attempt_failed(item, description)

    def cancel_model(self, model: str) -> list[str]:
        """Stop caring about a model's items; return the Mesos tasks that still run (to be killed)."""
        still_running = []
        for item in self.items.values():
            if item.model == model and item.state not in (ItemState.FINISHED, ItemState.FAILED):
                still_running += item.running_task_ids()
                self._move(item, ItemState.CANCELLED)
        return still_running

    def all_settled(self) -> bool:
        """Every item finished, failed or cancelled."""
        return not self._pending and not self._active

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.items.values():
            counts[item.state.value] = counts.get(item.state.value, 0) + 1
        return counts
