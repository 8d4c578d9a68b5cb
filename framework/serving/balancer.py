"""Which replica gets a member's next batch, when to hedge it, where a failed one goes.

Pure decisions over measurements the gateway feeds in (no I/O, no clock of its own: ``now`` is
given; randomness from an injected ``random.Random``):

* **Least outstanding requests**: a batch goes to the replica with the fewest calls in flight;
  ties are broken by the *power of two random choices*: two of the tied replicas are drawn and
  the one with the lower recent mean latency wins (a replica with no measurement yet counts as
  fastest, so a new replica is tried at once).
* **Hedging**: a call still unanswered after the member's recent p95 call latency (at least
  ``hedge_min_s``) is sent to a second replica too, one with no call in flight (:meth:`Balancer.pick_hedge`:
  a hedge queued behind another call at a busy replica could not answer sooner than the call it
  races, and would only add a call where the member is loaded already); the first answer wins,
  the other is cancelled.
  A cancelled call counts in its replica's window with the time it had taken (a lower bound), so
  a slow replica loses its ties afterwards. Hedges are *budgeted*: at most ``hedge_budget`` of a
  member's recent calls (at least one), so that a member slow everywhere (overloaded) is not sent
  more work by hedging.
* **Failover**: a call that failed (error, connection lost, timeout) goes to a replica not tried
  yet for that batch; the failed replica is *suspect* for ``suspect_s`` and gets new work only
  when every other candidate is suspect too.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Collection, Sequence

DEFAULT_WINDOW = 200
"""Calls kept per replica and per member for the latency statistics."""

DEFAULT_HEDGE_BUDGET = 0.1
"""At most this share of a member's recent calls is hedged."""

MIN_HEDGE_SAMPLES = 20
"""Below this many measured calls of a member, the hedge delay is the floor ``hedge_min_s``'s
multiple ``COLD_HEDGE_FACTOR``: the p95 of a handful of calls says little."""

COLD_HEDGE_FACTOR = 10.0

