"""A deployment's history: what ``serve`` samples every few seconds, kept bounded, and summed up.

Pure (no Mesos, HTTP, sqlite or clock): :mod:`framework.serving.monitor` takes the samples and
:mod:`framework.serving.state` stores them.

A :class:`Point` covers the ``span`` seconds before its time ``t``: the deployment's cost per
hour and the packer's lower bound then (``None`` while unknown), the requests answered, the
errors, the end-to-end latency, and per member its replicas (ready, starting, draining,
desired), requests, errors and latency.  Latencies are kept as the counts per bucket of the
gateway's Prometheus histograms (the increase over the span), so a point made of many points
(:func:`aggregate`) has the exact counts, and p50/p99 are read from them as Prometheus'
``histogram_quantile`` reads them (linear within a bucket).

Retention (:data:`TIERS`): raw points (one per sample) for two hours, one point a minute for two
days, one per 15 minutes for 90 days; each coarser point is the :func:`aggregate` of the finer
points of its bucket, made once the bucket is complete (:func:`completed_bucket`); older points
are dropped.  A deployment running for months keeps at most ~13,000 points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

Buckets = Mapping[str, float]
"""A histogram's increase: per bucket upper bound (``le`` as Prometheus writes it), the count in
that bucket alone (not cumulative); empty buckets left out."""


@dataclass(frozen=True)
class Tier:
    """One resolution of the history: points ``width`` seconds apart (0: every sample), kept ``keep`` seconds."""

    width: float
    keep: float


TIERS = (Tier(0.0, 2 * 3600.0), Tier(60.0, 2 * 86400.0), Tier(900.0, 90 * 86400.0))
RECENT_SECONDS = 60.0
"""The summary's figures (rate, latency, errors) are those of the last minute's points."""
ENDED_STATES = ("draining",)
STARTING_STATES = ("launching", "starting", "checking", "adopting")


@dataclass(frozen=True)
class MemberPoint:
    """One member over a point's span."""

    ready: int = 0
    starting: int = 0
    draining: int = 0
    desired: int = 0
    requests: float = 0.0
    errors: float = 0.0
    latency: Buckets = field(default_factory=dict)
    busy: float = 0.0
    """Replica-seconds of calls over the span (over the span: how many replicas were busy)."""

    def to_json(self) -> dict[str, Any]:
        return {"ready": self.ready, "starting": self.starting, "draining": self.draining, "desired": self.desired,
                "requests": self.requests, "errors": self.errors, "latency": dict(self.latency), "busy": self.busy}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> "MemberPoint":
        return cls(int(document.get("ready", 0)), int(document.get("starting", 0)), int(document.get("draining", 0)),
                   int(document.get("desired", 0)), float(document.get("requests", 0.0)),
                   float(document.get("errors", 0.0)), {str(k): float(v) for k, v in
                                                        dict(document.get("latency") or {}).items()},
                   float(document.get("busy", 0.0)))


@dataclass(frozen=True)
class Point:
    """The deployment over the ``span`` seconds up to ``t`` (wall-clock seconds since the epoch)."""

    t: float
    span: float
    cost_per_hour: float | None = None
    lower_bound_per_hour: float | None = None
    requests: float = 0.0
    """Client requests answered (in full or by fewer members)."""
    errors: float = 0.0
    """Client requests that got a 5xx (an error, or too few members answered)."""
    bad_requests: float = 0.0
    latency: Buckets = field(default_factory=dict)
    members: Mapping[str, MemberPoint] = field(default_factory=dict)
    rejected: float = 0.0
    """Client requests shed by the gateway's overload protection (503 with Retry-After, or 504 when
    their deadline passed at a replica): not errors, the load it would not queue."""

    @property
    def rate_rps(self) -> float:
        return self.requests / self.span if self.span > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "span": self.span, "cost": self.cost_per_hour, "bound": self.lower_bound_per_hour,
                "requests": self.requests, "errors": self.errors, "bad": self.bad_requests,
                "latency": dict(self.latency), "members": {m: p.to_json() for m, p in self.members.items()},
                "rejected": self.rejected}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> "Point":
        def number(key: str) -> float | None:
            value = document.get(key)
            return None if value is None else float(value)

        return cls(float(document["t"]), float(document["span"]), number("cost"), number("bound"),
                   float(document.get("requests", 0.0)), float(document.get("errors", 0.0)),
                   float(document.get("bad", 0.0)),
                   {str(k): float(v) for k, v in dict(document.get("latency") or {}).items()},
                   {str(m): MemberPoint.from_json(p) for m, p in dict(document.get("members") or {}).items()},
                   rejected=float(document.get("rejected", 0.0)))


