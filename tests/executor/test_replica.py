"""Serving replicas through the real executor edge: real model files, a real aiohttp server on a
real port, real HTTP requests (issue 15, SERVE-DESIGN.md "Replica task")."""

from __future__ import annotations

import base64
import dataclasses
import http.client
import io
import json
import socket
import threading
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from addict import Dict
import skops.io
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression

from executor.main import EnsembleExecutor
from executor.protocol import (ReplicaPayload, ReplicaReady, TaskFailure, TaskPayload, RemoteFile, array_to_npy,
                               decode_task, npy_to_array, sha256_hex)
from executor.replica import kill_grace, read_rows, task_cpus, BadRequest
from harness import wait_for
from tests.executor.test_main import RecordingExecutorDriver

RNG = np.random.default_rng(3)
FEATURES = RNG.normal(size=(300, 5))
HOLD, RELEASE = threading.Event(), threading.Event()
"""While HOLD is set, :class:`BlockingRegression`'s predictions wait for RELEASE."""
BLOCKED: list[int] = []
"""One item per :class:`BlockingRegression` prediction waiting for RELEASE now."""


class BlockingRegression(LinearRegression):
    """A regression whose predict waits for :data:`RELEASE` while :data:`HOLD` is set (loaded in
    this process, it is this class, so a test decides when a request in flight ends)."""

    def predict(self, X: Any) -> Any:  # noqa: N803 (scikit-learn's name)
        if HOLD.is_set():
            BLOCKED.append(1)
            try:
                assert RELEASE.wait(60)
            finally:
                BLOCKED.pop()
        return super().predict(X)




def write_model(directory: Path, name: str, model: Any) -> Path:
    path = directory / f"{name}.joblib"
    joblib.dump(model, path)
    return path


def regressor(directory: Path, name: str = "linear") -> Path:
    return write_model(directory, name, LinearRegression().fit(FEATURES, FEATURES @ [1.0, -2.0, 0.5, 3.0, 0.1]))


def classifier(directory: Path, name: str = "logistic") -> Path:
    return write_model(directory, name, LogisticRegression().fit(FEATURES, np.array(["no", "yes"])[
        (FEATURES[:, 0] + FEATURES[:, 1] > 0).astype(int)]))


def payload_for(path: Path, output: str = "predict", port: int = 0, **extra: Any) -> ReplicaPayload:
    return ReplicaPayload(model=path.stem, model_url=path.as_uri(), sha256=sha256_hex(path.read_bytes()),
                          port=port, output=output, host="127.0.0.1", **extra)


def replica_task(task_id: str, payload: ReplicaPayload, cpus: float = 2.0, grace_s: float | None = None) -> Dict:
    task: dict[str, Any] = {"task_id": {"value": task_id}, "data": base64.b64encode(payload.to_json()).decode(),
                            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus}},
                                          {"name": "mem", "type": "SCALAR", "scalar": {"value": 256}}]}
    if grace_s is not None:
        task["kill_policy"] = {"grace_period": {"nanoseconds": int(grace_s * 1e9)}}
    return Dict(task)


def states(driver: RecordingExecutorDriver, task_id: str) -> list[str]:
    return [u["state"] for u in list(driver.updates) if u["task_id"]["value"] == task_id]


def update(driver: RecordingExecutorDriver, task_id: str, state: str) -> dict[str, Any]:
    return next(u for u in list(driver.updates) if u["task_id"]["value"] == task_id and u["state"] == state)


def running_port(driver: RecordingExecutorDriver, task_id: str) -> ReplicaReady:
    wait_for(lambda: set(states(driver, task_id)) - {"TASK_STARTING"})
    assert states(driver, task_id) == ["TASK_STARTING", "TASK_RUNNING"], update_messages(driver)
    return ReplicaReady.from_json(base64.b64decode(update(driver, task_id, "TASK_RUNNING")["data"]))


