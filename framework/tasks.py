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
from typing import Iterable, NamedTuple

from executor.protocol import Operation, TaskFailure

INFRASTRUCTURE = "infrastructure"
MEMBER_ERROR = "member_error"

MEMBER_ERROR_RETRIES = 1
"""A member's own exception is deterministic: it is retried once (on another agent), then the
member fails."""
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
"""An infrastructure failure's retry waits 1 s, 2 s, 4 s ... (at most 30 s) before it is launched."""
BLAME_STREAK = 3
"""An agent on which this many different items fail in a row (infrastructure failures, with no
task finishing there in between) ..."""
BLAME_SECONDS = 300.0
"""... is avoided by the whole job for this long (unless no other agent is known)."""


def retry_backoff(infrastructure_failures: int) -> float:
    """Seconds before the retry after the ``infrastructure_failures``-th failure (1-based)."""
    return min(BACKOFF_BASE_SECONDS * 2 ** max(0, infrastructure_failures - 1), BACKOFF_MAX_SECONDS)


def failure_kind(state: str, reason: str, failure: TaskFailure | None) -> str:
    """``member_error`` when the executor said the member's own code raised, else
    ``infrastructure`` (executor or agent lost, fetch failure, OOM kill, a lost, unreachable,
    gone or dropped task, a timeout, a bug in the executor)."""
    if state == "TASK_FAILED" and failure is not None and failure.is_member_error \
            and reason != "REASON_EXECUTOR_TERMINATED":
        return MEMBER_ERROR
    return INFRASTRUCTURE