# --- reading the gateway's counters --------------------------------------------------------------
@dataclass(frozen=True)
class Counters:
    """The gateway's cumulative counters at one moment (read from its Prometheus registry)."""

    requests: Mapping[str, float] = field(default_factory=dict)
    """Client requests by outcome (``ok``, ``degraded``, ``bad_request``, ``unavailable``, ``error``,
    ``rejected``, ``timeout``)."""
    latency: Buckets = field(default_factory=dict)
    """End-to-end latency: cumulative count per ``le``."""
    member_requests: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """Per member, its parts of requests by outcome (``ok``, ``failed``)."""
    member_latency: Mapping[str, Buckets] = field(default_factory=dict)
    """Per member, cumulative count per ``le``."""
    member_busy: Mapping[str, float] = field(default_factory=dict)
    """Per member, replica-seconds of calls (the autoscaler's busy measure, cumulative)."""


def read_counters(families: Iterable[Any]) -> Counters:
    """The counters of :mod:`framework.serving.metrics` from metric families as a Prometheus
    registry's ``collect()`` yields them (objects with ``samples``: ``name``, ``labels``, ``value``)."""
    requests: dict[str, float] = {}
    latency: dict[str, float] = {}
    member_requests: dict[str, dict[str, float]] = {}
    member_latency: dict[str, dict[str, float]] = {}
    member_busy: dict[str, float] = {}
    for family in families:
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if name == "mesos_ensemble_requests_total":
                requests[labels["outcome"]] = value
            elif name == "mesos_ensemble_request_seconds_bucket":
                latency[labels["le"]] = value
            elif name == "mesos_ensemble_member_requests_total":
                member_requests.setdefault(labels["member"], {})[labels["outcome"]] = value
            elif name == "mesos_ensemble_member_seconds_bucket":
                member_latency.setdefault(labels["member"], {})[labels["le"]] = value
            elif name == "mesos_ensemble_replica_busy_seconds_total":
                member_busy[labels["member"]] = value
    return Counters(requests, latency, member_requests, member_latency, member_busy)


def _le(key: str) -> float:
    return math.inf if key in ("+Inf", "inf") else float(key)


def bucket_increase(before: Buckets, after: Buckets) -> dict[str, float]:
    """The counts per bucket (not cumulative) that cumulative histograms ``before`` -> ``after``
    gained; a counter that went down (the gateway restarted) counts from zero."""
    keys = sorted(after, key=_le)
    reset = any(after[k] < before.get(k, 0.0) for k in keys)
    increase: dict[str, float] = {}
    below = 0.0
    for key in keys:
        cumulative = after[key] - (0.0 if reset else before.get(key, 0.0))
        if cumulative - below > 0:
            increase[key] = cumulative - below
        below = max(below, cumulative)
    return increase


def _count_increase(before: Mapping[str, float], after: Mapping[str, float], keys: Iterable[str]) -> float:
    total = 0.0
    for key in keys:
        gained = after.get(key, 0.0) - before.get(key, 0.0)
        total += after.get(key, 0.0) if gained < 0 else gained
    return total


def quantile(q: float, buckets: Buckets) -> float | None:
    """The ``q``-quantile (0..1) of the observations counted in ``buckets`` (not cumulative), in
    the buckets' unit, linear within a bucket as Prometheus' ``histogram_quantile``; ``None``
    without observations.  An observation in the ``+Inf`` bucket reads as the highest finite bound."""
    ordered = sorted(((_le(k), c) for k, c in buckets.items() if c > 0), key=lambda item: item[0])
    total = sum(c for _le_, c in ordered)
    if total <= 0:
        return None
    rank = q * total
    lower, seen = 0.0, 0.0
    for upper, count in ordered:
        if seen + count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * ((rank - seen) / count)
        seen += count
        lower = upper if not math.isinf(upper) else lower
    return lower


def milliseconds(value: float | None) -> float | None:
    return None if value is None else 1000.0 * value


