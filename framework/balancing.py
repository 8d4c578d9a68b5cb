"""Load balancing from measured state: what each model's tasks really cost, and what follows.

Executors measure every task (wall and CPU seconds, see ``executor.protocol.TaskUsage``); the
scheduler records them here and uses them to

* order pending work: one *probe* task of every model not yet measured goes first (so its cost
  is learnt early), then the longest tasks first (LPT), so that the short ones fill the gaps at
  the end instead of one long task running alone while the rest of the cluster idles; when
  offers are scarce, the packer is given the first tasks in that order that fit them;
* fill in a model's task ``duration`` for the cost model when the job file gives none;
* find stragglers: tasks running far longer than their model's measured mean (a slow or
  overloaded agent), for which the scheduler launches a backup copy on another agent the job
  already uses; the first copy to finish wins and the other is killed.
* size the work: the base shard of ``rows_per_shard = "auto"`` (:func:`auto_rows_per_shard`),
  and how many small items of a measured model travel in one Mesos task (:func:`bundle_sizes`),
  so that per-task overhead is paid once per second of compute rather than once per item.

Pure: no Mesos, no clock.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol, TypeVar

from framework.packing import Resources, TaskDemand


class Measured(Protocol):
    """A work item as measured (a ``WorkItem`` or its ``ItemView``)."""

    @property
    def model(self) -> str: ...

    @property
    def operation(self) -> str: ...


class Attempted(Measured, Protocol):
    """A work item with its running attempts."""

    @property
    def task_id(self) -> str | None: ...

    @property
    def backup_task_id(self) -> str | None: ...


M = TypeVar("M", bound=Measured)
A = TypeVar("A", bound=Attempted)


def usage_key(item: Measured) -> str:
    """What an item's cost is measured under: its model, and the operation when it is not a plain
    prediction (a stacking fold fits as well as predicts, so it is measured apart)."""
    return item.model if item.operation == "predict" else f"{item.model} ({item.operation})"


@dataclass
class ModelUsage:
    """The measured tasks of one model."""

    tasks: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    max_seconds: float = 0.0
    agents: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def mean_seconds(self) -> float:
        return self.seconds / self.tasks if self.tasks else 0.0


class Measurements:
    """Per-model usage of finished tasks."""

    def __init__(self) -> None:
        self.models: dict[str, ModelUsage] = {}
        self.expected: dict[str, float] = {}
        """Per model: seconds per task an earlier run measured (``framework.kept_costs``), used
        for the order and bundle sizes until this run's own first task of it reports."""

    def expect(self, model: str, seconds: float) -> None:
        """What ``model``'s tasks are expected to take before any is measured here."""
        self.expected[model] = seconds

    def record(self, model: str, agent: str, seconds: float, cpu_seconds: float) -> None:
        usage = self.models.setdefault(model, ModelUsage())
        usage.tasks += 1
        usage.seconds += seconds
        usage.cpu_seconds += cpu_seconds
        usage.max_seconds = max(usage.max_seconds, seconds)
        usage.agents[agent] += 1

    def copy(self) -> "Measurements":
        """A copy that later records do not change (an offer round's snapshot)."""
        return copy.deepcopy(self)

    def mean_seconds(self, model: str) -> float | None:
        """The model's measured mean, else what an earlier run measured (:meth:`expect`) scaled by
        how this run's measured models compare with their own earlier figures (:meth:`pace`), else
        None."""
        measured = self.measured_mean(model)
        if measured is not None:
            return measured
        expected = self.expected.get(model)
        return None if expected is None else expected * self.pace()

    def pace(self) -> float:
        """This run's measured means over the earlier run's figures, averaged over the models that
        have both (1 before any): an earlier run on a busier or quieter machine would otherwise
        order a fresh measure against a stale figure (issue 13: k-neighbours, measured here,
        went after histogram boosting, whose figure came from a run under twice the load)."""
        ratios = [self.models[name].mean_seconds / seconds for name, seconds in self.expected.items()
                  if seconds > 0 and name in self.models and self.models[name].tasks]
        return sum(ratios) / len(ratios) if ratios else 1.0

    def measured_mean(self, model: str) -> float | None:
        """The mean of the model's tasks measured in this run (None before the first)."""
        usage = self.models.get(model)
        return usage.mean_seconds if usage and usage.tasks else None

    def launch_order(self, pending: Iterable[M], probing: Iterable[str] = ()) -> list[M]:
        """``pending`` in the order to launch: for every model neither measured (nor expected,
        see :meth:`expect`) nor being probed (``probing``: the ``usage_key`` of every running
        item), its first item; then the items of measured models, longest mean first; then the
        rest of the unmeasured models' items.
        Ties keep the given order."""
        probing = set(probing)
        seen: dict[str, int] = defaultdict(int)
        means: dict[str, float | None] = {}  # looked up once per kind (a round orders every pending item)
        keyed = []
        for position, item in enumerate(pending):
            kind = usage_key(item)
            if kind in means:
                mean = means[kind]
            else:
                mean = means[kind] = self.mean_seconds(kind)
            if mean is not None:
                key: tuple[Any, ...] = (1, -mean, position)
            elif kind not in probing and seen[kind] == 0:
                key = (0, 0.0, position)
            else:
                key = (2, 0.0, position)
            seen[kind] += 1
            keyed.append((key, item))
        keyed.sort(key=lambda pair: pair[0])
        return [item for _key, item in keyed]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per model: tasks measured, mean/max/total seconds, CPU seconds, tasks per agent."""
        return {
            model: {"tasks": u.tasks, "mean_seconds": round(u.mean_seconds, 4), "max_seconds": round(u.max_seconds, 4),
                    "total_seconds": round(u.seconds, 4), "cpu_seconds": round(u.cpu_seconds, 4),
                    "agents": dict(sorted(u.agents.items()))}
            for model, u in sorted(self.models.items())
        }


@dataclass(frozen=True)
class SpeculationPolicy:
    """A task is a straggler once it has run ``factor`` x its model's mean + ``margin_seconds``
    (the margin keeps jitter on short tasks from doubling them); ``factor`` 0 turns it off."""

    factor: float = 2.0
    margin_seconds: float = 1.0


AUTO_SHARDS_PER_CORE = 8
"""``rows_per_shard = "auto"``: this many shards per core of the job (fine enough that probes,
bundles and the longest-first order can balance the cores) ..."""
AUTO_MIN_SHARD_ROWS = 1000
"""... but at least this many rows (a shard's download, checksum and result stay cheap) ..."""
AUTO_MAX_SHARD_BYTES = 16 * 2**20
AUTO_MAX_SHARD_ROWS = 100_000
"""... and at most this many rows and bytes (a task's working memory stays small): 8 per feature
and row, and a text column's UTF-8 bytes and offset (a member's own memory on text, a
vectorizer's sparse matrix, can be several times its text)."""


def auto_rows_per_shard(rows: int, features: int, cores: float, text_bytes: float = 0.0) -> int:
    """The base shard size of ``rows_per_shard = "auto"`` for data of ``rows`` x ``features``
    (float64) and ``text_bytes`` per row of text (the text columns' mean UTF-8 bytes and offsets)
    on ``cores`` cores.  Small tasks are not a cost: several travel as one Mesos task (see
    :func:`bundle_sizes`)."""
    shards = max(1, math.ceil(max(cores, 1.0) * AUTO_SHARDS_PER_CORE))
    row_bytes = max(8, math.ceil(8 * features + text_bytes))
    largest = max(1, min(AUTO_MAX_SHARD_ROWS, AUTO_MAX_SHARD_BYTES // row_bytes))
    return max(1, min(max(math.ceil(rows / shards), AUTO_MIN_SHARD_ROWS), largest, max(rows, 1)))


TARGET_BUNDLE_SECONDS = 1.0
"""A bundle (several pending items of one model in one Mesos task) computes for about this long ..."""
BUNDLES_PER_CORE = 2
"""... or less, so that the work left makes at least this many bundles per core of the job ..."""
MAX_BUNDLE_ITEMS = 256
"""... and it carries at most this many items (its TaskInfo and status update stay small)."""
MIN_BUNDLE_SECONDS = 0.1
"""... but never less than this (unless its model has less work pending): each Mesos task costs
a round trip during which its slot idles (TASK_FINISHED through agent and master, REVIVE, offer
round, ACCEPT, launch: 20-60 ms on the embedded cluster, more on a real one), so bundles of a
few ms at the end of a job cost several times their compute (issue 13's profile: the last 0.25 s
of work took 1 s in bundles of 1-9 items)."""


def bundle_sizes(pending: Iterable[Measured], measured: "Measurements", cores: float,
                 target_seconds: float | None = None) -> dict[str, int]:
    """Per ``usage_key`` of the pending items: how many of its items travel in one Mesos task.
    An unmeasured model's items (its probe first) and stacking folds go alone; a measured model's
    items are grouped to compute for about ``target_seconds``, less when the measured work left
    would otherwise make fewer than :data:`BUNDLES_PER_CORE` bundles per core, but never less than
    :data:`MIN_BUNDLE_SECONDS`."""
    counts: dict[str, int] = defaultdict(int)
    operations: dict[str, str] = {}
    for item in pending:
        kind = usage_key(item)
        counts[kind] += 1
        operations[kind] = item.operation
    means = {kind: measured.mean_seconds(kind) for kind in counts}
    work = sum((means[kind] or 0.0) * n for kind, n in counts.items())
    target = min(TARGET_BUNDLE_SECONDS if target_seconds is None else target_seconds,
                 max(MIN_BUNDLE_SECONDS, work / (max(cores, 1.0) * BUNDLES_PER_CORE)))
    sizes = {}
    for kind, n in counts.items():
        mean = means[kind]
        if mean is None or operations[kind] != "predict":
            sizes[kind] = 1
        else:
            sizes[kind] = max(1, min(n, MAX_BUNDLE_ITEMS, int(target / max(mean, 1e-6))))
    return sizes


def stragglers(running: Iterable[A], elapsed: Mapping[str, float], measured: Measurements,
               policy: SpeculationPolicy) -> list[A]:
    """Running items without a backup whose attempt (``elapsed`` seconds, by task id) is well past
    its model's measured mean; the longest overdue first."""
    if policy.factor <= 0:
        return []
    found = []
    for item in running:
        # (this run's own measure: an earlier run's figure may be from a quieter machine)
        mean, task_id = measured.measured_mean(usage_key(item)), item.task_id
        if item.backup_task_id or mean is None or task_id is None or task_id not in elapsed:
            continue
        # A bundled item may wait for the items before it in its bundle.
        if elapsed[task_id] > policy.factor * mean * getattr(item, "bundle_size", 1) + policy.margin_seconds:
            found.append(item)
    return sorted(found, key=lambda i: -elapsed[i.task_id or ""])


def first_that_fit(demands: Iterable[TaskDemand], capacity: Resources,
                   patience: int = 64) -> tuple[list[TaskDemand], bool]:
    """The demands, in the given (priority) order, that fit together in ``capacity`` (the
    offers' total): what the packer is asked to place, so that when offers are scarce the
    first in the launch order get them.  A demand that does not fit is skipped, not a stop;
    after ``patience`` misses in a row the rest are not looked at (``demands`` may be lazy).
    Also says whether every demand was looked at and taken."""
    chosen: list[TaskDemand] = []
    left, misses, all_taken = capacity, 0, True
    for demand in demands:
        if demand.resources.fits_in(left):
            chosen.append(demand)
            left, misses = left - demand.resources, 0
            continue
        all_taken, misses = False, misses + 1
        if misses >= patience:
            break
    return chosen, all_taken


def format_usage(summary: dict[str, dict[str, Any]]) -> str:
    """The summary as a few lines for the command line."""
    lines = [f"{'member':<16}{'tasks':>6}{'mean s':>9}{'max s':>9}{'cpu s':>9}  agents"]
    for model, row in summary.items():
        agents = ", ".join(f"{a} x{n}" for a, n in row["agents"].items())
        lines.append(f"{model:<16}{row['tasks']:>6}{row['mean_seconds']:>9.3f}{row['max_seconds']:>9.3f}"
                     f"{row['cpu_seconds']:>9.2f}  {agents}")
    return "\n".join(lines)
