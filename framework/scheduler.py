"""The pymesos ``Scheduler``: translates Mesos callbacks into calls on the project's own values.

Every callback runs on pymesos' single IO thread, so each one is short, holds the lock only
around in-memory state, and never raises (an exception there kills the driver and, without
failover, tears the framework down).  Results are handed to the job's main thread through
``events``; nothing heavy happens here.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import pymesos  # imported at module load, on the main thread: it installs a SIGINT handler

from framework.balancing import Measurements, SpeculationPolicy, first_that_fit, stragglers, usage_key
from framework.offers import OfferView, PoolAllocator, merge_by_agent, view_offer
from framework.packing import (Agent, AvoidAgents, CostModel, PackingOptions, Plan, PriceTable, Resources, TaskDemand,
                              pack)
from framework.tasks import TERMINAL_MESOS_STATES, ItemState, Tracker, WorkItem

log = logging.getLogger(__name__)

AVOID_FAILED_AGENTS_SECONDS = 10.0
"""How long a retried task waits for an agent other than those it failed on."""


class WorkCatalog(Protocol):
    """What the scheduler needs to know about the job's work items (implemented by the job)."""

    def demand(self, item: WorkItem) -> TaskDemand: ...

    def task_info(self, item: WorkItem, task_id: str, agent: Agent, allocator: PoolAllocator,
                  executor: dict[str, Any]) -> dict[str, Any]: ...

    def executor_info(self, key: str, agent: Agent, allocator: PoolAllocator, generation: int) -> dict[str, Any]: ...

    def executor_key(self, model: str) -> str:
        """The executor that runs ``model``'s tasks on an agent (one per model, or one shared)."""
        ...

    def executor_models(self, key: str) -> frozenset[str]: ...

    def isolate(self, model: str) -> None:
        """An executor died running ``model``: give it executors of its own from now on."""
        ...

    agent_reserve: Resources
    """Kept free on agents without an executor of ours yet (a shared executor's resources)."""


@dataclass(frozen=True)
class SchedulerEvent:
    """Something the main thread must act on: ``finished``, ``gave_up`` or ``fatal``."""

    kind: str
    item: WorkItem | None = None
    data: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class OfferPolicy:
    refuse_seconds: float = 5.0
    never_fits_refuse_seconds: float = 300.0
    role: str = "*"


def callback(method: Callable[..., None]) -> Callable[..., None]:
    """Wrap a pymesos callback so that it can never raise into the driver."""

    def guarded(self: "EnsembleScheduler", *args: Any) -> None:
        try:
            method(self, *args)
        except Exception as error:  # the driver must survive our bugs; the job fails instead
            log.exception("scheduler callback %s failed", method.__name__)
            self.events.put(SchedulerEvent("fatal", detail=f"{method.__name__}: {type(error).__name__}: {error}"))

    guarded.__name__ = method.__name__
    guarded.__doc__ = method.__doc__
    return guarded