def sample(t: float, span: float, before: Counters, after: Counters, replicas: Mapping[str, Mapping[str, int]],
           cost: tuple[float, float] | None) -> Point:
    """The point for ``span`` seconds up to ``t``: the counters' increase from ``before`` to
    ``after``, the members' replicas now (``controller.counts()``: per member ``desired`` and a
    count per replica state) and the cost per hour with its lower bound (``None``: not known yet)."""
    members: dict[str, MemberPoint] = {}
    for member in sorted(set(replicas) | set(after.member_requests) | set(after.member_latency)):
        counts = replicas.get(member, {})
        outcomes = after.member_requests.get(member, {})
        earlier = before.member_requests.get(member, {})
        members[member] = MemberPoint(
            ready=int(counts.get("ready", 0)), starting=sum(int(counts.get(s, 0)) for s in STARTING_STATES),
            draining=int(counts.get("draining", 0)), desired=int(counts.get("desired", 0)),
            requests=_count_increase(earlier, outcomes, outcomes),
            errors=_count_increase(earlier, outcomes, [o for o in outcomes if o != "ok"]),
            latency=bucket_increase(before.member_latency.get(member, {}), after.member_latency.get(member, {})),
            busy=_count_increase(before.member_busy, after.member_busy, (member,)))
    return Point(t=t, span=span, cost_per_hour=None if cost is None else cost[0],
                 lower_bound_per_hour=None if cost is None else cost[1],
                 requests=_count_increase(before.requests, after.requests, ("ok", "degraded")),
                 errors=_count_increase(before.requests, after.requests, ("error", "unavailable")),
                 bad_requests=_count_increase(before.requests, after.requests, ("bad_request",)),
                 latency=bucket_increase(before.latency, after.latency), members=members,
                 rejected=_count_increase(before.requests, after.requests, ("rejected", "timeout")))


# --- downsampling ---------------------------------------------------------------------------------
def _add(a: Buckets, b: Buckets) -> dict[str, float]:
    total = dict(a)
    for key, count in b.items():
        total[key] = total.get(key, 0.0) + count
    return total


def _weighted_mean(values: Sequence[tuple[float | None, float]]) -> float | None:
    known = [(v, w) for v, w in values if v is not None]
    weight = sum(w for _v, w in known)
    if not known:
        return None
    if weight <= 0:
        return sum(v for v, _w in known) / len(known)
    return sum(v * w for v, w in known) / weight


def aggregate(points: Sequence[Point]) -> Point:
    """One point for consecutive ``points``: at the last one's time, spanning them all; requests,
    errors and latency buckets summed (so its p99 is the p99 of all its requests); cost per hour
    and lower bound the time-weighted means (so cost x hours is kept); replicas as at the end."""
    if not points:
        raise ValueError("aggregate needs at least one point")
    ordered = sorted(points, key=lambda p: p.t)
    last = ordered[-1]
    members: dict[str, MemberPoint] = {}
    for name in sorted({m for p in ordered for m in p.members}):
        parts = [p.members[name] for p in ordered if name in p.members]
        end = last.members.get(name, MemberPoint())
        latency: dict[str, float] = {}
        for part in parts:
            latency = _add(latency, part.latency)
        members[name] = MemberPoint(end.ready, end.starting, end.draining, end.desired,
                                    sum(p.requests for p in parts), sum(p.errors for p in parts), latency,
                                    sum(p.busy for p in parts))
    latency = {}
    for point in ordered:
        latency = _add(latency, point.latency)
    return Point(t=last.t, span=sum(p.span for p in ordered),
                 cost_per_hour=_weighted_mean([(p.cost_per_hour, p.span) for p in ordered]),
                 lower_bound_per_hour=_weighted_mean([(p.lower_bound_per_hour, p.span) for p in ordered]),
                 requests=sum(p.requests for p in ordered), errors=sum(p.errors for p in ordered),
                 bad_requests=sum(p.bad_requests for p in ordered), latency=latency, members=members,
                 rejected=sum(p.rejected for p in ordered))


def downsample(points: Sequence[Point], width: float) -> list[Point]:
    """``points`` as one :func:`aggregate` point per ``width``-second bucket that has any (0: as they are)."""
    if width <= 0:
        return sorted(points, key=lambda p: p.t)
    buckets: dict[int, list[Point]] = {}
    for point in points:
        buckets.setdefault(math.floor(point.t / width), []).append(point)
    return [aggregate(buckets[key]) for key in sorted(buckets)]


def completed_bucket(previous_t: float | None, t: float, width: float) -> tuple[float, float] | None:
    """The ``width``-second bucket (start, end) that a point at ``t`` completes, after one at
    ``previous_t``: the bucket of ``previous_t`` when ``t`` falls in a later one; else None."""
    if previous_t is None or width <= 0:
        return None
    before, now = math.floor(previous_t / width), math.floor(t / width)
    if now <= before:
        return None
    return before * width, (before + 1) * width