def update_messages(driver: RecordingExecutorDriver) -> list[tuple[str, str]]:
    return [(u["state"], u.get("message", "")) for u in driver.updates]


def post(port: int, body: bytes,
         connection: http.client.HTTPConnection | None = None) -> tuple[int, dict[str, str], bytes]:
    own = connection is None
    connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/x-npy"})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        if own:
            connection.close()


def health(port: int) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", "/v1/health")
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def executor(tmp_path: Path) -> Any:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    executor = EnsembleExecutor(sandbox, workers=1, mode="thread")
    yield executor
    executor.shutdown(RecordingExecutorDriver())


def test_the_payload_travels_as_json_and_is_checked() -> None:
    payload = ReplicaPayload(model="m", model_url="http://h/t/files/m", sha256="ab" * 32, port=31001,
                             output="predict_proba", format="skops", trusted_types=["x.Y"], max_batch_rows=64)
    decoded = decode_task(payload.to_json())
    assert decoded == payload and ReplicaPayload.from_json(payload.to_json()) == payload
    assert json.loads(payload.to_json())["kind"] == "replica" and payload.host == "0.0.0.0"
    assert payload.model_file == f"replica-models/m-{'ab' * 8}.skops"
    with pytest.raises(ValueError, match="replica output 'transform'"):
        ReplicaPayload(model="m", model_url="u", sha256="0", port=1, output="transform")
    with pytest.raises(ValueError, match="replica port 70000"):
        ReplicaPayload(model="m", model_url="u", sha256="0", port=70000)
    with pytest.raises(ValueError, match="unknown field"):
        decode_task(json.dumps({**json.loads(payload.to_json()), "colour": 1}).encode())
    assert ReplicaReady.from_json(ReplicaReady(31001, 42, "process").to_json()) == ReplicaReady(31001, 42, "process")
    timed = ReplicaReady(31001, 42, "thread", {"load": 0.5, "probe": 0.0})
    assert ReplicaReady.from_json(timed.to_json()) == timed
    with pytest.raises(ValueError, match="replica predict_mode 'fork'"):
        ReplicaPayload(model="m", model_url="u", sha256="0", port=1, predict_mode="fork")
    measured = dataclasses.replace(payload, predict_mode="process")
    assert decode_task(measured.to_json()) == measured and payload.predict_mode is None


def test_task_resources_and_kill_policy_are_read() -> None:
    task = {"resources": [{"name": "cpus", "scalar": {"value": 1.5}}, {"name": "mem", "scalar": {"value": 9}}],
            "kill_policy": {"grace_period": {"nanoseconds": 2_500_000_000}}}
    assert task_cpus(task) == 1.5 and kill_grace(task) == 2.5 and kill_grace({}) == 10.0


def test_request_bodies_are_checked_before_the_model_sees_them() -> None:
    good = RNG.normal(size=(3, 5))
    assert np.array_equal(read_rows(array_to_npy(good), 5, 10, "m"), good)
    big_endian = read_rows(array_to_npy(good.astype(">f8")), 5, 10, "m")
    assert big_endian.dtype == np.float64 and np.array_equal(big_endian, good)
    pickled = io.BytesIO()
    np.save(pickled, np.array([[1, "x"]], dtype=object), allow_pickle=True)
    cases = {b"": "empty body", b"not an array": "not an .npy array", pickled.getvalue(): "pickled",
             array_to_npy(good[0]): "expected 2-D", array_to_npy(good[:, :4]): "4 columns: model m takes 5",
             array_to_npy(good.astype(np.float32)): "dtype is float32", array_to_npy(good[:0]): "no rows",
             array_to_npy(good)[:-4]: "not an .npy array"}
    for body, words in cases.items():
        with pytest.raises(BadRequest, match=words) as caught:
            read_rows(body, 5, 10, "m")
        assert caught.value.status == 400 and "\n" not in str(caught.value)
    with pytest.raises(BadRequest, match="at most 2 per request") as caught:
        read_rows(array_to_npy(good), 5, 2, "m")
    assert caught.value.status == 413


