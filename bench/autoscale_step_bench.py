"""How long after a 4x load step the autoscaler asks for more replicas: the real decision code
(``framework.serving.autoscale``) on the gateway's real load window (``metrics.LoadWindow``) fed
seeded Poisson arrivals, with the controller's timing (a decision every ``scale_interval_s``
= 1 s, at a random phase to the step; with ``rising``, a check at each 0.25 s tick between them).

Compares the recent (2 s) rate alone, read once a second (before), with the short (1 s) rate
added and the check between decisions (now).  CPU-bound only by the simulation, so it measures
the decision delay free of the machine's load (the bench's wall-clock step mixes it with the
replica's start).  ``python bench/autoscale_step_bench.py [--base 30] [--busy 0.35] [--runs 400]``.
"""

from __future__ import annotations

import argparse
import random
import statistics

from framework.serving.autoscale import SHORT_S, AutoscaleState, MemberLoad, decide, rising
from framework.serving.metrics import LoadWindow
from framework.serving.spec import ReplicaBounds, ServeSpec

SPEC = ServeSpec(target_p99_ms=100.0, scale_interval_s=1.0, scale_down_delay_s=30.0,
                 models={"m": ReplicaBounds(1, 2)})
TICK_S = 0.25
RISE_CHECK_S = 0.2


def sample(window: LoadWindow, now: float, short: bool) -> MemberLoad:
    return MemberLoad("m", window.rate(now), 0, 1, 50.0, 1, recent_rate_rps=window.recent_rate(now),
                      short_rate_rps=window.recent_rate(now, SHORT_S) if short else None, busy=window.busy(now))


def asked_after(base: float, busy: float, seed: int, new: bool, step_at: float = 30.0,
                horizon: float = 10.0) -> tuple[float | None, int]:
    """Seconds from the step to the decision that asks for a second replica (None: not within
    ``horizon``), and the ups asked before the step (false alarms at the steady base)."""
    rng = random.Random(seed)
    phase = rng.random()
    arrivals: list[float] = []
    t = 0.0
    while t < step_at + horizon:
        t += rng.expovariate(base * (4 if t >= step_at else 1))
        arrivals.append(t)
    window = LoadWindow(window_s=10.0, started=0.0)
    cost = busy / base
    i, state, last, early = 0, AutoscaleState(), -1e9, 0
    now = phase
    while now < step_at + horizon:
        while i < len(arrivals) and arrivals[i] <= now:
            window.arrived(arrivals[i])
            window.called(arrivals[i], cost)
            i += 1
        due = now - last >= 1.0 - 1e-9
        load = sample(window, now, new)
        if due or (new and now - last >= RISE_CHECK_S and rising(SPEC, {"m": load}, {"m": 1})):
            last = now
            desired, state = decide(SPEC, {"m": load}, {"m": 1}, state, now)
            if desired["m"] > 1:
                if now >= step_at:
                    return now - step_at, early
                early += 1
                state = AutoscaleState()
        now = round(now + TICK_S, 6)
    return None, early


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=float, action="append", help="base rates (repeatable; default 10, 25, 30)")
    parser.add_argument("--busy", type=float, default=0.35, help="the replica's busy share at the base rate")
    parser.add_argument("--runs", type=int, default=400)
    args = parser.parse_args()
    for base in args.base or [10.0, 25.0, 30.0]:
        for name, new in (("before", False), ("now", True)):
            results = [asked_after(base, args.busy, seed, new) for seed in range(args.runs)]
            delays = sorted(d for d, _ in results if d is not None)
            false = sum(e for _, e in results)
            q = statistics.quantiles(delays, n=20) if len(delays) > 1 else [float("nan")] * 19
            print(f"base {base:5.1f}/s busy {args.busy:.2f}, {name:6}: asked after median "
                  f"{statistics.median(delays):.2f} s,"
                  f" p5 {q[0]:.2f}, p95 {q[-1]:.2f}, max {delays[-1]:.2f}; not within 10 s {args.runs - len(delays)};"
                  f" ups before the step {false} in {args.runs} x 30 s")


if __name__ == "__main__":
    main()
