"""The deployment's history (pure): counters read from the gateway's real metrics, points,
downsampling, tiers and their retention in a real journal, the summary and the page."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from framework.serving import history
from framework.serving.history import MemberPoint, Point, Tier
from framework.serving.metrics import GatewayMetrics
from framework.serving.monitor import EventLog, read_points, record
from framework.serving.page import render_page, svg_chart
from framework.serving.state import EVENTS_KEPT, ServeState


def test_quantiles_read_buckets_as_prometheus_does() -> None:
    buckets = {"0.01": 50.0, "0.02": 50.0}
    assert history.quantile(0.5, buckets) == pytest.approx(0.01)
    assert history.quantile(0.99, buckets) == pytest.approx(0.0198)
    assert history.quantile(0.25, buckets) == pytest.approx(0.005)
    assert history.quantile(0.99, {}) is None
    assert history.quantile(0.99, {"0.5": 1.0, "+Inf": 9.0}) == 0.5  # past the last bound: that bound


def test_a_point_is_what_the_gateway_counted_in_between() -> None:
    metrics = GatewayMetrics(["linear", "logistic"])
    for seconds in (0.004, 0.004, 0.004, 0.04):
        metrics.request("ok", seconds)
    metrics.request("error")
    before = history.read_counters(metrics.registry.collect())
    for _ in range(9):
        metrics.request("ok", 0.004)
        metrics.member_answered("linear", 0.003, True)
    metrics.request("degraded", 0.2)
    metrics.request("unavailable")
    metrics.request("bad_request")
    metrics.member_answered("logistic", 0.01, False)
    after = history.read_counters(metrics.registry.collect())
    counts = {"linear": {"desired": 2, "ready": 1, "starting": 1}, "logistic": {"desired": 1, "draining": 1,
                                                                                 "ready": 1}}
    point = history.sample(100.0, 5.0, before, after, counts, (3.0, 2.0))
    assert (point.requests, point.errors, point.bad_requests) == (10, 1, 1)
    assert point.rate_rps == pytest.approx(2.0)
    assert point.latency == {"0.005": 9.0, "0.2": 1.0}  # only what came after `before`
    assert 0.0025 < history.quantile(0.5, point.latency) <= 0.005
    assert history.quantile(0.99, point.latency) > 0.15
    assert point.members["linear"] == MemberPoint(ready=1, starting=1, draining=0, desired=2, requests=9, errors=0,
                                                  latency={"0.005": 9.0})
    assert point.members["logistic"].errors == 1 and point.members["logistic"].draining == 1
    assert (point.cost_per_hour, point.lower_bound_per_hour) == (3.0, 2.0)
    assert Point.from_json(json.loads(json.dumps(point.to_json()))) == point


def test_counters_that_went_down_count_from_zero() -> None:
    assert history.bucket_increase({"0.1": 10, "+Inf": 12}, {"0.1": 1, "+Inf": 3}) == {"0.1": 1, "+Inf": 2}
    assert history.bucket_increase({"0.1": 1, "+Inf": 1}, {"0.1": 4, "+Inf": 6}) == {"0.1": 3, "+Inf": 2}


def point(t: float, span: float = 1.0, cost: float | None = 2.0, requests: float = 10.0,
          latency: dict[str, float] | None = None, ready: int = 1) -> Point:
    return Point(t=t, span=span, cost_per_hour=cost, lower_bound_per_hour=1.0 if cost is not None else None,
                 requests=requests, latency=latency or {"0.01": requests},
                 members={"m": MemberPoint(ready=ready, requests=requests, latency=latency or {"0.01": requests})})


def test_an_aggregate_keeps_counts_exact_and_cost_time_weighted() -> None:
    points = [point(1.0, span=1.0, cost=10.0, requests=1, latency={"0.001": 1}),
              point(4.0, span=3.0, cost=2.0, requests=99, latency={"0.5": 99}, ready=3)]
    rolled = history.aggregate(points)
    assert (rolled.t, rolled.span, rolled.requests) == (4.0, 4.0, 100)
    assert rolled.cost_per_hour == pytest.approx((10.0 * 1 + 2.0 * 3) / 4)
    assert rolled.latency == {"0.001": 1, "0.5": 99}
    assert history.quantile(0.99, rolled.latency) == history.quantile(0.99, {"0.001": 1, "0.5": 99})
    assert rolled.members["m"].ready == 3 and rolled.members["m"].requests == 100
    assert history.aggregate([point(1.0, cost=None)]).cost_per_hour is None
    down = history.downsample([point(float(t)) for t in range(0, 120, 5)], 60.0)
    assert [p.t for p in down] == [55.0, 115.0] and [p.requests for p in down] == [120, 120]


def test_buckets_complete_when_a_point_falls_in_a_later_one() -> None:
    assert history.completed_bucket(None, 65.0, 60.0) is None
    assert history.completed_bucket(55.0, 59.0, 60.0) is None
    assert history.completed_bucket(55.0, 61.0, 60.0) == (0.0, 60.0)
    assert history.completed_bucket(55.0, 1000.0, 60.0) == (0.0, 60.0)


def test_tiers_merge_without_counting_time_twice() -> None:
    fine = [point(float(t)) for t in (100, 101, 102)]
    coarse = [point(60.0, span=60), point(101.0, span=60)]  # the second overlaps the fine points
    merged = history.merge_tiers([fine, coarse])
    assert [p.t for p in merged] == [60.0, 100.0, 101.0, 102.0]


def test_a_long_deployment_keeps_a_bounded_history(tmp_path: Path) -> None:
    """Samples every second for 2,000 s with tiers of (every sample, kept 20 s), (10 s, kept
    200 s), (100 s, kept 1,000 s): the journal holds about 20 + 20 + 10 points, and the merged
    series still covers the last 1,000 s with every request counted once per covered time."""
    tiers = (Tier(0.0, 20.0), Tier(10.0, 200.0), Tier(100.0, 1000.0))
    with ServeState.open(tmp_path / "state") as state:
        previous = None
        for second in range(1, 2001):
            record(state, point(float(second)), previous, tiers)
            previous = float(second)
        counts = [len(state.points(i)) for i in range(3)]
        assert counts[0] <= 21 and counts[1] <= 21 and counts[2] <= 11, counts
        merged = read_points(state, tiers)
    assert merged[-1].t == 2000.0 and merged[0].t <= 1100.0
    assert [p.t for p in merged] == sorted(p.t for p in merged)
    assert sum(p.requests for p in merged) == pytest.approx(10.0 * sum(p.span for p in merged))


def test_events_are_kept_redacted_and_bounded(tmp_path: Path) -> None:
    events = EventLog(secrets=("s3cret",), clock=lambda: 5.0)
    events.add("replica launched with token s3cret")
    with ServeState.open(tmp_path / "state") as state:
        state.add_events(events.take())
        assert state.events() == [(5.0, "replica launched with token <redacted>")]
        state.add_events([(float(i), f"event {i}") for i in range(EVENTS_KEPT + 10)])
        state.prune([])
        kept = state.events(limit=10 * EVENTS_KEPT)
    assert len(kept) == EVENTS_KEPT and kept[-1][1] == f"event {EVENTS_KEPT + 9}"
    assert events.take() == []


SNAPSHOT = {
    "job": "demo <script>alert(1)</script>", "url": "http://127.0.0.1:8080", "status_url": "http://127.0.0.1:1/",
    "framework_id": "fw-1", "started_at": 0.0, "updated_at": 100.0,
    "targets": {"lin<b>": {"sha256": "ab" * 32, "min_replicas": 1, "max_replicas": 3, "desired": 2}},
    "replicas": [{"task_id": "lin<b>.replica-1", "member": "lin<b>", "agent_id": "a1", "hostname": "cheap&host",
                  "port": 31000, "state": "ready", "sha256": "ab" * 32, "price": 0.5},
                 {"task_id": "lin<b>.replica-2", "member": "lin<b>", "agent_id": "a2", "hostname": "dear",
                  "port": 31001, "state": "starting", "sha256": "ab" * 32, "price": 2.0}],
}


def test_the_summary_and_its_text() -> None:
    points = [Point(t=float(t), span=5.0, cost_per_hour=2.5, lower_bound_per_hour=0.5, requests=50, errors=1,
                    latency={"0.005": 49, "0.05": 1},
                    members={"lin<b>": MemberPoint(ready=1, starting=1, desired=2, requests=50,
                                                   latency={"0.005": 50})})
              for t in range(5, 101, 5)]
    document = history.summary(SNAPSHOT, points, [(90.0, "member lin<b>: 2 replica(s) wanted (was 1)")],
                               live=False, now=100.0)
    assert document["state"] == "stopped"
    assert (document["cost_per_hour"], document["lower_bound_per_hour"], document["cost_over_bound"]) == (2.5, 0.5, 5.0)
    assert document["end_to_end"]["rate_rps"] == pytest.approx(10.0)
    assert document["end_to_end"]["errors"] == 12  # the last minute: 12 points of 5 s
    member = document["members"]["lin<b>"]
    assert (member["ready"], member["starting"], member["desired"], member["max_replicas"]) == (1, 1, 2, 3)
    assert len(document["series"]["t"]) == 20 and document["series"]["bound"][0] == 0.5
    text = history.describe(document)
    assert "deployment stopped" in text and "cost per hour 2.5000 (lower bound 0.5000, 5.00x)" in text
    assert "member lin<b>: 1 ready, 1 starting, 0 draining (desired 2, 1..3)" in text
    assert "lin<b>.replica-1: lin<b> on cheap&host:31000 (ready; price 0.5/h)" in text
    assert "2 replica(s) wanted" in text
    stopped = history.summary(SNAPSHOT, points + [Point(t=106.0, span=6.0)], [], live=False, now=5000.0)
    assert (stopped["cost_per_hour"], stopped["cost_at"]) == (2.5, 100.0)  # its last cost while serving
    assert stopped["end_to_end"]["requests"] == 550  # its last minute of serving, not the minute before `now`
    assert "last cost per hour 2.5000" in history.describe(stopped)
    empty = history.summary({}, [], [], live=True, now=1.0)
    assert empty["cost_per_hour"] is None and empty["history"]["points"] == 0
    assert "deployment serving" in history.describe(empty)


def test_the_page_escapes_what_the_job_file_names_and_draws_the_cost_against_the_bound() -> None:
    points = [Point(t=float(t), span=5.0, cost_per_hour=2.0 + (t > 50), lower_bound_per_hour=1.0, requests=5,
                    latency={"0.01": 5}, members={"lin<b>": MemberPoint(ready=1, requests=5, latency={"0.01": 5})})
              for t in range(5, 101, 5)]
    page = render_page(history.summary(SNAPSHOT, points, [(1.0, "<img src=x onerror=alert(1)>")], live=True,
                                       now=100.0))
    assert "<script>" not in page and "<img" not in page and "<b>" not in page.replace("<b>3.0000</b>", "")
    assert "demo &lt;script&gt;" in page and "cheap&amp;host" in page
    assert 'http-equiv="refresh"' in page
    for series in ("cost per hour", "lower bound"):
        assert re.search(rf'<svg class="chart" data-chart="cost".*?<polyline data-series="{series}"', page, re.S)
    assert page.count('<tr data-replica="') == 2
    assert not re.search(r"""\b(src|href)\s*=\s*["']https?:(?!//127\.0\.0\.1:8080)""", page)


