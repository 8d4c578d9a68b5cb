"""The balancer's pure decisions: least outstanding, power-of-two ties, hedge delay, failover."""

from __future__ import annotations

import random

import pytest

from framework.serving.balancer import COLD_HEDGE_FACTOR, MIN_HEDGE_SAMPLES, Balancer, percentile


def test_percentile_is_the_nearest_rank():
    assert percentile([], 95) == 0.0
    assert percentile([3.0], 99) == 3.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 95) == 95.0 and percentile(values, 99) == 99.0 and percentile(values, 100) == 100.0
    assert percentile(list(reversed(values)), 50) == 50.0


def test_the_replica_with_fewest_calls_in_flight_gets_the_next():
    b = Balancer(rng=random.Random(0))
    for _ in range(2):
        b.started("a")
    b.started("b")
    assert b.pick(["a", "b", "c"], now=0.0) == "c"
    b.started("c")
    b.started("c")
    assert b.pick(["a", "b", "c"], now=0.0) == "b"
    assert b.pick(["a", "b", "c"], now=0.0, exclude={"b"}) in {"a", "c"}
    assert b.pick(["a"], now=0.0, exclude={"a"}) is None and b.pick([], now=0.0) is None


def test_ties_go_to_the_faster_of_two_random_choices():
    b = Balancer(rng=random.Random(1))
    b.started("slow")
    b.succeeded("m", "slow", 0.5)
    b.started("fast")
    b.succeeded("m", "fast", 0.01)
    assert {b.pick(["slow", "fast"], now=0.0) for _ in range(50)} == {"fast"}
    # An unmeasured replica counts as fastest: a new replica is tried at once.
    assert b.pick(["slow", "fast", "new"], now=0.0) in {"new", "fast"}
    assert {b.pick(["fast", "new"], now=0.0) for _ in range(20)} == {"new"}


def test_ties_between_equals_are_spread_at_random():
    b = Balancer(rng=random.Random(2))
    picks = [b.pick(["a", "b", "c", "d"], now=0.0) for _ in range(200)]
    assert set(picks) == {"a", "b", "c", "d"}


def test_a_failed_replica_is_suspect_for_a_while_unless_nothing_else_is_left():
    b = Balancer(suspect_s=5.0, rng=random.Random(3))
    b.started("a")
    b.failed("a", now=10.0)
    assert b.stats("a").outstanding == 0 and b.stats("a").failures == 1
    assert {b.pick(["a", "b"], now=11.0) for _ in range(20)} == {"b"}
    assert b.pick(["a"], now=11.0) == "a"                      # the only one: still tried
    assert b.pick(["a", "b"], now=11.0, exclude={"b"}) == "a"  # failover has nothing better
    assert b.pick(["a", "b"], now=15.0) in {"a", "b"}         # suspicion ends
    b.started("a")
    b.succeeded("m", "a", 0.01)
    assert b.stats("a").consecutive_failures == 0 and b.stats("a").suspect_until == 0.0


def test_a_hedge_goes_only_to_an_idle_replica():
    b = Balancer(suspect_s=5.0, rng=random.Random(4))
    b.started("a")  # the call being hedged
    b.started("b")  # busy with another call: a hedge there would queue behind it
    assert b.pick_hedge(["a", "b"], now=0.0, exclude={"a"}) is None
    assert b.pick(["a", "b"], now=0.0, exclude={"a"}) == "b"  # (what a failover takes: any replica left)
    assert b.pick_hedge(["a", "b", "c"], now=0.0, exclude={"a"}) == "c"
    b.failed("c", now=0.0)
    assert b.pick_hedge(["a", "b", "c"], now=1.0, exclude={"a"}) is None  # suspect: not raced either
    b.succeeded("m", "b", 0.01)
    assert b.pick_hedge(["a", "b", "c"], now=1.0, exclude={"a"}) == "b"
    assert b.pick_hedge([], now=0.0) is None


def test_hedge_delay_is_the_member_s_recent_p95_with_a_floor():
    b = Balancer(hedge_min_s=0.02)
    assert b.hedge_delay("m") == pytest.approx(0.02 * COLD_HEDGE_FACTOR)  # too few calls to trust a p95
    for i in range(MIN_HEDGE_SAMPLES * 5):
        b.started("r")
        b.succeeded("m", "r", 0.001 * (i % 100 + 1))
    assert b.hedge_delay("m") == pytest.approx(0.095)
    fast = Balancer(hedge_min_s=0.2)
    for _ in range(MIN_HEDGE_SAMPLES):
        fast.started("r")
        fast.succeeded("m", "r", 0.001)
    assert fast.hedge_delay("m") == 0.2
    assert Balancer(hedge=False).hedge_delay("m") is None


def test_a_cancelled_hedge_loser_counts_its_time_on_its_replica_only():
    b = Balancer(rng=random.Random(4))
    b.started("slow")
    b.started("fast")
    b.succeeded("m", "fast", 0.01)
    b.abandoned("slow", 0.3)
    assert b.stats("slow").outstanding == 0 and list(b.stats("slow").latencies) == [0.3]
    assert list(b.members["m"]) == [0.01]
    assert b.pick(["slow", "fast"], now=0.0) == "fast"


def test_forget_drops_gone_replicas_with_nothing_in_flight():
    b = Balancer()
    b.started("busy")
    b.stats("idle")
    b.forget(keep={"other"})
    assert set(b.replicas) == {"busy"}


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Balancer(hedge_min_s=-1)
    with pytest.raises(ValueError):
        Balancer(window=0)


def test_hedges_stay_within_their_budget():
    b = Balancer(hedge_budget=0.1)
    assert b.may_hedge("m")  # the first hedge is always allowed
    b.hedged("m")
    assert not b.may_hedge("m")  # one in progress, no calls measured yet
    b.call_done("m", hedged=True)
    for _ in range(9):
        b.call_done("m", hedged=False)
    assert not b.may_hedge("m")  # 1 of 10 calls hedged: the budget is spent
    for _ in range(10):
        b.call_done("m", hedged=False)
    assert b.may_hedge("m")      # 1 of 20
    assert b.may_hedge("other")  # budgets are per member
    with pytest.raises(ValueError):
        Balancer(hedge_budget=1.5)


def test_slack_is_how_much_sooner_a_member_s_calls_end_than_the_slowest_other_s():
    b = Balancer()
    members = ["forest", "logistic", "boosting"]
    assert b.slack("logistic", members) == 0.0  # nothing measured yet
    for i in range(MIN_HEDGE_SAMPLES * 5):
        b.started("r")
        b.succeeded("forest", "r", 0.020 + 0.0001 * (i % 10))
        b.succeeded("logistic", "r", 0.002 + 0.0001 * (i % 10))
    assert b.slack("logistic", members) == pytest.approx(0.0204 - 0.0029)  # forest's p50 - its own p95
    assert b.slack("forest", members) == 0.0  # the slowest has nothing to spare
    assert b.slack("boosting", members) == 0.0  # not measured: no slack
    assert b.slack("logistic", ["logistic"]) == 0.0
