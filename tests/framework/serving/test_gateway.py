"""The gateway end to end over real HTTP: real replicas serving fitted models, exact answers,
batching, hedging, failover, min_members, /metrics, bad requests."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.base import clone
from sklearn.datasets import load_diabetes
from sklearn.ensemble import VotingClassifier, VotingRegressor
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.tree import DecisionTreeRegressor

from conftest import Cancer, classifiers, spec_for
from framework.ensemble import make_combiner
from serving_helpers import NPY, get, npy, post, post_concurrently, post_json, wait_for


def rows_of(X: np.ndarray, columns: tuple[str, ...]) -> list[dict[str, float]]:
    return [dict(zip(columns, map(float, row))) for row in X]


def soft_vote_expected(fitted: dict[str, Any], names: list[str], cancer: Cancer, X: np.ndarray,
                       weights: list[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    vc = VotingClassifier([(n, clone(classifiers()[n])) for n in names], voting="soft", weights=weights)
    vc.fit(cancer.X, cancer.y)
    return vc.predict(X), vc.predict_proba(X)


def assert_soft_vote(answer: dict[str, Any], labels: np.ndarray, proba: np.ndarray, classes: list[str]) -> None:
    got = answer["predictions"]
    assert [p["label"] for p in got] == labels.tolist()
    assert np.array_equal(np.array([[p["proba"][c] for c in classes] for p in got]), proba)


def metric_samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = get(f"{url}/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def test_soft_vote_answers_equal_voting_classifier(deploy, cancer, fitted):
    names, weights = ["logit", "tree", "nb"], [2.0, 1.0, 0.5]
    members = [(spec_for(n, fitted[n], "predict_proba", w), fitted[n], 1) for n, w in zip(names, weights)]
    d = deploy(members, "soft_vote", cancer.columns)
    X = cancer.X[100:140]
    labels, proba = soft_vote_expected(fitted, names, cancer, X, weights)
    classes = sorted(set(cancer.y.tolist()))

    status, answer = post_json(f"{d.url}/v1/predict", {"rows": rows_of(X, cancer.columns)})
    assert status == 200, answer
    assert_soft_vote(answer, labels, proba, classes)
    assert answer["answered_by"] == names and answer["missing"] == []

    # The same rows as columns/data (columns in another order) and as an .npy body: the same answer.
    order = list(reversed(cancer.columns))
    status, by_columns = post_json(f"{d.url}/v1/predict", {"columns": order, "data": X[:, ::-1].tolist()})
    assert status == 200 and by_columns["predictions"] == answer["predictions"]
    status, by_npy = post(f"{d.url}/v1/predict?members=true", npy(X), NPY)
    assert status == 200 and by_npy["predictions"] == answer["predictions"]
    # Each member's own say (its predicted label) comes with members=true.
    assert by_npy["members"] == {n: fitted[n].predict(X).tolist() for n in names}


def test_weighted_mean_answers_equal_voting_regressor(deploy):
    data = load_diabetes()
    X, y, columns = data.data, data.target, tuple(data.feature_names)
    estimators = {"ols": LinearRegression(), "ridge": Ridge(alpha=0.5), "tree": DecisionTreeRegressor(max_depth=5,
                                                                                                     random_state=0)}
    weights = [1.0, 3.0, 2.0]
    vr = VotingRegressor(list(estimators.items()), weights=weights).fit(X, y)
    fitted = {n: clone(e).fit(X, y) for n, e in estimators.items()}
    members = [(spec_for(n, fitted[n], "predict", w), fitted[n], 1) for (n, w) in zip(fitted, weights)]
    d = deploy(members, "weighted_mean", columns)
    rows = X[:64]  # one request, one batch per member: each member predicts exactly these rows
    status, answer = post_json(f"{d.url}/v1/predict", {"rows": rows_of(rows, columns), "members": True})
    assert status == 200, answer
    assert np.array_equal(np.array(answer["predictions"]), vr.predict(rows))
    assert answer["members"] == {n: fitted[n].predict(rows).tolist() for n in fitted}


def test_members_get_their_own_columns(deploy, cancer):
    """A member fitted on some columns is sent exactly those (in its order); the answer is the
    batch combiner's on the same outputs."""
    few = [cancer.columns[i] for i in (7, 2, 20)]
    idx = [cancer.columns.index(c) for c in few]
    narrow = clone(classifiers()["tree"]).fit(cancer.X[:, idx], cancer.y)
    wide = clone(classifiers()["nb"]).fit(cancer.X, cancer.y)
    specs = [spec_for("narrow", narrow, "predict_proba", features=few), spec_for("wide", wide, "predict_proba")]
    d = deploy([(specs[0], narrow, 1), (specs[1], wide, 1)], "soft_vote", cancer.columns)
    X = cancer.X[:30]
    expected = make_combiner("soft_vote", specs).combine({"narrow": narrow.predict_proba(X[:, idx]),
                                                          "wide": wide.predict_proba(X)})
    status, answer = post(f"{d.url}/v1/predict", npy(X), NPY)
    assert status == 200, answer
    assert [p["label"] for p in answer["predictions"]] == expected["prediction"].tolist()
    assert [p["proba"]["malignant"] for p in answer["predictions"]] == expected["proba_malignant"].tolist()