def test_a_chart_breaks_its_line_where_values_are_unknown_and_steps_when_asked() -> None:
    chart = svg_chart("c", "t", [0.0, 1.0, 2.0, 3.0], [("a", [1.0, None, 2.0, 2.0], "#000", False)], step=True)
    assert chart.count("<polyline") == 1 and chart.count("<circle") == 1
    polyline = re.search(r'points="([^"]+)"', chart)
    assert polyline is not None and len(polyline.group(1).split()) == 3  # 2 points + the step's corner
    assert not math.isnan(float(polyline.group(1).split()[0].split(",")[1]))


def test_the_page_document_is_built_once_per_sample_however_many_watch() -> None:
    from framework.serving.monitor import cached, render_once

    built: list[int] = []
    now = [0.0]
    document = cached(lambda: built.append(1) or {"n": len(built)}, 5.0, clock=lambda: now[0])
    page = render_once(lambda d: f"page {d['n']}")
    assert [page(document()) for _ in range(10)] == ["page 1"] * 10 and len(built) == 1
    now[0] = 5.0
    assert page(document()) == "page 2" and len(built) == 2


def test_events_are_caught_without_changing_what_the_command_line_prints() -> None:
    """``serve`` logs warnings only (no -v): the controller's INFO lines become events, while the
    root's handler still gets its warnings and nothing more; detached, the loggers are as before."""
    import io
    import logging

    root, controller = logging.getLogger(), logging.getLogger("framework.serving.controller")
    stream = io.StringIO()
    printed = logging.StreamHandler(stream)
    saved = (root.level, controller.level, controller.propagate)
    root.addHandler(printed)
    root.setLevel(logging.WARNING)
    controller.setLevel(logging.NOTSET)
    try:
        events = EventLog().attach()
        controller.info("member linear: 2 replica(s) wanted (was 1)")
        controller.warning("replica r1 of linear on agent-1 ended: TASK_FAILED; replacing it")
        controller.debug("not an event")
        events.detach()
        controller.info("after detach")
        assert [text for _t, text in events.take()] == ["member linear: 2 replica(s) wanted (was 1)",
                                                        "replica r1 of linear on agent-1 ended: TASK_FAILED; "
                                                        "replacing it"]
        assert stream.getvalue().splitlines() == ["replica r1 of linear on agent-1 ended: TASK_FAILED; replacing it"]
        assert (controller.level, controller.propagate) == (logging.NOTSET, True)
    finally:
        root.removeHandler(printed)
        root.setLevel(saved[0])
        controller.setLevel(saved[1])
        controller.propagate = saved[2]