def last_line(text: str) -> str:
    """The last non-empty line of a traceback (the exception itself)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


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
    member_errors: int = 0
    """Attempts that failed by the member's own exception."""
    infrastructure_failures: int = 0
    not_before: float = 0.0
    """A retry after an infrastructure failure is not launched before this time (backoff)."""
    traceback: str = ""
    """The executor-side traceback of the last failed attempt that sent one."""
    carrier: str | None = None
    """The Mesos task that carries the current attempt when it travels in a bundle with other
    items (see ``framework.rounds``); None when the attempt is a Mesos task of its own."""
    bundle_size: int = 1
    """Items in the current attempt's bundle (1: not bundled)."""

    def next_task_id(self) -> str:
        return attempt_task_id(self.key, self.attempts + 1)

    def view(self) -> "ItemView":
        """An immutable copy of what an offer round reads (see ``framework.rounds``)."""
        return ItemView(self.key, self.model, self.operation, self.state, self.attempts, self.task_id, self.agent_id,
                        self.backup_task_id, tuple(self.failed_agents), self.not_before, self.carrier,
                        self.bundle_size)

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
    not_before: float = 0.0
    carrier: str | None = None
    """The Mesos task carrying the current attempt, when bundled."""
    bundle_size: int = 1

    @property
    def mesos_task_id(self) -> str | None:
        """The Mesos task the current attempt runs in (its bundle's, or its own)."""
        return self.carrier or self.task_id

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
    kind_of_failure: str = ""
    """For a failed attempt: ``member_error`` or ``infrastructure``."""
    blamed: str | None = None
    """An agent this failure made the whole job avoid (see :data:`BLAME_STREAK`)."""


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
        self._streaks: dict[str, list[str]] = {}  # agent -> items failed there in a row
        self.blamed_until: dict[str, float] = {}  # agent -> avoided by the whole job until then
        self._by_task: dict[str, WorkItem] = {}
        self._pending: dict[str, WorkItem] = {}
        self._active: dict[str, WorkItem] = {}
        self._views: dict[str, ItemView] = {}  # each item's view, dropped whenever the item changes
        self._bundles: dict[str, list[str]] = {}  # bundle's Mesos task id -> its items' task ids
        self._carrier: dict[str, str] = {}  # bundled item's task id -> its bundle's Mesos task id
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

    def bundled_tasks(self, mesos_task_id: str) -> list[str] | None:
        """The items' task ids a bundle (a Mesos task) carries; None when it is not a bundle."""
        return self._bundles.get(mesos_task_id)

    def carrier_of(self, task_id: str) -> str:
        """The Mesos task an item's task id runs in (its bundle's, or itself)."""
        return self._carrier.get(task_id, task_id)

    def mesos_tasks(self, task_ids: Iterable[str]) -> list[str]:
        """The Mesos tasks that carry ``task_ids`` (each once, in order)."""
        return list(dict.fromkeys(self.carrier_of(t) for t in task_ids))

    def alive_in_bundle(self, task_id: str) -> list[str]:
        """The other task ids of ``task_id``'s bundle whose items still wait for that bundle."""
        carrier = self._carrier.get(task_id)
        if carrier is None:
            return []
        alive = []
        for other in self._bundles.get(carrier, ()):
            item = self._by_task.get(other)
            if other != task_id and item is not None and other in item.running_task_ids():
                alive.append(other)
        return alive

    def launched(self, item: WorkItem, agent_id: str, carrier: str | None = None, bundle_size: int = 1) -> str:
        """Record a launch attempt (a pending item's, or a running item's backup); return the
        item's task id for it (the Mesos task id, unless ``carrier``: the bundle of
        ``bundle_size`` items it travels in; a backup is never bundled)."""
        self._views.pop(item.key, None)
        task_id = item.next_task_id()
        item.attempts += 1
        if item.state is ItemState.PENDING:
            item.task_id, item.agent_id = task_id, agent_id
            item.carrier, item.bundle_size = carrier, bundle_size if carrier else 1
            if carrier:
                self._bundles.setdefault(carrier, []).append(task_id)
                self._carrier[task_id] = carrier
            self._move(item, ItemState.LAUNCHED)
        else:
            assert item.state in (ItemState.LAUNCHED, ItemState.RUNNING) and item.backup_task_id is None
            item.backup_task_id, item.backup_agent_id = task_id, agent_id
        self._by_task[task_id] = item
        return task_id

    def on_update(self, task_id: str, state: str, message: str = "", reason: str = "",
                  failure: TaskFailure | None = None, now: float = 0.0) -> Transition:
        """Apply a Mesos status update for ``task_id`` (``failure``: what the executor said a
        failed task's error was; ``now``: the clock, for the retry's backoff and blame)."""
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
            if agent_id:
                self._streaks.pop(agent_id, None)
            self._move(item, ItemState.FINISHED)
            item.task_id, item.agent_id = task_id, agent_id  # the attempt whose result counts
            if backup:
                item.carrier, item.bundle_size = None, 1
            item.backup_task_id = item.backup_agent_id = None
            return Transition(TransitionKind.FINISHED, item, agent_id=agent_id, sibling=sibling)
        kind = failure_kind(state, reason, failure)
        description = f"{state}{' (' + reason + ')' if reason else ''}: {message or 'no message'}"
        if failure is not None and failure.message and failure.message not in description:
            description += f" ({failure.message})"
        if failure is not None and failure.traceback:
            item.traceback = failure.traceback
            exception = last_line(failure.traceback)
            if exception and exception not in description:
                description += f" [{exception}]"
        blamed = self._blame(agent_id, item.key, now) if kind == INFRASTRUCTURE and agent_id else None
        if sibling is not None:
            # The other attempt runs on: this one is dropped, not retried.
            item.failures.append(f"attempt {task_id} on {agent_id}: {description}")
            if agent_id:
                item.failed_agents.append(agent_id)  # a later retry avoids it too
            if not backup:
                item.task_id, item.agent_id = item.backup_task_id, item.backup_agent_id
                item.carrier, item.bundle_size = None, 1  # a backup is never bundled
            item.backup_task_id = item.backup_agent_id = None
            return Transition(TransitionKind.DROPPED, item, description, agent_id=agent_id, kind_of_failure=kind,
                              blamed=blamed)
        return dataclasses.replace(self.attempt_failed(item, description, kind, now), agent_id=agent_id,
                                   blamed=blamed)

    def attempt_failed(self, item: WorkItem, description: str, kind: str = INFRASTRUCTURE,
                       now: float = 0.0) -> Transition:
        """An attempt ended badly: retry it (elsewhere if possible) or give up.  A member's own
        error is retried at most :data:`MEMBER_ERROR_RETRIES` times, at once; an infrastructure
        failure up to ``max_retries`` times, after :func:`retry_backoff`."""
        self._views.pop(item.key, None)
        item.failures.append(f"attempt {item.attempts} on {item.agent_id}: {description}")
        if item.agent_id:
            item.failed_agents.append(item.agent_id)
        if kind == MEMBER_ERROR:
            item.member_errors += 1
            give_up = item.member_errors > MEMBER_ERROR_RETRIES
        else:
            item.infrastructure_failures += 1
            item.not_before = now + retry_backoff(item.infrastructure_failures)
            give_up = False
        if give_up or item.attempts > self.max_retries:
            self._move(item, ItemState.FAILED)
            return Transition(TransitionKind.GAVE_UP, item, description, kind_of_failure=kind)
        self._move(item, ItemState.PENDING)
        return Transition(TransitionKind.RETRY, item, description, kind_of_failure=kind)

    def _blame(self, agent_id: str, item_key: str, now: float) -> str | None:
        """Count an infrastructure failure against ``agent_id``; return it when this makes
        :data:`BLAME_STREAK` different items in a row there (it is then avoided job-wide)."""
        streak = self._streaks.setdefault(agent_id, [])
        if item_key not in streak:
            streak.append(item_key)
        if len(streak) < BLAME_STREAK:
            return None
        self._streaks.pop(agent_id)
        self.blamed_until[agent_id] = now + BLAME_SECONDS
        return agent_id

    def avoided_agents(self, now: float) -> frozenset[str]:
        """The agents the whole job avoids at ``now`` (blamed for failing item after item)."""
        return frozenset(agent for agent, until in self.blamed_until.items() if until > now)

    def reject_result(self, item: WorkItem, description: str, now: float = 0.0) -> Transition:
        """A finished attempt's result was unusable (corrupt data): it counts as a failed attempt
        (an infrastructure failure)."""
        self._move(item, ItemState.RUNNING)
        return self.attempt_failed(item, description, INFRASTRUCTURE, now)

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