P95_REFRESH = 8
"""The hedge delay's p95 is recomputed (a sort of the window) after this many new measurements."""


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` by the nearest-rank method; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


@dataclass
class ReplicaStats:
    """What the balancer knows of one replica."""

    outstanding: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=DEFAULT_WINDOW))
    consecutive_failures: int = 0
    suspect_until: float = 0.0
    calls: int = 0
    failures: int = 0

    def mean_latency(self) -> float:
        """Mean of the recent call latencies; 0.0 before any (so that a new replica is tried)."""
        return sum(self.latencies) / len(self.latencies) if self.latencies else 0.0


class Balancer:
    """Per-gateway balancing state; not thread-safe (the gateway's event loop owns it)."""

    def __init__(self, hedge: bool = True, hedge_min_s: float = 0.01, suspect_s: float = 2.0,
                 window: int = DEFAULT_WINDOW, rng: random.Random | None = None,
                 hedge_budget: float = DEFAULT_HEDGE_BUDGET) -> None:
        if hedge_min_s < 0 or suspect_s < 0 or window < 1 or not 0 <= hedge_budget <= 1:
            raise ValueError("hedge_min_s and suspect_s must be >= 0, window >= 1, hedge_budget in 0..1")
        self.hedge = hedge
        self.hedge_budget = hedge_budget
        self.calls: dict[str, deque[bool]] = {}
        """Per member, whether each of its recent calls was hedged."""
        self.hedging: dict[str, int] = {}
        """Per member, calls hedged and not finished yet."""
        self.hedge_min_s = hedge_min_s
        self.suspect_s = suspect_s
        self.window = window
        self.rng = rng or random.Random()
        self.replicas: dict[str, ReplicaStats] = {}
        self.members: dict[str, deque[float]] = {}
        self._p95: dict[str, float] = {}
        self._added: dict[str, int] = {}
        """Per member, calls measured since its p95 was last computed."""
        self._quantile_cache: dict[str, tuple[float, float]] = {}
        self._quantiles_added: dict[str, int] = {}

    def stats(self, replica_id: str) -> ReplicaStats:
        stats = self.replicas.get(replica_id)
        if stats is None:
            stats = self.replicas[replica_id] = ReplicaStats(latencies=deque(maxlen=self.window))
        return stats

    # Decisions ------------------------------------------------------------------------------
    def pick(self, candidates: Sequence[str], now: float, exclude: Collection[str] = ()) -> str | None:
        """The replica for the next call among ``candidates`` (not in ``exclude``); None if none is left."""
        pool = [c for c in candidates if c not in exclude]
        if not pool:
            return None
        healthy = [c for c in pool if self.stats(c).suspect_until <= now] or pool
        fewest = min(self.stats(c).outstanding for c in healthy)
        tied = [c for c in healthy if self.stats(c).outstanding == fewest]
        if len(tied) == 1:
            return tied[0]
        first, second = self.rng.sample(tied, 2)
        return second if self.stats(second).mean_latency() < self.stats(first).mean_latency() else first

    def pick_hedge(self, candidates: Sequence[str], now: float, exclude: Collection[str] = ()) -> str | None:
        """The replica a hedge goes to: as :meth:`pick`, among the ``candidates`` (not in ``exclude``)
        with no call in flight and not suspect; None when there is none (every other replica is busy:
        the hedge would wait behind its calls, and the cancelled loser's computation is work the
        member's replicas do for nothing)."""
        idle = [c for c in candidates if c not in exclude and self.stats(c).outstanding == 0
                and self.stats(c).suspect_until <= now]
        return self.pick(idle, now) if idle else None

    def hedge_delay(self, member: str) -> float | None:
        """Seconds after which a call of ``member`` still unanswered is hedged; None: never."""
        if not self.hedge:
            return None
        window = self.members.get(member, ())
        if len(window) < MIN_HEDGE_SAMPLES:
            return self.hedge_min_s * COLD_HEDGE_FACTOR
        cached = self._p95.get(member)
        if cached is None or self._added.get(member, 0) >= P95_REFRESH:
            cached = self._p95[member] = percentile(list(window), 95.0)
            self._added[member] = 0
        return max(self.hedge_min_s, cached)

    def slack(self, member: str, members: Collection[str]) -> float:
        """Seconds a batch of ``member`` may wait for more requests without, typically, making an
        answer later: an answer waits for every member, so a member whose calls end sooner (its
        p95) than the slowest other member's (their median) has that difference to spare.  0.0
        until each of them has :data:`MIN_HEDGE_SAMPLES` calls measured."""
        own = self._quantiles(member)
        others = [q for q in (self._quantiles(m) for m in members if m != member) if q is not None]
        if own is None or not others:
            return 0.0
        return max(0.0, max(p50 for p50, _p95 in others) - own[1])

    def typical_call(self, member: str) -> float | None:
        """The member's recent median call latency in seconds; None until it has
        :data:`MIN_HEDGE_SAMPLES` calls measured."""
        quantiles = self._quantiles(member)
        return None if quantiles is None else quantiles[0]

    def _quantiles(self, member: str) -> tuple[float, float] | None:
        """(p50, p95) of the member's recent call latencies, recomputed every :data:`P95_REFRESH` calls."""
        window = self.members.get(member, ())
        if len(window) < MIN_HEDGE_SAMPLES:
            return None
        cached = self._quantile_cache.get(member)
        if cached is None or self._quantiles_added.get(member, 0) >= P95_REFRESH:
            values = list(window)
            cached = self._quantile_cache[member] = (percentile(values, 50.0), percentile(values, 95.0))
            self._quantiles_added[member] = 0
        return cached

    def may_hedge(self, member: str) -> bool:
        """Whether the budget allows one more hedge of ``member`` now."""
        recent = self.calls.get(member, ())
        hedged = sum(recent) + self.hedging.get(member, 0)
        return hedged < max(1.0, self.hedge_budget * len(recent))

    def p95(self, member: str) -> float:
        """The member's recent p95 call latency in seconds (0.0 before any call)."""
        return percentile(list(self.members.get(member, ())), 95.0)

    # Measurements ---------------------------------------------------------------------------
    def hedged(self, member: str) -> None:
        """A call of ``member`` was hedged (until :meth:`call_done`)."""
        self.hedging[member] = self.hedging.get(member, 0) + 1

    def call_done(self, member: str, hedged: bool) -> None:
        """A call of ``member`` ended (answered or failed), hedged or not."""
        if hedged:
            self.hedging[member] = max(0, self.hedging.get(member, 0) - 1)
        self.calls.setdefault(member, deque(maxlen=self.window)).append(hedged)

    def started(self, replica_id: str) -> None:
        """A call to ``replica_id`` begins."""
        stats = self.stats(replica_id)
        stats.outstanding += 1
        stats.calls += 1

    def succeeded(self, member: str, replica_id: str, seconds: float) -> None:
        """A call answered in ``seconds``: it counts in the replica's and the member's windows."""
        stats = self.stats(replica_id)
        stats.outstanding = max(0, stats.outstanding - 1)
        stats.latencies.append(seconds)
        stats.consecutive_failures = 0
        stats.suspect_until = 0.0
        self.members.setdefault(member, deque(maxlen=self.window)).append(seconds)
        self._added[member] = self._added.get(member, 0) + 1
        self._quantiles_added[member] = self._quantiles_added.get(member, 0) + 1

    def failed(self, replica_id: str, now: float) -> None:
        """A call failed: the replica is suspect for ``suspect_s``."""
        stats = self.stats(replica_id)
        stats.outstanding = max(0, stats.outstanding - 1)
        stats.consecutive_failures += 1
        stats.failures += 1
        stats.suspect_until = now + self.suspect_s

    def abandoned(self, replica_id: str, seconds: float) -> None:
        """A call lost a hedge race after ``seconds`` and was cancelled (a lower bound of its latency)."""
        stats = self.stats(replica_id)
        stats.outstanding = max(0, stats.outstanding - 1)
        stats.latencies.append(seconds)

    def forget(self, keep: Collection[str]) -> None:
        """Drop the statistics of replicas not in ``keep`` that have nothing in flight."""
        for replica_id in [r for r, s in self.replicas.items() if r not in keep and s.outstanding == 0]:
            del self.replicas[replica_id]
