"""The pymesos edge of the executor, with a recording executor driver."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from addict import Dict
from sklearn.linear_model import LinearRegression

from executor.main import EnsembleExecutor
from executor.protocol import RemoteFile, ResultEnvelope, TaskPayload, array_to_npy, npy_to_array, sha256_hex


class RecordingExecutorDriver:
    """Records status updates; like pymesos it adds a uuid to the dict it is given."""

    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []
        self.done = threading.Event()
        self.starting = threading.Event()

    def sendStatusUpdate(self, status: dict[str, Any]) -> None:  # noqa: N802
        status.setdefault("uuid", base64.b64encode(hashlib.md5(str(id(status)).encode()).digest()).decode())
        self.updates.append(status)
        if status["state"] == "TASK_STARTING":
            self.starting.set()
        if status["state"] not in ("TASK_STARTING", "TASK_RUNNING"):
            self.done.set()


def make_task(tmp_path: Path, features: np.ndarray, shard_url: str) -> Dict:
    model = LinearRegression().fit(features, features.sum(axis=1))
    joblib.dump(model, tmp_path / "m.joblib")
    payload = TaskPayload(
        task_id="t1", operation="predict", model_name="m", model_file="m.joblib",
        model=RemoteFile((tmp_path / "m.joblib").as_uri(), sha256_hex((tmp_path / "m.joblib").read_bytes())),
        method="predict",
        shard=RemoteFile(shard_url, sha256_hex(array_to_npy(features))), shard_index=0, result_upload_url="unused",
    )
    return Dict({"task_id": {"value": "t1"}, "data": base64.b64encode(payload.to_json()).decode()})


def test_running_then_finished_with_the_result(tmp_path: Path) -> None:
    features = np.arange(12.0).reshape(4, 3)
    (tmp_path / "shard.npy").write_bytes(array_to_npy(features))
    executor = EnsembleExecutor(tmp_path, workers=1)
    driver = RecordingExecutorDriver()
    executor.launchTask(driver, make_task(tmp_path, features, (tmp_path / "shard.npy").as_uri()))
    assert driver.done.wait(30)
    executor.shutdown(driver)
    assert [u["state"] for u in driver.updates] == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    assert len({u["uuid"] for u in driver.updates}) == 3  # a fresh dict for every update
    envelope = ResultEnvelope.from_json(base64.b64decode(driver.updates[-1]["data"]))
    result = npy_to_array(base64.b64decode(envelope.npy_b64 or ""))
    np.testing.assert_allclose(result, features.sum(axis=1))


def test_failure_is_reported_with_its_reason(tmp_path: Path) -> None:
    features = np.arange(12.0).reshape(4, 3)
    executor = EnsembleExecutor(tmp_path, workers=1)
    driver = RecordingExecutorDriver()
    executor.launchTask(driver, make_task(tmp_path, features, (tmp_path / "missing.npy").as_uri()))
    assert driver.done.wait(30)
    executor.shutdown(driver)
    assert [u["state"] for u in driver.updates] == ["TASK_STARTING", "TASK_FAILED"]  # never computed
    assert "could not download shard 0" in driver.updates[-1]["message"]


def test_running_is_reported_only_once_the_inputs_are_in(tmp_path: Path) -> None:
    """A slow download keeps the task in TASK_STARTING: the framework measures stragglers (and
    timeouts) from TASK_RUNNING, so download time never earns a backup copy."""
    features = np.arange(12.0).reshape(4, 3)
    (tmp_path / "shard.npy").write_bytes(array_to_npy(features))
    executor = EnsembleExecutor(tmp_path, workers=1)
    downloading, release = threading.Event(), threading.Event()
    plain = executor.cache.download

    def slow_download(url: str) -> bytes:
        if url.endswith("shard.npy"):
            downloading.set()
            assert release.wait(30)
        return plain(url)

    executor.cache.download = slow_download
    driver = RecordingExecutorDriver()
    executor.launchTask(driver, make_task(tmp_path, features, (tmp_path / "shard.npy").as_uri()))
    assert downloading.wait(30)
    assert driver.starting.wait(30)  # (sent on the status thread, beside the download)
    assert [u["state"] for u in driver.updates] == ["TASK_STARTING"]
    release.set()
    assert driver.done.wait(30)
    executor.shutdown(driver)
    assert [u["state"] for u in driver.updates] == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]


class SlowAgentDriver(RecordingExecutorDriver):
    """An agent that answers each TASK_STARTING and TASK_RUNNING only once the task's download or
    computation is under way (a round trip the work would otherwise wait for), at most 5 s."""

    def __init__(self, downloading: threading.Event, computing: threading.Event) -> None:
        super().__init__()
        self.waited_for = {"TASK_STARTING": downloading, "TASK_RUNNING": computing}
        self.overlapped: dict[str, bool] = {}

    def sendStatusUpdate(self, status: dict[str, Any]) -> None:  # noqa: N802
        if status["state"] in self.waited_for:
            self.overlapped[status["state"]] = self.waited_for[status["state"]].wait(5)
        super().sendStatusUpdate(status)


def test_the_download_and_the_computation_do_not_wait_for_the_agent(tmp_path: Path) -> None:
    """TASK_STARTING and TASK_RUNNING go on the status thread: the shard downloads while the agent
    takes TASK_STARTING, the task computes while it takes TASK_RUNNING (each a synchronous round
    trip, 5-40 ms per task on a busy machine, issue 13's profile); the three updates still arrive
    in order, the terminal one last."""
    features = np.arange(12.0).reshape(4, 3)
    (tmp_path / "shard.npy").write_bytes(array_to_npy(features))
    executor = EnsembleExecutor(tmp_path, workers=1)
    downloading, computing = threading.Event(), threading.Event()
    plain_download, plain_compute = executor.cache.download, executor.predictions.compute

    def download(url: str) -> bytes:
        if url.endswith("shard.npy"):
            downloading.set()
        return plain_download(url)

    def compute(*args: Any) -> Any:
        computing.set()
        return plain_compute(*args)

    executor.cache.download = download
    executor.predictions.compute = compute  # type: ignore[method-assign]
    driver = SlowAgentDriver(downloading, computing)
    executor.launchTask(driver, make_task(tmp_path, features, (tmp_path / "shard.npy").as_uri()))
    assert driver.done.wait(30)
    executor.shutdown(driver)
    assert driver.overlapped == {"TASK_STARTING": True, "TASK_RUNNING": True}
    assert [u["state"] for u in driver.updates] == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]


def test_killed_task_reports_killed_only(tmp_path: Path) -> None:
    executor = EnsembleExecutor(tmp_path, workers=1)
    driver = RecordingExecutorDriver()
    executor.killTask(driver, Dict({"value": "t9"}))
    assert [u["state"] for u in driver.updates] == ["TASK_KILLED"]


@pytest.mark.parametrize("busy", ["pool", "status_sender"])
def test_task_killed_while_queued_never_starts(tmp_path: Path, busy: str) -> None:
    """Killed while queued behind other tasks (``pool``), or while its TASK_STARTING and
    TASK_RUNNING wait on the status thread (``status_sender``): TASK_KILLED is its only update."""
    features = np.arange(12.0).reshape(4, 3)
    (tmp_path / "shard.npy").write_bytes(array_to_npy(features))
    executor = EnsembleExecutor(tmp_path, workers=1)
    driver = RecordingExecutorDriver()
    release = threading.Event()
    getattr(executor, busy).submit(release.wait, 30)  # its only thread is busy
    executor.launchTask(driver, make_task(tmp_path, features, (tmp_path / "shard.npy").as_uri()))
    deadline = time.monotonic() + 30
    while busy == "status_sender" and executor.status_sender._work_queue.qsize() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # until TASK_STARTING and TASK_RUNNING wait behind it
    executor.killTask(driver, Dict({"value": "t1"}))
    release.set()
    executor.pool.shutdown(wait=True)
    executor.status_sender.shutdown(wait=True)
    assert [u["state"] for u in driver.updates] == ["TASK_KILLED"]


def test_a_result_says_where_the_executors_probe_put_its_model(tmp_path: Path, monkeypatch: Any) -> None:
    """The terminal update's usage carries the probe's verdict (the framework keeps a ``thread``
    one for later runs); a task whose payload gave the mode (an earlier run's) reports none."""
    from executor import workers

    monkeypatch.setattr(workers, "_concurrent_seconds", lambda function, features, threads: (0.02, 0.02 * threads))
    monkeypatch.setattr(workers, "cores", lambda: 2)
    features = np.arange(12.0).reshape(4, 3)
    (tmp_path / "shard.npy").write_bytes(array_to_npy(features))
    usages = []
    for hinted in (False, True):
        executor = EnsembleExecutor(tmp_path, workers=2)
        driver = RecordingExecutorDriver()
        task = make_task(tmp_path, features, (tmp_path / "shard.npy").as_uri())
        if hinted:
            payload = TaskPayload.from_json(base64.b64decode(task.data))
            task.data = base64.b64encode(dataclasses.replace(payload, predict_mode="thread").to_json()).decode()
        executor.launchTask(driver, task)
        assert driver.done.wait(30)
        executor.shutdown(driver)
        assert driver.updates[-1]["state"] == "TASK_FINISHED"
        usages.append(ResultEnvelope.from_json(base64.b64decode(driver.updates[-1]["data"])).usage)
    assert [u.measured_mode if u else "no usage" for u in usages] == ["thread", None]


def test_results_upload_over_one_kept_alive_connection(tmp_path: Path, monkeypatch: Any) -> None:
    """Each large result is PUT to the artifact server with its checksum over a connection kept
    alive between uploads (a new one per upload was a connection and a server thread per task);
    an upload the server refuses is a TaskError naming its HTTP status."""
    import http.client

    from executor import main as executor_main
    from executor.runner import KeptAliveDownloads, TaskError
    from framework.artifacts import ArtifactServer

    connects: list[object] = []
    real_connect = http.client.HTTPConnection.connect

    def connect(self: http.client.HTTPConnection) -> None:
        connects.append(self)
        real_connect(self)

    monkeypatch.setattr(http.client.HTTPConnection, "connect", connect)
    monkeypatch.setattr(executor_main, "UPLOADS", KeptAliveDownloads(timeout=10))
    server = ArtifactServer(tmp_path / "results", bind="127.0.0.1").start()
    try:
        outputs = [np.arange(i, i + 50_000, dtype=np.float64) for i in range(4)]
        for index, output in enumerate(outputs):
            executor_main.upload_result(server.expect_result(f"t{index}"), array_to_npy(output))
        assert len(connects) == 1
        for index, output in enumerate(outputs):
            assert np.array_equal(np.load(server.result_path(f"t{index}")), output)
        with pytest.raises(TaskError, match="HTTP 404"):
            executor_main.upload_result(server.expect_result("t9").replace("t9", "not-expected"), b"x")
    finally:
        server.stop()
