"""The pymesos ``Scheduler``: a thin adapter between Mesos callbacks and the pure offer round.

Every callback runs on pymesos' single IO thread, so each one is short, holds the lock only
around in-memory state, and never raises (an exception there kills the driver and, without
failover, tears the framework down).  ``resourceOffers`` only queues the offers: a decision
worker thread takes a :class:`~framework.rounds.RoundSnapshot` under the lock, runs
:func:`~framework.rounds.decide` without it (packing may take the whole packing budget), and
applies the decision.  Meanwhile status updates, rescinds and heartbeats are handled on the IO
thread; offers that arrive while a round runs are batched into the next one.  Results are handed
to the job's main thread through ``events``.

Races, and how a decision is applied anyway: an offer rescinded before or while its round is
decided is never accepted (the agent's other offers are declined); a task whose item changed
meanwhile (finished, cancelled, retried, or its executor lost) is not launched; an item cancelled
between its launch being recorded and sent is killed again after the ACCEPT.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import queue
import secrets
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Callable, Protocol, Sequence

import pymesos  # imported at module load, on the main thread: it installs a SIGINT handler

from framework import translator
from framework.balancing import Measurements, SpeculationPolicy, usage_key
from framework.packing import Agent, CostModel, PackingOptions, Plan, PriceTable, Resources, TaskDemand
from executor.protocol import ResultEnvelope, TaskFailure
from framework.rounds import (AVOID_FAILED_AGENTS_SECONDS, AgentLaunch, Decline, OfferPolicy, RoundDecision,
                              RoundSnapshot, TaskLaunch, decide, describe_unfit, timed_out, wants_backup_offers)
from framework.tasks import (ACTIVE_ITEM_STATES, BLAME_SECONDS, MEMBER_ERROR, TERMINAL_MESOS_STATES, ItemState,
                             Tracker, Transition, TransitionKind, WorkItem)
from framework.translator import Message, OfferView, PoolAllocator

log = logging.getLogger(__name__)

__all__ = ["AVOID_FAILED_AGENTS_SECONDS", "EnsembleScheduler", "EventKind", "OfferPolicy", "SchedulerEvent",
           "WorkCatalog"]


class WorkCatalog(Protocol):
    """What the scheduler needs to know about the job's work items (implemented by the job)."""

    def demand(self, item: WorkItem) -> TaskDemand: ...

    def task_info(self, item: WorkItem, task_id: str, agent: Agent, allocator: PoolAllocator,
                  executor: Message) -> Message: ...

    def bundle_info(self, items: list[tuple[WorkItem, str]], task_id: str, agent: Agent, allocator: PoolAllocator,
                    executor: Message) -> Message:
        """One TaskInfo (Mesos task ``task_id``) carrying several items (each with its task id)."""
        ...

    def executor_info(self, key: str, agent: Agent, allocator: PoolAllocator, generation: int) -> Message: ...

    def executor_key(self, model: str) -> str:
        """The executor that runs ``model``'s tasks on an agent (one per model, or one shared)."""
        ...

    def executor_models(self, key: str) -> frozenset[str]: ...

    def isolate(self, model: str) -> None:
        """An executor died running ``model``: give it executors of its own from now on."""
        ...

    agent_reserve: Resources
    """Kept free on agents without an executor of ours yet (a shared executor's resources)."""


class EventKind(StrEnum):
    FINISHED = "finished"
    GAVE_UP = "gave_up"
    FATAL = "fatal"
    UNPLACEABLE = "unplaceable"
    """A model's task fits on no agent (``detail`` says why): the job fails."""
    WAITING = "waiting"
    """Tasks wait for offers that fit them (``detail`` says why): a progress line."""


@dataclass(frozen=True)
class SchedulerEvent:
    """Something the main thread must act on."""

    kind: EventKind
    item: WorkItem | None = None
    data: str | ResultEnvelope | None = None
    """FINISHED: the result envelope, base64 as the update carried it or decoded (a bundled item's)."""
    detail: str = ""
    status: Any = None
    """FINISHED: the Mesos status update, acknowledged (``acknowledge``) once its result is durable."""


Decide = Callable[[RoundSnapshot, Sequence[OfferView], float], RoundDecision]


def describe_driver_abort(error: BaseException) -> str:
    """One line for the exception that stopped pymesos' IO thread (it raises ``RuntimeError('Failed
    with HTTP 401: ...')`` when the master refuses the framework's credentials)."""
    text = " ".join(str(error).split())
    if text.startswith("Failed with HTTP 401"):
        return ("the Mesos master refused the framework's credentials (HTTP 401): check [framework] principal "
                "and secret_file (or secret_env)")
    if text.startswith("Failed with HTTP 403"):
        return "the Mesos master forbids this framework (HTTP 403): check [framework] principal and role"
    if text.startswith("Failed with HTTP"):
        return f"the Mesos master refused the framework: {text[len('Failed with '):][:300]}"
    return f"the connection to the Mesos master failed: {type(error).__name__}: {text[:300]}"