def test_a_text_replica_takes_a_1d_unicode_array_and_nothing_else() -> None:
    docs = np.array(["a bright day", "", "naïve café"])
    assert np.array_equal(read_rows(array_to_npy(docs), None, 10, "m", "text"), docs)
    for body, words in {array_to_npy(docs.reshape(3, 1)): r"shape \[3, 1\]: model m takes text",
                        array_to_npy(np.zeros(3)): "dtype float64", array_to_npy(docs[:0]): "no rows"}.items():
        with pytest.raises(BadRequest, match=words) as caught:
            read_rows(body, None, 10, "m", "text")
        assert caught.value.status == 400 and "\n" not in str(caught.value)
    with pytest.raises(BadRequest, match="at most 2 per request"):
        read_rows(array_to_npy(docs), None, 2, "m", "text")


def test_running_only_once_loaded_then_exact_outputs_over_keep_alive(executor: EnsembleExecutor,
                                                                       tmp_path: Path) -> None:
    path = classifier(tmp_path)
    loading, release = threading.Event(), threading.Event()
    plain = executor.cache.download

    def slow_download(url: str) -> bytes:
        loading.set()
        assert release.wait(30)
        return plain(url)

    executor.cache.download = slow_download
    driver = RecordingExecutorDriver()
    executor.launchTask(driver, replica_task("r1", payload_for(path, "predict_proba")))
    assert loading.wait(30)
    assert states(driver, "r1") == ["TASK_STARTING"]  # not RUNNING while the model downloads
    release.set()
    ready = running_port(driver, "r1")
    assert ready.predict_mode == "thread" and ready.port > 0 and ready.pid > 0
    model = joblib.load(path)
    connection = http.client.HTTPConnection("127.0.0.1", ready.port, timeout=60)
    for rows in (FEATURES[:1], FEATURES[:7], FEATURES[50:250], np.asfortranarray(FEATURES[10:60])):
        status, headers, body = post(ready.port, array_to_npy(rows), connection)  # one keep-alive connection
        assert status == 200 and headers["Content-Type"] == "application/x-npy"
        assert float(headers["X-Compute-Seconds"]) >= 0
        answer = npy_to_array(body)
        assert answer.shape == (len(rows), 2) and np.array_equal(answer, model.predict_proba(rows))  # bit for bit
    connection.close()
    status, answer = health(ready.port)
    assert status == 200 and answer["ready"] is True and answer["in_flight"] == 0
    assert (answer["model"], answer["sha256"], answer["task_id"]) == ("logistic", sha256_hex(path.read_bytes()), "r1")


def test_labels_and_concurrent_requests(executor: EnsembleExecutor, tmp_path: Path) -> None:
    path = classifier(tmp_path)
    driver = RecordingExecutorDriver()
    executor.launchTask(driver, replica_task("r1", payload_for(path, "predict"), cpus=2))
    port = running_port(driver, "r1").port
    model = joblib.load(path)
    answers: dict[int, np.ndarray] = {}

    def client(number: int) -> None:
        rows = FEATURES[number * 10:(number + 1) * 10 + number]
        status, _headers, body = post(port, array_to_npy(rows))
        assert status == 200
        answers[number] = npy_to_array(body)

    clients = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(60)
    assert sorted(answers) == list(range(8))
    for number, answer in answers.items():
        assert answer.tolist() == model.predict(FEATURES[number * 10:(number + 1) * 10 + number]).tolist()


