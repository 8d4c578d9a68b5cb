"""How many replicas each member should run: a pure decision from the gateway's load samples.

``decide(spec, loads, current_counts, state, now, *, window_s) -> (desired_counts, new_state)``;
the controller calls it every ``scale_interval_s`` with the last window's :class:`MemberLoad`
per member and keeps the returned :class:`AutoscaleState` for the next call.

* **Sized by utilisation** when the samples carry the gateway's ``busy`` measure (replica-seconds
  of calls per second over the window; over the window's rate, what one request costs): the
  replicas that keep each busy at most ``UP_UTILISATION`` of the time at the *rate now* (the
  highest of the window's, the recent one, ``recent_rate_rps``, over the last couple of seconds,
  and the short one, ``short_rate_rps``, over the last second, each less its noise) are asked for
  at once, as Ray Serve's target ongoing requests or Knative's concurrency target do: a step in
  the load is asked for within a second or so, before the p99 or the queue show it (a new
  replica's start takes CPU too: better asked early).  :func:`rising` tells the controller, between
  two decisions, that the short rate already needs more: it decides at once.
* **Up, at once**, when the member is *pressed*: its p99 is above ``target_p99_ms``, or its
  queue grew since the last decision and holds more than one request per ready replica.  With a
  busy measure only load presses: a slow p99 while the replicas are busy less than
  ``IDLE_UTILISATION`` of the time is not the load's (a cold first call, a neighbour's CPU), nor
  a growing backlog below ``UP_UTILISATION`` (the next batch takes it).  The step is the most of
  the utilisation's count, what the measured rate says, ``rate / (capacity x HEADROOM)``
  replicas (the capacity is the highest rate per ready replica seen while the member met its
  target with a whole window served by that many), and the ready count times the pressure (p99
  over target; waiting plus in-flight requests over in-flight ones, at most ``QUEUE_STEP``); at
  most :data:`MAX_STEP_FACTOR` times the ready count per decision.  The samples' p99 is measured
  over a window (``window_s``, the gateway's): after a step up it still holds the requests from
  before, so until that window has passed only a p99 worse than the one that made the step
  counts again (a stale p99 does not multiply the replicas twice).
* **Down, slowly**: only after ``scale_down_delay_s`` during which every sample met the target
  with replicas to spare, to the largest count any sample of that delay needed (hysteresis: a
  noisy rate does not flap), and the next step down waits a whole delay again.  With a busy
  measure, "to spare" is: fewer replicas would each be busy at most ``DOWN_UTILISATION`` of the
  time at the rate now (below ``UP_UTILISATION``: no flapping between the two), judged by the
  replica time a request costs now or, when lower, what it cost when that many replicas last
  carried the load (``cost_at``: a request costs more on more replicas, where fewer requests share
  a call and more replicas share the cores, so what more measure over-states what fewer need), or
  what they were busy carrying the highest rate they carried (``carried``: busy time does not fall
  as the load rises, so a rate at most that one keeps them at most that busy, and a request costs
  no more at a higher rate; the smoothed cost of a ramp holds its costlier low rates); a count not
  measured lately is tried at ``UNMEASURED_DOWN_UTILISATION``.  A load rising past ``SAME_LOAD``
  times the window's rate (the recent or last-second rate, less their noise) starts the scale-down
  delay again: the samples before it do not describe the load coming (a load resuming after an
  idle spell was judged on its ramp, and the step down refused).  For a window after the replicas
  left, the busy measure still holds their costlier calls: at the same load it asks for no replica
  back.  A step down that the p99 refuses (slow within a delay of it, at about the same rate:
  ``SAME_LOAD``) is undone at once by the pressure (or by the busy measure of the fewer replicas
  past ``UP_UTILISATION``), and later steps down expect at most ``PROBE`` of the utilisation it
  expected, for ``PRESSED_MEMORY_DELAYS`` delays.  Without a busy measure: the known capacity (at
  most ``PROBE`` of the lowest rate per replica that pressed it, taken only from a window that
  many ready replicas served, at the rate now) carries the rate on fewer; or, a careful probe once
  the last scale-up is a delay old, the member stays comfortably under its target (p99 at most
  ``COMFORT`` of it) and one replica fewer would each carry less than ``PROBE`` of that pressing
  rate.  The pressing rate is forgotten after ``PRESSED_MEMORY_DELAYS`` delays.
* Always within the member's ``min_replicas..max_replicas``.

No clock, threads or I/O: the time is the ``now`` argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping, Protocol, TypeVar

from framework.serving.spec import ServeSpec

Entry = TypeVar("Entry", bound=tuple[float, ...])
"""An entry of ``cost_at`` or ``carried`` (when it was last seen is its last field)."""

HEADROOM = 0.8
"""Replicas are sized to carry the rate at this share of their measured capacity."""
MAX_STEP_FACTOR = 4.0
"""At most this many times the ready replicas in one scale-up decision."""
MIN_PRESSURE_STEP = 1.5
"""A pressed member grows by at least this factor (at least one replica)."""
QUEUE_STEP = 2.0
"""A growing queue at most doubles the ready replicas per decision (a backlog is not a rate)."""
DEFAULT_WINDOW_S = 10.0
"""The window of the gateway's load samples (``GatewayOptions.window_s``)."""
COMFORT = 0.3
"""A p99 at most this share of the target leaves room to try one replica fewer."""
PROBE = 0.8
"""One replica fewer is tried only below this share of the rate per replica that once pressed."""
SAME_LOAD = 1.25
"""A slow p99 soon after a step down refuses that step only at a rate at most this times the
rate then (a load that rose since is not the step down's fault)."""
MANY = 1_000_000
"""More replicas than any bound allows (the spec's ``max_replicas`` clamps it)."""
RECENT_S = 2.0
"""The gateway's recent rate is measured over the last this many seconds (``recent_rate_rps``)."""
RECENT_SIGMAS = 2.0
"""The recent rate counts less this many standard deviations of its Poisson count: a step, not
the noise of a short window."""
SHORT_S = 1.0
"""The gateway's short rate is measured over the last this many seconds (``short_rate_rps``): a
step at tens of requests per second shows there sooner than in the recent rate (a 4x step from
30/s was asked for 1.2-1.7 s after it on the recent rate alone)."""
SHORT_SIGMAS = 3.0
"""The short rate counts less this many standard deviations of its Poisson count (more than the
recent rate: it is noisier, and :func:`rising` reads it several times a second).  At a few
requests per second this leaves nothing, and the recent rate decides as before."""
UP_UTILISATION = 0.7
"""With a busy measure: replicas are sized so that each is busy at most this share of the time
at the recent rate (more are asked for at once, before the p99 or the queue says so)."""
DOWN_UTILISATION = 0.6
"""With a busy measure: one replica fewer only when each of the rest would be busy at most this
share of the time (below ``UP_UTILISATION``: the count does not flap between the two).  Judged by
what more replicas measure, this is an over-estimate: a request costs more replica time on more
replicas (fewer requests share a call, more replicas share the cores), so fewer are less busy
than the measure says (the bench's forest: 55 % busy on two at a rate one carried 42 % busy)."""
UNMEASURED_DOWN_UTILISATION = 0.65
"""With a busy measure: a step down to a count of replicas with no remembered cost (``cost_at``:
not seen carrying the load lately) is tried when each of them would be busy at most this share
of the time by what more replicas measure (which over-states it, see ``DOWN_UTILISATION``): the
only way to learn what that count costs is to run it.  Below ``UP_UTILISATION``; a step down
the p99 or the busy measure refuses is not tried again at that utilisation (``refused_utilisation``)."""
IDLE_UTILISATION = 0.2
"""With a busy measure: replicas busy less than this share of the time are not pressed by a slow
p99 (their requests hardly wait for each other: the latency is not the load's)."""
COST_WEIGHT = 0.2
"""Each settled sample's weight in a count's remembered cost per request (``cost_at``)."""
PRESSED_MEMORY_DELAYS = 10.0
"""The rate that pressed the member is forgotten after this many scale-down delays (a step down
refused once is tried again later: a noisy second need not pin the count for good)."""