DRIVER_ABORTED = threading.Event()
"""Set when pymesos' IO thread died.  pymesos then calls ``_thread.interrupt_main()``, which
reaches the SIGINT handler as if the user had pressed Ctrl-C: the handler checks this first
(the FATAL event already queued says what happened)."""


class DriverAbortWatch(logging.Filter):
    """Turns pymesos' "Thread abort:" log record (its IO thread died; the record carries a
    40-line traceback) into one FATAL event, and keeps the traceback out of the log."""

    def __init__(self, events: "queue.Queue[SchedulerEvent]") -> None:
        super().__init__()
        self.events = events

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() != "Thread abort:" or not record.exc_info or record.exc_info[1] is None:
            return True
        self.events.put(SchedulerEvent(EventKind.FATAL, detail=describe_driver_abort(record.exc_info[1])))
        DRIVER_ABORTED.set()
        log.debug("pymesos' IO thread stopped", exc_info=record.exc_info)
        return False


def callback(method: Callable[..., None]) -> Callable[..., None]:
    """Wrap a pymesos callback so that it can never raise into the driver."""

    def guarded(self: "EnsembleScheduler", *args: Any) -> None:
        try:
            method(self, *args)
        except Exception as error:  # the driver must survive our bugs; the job fails instead
            self._fatal(method.__name__, error)

    guarded.__name__ = method.__name__
    guarded.__doc__ = method.__doc__
    return guarded


