"""What a running job shows of itself: the progress display's events and the live status's view.

:class:`JobWatch` sits between the scheduler and :class:`~framework.progress.JobProgress`. It is
told every offer round's decision (``EnsembleScheduler.on_round``): the one source of waiting
reasons (``progress.waiting_reason``), backup copies and cost. The job's main thread calls
:meth:`JobWatch.tick` twice a second: it turns what changed in the tracker (new failed attempts:
retries) and the queued round events into display events, off the scheduler's lock. It also
builds the live status's :class:`~framework.live_status.StatusView`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping

from framework.live_status import StatusView
from framework.packing import Resources
from framework.progress import JobProgress, waiting_reason
from framework.rounds import RoundDecision
from framework.tasks import ItemState

log = logging.getLogger(__name__)


class JobWatch:
    """Follows one run of a job for its display and its live status."""

    def __init__(self, progress: JobProgress, job: str, task_resources: Mapping[str, Resources],
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.progress, self.job, self.task_resources = progress, job, task_resources
        self.wall_clock = wall_clock
        self.started_at = wall_clock()
        self.state = "starting"
        self.master: str | None = None
        self.scheduler: Any = None
        self.cost = 0.0
        self.lower_bound = 0.0
        self.decision: RoundDecision | None = None
        self._backups: list[tuple[str, str, str]] = []
        self._failures_seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def attach(self, scheduler: Any, master: str) -> None:
        """Watch ``scheduler`` (an ``EnsembleScheduler``): its rounds are reported to us."""
        self.scheduler, self.master = scheduler, master
        scheduler.on_round = self.round_decided

    # Called by the scheduler's decision worker, under the scheduler's lock: quick, never raises.
    def round_decided(self, decision: RoundDecision) -> None:
        try:
            with self._lock:
                self.decision = decision
                if decision.launches and decision.plan is not None:
                    self.cost += decision.plan.cost
                    self.lower_bound += decision.plan.lower_bound
                for launch in decision.launches:
                    self._backups += [(t.model, t.item_key, launch.agent.hostname) for t in launch.tasks if t.backup]
        except Exception:  # a display must never stop a round
            log.debug("watching a round failed", exc_info=True)

    # Called by the job's main thread.
    def tick(self) -> None:
        """Report what happened since the last tick: retries (new failed attempts in the tracker),
        backups, and why tasks wait now."""
        scheduler = self.scheduler
        retries: list[tuple[str, str, str]] = []
        pending = 0
        subscribed = False
        if scheduler is not None:
            with scheduler.lock:
                subscribed = scheduler.framework_id is not None and self.state == "starting"
                if subscribed:
                    self.state = "running"
                pending = len(scheduler.tracker.pending())
                for item in scheduler.tracker.items.values():
                    seen = self._failures_seen.get(item.key, 0)
                    if len(item.failures) > seen:
                        self._failures_seen[item.key] = len(item.failures)
                        if item.state is not ItemState.FAILED:  # gave up: the job reports the member
                            retries.append((item.model, item.key, item.failures[-1]))
        if subscribed:
            self.progress.release()  # held by the job until the master accepted the framework
        with self._lock:
            backups, self._backups = self._backups, []
            decision = self.decision
        for model, key, reason in retries:
            self.progress.retry(model, key, reason)
        for model, key, agent in backups:
            self.progress.backup(model, key, agent)
        self.progress.waiting(waiting_reason(decision, pending, self.task_resources))
        self.progress.tick()

    def view(self) -> StatusView:
        """The job as the live status shows it now."""
        scheduler = self.scheduler
        counts: dict[str, int] = {}
        agents: set[str] = set()
        executors = 0
        framework_id = None
        if scheduler is not None:
            with scheduler.lock:
                counts = scheduler.tracker.counts()
                hostnames = scheduler.hostnames
                for item in scheduler.tracker.items.values():
                    for agent in (item.agent_id, item.backup_agent_id):
                        if agent:
                            agents.add(hostnames.get(agent, agent))
                executors = len(scheduler.executors)
                framework_id = scheduler.framework_id
        progress = self.progress.to_json()
        with self._lock:
            cost, lower_bound = self.cost, self.lower_bound
        return StatusView(
            job=self.job, state=self.state, master=self.master, framework_id=framework_id,
            started_at=self.started_at, now=self.wall_clock(), progress=progress["job"], models=progress["models"],
            tasks_by_state=counts, agents_used=sorted(agents), executors=executors, cost=cost,
            lower_bound=lower_bound, waiting=progress["waiting"], events=progress["events"])
