"""The gateway's overload protection over real HTTP: a full queue, a queue timeout and a client
deadline shed requests with 503 + Retry-After + a JSON reason (504 once at a replica), shed
requests spend no replica time, are counted by reason in /metrics and stay visible to the
autoscaler as demand; a live reconfiguration drops no request."""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Cancer, spec_for
from framework.serving.spec import ServeSpec
from serving_helpers import get, post_concurrently, post_json, post_with_headers, wait_for


def rows_of(X: np.ndarray, columns: tuple[str, ...]) -> list[dict[str, float]]:
    return [dict(zip(columns, map(float, row))) for row in X]


def body(cancer: Cancer, start: int, count: int = 1) -> bytes:
    return json.dumps({"rows": rows_of(cancer.X[start:start + count], cancer.columns)}).encode()


def metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = get(f"{url}/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def in_background(function: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(function()), daemon=True)
    thread.start()
    return thread, out


def labels(x: np.ndarray, fitted: Any) -> list[str]:
    return [str(v) for v in fitted.predict(x)]


def test_a_full_queue_sheds_at_once_with_503_retry_after_and_the_reason(deploy, cancer, fitted):
    tree = fitted["tree"]
    d = deploy([(spec_for("tree", tree, "predict_proba"), tree, 1)], "soft_vote", cancer.columns,
               max_queue=3, retry_after_s=2, batches_per_replica=1)
    replica, batcher = d.replica("tree"), d.gateway.batchers["tree"]
    replica.slow()  # the first batch waits at the replica: the next requests wait in the queue
    first, first_out = in_background(lambda: post_json(f"{d.url}/v1/predict", json.loads(body(cancer, 0))))
    wait_for(lambda: replica.calls == 1)
    queued, queued_out = in_background(lambda: post_concurrently(
        f"{d.url}/v1/predict", [json.loads(body(cancer, i)) for i in (1, 2, 3)]))
    wait_for(lambda: batcher.queue_depth == 3)

    status, headers, answer = post_with_headers(f"{d.url}/v1/predict", body(cancer, 4))
    assert status == 503 and headers["Retry-After"] == "2"
    assert answer["reason"] == "queue_full" and "max_queue 3" in answer["error"]
    assert replica.calls == 1, "a shed request reached a replica"
    # The autoscaler sees the shed request as demand: arrivals count it, the queue holds it.
    load = d.gateway.load_samples()["tree"]
    assert load.queue_depth == 3 + 1 and load.rate_rps > 0
    assert d.gateway.rejected_rates()["tree"]["queue_full"] > 0

    replica.release()
    first.join(30), queued.join(30)
    answers = [first_out[0]] + queued_out[0]
    assert [s for s, _a in answers] == [200] * 4
    assert [a["predictions"][0]["label"] for _s, a in answers] == labels(cancer.X[:4], tree)
    samples = metrics(d.url)
    assert samples[("mesos_ensemble_rejected_requests_total", (("reason", "queue_full"),))] == 1
    assert samples[("mesos_ensemble_member_rejected_total", (("member", "tree"), ("reason", "queue_full")))] == 1
    assert samples[("mesos_ensemble_requests_total", (("outcome", "rejected"),))] == 1
    assert samples[("mesos_ensemble_requests_total", (("outcome", "ok"),))] == 4


def test_a_request_past_its_queue_timeout_is_shed_without_replica_time(deploy, cancer, fitted):
    tree = fitted["tree"]
    d = deploy([(spec_for("tree", tree, "predict_proba"), tree, 1)], "soft_vote", cancer.columns,
               queue_timeout_ms=50, batches_per_replica=1)
    replica = d.replica("tree")
    replica.slow()
    first, first_out = in_background(lambda: post_json(f"{d.url}/v1/predict", json.loads(body(cancer, 0))))
    wait_for(lambda: replica.calls == 1)
    status, headers, answer = post_with_headers(f"{d.url}/v1/predict", body(cancer, 1))
    assert status == 503 and headers["Retry-After"] == "1" and answer["reason"] == "queue_timeout"
    assert d.gateway.batchers["tree"].queue_depth == 0
    # The time it waited counts in the member's p99 (a miss the autoscaler must see).
    assert d.gateway.load_samples()["tree"].p99_ms >= 50
    replica.release()
    first.join(30)
    assert first_out[0][0] == 200  # the request already at the replica is answered
    assert replica.calls == 1, "the timed-out request reached a replica"
    assert metrics(d.url)[("mesos_ensemble_rejected_requests_total", (("reason", "queue_timeout"),))] == 1


def test_a_client_deadline_that_cannot_be_met_is_refused_early_or_given_up(deploy, cancer, fitted):
    tree = fitted["tree"]
    d = deploy([(spec_for("tree", tree, "predict_proba"), tree, 1)], "soft_vote", cancer.columns,
               batches_per_replica=1, hedge=False)
    replica = d.replica("tree")
    url = f"{d.url}/v1/predict"
    # A bad header is a 400 naming it.
    status, _h, answer = post_with_headers(url, body(cancer, 0), headers={"X-Request-Timeout-Ms": "soon"})
    assert status == 400 and answer["error"].startswith("X-Request-Timeout-Ms: expected a positive number")
    # A replica that takes ~25 ms a call: once measured, a 5 ms budget is refused before any replica time.
    replica.delay_s = 0.025
    for i in range(20):
        assert post_json(url, json.loads(body(cancer, i)))[0] == 200
    calls = replica.calls
    status, headers, answer = post_with_headers(url, body(cancer, 0), headers={"X-Request-Timeout-Ms": "5"})
    assert status == 503 and answer["reason"] == "deadline" and "Retry-After" in headers
    assert "expected to take" in answer["error"] and replica.calls == calls
    # A generous budget is answered.
    status, _h, answer = post_with_headers(url, body(cancer, 0), headers={"X-Request-Timeout-Ms": "5000"})
    assert status == 200 and answer["predictions"][0]["label"] == labels(cancer.X[:1], tree)[0]
    # A deadline that passes while the request waits behind a held batch: 503, no replica time.
    replica.slow()
    first, first_out = in_background(lambda: post_json(url, json.loads(body(cancer, 0))))
    wait_for(lambda: replica.calls == calls + 2)
    status, _h, answer = post_with_headers(url, body(cancer, 1), headers={"X-Request-Timeout-Ms": "300"})
    assert status == 503 and answer["reason"] == "deadline" and "waiting for a replica" in answer["error"]
    assert replica.calls == calls + 2
    replica.release()
    first.join(30)
    assert first_out[0][0] == 200
    # A deadline that passes while the request is at a (held) replica: 504.
    replica.slow()
    status, headers, answer = post_with_headers(url, body(cancer, 2), headers={"X-Request-Timeout-Ms": "300"})
    assert status == 504 and answer["reason"] == "deadline" and "Retry-After" not in headers
    replica.release()
    samples = metrics(d.url)
    assert samples[("mesos_ensemble_rejected_requests_total", (("reason", "deadline"),))] == 3
    assert samples[("mesos_ensemble_requests_total", (("outcome", "timeout"),))] == 1
    assert samples[("mesos_ensemble_requests_total", (("outcome", "bad_request"),))] == 1


def test_with_min_members_a_member_that_sheds_is_only_missing(deploy, cancer, fitted):
    tree, nb = fitted["tree"], fitted["nb"]
    d = deploy([(spec_for("tree", tree, "predict_proba"), tree, 1), (spec_for("nb", nb, "predict_proba"), nb, 1)],
               "soft_vote", cancer.columns, min_members=1, max_queue=1, batches_per_replica=1, max_slack_ms=0)
    slow = d.replica("tree")
    slow.slow()
    first, _ = in_background(lambda: post_json(f"{d.url}/v1/predict", json.loads(body(cancer, 0))))
    wait_for(lambda: slow.calls == 1)
    second, _ = in_background(lambda: post_json(f"{d.url}/v1/predict", json.loads(body(cancer, 1))))
    wait_for(lambda: d.gateway.batchers["tree"].queue_depth == 1)
    status, answer = post_json(f"{d.url}/v1/predict", json.loads(body(cancer, 2)))
    assert status == 200 and answer["answered_by"] == ["nb"] and answer["missing"] == ["tree"]
    assert "max_queue 1" in answer["errors"]["tree"]
    assert answer["predictions"][0]["label"] == labels(cancer.X[2:3], nb)[0]
    slow.release()
    first.join(30), second.join(30)
    assert slow.calls == 2  # the third request never reached the tree


def test_reconfigure_applies_batching_and_shedding_live_without_dropping_requests(deploy, cancer, fitted):
    tree = fitted["tree"]
    d = deploy([(spec_for("tree", tree, "predict_proba"), tree, 1)], "soft_vote", cancer.columns,
               max_batch_rows=64, max_queue=0, batches_per_replica=1)
    replica, batcher = d.replica("tree"), d.gateway.batchers["tree"]
    replica.slow()
    n = 30
    client, out = in_background(lambda: post_concurrently(
        f"{d.url}/v1/predict", [json.loads(body(cancer, 2 * i, 2)) for i in range(n)]))
    wait_for(lambda: replica.calls == 1 and batcher.queue_depth + replica.batch_rows[0] // 2 == n)
    # While requests wait: smaller batches, a queue cap, another Retry-After, hedging off.
    options = d.gateway.reconfigure(ServeSpec(max_batch_rows=8, max_queue=40, retry_after_s=3, hedge=False,
                                              max_wait_ms=1.0, target_p99_ms=50.0))
    assert (options.max_batch_rows, options.max_queue, options.retry_after_s, options.hedge) == (8, 40, 3, False)
    assert (batcher.max_batch_rows, batcher.max_queue) == (8, 40) and not d.gateway.balancer.hedge
    assert options.batches_per_replica == 1, "options the spec does not set were reset"
    replica.release()
    client.join(60)
    answers = out[0]
    assert [s for s, _a in answers] == [200] * n
    got = [p["label"] for _s, a in answers for p in a["predictions"]]
    assert got == labels(cancer.X[:2 * n], tree)
    assert max(replica.batch_rows[1:]) <= 8  # every batch cut after the change holds at most 8 rows
    # The new cap sheds with the new Retry-After.
    replica.slow()
    with pytest.raises(ValueError, match="max_queue"):
        d.gateway.reconfigure(ServeSpec(max_queue=-1))  # refused whole: nothing changes
    assert d.gateway.options.max_queue == 40 and batcher.max_batch_rows == 8
    d.gateway.reconfigure(ServeSpec(max_queue=1, retry_after_s=3))
    first, _ = in_background(lambda: post_json(f"{d.url}/v1/predict", json.loads(body(cancer, 0))))
    wait_for(lambda: batcher.in_flight == 1)
    second, _ = in_background(lambda: post_json(f"{d.url}/v1/predict", json.loads(body(cancer, 1))))
    wait_for(lambda: batcher.queue_depth == 1)
    status, headers, answer = post_with_headers(f"{d.url}/v1/predict", body(cancer, 2))
    # Retry-After: one request waiting, drained at the rate the 30 above came back (at least 3 per
    # second over the 10 s window): 1 s, under the new cap.
    assert status == 503 and headers["Retry-After"] == "1" and answer["reason"] == "queue_full"
    replica.release()
    first.join(30), second.join(30)


def test_retry_after_estimates_when_the_queue_drains_at_its_measured_rate(deploy, cancer, fitted):
    """A shed request's Retry-After is its member's queue over the rate the queue has been draining,
    rounded up, within 1..retry_after_s: neither the cap nor 1 when the queue is long."""
    tree = fitted["tree"]
    d = deploy([(spec_for("tree", tree, "predict_proba"), tree, 1)], "soft_vote", cancer.columns,
               max_queue=40, retry_after_s=60, batches_per_replica=1, max_batch_rows=1, max_wait_ms=0)
    replica, batcher = d.replica("tree"), d.gateway.batchers["tree"]
    assert [s for s, _a in post_concurrently(f"{d.url}/v1/predict",
                                             [json.loads(body(cancer, i)) for i in range(20)])] == [200] * 20
    replica.slow()
    first, _ = in_background(lambda: post_json(f"{d.url}/v1/predict", json.loads(body(cancer, 0))))
    wait_for(lambda: batcher.in_flight == 1)
    queued, queued_out = in_background(lambda: post_concurrently(
        f"{d.url}/v1/predict", [json.loads(body(cancer, i)) for i in range(40)]))
    wait_for(lambda: batcher.queue_depth == 40)
    status, headers, answer = post_with_headers(f"{d.url}/v1/predict", body(cancer, 2))
    # 20 came back within the 10 s window (2..20 per second): 40 waiting take 2..20 s.
    assert status == 503 and answer["reason"] == "queue_full"
    assert 2 <= int(headers["Retry-After"]) <= 20, headers["Retry-After"]
    replica.release()
    first.join(30), queued.join(60)
    assert [s for s, _a in queued_out[0]] == [200] * 40