def merge_tiers(tiers: Sequence[Sequence[Point]]) -> list[Point]:
    """One series from the tiers (finest first, as :data:`TIERS`): each coarser tier's points
    only before the finer tiers' first point, so that no time is counted twice."""
    merged: list[Point] = []
    for points in reversed(tiers):  # coarsest first
        ordered = sorted(points, key=lambda p: p.t)
        if ordered:
            merged = [p for p in merged if p.t < ordered[0].t] + ordered
    return merged


def for_display(points: Sequence[Point], most: int = 180) -> list[Point]:
    """At most about ``most`` points for a chart: the series downsampled to a width that fits."""
    if len(points) <= most:
        return list(points)
    first, last = points[0].t, points[-1].t
    width = max(1.0, (last - first) / most)
    return downsample(points, width)


# --- the summary --------------------------------------------------------------------------------
def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _figures(point: Point | None) -> dict[str, Any]:
    if point is None:
        return {"rate_rps": None, "p50_ms": None, "p99_ms": None, "errors": 0.0, "requests": 0.0, "rejected": 0.0}
    return {"rate_rps": _round(point.rate_rps), "p50_ms": _round(milliseconds(quantile(0.5, point.latency))),
            "p99_ms": _round(milliseconds(quantile(0.99, point.latency))), "errors": point.errors,
            "requests": point.requests, "rejected": point.rejected}


def series(points: Sequence[Point]) -> dict[str, Any]:
    """Columns for charts: times, cost, lower bound, end-to-end rate, p50, p99 (ms) and errors
    (per second), and per member ready replicas, rate and p99 (``None`` where unknown or without
    requests)."""
    members = sorted({m for p in points for m in p.members})
    return {
        "t": [round(p.t, 3) for p in points],
        "cost": [_round(p.cost_per_hour, 6) for p in points],
        "bound": [_round(p.lower_bound_per_hour, 6) for p in points],
        "rate": [_round(p.rate_rps) for p in points],
        "errors": [_round(p.errors / p.span) if p.span > 0 else None for p in points],
        "rejected": [_round(p.rejected / p.span) if p.span > 0 else None for p in points],
        "p50": [_round(milliseconds(quantile(0.5, p.latency))) for p in points],
        "p99": [_round(milliseconds(quantile(0.99, p.latency))) for p in points],
        "members": {m: {
            "ready": [p.members[m].ready if m in p.members else None for p in points],
            "rate": [_round(p.members[m].requests / p.span) if m in p.members and p.span > 0 else None
                     for p in points],
            "p99": [_round(milliseconds(quantile(0.99, p.members[m].latency))) if m in p.members else None
                    for p in points],
        } for m in members},
    }


def summary(snapshot: Mapping[str, Any], points: Sequence[Point], events: Sequence[tuple[float, str]],
            live: bool, now: float) -> dict[str, Any]:
    """The deployment as the status page, ``status`` and the report show it (one JSON object).

    ``snapshot``: what the monitor last recorded of the deployment (job, addresses, members'
    bounds and model, replicas with agent, price and state; see ``DeploymentMonitor.snapshot``);
    ``points``: the history, oldest first; ``events``: (time, text), oldest first; ``live``:
    whether its ``serve`` runs now.  ``cost_per_hour`` and its bound are the latest known
    (``cost_at``: when; a stopped deployment's are those of its last minutes of serving)."""
    until = now if live or not points else points[-1].t  # stopped: its last minute of serving
    recent_points = [p for p in points if p.t > until - RECENT_SECONDS] or list(points[-1:])
    recent = aggregate(recent_points) if recent_points else None
    targets: Mapping[str, Mapping[str, Any]] = snapshot.get("targets") or {}
    replicas = [dict(r) for r in snapshot.get("replicas") or ()]
    members: dict[str, Any] = {}
    for name in list(targets) + sorted({r["member"] for r in replicas} - set(targets)):
        target = targets.get(name, {})
        mine = [r for r in replicas if r.get("member") == name]
        member_recent = recent.members.get(name) if recent is not None else None
        members[name] = {
            "sha256": target.get("sha256"), "min_replicas": target.get("min_replicas"),
            "max_replicas": target.get("max_replicas"), "desired": target.get("desired"),
            "ready": sum(1 for r in mine if r.get("state") == "ready"),
            "starting": sum(1 for r in mine if r.get("state") in STARTING_STATES),
            "draining": sum(1 for r in mine if r.get("state") in ENDED_STATES),
            **_figures(None if recent is None or member_recent is None else Point(
                t=recent.t, span=recent.span, requests=member_recent.requests, errors=member_recent.errors,
                latency=member_recent.latency)),
            "busy": _round(member_recent.busy / recent.span, 3)
            if recent is not None and member_recent is not None and recent.span > 0 else None,
        }
    costed = next((p for p in reversed(points) if p.cost_per_hour is not None), None)
    cost = costed.cost_per_hour if costed is not None else None
    bound = costed.lower_bound_per_hour if costed is not None else None
    return {
        "kind": "deployment",
        "job": snapshot.get("job"),
        "state": "serving" if live else "stopped",
        "url": snapshot.get("url"),
        "status_url": snapshot.get("status_url"),
        "framework_id": snapshot.get("framework_id"),
        "started_at": snapshot.get("started_at"),
        "updated_at": snapshot.get("updated_at"),
        "now": round(now, 3),
        "cost_per_hour": _round(cost, 6),
        "cost_at": costed.t if costed is not None else None,
        "lower_bound_per_hour": _round(bound, 6),
        "cost_over_bound": _round(cost / bound, 4) if cost is not None and bound else None,
        "end_to_end": _figures(recent),
        "members": members,
        "replicas": sorted(replicas, key=lambda r: (str(r.get("member")), str(r.get("task_id")))),
        "agents": sorted({(r.get("hostname") or r.get("agent_id") or "") for r in replicas}),
        "history": {"points": len(points), "from": points[0].t if points else None,
                    "to": points[-1].t if points else None},
        "series": series(for_display(points)),
        "events": [{"at": round(at, 3), "text": text} for at, text in events][::-1],
    }


