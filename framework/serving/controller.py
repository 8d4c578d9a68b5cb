"""The serving controller: a pymesos ``Scheduler`` for long-lived replica tasks.

It keeps every member's replicas between its ``min_replicas`` and the autoscaler's desired
count, places new ones on offers (``framework.serving.placement``: the cost packer, preferring
agents that already run our executor), registers a replica with the gateway's
:class:`~framework.serving.routing.ReplicaTable` once it is ready (TASK_RUNNING, then a health
check), replaces one that ends (crash, agent loss), drains and kills replicas to scale down, and
rolls a member whose model changed (new replicas first; an old one drains only once a new one
is ready, so no request finds no replica), and shuts down (Mesos ``SHUTDOWN``) an executor of
ours left without replicas for ``EXECUTOR_IDLE_SECONDS``, so that a released agent goes back to
the cluster whole.

Conventions of :mod:`framework.scheduler`: every pymesos callback (one IO thread) only
translates its message and queues it, under a guard that never lets an exception reach the
driver; one worker thread takes the queue and decides (autoscaling, placement, drains) and sends
the calls.  Status updates are acknowledged explicitly once handled (and journaled).
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import logging
import queue
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import pymesos  # imported at module load, on the main thread: it installs a SIGINT handler

from framework import translator
from framework.offers import OfferView, merge_by_agent
from framework.packing import Agent, PriceTable, Resources
from framework.scheduler import DRIVER_ABORTED, DriverAbortWatch, EventKind, SchedulerEvent
from framework.serving import placement
from framework.tasks import TERMINAL_MESOS_STATES
from framework.translator import Message, PoolAllocator

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_SECONDS = 2.0
HEALTH_ATTEMPTS = 20
"""A replica that says TASK_RUNNING is health-checked (``GET /v1/health``) before it takes
requests; after this many failed tries (0.25 s apart) it is killed and replaced."""
DRAIN_SECONDS = 0.5
"""Between marking a replica draining (the gateway sends it nothing new) and killing it (it then
finishes what it has in flight before TASK_KILLED)."""
TICK_SECONDS = 0.25
RISE_CHECK_SECONDS = 0.2
"""Between two decisions, a load that already needs more replicas (``rising``) is looked for at
most this often (each tick), from this long after the last decision."""
COST_REPORT_MAX_DELAY = 1.0
"""A decision's cost report waits while its replicas wait for offers (or the inbox holds something)
at most this long."""
BAD_PORT_SECONDS = 120.0
"""A port a replica could not bind on a host is not chosen again there for this long."""
EXECUTOR_IDLE_SECONDS = 5.0
"""An executor of ours left without a replica (its last drain finished: a scale-down or re-pack
released its agent, or the replicas of its member there ended) is shut down (Mesos ``SHUTDOWN``)
once it has stayed so this long, so that its agent, executor resources included, goes back to the
cluster.  The wait lets a scale-up or a replacement a moment later reuse the loaded executor (no
cold start); it is short next to the autoscaler's scale-down delay (30 s by default), which the
load already had to stay low for."""


class ReplicaState(StrEnum):
    LAUNCHING = "launching"
    """Recorded and sent; no update yet."""
    STARTING = "starting"
    """TASK_STARTING seen: the model loads."""
    CHECKING = "checking"
    """TASK_RUNNING seen: its health is being checked."""
    READY = "ready"
    """In the replica table: takes requests."""
    DRAINING = "draining"
    """Out of the table; killed (or about to be): finishes what it has in flight."""
    ADOPTING = "adopting"
    """A replica of an earlier ``serve`` (from the journal), reconciling."""


LIVE_STATES = (ReplicaState.LAUNCHING, ReplicaState.STARTING, ReplicaState.CHECKING, ReplicaState.READY,
               ReplicaState.ADOPTING)


@dataclass
class LiveReplica:
    """One replica task as the controller follows it."""

    task_id: str
    member: str
    agent_id: str
    hostname: str
    address: str
    """Where the gateway reaches it (the agent's hostname; 127.0.0.1 on a loopback cluster)."""
    port: int
    sha256: str
    executor_key: str
    executor_id: str
    state: ReplicaState = ReplicaState.LAUNCHING
    since: float = 0.0
    pid: int | None = None
    kill_at: float | None = None
    replaces: str | None = None
    """A re-pack's replacement: the replica it takes over from (drained once this one is ready)."""
    wanted_at: float | None = None
    """When the replica was first wanted (its member's desired count went up, or it was replaced):
    the start of its timeline, logged when it is ready."""
    launched_at: float | None = None
    running_at: float | None = None
    phases: dict[str, float] = dataclasses.field(default_factory=dict)
    """The executor's timing of the replica's start (``ReplicaReady.phases``)."""
    routed: bool = False
    """READY and in the gateway's table; READY and not routed: a standby replica (``placement.route``)."""

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


@dataclass(frozen=True)
class ServedMember:
    """What a member's replicas must run: its model (by sha256), and its replica bounds."""

    name: str
    sha256: str
    min_replicas: int
    max_replicas: int
    standby_replicas: int = 0
    """Ready replicas kept out of the gateway's table beside the autoscaler's count (``[serve.models]``)."""


class ReplicaCatalog(Protocol):
    """Builds the Mesos messages of replicas (implemented by ``framework.serving.service``)."""

    agent_reserve: Resources
    """Kept free on agents without an executor of ours yet (the shared executor's resources)."""

    def executor_key(self, member: str) -> str: ...

    def executor_models(self, key: str) -> frozenset[str]: ...

    def executor_info(self, key: str, agent: Agent, allocator: PoolAllocator, generation: int) -> Message: ...

    def replica_target(self, member: str, desired: int, sha256: str) -> placement.MemberTarget:
        """What placement needs of ``member``: one replica's demand (a port included), its
        executor's resources (none for the shared one), its constraints."""
        ...

    def replica_info(self, member: str, task_id: str, agent: Agent, allocator: PoolAllocator, executor: Message,
                     port: int, predict_mode: str | None = None, sha256: str | None = None) -> Message:
        """A replica's TaskInfo; ``predict_mode``: where an earlier replica of the same model file
        measured its predictions run best (the new one skips its probe); ``sha256``: the model
        file it runs, when not the member's current one (a held replica's replacement during a
        stacking update); ValueError when that file is not served."""
        ...


REPACK_INTERVAL_SECONDS = 10.0
"""At most one re-pack (moving replicas off an expensive agent) per this many seconds.  Every
re-pack lowers the cost of the agents in use (``placement``), so re-packs end without a long
spacing; this one only keeps a re-pack from starting on offers that crossed the last one.  It
must leave the fall in load its time: the scale-down delay (``scale_down_delay_s``, 30 s), the
drains (under a second), a re-pack's replacements starting and the old replicas draining fit
within issue 15's 60 s only if a re-pack is not held back long after the drains."""
REPACK_CHECK_SECONDS = 5.0
"""A settled deployment looks for a cheaper placement with an agent's offers at most this often
(each look packs a few times); an agent offered again within this time is not looked at again
unless the replicas changed since (a scale-down's drains ended, a replica became ready).  Per
agent: the agents' offers come on their own cycles (``refuse_seconds`` after each decline), so a
spacing shared by all would lock onto one agent's cycle and never look at the other's offers."""


def callback(method: Callable[..., None]) -> Callable[..., None]:
    """Wrap a pymesos callback so that it can never raise into the driver."""

    def guarded(self: "ServingController", *args: Any) -> None:
        try:
            method(self, *args)
        except Exception as error:  # the driver must survive our bugs; serve stops instead
            log.exception("scheduler callback %s failed", method.__name__)
            self.events.put(SchedulerEvent(EventKind.FATAL, detail=f"{method.__name__}: {type(error).__name__}: "
                                                                   f"{error}"))

    guarded.__name__ = method.__name__
    guarded.__doc__ = method.__doc__
    return guarded


class ServingController(pymesos.Scheduler):
    """Long-lived replicas on Mesos offers (see the module docstring)."""

    def __init__(self, targets: Mapping[str, ServedMember], catalog: ReplicaCatalog, table: Any,
                 prices: PriceTable, *, role: str = "*", refuse_seconds: float = 5.0,
                 loopback: bool = False, state: Any = None, loads: Callable[[], Mapping[str, Any]] | None = None,
                 autoscale: Callable[[Mapping[str, Any], Mapping[str, int], float], dict[str, int]] | None = None,
                 scale_interval: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 rising: Callable[[Mapping[str, Any], Mapping[str, int]], Sequence[str]] | None = None,
                 health_check: Callable[["LiveReplica"], bool] | None = None,
                 on_cost: Callable[[float, float], None] | None = None,
                 executor_idle_seconds: float = EXECUTOR_IDLE_SECONDS) -> None:
        self.targets = dict(targets)
        self.catalog, self.table, self.prices = catalog, table, prices
        self.role, self.refuse_seconds, self.loopback = role, refuse_seconds, loopback
        self.state = state
        """The deployment journal (:class:`framework.serving.state.ServeState`) or None."""
        self.loads, self.autoscale, self.scale_interval, self.clock = loads, autoscale, scale_interval, clock
        self.rising = rising
        """Between decisions, every tick: the members whose load already needs more replicas than
        wanted (``autoscale.rising``); any, and the autoscaler decides at once."""
        self.health_check = health_check or check_health
        self.on_cost = on_cost
        self.cost_history: list[tuple[float, float, float]] = []
        """(time, cost per hour, lower bound per hour), every ``scale_interval``."""
        self._known_agents: dict[str, Agent] = {}
        """Each agent as it is for us (``cost.measure_agents``: its last offer plus what our
        replicas and executors held there when it came), for the lower bound."""
        self._repack_looked: dict[str, float] = {}
        """Per agent, when a re-pack was last looked for with its offers (see REPACK_CHECK_SECONDS)."""
        self.desired: dict[str, int] = {name: t.min_replicas for name, t in self.targets.items()}
        self.held: dict[str, str] = {}
        """Per member of a stacking update under way, the model file (sha256) whose replicas stay
        (ready, routed, never drained; one that ends is replaced with that file, so the member
        keeps its desired count of them) until :meth:`release_held`: the gateway answers with them
        until it switches to every member's new replicas at once."""
        self.predict_modes: dict[str, str] = {}
        """Per model file (sha256): where its first replica found its predictions run best
        (TASK_RUNNING's ``predict_mode``); later replicas are launched with it and skip the probe."""
        self._wanted_at: dict[str, float] = {name: clock() for name in self.targets}
        """Per member, when it last wanted another replica (scaled up, or lost one): the start of
        the next launched replica's timeline (``start_timeline``)."""
        self.replicas: dict[str, LiveReplica] = {}
        self.executors: dict[tuple[str, str], int] = {}
        self.hosting: dict[tuple[str, str], float | None] = {}
        """Every executor of ours believed to run, (agent id, executor id) -> since when it has had
        no replica (None while it has one): launched by us or hosting an adopted replica."""
        self.executor_idle_seconds = executor_idle_seconds
        self._idle_journaled: dict[tuple[str, str], float] = {}
        """Executors journaled idle, and since when (wall clock)."""
        self.shutdowns: list[tuple[str, str]] = []
        """(agent id, executor id) of every executor shut down, in order (logs, tests)."""
        self.executor_generation: dict[tuple[str, str], int] = defaultdict(int)
        self._executor_infos: dict[tuple[str, str, int], Message] = {}
        self._journaled_infos: dict[tuple[str, str], Message] = {}
        """(agent id, executor id) -> the ExecutorInfo an earlier ``serve`` launched that executor with
        (the journal's): once one of its adopted replicas runs, new replicas are launched into it."""
        self.reused: set[tuple[str, str]] = set()
        """(agent id, executor id) of the adopted executors launched into again."""
        self.agent_prices: dict[str, float] = {}
        self.hostnames: dict[str, str] = {}
        self.bad_ports: dict[tuple[str, int], float] = {}
        self.framework_id: str | None = None
        self.events: queue.Queue[SchedulerEvent] = queue.Queue()
        """FATAL events for the service's main thread."""
        self.lock = threading.RLock()
        self._wanting = False
        self.stopping = False
        self.launched = 0
        self.replaced = 0
        self.last_decision: placement.ServeDecision | None = None
        self.repack_not_before = 0.0
        self._bounds: dict[str, float] = {}
        """The cost's lower bounds computed so far, by their inputs (a packing each: measured at
        ~50 ms of CPU every ``scale_interval`` in the gateway's process, stalling its loop)."""
        self._unplaced_said: dict[str, int] = {}
        self._token = secrets.token_hex(3)
        self._count = itertools.count(1)
        self._inbox: list[tuple[str, Any, Any]] = []
        self._inbox_ready = threading.Condition(threading.Lock())
        self._rescinded: set[str] = set()
        self._closed = False
        self._driver: Any = None
        self._last_scale = float("-inf")
        self._last_rise_check = float("-inf")
        self._cost_due: float | None = None
        """When a decision last wanted the cost reported (None: reported since)."""
        self._worker = threading.Thread(target=self._work, name="serving-controller", daemon=True)
        self._abort_watch = DriverAbortWatch(self.events)
        DRIVER_ABORTED.clear()
        logging.getLogger("pymesos.process").addFilter(self._abort_watch)
        self._changed = threading.Condition(self.lock)
        """Notified whenever a replica changes state (for ``wait_until``)."""

    # --- life ---------------------------------------------------------------------------------
    def start(self, driver: Any) -> None:
        """Start deciding (the driver is started by the caller)."""
        self._driver = driver
        self._worker.start()

    def adopt(self, records: Iterable[Any], executors: Iterable[Any] = ()) -> int:
        """Take over replicas an earlier ``serve`` journaled (``ReplicaRecord``s): they are reconciled
        once subscribed; one still running is health-checked and then serves again.  Its executors
        (``ExecutorRecord``s) are followed as ours: one left without a replica (the earlier
        ``serve`` died while it waited idle for its ``SHUTDOWN``, or its adopted replicas turn out
        gone) is shut down once idle for ``executor_idle_seconds``, counted from when the earlier
        ``serve`` saw it idle.  One journaled with its ExecutorInfo (schema 4) is launched into
        again once one of its adopted replicas runs (the same ExecutorInfo, as Mesos requires; the
        replicas' payloads name this run's artifact server); one journaled without it is not.
        A replica the earlier ``serve`` was draining is killed, not served again."""
        count = 0
        with self.lock:
            for executor in executors:
                hosted = (executor.agent_id, executor.executor_id)
                if getattr(executor, "info", None):
                    try:
                        self._journaled_infos[hosted] = json.loads(executor.info)
                    except ValueError:
                        log.warning("executor %s on %s: its journaled ExecutorInfo is not JSON; it is not launched "
                                    "into again", executor.executor_id, executor.agent_id)
                if executor.idle_since is None:
                    self.hosting[hosted] = None  # idle from the first tick that finds it without replicas
                else:
                    self.hosting[hosted] = self.clock() - max(0.0, time.time() - executor.idle_since)
                    self._idle_journaled[hosted] = executor.idle_since
                if executor.hostname:
                    self.hostnames.setdefault(executor.agent_id, executor.hostname)
                key, generation = _executor_of(executor.executor_id)
                if key:
                    self.executor_generation[(executor.agent_id, key)] = max(
                        self.executor_generation[(executor.agent_id, key)], generation + 1)
            for record in records:
                if record.member not in self.targets:
                    continue
                key, generation = _executor_of(record.executor_id)
                replica = LiveReplica(record.task_id, record.member, record.agent_id, record.hostname,
                                      self._address(record.hostname), record.port, record.sha256, key,
                                      record.executor_id, ReplicaState.ADOPTING, self.clock())
                if record.state == "draining":  # the earlier serve was draining it: it goes
                    replica.state, replica.kill_at = ReplicaState.DRAINING, self.clock()
                self.replicas[record.task_id] = replica
                if record.executor_id:
                    self.hosting[(record.agent_id, record.executor_id)] = None
                    self._idle_journaled.pop((record.agent_id, record.executor_id), None)
                if key:  # never launched into again: its ExecutorInfo (artifact URLs) was the earlier serve's
                    self.executor_generation[(record.agent_id, key)] = max(
                        self.executor_generation[(record.agent_id, key)], generation + 1)
                count += 1
        return count

    def avoid_earlier_executors(self, generation: int) -> None:
        """New executors of this run get ids no earlier run used (Mesos refuses another
        ExecutorInfo under an existing executor id): generations start at ``generation``."""
        self._generation_floor = generation

    _generation_floor = 0

    def close(self) -> None:
        logging.getLogger("pymesos.process").removeFilter(self._abort_watch)
        with self._inbox_ready:
            self._closed = True
            self._inbox_ready.notify_all()
        if self._worker.is_alive() and self._worker is not threading.current_thread():
            self._worker.join(timeout=10)

    # --- pymesos callbacks (IO thread): translate and queue ---------------------------------------
    @callback
    def registered(self, driver: Any, framework_id: Any, master_info: Any) -> None:
        framework = translator.read_id(framework_id)
        log.info("registered as framework %s with master %s", framework, translator.read_master(master_info))
        self._queue("subscribed", driver, framework)

    @callback
    def reregistered(self, driver: Any, master_info: Any) -> None:
        log.info("re-registered with the master; reconciling replicas")
        self._queue("subscribed", driver, getattr(driver, "framework_id", None))

    @callback
    def disconnected(self, driver: Any) -> None:
        if not self.stopping:
            log.warning("disconnected from the master; pymesos reconnects")

    @callback
    def error(self, driver: Any, message: str) -> None:
        self.events.put(SchedulerEvent(EventKind.FATAL, detail=f"Mesos error: {message}"))

    @callback
    def resourceOffers(self, driver: Any, offers: list[Any]) -> None:  # noqa: N802 (pymesos name)
        self._queue("offers", driver, [translator.read_offer(offer, self.role) for offer in offers])

    @callback
    def offerRescinded(self, driver: Any, offer_id: Any) -> None:  # noqa: N802
        with self.lock:
            self._rescinded.add(translator.read_id(offer_id))

    @callback
    def statusUpdate(self, driver: Any, status: Any) -> None:  # noqa: N802
        self._queue("update", driver, (translator.read_status(status), status))

    @callback
    def slaveLost(self, driver: Any, agent_id: Any) -> None:  # noqa: N802
        self._queue("agent_lost", driver, translator.read_id(agent_id))

    @callback
    def executorLost(self, driver: Any, executor_id: Any, agent_id: Any, status: Any) -> None:  # noqa: N802
        self._queue("executor_lost", driver, (translator.read_id(executor_id), translator.read_id(agent_id)))

    @callback
    def frameworkMessage(self, driver: Any, executor_id: Any, agent_id: Any, data: str) -> None:  # noqa: N802
        log.debug("framework message from %s", translator.read_id(executor_id))

    def _queue(self, kind: str, driver: Any, value: Any) -> None:
        with self._inbox_ready:
            if self._closed:
                return
            self._inbox.append((kind, driver, value))
            self._inbox_ready.notify()

    def poke(self) -> None:
        """Decide now (a reload, a test): wakes the worker."""
        self._queue("poke", None, None)

    # --- the worker ------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._inbox_ready:
                if not self._inbox and not self._closed:
                    self._inbox_ready.wait(TICK_SECONDS)
                if self._closed:
                    return
                batch, self._inbox = self._inbox, []
            try:
                self._step(batch)
            except Exception as error:  # the worker must survive our bugs too: serve stops instead
                log.exception("serving controller failed")
                self.events.put(SchedulerEvent(EventKind.FATAL, detail=f"controller: {type(error).__name__}: "
                                                                       f"{error}"))
                return

    def _step(self, batch: list[tuple[str, Any, Any]]) -> None:
        driver = self._driver
        offers: list[OfferView] = []
        measured: set[str] = set()
        for kind, from_driver, value in batch:
            driver = from_driver or driver
            if kind == "offers":
                offers.extend(value)
                self._measure(value, measured)
            elif kind == "update":
                self._on_update(driver, *value)
            elif kind == "subscribed":
                self._on_subscribed(driver, value)
            elif kind == "agent_lost":
                self._forget_agent(value)
            elif kind == "executor_lost":
                self._forget_executor(*value)
            elif kind == "ready":
                self._on_ready(value)
            elif kind == "unhealthy":
                self._on_unhealthy(driver, value)
        if driver is None:
            return
        self._driver = driver
        with self.lock:
            rescinded = {o.offer_id for o in offers if o.offer_id in self._rescinded}
            self._rescinded -= {o.offer_id for o in offers}
        offers = [o for o in offers if o.offer_id not in rescinded]
        if self.stopping:
            self._decline(driver, offers, self.refuse_seconds)
            return
        now = self.clock()
        scaled = self._scale(now)
        self._decide(driver, offers, now)
        self._route("one more wanted, or a routed one gone")
        self._kill_due(driver, now)
        self._release_idle_executors(driver, now)
        if scaled and self._cost_due is None:
            self._cost_due = now
        # After the decision's launches are out: not while replicas wait for offers (the REVIVE's
        # come a few ms later) or something waits in the inbox (a new count's lower bound is a
        # packing, 0.13-0.3 s of CPU, and the launch waited for it), unless it has waited
        # COST_REPORT_MAX_DELAY.
        if self._cost_due is not None:
            with self._inbox_ready:
                waiting = bool(self._inbox)
            with self.lock:
                waiting = waiting or self._wanting
            if not waiting or now - self._cost_due >= COST_REPORT_MAX_DELAY:
                self._cost_due = None
                self._report_cost(now)

    def _measure(self, views: list[OfferView], measured: set[str]) -> None:
        """Each offered agent's whole capacity for us, taken as the offers arrive: before the
        updates that follow them in this batch change the replicas (the master sent those later).
        An agent offered twice in one batch: both offers' resources (they are disjoint)."""
        from framework.serving import cost

        with self.lock:
            agents = merge_by_agent(views, self.prices, {}, {}, {})
            snapshot = self.snapshot(self.clock())
            for offered, whole in zip(agents, cost.measure_agents(agents, snapshot)):
                earlier = self._known_agents.get(offered.agent_id)
                if earlier is not None and offered.agent_id in measured:
                    whole = dataclasses.replace(whole, capacity=earlier.capacity + offered.capacity)
                self._known_agents[offered.agent_id] = whole
                measured.add(offered.agent_id)

    # --- updates -------------------------------------------------------------------------------
    def _on_subscribed(self, driver: Any, framework_id: str | None) -> None:
        """Subscribed, or subscribed again (a master failover, a restarted ``serve``): every replica
        known is reconciled explicitly (a launch or a kill sent while disconnected was dropped by
        the driver: the master's answer says what became of it), and every drain's kill is sent
        again (killing a task twice is harmless; one never killed would run on)."""
        with self.lock:
            if framework_id:
                self.framework_id = framework_id
            adopting = list(self.replicas)
            now = self.clock()
            for replica in self.replicas.values():
                if replica.state is ReplicaState.DRAINING and replica.kill_at is None:
                    replica.kill_at = now
        if self.state is not None and self.framework_id:
            self.state.save_framework_id(self.framework_id)
        if adopting:
            driver.reconcileTasks(translator.reconcile_tasks(adopting))
        with self.lock:
            self._wanting = True
        driver.reviveOffers()

    def _on_update(self, driver: Any, update: translator.StatusUpdate, status: Any) -> None:
        with self.lock:
            replica = self.replicas.get(update.task_id)
            if replica is None:
                known = False
            else:
                known = True
                if update.state in TERMINAL_MESOS_STATES:
                    self._gone(replica, update)
                elif update.state == "TASK_STARTING" and replica.state is ReplicaState.LAUNCHING:
                    replica.state = ReplicaState.STARTING
                elif update.state == "TASK_RUNNING" and replica.state in (
                        ReplicaState.LAUNCHING, ReplicaState.STARTING, ReplicaState.ADOPTING):
                    replica.state, replica.since = ReplicaState.CHECKING, self.clock()
                    replica.running_at = replica.since
                    replica.pid, mode, replica.phases = _running_data(update.data)
                    if mode is not None:
                        self.predict_modes.setdefault(replica.sha256, mode)
                    if update.agent_id and replica.agent_id != update.agent_id:
                        replica.agent_id = update.agent_id
                    self._reuse_adopted_executor(replica)
                    threading.Thread(target=self._check, args=(replica,), name=f"health-{replica.task_id}",
                                     daemon=True).start()
                self._changed.notify_all()
        if known and self.state is not None and update.state not in TERMINAL_MESOS_STATES:
            self.state.set_state(update.task_id, update.state)
        if not known and update.state not in TERMINAL_MESOS_STATES:
            # Not ours (any more): a task of an earlier run the journal lost, or one we gave up on.
            log.info("killing task %s, unknown to this deployment (%s)", update.task_id, update.state)
            driver.killTask(translator.id_message(update.task_id))
        translator.acknowledge(driver, status)

    def _reuse_adopted_executor(self, replica: LiveReplica) -> None:
        """An adopted replica runs (lock held): its executor runs, so new replicas on its agent are
        launched into it with the ExecutorInfo an earlier ``serve`` journaled for it (no new executor
        beside it, no cold start), unless another executor of ours serves that agent already."""
        hosted = (replica.agent_id, replica.executor_id)
        info = self._journaled_infos.pop(hosted, None)
        key, generation = _executor_of(replica.executor_id)
        if info is None or not key or (replica.agent_id, key) in self.executors:
            return
        self.executors[(replica.agent_id, key)] = generation
        self.executor_generation[(replica.agent_id, key)] = generation
        self._executor_infos[(replica.agent_id, key, generation)] = info
        self.reused.add(hosted)

    def _gone(self, replica: LiveReplica, update: translator.StatusUpdate) -> None:
        """A replica ended (call with the lock held): out of the table and the journal; the next
        decision replaces it if its member needs it."""
        del self.replicas[replica.task_id]
        if (replica.agent_id, replica.executor_id) in self.reused and replica.state in (
                ReplicaState.LAUNCHING, ReplicaState.STARTING):
            # launched into a re-adopted executor and never ran: the next launch there starts a new one
            # (the old one stays followed: its other replicas keep it, its idle time shuts it down)
            key, generation = _executor_of(replica.executor_id)
            if self.executors.get((replica.agent_id, key)) == generation:
                self._drop_executor(replica.agent_id, key)
        self._repack_looked.clear()  # the replicas changed: a re-pack may now pay where it did not
        self.table.remove(replica.task_id)
        if self.state is not None:
            self.state.remove(replica.task_id)
        if update.reason == "REASON_EXECUTOR_TERMINATED":
            self._forget_executor(replica.executor_id, replica.agent_id)
        if _bind_failed(update.message):
            self.bad_ports[(replica.address, replica.port)] = self.clock() + BAD_PORT_SECONDS
        if replica.state is ReplicaState.DRAINING:
            log.info("replica %s of %s drained (%s)", replica.task_id, replica.member, update.state)
        else:
            self.replaced += 1
            self._wanted_at[replica.member] = self.clock()
            log.warning("replica %s of %s on %s ended: %s%s%s; replacing it", replica.task_id, replica.member,
                        replica.hostname, update.state, f" ({update.reason})" if update.reason else "",
                        f": {update.message}" if update.message else "")

    def _check(self, replica: LiveReplica) -> None:
        """Health-check a replica that says it runs (its own thread: a slow one blocks nothing)."""
        try:
            healthy = False
            for _attempt in range(HEALTH_ATTEMPTS):
                if self._closed or replica.state is not ReplicaState.CHECKING:
                    return
                if self.health_check(replica):
                    healthy = True
                    break
                time.sleep(0.25)
            self._queue("ready" if healthy else "unhealthy", None, replica.task_id)
        except Exception:  # a bug here must not leave the replica checking forever
            log.exception("health check of %s failed", replica.task_id)
            self._queue("unhealthy", None, replica.task_id)

    def _on_ready(self, task_id: str) -> None:
        with self.lock:
            replica = self.replicas.get(task_id)
            if replica is None or replica.state is not ReplicaState.CHECKING:
                return
            replica.state, replica.since = ReplicaState.READY, self.clock()
            self._repack_looked.clear()
            # routed in the same critical section: no one sees it READY and out of the table (a
            # standby replica, to counts() and the gateway) while it is on its way in
            self._route("ready")
            self._changed.notify_all()
        if self.state is not None:
            self.state.set_state(task_id, "TASK_RUNNING")
        log.info("replica %s of %s ready at %s in %s", task_id, replica.member, replica.url,
                 start_timeline(replica, replica.since))

    def _route(self, why: str) -> None:
        """Put in the gateway's table the ready replicas ``placement.route`` routes, and take out the
        others (standby replicas: they stay ready, and finish what they have in flight)."""
        from framework.serving.routing import Replica

        with self.lock:
            routed_now = frozenset(r.task_id for r in self.replicas.values() if r.routed)
            chosen = placement.route(self.snapshot(self.clock()), routed_now)
            moved: list[tuple[LiveReplica, bool]] = []
            for replica in self.replicas.values():
                want = replica.state is ReplicaState.READY and replica.task_id in chosen
                if want == replica.routed:
                    continue
                replica.routed = want
                if want:
                    self.table.add(Replica(replica.task_id, replica.member, replica.url, replica.agent_id,
                                           replica.sha256))
                elif replica.state is ReplicaState.READY:
                    self.table.remove(replica.task_id)
                moved.append((replica, want))
            if moved:
                self._changed.notify_all()
        for replica, want in moved:
            if want and why != "ready":
                log.info("replica %s of %s on %s: standby -> routed (%s)", replica.task_id, replica.member,
                         replica.hostname, why)
            elif not want:
                log.info("replica %s of %s on %s kept as standby, out of the gateway's table", replica.task_id,
                         replica.member, replica.hostname)

    def _on_unhealthy(self, driver: Any, task_id: str) -> None:
        with self.lock:
            replica = self.replicas.get(task_id)
            if replica is None or replica.state is not ReplicaState.CHECKING:
                return
            replica.state, replica.kill_at = ReplicaState.DRAINING, self.clock()
        log.warning("replica %s of %s failed its health checks at %s: replacing it", task_id, replica.member,
                    replica.url)

    def _forget_agent(self, agent_id: str) -> None:
        with self.lock:
            self._known_agents.pop(agent_id, None)
            for key in [k for k in self.executors if k[0] == agent_id]:
                self._drop_executor(*key)
            for hosted in [h for h in self.hosting if h[0] == agent_id]:
                self._unhost(hosted)
        log.warning("agent %s lost; its replicas come back as TASK_LOST and are replaced", agent_id)

    def _forget_executor(self, executor_id: str, agent_id: str) -> None:
        with self.lock:
            self._unhost((agent_id, executor_id))
            for (on, key), generation in list(self.executors.items()):
                if on == agent_id and translator.executor_id(key, generation) == executor_id:
                    self._drop_executor(on, key)

    def _unhost(self, hosted: tuple[str, str]) -> None:
        """An executor of ours is gone or shut down (lock held): forgotten, and out of the journal."""
        self.hosting.pop(hosted, None)
        self._idle_journaled.pop(hosted, None)
        if self.state is not None:
            self.state.remove_executor(*hosted)

    def _drop_executor(self, agent_id: str, key: str) -> None:
        if self.executors.pop((agent_id, key), None) is not None:
            self.executor_generation[(agent_id, key)] += 1

    # --- decisions -----------------------------------------------------------------------------
    def _scale(self, now: float) -> bool:
        """Every ``scale_interval`` (or at once when ``rising`` says so): the autoscaler's desired
        counts from the gateway's load.  True when it decided (the cost is then reported)."""
        if self.autoscale is None or self.loads is None:
            return False
        due = now - self._last_scale >= self.scale_interval
        if not due and (self.rising is None or now - self._last_scale < RISE_CHECK_SECONDS
                        or now - self._last_rise_check < RISE_CHECK_SECONDS):
            return False
        self._last_rise_check = now
        loads = self.loads()
        with self.lock:
            # The counts aimed at (the autoscaler's contract), not the live replicas: those also
            # count a re-pack's replacements beside the replicas they replace, and an autoscaler
            # that keeps "the current count" would keep them all (a re-pack of 3 replicas turned
            # into 6 wanted, the bound and the cost up with them, for another scale-down delay).
            current = {m: self.desired.get(m, t.min_replicas) for m, t in self.targets.items()}
        if not due and not (self.rising is not None and self.rising(loads, current)):
            return False
        self._last_scale = now
        desired = self.autoscale(loads, current, now)
        with self.lock:
            for member, count in desired.items():
                target = self.targets.get(member)
                if target is None:
                    continue
                count = max(target.min_replicas, min(target.max_replicas, int(count)))
                if count != self.desired.get(member):
                    log.info("member %s: %d replica(s) wanted (was %d)%s", member, count, self.desired.get(member, 0),
                             describe_load(loads.get(member)))
                    if count > self.desired.get(member, 0):
                        self._wanted_at[member] = now
                    self.desired[member] = count
                else:
                    log.debug("member %s: %d replica(s)%s", member, count, describe_load(loads.get(member)))
        return True

    def _report_cost(self, now: float) -> None:
        """The deployment's cost per hour as placed, and the packer's lower bound for the desired
        replicas on the agents as known (``framework.serving.cost.deployment_cost``), to ``on_cost``
        and ``cost_history``."""
        from framework.serving import cost

        with self.lock:
            snapshot = self.snapshot(now)
            agents = list(self._known_agents.values())
        try:
            report = cost.deployment_cost(snapshot, agents, default_price=self.prices.default, memo=self._bounds,
                                          whole=True)
        except (KeyError, ValueError) as error:  # nothing known of an agent yet
            log.debug("cost per hour not known yet: %s", error)
            return
        self.cost_history.append((now, report.cost_per_hour, report.lower_bound_per_hour))
        del self.cost_history[:-3600]
        if self.on_cost is not None:
            self.on_cost(report.cost_per_hour, report.lower_bound_per_hour)

    def _drain(self, replica: LiveReplica, now: float, why: str) -> None:
        """Take a replica out of the table now; kill it after ``DRAIN_SECONDS`` (lock held)."""
        if replica.state is ReplicaState.DRAINING:
            return
        log.info("draining replica %s of %s on %s (%s)", replica.task_id, replica.member, replica.hostname, why)
        was_ready = replica.state is ReplicaState.READY
        replica.state, replica.routed = ReplicaState.DRAINING, False
        replica.kill_at = now + (DRAIN_SECONDS if was_ready else 0.0)
        if was_ready:
            self.table.mark_draining(replica.task_id)
        if self.state is not None:
            self.state.set_state(replica.task_id, "draining")
        self._changed.notify_all()

    def _kill_due(self, driver: Any, now: float) -> None:
        if not getattr(driver, "connected", True):
            return  # pymesos drops a kill while disconnected: sent once subscribed again
        with self.lock:
            due = [r for r in self.replicas.values() if r.kill_at is not None and r.kill_at <= now]
            for replica in due:
                replica.kill_at = None
        for replica in due:
            driver.killTask(translator.id_message(replica.task_id))

    def _release_idle_executors(self, driver: Any, now: float) -> None:
        """Shut down (Mesos ``SHUTDOWN``, framework -> master -> agent -> executor) each executor of
        ours that has had no replica for ``executor_idle_seconds``: no live replica there and its
        drains finished (a draining replica is in ``replicas`` until its terminal update).  It is
        forgotten first (no launch goes to it again: the next replica there starts a new executor
        generation), so that its agent's resources, its own included, are offered again once it
        exits.  Replicas live in the journal with their executor's id, and leave it with their
        terminal update, so a restarted ``serve`` never re-adopts an executor shut down here."""
        with self.lock:
            busy = {(r.agent_id, r.executor_id) for r in self.replicas.values()}
            due: list[tuple[str, str]] = []
            for hosted, idle_since in list(self.hosting.items()):
                if hosted in busy:
                    self.hosting[hosted] = None
                    if self._idle_journaled.pop(hosted, None) is not None and self.state is not None:
                        self.state.set_executor_idle(*hosted, None)
                elif idle_since is None:
                    self.hosting[hosted] = now
                elif now - idle_since >= self.executor_idle_seconds:
                    due.append(hosted)
                since = self.hosting[hosted]
                if since is not None and hosted not in self._idle_journaled:
                    # Journaled idle (wall clock): a serve killed now leaves the next one its SHUTDOWN to send.
                    self._idle_journaled[hosted] = time.time() - (now - since)
                    if self.state is not None:
                        self.state.set_executor_idle(*hosted, self._idle_journaled[hosted])
            for agent_id, executor_id in due:
                del self.hosting[(agent_id, executor_id)]
                for (on, key), generation in list(self.executors.items()):
                    if on == agent_id and translator.executor_id(key, generation) == executor_id:
                        self._drop_executor(on, key)
        for agent_id, executor_id in due:
            log.info("shutting down executor %s on %s: no replica there for %.0f s", executor_id,
                     self.hostnames.get(agent_id, agent_id), self.executor_idle_seconds)
            try:
                shutdown_executor(driver, executor_id, agent_id)
            except (OSError, RuntimeError) as error:  # not connected now: the agent keeps it until we retry
                log.warning("could not shut down executor %s on %s (%s); retrying", executor_id, agent_id, error)
                with self.lock:
                    self.hosting[(agent_id, executor_id)] = now
                continue
            with self.lock:
                self._idle_journaled.pop((agent_id, executor_id), None)
            if self.state is not None:
                self.state.remove_executor(agent_id, executor_id)  # sent: the master and the agent see to it
            self.shutdowns.append((agent_id, executor_id))

    def snapshot(self, now: float) -> placement.ServeSnapshot:
        """What a placement decision reads, as values (call with the lock held)."""
        served: dict[str, set[str]] = defaultdict(set)
        for agent_id, key in self.executors:
            served[agent_id] |= self.catalog.executor_models(key)
        targets = {}
        for m, t in self.targets.items():
            desired = self.desired.get(m, t.min_replicas)
            standby = placement.standby_for(desired, t.standby_replicas, t.max_replicas)
            targets[m] = dataclasses.replace(self.catalog.replica_target(m, desired + standby, t.sha256),
                                             standby=standby, held_sha256=self.held.get(m))
        return placement.ServeSnapshot(
            targets=targets,
            replicas=tuple(placement.ReplicaView(r.task_id, r.member, r.agent_id, r.sha256, _placement_state(r.state),
                                                 r.replaces) for r in self.replicas.values()),
            agent_prices=dict(self.agent_prices),
            executors={agent: frozenset(members) for agent, members in served.items()},
            agent_reserve=self.catalog.agent_reserve,
            repack_not_before=self.repack_not_before,
            agent_capacity={a: agent.capacity for a, agent in self._known_agents.items()},
        )

    def _wanted(self) -> bool:
        """Whether some member has fewer replicas of its current model than desired, or of its
        held one during a stacking update (lock held)."""
        for member, target in self.targets.items():
            desired = self.desired.get(member, target.min_replicas)
            wanted = desired + placement.standby_for(desired, target.standby_replicas, target.max_replicas)
            for sha in {target.sha256, self.held.get(member, target.sha256)}:
                live = sum(1 for r in self.replicas.values() if r.member == member and r.sha256 == sha
                           and r.state in LIVE_STATES)
                if live < wanted:
                    return True
        return False

    def _decide(self, driver: Any, offers: list[OfferView], now: float) -> None:
        """One placement decision (``framework.serving.placement``) on the offers at hand (maybe
        none: drains need none), applied: drains, launches (one ACCEPT per agent), declines."""
        with self.lock:
            for view in offers:
                self.hostnames[view.agent_id] = view.hostname
            # What each agent runs of ours already (constraints such as max_per_agent count it).
            running: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            for replica in self.replicas.values():
                if replica.state is not ReplicaState.DRAINING:
                    running[replica.agent_id][replica.member] += 1
            agents = merge_by_agent(offers, self.prices, {}, {}, {a: dict(c) for a, c in running.items()}
                                    ) if offers else []
            for agent in agents:
                self.agent_prices[agent.agent_id] = agent.price
            snapshot = self.snapshot(now)
            # a re-pack is looked for with offers of an agent not looked at lately (per agent)
            looked = min((self._repack_looked.get(a.agent_id, float("-inf")) + REPACK_CHECK_SECONDS
                          for a in agents), default=now)
            snapshot = dataclasses.replace(snapshot, repack_not_before=max(self.repack_not_before, looked))
        decision = placement.decide(snapshot, agents, now)
        self.last_decision = decision
        with self.lock:
            if decision.repacked:
                self.repack_not_before = now + REPACK_INTERVAL_SECONDS
                log.info("re-pack: moving %d replica(s) to cheaper agents", len(decision.launches))
            if decision.repack_checked:
                self._repack_looked.update((a.agent_id, now) for a in agents)
            for drain in decision.drains:
                doomed = self.replicas.get(drain.replica_id)
                if doomed is not None:
                    self._drain(doomed, now, drain.reason.replace("_", " "))
            if decision.unplaced and decision.unplaced != self._unplaced_said and offers:
                log.info("replicas wait for offers that fit them: %s", "; ".join(decision.reasons) or
                         ", ".join(f"{m}: {n}" for m, n in decision.unplaced.items()))
            self._unplaced_said = dict(decision.unplaced) if offers else self._unplaced_said
        used = self._launch(driver, offers, agents, decision.launches, now)
        self._decline(driver, [o for o in offers if o.offer_id not in used], self.refuse_seconds)
        # Offers keep coming while nothing is wanted (declined for ``refuse_seconds``): a re-pack
        # needs them.  When replicas become wanted, REVIVE clears those filters at once.
        with self.lock:
            wanted = self._wanted()
            revive = wanted and not self._wanting and self.framework_id is not None
            self._wanting = wanted
        if revive:
            driver.reviveOffers()

    def _launch(self, driver: Any, offers: list[OfferView], agents: Sequence[Agent],
                launches: Sequence[placement.ReplicaLaunch], now: float) -> set[str]:
        """Accept the offers of each agent the decision launches on (one ACCEPT per agent)."""
        from framework.serving.state import ExecutorRecord, ReplicaRecord

        by_agent: dict[str, list[placement.ReplicaLaunch]] = defaultdict(list)
        for launch in launches:
            by_agent[launch.agent_id].append(launch)
        agent_of = {a.agent_id: a for a in agents}
        used: set[str] = set()
        for agent_id, mine in by_agent.items():
            agent = agent_of.get(agent_id)
            if agent is None:
                continue
            views = [o for o in offers if o.agent_id == agent_id]
            allocator = PoolAllocator(views, self.role)
            tasks: list[Message] = []
            records: list[Any] = []
            hosts: dict[str, Any] = {}
            with self.lock:
                free = self._free_ports(views)
                for launch in mine:
                    if not free:
                        log.info("no free port left on %s for a replica of %s", agent.hostname, launch.member)
                        break
                    target = self.targets.get(launch.member)
                    if target is None or launch.sha256 not in (target.sha256, self.held.get(launch.member)):
                        continue  # retargeted (or released) while deciding
                    port = free.pop(0)
                    key = self.catalog.executor_key(launch.member)
                    started = (agent_id, key) in self.executors
                    generation = self.executors.get((agent_id, key), max(
                        self.executor_generation[(agent_id, key)], self._generation_floor))
                    info_key = (agent_id, key, generation)
                    try:
                        if info_key not in self._executor_infos:
                            self._executor_infos[info_key] = self.catalog.executor_info(key, agent, allocator,
                                                                                       generation)
                        task_id = f"{launch.member}.replica-{self._token}-{next(self._count)}"
                        task = self.catalog.replica_info(launch.member, task_id, agent, allocator,
                                                         self._executor_infos[info_key], port,
                                                         predict_mode=self.predict_modes.get(launch.sha256),
                                                         sha256=launch.sha256)
                    except ValueError as error:  # the offer holds less than the placement thought
                        log.info("a replica of %s cannot be launched on %s now: %s", launch.member, agent.hostname,
                                 error)
                        if not started:
                            self._executor_infos.pop(info_key, None)
                        break
                    self.executors[(agent_id, key)] = generation
                    self.executor_generation[(agent_id, key)] = generation
                    self.hosting[(agent_id, translator.executor_id(key, generation))] = None
                    replica = LiveReplica(task_id, launch.member, agent_id, agent.hostname,
                                          self._address(agent.hostname), port, launch.sha256, key,
                                          translator.executor_id(key, generation), ReplicaState.LAUNCHING, now,
                                          replaces=launch.replaces, launched_at=now,
                                          wanted_at=now if launch.reason == "repack" else
                                          min(now, self._wanted_at.get(launch.member, now)))
                    self.replicas[task_id] = replica
                    tasks.append(task)
                    records.append(ReplicaRecord(task_id, launch.member, agent_id, agent.hostname, port,
                                                 launch.sha256, "launching", replica.executor_id))
                    hosts[replica.executor_id] = ExecutorRecord(agent_id, replica.executor_id, agent.hostname,
                                                                info=json.dumps(self._executor_infos[info_key]))
                    self._idle_journaled.pop((agent_id, replica.executor_id), None)
                    log.info("launching replica %s of %s on %s, port %d (%s)", task_id, launch.member,
                             agent.hostname, port, "the held model file, the gateway's until it switches"
                             if launch.reason == "held" else launch.reason.replace("_", " "))
            if not tasks:
                continue
            if self.state is not None:
                # before the launch is sent: never an unknown replica or executor
                self.state.record_launches(records, hosts.values())
            self.launched += len(tasks)
            used.update(v.offer_id for v in views)
            driver.launchTasks(translator.offer_ids(v.offer_id for v in views), tasks,
                               translator.filters(self.refuse_seconds))
        return used

    def _free_ports(self, views: list[OfferView]) -> list[int]:
        """The ports offered by these offers, lowest first, without those a replica of ours holds on
        the same address (every agent of a loopback cluster shares one) or failed to bind lately."""
        ranges = [r for view in views for r in _port_ranges(view)]
        if not ranges:
            return []
        address = self._address(views[0].hostname)
        now = self.clock()
        taken = {r.port for r in self.replicas.values() if r.address == address}
        taken |= {port for (where, port), until in self.bad_ports.items() if where == address and until > now}
        candidates = translator.free_ports(ranges, taken)
        return list(itertools.islice((p for p in candidates if not self.loopback or _bindable(p)), 16))

    def _decline(self, driver: Any, offers: list[OfferView], refuse_seconds: float) -> None:
        if offers:
            driver.declineOffer(translator.offer_ids(o.offer_id for o in offers), translator.filters(refuse_seconds))

    def _address(self, hostname: str) -> str:
        return "127.0.0.1" if self.loopback else hostname

    # --- main-thread API -------------------------------------------------------------------------
    def retarget(self, targets: Mapping[str, ServedMember], hold: bool = False) -> list[str]:
        """A reloaded job: members whose model changed roll to the new one; returns their names.
        ``hold`` (a stacking update): their replicas of the model they had stay as they are
        (ready, routed) beside the new ones until :meth:`release_held`; without it, a member
        retargeted is held no more (an update given up goes back to the held model)."""
        changed = []
        with self.lock:
            for name, target in targets.items():
                before = self.targets.get(name)
                if before is not None and before.sha256 != target.sha256:
                    changed.append(name)
                    self._wanted_at[name] = self.clock()
                    if hold:
                        self.held[name] = before.sha256
                    else:
                        self.held.pop(name, None)
                self.targets[name] = target
                self.desired[name] = max(target.min_replicas, min(target.max_replicas,
                                                                  self.desired.get(name, target.min_replicas)))
        self.poke()
        return changed

    def release_held(self) -> None:
        """A stacking update's switch is done: the held replicas drain (as a rolling update's)."""
        with self.lock:
            self.held.clear()
        self.poke()

    def drain_all(self) -> None:
        """Stop: every replica out of the table and killed (they finish what they have in flight)."""
        with self.lock:
            self.stopping = True
            now = self.clock()
            for replica in self.replicas.values():
                self._drain(replica, now, "serve stops")
                replica.kill_at = now
        driver = self._driver
        if driver is not None:
            with self.lock:
                ids = list(self.replicas)
            for task_id in ids:
                driver.killTask(translator.id_message(task_id))

    def model_files_in_use(self) -> set[str]:
        """The model files (sha256) a replica runs, or that a launch may still use: every replica's
        (launching, ready or draining), each member's target's and held one (``_launch`` checks
        a launch against those under the same lock)."""
        with self.lock:
            return ({r.sha256 for r in self.replicas.values()} | {t.sha256 for t in self.targets.values()}
                    | set(self.held.values()))

    def counts(self) -> dict[str, dict[str, int]]:
        """Per member: desired, and replicas by state."""
        with self.lock:
            result: dict[str, dict[str, int]] = {m: {"desired": self.desired.get(m, 0)} for m in self.targets}
            for replica in self.replicas.values():
                entry = result.setdefault(replica.member, {"desired": 0})
                state = "standby" if replica.state is ReplicaState.READY and not replica.routed else replica.state.value
                entry[state] = entry.get(state, 0) + 1
            return result

    def ready(self, member: str, sha256: str | None = None) -> list[LiveReplica]:
        with self.lock:
            return [r for r in self.replicas.values() if r.member == member and r.state is ReplicaState.READY
                    and (sha256 is None or r.sha256 == sha256)]

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Wait (main thread, tests) until ``condition()`` holds, re-checked on every replica change."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))
        return True

    def all_ready(self) -> bool:
        """Every member has at least its desired number of replicas of its current model ready and
        in the gateway's table (routed: a standby replica is ready and takes no request)."""
        with self.lock:
            return all(len([r for r in self.replicas.values() if r.member == m and r.sha256 == t.sha256
                            and r.state is ReplicaState.READY and r.routed]) >= self.desired.get(m, t.min_replicas)
                       for m, t in self.targets.items())


# --- helpers -----------------------------------------------------------------------------------
def describe_load(load: Any) -> str:
    """``load`` (a member's sample, or None) as the autoscaler read it, for the log: ``": rate
    12.0/s (recent 40.1/s, last second 61.0/s), busy 0.35, p99 82 ms, backlog 3, 1 ready"``."""
    if load is None:
        return ""
    try:
        text = f": rate {load.rate_rps:.1f}/s"
        recent = getattr(load, "recent_rate_rps", None)
        short = getattr(load, "short_rate_rps", None)
        if recent is not None:
            text += f" (recent {recent:.1f}/s" + (f", last second {short:.1f}/s)" if short is not None else ")")
        busy = getattr(load, "busy", None)
        if busy is not None:
            text += f", busy {busy:.2f}"
        return text + f", p99 {load.p99_ms:.0f} ms, backlog {load.queue_depth}, {load.replicas_ready} ready"
    except (AttributeError, TypeError, ValueError):  # a sample of another shape: the decision still stands
        return ""


def shutdown_executor(driver: Any, executor_id: str, agent_id: str) -> None:
    """Send the scheduler API's ``SHUTDOWN`` call for one executor (the agent sends it the
    ``SHUTDOWN`` event, kills it after its grace period, and its resources are offered again).
    pymesos (0.3.x) has no method for this call: a driver that has ``shutdownExecutor`` is asked
    to, a pymesos driver sends the call itself as its other methods do."""
    method = getattr(driver, "shutdownExecutor", None)
    if callable(method):
        method(translator.id_message(executor_id), translator.id_message(agent_id))
        return
    framework_id = getattr(driver, "framework_id", None)
    send = getattr(driver, "_send", None)
    if not framework_id or not getattr(driver, "connected", True) or send is None:
        raise RuntimeError("not subscribed to a master")
    send({"type": "SHUTDOWN", "framework_id": {"value": framework_id},
                  "shutdown": {"executor_id": translator.id_message(executor_id),
                               "agent_id": translator.id_message(agent_id)}})


def _placement_state(state: ReplicaState) -> placement.ReplicaState:
    if state is ReplicaState.READY:
        return "running"
    return "draining" if state is ReplicaState.DRAINING else "starting"


def _running_data(data: str | None) -> tuple[int | None, str | None, dict[str, float]]:
    """The replica's pid, predict mode and start phases from its TASK_RUNNING data (``{"port",
    "pid", "predict_mode", "phases"}``, an ``executor.protocol.ReplicaReady``)."""
    if not data:
        return None, None, {}
    try:
        document = json.loads(base64.b64decode(data))
    except (ValueError, TypeError):
        return None, None, {}
    if not isinstance(document, dict):
        return None, None, {}
    try:
        pid = int(document["pid"]) if "pid" in document else None
    except (ValueError, TypeError):
        pid = None
    mode = document.get("predict_mode")
    phases = document.get("phases")
    try:
        timed = {str(k): float(v) for k, v in phases.items()} if isinstance(phases, dict) else {}
    except (ValueError, TypeError, AttributeError):
        timed = {}
    return pid, mode if mode in ("thread", "process") else None, timed


def start_timeline(replica: LiveReplica, ready_at: float) -> str:
    """A ready replica's start, step by step, in seconds (for the log and the deployment's events):
    waiting for an offer (from the moment it was wanted to its launch), the launch until the
    executor says it runs (the executor's own timing of it in brackets), the health check."""
    launched = replica.launched_at if replica.launched_at is not None else replica.since
    running = replica.running_at if replica.running_at is not None else ready_at
    parts = []
    if replica.wanted_at is not None:
        parts.append(f"offer {max(0.0, launched - replica.wanted_at):.2f}")
    inside = ", ".join(f"{name} {seconds:.2f}" for name, seconds in replica.phases.items())
    parts.append(f"start {max(0.0, running - launched):.2f}" + (f" ({inside})" if inside else ""))
    parts.append(f"health check {max(0.0, ready_at - running):.2f}")
    total = ready_at - (replica.wanted_at if replica.wanted_at is not None else launched)
    return f"{total:.2f} s: " + ", ".join(parts)


def _bind_failed(message: str) -> bool:
    text = message.lower()
    return "address already in use" in text or "errno 98" in text or "cannot bind" in text


def _executor_of(executor_id: str) -> tuple[str, int]:
    """``ensemble.g3`` -> ("ensemble", 3)."""
    key, _, generation = executor_id.rpartition(".g")
    try:
        return key, int(generation)
    except ValueError:
        return "", 0


def _port_ranges(view: OfferView) -> list[tuple[int, int]]:
    """The port ranges an offer holds (``OfferView.ports``, read by ``framework.translator``)."""
    ranges = getattr(view, "ports", None) or ()
    return [(int(begin), int(end)) for begin, end in ranges]


def _bindable(port: int) -> bool:
    """On a loopback cluster (agents on this machine): whether nothing listens on ``port`` now
    (another program may hold a port the agents offer; a replica there would fail to bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_health(replica: LiveReplica) -> bool:
    """``GET /v1/health`` answers 200, ready, for the model the replica must run."""
    try:
        with urllib.request.urlopen(f"{replica.url}/v1/health", timeout=HEALTH_TIMEOUT_SECONDS) as response:
            if response.status != 200:
                return False
            document = json.loads(response.read() or b"{}")
    except (OSError, ValueError, urllib.error.URLError):
        return False
    return bool(document.get("ready", True)) and document.get("sha256", replica.sha256) == replica.sha256
