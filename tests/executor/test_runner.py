"""The executor's pure runner: real joblib files, real sha256 checks, real predictions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from executor.protocol import RemoteFile, TaskPayload, array_to_npy, npy_to_array, sha256_hex
from executor.runner import ModelCache, TaskError, run_task


def scaled_logistic():  # noqa: ANN201
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    return x, y


@pytest.fixture()
def sandbox(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> Path:
    x, y = data
    joblib.dump(scaled_logistic().fit(x, y), tmp_path / "m.joblib")
    return tmp_path


def payload_for(sandbox: Path, shard: np.ndarray, **overrides: object) -> tuple[TaskPayload, dict[str, bytes]]:
    blob = array_to_npy(shard)
    fields: dict[str, object] = dict(
        task_id="t1", operation="predict", model_name="m", model_file="m.joblib",
        model_sha256=hashlib.sha256((sandbox / "m.joblib").read_bytes()).hexdigest(), method="predict_proba",
        shard=RemoteFile("mem://shard", sha256_hex(blob)), shard_index=0, result_upload_url="unused",
    )
    fields.update(overrides)
    return TaskPayload(**fields), {"mem://shard": blob}  # type: ignore[arg-type]


def test_predicts_exactly_what_sklearn_predicts(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = data
    payload, blobs = payload_for(sandbox, x[:40])
    output = run_task(payload, sandbox, ModelCache(), blobs.__getitem__)
    expected = joblib.load(sandbox / "m.joblib").predict_proba(x[:40])
    assert np.array_equal(output, expected)


def test_payload_round_trips_through_json(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    payload, _ = payload_for(sandbox, data[0][:3], train_rows=[1, 2], test_rows=[0])
    assert TaskPayload.from_json(payload.to_json()) == payload
    assert np.array_equal(npy_to_array(array_to_npy(data[0][:3])), data[0][:3])


def test_model_loaded_once_per_executor(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    cache = ModelCache()
    for start in (0, 10, 20):
        payload, blobs = payload_for(sandbox, data[0][start:start + 10])
        run_task(payload, sandbox, cache, blobs.__getitem__)
    assert len(cache) == 1


def test_hash_mismatch_fails_with_clear_message(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    payload, blobs = payload_for(sandbox, data[0][:5], model_sha256="0" * 64)
    with pytest.raises(TaskError, match=r"m\.joblib: sha256 mismatch \(expected 0{64}"):
        run_task(payload, sandbox, ModelCache(), blobs.__getitem__)


def test_unreadable_model(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    (sandbox / "m.joblib").write_bytes(b"not a pickle")
    payload, blobs = payload_for(sandbox, data[0][:5])
    with pytest.raises(TaskError, match="could not be loaded"):
        run_task(payload, sandbox, ModelCache(), blobs.__getitem__)


def test_wrong_number_of_features(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    payload, blobs = payload_for(sandbox, data[0][:5, :7])
    with pytest.raises(TaskError, match="expects 30 features, the shard has 7"):
        run_task(payload, sandbox, ModelCache(), blobs.__getitem__)


def test_corrupted_shard_download(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    payload, blobs = payload_for(sandbox, data[0][:5])
    blobs["mem://shard"] = blobs["mem://shard"][:-8]
    with pytest.raises(TaskError, match="shard 0: sha256 mismatch"):
        run_task(payload, sandbox, ModelCache(), blobs.__getitem__)


def test_missing_method(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    payload, blobs = payload_for(sandbox, data[0][:5], method="transform")
    with pytest.raises(TaskError, match="has no method transform"):
        run_task(payload, sandbox, ModelCache(), blobs.__getitem__)


def test_cv_fit_predict_fits_a_clone_on_the_fold(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    labels = array_to_npy(y)
    train, test = list(range(0, 400)), list(range(400, 569))
    payload, blobs = payload_for(sandbox, x, operation="cv_fit_predict", method="predict",
                                 labels=RemoteFile("mem://labels", sha256_hex(labels)), train_rows=train, test_rows=test)
    blobs["mem://labels"] = labels
    output = run_task(payload, sandbox, ModelCache(), blobs.__getitem__)
    expected = scaled_logistic().fit(x[train], y[train]).predict(x[test])
    assert np.array_equal(output, expected)