def test_bad_bodies_get_400_and_a_raising_model_500(executor: EnsembleExecutor, tmp_path: Path) -> None:
    path = regressor(tmp_path)
    driver = RecordingExecutorDriver()
    executor.launchTask(driver, replica_task("r1", payload_for(path, max_batch_rows=50)))
    port = running_port(driver, "r1").port
    pickled = io.BytesIO()
    np.save(pickled, np.array([[1.0, "x"]], dtype=object), allow_pickle=True)
    for body, words in ((array_to_npy(FEATURES[0]), "expected 2-D"),
                        (array_to_npy(FEATURES[:3, :4]), "4 columns: model linear takes 5"),
                        (pickled.getvalue(), "pickled"), (b"{}", "not an .npy array")):
        status, headers, raw = post(port, body)
        assert status == 400 and headers["Content-Type"].startswith("application/json")
        assert words in json.loads(raw)["error"]
    status, _headers, raw = post(port, array_to_npy(FEATURES[:51]))
    assert status == 413 and "at most 50" in json.loads(raw)["error"]
    with_nan = FEATURES[:3].copy()
    with_nan[1, 2] = np.nan  # LinearRegression.predict raises on NaN: the member's own error
    status, _headers, raw = post(port, array_to_npy(with_nan))
    error = json.loads(raw)
    assert status == 500 and error["kind"] == "member_error" and "NaN" in error["error"]
    status, _headers, body = post(port, array_to_npy(FEATURES[:3]))  # it still serves
    assert status == 200 and np.array_equal(npy_to_array(body), joblib.load(path).predict(FEATURES[:3]))


def test_kill_drains_requests_in_flight_then_reports_killed(executor: EnsembleExecutor, tmp_path: Path) -> None:
    RELEASE.clear()
    model = BlockingRegression().fit(FEATURES, FEATURES.sum(axis=1))
    path = write_model(tmp_path, "blocking", model)
    driver = RecordingExecutorDriver()
    executor.launchTask(driver, replica_task("r1", payload_for(path), grace_s=60))
    port = running_port(driver, "r1").port
    HOLD.set()
    answered: list[tuple[int, bytes]] = []
    in_flight = threading.Thread(target=lambda: answered.append(post(port, array_to_npy(FEATURES[:4]))[::2]))
    in_flight.start()
    try:
        wait_for(lambda: health(port)[1]["in_flight"] == 1)
        executor.killTask(driver, Dict({"value": "r1"}))
        status, answer = health(port)  # at once: draining
        assert status == 503 and answer["ready"] is False and answer["draining"] is True
        status, _headers, raw = post(port, array_to_npy(FEATURES[:2]))  # a new request is refused
        assert status == 503 and "draining" in json.loads(raw)["error"]
        assert states(driver, "r1") == ["TASK_STARTING", "TASK_RUNNING"]  # the request in flight is not answered yet
    finally:
        RELEASE.set()
        HOLD.clear()
    in_flight.join(60)
    assert answered and answered[0][0] == 200
    assert np.array_equal(npy_to_array(answered[0][1]), LinearRegression.predict(model, FEATURES[:4]))
    wait_for(lambda: "TASK_KILLED" in states(driver, "r1"))
    assert states(driver, "r1") == ["TASK_STARTING", "TASK_RUNNING", "TASK_KILLED"]
    assert refused(port)
    executor.killTask(driver, Dict({"value": "r1"}))  # a second kill changes nothing
    assert states(driver, "r1") == ["TASK_STARTING", "TASK_RUNNING", "TASK_KILLED"]


