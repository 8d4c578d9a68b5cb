"""Watching a deployment: the sampler that records its history, and its status page.

:class:`DeploymentMonitor` runs on its own thread in the ``serve`` process.  Every ``interval``
seconds it reads the gateway's Prometheus registry (counters and histograms: reading takes the
metrics' own locks for microseconds, the gateway's asyncio loop never waits on us), the
controller's replicas and its last cost report, makes one :class:`~framework.serving.history.Point`
(pure: :func:`framework.serving.history.sample`), and writes it, the events logged since and a
snapshot of the members and replicas to the deployment's journal
(:class:`~framework.serving.state.ServeState`), rolling complete buckets up into the coarser
tiers and dropping what is past each tier's retention (:data:`framework.serving.history.TIERS`).

Events are the controller's own log lines at INFO and above (scaling, placement, drains,
re-packs, replacements, each with its reason) and the service's notes (reloads), caught by a
:class:`logging.Handler` (:class:`EventLog`), secrets redacted.

The status page is the live status machinery of batch jobs (:class:`framework.live_status.
StatusServer`, on ``[framework] status_port``), here with the deployment's document
(:func:`read_document`: from the journal, as ``mesos-ensemble status`` reads it) and page
(:func:`framework.serving.page.render_page`).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from framework.serving import history
from framework.serving.history import TIERS, Counters, Point, Tier
from framework.serving.state import ServeState, read_live

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 5.0
"""How often ``serve`` samples its deployment into the journal."""
PAGE_WINDOW_SECONDS = 3600.0
"""The live status page shows the last hour (``status`` and ``status --report`` the whole history):
building its document from ~720 points costs the serve process ~0.1 s of CPU, at most once per
sample however many watch (:func:`cached`)."""
STALE_COST_SECONDS = 10.0
"""A cost report older than this (and than three samples) is not sampled: the controller stopped reporting."""
EVENT_LOGGERS = ("framework.serving.controller", "framework.serving.service")


class EventLog(logging.Handler):
    """Keeps the INFO+ log records of the controller (and the service's notes) as events, with
    every secret replaced; :meth:`take` hands them over.

    What the command line prints does not change: where a logger is quieter than INFO (``serve``
    without ``-v`` logs warnings), :meth:`attach` lets it emit INFO to this handler only (it stops
    propagating and this handler passes on what the logger would have let through before, to
    its parent's handlers, as propagation does); :meth:`detach` puts it back."""

    def __init__(self, secrets: Iterable[str | None] = (), most: int = 1000,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(logging.INFO)
        self.secrets = [s for s in secrets if s]
        self.clock = clock
        self._events: collections.deque[tuple[float, str]] = collections.deque(maxlen=most)
        self._lock_events = threading.Lock()
        self._quieter: dict[str, tuple[int, int, bool]] = {}
        """Per logger made to emit INFO: its effective level, own level and propagation before."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.add(record.getMessage())
        except Exception:  # a log line must never fail the code that logs it
            self.handleError(record)

    def handle(self, record: logging.LogRecord) -> bool:
        emitted = super().handle(record)
        before = self._quieter.get(record.name)
        if before is not None and before[2] and record.levelno >= before[0]:
            parent = logging.getLogger(record.name).parent
            if parent is not None:
                parent.callHandlers(record)  # what propagation did: the ancestors' handlers
        return bool(emitted)

    def add(self, text: str) -> None:
        for secret in self.secrets:
            text = text.replace(secret, "<redacted>")
        with self._lock_events:
            self._events.append((self.clock(), text))

    def take(self) -> list[tuple[float, str]]:
        with self._lock_events:
            events, self._events = list(self._events), collections.deque(maxlen=self._events.maxlen)
        return events

    def attach(self) -> "EventLog":
        for name in EVENT_LOGGERS:
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() > logging.INFO:
                self._quieter[name] = (logger.getEffectiveLevel(), logger.level, logger.propagate)
                logger.setLevel(logging.INFO)
                logger.propagate = False
            logger.addHandler(self)
        return self

    def detach(self) -> None:
        for name in EVENT_LOGGERS:
            logger = logging.getLogger(name)
            logger.removeHandler(self)
            if name in self._quieter:
                _effective, level, logger.propagate = self._quieter.pop(name)
                logger.setLevel(level)


class DeploymentMonitor:
    """Samples a deployment into its journal every ``interval`` seconds (see the module docstring).

    ``registry``: the gateway's Prometheus registry (``gateway.metrics.registry``);
    ``controller``: the :class:`~framework.serving.controller.ServingController` (read: its
    ``counts()``, ``replicas``, ``targets``, ``desired``, ``agent_prices``, ``cost_history``);
    ``describe``: the snapshot's constant part (job, gateway and status page addresses)."""

    def __init__(self, state: ServeState, controller: Any, registry: Any, describe: Mapping[str, Any],
                 events: EventLog, interval: float = SAMPLE_SECONDS, wall_clock: Callable[[], float] = time.time,
                 tiers: Sequence[Tier] = TIERS) -> None:
        self.state, self.controller, self.registry = state, controller, registry
        self.describe = dict(describe)
        self.events = events
        self.interval = interval
        self.tiers = tuple(tiers)
        self.wall_clock = wall_clock
        self.started_at = wall_clock()
        self.samples = 0
        self._before = Counters()
        self._before_at = self.started_at
        self._last_t: float | None = state.last_point_time(0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serve-monitor", daemon=True)

    def start(self) -> "DeploymentMonitor":
        self._before = history.read_counters(self.registry.collect())
        self._before_at = self.wall_clock()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling, after one last sample (what happened since the previous one is kept)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._sample_safely()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample_safely()

    def _sample_safely(self) -> None:
        try:
            self.sample_now()
        except Exception:  # watching must never stop serving
            log.warning("sampling the deployment failed", exc_info=True)

    def snapshot(self, now: float) -> dict[str, Any]:
        """The members and replicas now (agent, price, state), for the journal's ``deployment``."""
        controller = self.controller
        with controller.lock:
            replicas = [{"task_id": r.task_id, "member": r.member, "agent_id": r.agent_id, "hostname": r.hostname,
                         "port": r.port, "state": r.state.value, "sha256": r.sha256,
                         "price": controller.agent_prices.get(r.agent_id)} for r in controller.replicas.values()]
            targets = {m: {"sha256": t.sha256, "min_replicas": t.min_replicas, "max_replicas": t.max_replicas,
                           "desired": controller.desired.get(m, t.min_replicas)}
                       for m, t in controller.targets.items()}
            framework_id = controller.framework_id
        return {**self.describe, "framework_id": framework_id, "started_at": self.started_at, "updated_at": now,
                "targets": targets, "replicas": replicas}

    def _cost(self) -> tuple[float, float] | None:
        """The controller's latest cost per hour and lower bound; None once it stops (its replicas
        drain: the last figures no longer hold) or when its latest report is stale."""
        controller = self.controller
        latest = controller.cost_history[-1] if controller.cost_history else None
        if latest is None or getattr(controller, "stopping", False) \
                or latest[0] < controller.clock() - max(3 * self.interval, STALE_COST_SECONDS):
            return None
        return float(latest[1]), float(latest[2])

    def sample_now(self) -> Point:
        """Take one sample now and write it (with the events and the snapshot) to the journal."""
        now = self.wall_clock()
        after = history.read_counters(self.registry.collect())
        counts = self.controller.counts()
        cost = self._cost()
        point = history.sample(now, max(0.0, now - self._before_at), self._before, after, counts, cost)
        self._before, self._before_at = after, now
        self.state.add_events(self.events.take())
        self.state.save_snapshot(self.snapshot(now))
        record(self.state, point, self._last_t, self.tiers)
        self._last_t = point.t
        self.samples += 1
        return point


def record(state: ServeState, point: Point, previous_t: float | None, tiers: Sequence[Tier] = TIERS) -> None:
    """Store a raw point (tier 0) sampled after one at ``previous_t``: the coarser tiers' buckets
    it completes are made from the finer tiers' points (finest first: a 15-minute bucket reads
    the minute points just made); then each tier's retention is applied."""
    state.add_points([(0, point.t, json.dumps(point.to_json()))])
    for index in range(1, len(tiers)):
        bucket = history.completed_bucket(previous_t, point.t, tiers[index].width)
        if bucket is None:
            continue
        finer = [Point.from_json(json.loads(text)) for text in state.points(index - 1, *bucket)]
        if finer:
            rolled = history.aggregate(finer)
            state.add_points([(index, rolled.t, json.dumps(rolled.to_json()))])
    state.prune([(i, point.t - tier.keep) for i, tier in enumerate(tiers)])


def read_points(state: ServeState, tiers: Sequence[Tier] = TIERS, since: float = float("-inf")) -> list[Point]:
    """The journal's history (from ``since``) as one series, oldest first (coarse tiers where the
    fine ones were dropped)."""
    return history.merge_tiers([[Point.from_json(json.loads(text)) for text in state.points(i, since)]
                                for i in range(len(tiers))])


def render_once(render: Callable[[Mapping[str, Any]], str]) -> Callable[[Mapping[str, Any]], str]:
    """``render`` of a document (by identity: :func:`cached` hands out the same one) done once."""
    memo: list[tuple[Mapping[str, Any], str]] = []
    lock = threading.Lock()

    def call(document: Mapping[str, Any]) -> str:
        with lock:
            if not memo or memo[0][0] is not document:
                memo[:] = [(document, render(document))]
            return memo[0][1]
    return call


def cached(function: Callable[[], dict[str, Any]], seconds: float,
           clock: Callable[[], float] = time.monotonic) -> Callable[[], dict[str, Any]]:
    """``function`` computed at most once per ``seconds`` (the page refreshes every two seconds,
    for every viewer; its document changes once per sample): the serve process, where the
    gateway's loop runs, spends little on watchers."""
    lock = threading.Lock()
    memo: list[tuple[float, dict[str, Any]]] = []

    def call() -> dict[str, Any]:
        with lock:
            if not memo or clock() - memo[0][0] >= seconds:
                memo[:] = [(clock(), function())]
            return memo[0][1]
    return call


def read_document(state_dir: Path, state: ServeState | None = None, now: float | None = None,
                  live: bool | None = None, window: float | None = None) -> dict[str, Any]:
    """The deployment's summary (:func:`framework.serving.history.summary`) from its journal in
    ``state_dir`` (``state``: one open already), whether its ``serve`` runs or not (``live``:
    known by the caller; else whether a live ``serve`` holds the directory); ``window``: only
    the history of that many seconds before ``now`` (the live page's), else all of it."""
    opened = state is None
    journal = ServeState.read(state_dir) if state is None else state
    now = time.time() if now is None else now
    try:
        snapshot = journal.snapshot()
        points = read_points(journal, since=float("-inf") if window is None else now - window)
        events = journal.events()
    finally:
        if opened:
            journal.close()
    running = read_live(state_dir)
    if running is not None:
        snapshot = {**snapshot, "url": running.get("url", snapshot.get("url")),
                    "status_url": running.get("status_url", snapshot.get("status_url"))}
    serving = running is not None if live is None else live
    return history.summary(snapshot, points, events, serving, now)


def watch(stack: ExitStack, state_dir: Path, state: ServeState, controller: Any, registry: Any,
          describe: Mapping[str, Any], *, bind: str, port: int, advertise_host: str | None,
          secrets: Iterable[str | None], interval: float = SAMPLE_SECONDS) -> tuple[str, EventLog]:
    """Start watching a deployment (``serve``'s hook): the event log, the status page (the live
    status server of batch jobs, with :func:`framework.serving.page.render_page`, on ``port``)
    and the sampler; each undone by ``stack``.  Returns the page's address and the event log."""
    from framework.live_status import StatusServer
    from framework.serving.page import render_page

    events = EventLog(secrets=secrets).attach()
    stack.callback(events.detach)
    document = cached(lambda: read_document(state_dir, state, live=True, window=PAGE_WINDOW_SECONDS),
                      min(interval, SAMPLE_SECONDS))
    status = StatusServer(document, bind=bind, port=port, render=render_once(render_page),
                          advertise_host=advertise_host).start()
    stack.callback(status.stop)
    monitor = DeploymentMonitor(state, controller, registry, {**describe, "status_url": status.url}, events,
                                interval=interval).start()
    stack.callback(monitor.stop)
    return status.url, events