class EnsembleScheduler(pymesos.Scheduler):
    """The framework's pymesos ``Scheduler``: offers in, launches and declines out."""

    def __init__(
        self,
        tracker: Tracker,
        catalog: WorkCatalog,
        prices: PriceTable,
        cost_model: CostModel,
        packing: PackingOptions,
        policy: OfferPolicy,
        speculation: SpeculationPolicy | None = None,
    ) -> None:
        self.tracker, self.catalog = tracker, catalog
        self.prices, self.cost_model, self.packing, self.policy = prices, cost_model, packing, policy
        self.events: queue.Queue[SchedulerEvent] = queue.Queue()
        self.lock = threading.RLock()
        self.framework_id: str | None = None
        self.suppressed = False
        self.executors: dict[tuple[str, str], dict[str, Any]] = {}
        self.executor_generation: dict[tuple[str, str], int] = defaultdict(int)
        self.executors_launched = 0
        self.measurements = Measurements()
        self.speculation = speculation or SpeculationPolicy()
        self.started_at: dict[str, float] = {}   # task id -> launch, then TASK_RUNNING, time
        self.backups_launched = 0
        self.reserve_warned: set[str] = set()
        self._last_speculation_revive = float("-inf")
        self.known_agents: set[str] = set()
        self.hostnames: dict[str, str] = {}
        self.last_plan: Plan | None = None
        self.first_running_at: float | None = None
        self.retried_at: dict[str, float] = {}
        self.stopping = False

    # --- framework life -------------------------------------------------------------------
    @callback
    def registered(self, driver: Any, framework_id: Any, master_info: Any) -> None:
        with self.lock:
            self.framework_id = framework_id["value"]
        log.info("registered as framework %s with master %s:%s", framework_id["value"],
                 master_info.get("hostname"), master_info.get("port"))
        self._revive_if_needed(driver)

    @callback
    def reregistered(self, driver: Any, master_info: Any) -> None:
        log.info("re-registered with the master; reconciling active tasks")
        with self.lock:
            active = [{"task_id": {"value": t}} for i in self.tracker.active() for t in i.running_task_ids()]
        driver.reconcileTasks(active)
        self._revive_if_needed(driver)

    @callback
    def disconnected(self, driver: Any) -> None:
        if self.stopping:
            log.debug("disconnected from the master while stopping")
        else:
            log.warning("disconnected from the master; pymesos reconnects")

    @callback
    def error(self, driver: Any, message: str) -> None:
        self.events.put(SchedulerEvent("fatal", detail=f"Mesos error: {message}"))

    # --- offers ---------------------------------------------------------------------------
    @callback
    def resourceOffers(self, driver: Any, offers: list[Any]) -> None:  # noqa: N802 (pymesos name)
        """One offer round: choose the work, see the agents, pack, then one ACCEPT or DECLINE per
        agent."""
        with self.lock:
            views = [view_offer(offer, self.policy.role) for offer in offers]
            self.known_agents.update(v.agent_id for v in views)
            self.hostnames.update((v.agent_id, v.hostname) for v in views)
            active = self.tracker.active()
            pending = self.measurements.launch_order(self.tracker.pending(), {usage_key(i) for i in active})
            work = pending or self._stragglers(active)  # nothing pending: spare capacity runs backups
            if not work:
                driver.declineOffer([{"value": v.offer_id} for v in views],
                                    {"refuse_seconds": self.policy.refuse_seconds})
                self._suppress(driver)
                return
            agents = self._reserve_executors(merge_by_agent(
                views, self.prices, self._in_use(active), self._loaded_models(), self._running_tasks(active)))
            plan, judged_on_all = self._plan(work, agents, backups=not pending)
            launches = self._launch_or_decline(driver, views, agents, {i.key: i for i in work}, plan, judged_on_all)
            if not pending and launches:
                self.backups_launched += launches
                log.warning("%d straggler(s) got a backup copy on another agent", launches)
            if plan.unplaced and pending:
                sample = next(iter(plan.unplaced.values()))
                log.info("%d task(s) wait for offers; e.g. %s: %s", len(plan.unplaced), sample.task_id,
                         sample.describe())
            log.debug("offer round: %d offers, %d launches, cost %.3f (lower bound %.3f)",
                      len(offers), launches, plan.cost, plan.lower_bound)
            if not self.tracker.has_pending():
                self._suppress(driver)

    def _plan(self, work: list[WorkItem], agents: list[Agent], backups: bool) -> tuple[Plan, bool]:
        """Pack ``work`` (in launch order) onto ``agents``; also say whether the plan's decline
        reasons were judged on all of the work (else every decline is ``unneeded``)."""
        # Backups only go where the job already runs (an agent of its own would cost more).
        eligible = [a for a in agents if a.in_use] if backups else agents
        # Scarce offers go to the first tasks in the launch order (the packer chooses freely
        # among equally good plans, so it is only given those); demands are built only as far
        # as the offers can take them, so a round costs the same with 10 or 10,000 tasks waiting.
        wanted, all_taken = first_that_fit((self._demand(item) for item in work),
                                           sum((a.capacity for a in eligible), Resources()))
        nothing_fits = not wanted
        if nothing_fits:
            # The packer says why, judged on each model's plain demand (a retry's is only stricter).
            first_of_model: dict[str, WorkItem] = {}
            for item in work:
                first_of_model.setdefault(item.model, item)
            wanted = [self.catalog.demand(item) for item in first_of_model.values()]
        self.last_plan = pack(wanted, eligible, self.cost_model, self.packing)
        return self.last_plan, (all_taken or nothing_fits) and not backups

    def _launch_or_decline(self, driver: Any, views: list[OfferView], agents: list[Agent], work: dict[str, WorkItem],
                           plan: Plan, judged_on_all: bool) -> int:
        """Carry out the plan: one ACCEPT with all of an agent's launches (an offer id can be used
        once), or a DECLINE whose filter length follows the reason; return the launches."""
        launches = 0
        for agent in agents:
            items = [work[k] for k in plan.assignments.get(agent.agent_id, ())]
            offer_ids = [{"value": o} for o in agent.offer_ids]
            if not items:
                reason = plan.declined.get(agent.agent_id, "unneeded") if judged_on_all else "unneeded"
                refuse = self.policy.never_fits_refuse_seconds if reason == "never_fits" else self.policy.refuse_seconds
                driver.declineOffer(offer_ids, {"refuse_seconds": refuse})
                continue
            allocator = PoolAllocator([v for v in views if v.agent_id == agent.agent_id], self.policy.role)
            tasks = [self._task_info(item, agent, allocator) for item in items]
            driver.launchTasks(offer_ids, tasks, {"refuse_seconds": self.policy.refuse_seconds})
            launches += len(tasks)
        return launches

    def _reserve_executors(self, agents: list[Agent]) -> list[Agent]:
        """Agents as the packer sees them: without the catalog's per-agent reserve where our shared
        executor is not running yet, so that the first ACCEPT there can start it."""
        reserve = self.catalog.agent_reserve
        if reserve.is_zero():
            return agents
        for agent in agents:
            if not agent.loaded_models and not agent.in_use and not reserve.fits_in(agent.capacity) \
                    and agent.agent_id not in self.reserve_warned:
                self.reserve_warned.add(agent.agent_id)
                log.warning("agent %s offers %.2f cpus, %.0f MB but the shared executor needs %.2f cpus, %.0f MB "
                            "(96 MB plus every model's executor_mem or estimate): no task can start there; set "
                            "[framework] executors = \"per_model\" or smaller executor_mem", agent.hostname,
                            agent.capacity.cpus, agent.capacity.mem, reserve.cpus, reserve.mem)
        return [
            agent if agent.loaded_models
            else dataclasses.replace(agent, capacity=(agent.capacity - reserve).nonnegative())
            for agent in agents
        ]

    def _task_info(self, item: WorkItem, agent: Agent, allocator: PoolAllocator) -> dict[str, Any]:
        executor_key = self.catalog.executor_key(item.model)
        key = (agent.agent_id, executor_key)
        if key not in self.executors:
            generation = self.executor_generation[key]
            self.executors[key] = self.catalog.executor_info(executor_key, agent, allocator, generation)
            self.executors_launched += 1
        task_id = self.tracker.launched(item, agent.agent_id)
        self.started_at[task_id] = time.monotonic()
        return self.catalog.task_info(item, task_id, agent, allocator, self.executors[key])

    def _demand(self, item: WorkItem) -> TaskDemand:
        """The item's demand; a retry avoids the agents it failed on, if others are known, for
        ``AVOID_FAILED_AGENTS_SECONDS`` (then any agent will do) and never on its last attempt."""
        demand = self.catalog.demand(item)
        if item.state is not ItemState.PENDING and item.agent_id:  # a backup: anywhere but where it runs
            avoid = AvoidAgents(frozenset({item.agent_id}))
            demand = dataclasses.replace(demand, constraints=demand.constraints + (avoid,))
        if demand.duration is None and (measured := self.measurements.mean_seconds(usage_key(item))) is not None:
            demand = dataclasses.replace(demand, duration=measured)  # for the cost model's per-second prices
        failed = frozenset(item.failed_agents)
        since = self.retried_at.get(item.key)
        if (not failed or not (self.known_agents - failed) or item.attempts >= self.tracker.max_retries
                or since is None or time.monotonic() - since > AVOID_FAILED_AGENTS_SECONDS):
            return demand
        return dataclasses.replace(demand, constraints=demand.constraints + (AvoidAgents(failed),))

    @callback
    def offerRescinded(self, driver: Any, offer_id: Any) -> None:  # noqa: N802
        log.info("offer %s rescinded (offers are never held, nothing to undo)", offer_id.get("value"))

    # --- tasks ----------------------------------------------------------------------------
    @callback
    def statusUpdate(self, driver: Any, status: Any) -> None:  # noqa: N802
        task_id = status["task_id"]["value"]
        state = status.get("state", "")
        reason = status.get("reason") or ""
        with self.lock:
            transition = self.tracker.on_update(task_id, state, status.get("message") or "", reason)
            item = transition.item
            if reason == "REASON_EXECUTOR_TERMINATED" and item is not None and transition.agent_id:
                self._forget_executor(transition.agent_id, self.catalog.executor_key(item.model))
                self.catalog.isolate(item.model)
            if transition.kind == "started" and state == "TASK_RUNNING":
                self.started_at[task_id] = time.monotonic()
            elif state in TERMINAL_MESOS_STATES:
                self.started_at.pop(task_id, None)
            # Queued under the lock that changed the item's state, so "all settled and no events
            # queued" (checked under the same lock by the main thread) means every result is in.
            if transition.kind == "finished":
                self.events.put(SchedulerEvent("finished", item, data=status.get("data") or None))
            elif transition.kind == "gave_up":
                self.events.put(SchedulerEvent("gave_up", item, detail=transition.detail))
        if transition.kind == "started" and state == "TASK_RUNNING" and self.first_running_at is None:
            self.first_running_at = time.monotonic()
        if transition.kind == "finished":
            if transition.sibling:  # the other copy lost the race
                driver.killTask({"value": transition.sibling})
            # Its resources are free now: ask for them at once rather than at the next
            # allocation cycle (REVIVE makes the master allocate immediately).
            self._revive_if_needed(driver)
        elif transition.kind == "dropped":
            log.warning("task %s: %s; its other copy runs on", task_id, transition.detail)
        elif transition.kind == "retry":
            self.retried_at[task_id.rsplit(".a", 1)[0]] = time.monotonic()
            log.warning("task %s: %s; will retry", task_id, transition.detail)
            self._revive_if_needed(driver)
        elif transition.kind == "ignored":
            log.debug(transition.detail)

    @callback
    def frameworkMessage(self, driver: Any, executor_id: Any, agent_id: Any, data: str) -> None:  # noqa: N802
        log.debug("framework message from %s", executor_id.get("value"))

    @callback
    def slaveLost(self, driver: Any, agent_id: Any) -> None:  # noqa: N802
        with self.lock:
            for key in [k for k in self.executors if k[0] == agent_id["value"]]:
                self._forget_executor(*key)
        log.warning("agent %s lost; its tasks come back as TASK_LOST", agent_id["value"])

    @callback
    def executorLost(self, driver: Any, executor_id: Any, agent_id: Any, status: Any) -> None:  # noqa: N802
        with self.lock:
            for key, info in list(self.executors.items()):
                if key[0] == agent_id["value"] and info["executor_id"]["value"] == executor_id["value"]:
                    self._forget_executor(*key)
        log.warning("executor %s on %s exited with status %s", executor_id["value"], agent_id["value"], status)

    # --- main-thread API ------------------------------------------------------------------
    def retry(self, driver: Any, item: WorkItem, description: str) -> None:
        """The main thread rejected a finished result (corrupt data): run the item again."""
        with self.lock:
            transition = self.tracker.reject_result(item, description)
            if transition.kind == "gave_up":
                self.events.put(SchedulerEvent("gave_up", item, detail=description))
        if transition.kind != "gave_up":
            self.retried_at[item.key] = time.monotonic()
            self._revive_if_needed(driver)

    def speculate(self, driver: Any) -> None:
        """Called periodically by the job: when nothing is pending but a task straggles, ask for
        offers (at most once per ``refuse_seconds``) so a backup copy can start elsewhere."""
        with self.lock:
            now = time.monotonic()
            if (self.framework_id is None or not self.suppressed or self.tracker.has_pending()
                    or now - self._last_speculation_revive < self.policy.refuse_seconds
                    or not self._stragglers(self.tracker.active())):
                return
            self._last_speculation_revive, self.suppressed = now, False
        driver.reviveOffers()

    def _stragglers(self, active: list[WorkItem]) -> list[WorkItem]:
        now = time.monotonic()
        elapsed = {task_id: now - since for task_id, since in self.started_at.items()}
        return stragglers(active, elapsed, self.measurements, self.speculation)

    def record_usage(self, item: WorkItem, seconds: float, cpu_seconds: float) -> None:
        """What a finished task cost (measured by its executor): steers later launches."""
        with self.lock:
            agent = self.hostnames.get(item.agent_id or "", item.agent_id or "")
            self.measurements.record(usage_key(item), agent, seconds, cpu_seconds)

    def cancel_model(self, driver: Any, model: str) -> None:
        with self.lock:
            running = self.tracker.cancel_model(model)
        for task_id in running:
            driver.killTask({"value": task_id})

    def add_work(self, driver: Any, items: list[WorkItem]) -> None:
        with self.lock:
            self.tracker.add(items)
        self._revive_if_needed(driver)

    # --- helpers --------------------------------------------------------------------------
    def _forget_executor(self, agent_id: str, executor_key: str) -> None:
        if self.executors.pop((agent_id, executor_key), None) is not None:
            self.executor_generation[(agent_id, executor_key)] += 1

    def _in_use(self, active: list[WorkItem]) -> dict[str, bool]:
        """Agents the job already pays for: running our tasks or holding our executors."""
        in_use = {i.agent_id: True for i in active if i.agent_id}
        in_use.update({agent_id: True for agent_id, _model in self.executors})
        return in_use

    def _loaded_models(self) -> dict[str, frozenset[str]]:
        loaded: dict[str, set[str]] = defaultdict(set)
        for agent_id, executor_key in self.executors:
            loaded[agent_id].update(self.catalog.executor_models(executor_key))
        return {a: frozenset(m) for a, m in loaded.items()}

    def _running_tasks(self, active: list[WorkItem]) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for item in active:
            if item.agent_id:
                counts[item.agent_id][item.model] += 1
        return counts

    def _suppress(self, driver: Any) -> None:
        if not self.suppressed:
            self.suppressed = True
            driver.suppressOffers()

    def _revive_if_needed(self, driver: Any) -> None:
        """REVIVE when work is pending.  Before SUBSCRIBED there is nothing to revive (pymesos
        asserts a framework id); ``registered`` revives then."""
        with self.lock:
            if not self.tracker.has_pending() or self.framework_id is None:
                return
            self.suppressed = False
        driver.reviveOffers()