def test_a_model_that_cannot_load_fails_the_task(executor: EnsembleExecutor, tmp_path: Path) -> None:
    path = regressor(tmp_path)
    wrong = ReplicaPayload(**{**payload_for(path).__dict__, "sha256": "0" * 64})
    broken = tmp_path / "broken.joblib"
    broken.write_bytes(b"not a pickle at all")
    driver = RecordingExecutorDriver()
    executor.launchTask(driver, replica_task("r1", wrong))
    executor.launchTask(driver, replica_task("r2", payload_for(broken)))
    executor.launchTask(driver, replica_task("r3", payload_for(path, "predict_proba")))  # a regressor
    for task_id, words in (("r1", "sha256 mismatch"), ("r2", "could not be loaded"),
                           ("r3", "(LinearRegression) has no method predict_proba")):
        wait_for(lambda task_id=task_id: "TASK_FAILED" in states(driver, task_id))  # type: ignore[misc]
        assert states(driver, task_id) == ["TASK_STARTING", "TASK_FAILED"]
        failed = update(driver, task_id, "TASK_FAILED")
        failure = TaskFailure.from_status(failed["data"], failed["message"])
        kind = "member_error" if task_id == "r3" else "infrastructure"
        assert failure is not None and failure.kind == kind and words in failure.message
        assert failed["message"].startswith(f"{kind.replace('_', ' ')}: ")


