"""What the gateway measures: Prometheus metrics for ``/metrics`` and load samples for the autoscaler.

Every metric lives in the gateway's own ``CollectorRegistry`` (two gateways in one process do
not share counters). Names (all prefixed ``mesos_ensemble_``):

* ``requests_total{outcome}``: client requests by outcome (``ok``, ``degraded``: answered by fewer
  members than all, ``bad_request``, ``unavailable``: too few members answered, ``error``,
  ``rejected``: shed with a 503, ``timeout``: its deadline passed at a replica, a 504);
* ``rejected_requests_total{reason}``: client requests shed (``queue_full``, ``queue_timeout``,
  ``deadline``), and ``member_rejected_total{member,reason}``: each member's parts shed;
* ``request_seconds``: end-to-end latency of answered requests (histogram);
* ``member_requests_total{member,outcome}``, ``member_seconds{member}``: each member's part of a
  request, from queueing to its output (histogram);
* ``replica_calls_total{member,outcome}``: calls to replicas (``ok``, ``error``, ``cancelled``:
  lost a hedge race), ``hedges_total{member}``, ``failovers_total{member}``,
  ``batch_rows{member}`` (histogram of rows per call);
* gauges ``queue_depth{member}`` (requests waiting for a batch), ``in_flight{member}`` (requests
  in batches at replicas), ``replicas{member,state}`` (ready, draining), ``cost_per_hour`` and
  ``cost_lower_bound_per_hour`` (set by the controller).

:meth:`GatewayMetrics.load_samples` gives the autoscaler one
:class:`~framework.serving.autoscale.MemberLoad` per member over the last ``window_s`` seconds:
``rate_rps`` (requests for the member per second), ``queue_depth`` (requests waiting for a
replica now: the backlog, not requests a batch holds for company while a replica is free),
``in_flight`` (requests in batches at its replicas now), ``p99_ms`` (the member's latency,
queueing included; 0 without requests), ``replicas_ready``, ``recent_rate_rps`` (requests per
second over the last ``RECENT_S`` seconds: a step shows at once), ``short_rate_rps`` (the same over
``SHORT_S``) and ``busy`` (replica-seconds of
calls to its replicas per second over the window: how many replicas were busy on average).

Shed load stays visible to the autoscaler as demand: ``rate_rps`` counts every request that
arrived for the member, shed or not, and ``queue_depth`` adds to the backlog the requests shed
for capacity (``queue_full``, ``queue_timeout``) over the window: the requests that would be
waiting had the queue no cap (so a member shedding at its ``max_queue`` still reads as a growing
queue, and is not mistaken for one that carries its rate).  A request that timed out in the queue
counts in the p99 with the time it waited.  :meth:`GatewayMetrics.rejected_rates` gives the shed
requests per second by member and reason.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from framework.serving.autoscale import RECENT_S, SHORT_S, MemberLoad
from framework.serving.balancer import percentile

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
                   0.75, 1.0, 2.5, 5.0, 10.0, float("inf"))
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, float("inf"))
DEFAULT_WINDOW_S = 10.0
SHED_REASONS = ("queue_full", "queue_timeout", "deadline")
CAPACITY_REASONS = frozenset({"queue_full", "queue_timeout"})
"""Reasons a request is shed that say the member lacks replicas (a deadline may be the client's own)."""


class LoadWindow:
    """Arrivals and latencies of one member over the last ``window_s`` seconds (clock given)."""

    def __init__(self, window_s: float = DEFAULT_WINDOW_S, started: float = 0.0) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self.started = started
        self.arrivals: deque[float] = deque()
        self.latencies: deque[tuple[float, float]] = deque()
        self.calls: deque[tuple[float, float]] = deque()
        """(end, seconds) of every call to a replica."""
        self.shed: deque[tuple[float, str]] = deque()
        self.left: deque[float] = deque()
        """When each of the member's requests left its queue answered (or failed at replicas)."""

    def arrived(self, now: float) -> None:
        self.arrivals.append(now)

    def rejected(self, now: float, reason: str) -> None:
        self.shed.append((now, reason))

    def answered(self, now: float, seconds: float) -> None:
        self.latencies.append((now, seconds))

    def drained(self, now: float) -> None:
        """One of the member's requests came back from its replicas (answered or failed)."""
        self.left.append(now)

    def called(self, now: float, seconds: float) -> None:
        """A call to a replica ended after ``seconds`` (answered, failed or given up)."""
        self.calls.append((now, seconds))

    def _trim(self, now: float) -> None:
        horizon = now - self.window_s
        while self.arrivals and self.arrivals[0] < horizon:
            self.arrivals.popleft()
        while self.latencies and self.latencies[0][0] < horizon:
            self.latencies.popleft()
        while self.calls and self.calls[0][0] < horizon:
            self.calls.popleft()
        while self.shed and self.shed[0][0] < horizon:
            self.shed.popleft()
        while self.left and self.left[0] < horizon:
            self.left.popleft()

    def _span(self, now: float, window_s: float) -> float:
        return min(window_s, max(1.0, now - self.started))

    def rate(self, now: float) -> float:
        """Arrivals per second over the window (or over the time since ``started``, at least 1 s)."""
        self._trim(now)
        return len(self.arrivals) / self._span(now, self.window_s)

    def recent_rate(self, now: float, recent_s: float = RECENT_S) -> float:
        """Arrivals per second over the last ``recent_s`` seconds (at most the window)."""
        self._trim(now)
        span = self._span(now, min(recent_s, self.window_s))
        horizon = now - span
        count = 0
        for t in reversed(self.arrivals):
            if t < horizon:
                break
            count += 1
        return count / span

    def drain_rate(self, now: float) -> float:
        """Requests that came back from the member's replicas per second over the window (the
        rate its queue drains at; the window's span as :meth:`rate`'s)."""
        self._trim(now)
        return len(self.left) / self._span(now, self.window_s)

    def busy(self, now: float) -> float:
        """Replica-seconds of calls that ended in the window, per second of it."""
        self._trim(now)
        return sum(seconds for _t, seconds in self.calls) / self._span(now, self.window_s)

    def shed_count(self, now: float, reasons: Collection[str] = CAPACITY_REASONS) -> int:
        """Requests shed over the window for one of ``reasons``."""
        self._trim(now)
        return sum(1 for _t, reason in self.shed if reason in reasons)

    def shed_rates(self, now: float) -> dict[str, float]:
        """Requests shed per second over the window, by reason (every reason, 0.0 when none)."""
        self._trim(now)
        span = self._span(now, self.window_s)
        return {reason: sum(1 for _t, r in self.shed if r == reason) / span for reason in SHED_REASONS}

    def p99_ms(self, now: float) -> float:
        self._trim(now)
        return 1000.0 * percentile([s for _t, s in self.latencies], 99.0)


@dataclass(frozen=True)
class LiveState:
    """A member's state now, read from the gateway's batcher and replica table."""

    queue_depth: int
    in_flight: int
    replicas_ready: int
    replicas_draining: int = 0
    backlog: int = 0
    """Requests waiting for a replica (every batch slot taken), not for company: the
    autoscaler's queue (``MemberBatcher.backlog``)."""


class GatewayMetrics:
    """The gateway's metrics (thread-safe: the gateway's loop writes, the controller reads)."""

    def __init__(self, members: Sequence[str], window_s: float = DEFAULT_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic, registry: CollectorRegistry | None = None) -> None:
        self.members = tuple(members)
        self.clock = clock
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("mesos_ensemble_requests", "Client requests by outcome", ["outcome"], registry=r)
        self.request_seconds = Histogram("mesos_ensemble_request_seconds", "End-to-end latency of answered requests",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.member_requests = Counter("mesos_ensemble_member_requests", "Members' parts of requests by outcome",
                                       ["member", "outcome"], registry=r)
        self.member_seconds = Histogram("mesos_ensemble_member_seconds",
                                        "A member's latency for a request, queueing and batching included",
                                        ["member"], buckets=LATENCY_BUCKETS, registry=r)
        self.replica_calls = Counter("mesos_ensemble_replica_calls", "Calls (batches) to replicas by outcome",
                                     ["member", "outcome"], registry=r)
        self.replica_busy = Counter("mesos_ensemble_replica_busy_seconds",
                                    "Replica-seconds of calls (a call's share of its replica's time): per second, "
                                    "how many replicas were busy", ["member"], registry=r)
        self.hedges = Counter("mesos_ensemble_hedges", "Calls hedged to a second replica", ["member"], registry=r)
        self.failovers = Counter("mesos_ensemble_failovers", "Failed calls sent again to another replica",
                                 ["member"], registry=r)
        self.batch_rows = Histogram("mesos_ensemble_batch_rows", "Rows per call to a replica", ["member"],
                                    buckets=ROW_BUCKETS, registry=r)
        self.queue_depth = Gauge("mesos_ensemble_queue_depth", "Requests waiting for a batch", ["member"], registry=r)
        self.in_flight = Gauge("mesos_ensemble_in_flight", "Requests in batches at replicas", ["member"], registry=r)
        self.replicas = Gauge("mesos_ensemble_replicas", "Replicas by state", ["member", "state"], registry=r)
        self.cost_per_hour = Gauge("mesos_ensemble_cost_per_hour", "The deployment's cost per hour", registry=r)
        self.cost_lower_bound_per_hour = Gauge("mesos_ensemble_cost_lower_bound_per_hour",
                                               "The packer's lower bound of the cost per hour", registry=r)
        self.rejected = Counter("mesos_ensemble_rejected_requests", "Client requests shed (503/504) by reason",
                                ["reason"], registry=r)
        self.member_rejected = Counter("mesos_ensemble_member_rejected", "Members' parts of requests shed by reason",
                                       ["member", "reason"], registry=r)
        for outcome in ("ok", "degraded", "bad_request", "unavailable", "error", "rejected", "timeout"):
            self.requests.labels(outcome)
        for reason in SHED_REASONS:
            self.rejected.labels(reason)
        now = clock()
        self._children: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()
        self._windows = {m: LoadWindow(window_s, now) for m in self.members}
        for m in self.members:
            self.member_seconds.labels(m)
            self.hedges.labels(m)
            self.failovers.labels(m)
            for state in ("ready", "draining"):
                self.replicas.labels(m, state)

    # Written by the gateway -----------------------------------------------------------------
    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once (the hot path counts every request)."""
        key = (id(metric),) + labels
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request(self, outcome: str, seconds: float | None = None) -> None:
        """A client request ended with ``outcome`` (its latency counts when answered)."""
        self._child(self.requests, outcome).inc()
        if seconds is not None:
            self.request_seconds.observe(seconds)

    def replica_call(self, member: str, outcome: str, seconds: float | None = None) -> None:
        """A call to a replica of ``member`` ended: ``ok``, ``error`` or ``cancelled``, after
        ``seconds`` (the replica's time it took: the autoscaler's busy measure)."""
        self._child(self.replica_calls, member, outcome).inc()
        if seconds is not None:
            self._child(self.replica_busy, member).inc(seconds)
            with self._lock:
                self._windows[member].called(self.clock(), seconds)

    def hedge(self, member: str) -> None:
        self._child(self.hedges, member).inc()

    def failover(self, member: str) -> None:
        self._child(self.failovers, member).inc()

    def batch(self, member: str, rows: int) -> None:
        self._child(self.batch_rows, member).observe(rows)

    def member_arrived(self, member: str) -> None:
        with self._lock:
            self._windows[member].arrived(self.clock())

    def request_rejected(self, reason: str, sent: bool = False) -> None:
        """A client request was shed for ``reason`` (503; 504 when its deadline passed at a replica)."""
        self.request("timeout" if sent else "rejected")
        self._child(self.rejected, reason).inc()

    def member_rejected_part(self, member: str, reason: str, waited: float | None = None) -> None:
        """``member``'s part of a request was shed for ``reason``; ``waited``: how long it had been
        queued, counted in the member's latency window for a queue timeout."""
        self._child(self.member_rejected, member, reason).inc()
        now = self.clock()
        with self._lock:
            window = self._windows[member]
            window.rejected(now, reason)
            if waited is not None and reason == "queue_timeout":
                window.answered(now, waited)

    def member_answered(self, member: str, seconds: float, ok: bool) -> None:
        self._child(self.member_requests, member, "ok" if ok else "failed").inc()
        if ok:
            self._child(self.member_seconds, member).observe(seconds)
        with self._lock:
            window = self._windows[member]
            now = self.clock()
            window.answered(now, seconds)
            window.drained(now)

    def observe(self, live: Mapping[str, LiveState]) -> None:
        """Set the gauges from the members' state now."""
        for member, state in live.items():
            self.queue_depth.labels(member).set(state.queue_depth)
            self.in_flight.labels(member).set(state.in_flight)
            self.replicas.labels(member, "ready").set(state.replicas_ready)
            self.replicas.labels(member, "draining").set(state.replicas_draining)

    # Written by the controller --------------------------------------------------------------
    def set_cost_per_hour(self, cost: float, lower_bound: float | None = None) -> None:
        self.cost_per_hour.set(cost)
        if lower_bound is not None:
            self.cost_lower_bound_per_hour.set(lower_bound)

    # Read -----------------------------------------------------------------------------------
    def load_samples(self, live: Mapping[str, LiveState]) -> dict[str, MemberLoad]:
        """One ``MemberLoad`` per member over the last window."""
        now = self.clock()
        with self._lock:
            rates = {m: w.rate(now) for m, w in self._windows.items()}
            recent = {m: w.recent_rate(now) for m, w in self._windows.items()}
            short = {m: w.recent_rate(now, SHORT_S) for m, w in self._windows.items()}
            busy = {m: w.busy(now) for m, w in self._windows.items()}
            p99s = {m: w.p99_ms(now) for m, w in self._windows.items()}
            shed = {m: w.shed_count(now) for m, w in self._windows.items()}
        empty = LiveState(0, 0, 0)
        return {m: MemberLoad(member=m, rate_rps=rates[m], queue_depth=live.get(m, empty).backlog + shed[m],
                              in_flight=live.get(m, empty).in_flight, p99_ms=p99s[m],
                              replicas_ready=live.get(m, empty).replicas_ready, recent_rate_rps=recent[m],
                              short_rate_rps=short[m], busy=busy[m])
                for m in self.members}

    def drain_rates(self) -> dict[str, float]:
        """Per member, its requests that came back from its replicas per second over the last window."""
        now = self.clock()
        with self._lock:
            return {m: w.drain_rate(now) for m, w in self._windows.items()}

    def rejected_rates(self) -> dict[str, dict[str, float]]:
        """Per member, its parts of requests shed per second over the last window, by reason."""
        now = self.clock()
        with self._lock:
            return {m: w.shed_rates(now) for m, w in self._windows.items()}

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