def test_concurrent_requests_are_batched_and_each_answer_is_exact(deploy, cancer, fitted):
    names = ["tree", "forest"]
    members = [(spec_for(n, fitted[n], "predict_proba"), fitted[n], 1) for n in names]
    d = deploy(members, "soft_vote", cancer.columns, max_batch_rows=12, max_wait_ms=5, batches_per_replica=1)
    tree = d.replica("tree")
    tree.slow()  # the first batch waits at the replica, so the others queue at the gateway
    n, per = 24, 3
    chunks = [cancer.X[i * per:(i + 1) * per] for i in range(n)]
    answers: list[Any] = []
    client = threading.Thread(target=lambda: answers.extend(post_concurrently(
        f"{d.url}/v1/predict", [{"rows": rows_of(c, cancer.columns)} for c in chunks])))
    client.start()
    batcher = d.gateway.batchers["tree"]
    wait_for(lambda: tree.calls == 1 and batcher.queue_depth + tree.batch_rows[0] // per == n)
    tree.release()
    client.join()

    classes = sorted(set(cancer.y.tolist()))
    labels, proba = soft_vote_expected(fitted, names, cancer, cancer.X[:n * per])  # trees: each row's bits
    for i, (status, answer) in enumerate(answers):                              # whatever the batch
        assert status == 200, answer
        assert_soft_vote(answer, labels[i * per:(i + 1) * per], proba[i * per:(i + 1) * per], classes)
    assert tree.calls < n and sum(tree.batch_rows) == n * per and max(tree.batch_rows) <= 12
    assert tree.calls >= 1 + (n * per - tree.batch_rows[0]) // 12  # full batches after the first
    samples = metric_samples(d.url)
    assert samples[("mesos_ensemble_batch_rows_count", (("member", "tree"),))] == tree.calls


def test_a_request_larger_than_a_batch_is_cut_and_joined_in_order(deploy, cancer, fitted):
    members = [(spec_for(n, fitted[n], "predict_proba"), fitted[n], 1) for n in ("tree", "nb")]
    d = deploy(members, "soft_vote", cancer.columns, max_batch_rows=16)
    X = cancer.X[200:250]
    status, answer = post(f"{d.url}/v1/predict", npy(X), NPY)
    assert status == 200, answer
    assert_soft_vote(answer, *soft_vote_expected(fitted, ["tree", "nb"], cancer, X), sorted(set(cancer.y.tolist())))
    assert d.replica("tree").batch_rows == [16, 16, 16, 2]


def test_a_slow_replica_is_hedged_to_another(deploy, cancer, fitted):
    members = [(spec_for("tree", fitted["tree"], "predict_proba"), fitted["tree"], 2),
               (spec_for("nb", fitted["nb"], "predict_proba"), fitted["nb"], 1)]
    d = deploy(members, "soft_vote", cancer.columns, hedge_min_ms=5)
    slow, fast = d.replica("tree", 0), d.replica("tree", 1)
    slow.slow()  # never answers until released
    classes = sorted(set(cancer.y.tolist()))
    for i in range(10):  # the balancer tries an unmeasured replica first: the slow one within two requests
        X = cancer.X[10 * i:10 * i + 10]
        status, answer = post_json(f"{d.url}/v1/predict", {"rows": rows_of(X, cancer.columns)})
        assert status == 200, answer
        assert_soft_vote(answer, *soft_vote_expected(fitted, ["tree", "nb"], cancer, X), classes)
        if slow.calls:
            break
    assert slow.calls == 1 and slow.answered == 0 and fast.answered == i + 1
    samples = metric_samples(d.url)
    assert samples[("mesos_ensemble_hedges_total", (("member", "tree"),))] == 1
    assert samples[("mesos_ensemble_replica_calls_total", (("member", "tree"), ("outcome", "cancelled")))] == 1


def test_a_hedge_goes_only_to_an_idle_replica(deploy, cancer, fitted):
    members = [(spec_for("tree", fitted["tree"], "predict_proba"), fitted["tree"], 2)]
    d = deploy(members, "soft_vote", cancer.columns, hedge_min_ms=50, batches_per_replica=1)
    first, second = d.replica("tree", 0), d.replica("tree", 1)
    first.slow()
    second.slow()
    answers: list[Any] = []

    def client(i: int) -> None:
        answers.append(post_json(f"{d.url}/v1/predict", {"rows": rows_of(cancer.X[i:i + 1], cancer.columns)}))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    wait_for(lambda: first.calls == 1 and second.calls == 1)  # one batch at each, well within the hedge delay
    assert d.gateway.balancer.hedge_delay("tree") == pytest.approx(0.5)  # 10 x 50 ms while unmeasured
    time.sleep(0.8)  # past both calls' hedge delay: no replica was idle to race them, so neither was hedged
    assert metric_samples(d.url)[("mesos_ensemble_hedges_total", (("member", "tree"),))] == 0
    assert first.calls == 1 and second.calls == 1
    first.release()
    second.release()
    for thread in threads:
        thread.join()
    assert [status for status, _ in answers] == [200, 200] and first.answered == second.answered == 1


def test_hedging_can_be_turned_off(deploy, cancer, fitted):
    members = [(spec_for("tree", fitted["tree"], "predict_proba"), fitted["tree"], 2)]
    d = deploy(members, "soft_vote", cancer.columns, hedge=False, hedge_min_ms=1)
    slow, fast = d.replica("tree", 0), d.replica("tree", 1)
    slow.slow()
    answers: list[Any] = []

    def client() -> None:
        for i in range(10):
            answers.append(post_json(f"{d.url}/v1/predict", {"rows": rows_of(cancer.X[i:i + 1], cancer.columns)}))
            if slow.calls:
                return

    thread = threading.Thread(target=client)
    thread.start()
    wait_for(lambda: slow.calls == 1)
    assert d.gateway.balancer.hedge_delay("tree") is None
    time.sleep(0.3)  # many times the hedge delay hedging would use: still no second call
    hedges = metric_samples(d.url)[("mesos_ensemble_hedges_total", (("member", "tree"),))]
    assert fast.calls == len(answers) and hedges == 0
    slow.release()
    thread.join()
    assert all(status == 200 for status, _ in answers) and slow.answered == 1


@pytest.mark.parametrize("failure", ["error", "dies", "drops_connection"])
def test_a_failed_replica_s_batches_go_to_another(deploy, cancer, fitted, failure):
    members = [(spec_for("tree", fitted["tree"], "predict_proba"), fitted["tree"], 2),
               (spec_for("nb", fitted["nb"], "predict_proba"), fitted["nb"], 1)]
    d = deploy(members, "soft_vote", cancer.columns, hedge=False, suspect_s=3600)
    bad, good = d.replica("tree", 0), d.replica("tree", 1)
    url = f"{d.url}/v1/predict"
    for i in range(2):  # an unmeasured replica is tried first: both answer once (keep-alive connections to both)
        assert post_json(url, {"rows": rows_of(cancer.X[i:i + 1], cancer.columns)})[0] == 200
    assert bad.answered == good.answered == 1
    # The balancer forgets a replica that left the table; back in it, it is unmeasured, so tried first.
    entry = d.table.get("tree-0")
    d.table.remove("tree-0")
    assert post_json(url, {"rows": rows_of(cancer.X[2:3], cancer.columns)})[0] == 200
    d.table.add(entry)
    if failure == "error":
        bad.fail = True
    elif failure == "dies":
        bad.stop()
    else:
        bad.drop = True
    X = cancer.X[50:60]
    status, answer = post_json(url, {"rows": rows_of(X, cancer.columns)})
    assert status == 200, answer
    assert_soft_vote(answer, *soft_vote_expected(fitted, ["tree", "nb"], cancer, X), sorted(set(cancer.y.tolist())))
    samples = metric_samples(d.url)
    assert samples[("mesos_ensemble_failovers_total", (("member", "tree"),))] == 1
    assert samples[("mesos_ensemble_replica_calls_total", (("member", "tree"), ("outcome", "error")))] == 1
    assert bad.answered == 1 and good.answered == 3
    # The failed replica is suspect: the next batches go to the other one.
    assert post_json(url, {"rows": rows_of(X, cancer.columns)})[0] == 200
    assert good.answered == 4 and metric_samples(d.url)[("mesos_ensemble_failovers_total", (("member", "tree"),))] == 1


def test_min_members_answers_from_the_members_that_answered(deploy, cancer, fitted):
    names = ["tree", "forest", "nb"]
    members = [(spec_for(n, fitted[n], "predict_proba"), fitted[n], 1) for n in names]
    d = deploy(members, "soft_vote", cancer.columns, min_members=2)
    d.replica("nb").fail = True
    X = cancer.X[300:320]
    status, answer = post_json(f"{d.url}/v1/predict", {"rows": rows_of(X, cancer.columns)})
    assert status == 200, answer
    assert answer["answered_by"] == ["tree", "forest"] and answer["missing"] == ["nb"]
    assert "the model raised" in answer["errors"]["nb"]
    assert_soft_vote(answer, *soft_vote_expected(fitted, ["tree", "forest"], cancer, X), sorted(set(cancer.y.tolist())))

    d.replica("forest").fail = True  # one member left: fewer than min_members
    status, answer = post_json(f"{d.url}/v1/predict", {"rows": rows_of(X, cancer.columns)})
    assert status == 503
    assert "only 1 of 3 members answered (min_members=2)" in answer["error"] and answer["missing"] == ["forest", "nb"]
    samples = metric_samples(d.url)
    assert samples[("mesos_ensemble_requests_total", (("outcome", "degraded"),))] == 1
    assert samples[("mesos_ensemble_requests_total", (("outcome", "unavailable"),))] == 1


def test_without_min_members_every_member_must_answer(deploy, cancer, fitted):
    members = [(spec_for(n, fitted[n], "predict_proba"), fitted[n], 1) for n in ("tree", "nb")]
    d = deploy(members, "soft_vote", cancer.columns)
    d.table.mark_draining("nb-0")  # no ready replica of nb
    status, answer = post_json(f"{d.url}/v1/predict", {"rows": rows_of(cancer.X[:2], cancer.columns)})
    assert status == 503 and answer["missing"] == ["nb"] and "no ready replica" in answer["errors"]["nb"]
    assert d.replica("nb").calls == 0
    status, body = get(f"{d.url}/v1/health")
    assert status == 503 and json.loads(body)["status"] == "unavailable"


def test_metrics_health_models_and_load_samples(deploy, cancer, fitted):
    names = ["tree", "nb"]
    members = [(spec_for(n, fitted[n], "predict_proba"), fitted[n], 2 if n == "tree" else 1) for n in names]
    d = deploy(members, "soft_vote", cancer.columns)
    for i in range(5):
        assert post_json(f"{d.url}/v1/predict", {"rows": rows_of(cancer.X[i:i + 2], cancer.columns)})[0] == 200
    d.gateway.set_cost_per_hour(1.25, lower_bound=1.0)
    d.table.mark_draining("tree-1")

    status, body = get(f"{d.url}/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["mesos_ensemble_request_seconds"].type == "histogram"
    assert families["mesos_ensemble_member_seconds"].type == "histogram"
    samples = metric_samples(d.url)
    assert samples[("mesos_ensemble_requests_total", (("outcome", "ok"),))] == 5
    assert samples[("mesos_ensemble_request_seconds_count", ())] == 5
    assert samples[("mesos_ensemble_member_seconds_count", (("member", "nb"),))] == 5
    assert samples[("mesos_ensemble_replicas", (("member", "tree"), ("state", "ready")))] == 1
    assert samples[("mesos_ensemble_replicas", (("member", "tree"), ("state", "draining")))] == 1
    assert samples[("mesos_ensemble_queue_depth", (("member", "tree"),))] == 0
    assert samples[("mesos_ensemble_cost_per_hour", ())] == 1.25
    assert samples[("mesos_ensemble_cost_lower_bound_per_hour", ())] == 1.0

    loads = d.gateway.load_samples()
    assert set(loads) == set(names)
    assert loads["tree"].replicas_ready == 1 and loads["nb"].replicas_ready == 1
    assert loads["tree"].rate_rps > 0 and loads["tree"].p99_ms > 0 and loads["tree"].queue_depth == 0
    assert loads["tree"].busy is not None and loads["tree"].busy > 0  # the calls' time at its replicas
    assert loads["nb"].busy is not None and loads["nb"].busy > 0 and loads["tree"].recent_rate_rps is not None

    status, body = get(f"{d.url}/v1/health")
    assert status == 200 and json.loads(body)["members"]["tree"] == {"ready": 1, "draining": 1}
    status, body = get(f"{d.url}/v1/models")
    models = json.loads(body)
    assert models["integration"] == "soft_vote" and models["columns"] == list(cancer.columns)
    assert [m["name"] for m in models["members"]] == names
    assert {r["id"]: (r["sha256"], r["state"]) for r in models["members"][0]["replicas"]} == {
        "tree-0": ("sha-tree", "ready"), "tree-1": ("sha-tree", "draining")}


def test_a_draining_replica_gets_no_new_work(deploy, cancer, fitted):
    members = [(spec_for("tree", fitted["tree"], "predict_proba"), fitted["tree"], 2)]
    d = deploy(members, "soft_vote", cancer.columns)
    d.table.mark_draining("tree-0")
    for i in range(6):
        assert post_json(f"{d.url}/v1/predict", {"rows": rows_of(cancer.X[i:i + 1], cancer.columns)})[0] == 200
    assert d.replica("tree", 0).calls == 0 and d.replica("tree", 1).answered == 6


def test_stop_answers_the_requests_in_flight(deploy, cancer, fitted):
    members = [(spec_for("tree", fitted["tree"], "predict_proba"), fitted["tree"], 1)]
    d = deploy(members, "soft_vote", cancer.columns)
    replica = d.replica("tree")
    replica.slow()
    answers: list[Any] = []
    client = threading.Thread(target=lambda: answers.append(
        post_json(f"{d.url}/v1/predict", {"rows": rows_of(cancer.X[:3], cancer.columns)})))
    client.start()
    wait_for(lambda: replica.calls == 1)
    stopper = threading.Thread(target=d.gateway.stop)
    stopper.start()
    wait_for(lambda: d.gateway.draining)
    replica.release()
    client.join()
    stopper.join()
    status, answer = answers[0]
    assert status == 200 and len(answer["predictions"]) == 3


BAD_REQUESTS = [
    (b"{not json", "application/json", "body: not JSON"),
    (b"[1, 2]", "application/json", "body: expected a JSON object"),
    (json.dumps({"rows": []}).encode(), "application/json", "rows: expected a non-empty list"),
    (json.dumps({"rows": [{"bogus": 1}]}).encode(), "application/json", "rows[0]: unknown column 'bogus'"),
    (json.dumps({"data": [[1]]}).encode(), "application/json", "body: expected \"rows\", or \"columns\" and \"data\""),
    (json.dumps({"rows": [], "extra": 1}).encode(), "application/json", "body: unknown field 'extra'"),
    (json.dumps({"columns": ["mean radius"], "data": [[1.0]]}).encode(), "application/json",
     "columns: missing column 'mean texture' (and 28 more)"),
    (json.dumps({"columns": ["mean radius", "mean radius"], "data": [[1.0, 1.0]]}).encode(), "application/json",
     "columns: column 'mean radius' is named twice"),
    (npy(np.zeros(30)), NPY, "body: expected a 2-D array (rows x 30 columns), got shape (30,)"),
    (npy(np.zeros((2, 29))), NPY, "body: the array has 29 columns; expected 30: mean radius"),
    (npy(np.array([["a"] * 30])), NPY, "body: expected numbers, got dtype <U1"),
    (npy(np.zeros((0, 30))), NPY, "body: the array has no rows"),
    (b"not an npy", NPY, "body: not a readable .npy"),
]


def _object_npy() -> bytes:
    import io
    buffer = io.BytesIO()
    np.save(buffer, np.array([[object()] * 30], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def test_bad_requests_are_400_with_one_line_naming_what_is_wrong(deploy, cancer, fitted):
    members = [(spec_for("tree", fitted["tree"], "predict_proba"), fitted["tree"], 1)]
    d = deploy(members, "soft_vote", cancer.columns)
    row = dict(zip(cancer.columns, map(float, cancer.X[0])))
    missing = {k: v for k, v in row.items() if k != "worst symmetry"}
    nan = np.array(cancer.X[:2])
    nan[1, 3] = np.inf
    cases = BAD_REQUESTS + [
        (json.dumps({"rows": [row, missing]}).encode(), "application/json", "rows[1]: missing column 'worst symmetry'"),
        (json.dumps({"rows": [{**row, "mean area": "big"}]}).encode(), "application/json",
         "rows[0].mean area: expected a number, got \"big\""),
        (json.dumps({"rows": [{**row, "mean area": True}]}).encode(), "application/json",
         "rows[0].mean area: expected a number, got true"),
        (json.dumps({"rows": [{**row, "mean area": float("nan")}]}).encode(), "application/json",
         "rows[0].mean area: expected a finite number, got nan"),
        (json.dumps({"rows": [row], "members": "yes"}).encode(), "application/json",
         "members: expected true or false, got \"yes\""),
        (json.dumps({"columns": list(cancer.columns), "data": [[1.0] * 29]}).encode(), "application/json",
         "data[0]: expected a list of 30 numbers"),
        (npy(nan), NPY, "body: row 1, column 'mean area': inf; expected finite numbers"),
        (_object_npy(), NPY, "body: not a readable .npy: it holds Python objects (pickles are refused)"),
    ]
    for body, content_type, expected in cases:
        status, answer = post(f"{d.url}/v1/predict", body, content_type)
        assert status == 400, (expected, answer)
        assert expected in answer["error"] and "\n" not in answer["error"], (expected, answer["error"])
    assert d.replica("tree").calls == 0
    samples = metric_samples(d.url)
    assert samples[("mesos_ensemble_requests_total", (("outcome", "bad_request"),))] == len(cases)


def test_reading_json_rows_and_columns_directly():
    from framework.serving.gateway import BadRequest, rows_from_json

    columns = ("a", "b", "c")
    matrix, members = rows_from_json({"rows": [{"c": 3, "a": 1.5, "b": -2}, {"a": 0, "b": 1e300, "c": 0.1}]}, columns)
    assert matrix.tolist() == [[1.5, -2.0, 3.0], [0.0, 1e300, 0.1]] and members is False
    same, members = rows_from_json({"columns": ["c", "a", "b"], "data": [[3, 1.5, -2], [0.1, 0, 1e300]],
                                    "members": True}, columns)
    assert np.array_equal(same, matrix) and members is True
    for document, message in [
        ({"rows": [{"a": 1, "b": 2, "c": 10 ** 400}]}, "rows[0].c: expected a finite number"),
        ({"rows": [{"a": 1, "b": 2, "d": 3}]}, "rows[0]: unknown column 'd'"),
        ({"rows": [{"a": 1, "b": None, "c": 3}]}, "rows[0].b: expected a number, got null"),
        ({"rows": [{"a": 1, "b": "2", "c": 3}]}, "rows[0].b: expected a number, got \"2\""),
        ({"rows": [[1, 2, 3]]}, "rows[0]: expected an object"),
        ({"columns": ["c", "a", "b"], "data": [[1, 2, float("inf")]]}, "data[0][2] (b): expected a finite number"),
        ({"columns": ["c", "a", "b"], "data": [[1, False, 3]]}, "data[0][1] (a): expected a number, got false"),
    ]:
        with pytest.raises(BadRequest) as caught:
            rows_from_json(document, columns)
        assert message in str(caught.value), (message, str(caught.value))


def test_stacking_with_passthrough_answers_equal_stacking_classifier(deploy, cancer):
    from sklearn.ensemble import StackingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from framework.ensemble import fit_stacking_locally
    from framework.serving.combine import combiner_factory

    estimators = {n: classifiers()[n] for n in ("tree", "nb")}
    final = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    reference = StackingClassifier(list(estimators.items()), final_estimator=final, passthrough=True)
    reference.fit(cancer.X, cancer.y)
    model, fitted = fit_stacking_locally(estimators, cancer.X, cancer.y, "classifier", passthrough=True,
                                         final_estimator=final)
    members = [(spec_for(n, fitted[n], meth), fitted[n], 1) for n, meth in zip(model.members, model.stack_methods)]
    d = deploy(members, combiner_factory("stacking", model=model), cancer.columns)
    X = cancer.X[120:160]
    status, answer = post(f"{d.url}/v1/predict", npy(X), NPY)
    assert status == 200, answer
    assert_soft_vote(answer, reference.predict(X), reference.predict_proba(X), ["benign", "malignant"])


def test_a_taken_port_is_an_error_at_start_and_leaves_nothing_running(deploy, cancer, fitted):
    from framework.serving.combine import combiner_factory
    from framework.serving.gateway import Gateway

    members = [(spec_for("tree", fitted["tree"], "predict_proba"), fitted["tree"], 1)]
    d = deploy(members, "soft_vote", cancer.columns)
    host, port = d.gateway.address
    other = Gateway(None, [members[0][0]], d.table, combiner_factory("soft_vote"), columns=cancer.columns)
    threads = threading.active_count()
    with pytest.raises(OSError):
        other.start(host, port)
    assert threading.active_count() == threads and other._loop is None
    other.stop()  # nothing to stop: a no-op
    assert post_json(f"{d.url}/v1/predict", {"rows": rows_of(cancer.X[:1], cancer.columns)})[0] == 200


def test_a_switch_waits_for_the_admitted_requests_then_answers_with_the_new_replicas_and_combiner(
        deploy, cancer, fitted):
    """A stacking update's switch: the gateway calls only its pinned replicas (a new model's
    replica in the table gets nothing); a switch waits for the request in flight (answered all
    old), holds a new one meanwhile, then answers it all new (new replica, new combiner)."""
    from framework.serving.combine import combiner_factory
    from framework.serving.routing import Replica
    from serving_helpers import ModelReplica

    body = {"rows": rows_of(cancer.X[:5], cancer.columns)}
    new_specs = [spec_for("a", fitted["forest"], "predict_proba"), spec_for("b", fitted["nb"], "predict_proba", 3.0)]
    reference = deploy([(new_specs[0], fitted["forest"], 1), (new_specs[1], fitted["nb"], 1)], "soft_vote",
                       cancer.columns)
    new = post_json(f"{reference.url}/v1/predict", body)[1]["predictions"]
    d = deploy([(spec_for("a", fitted["tree"], "predict_proba"), fitted["tree"], 1),
                (spec_for("b", fitted["nb"], "predict_proba"), fitted["nb"], 1)], "soft_vote", cancer.columns)
    d.gateway.pinned = {"a": "sha-a", "b": "sha-b"}
    new_a = ModelReplica(fitted["forest"], "predict_proba", name="a").start()
    deploy.started.append(new_a)
    d.table.add(Replica("a-new", "a", new_a.url, "agent-9", "sha-new"))
    old = post_json(f"{d.url}/v1/predict", body)[1]["predictions"]
    assert old != new and new_a.calls == 0
    assert d.gateway.load_samples()["a"].replicas_ready == 1  # the autoscaler's count: the replicas called
    old_a = d.replica("a")
    old_a.slow()
    answers: dict[str, Any] = {}

    def ask(name: str) -> threading.Thread:
        thread = threading.Thread(target=lambda: answers.__setitem__(name, post_json(f"{d.url}/v1/predict", body)))
        thread.start()
        return thread

    first = ask("first")
    wait_for(lambda: old_a.calls == 2)
    switcher = threading.Thread(target=d.gateway.switch,
                                args=(new_specs, combiner_factory("soft_vote"), {"a": "sha-new", "b": "sha-b"}))
    switcher.start()
    wait_for(lambda: d.gateway._switching is not None)
    second = ask("second")
    time.sleep(0.3)
    assert switcher.is_alive() and not answers and new_a.calls == 0  # the switch waits; the new request too
    old_a.release()
    for thread in (first, switcher, second):
        thread.join(timeout=30)
    assert answers["first"] == (200, {"predictions": old, "answered_by": ["a", "b"], "missing": []})
    assert answers["second"] == (200, {"predictions": new, "answered_by": ["a", "b"], "missing": []})
    assert new_a.calls == 1 and old_a.calls == 2
    assert d.gateway.load_samples()["a"].replicas_ready == 1


def test_a_switch_that_times_out_swaps_nothing_and_lets_the_held_requests_in(deploy, cancer, fitted):
    from framework.serving.combine import combiner_factory

    tree = spec_for("tree", fitted["tree"], "predict_proba")
    d = deploy([(tree, fitted["tree"], 1)], "soft_vote", cancer.columns)
    d.gateway.pinned = {"tree": "sha-tree"}
    body = {"rows": rows_of(cancer.X[:3], cancer.columns)}
    before = post_json(f"{d.url}/v1/predict", body)
    replica = d.replica("tree")
    replica.slow()
    answers: list[Any] = []
    first = threading.Thread(target=lambda: answers.append(post_json(f"{d.url}/v1/predict", body)))
    first.start()
    wait_for(lambda: replica.calls == 2)
    with pytest.raises(TimeoutError, match="did not finish within 0.3 s; not switched"):
        d.gateway.switch([tree], combiner_factory("soft_vote"), {"tree": "sha-other"}, timeout=0.3)
    assert d.gateway.pinned == {"tree": "sha-tree"} and d.gateway._switching is None
    second = threading.Thread(target=lambda: answers.append(post_json(f"{d.url}/v1/predict", body)))
    second.start()
    replica.release()
    first.join(timeout=30)
    second.join(timeout=30)
    assert answers == [before, before]