class EnsembleScheduler(pymesos.Scheduler):
    """The framework's pymesos ``Scheduler``: offers in, launches and declines out.

    ``rounds_in_callback``: decide each round inside ``resourceOffers`` (on the IO thread), as
    before the decision worker existed; for step-by-step tests and the IO-thread benchmark's
    baseline.  ``decide`` and ``clock`` are the round function and the monotonic clock.
    """

    def __init__(
        self,
        tracker: Tracker,
        catalog: WorkCatalog,
        prices: PriceTable,
        cost_model: CostModel,
        packing: PackingOptions,
        policy: OfferPolicy,
        speculation: SpeculationPolicy | None = None,
        *,
        rounds_in_callback: bool = False,
        decide: Decide = decide,
        clock: Callable[[], float] = time.monotonic,
        timeouts: dict[str, float] | None = None,
        placement_timeout: float = 60.0,
    ) -> None:
        self.tracker, self.catalog = tracker, catalog
        self.prices, self.cost_model, self.packing, self.policy = prices, cost_model, packing, policy
        self.speculation = speculation or SpeculationPolicy()
        self.rounds_in_callback, self.decide, self.clock = rounds_in_callback, decide, clock
        self.events: queue.Queue[SchedulerEvent] = queue.Queue()
        self.lock = threading.RLock()
        self.framework_id: str | None = None
        self.suppressed = False
        self.executors: dict[tuple[str, str], int] = {}
        """Our running executors: (agent id, executor key) -> generation."""
        self.executor_generation: dict[tuple[str, str], int] = defaultdict(int)
        self._executor_infos: dict[tuple[str, str, int], Message] = {}  # the decision worker's own
        self.executors_launched = 0
        self.mesos_tasks_launched = 0
        """Mesos tasks launched (a bundle of several items' attempts counts once)."""
        self.measurements = Measurements()
        self.started_at: dict[str, float] = {}   # task id -> launch, then TASK_RUNNING, time
        self.backups_launched = 0
        self.reserve_warned: set[str] = set()
        self._last_speculation_revive = float("-inf")
        self.known_agents: set[str] = set()
        self.hostnames: dict[str, str] = {}
        self.last_plan: Plan | None = None
        self.last_decision: RoundDecision | None = None
        self.on_round: Callable[[RoundDecision], None] | None = None
        """Told every round's decision as it is applied (under the lock; it must be quick): the
        job's progress display and live status read waiting reasons, backups and cost from it."""
        self.first_running_at: float | None = None
        self.retried_at: dict[str, float] = {}
        self.agent_cpus: dict[str, float] = {}
        """Per agent, the most cpus it offered (its size, as far as known): the job's cores."""
        self._run_token = secrets.token_hex(3)  # makes bundles' Mesos task ids unique across runs
        self._snapshots = itertools.count()
        self.stopping = False
        # The decision worker's inbox: offers waiting for a round (batched), and the ids of every
        # offer received but not yet accepted or declined, and of those rescinded meanwhile.
        self._inbox: list[tuple[Any, list[Any]]] = []
        self._inbox_ready = threading.Condition(threading.Lock())
        self._unsettled: set[str] = set()
        self._rescinded: set[str] = set()
        self._worker: threading.Thread | None = None
        self._busy = False
        self._closed = False
        self.rounds = 0
        # Failure handling (see ``_on_failure``, ``check_timeouts``, ``_track_placement``).
        self.timeouts: dict[str, float] = dict(timeouts or {})
        """Per model, the seconds one task may compute before it is killed and retried."""
        self.placement_timeout = placement_timeout
        self._timing_out: dict[str, float] = {}  # task id -> its timeout, killed for running past it
        self.unfit: dict[str, dict[str, Any]] = {}  # model -> agent -> the packer's reasons
        self.unfit_since: dict[str, float] = {}
        self._waiting_said: dict[str, str] = {}
        self.disconnected_since: float | None = None
        """Since when the master has been unreachable (once subscribed); None while connected."""
        self._abort_watch = DriverAbortWatch(self.events)
        DRIVER_ABORTED.clear()
        logging.getLogger("pymesos.process").addFilter(self._abort_watch)
        self.journal: Any = None
        """The job's :class:`~framework.journal.Journal`, if it keeps one: launches are recorded
        before they are sent, updates as they arrive, the framework id when registered."""

    # --- framework life -------------------------------------------------------------------
    @callback
    def registered(self, driver: Any, framework_id: Any, master_info: Any) -> None:
        with self.lock:
            self.framework_id = translator.read_id(framework_id)
        self._master_back()
        log.info("registered as framework %s with master %s", self.framework_id, translator.read_master(master_info))
        self._journal_framework_id()
        self._revive_if_needed(driver)

    @callback
    def reregistered(self, driver: Any, master_info: Any) -> None:
        log.info("re-registered with the master; reconciling active tasks")
        self._master_back()
        self._resubscribed(driver)
        with self.lock:
            active = [t for i in self.tracker.active() for t in i.running_task_ids()]
            active = self.tracker.mesos_tasks(active)
        driver.reconcileTasks(translator.reconcile_tasks(active))
        self._revive_if_needed(driver)

    @callback
    def disconnected(self, driver: Any) -> None:
        if self.stopping:
            log.debug("disconnected from the master while stopping")
        elif self.framework_id is None:  # never subscribed (refused, say): the job says why
            log.info("the connection to the master closed before the framework was subscribed")
        else:
            log.warning("disconnected from the master; pymesos reconnects")
            with self.lock:
                if self.framework_id is not None and self.disconnected_since is None:
                    self.disconnected_since = self.clock()

    @callback
    def error(self, driver: Any, message: str) -> None:
        self.events.put(SchedulerEvent(EventKind.FATAL, detail=f"Mesos error: {message}"))

    # --- offers ---------------------------------------------------------------------------
    @callback
    def resourceOffers(self, driver: Any, offers: list[Any]) -> None:  # noqa: N802 (pymesos name)
        """Hand the offers to the decision worker (or, ``rounds_in_callback``, decide here)."""
        with self.lock:
            self._unsettled.update(translator.read_id(offer["id"]) for offer in offers)
        if self.rounds_in_callback:
            self._round(driver, offers)
            return
        with self._inbox_ready:
            if self._closed:
                return
            self._inbox.append((driver, offers))
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="offer-rounds", daemon=True)
                self._worker.start()
            self._inbox_ready.notify()

    @callback
    def offerRescinded(self, driver: Any, offer_id: Any) -> None:  # noqa: N802
        offer = translator.read_id(offer_id)
        with self.lock:
            if offer in self._unsettled:
                self._rescinded.add(offer)
        log.info("offer %s rescinded (never accepted once rescinded)", offer)

    def close(self) -> None:
        """Stop the decision worker (after the round it is deciding, if any); later offers are dropped."""
        logging.getLogger("pymesos.process").removeFilter(self._abort_watch)
        with self._inbox_ready:
            self._closed = True
            self._inbox.clear()
            self._inbox_ready.notify()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join()
            gc.unfreeze()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no offers wait for a round and no round runs (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._inbox_ready:
            while self._inbox or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._inbox_ready.wait(left)
        return True

    def _work(self) -> None:
        """The decision worker: one round per batch of queued offers, until closed."""
        while True:
            with self._inbox_ready:
                while not self._inbox and not self._closed:
                    self._inbox_ready.wait()
                if self._closed:
                    self._busy = False
                    self._inbox_ready.notify_all()
                    return
                batch, self._inbox = self._inbox, []
                self._busy = True
            driver, offers = batch[-1][0], [offer for _driver, offers in batch for offer in offers]
            # What exists now outlives the round (items, offers, the job's models): out of the
            # collector's reach, a round's collections scan only what the round allocates, and no
            # full collection of the whole heap stops the IO thread mid-round.  ``close`` undoes it.
            gc.freeze()
            try:
                self._round(driver, offers)
            except Exception as error:  # the worker must survive our bugs too; the job fails instead
                self._fatal("resourceOffers", error)
            finally:
                with self._inbox_ready:
                    self._busy = False
                    self._inbox_ready.notify_all()

    def _round(self, driver: Any, offers: list[Any]) -> None:
        """One offer round: snapshot under the lock, decide without it, apply."""
        views = [translator.read_offer(offer, self.policy.role) for offer in offers]
        with self.lock:
            if self.stopping:
                return
            for agent_id, cpus in translator.offered_cpus(views).items():
                self.agent_cpus[agent_id] = max(cpus, self.agent_cpus.get(agent_id, 0.0))
            gone = [v for v in views if v.offer_id in self._rescinded]
            views = [v for v in views if v.offer_id not in self._rescinded]
            self._settle(v.offer_id for v in gone)
            snapshot = self.snapshot()
            now = self.clock()
        decision = self.decide(snapshot, views, now)
        self._apply(driver, views, decision)

    # --- snapshot and apply ---------------------------------------------------------------
    def snapshot(self) -> RoundSnapshot:
        """What an offer round reads, as values (call with the lock held)."""
        pending_items, active_items = self.tracker.pending(), self.tracker.active()
        firsts: dict[str, WorkItem] = {}
        for item in itertools.chain(pending_items, active_items):
            firsts.setdefault(item.model, item)
        executor_keys = {model: self.catalog.executor_key(model) for model in firsts}
        keys = set(executor_keys.values()) | {key for _agent, key in self.executors}
        return RoundSnapshot(
            pending=self.tracker.pending_views(),
            active=self.tracker.active_views(),
            demands={model: self.catalog.demand(item) for model, item in firsts.items()},
            executor_keys=executor_keys,
            executor_models={key: self.catalog.executor_models(key) for key in keys},
            agent_reserve=self.catalog.agent_reserve,
            executors=frozenset(self.executors),
            executor_generation=dict(self.executor_generation),
            measurements=self.measurements.copy(),
            started_at=dict(self.started_at),
            known_agents=frozenset(self.known_agents),
            retried_at=dict(self.retried_at),
            avoided_agents=self.tracker.avoided_agents(self.clock()),
            unfit_agents={model: frozenset(agents) for model, agents in self.unfit.items()},
            max_retries=self.tracker.max_retries,
            suppressed=self.suppressed,
            reserve_warned=frozenset(self.reserve_warned),
            prices=self.prices, cost_model=self.cost_model, packing=self.packing, policy=self.policy,
            speculation=self.speculation,
            cores=sum(self.agent_cpus.values()),
            bundle_prefix=f"{self._run_token}r{next(self._snapshots)}",
        )

    def _apply(self, driver: Any, views: list[OfferView], decision: RoundDecision) -> None:
        """Carry out a decision: record the launches still valid under the lock, then build and send
        the messages without it (one ACCEPT per agent, DECLINEs), then SUPPRESS if still idle."""
        for line in decision.log:
            log.log(line.level, "%s", line.message)
        accepts: list[tuple[AgentLaunch, list[tuple[TaskLaunch, WorkItem, int]], list[tuple[str, int]]]] = []
        declines: list[Decline] = []
        with self.lock:
            self.rounds += 1
            self.last_decision, self.last_plan = decision, decision.plan
            if self.on_round is not None:
                self.on_round(decision)
            self.known_agents.update(decision.agents_seen)
            self.hostnames.update(decision.agents_seen)
            self.reserve_warned |= decision.warned_agents
            self._track_placement(decision)
            for decline in decision.declines:
                kept = tuple(o for o in decline.offer_ids if o not in self._rescinded)
                if kept:
                    declines.append(Decline(kept, decline.refuse_seconds, decline.reason, decline.agent_id))
        # One agent at a time under the lock: updates are handled between agents.
        for launch in decision.launches:
            agent_id = launch.agent.agent_id
            with self.lock:
                if self.stopping:
                    return
                valid, starts = self._still_valid(launch)
                if not valid:
                    kept = tuple(o for o in launch.offer_ids if o not in self._rescinded)
                    if kept:
                        declines.append(Decline(kept, self.policy.refuse_seconds, "unneeded", agent_id))
                    continue
                carried: dict[str, int] = defaultdict(int)
                for task, _item, _generation in valid:
                    if task.carrier:
                        carried[task.carrier] += 1
                for task, item, _generation in valid:
                    task_id = self.tracker.launched(item, agent_id, task.carrier, carried.get(task.carrier or "", 1))
                    assert task_id == task.task_id, (task_id, task.task_id)
                for key, generation in starts:
                    self.executors[(agent_id, key)] = generation
                self.executors_launched += len(starts)
                self.backups_launched += sum(1 for task, _item, _generation in valid if task.backup)
                accepts.append((launch, valid, starts))
        with self.lock:
            self._settle(v.offer_id for v in views)
        by_agent: dict[str, list[OfferView]] = defaultdict(list)
        for view in views:
            by_agent[view.agent_id].append(view)
        launched: list[tuple[str, WorkItem]] = []
        self._journal_launches((item.key, task.task_id, launch.agent.agent_id)
                               for launch, valid, _starts in accepts for task, item, _generation in valid)
        for launch, valid, starts in accepts:
            agent = launch.agent
            allocator = PoolAllocator(by_agent[agent.agent_id], self.policy.role)
            for key, generation in starts:
                self._executor_infos[(agent.agent_id, key, generation)] = self.catalog.executor_info(
                    key, agent, allocator, generation)
            # In plan order; a bundle's TaskInfo carries all of its items (they are consecutive).
            groups: dict[str, tuple[list[tuple[WorkItem, str]], Message]] = {}
            for task, item, generation in valid:
                executor = self._executor_infos[(agent.agent_id, task.executor_key, generation)]
                launched.append((task.task_id, item))
                carrier = task.carrier or task.task_id
                groups.setdefault(carrier, ([], executor))[0].append((item, task.task_id))
            tasks = [self.catalog.task_info(members[0][0], members[0][1], agent, allocator, executor)
                     if members[0][1] == carrier
                     else self.catalog.bundle_info(members, carrier, agent, allocator, executor)
                     for carrier, (members, executor) in groups.items()]
            self.mesos_tasks_launched += len(tasks)
            driver.launchTasks(translator.offer_ids(launch.offer_ids), tasks,
                               translator.filters(self.policy.refuse_seconds))
        for decline in declines:
            driver.declineOffer(translator.offer_ids(decline.offer_ids), translator.filters(decline.refuse_seconds))
        # Cancelled between being recorded and sent: the kill may have reached Mesos first.  (A
        # cancelled item never becomes live again, so its state is read without the lock.)
        for task_id, item in launched:
            if item.state is ItemState.CANCELLED:
                self._kill(driver, task_id)
        with self.lock:
            if decision.suppress and not self.tracker.has_pending():
                self._suppress(driver)

    def _still_valid(self, launch: AgentLaunch) -> tuple[list[tuple[TaskLaunch, WorkItem, int]], list[tuple[str, int]]]:
        """The launch's tasks whose item is as the round saw it, whose executor is as the round saw
        it (with that executor's generation), and the executors to start for them; nothing when an
        offer was rescinded."""
        agent_id = launch.agent.agent_id
        if any(o in self._rescinded for o in launch.offer_ids):
            log.info("offers of %s rescinded while the round was decided: not launched there", launch.agent.hostname)
            return [], []
        planned_starts = {start.key: start.generation for start in launch.executors}
        valid: list[tuple[TaskLaunch, WorkItem, int]] = []
        starts: list[tuple[str, int]] = []
        stale = 0
        for task in launch.tasks:
            item = self.tracker.items.get(task.item_key)
            key = task.executor_key
            executor_ok = (key not in planned_starts and (agent_id, key) in self.executors) or (
                key in planned_starts and (agent_id, key) not in self.executors
                and planned_starts[key] == self.executor_generation[(agent_id, key)])
            fresh = item is not None and item.attempts == task.attempts_before and (
                (item.state in ACTIVE_ITEM_STATES and item.backup_task_id is None) if task.backup
                else item.state is ItemState.PENDING)
            if item is None or not fresh or not executor_ok or self.catalog.executor_key(item.model) != key:
                stale += 1
                continue
            valid.append((task, item, planned_starts.get(key, self.executors.get((agent_id, key), 0))))
            if key in planned_starts and (key, planned_starts[key]) not in starts:
                starts.append((key, planned_starts[key]))
        if stale:
            log.info("%d task(s) for %s changed while the round was decided: not launched", stale,
                     launch.agent.hostname)
        return valid, starts

    def _settle(self, offer_ids: Any) -> None:
        for offer in offer_ids:
            self._unsettled.discard(offer)
            self._rescinded.discard(offer)

    # --- tasks ----------------------------------------------------------------------------
    @callback
    def statusUpdate(self, driver: Any, status: Any) -> None:  # noqa: N802
        update = translator.read_status(status)
        if self._unusable_reconciliation(update):
            return
        with self.lock:
            bundled = self.tracker.bundled_tasks(update.task_id)
        if bundled is None:
            self._on_update(driver, update, status)
            return
        # A bundle (one Mesos task carrying several items): its update is fanned out to its items,
        # each handled as if it were the item's own; the one acknowledgement goes with the last
        # result (acknowledged once every result before it is durable), or at once if none.
        # A terminal update has freed the bundle's resources at the master: REVIVE first, so that
        # the master's next offer is on its way while the items are handled here (this thread
        # takes the offer only after this callback; fanning out 70 items was 5-9 ms).
        revived = update.state in TERMINAL_MESOS_STATES and self._revive_if_needed(driver)
        parts = translator.fan_out(update, bundled)
        finished: list[SchedulerEvent] = []
        revive = False
        with self.lock:
            for part in parts:
                revive |= self._on_update(driver, part, None, finished)
            if finished:
                finished[-1] = dataclasses.replace(finished[-1], status=status)
            for event in finished:
                self.events.put(event)
        if not finished:
            self.acknowledge(driver, status)
        if revive and not revived:
            self._revive_if_needed(driver)

    def _on_update(self, driver: Any, update: translator.StatusUpdate, status: Any,
                   finished: list[SchedulerEvent] | None = None) -> bool:
        """Handle one item's update.  ``finished`` (a bundle's part): collect its FINISHED event
        there instead of queueing it, acknowledge nothing and return whether to REVIVE, rather
        than reviving (the caller does each once per bundle)."""
        running = update.state == "TASK_RUNNING"
        with self.lock:
            failure = self._failure_of(update)
            transition = self.tracker.on_update(update.task_id, update.state, update.message, update.reason,
                                                failure, self.clock())
            item = transition.item
            if update.reason == "REASON_EXECUTOR_TERMINATED" and item is not None and transition.agent_id:
                self._forget_executor(transition.agent_id, self.catalog.executor_key(item.model))
                self.catalog.isolate(item.model)
            if transition.kind is TransitionKind.STARTED and running:
                self.started_at[update.task_id] = self.clock()
            elif update.state in TERMINAL_MESOS_STATES:
                self.started_at.pop(update.task_id, None)
            if transition.kind is TransitionKind.RETRY and item is not None:
                self.retried_at[item.key] = self.clock()
            # Queued under the lock that changed the item's state, so "all settled and no events
            # queued" (checked under the same lock by the main thread) means every result is in.
            if transition.kind is TransitionKind.FINISHED:
                event = SchedulerEvent(EventKind.FINISHED, item, data=update.envelope or update.data, status=status)
                if finished is None:
                    self.events.put(event)
                else:
                    finished.append(event)
            elif transition.kind is TransitionKind.GAVE_UP:
                self.events.put(SchedulerEvent(EventKind.GAVE_UP, item, detail=transition.detail))
        if transition.kind is not TransitionKind.FINISHED:
            self._journal_update(update)
            if finished is None:
                self.acknowledge(driver, status)  # a finished result: by the main thread, once it is durable
        if transition.kind is TransitionKind.STARTED and running and self.first_running_at is None:
            self.first_running_at = self.clock()
        revive = False
        if transition.kind is TransitionKind.FINISHED:
            if transition.sibling:  # the other copy lost the race
                self._kill(driver, transition.sibling, sibling=True)
            # Its resources are free now: ask for them at once rather than at the next
            # allocation cycle (REVIVE makes the master allocate immediately).
            revive = True
        elif transition.kind is TransitionKind.DROPPED:
            log.warning("task %s: %s; its other copy runs on", update.task_id, transition.detail)
        elif transition.kind is TransitionKind.RETRY:
            self._report_failure(update.task_id, transition, "will retry")
            revive = True
        elif transition.kind is TransitionKind.GAVE_UP:
            self._report_failure(update.task_id, transition, "giving up")
        elif transition.kind is TransitionKind.IGNORED:
            log.debug(transition.detail)
        if revive and finished is None:
            self._revive_if_needed(driver)
        return revive

    def _kill(self, driver: Any, task_id: str, sibling: bool = False) -> None:
        """Kill an item's attempt: its own Mesos task, or the bundle carrying it.  A bundle is
        not killed for a ``sibling`` (the losing copy of a finished item) while it still carries
        other items that wait for it (its result for this item is then ignored)."""
        with self.lock:
            carrier = self.tracker.carrier_of(task_id)
            if carrier != task_id and sibling and self.tracker.alive_in_bundle(task_id):
                return
        driver.killTask(translator.id_message(carrier))

    @callback
    def frameworkMessage(self, driver: Any, executor_id: Any, agent_id: Any, data: str) -> None:  # noqa: N802
        log.debug("framework message from %s", translator.read_id(executor_id))

    @callback
    def slaveLost(self, driver: Any, agent_id: Any) -> None:  # noqa: N802
        agent = translator.read_id(agent_id)
        with self.lock:
            for key in [k for k in self.executors if k[0] == agent]:
                self._forget_executor(*key)
        log.warning("agent %s lost; its tasks come back as TASK_LOST", agent)

    @callback
    def executorLost(self, driver: Any, executor_id: Any, agent_id: Any, status: Any) -> None:  # noqa: N802
        executor, agent = translator.read_id(executor_id), translator.read_id(agent_id)
        with self.lock:
            for (on, key), generation in list(self.executors.items()):
                if on == agent and translator.executor_id(key, generation) == executor:
                    self._forget_executor(on, key)
        log.warning("executor %s on %s exited with status %s", executor, agent, status)

    # --- main-thread API ------------------------------------------------------------------
    def retry(self, driver: Any, item: WorkItem, description: str) -> None:
        """The main thread rejected a finished result (corrupt data): run the item again."""
        with self.lock:
            transition = self.tracker.reject_result(item, description, self.clock())
            if transition.kind is TransitionKind.GAVE_UP:
                self.events.put(SchedulerEvent(EventKind.GAVE_UP, item, detail=description))
            else:
                self.retried_at[item.key] = self.clock()
        if transition.kind is not TransitionKind.GAVE_UP:
            self._revive_if_needed(driver)

    def speculate(self, driver: Any) -> None:
        """Called periodically by the job: when nothing is pending but a task straggles, ask for
        offers (at most once per ``refuse_seconds``) so a backup copy can start elsewhere."""
        with self.lock:
            now = self.clock()
            if (self.framework_id is None or not self.suppressed or self.tracker.has_pending()
                    or now - self._last_speculation_revive < self.policy.refuse_seconds
                    or not wants_backup_offers(self.snapshot(), now)):
                return
            self._last_speculation_revive, self.suppressed = now, False
            driver.reviveOffers()

    def record_usage(self, item: WorkItem, seconds: float, cpu_seconds: float) -> None:
        """What a finished task cost (measured by its executor): steers later launches."""
        with self.lock:
            agent = self.hostnames.get(item.agent_id or "", item.agent_id or "")
            self.measurements.record(usage_key(item), agent, seconds, cpu_seconds)

    def cancel_model(self, driver: Any, model: str) -> None:
        with self.lock:
            running = self.tracker.mesos_tasks(self.tracker.cancel_model(model))
        for task_id in running:
            driver.killTask(translator.id_message(task_id))

    def add_work(self, driver: Any, items: list[WorkItem]) -> None:
        with self.lock:
            self.tracker.add(items)
        self._revive_if_needed(driver)

    # --- failures: classes, timeouts, placement, master loss --------------------------------
    def _failure_of(self, update: Any) -> TaskFailure | None:
        """What a terminal update says of its failure: the executor's :class:`TaskFailure`, or,
        for a task this scheduler killed for running past its model's timeout, an
        infrastructure failure saying so (call with the lock held)."""
        limit = self._timing_out.pop(update.task_id, None) if update.state in TERMINAL_MESOS_STATES else None
        if limit is not None and update.state == "TASK_KILLED":
            return TaskFailure("infrastructure", "Timeout", f"ran past the model's timeout of {limit:g} s")
        if update.state == "TASK_FAILED":
            return TaskFailure.from_status(update.data, update.message)
        return None

    def _report_failure(self, task_id: str, transition: Transition, outcome: str) -> None:
        """Log a failed attempt on one line, its executor-side traceback at INFO (``--verbose``),
        and an agent newly avoided by the whole job."""
        item = transition.item
        log.warning("task %s (%s): %s; %s", task_id, transition.kind_of_failure or "infrastructure",
                    transition.detail, outcome)
        if item is not None and item.traceback and transition.kind_of_failure == MEMBER_ERROR:
            log.info("task %s: the executor's traceback:\n%s", task_id, item.traceback.rstrip())
        if transition.blamed:
            log.warning("agent %s failed several tasks in a row: the job avoids it for %.0f s",
                        self.hostnames.get(transition.blamed, transition.blamed), BLAME_SECONDS)

    def check_timeouts(self, driver: Any) -> list[str]:
        """Kill every task that has computed longer than its model's ``timeout`` (its TASK_KILLED
        then counts as an infrastructure failure, retried elsewhere); return their task ids."""
        if not self.timeouts:
            return []
        with self.lock:
            overdue = [(task_id, limit) for task_id, limit in timed_out(
                self.tracker.active_views(), self.started_at, self.timeouts, self.clock())
                if task_id not in self._timing_out]
            for task_id, limit in overdue:
                self._timing_out[task_id] = limit
        for task_id, limit in overdue:
            log.warning("task %s ran past its model's timeout of %g s: killing it to retry elsewhere", task_id, limit)
            self._kill(driver, task_id)
        return [task_id for task_id, _limit in overdue]

    def _track_placement(self, decision: RoundDecision) -> None:
        """Follow, per model with pending work, the agents that cannot run its task (call with the
        lock held): once every known agent is among them, or after ``placement_timeout``, the job
        fails with the packer's reasons; meanwhile a progress line says why its tasks wait."""
        now = self.clock()
        for model in decision.fits:
            self.unfit.pop(model, None)
            self.unfit_since.pop(model, None)
            self._waiting_said.pop(model, None)
        for model, agents in decision.unfit.items():
            self.unfit.setdefault(model, {}).update(agents)
            self.unfit_since.setdefault(model, now)
        self._check_placement(now)

    def check_placement(self) -> None:
        """Called periodically by the job: fail waiting work whose time is up between rounds (an
        agent that cannot fit a task is not offered again for ``never_fits_refuse_seconds``)."""
        with self.lock:
            if self.unfit:
                self._check_placement(self.clock())

    def _check_placement(self, now: float) -> None:
        """Work that every known agent was judged unable to run (for at least ``refuse_seconds``,
        so that agents not offered yet can be), or that has waited past ``placement_timeout``,
        fails the job (an UNPLACEABLE event); else a WAITING line says why it waits."""
        pending: dict[str, int] = defaultdict(int)
        for item in self.tracker.pending():
            pending[item.model] += 1
        for model, agents in list(self.unfit.items()):
            if not pending.get(model):
                del self.unfit[model]
                self.unfit_since.pop(model, None)
                continue
            why = describe_unfit(agents.values())
            everywhere = bool(self.known_agents) and self.known_agents <= agents.keys()
            waited = now - self.unfit_since.get(model, now)
            if (everywhere and waited >= self.policy.refuse_seconds) or waited > self.placement_timeout:
                scope = (f"none of the {len(self.known_agents)} known agents" if everywhere
                         else f"no agent offered in {waited:.0f} s ([framework] placement_timeout)")
                if model not in self._waiting_said or not self._waiting_said[model].startswith("unplaceable"):
                    self.events.put(SchedulerEvent(EventKind.UNPLACEABLE, detail=(
                        f"model {model}: {pending[model]} task(s) cannot be placed: {scope} can run one ({why})")))
                self._waiting_said[model] = "unplaceable"
                continue
            line = f"{pending[model]} task(s) of model {model} wait: {why}"
            if self._waiting_said.get(model) != line:
                self._waiting_said[model] = line
                self.events.put(SchedulerEvent(EventKind.WAITING, detail=line))

    def _master_back(self) -> None:
        with self.lock:
            if self.disconnected_since is not None:
                log.info("the master is back after %.1f s", self.clock() - self.disconnected_since)
            self.disconnected_since = None

    def master_lost_for(self) -> float:
        """Seconds the master has been unreachable since the framework was subscribed (0 if connected)."""
        with self.lock:
            return 0.0 if self.disconnected_since is None else self.clock() - self.disconnected_since
    # --- journal, acknowledgements and adoption (see framework.journal) --------------------
    def acknowledge(self, driver: Any, status: Any) -> None:
        """Acknowledge a status update (:func:`framework.translator.acknowledge`)."""
        translator.acknowledge(driver, status)

    def adopt(self, items: list[tuple[WorkItem, str | None]]) -> None:
        """Take over tasks a previous run of the job launched and the journal last saw active
        (each item's latest attempt, on its agent): they are tracked as launched, reconciled once
        the framework re-subscribes, and their results received rather than computed again."""
        with self.lock:
            now = self.clock()
            for item, agent_id in items:
                self.tracker.add([item])
                task_id = self.tracker.launched(item, agent_id or "")
                self.started_at[task_id] = now

    def avoid_earlier_executors(self, agent_ids: Any, models: Any, generation: int) -> None:
        """A resumed job's executors must not reuse the ids of executors an earlier run may have
        left on these agents (Mesos refuses a different ExecutorInfo under an existing id): their
        generations start at ``generation`` (distinct per run)."""
        with self.lock:
            for agent_id in agent_ids:
                for key in {self.catalog.executor_key(model) for model in models}:
                    if (agent_id, key) not in self.executor_generation:
                        self.executor_generation[(agent_id, key)] = generation

    def _journal_framework_id(self) -> None:
        if self.journal is not None and self.framework_id:
            self.journal.save_framework_id(self.framework_id)

    def _resubscribed(self, driver: Any) -> None:
        """Subscribed again under our framework id (a resumed job, or after a master failover)."""
        with self.lock:
            if self.framework_id is None:
                self.framework_id = getattr(driver, "framework_id", None)
        self._journal_framework_id()

    def _journal_launches(self, launches: Any) -> None:
        if self.journal is not None:
            records = list(launches)
            if records:
                self.journal.record_launches(records)

    def _journal_update(self, update: translator.StatusUpdate) -> None:
        if self.journal is not None and update.state != "TASK_FINISHED":
            self.journal.record_update(update.task_id, update.state, update.reason, update.message)

    def _unusable_reconciliation(self, update: translator.StatusUpdate) -> bool:
        """A reconciliation answer TASK_FINISHED carries no result: the task's own update (which
        the agent resends until it is acknowledged) brings it.  Ignore the answer."""
        if update.state == "TASK_FINISHED" and update.reason == "REASON_RECONCILIATION" and not update.data:
            log.info("task %s finished while we were away; waiting for its resent update", update.task_id)
            return True
        return False

    # --- helpers --------------------------------------------------------------------------
    def _fatal(self, where: str, error: Exception) -> None:
        log.exception("scheduler callback %s failed", where)
        self.events.put(SchedulerEvent(EventKind.FATAL, detail=f"{where}: {type(error).__name__}: {error}"))

    def _forget_executor(self, agent_id: str, executor_key: str) -> None:
        if self.executors.pop((agent_id, executor_key), None) is not None:
            self.executor_generation[(agent_id, executor_key)] += 1

    def _suppress(self, driver: Any) -> None:
        if not self.suppressed:
            self.suppressed = True
            driver.suppressOffers()

    def _revive_if_needed(self, driver: Any) -> bool:
        """REVIVE when work is pending (returns whether it did).  Before SUBSCRIBED there is nothing
        to revive (pymesos asserts a framework id); ``registered`` revives then.  Under the lock, so
        that a round's SUPPRESS (also sent under it, only when nothing is pending) never overtakes it."""
        with self.lock:
            if not self.tracker.has_pending() or self.framework_id is None:
                return False
            self.suppressed = False
            driver.reviveOffers()
            return True