def describe(document: Mapping[str, Any]) -> str:
    """The deployment summary as ``mesos-ensemble status`` prints it."""

    def num(value: Any, unit: str = "", digits: int = 1) -> str:
        return "-" if value is None else f"{value:,.{digits}f}{unit}"

    where = f" at {document['url']}" if document.get("url") and document["state"] == "serving" else ""
    lines = [f"{document.get('job') or '?'}: deployment {document['state']}{where}"
             + ("" if document["state"] == "serving" else " (from its state directory: no serve runs it now)")]
    cost, bound = document.get("cost_per_hour"), document.get("lower_bound_per_hour")
    ratio = document.get("cost_over_bound")
    lines.append(f"  {'' if document['state'] == 'serving' else 'last '}cost per hour {num(cost, digits=4)} "
                 f"(lower bound {num(bound, digits=4)}"
                 + (f", {ratio:.2f}x" if ratio is not None else "") + ")")
    e2e = document["end_to_end"]
    lines.append(f"  last minute: {num(e2e['rate_rps'], ' req/s')}, p50 {num(e2e['p50_ms'], ' ms')}, "
                 f"p99 {num(e2e['p99_ms'], ' ms')}, {e2e['errors']:.0f} errors"
                 + (f", {e2e['rejected']:.0f} shed (overload)" if e2e.get("rejected") else ""))
    for name, m in document["members"].items():
        lines.append(f"  member {name}: {m['ready']} ready, {m['starting']} starting, {m['draining']} draining "
                     f"(desired {m['desired'] if m['desired'] is not None else '-'}, "
                     f"{m['min_replicas'] if m['min_replicas'] is not None else '-'}.."
                     f"{m['max_replicas'] if m['max_replicas'] is not None else '-'}); "
                     f"{num(m['rate_rps'], ' req/s')}, p99 {num(m['p99_ms'], ' ms')}, {m['errors']:.0f} errors"
                     + (f", busy {m['busy']:.2f} replica(s)" if m.get("busy") is not None else ""))
    for r in document["replicas"]:
        price = r.get("price")
        lines.append(f"    {r.get('task_id')}: {r.get('member')} on {r.get('hostname') or r.get('agent_id')}"
                     f":{r.get('port')} ({r.get('state')}; price {'-' if price is None else f'{price:g}'}/h)")
    history = document["history"]
    lines.append(f"  history: {history['points']} point(s)" + (
        f" over {(history['to'] - history['from']) / 60:.1f} min" if history["points"] else ""))
    for event in document["events"][:5]:
        lines.append(f"  event {_clock(event['at'])} {event['text']}")
    if document.get("status_url") and document["state"] == "serving":
        lines.append(f"  status page: {document['status_url']}")
    return "\n".join(lines)


def _clock(at: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
