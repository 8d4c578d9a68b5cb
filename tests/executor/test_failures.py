"""Failure classes: a member's own exception is told apart from infrastructure failures, its
traceback travels (cut to a sane size) in the TASK_FAILED update and whole to the executor's
stderr."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from addict import Dict
from sklearn.linear_model import LinearRegression
from sklearn.neighbors import KNeighborsRegressor

from executor.main import EnsembleExecutor
from executor.protocol import (
    MAX_TRACEBACK_CHARS,
    TASK_FAILURE_SCHEMA,
    RemoteFile,
    TaskFailure,
    TaskPayload,
    array_to_npy,
    inline_envelope,
    sha256_hex,
    truncate_traceback,
)
from executor.runner import MemberError, SandboxCache, TaskError, describe_failure, report_failure, run_task
from tests.executor.test_main import RecordingExecutorDriver

FEATURES = np.arange(12.0).reshape(4, 3)


def broken_neighbours() -> KNeighborsRegressor:
    """A fitted model whose predict raises ValueError (more neighbours than fitted samples)."""
    model = KNeighborsRegressor(n_neighbors=1).fit(FEATURES, FEATURES.sum(axis=1))
    model.n_neighbors = 10
    return model


def sandbox_task(tmp_path: Path, model: Any, **overrides: Any) -> tuple[TaskPayload, SandboxCache]:
    joblib.dump(model, tmp_path / "m.joblib")
    (tmp_path / "shard.npy").write_bytes(array_to_npy(FEATURES))
    fields: dict[str, Any] = dict(
        task_id="m.s00000.a1", operation="predict", model_name="m", model_file="m.joblib",
        model=RemoteFile((tmp_path / "m.joblib").as_uri(), sha256_hex((tmp_path / "m.joblib").read_bytes())),
        method="predict", shard=RemoteFile((tmp_path / "shard.npy").as_uri(), sha256_hex(array_to_npy(FEATURES))),
        shard_index=0, result_upload_url="unused")
    fields.update(overrides)
    payload = TaskPayload(**fields)
    cache = SandboxCache(tmp_path / "sandbox", download=lambda url: Path(url.removeprefix("file://")).read_bytes())
    return payload, cache


def failure_of(payload: TaskPayload, cache: SandboxCache) -> tuple[BaseException, TaskFailure]:
    with pytest.raises(Exception) as raised:
        run_task(payload, cache)
    return raised.value, describe_failure(raised.value)


def test_a_members_predict_raising_is_a_member_error_with_its_traceback(tmp_path: Path) -> None:
    error, failure = failure_of(*sandbox_task(tmp_path, broken_neighbours()))
    assert isinstance(error, MemberError) and isinstance(error.__cause__, ValueError)
    assert (failure.kind, failure.error_type) == ("member_error", "ValueError")
    assert failure.is_member_error
    assert failure.message.startswith("model m.predict failed: ValueError: Expected n_neighbors <= n_samples")
    assert "in kneighbors" in failure.traceback  # the member's own frames
    assert "ValueError: Expected n_neighbors <= n_samples" in failure.traceback
    assert failure.status_message().startswith("member error: model m.predict failed: ValueError:")


def test_a_members_fit_raising_is_a_member_error(tmp_path: Path) -> None:
    labels = np.array([1.0, np.nan, 2.0, 3.0])
    (tmp_path / "labels.npy").write_bytes(array_to_npy(labels))
    payload, cache = sandbox_task(
        tmp_path, LinearRegression(), operation="cv_fit_predict", train_rows=[0, 1, 2], test_rows=[3],
        labels=RemoteFile((tmp_path / "labels.npy").as_uri(), sha256_hex(array_to_npy(labels))))
    _error, failure = failure_of(payload, cache)
    assert (failure.kind, failure.error_type) == ("member_error", "ValueError")
    assert "could not be fitted" in failure.message and "NaN" in failure.message


@pytest.mark.parametrize("overrides,expected", [
    ({"method": "transform"}, "has no method transform"),
    ({"columns": [0, 1]}, "expects 3 features, the shard has 2"),
])
def test_a_member_that_cannot_take_the_data_is_a_member_error(tmp_path: Path, overrides: dict[str, Any],
                                                               expected: str) -> None:
    _error, failure = failure_of(*sandbox_task(tmp_path, broken_neighbours(), **overrides))
    assert failure.kind == "member_error" and expected in failure.message


def test_download_and_checksum_failures_are_infrastructure(tmp_path: Path) -> None:
    payload, cache = sandbox_task(tmp_path, broken_neighbours())
    missing = TaskPayload(**{**payload.__dict__, "shard": RemoteFile((tmp_path / "gone.npy").as_uri(), "0" * 64)})
    _error, failure = failure_of(missing, cache)
    assert (failure.kind, failure.error_type) == ("infrastructure", "FileNotFoundError")
    assert failure.status_message().startswith("infrastructure: could not download shard 0")
    wrong = TaskPayload(**{**payload.__dict__, "shard": RemoteFile(payload.shard.url, "0" * 64)})
    _error, failure = failure_of(wrong, SandboxCache(tmp_path / "other", cache.download))
    assert (failure.kind, failure.error_type) == ("infrastructure", "TaskError")
    assert "sha256 mismatch after download" in failure.message


class Hungry:
    """A model whose predict runs out of memory."""

    n_features_in_ = 3

    def predict(self, features: np.ndarray) -> np.ndarray:
        raise MemoryError("Unable to allocate 80.0 GiB for an array")


def test_out_of_memory_is_infrastructure_even_in_the_members_code() -> None:
    try:
        run_in_member(Hungry())
    except TaskError as error:
        failure = describe_failure(error)
    assert (failure.kind, failure.error_type) == ("infrastructure", "MemoryError")
    assert failure.message.startswith("out of memory: model m.predict failed: MemoryError: Unable to allocate")


def run_in_member(model: Any) -> None:
    from executor.runner import call_method

    call_method(model, "predict", FEATURES, "m")


def test_an_unexpected_exception_is_an_infrastructure_failure_of_the_executor() -> None:
    try:
        {}["missing"]
    except KeyError as error:
        failure = describe_failure(error)
    assert (failure.kind, failure.error_type) == ("infrastructure", "KeyError")
    assert failure.message == "executor error: KeyError: 'missing'"
    assert "KeyError: 'missing'" in failure.traceback


def test_a_long_traceback_is_cut_keeping_its_end() -> None:
    def ping(depth: int) -> None:  # two functions in turn: Python does not fold their frames
        if depth == 0:
            raise ValueError("deep down")
        pong(depth - 1)

    def pong(depth: int) -> None:
        ping(depth)

    try:
        try:
            ping(300)
        except ValueError as cause:
            raise MemberError("model m.predict failed: ValueError: deep down") from cause
    except MemberError as error:
        stream = io.StringIO()
        failure = report_failure("m.s00000.a1", error, stream)
    whole = stream.getvalue()
    assert len(whole) > 4 * MAX_TRACEBACK_CHARS  # stderr keeps every frame
    assert whole.startswith("task m.s00000.a1 failed (member_error): member error: model m.predict failed")
    assert whole.count("in ping") == 301 and whole.count("in pong") == 300
    assert len(failure.traceback) <= MAX_TRACEBACK_CHARS + 100
    assert failure.traceback.startswith("[... ") and "characters of traceback cut" in failure.traceback
    assert failure.traceback.rstrip().endswith("MemberError: model m.predict failed: ValueError: deep down")
    assert "ValueError: deep down" in failure.traceback
    assert truncate_traceback("short") == "short"


def test_a_task_failure_round_trips_and_is_recognised_from_a_status() -> None:
    failure = TaskFailure("member_error", "ValueError", "model m.predict failed: ValueError: x\ny", "Traceback...")
    assert TaskFailure.from_json(failure.to_json()) == failure
    assert json.loads(failure.to_json())["schema"] == TASK_FAILURE_SCHEMA
    data = base64.b64encode(failure.to_json()).decode()
    assert TaskFailure.from_status(data, "whatever") == failure
    assert failure.status_message() == "member error: model m.predict failed: ValueError: x y"  # one line
    # Without data, the message's prefix still tells the kind; anything else is not ours.
    assert TaskFailure.from_status(None, "infrastructure: could not download shard 0") == TaskFailure(
        "infrastructure", "", "could not download shard 0")
    assert TaskFailure.from_status(None, "Executor terminated") is None
    envelope = base64.b64encode(inline_envelope(array_to_npy(np.ones(2)), (2,)).to_json()).decode()
    assert TaskFailure.from_status(envelope, "") is None
    assert TaskFailure.from_status("not base64!", "") is None
    unknown_kind = json.dumps({"schema": TASK_FAILURE_SCHEMA, "kind": "?"}).encode()
    for raw in (b"\xff", b"[]", b'{"schema": "other"}', unknown_kind):
        with pytest.raises(ValueError):
            TaskFailure.from_json(raw)
    assert len(TaskFailure("infrastructure", "E", "x" * 5000).status_message()) == len("infrastructure: ") + 1000


def test_the_executor_reports_a_member_error_distinguishably_and_logs_its_traceback(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    payload, _cache = sandbox_task(tmp_path, broken_neighbours())
    executor = EnsembleExecutor(tmp_path / "sandbox", workers=1)
    driver = RecordingExecutorDriver()
    executor.launchTask(driver, Dict({"task_id": {"value": payload.task_id},
                                      "data": base64.b64encode(payload.to_json()).decode()}))
    assert driver.done.wait(30)
    executor.shutdown(driver)
    final = driver.updates[-1]
    assert final["state"] == "TASK_FAILED"
    assert final["message"].startswith("member error: model m.predict failed: ValueError: Expected n_neighbors")
    failure = TaskFailure.from_status(final["data"], final["message"])
    assert failure is not None and (failure.kind, failure.error_type) == ("member_error", "ValueError")
    assert "in kneighbors" in failure.traceback
    stderr = capfd.readouterr().err
    assert f"task {payload.task_id} failed (member_error): member error: model m.predict failed" in stderr
    assert "Traceback (most recent call last)" in stderr and "in kneighbors" in stderr


def test_the_executor_marks_a_download_failure_as_infrastructure(tmp_path: Path) -> None:
    payload, _cache = sandbox_task(tmp_path, broken_neighbours())
    payload = TaskPayload(**{**payload.__dict__, "shard": RemoteFile((tmp_path / "gone.npy").as_uri(), "0" * 64)})
    executor = EnsembleExecutor(tmp_path / "sandbox", workers=1)
    driver = RecordingExecutorDriver()
    executor.launchTask(driver, Dict({"task_id": {"value": payload.task_id},
                                      "data": base64.b64encode(payload.to_json()).decode()}))
    assert driver.done.wait(30)
    executor.shutdown(driver)
    failure = TaskFailure.from_status(driver.updates[-1]["data"], driver.updates[-1]["message"])
    assert failure is not None and failure.kind == "infrastructure"
    assert driver.updates[-1]["message"].startswith("infrastructure: could not download shard 0")