@dataclass(frozen=True)
class MemberLoad:
    """What the gateway measured for one member over its last window."""

    member: str
    rate_rps: float
    """Requests per second that arrived for the member (its offered load, not only the served)."""
    queue_depth: int
    """Requests waiting in the gateway (batcher) for a replica at the end of the window (the
    backlog), plus those shed for capacity over the window (a full queue, a queue timeout):
    what would be waiting had the queue no cap."""
    in_flight: int
    """Requests sent to replicas and not answered yet."""
    p99_ms: float
    """The member's p99 latency over the window (0 when it had no request)."""
    replicas_ready: int
    """Replicas that passed their health check and take requests."""
    recent_rate_rps: float | None = None
    """Requests per second over the last :data:`RECENT_S` seconds (None: not
    measured): a step in the load shows here within a second or two, in ``rate_rps`` over a window."""
    short_rate_rps: float | None = None
    """Requests per second over the last :data:`SHORT_S` seconds (None: not measured)."""
    busy: float | None = None
    """Replica-seconds of calls (batches at replicas) per second over the window, i.e. how many
    replicas were busy on average (None: not measured).  ``busy / rate_rps`` is the replica time
    one request costs."""


class LoadSample(Protocol):
    """What :func:`decide` reads of a load sample: :class:`MemberLoad`, or any value with these
    fields (the gateway's own sample type)."""

    @property
    def rate_rps(self) -> float: ...
    @property
    def queue_depth(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def p99_ms(self) -> float: ...
    @property
    def replicas_ready(self) -> int: ...


@dataclass(frozen=True)
class MemberScaleState:
    """What the autoscaler remembers of one member between decisions."""

    capacity_rps: float = 0.0
    """Highest rate per ready replica seen while the member met its target (0: none yet)."""
    pressed_rps: float = math.inf
    """Lowest rate per ready replica seen while the member was pressed with all its replicas
    ready (inf: never)."""
    last_queue: int = 0
    low_since: float | None = None
    """Since when fewer replicas would have carried the load (None: not now)."""
    low_need: int = 0
    """The most replicas any sample needed since ``low_since``."""
    last_up: float | None = None
    """When the member last scaled up."""
    up_p99: float = 0.0
    """The p99 that made it scale up then (a windowed p99 that is not worse is not news)."""
    pressed_at: float | None = None
    """When ``pressed_rps`` was last lowered (it is forgotten ``PRESSED_MEMORY_DELAYS`` delays later)."""
    down_at: float | None = None
    """When the member last stepped down."""
    down_rate: float = 0.0
    """The rate then."""
    down_utilisation: float = 0.0
    """How busy each remaining replica was expected to be after that step down (busy measure)."""
    refused_utilisation: float = math.inf
    """The expected utilisation of the lowest step down that the p99 refused (pressed within a
    delay of it: it was undone); later steps down expect less than ``PROBE`` of it (inf: none)."""
    refused_at: float | None = None
    ready: int = -1
    """The ready replicas of the last sample (-1: none seen yet)."""
    rose_at: float | None = None
    """When the ready replicas last grew: for a window after, its p99 still holds requests that
    fewer replicas served (it says nothing of the rate per replica that presses this many)."""
    fell_at: float | None = None
    """When the ready replicas last shrank: for a window after, its met p99 still holds requests
    that more replicas served (it says nothing of what this many carry)."""
    cost_at: Mapping[int, tuple[float, float]] = field(default_factory=dict)
    """Per ready count: the replica time one request cost (busy over rate, smoothed) while that
    many met the target with a settled window, and when last seen.  A step down to a count judges
    it by what that count itself measured, not only by what more replicas measure now (a request
    costs more on more replicas); forgotten ``PRESSED_MEMORY_DELAYS`` delays after last seen."""
    carried: Mapping[int, tuple[float, float, float]] = field(default_factory=dict)
    """Per ready count: the highest rate that many carried while meeting the target with a settled
    window, the replica time a request cost then, and when (forgotten as ``cost_at`` is)."""


@dataclass(frozen=True)
class AutoscaleState:
    """The autoscaler's memory, returned by each :func:`decide` for the next."""

    members: Mapping[str, MemberScaleState] = field(default_factory=dict)


def decide(spec: ServeSpec, loads: Mapping[str, LoadSample], current_counts: Mapping[str, int],
           state: AutoscaleState, now: float, *, window_s: float = DEFAULT_WINDOW_S
           ) -> tuple[dict[str, int], AutoscaleState]:
    """Desired replicas per member (every member of ``current_counts``) and the next state.

    ``current_counts`` are the counts the controller aims at now (its last desired counts); a
    member with no sample in ``loads`` keeps its count (clamped to its bounds).  ``window_s``:
    the window the samples' rate and p99 are measured over (the gateway's ``window_s``)."""
    desired: dict[str, int] = {}
    members: dict[str, MemberScaleState] = {}
    for member, current in current_counts.items():
        bounds = spec.bounds(member)
        previous = state.members.get(member, MemberScaleState())
        load = loads.get(member)
        if load is None:
            desired[member], members[member] = bounds.clamp(current), previous
            continue
        count, members[member] = _decide_member(spec, load, bounds.clamp(current), previous, now, window_s)
        desired[member] = bounds.clamp(count)
    return desired, AutoscaleState(members)


def rising(spec: ServeSpec, loads: Mapping[str, LoadSample], current_counts: Mapping[str, int]) -> list[str]:
    """Members whose short rate (less ``SHORT_SIGMAS`` deviations) already needs more replicas
    than ``current_counts`` (sized by utilisation, as :func:`decide` sizes them, below
    ``max_replicas``): the controller checks this between its decisions and decides at once for
    them, so a step waits for its decision only until the short rate shows it, not for the next
    ``scale_interval_s`` too.  Empty without a busy measure or a short rate."""
    members = []
    for member, current in current_counts.items():
        load = loads.get(member)
        if load is None or current >= spec.bounds(member).max_replicas:
            continue
        needed = demand(load, _short_rate(load))
        most = math.ceil(max(1, load.replicas_ready) * MAX_STEP_FACTOR)
        if needed and min(_replicas_at(needed, UP_UTILISATION), most) > current:
            members.append(member)
    return members


def pressed(spec: ServeSpec, load: LoadSample, last_queue: int) -> bool:
    """The member misses its target because of its load: p99 above it, or a queue that grows past
    one request waiting per ready replica.  With a busy measure, the p99 counts only while the
    replicas are busy at least ``IDLE_UTILISATION`` of the time, the queue only past ``UP_UTILISATION``."""
    ready = max(0, load.replicas_ready)
    return (load.p99_ms > spec.target_p99_ms and _saturated(load, ready, IDLE_UTILISATION)) or \
        (_growing(load, last_queue) and _saturated(load, ready))


def _growing(load: LoadSample, last_queue: int) -> bool:
    return load.queue_depth > last_queue and load.queue_depth > max(1, load.replicas_ready)


def replicas_for(rate_rps: float, capacity_rps: float, headroom: float = 1.0) -> int:
    """Replicas that carry ``rate_rps`` at ``headroom`` of ``capacity_rps`` each (0 for no load)."""
    if rate_rps <= 0:
        return 0
    ratio = rate_rps / (capacity_rps * headroom)
    if not ratio < MANY:  # a capacity measured from a vanishing rate: as many as allowed
        return MANY
    return max(1, math.ceil(ratio - 1e-9))


def demand(load: LoadSample, rate_rps: float) -> float | None:
    """Replicas kept busy full time by ``rate_rps``: the sample's busy replicas scaled from its
    window's rate (the replica time a request costs, times the rate); None without a busy measure."""
    busy = getattr(load, "busy", None)
    if busy is None:
        return None
    if load.rate_rps <= 0 or busy <= 0:
        return 0.0
    return busy * rate_rps / load.rate_rps


def _rate_now(load: LoadSample) -> float:
    """The highest of the window's rate, the recent one and the short one (a step up shows in the
    short and recent ones first; after a fall the window's still holds the high load).  The recent
    rate counts less ``RECENT_SIGMAS`` standard deviations of a Poisson count over ``RECENT_S``,
    the short one ``SHORT_SIGMAS`` over ``SHORT_S``: a step, not the noise of a short window (at
    10/s, 2 s hold 20 +- 4.5 arrivals; a 4x step still reads as 31/s or more; at 30/s, a 4x step
    reads as 87/s on the short rate once a second of it is in)."""
    return max(load.rate_rps, _less_noise(getattr(load, "recent_rate_rps", None), RECENT_S, RECENT_SIGMAS),
               _short_rate(load))


def _short_rate(load: LoadSample) -> float:
    """The short rate less ``SHORT_SIGMAS`` standard deviations (0 when not measured)."""
    return _less_noise(getattr(load, "short_rate_rps", None), SHORT_S, SHORT_SIGMAS)


def _less_noise(rate: float | None, seconds: float, sigmas: float) -> float:
    """``rate``, measured over ``seconds``, less ``sigmas`` standard deviations of its Poisson
    count (0 when not measured)."""
    if rate is None or rate <= 0:
        return 0.0
    return max(0.0, rate - sigmas * math.sqrt(rate / seconds))


def _rate_seen(load: LoadSample) -> float:
    """The higher of the window's rate and the recent one as measured (any sign of a rise)."""
    recent = getattr(load, "recent_rate_rps", None)
    return load.rate_rps if recent is None else max(load.rate_rps, recent)


def by_utilisation(load: LoadSample, utilisation: float) -> int:
    """Replicas that keep each busy at most ``utilisation`` of the time at the rate now (0 when
    the sample has no busy measure or no load)."""
    needed = demand(load, _rate_now(load))
    return _replicas_at(needed, utilisation) if needed else 0


def _replicas_at(needed: float, utilisation: float) -> int:
    """Replicas that keep each busy at most ``utilisation`` of the time when ``needed`` replicas'
    worth of busy time arrives (at least one)."""
    ratio = needed / utilisation if utilisation > 0 else math.inf
    return max(1, math.ceil(ratio - 1e-9)) if ratio < MANY else MANY


def _saturated(load: LoadSample, ready: int, utilisation: float = UP_UTILISATION) -> bool:
    """The ready replicas are busy past ``utilisation`` at the rate now (True without a busy measure)."""
    needed = demand(load, _rate_now(load))
    return needed is None or needed >= utilisation * max(1, ready)


def _observe(state: MemberScaleState, ready: int, now: float) -> MemberScaleState:
    """The state with this sample's ready count (when it grew or shrank)."""
    if state.ready < 0 or ready == state.ready:
        return replace(state, ready=ready)
    if ready > state.ready:
        return replace(state, ready=ready, rose_at=now)
    return replace(state, ready=ready, fell_at=now)


def _decide_member(spec: ServeSpec, load: LoadSample, current: int, state: MemberScaleState,
                   now: float, window_s: float) -> tuple[int, MemberScaleState]:
    ready = max(0, load.replicas_ready)
    state = _observe(state, ready, now)
    memory = PRESSED_MEMORY_DELAYS * max(spec.scale_down_delay_s, window_s)
    if state.pressed_at is not None and now - state.pressed_at >= memory:
        state = replace(state, pressed_rps=math.inf, pressed_at=None)
    if state.refused_at is not None and now - state.refused_at >= memory:
        state = replace(state, refused_utilisation=math.inf, refused_at=None)
    state = replace(state, cost_at=_seen_lately(state.cost_at, now, memory),
                    carried=_seen_lately(state.carried, now, memory))
    per_replica = load.rate_rps / ready if ready > 0 else 0.0
    most = math.ceil(max(1, ready) * MAX_STEP_FACTOR)
    # for a window after a step down's replicas left, the busy measure still holds their calls
    # (a request costs more on more replicas): at the load of that step, it is not news
    stale = _stale_busy(spec, load, state, now, window_s)
    early = current if stale else min(by_utilisation(load, UP_UTILISATION), most)
    # a backlog the next batch takes is no pressure: with a busy measure, a growing one counts only
    # while the replicas are busy past UP_UTILISATION (else it is requests arriving mid-batch)
    growing = _growing(load, state.last_queue) and _saturated(load, ready)
    # and a slow p99 of replicas that are nearly idle is not the load's (a cold first call, a
    # neighbour's CPU): more replicas would not make it faster
    slow = load.p99_ms > spec.target_p99_ms and _saturated(load, ready, IDLE_UTILISATION)
    # a p99 measured over a window still holds the requests from before the last step up: it
    # counts again once that window has passed, or when it got worse than at the step
    fresh = slow and (state.last_up is None or now - state.last_up >= window_s or load.p99_ms > state.up_p99)
    if growing or fresh:
        wanted = max(current, early, _scale_up(spec, load, ready, state.capacity_rps, growing, fresh))
        # the rate per replica that pressed: from a slow p99 of a window that only this many
        # ready replicas (all that are wanted) served, not a queue's blip or a stale window, at
        # the rate now (the window's lags behind a step)
        settled = state.rose_at is None or now - state.rose_at >= window_s
        pressing = _rate_now(load) / ready if ready > 0 else 0.0
        lower = fresh and settled and ready >= current and 0 < pressing < state.pressed_rps
        # a slow p99 within a delay of a step down: that step is undone, and not tried again at that utilisation
        up = wanted > current
        if fresh or up:
            state = _refuse_last_down(spec, load, state, now)
        return wanted, replace(state, last_queue=load.queue_depth, low_since=None, low_need=0,
                               pressed_rps=pressing if lower else state.pressed_rps,
                               pressed_at=now if lower else state.pressed_at,
                               last_up=now if up else state.last_up,
                               up_p99=load.p99_ms if up else state.up_p99)
    if slow or early > current:
        # only the p99 of the last step's window, or the rate now needs more than are wanted
        # (asked for early, before the p99 or the queue says so): the measured rate may ask for more
        by_rate = replicas_for(load.rate_rps, state.capacity_rps, HEADROOM) if state.capacity_rps > 0 and slow else 0
        wanted = max(current, early, min(by_rate, most))
        if wanted > current:
            state = _refuse_last_down(spec, load, state, now)
        return wanted, replace(state, last_queue=load.queue_depth, low_since=None, low_need=0,
                               last_up=now if wanted > current else state.last_up)
    if state.fell_at is None or now - state.fell_at >= window_s:  # met by this many replicas
        state = replace(state, capacity_rps=max(state.capacity_rps, per_replica))
        if ready == current and load.p99_ms <= spec.target_p99_ms and \
                (state.rose_at is None or now - state.rose_at >= window_s):
            state = _remember_cost(state, load, ready, now)
    state = replace(state, last_queue=load.queue_depth)
    rising = demand(load, 1.0) is not None and _rate_now(load) > SAME_LOAD * load.rate_rps
    need = current if rising else _fewer(spec, load, current, ready, state, now)
    if need >= current:  # all are needed, some are still starting, or the load rises: the window starts again
        return current, replace(state, low_since=None, low_need=0)
    if state.low_since is None:
        return current, replace(state, low_since=now, low_need=need)
    low_need = max(state.low_need, need)
    if now - state.low_since < spec.scale_down_delay_s:
        return current, replace(state, low_need=low_need)
    # low for long enough: down to what the window's busiest sample needed, then wait again
    expected = utilisation_at(load, state, max(1, low_need), _rate_now(load))
    return low_need, replace(state, low_since=None, low_need=0, down_at=now, down_rate=_rate_seen(load),
                             down_utilisation=expected or 0.0)


def _seen_lately(remembered: Mapping[int, Entry], now: float, memory: float) -> Mapping[int, Entry]:
    """``remembered`` (``cost_at`` or ``carried``: when last seen is each entry's last field) less
    what was last seen ``memory`` seconds ago or more (the same mapping when nothing is)."""
    if all(now - entry[-1] < memory for entry in remembered.values()):
        return remembered
    return {count: entry for count, entry in remembered.items() if now - entry[-1] < memory}


def _soon_after_down(spec: ServeSpec, load: LoadSample, state: MemberScaleState, now: float) -> bool:
    """Within a delay of the last step down, at about the load of that step (not a load that rose since)."""
    return state.down_at is not None and now - state.down_at <= spec.scale_down_delay_s \
        and _rate_seen(load) <= SAME_LOAD * state.down_rate


def _stale_busy(spec: ServeSpec, load: LoadSample, state: MemberScaleState, now: float, window_s: float) -> bool:
    """Within a window of the ready replicas falling after a step down, at about the load of that
    step: the window's busy measure still holds calls of the replicas that left (each request
    cost more on more of them), so the utilisation it gives the rest is stale."""
    return _soon_after_down(spec, load, state, now) and state.fell_at is not None \
        and state.down_at is not None and state.fell_at >= state.down_at and now - state.fell_at < window_s


def _refuse_last_down(spec: ServeSpec, load: LoadSample, state: MemberScaleState, now: float) -> MemberScaleState:
    """The state after an up :func:`_soon_after_down`: the step down is refused, and later ones
    expect less than ``PROBE`` of the utilisation it expected (the p99 or the busy measure of the
    fewer replicas said no)."""
    if not _soon_after_down(spec, load, state, now) or state.down_utilisation <= 0:
        return state
    return replace(state, refused_utilisation=min(state.refused_utilisation, state.down_utilisation),
                   refused_at=now, down_at=None)


def _remember_cost(state: MemberScaleState, load: LoadSample, ready: int, now: float) -> MemberScaleState:
    """The state with this sample's replica time per request remembered for ``ready`` replicas
    (``cost_at``, smoothed by ``COST_WEIGHT``; ``carried``, when its rate is the highest that many
    carried); unchanged without a busy measure or a rate."""
    busy = getattr(load, "busy", None)
    if busy is None or load.rate_rps <= 0 or ready <= 0:
        return state
    cost = busy / load.rate_rps
    top = state.carried.get(ready)
    if top is None or load.rate_rps >= top[0]:
        state = replace(state, carried={**state.carried, ready: (load.rate_rps, cost, now)})
    known = state.cost_at.get(ready)
    if known is not None:
        cost = (1.0 - COST_WEIGHT) * known[0] + COST_WEIGHT * cost
    return replace(state, cost_at={**state.cost_at, ready: (cost, now)})


def utilisation_at(load: LoadSample, state: MemberScaleState, count: int, rate_rps: float) -> float | None:
    """How busy each of ``count`` replicas would be at ``rate_rps``: by the replica time a request
    costs now, or, when lower, what it cost when ``count`` replicas last carried the load
    (``cost_at``: a request costs more on more replicas), or what they were busy carrying the
    highest rate they carried, scaled up to ``rate_rps`` when above it (``carried``: busy time
    does not fall as the load rises); None without a busy measure."""
    needed = demand(load, rate_rps)
    if needed is None:
        return None
    remembered = state.cost_at.get(count)
    if remembered is not None:
        needed = min(needed, rate_rps * remembered[0])
    top = state.carried.get(count)
    if top is not None:
        needed = min(needed, max(rate_rps, top[0]) * top[1])
    return needed / max(1, count)


def _fewer(spec: ServeSpec, load: LoadSample, current: int, ready: int, state: MemberScaleState,
           now: float) -> int:
    """The replicas an unpressed sample needs: ``current`` while some are still starting.  With a
    busy measure: as many as keep each busy at most ``DOWN_UTILISATION`` of the time at the rate
    now, and less than ``PROBE`` of the utilisation a refused step down expected (a step down that
    failed is not tried again at that load).  Without one: fewer than ``current``
    when the known capacity carries its rate on fewer, or (a probe, once the last scale-up is a
    delay old) one fewer when it is comfortably under the target and one fewer would stay below
    the known capacity's limit; else ``current``.  The known capacity is the measured one, but
    never above ``PROBE`` of the rate per replica that once pressed."""
    if ready < current:
        return current
    rate = _rate_now(load)
    if rate <= 0:
        return 0
    if demand(load, rate) is not None:
        refused = PROBE * state.refused_utilisation
        return next((k for k in range(1, current) if (utilisation_at(load, state, k, rate) or 0.0) <=
                     min(DOWN_UTILISATION if k in state.cost_at else UNMEASURED_DOWN_UTILISATION, refused)), current)
    limit = PROBE * state.pressed_rps
    capacity = min(state.capacity_rps, limit)
    need = replicas_for(load.rate_rps, capacity) if capacity > 0 else current
    if need < current:
        return need
    settled = state.last_up is None or now - state.last_up >= spec.scale_down_delay_s
    if settled and current > 1 and load.p99_ms <= COMFORT * spec.target_p99_ms \
            and load.rate_rps / (current - 1) <= limit:
        return current - 1
    return current


def _scale_up(spec: ServeSpec, load: LoadSample, ready: int, capacity: float, growing: bool, slow: bool) -> int:
    """Replicas for a pressed member, at most MAX_STEP_FACTOR x ready at once: the most of what
    the measured capacity says (the rate at HEADROOM of it) and the ready ones times the pressure
    (p99 over target when ``slow``; waiting plus in-flight requests over in-flight ones, at most
    QUEUE_STEP, when the queue is ``growing``; at least MIN_PRESSURE_STEP).  With a capacity
    that says more than the ready ones, the pressure adds at most QUEUE_STEP x ready (the rate
    knows better than a noisy p99).  With no replica ready, only the capacity can say (the
    pressure is on replicas yet to start)."""
    by_rate = replicas_for(load.rate_rps, capacity, HEADROOM) if capacity > 0 else 0
    if ready == 0:
        return by_rate
    pressure = MIN_PRESSURE_STEP
    if slow:
        pressure = max(pressure, load.p99_ms / spec.target_p99_ms)
    if growing:
        pressure = max(pressure, min((load.queue_depth + load.in_flight) / max(1, load.in_flight), QUEUE_STEP))
    if by_rate > ready:
        pressure = min(pressure, QUEUE_STEP)
    by_pressure = math.ceil(ready * min(pressure, MAX_STEP_FACTOR) - 1e-9)
    return min(max(by_rate, by_pressure), math.ceil(ready * MAX_STEP_FACTOR))