def test_a_journal_of_the_first_schema_is_read_and_then_upgraded(tmp_path: Path) -> None:
    """A deployment journaled before the history existed: status reads it (no history), and the
    next serve of it adds the history and keeps its framework id and replicas."""
    import sqlite3

    state_dir = tmp_path / "state"
    state_dir.mkdir()
    db = sqlite3.connect(state_dir / "serve.sqlite3")
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE replicas (task_id TEXT PRIMARY KEY, member TEXT NOT NULL, agent_id TEXT NOT NULL,
            hostname TEXT NOT NULL, port INTEGER NOT NULL, sha256 TEXT NOT NULL, state TEXT NOT NULL,
            executor_id TEXT NOT NULL DEFAULT '', updated_at REAL NOT NULL);
        INSERT INTO meta VALUES ('framework_id', 'fw-old');
        INSERT INTO replicas VALUES ('r1', 'linear', 'a1', 'host1', 31000, 'ab', 'TASK_RUNNING', 'ensemble.g1', 1.0);
        PRAGMA user_version=1;""")
    db.close()
    with ServeState.read(state_dir) as old:
        assert old.points(0) == [] and old.events() == [] and old.snapshot() == {}
    with ServeState.open(state_dir) as state:
        assert state.framework_id == "fw-old" and [r.task_id for r in state.replicas()] == ["r1"]
        record(state, point(10.0), None)
        assert len(state.points(0)) == 1
    with ServeState.read(state_dir) as upgraded:
        assert int(upgraded._db.execute("PRAGMA user_version").fetchone()[0]) == 4  # through 2 (history) and 3 to 4
        assert [p.t for p in read_points(upgraded)] == [10.0]


def test_shed_requests_are_sampled_summed_and_shown_apart_from_errors() -> None:
    metrics = GatewayMetrics(["linear"])
    before = history.read_counters(metrics.registry.collect())
    metrics.request("ok", 0.004)
    for _ in range(3):
        metrics.request_rejected("queue_full")
    metrics.request_rejected("deadline", sent=True)
    after = history.read_counters(metrics.registry.collect())
    point = history.sample(100.0, 5.0, before, after, {"linear": {"desired": 1, "ready": 1}}, None)
    assert (point.requests, point.errors, point.rejected) == (1, 0, 4)
    assert Point.from_json(json.loads(json.dumps(point.to_json()))) == point
    assert Point.from_json({"t": 1.0, "span": 5.0}).rejected == 0.0  # a journal written before shedding
    assert history.aggregate([point, point]).rejected == 8
    document = history.summary(SNAPSHOT, [point], [], live=False, now=100.0)
    assert document["end_to_end"]["rejected"] == 4 and document["series"]["rejected"] == [0.8]
    assert "0 errors, 4 shed (overload)" in history.describe(document)
    assert "4 shed (overload)" in render_page(document)


def test_each_members_busy_replicas_are_sampled_summed_and_shown() -> None:
    """The autoscaler's busy measure (replica-seconds of calls) is a counter of the gateway's
    metrics: a point holds its increase, an aggregate the sum, and the summary, ``status`` text
    and the page show it per second of the last minute (how many replicas were busy)."""
    metrics = GatewayMetrics(["forest", "logistic"])
    before = history.read_counters(metrics.registry.collect())
    for _ in range(40):
        metrics.replica_call("forest", "ok", 0.05)
    metrics.replica_call("forest", "cancelled")  # no time given: not busy
    after = history.read_counters(metrics.registry.collect())
    counts = {"forest": {"desired": 2, "ready": 2}, "logistic": {"desired": 1, "ready": 1}}
    first = history.sample(100.0, 4.0, before, after, counts, (3.0, 3.0))
    assert first.members["forest"].busy == pytest.approx(2.0) and first.members["logistic"].busy == 0.0
    assert Point.from_json(json.loads(json.dumps(first.to_json()))) == first
    second = history.sample(104.0, 4.0, after, after, counts, (3.0, 3.0))
    assert history.aggregate([first, second]).members["forest"].busy == pytest.approx(2.0)
    targets = {name: {"min_replicas": 1, "max_replicas": 2, "desired": counts[name]["desired"]} for name in counts}
    document = history.summary({"targets": targets}, [first, second], [], True, 104.0)
    assert document["members"]["forest"]["busy"] == pytest.approx(0.25)  # 2 replica-seconds over 8 s
    assert "busy 0.25 replica(s)" in history.describe(document)
    assert re.search(r"<td>0\.25</td></tr>", render_page(document))
