"""The executor's pure core: run one task payload and return its output array.

No Mesos here.  The pymesos edge (``executor.main``) calls :func:`run_task` on a worker thread
and turns :class:`TaskError` into TASK_FAILED with the error's message.
"""

from __future__ import annotations

import hashlib
import threading
import urllib.request
from pathlib import Path
from typing import Any, Callable

import joblib
import numpy as np

from executor.protocol import RemoteFile, TaskPayload, file_sha256, npy_to_array

Downloader = Callable[[str], bytes]


class TaskError(Exception):
    """A task failed for a reason worth showing to the user verbatim."""


def http_download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


class ModelCache:
    """Loads each model file once per executor, after checking its sha256.

    Several tasks of one model run in the same executor; they share one loaded copy.
    Thread-safe: concurrent tasks of a model wait for one load.
    """

    def __init__(self) -> None:
        self._models: dict[tuple[Path, str], Any] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, expected_sha256: str) -> Any:
        key = (path.resolve(), expected_sha256)
        with self._lock:
            if key not in self._models:
                self._models[key] = load_model(path, expected_sha256)
            return self._models[key]

    def __len__(self) -> int:
        return len(self._models)


def load_model(path: Path, expected_sha256: str) -> Any:
    if not path.is_file():
        raise TaskError(f"model file {path.name} is missing from the sandbox")
    actual = file_sha256(path)
    if actual != expected_sha256:
        raise TaskError(f"model file {path.name}: sha256 mismatch (expected {expected_sha256}, got {actual})")
    try:
        return joblib.load(path)
    except Exception as error:  # joblib/pickle raise many types for a bad file
        raise TaskError(f"model file {path.name} could not be loaded: {type(error).__name__}: {error}") from error


def fetch_array(remote: RemoteFile, download: Downloader, what: str) -> np.ndarray:
    try:
        data = download(remote.url)
    except Exception as error:
        raise TaskError(f"could not download {what}: {error}") from error
    if hashlib.sha256(data).hexdigest() != remote.sha256:
        raise TaskError(f"{what}: sha256 mismatch after download")
    try:
        return npy_to_array(data)
    except Exception as error:
        raise TaskError(f"{what} is not a valid .npy array: {error}") from error


def call_method(model: Any, method: str, features: np.ndarray, model_name: str) -> np.ndarray:
    function = getattr(model, method, None)
    if function is None:
        raise TaskError(f"model {model_name} ({type(model).__name__}) has no method {method}")
    expected = getattr(model, "n_features_in_", None)
    if expected is not None and features.shape[1] != expected:
        raise TaskError(
            f"model {model_name} expects {expected} features, the shard has {features.shape[1]}"
        )
    try:
        return np.asarray(function(features))
    except Exception as error:
        raise TaskError(f"model {model_name}.{method} failed: {type(error).__name__}: {error}") from error


def run_task(
    payload: TaskPayload,
    sandbox: Path,
    cache: ModelCache,
    download: Downloader = http_download,
) -> np.ndarray:
    """Run one task and return its output (predictions, probabilities or fold predictions)."""
    model = cache.get(sandbox / payload.model_file, payload.model_sha256)
    features = fetch_array(payload.shard, download, f"shard {payload.shard_index}")
    if features.ndim != 2:
        raise TaskError(f"shard {payload.shard_index} has shape {features.shape}, expected 2 dimensions")
    if payload.operation == "predict":
        return call_method(model, payload.method, features, payload.model_name)
    if payload.operation == "cv_fit_predict":
        return cv_fit_predict(model, features, payload, download)
    raise TaskError(f"unknown operation {payload.operation!r}")


def cv_fit_predict(model: Any, features: np.ndarray, payload: TaskPayload, download: Downloader) -> np.ndarray:
    """One cross-validation fold: fit a clone on the train rows, apply ``method`` to the test rows."""
    from sklearn.base import clone

    if payload.labels is None:
        raise TaskError("cv_fit_predict needs labels")
    labels = fetch_array(payload.labels, download, "labels")
    train, test = np.asarray(payload.train_rows, dtype=np.intp), np.asarray(payload.test_rows, dtype=np.intp)
    estimator = clone(model)
    try:
        estimator.fit(features[train], labels[train])
    except Exception as error:
        raise TaskError(f"model {payload.model_name} could not be fitted: {type(error).__name__}: {error}") from error
    return call_method(estimator, payload.method, features[test], payload.model_name)