def test_a_taken_port_fails_the_task(executor: EnsembleExecutor, tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        driver = RecordingExecutorDriver()
        executor.launchTask(driver, replica_task("r1", payload_for(regressor(tmp_path), port=port)))
        wait_for(lambda: "TASK_FAILED" in states(driver, "r1"))
        failed = update(driver, task_id="r1", state="TASK_FAILED")
        assert states(driver, "r1") == ["TASK_STARTING", "TASK_FAILED"]
        assert f"cannot listen on 127.0.0.1:{port}" in failed["message"]
        assert not any(t.name.startswith("replica-http") for t in threading.enumerate())  # its loop ended
    finally:
        taken.close()


def test_replicas_and_batch_tasks_side_by_side_and_shutdown_stops_them_all(tmp_path: Path) -> None:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    executor = EnsembleExecutor(sandbox, workers=2, mode="thread")
    linear, logistic = regressor(tmp_path), classifier(tmp_path)
    driver = RecordingExecutorDriver()
    executor.launchTask(driver, replica_task("a", payload_for(linear)))
    executor.launchTask(driver, replica_task("b", payload_for(linear)))  # the same model twice
    executor.launchTask(driver, replica_task("c", payload_for(logistic, "decision_function")))
    ports = {task_id: running_port(driver, task_id).port for task_id in "abc"}
    assert len(set(ports.values())) == 3
    shard = FEATURES[:20]
    (tmp_path / "shard.npy").write_bytes(array_to_npy(shard))
    batch = TaskPayload(task_id="t1", operation="predict", model_name="linear", model_file="linear.joblib",
                        model=RemoteFile(linear.as_uri(), sha256_hex(linear.read_bytes())), method="predict",
                        shard=RemoteFile((tmp_path / "shard.npy").as_uri(), sha256_hex(array_to_npy(shard))),
                        shard_index=0, result_upload_url="unused")
    executor.launchTask(driver, Dict({"task_id": {"value": "t1"},
                                      "data": base64.b64encode(batch.to_json()).decode()}))
    wait_for(lambda: "TASK_FINISHED" in states(driver, "t1"))
    expected = {"a": joblib.load(linear).predict(shard), "b": joblib.load(linear).predict(shard),
                "c": joblib.load(logistic).decision_function(shard)}
    for task_id, port in ports.items():
        status, _headers, body = post(port, array_to_npy(shard))
        assert status == 200 and np.array_equal(npy_to_array(body), expected[task_id])
    executor.shutdown(driver)
    for task_id, port in ports.items():
        assert states(driver, task_id) == ["TASK_STARTING", "TASK_RUNNING", "TASK_KILLED"]
        assert refused(port)
    assert not any(t.name.startswith(("replica-", "drain-")) for t in threading.enumerate())


def test_a_replica_takes_the_predict_mode_an_earlier_one_measured_instead_of_probing(tmp_path: Path) -> None:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    executor = EnsembleExecutor(sandbox, workers=2, mode="auto")  # as served: the mode is measured
    logistic, linear = classifier(tmp_path), regressor(tmp_path)
    driver = RecordingExecutorDriver()
    try:
        executor.launchTask(driver, replica_task("r1", payload_for(logistic, "predict_proba", predict_mode="process")))
        first = running_port(driver, "r1")
        # The mode measured elsewhere is taken as it is (threads would win for this model here: it
        # releases the GIL), and nothing was probed for it; its answers are exact, from the workers.
        assert first.predict_mode == "process" and executor.predictions.measured == {}
        assert list(first.phases) == ["executor_start", "fetch", "load", "probe", "warm_up", "listen"]
        assert all(seconds >= 0 for seconds in first.phases.values())
        status, _headers, body = post(first.port, array_to_npy(FEATURES[:30]))
        assert status == 200 and np.array_equal(npy_to_array(body), joblib.load(logistic).predict_proba(FEATURES[:30]))
        assert executor.predictions.worker_pids
        # A second replica of the model, without a measured mode: its executor knows the model already.
        executor.launchTask(driver, replica_task("r2", payload_for(logistic, "predict_proba")))
        second = running_port(driver, "r2")
        assert second.predict_mode == "process" and executor.predictions.measured == {}
        assert list(second.phases) == ["fetch", "load", "probe", "warm_up", "listen"]  # the executor had started
        # A model nothing measured yet is probed here.
        executor.launchTask(driver, replica_task("r3", payload_for(linear)))
        running_port(driver, "r3")
        probed = payload_for(linear)
        assert list(executor.predictions.measured) == [(probed.model_file, probed.sha256)]
    finally:
        executor.shutdown(driver)


def test_gil_bound_models_predict_in_worker_processes(tmp_path: Path) -> None:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    executor = EnsembleExecutor(sandbox, workers=2, mode="process")  # as MESOS_ENSEMBLE_PREDICT=process
    path = classifier(tmp_path)
    driver = RecordingExecutorDriver()
    executor.launchTask(driver, replica_task("r1", payload_for(path, "predict_proba")))
    ready = running_port(driver, "r1")
    assert ready.predict_mode == "process"
    for rows in (FEATURES[:40], np.asfortranarray(FEATURES[40:90])):
        status, _headers, body = post(ready.port, array_to_npy(rows))
        assert status == 200 and np.array_equal(npy_to_array(body), joblib.load(path).predict_proba(rows))
    workers = executor.predictions.worker_pids
    assert workers and all(pid != ready.pid for pid in workers)
    with_nan = rows[:2].copy()
    with_nan[0, 0] = np.nan
    status, _headers, raw = post(ready.port, array_to_npy(with_nan))
    assert status == 500 and json.loads(raw)["kind"] == "member_error"
    executor.shutdown(driver)
    assert executor.predictions.worker_pids == [] and refused(ready.port)


def test_a_replica_killed_while_its_model_loads_never_serves(executor: EnsembleExecutor, tmp_path: Path) -> None:
    path = regressor(tmp_path)
    loading, release = threading.Event(), threading.Event()
    plain = executor.cache.download

    def slow_download(url: str) -> bytes:
        loading.set()
        assert release.wait(30)
        return plain(url)

    executor.cache.download = slow_download
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    driver = RecordingExecutorDriver()
    executor.launchTask(driver, replica_task("r1", payload_for(path, port=port)))
    assert loading.wait(30)
    executor.killTask(driver, Dict({"value": "r1"}))
    assert states(driver, "r1") == ["TASK_STARTING", "TASK_KILLED"]  # nothing to drain: at once
    release.set()
    executor.pool.shutdown(wait=True)  # the load ends (the task's thread returns)
    assert states(driver, "r1") == ["TASK_STARTING", "TASK_KILLED"] and refused(port)
    assert not any(t.name.startswith("replica-http") for t in threading.enumerate())


def test_the_kill_grace_period_bounds_the_drain(executor: EnsembleExecutor, tmp_path: Path) -> None:
    RELEASE.clear()
    path = write_model(tmp_path, "blocking", BlockingRegression().fit(FEATURES, FEATURES.sum(axis=1)))
    driver = RecordingExecutorDriver()
    executor.launchTask(driver, replica_task("r1", payload_for(path), grace_s=0.2))
    port = running_port(driver, "r1").port
    HOLD.set()
    outcome: list[Any] = []

    def client() -> None:
        try:
            outcome.append(post(port, array_to_npy(FEATURES[:3]))[0])
        except (http.client.HTTPException, OSError) as error:
            outcome.append(error)

    in_flight = threading.Thread(target=client)
    in_flight.start()
    try:
        wait_for(lambda: health(port)[1]["in_flight"] == 1)
        executor.killTask(driver, Dict({"value": "r1"}))
        # The prediction is still blocked: the task is reported killed once the grace period is over.
        wait_for(lambda: "TASK_KILLED" in states(driver, "r1"))
        assert BLOCKED == [1]  # reported killed while the prediction still computes: not waited for
        in_flight.join(60)
        assert outcome and isinstance(outcome[0], (http.client.HTTPException, OSError))  # cut off, no answer
        assert refused(port)
    finally:
        RELEASE.set()
        HOLD.clear()


def test_a_skops_model_loads_with_the_allow_list(executor: EnsembleExecutor, tmp_path: Path) -> None:
    forest = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(FEATURES, FEATURES[:, 0] > 0)
    path = tmp_path / "forest.skops"
    skops.io.dump(forest, path)
    driver = RecordingExecutorDriver()
    plain = payload_for(path, "predict_proba", format="skops")
    executor.launchTask(driver, replica_task("refused", plain))
    executor.launchTask(driver, replica_task("trusted", ReplicaPayload(
        **{**plain.__dict__, "trusted_types": ["sklearn.tree._tree.Tree"]})))
    port = running_port(driver, "trusted").port
    status, _headers, body = post(port, array_to_npy(FEATURES[:30]))
    assert status == 200 and np.array_equal(npy_to_array(body), forest.predict_proba(FEATURES[:30]))
    wait_for(lambda: "TASK_FAILED" in states(driver, "refused"))
    assert "untrusted types: sklearn.tree._tree.Tree" in update(driver, "refused", "TASK_FAILED")["message"]


@pytest.mark.parametrize("mode", ["auto", "process"])
def test_a_text_replica_predicts_in_workers_unprobed_and_answers_exactly(tmp_path: Path, mode: str) -> None:
    """A TF-IDF pipeline behind a text replica goes to the executor's worker processes without a
    probe (auto, as a batch text member does) or because the executor is told to (process): its
    answers for a 1-D str array are the model's own; numbers are refused in one line."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    rng = np.random.default_rng(0)
    vocabulary = np.array([f"w{i}" if i % 7 else f"mot{i}é" for i in range(2000)])
    docs = np.array([" ".join(rng.choice(vocabulary, int(rng.integers(20, 41)))) for _ in range(300)])
    labels = np.arange(300) % 2
    path = tmp_path / "text.joblib"
    joblib.dump(make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(docs, labels), path)
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    executor = EnsembleExecutor(sandbox, workers=2, mode=mode)
    driver = RecordingExecutorDriver()
    try:
        executor.launchTask(driver, replica_task("t1", payload_for(path, "predict_proba", input_format="text")))
        ready = running_port(driver, "t1")
        assert ready.predict_mode == "process"
        assert not executor.predictions.measured  # no probe ran
        asked = np.array(["a w3 w5 mot7é day", "", "w11 w11 w11"])
        status, _headers, body = post(ready.port, array_to_npy(asked))
        assert status == 200 and np.array_equal(npy_to_array(body), joblib.load(path).predict_proba(asked))
        status, _headers, body = post(ready.port, array_to_npy(np.zeros((2, 3))))
        assert status == 400 and b"takes text" in body
    finally:
        executor.shutdown(driver)
