"""The gateway's metrics: load windows (clock given), Prometheus text, load samples."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from framework.serving.autoscale import MemberLoad
from framework.serving.metrics import GatewayMetrics, LiveState, LoadWindow


def test_a_load_window_keeps_the_last_window_s_seconds():
    w = LoadWindow(window_s=10.0, started=100.0)
    for t in range(100, 120):
        w.arrived(float(t))
        w.answered(float(t), 0.001 * (t - 99))
    assert w.rate(119.5) == pytest.approx(10 / 10.0)   # arrivals at 110..119
    assert w.p99_ms(119.5) == pytest.approx(20.0)
    assert w.recent_rate(119.5) == pytest.approx(2 / 2.0)  # arrivals at 118, 119
    w.called(118.0, 0.5)
    w.called(119.0, 1.5)
    assert w.busy(119.5) == pytest.approx(2.0 / 10.0) and w.busy(128.5) == pytest.approx(1.5 / 10.0)
    assert w.rate(200.0) == 0.0 and w.p99_ms(200.0) == 0.0
    young = LoadWindow(window_s=10.0, started=0.0)
    for t in (0.5, 1.0, 1.5, 2.0):
        young.arrived(t)
    assert young.rate(2.0) == pytest.approx(4 / 2.0)   # a gateway younger than its window
    with pytest.raises(ValueError):
        LoadWindow(window_s=0)


def test_load_samples_and_exposition():
    now = [50.0]
    metrics = GatewayMetrics(["a", "b"], window_s=5.0, clock=lambda: now[0])
    for i in range(10):
        now[0] = 50.0 + i * 0.5
        metrics.member_arrived("a")
        metrics.member_answered("a", 0.010 + 0.001 * i, ok=True)
        if i % 3 == 0:  # calls at 50, 51.5, 53, 54.5: 0.03 s of a replica's time each
            metrics.replica_call("a", "ok", 0.03)
    metrics.replica_call("a", "cancelled")  # no time given: counted, not busy
    metrics.member_arrived("b")
    metrics.member_answered("b", 0.5, ok=False)
    metrics.hedges.labels("a").inc()
    metrics.set_cost_per_hour(0.75, lower_bound=0.5)
    live = {"a": LiveState(queue_depth=5, in_flight=2, replicas_ready=2, replicas_draining=1, backlog=3),
            "b": LiveState(queue_depth=0, in_flight=0, replicas_ready=1)}
    loads = metrics.load_samples(live)
    assert loads["a"] == MemberLoad("a", rate_rps=pytest.approx(10 / 4.5), queue_depth=3, in_flight=2,
                                    p99_ms=pytest.approx(19.0), replicas_ready=2,
                                    recent_rate_rps=pytest.approx(5 / 2.0),  # arrivals at 52.5..54.5
                                    short_rate_rps=pytest.approx(3 / 1.0),  # arrivals at 53.5..54.5
                                    busy=pytest.approx(4 * 0.03 / 4.5))
    assert loads["b"].busy == 0.0
    assert loads["b"].p99_ms == 500.0 and loads["b"].replicas_ready == 1

    metrics.observe(live)
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert families["mesos_ensemble_member_seconds"].type == "histogram"
    assert samples[("mesos_ensemble_member_seconds_count", (("member", "a"),))] == 10
    assert samples[("mesos_ensemble_member_requests_total", (("member", "b"), ("outcome", "failed")))] == 1
    assert samples[("mesos_ensemble_hedges_total", (("member", "a"),))] == 1
    assert samples[("mesos_ensemble_queue_depth", (("member", "a"),))] == 5  # the whole queue (autoscaler: backlog)
    assert samples[("mesos_ensemble_replicas", (("member", "a"), ("state", "draining")))] == 1
    assert samples[("mesos_ensemble_cost_per_hour", ())] == 0.75
    # Each gateway has its own registry: a second one starts from zero.
    other = GatewayMetrics(["a"])
    assert "mesos_ensemble_hedges_total{member=\"a\"} 0.0" in other.exposition().decode()


def test_shed_requests_stay_demand_for_the_autoscaler_and_are_counted_by_reason():
    now = [10.0]
    metrics = GatewayMetrics(["a"], window_s=5.0, clock=lambda: now[0])
    for i in range(8):  # 8 arrive: 2 answered, 4 refused by a full queue, 1 timed out, 1 past its deadline
        now[0] = 10.0 + i * 0.5
        metrics.member_arrived("a")
    metrics.member_answered("a", 0.010, ok=True)
    metrics.member_answered("a", 0.012, ok=True)
    for _ in range(4):
        metrics.member_rejected_part("a", "queue_full")
    metrics.member_rejected_part("a", "queue_timeout", waited=0.4)
    metrics.member_rejected_part("a", "deadline", waited=0.05)
    metrics.request_rejected("queue_full")
    metrics.request_rejected("deadline", sent=True)
    live = {"a": LiveState(queue_depth=3, in_flight=1, replicas_ready=1, backlog=3)}
    load = metrics.load_samples(live)["a"]
    assert load.rate_rps == pytest.approx(8 / 3.5)  # every arrival, shed or not
    assert load.queue_depth == 3 + 5  # the backlog and the requests shed for capacity (not the deadline)
    assert load.p99_ms == pytest.approx(400.0)  # the timed-out request's wait is a miss
    rates = metrics.rejected_rates()["a"]
    assert rates == {"queue_full": pytest.approx(4 / 3.5), "queue_timeout": pytest.approx(1 / 3.5),
                     "deadline": pytest.approx(1 / 3.5)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(metrics.exposition().decode()) for s in f.samples}
    assert samples[("mesos_ensemble_rejected_requests_total", (("reason", "queue_full"),))] == 1
    assert samples[("mesos_ensemble_rejected_requests_total", (("reason", "queue_timeout"),))] == 0
    assert samples[("mesos_ensemble_requests_total", (("outcome", "timeout"),))] == 1
    assert samples[("mesos_ensemble_member_rejected_total", (("member", "a"), ("reason", "queue_full")))] == 4
    # A window later, with nothing shed since, the queue is the backlog alone again.
    now[0] += 6.0
    assert metrics.load_samples(live)["a"].queue_depth == 3


def test_a_member_shedding_at_its_cap_reads_as_pressed_to_the_autoscaler():
    """Shedding keeps the queue short and the admitted requests within the target (p99 under it)
    while the replica is busy: the shed requests in the samples are what make the autoscaler add
    replicas."""
    from framework.serving import autoscale
    from framework.serving.spec import ReplicaBounds, ServeSpec

    now = [0.0]
    metrics = GatewayMetrics(["a"], window_s=10.0, clock=lambda: now[0])
    spec = ServeSpec(target_p99_ms=100.0, models={"a": ReplicaBounds(1, 4)})
    # The queue has been at its cap (max_queue = 10) since an earlier decision: it no longer grows.
    state = autoscale.AutoscaleState({"a": autoscale.MemberScaleState(last_queue=10)})
    desired = {"a": 1}
    live = {"a": LiveState(queue_depth=10, in_flight=1, replicas_ready=1, backlog=10)}
    for second in range(1, 4):
        for i in range(50):  # 50 arrivals a second: 10 answered in 95 ms, 40 refused by the full queue
            now[0] = second - 1 + i / 50
            metrics.member_arrived("a")
            if i % 5 == 0:  # one call after another: the replica is busy 95 % of the time
                metrics.replica_call("a", "ok", 0.095)
                metrics.member_answered("a", 0.095, ok=True)
            else:
                metrics.member_rejected_part("a", "queue_full")
        now[0] = float(second)
        load = metrics.load_samples(live)["a"]
        assert load.p99_ms < spec.target_p99_ms
        desired, state = autoscale.decide(spec, {"a": load}, desired, state, now[0])
    assert desired["a"] > 1


def test_the_drain_rate_counts_requests_that_came_back_over_the_window():
    now = [100.0]
    metrics = GatewayMetrics(["tree", "nb"], window_s=10.0, clock=lambda: now[0])
    now[0] = 104.0
    for _ in range(8):
        metrics.member_answered("tree", 0.01, True)
    metrics.member_answered("tree", 0.01, False)  # a failed part left the queue too
    metrics.member_rejected_part("tree", "queue_timeout", 0.5)  # shed: not drained
    assert metrics.drain_rates() == {"tree": 9 / 4.0, "nb": 0.0}  # 4 s since the start
    now[0] = 120.0
    assert metrics.drain_rates()["tree"] == 0.0  # out of the window
