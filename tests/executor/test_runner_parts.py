"""A task whose input comes in parts (``TaskPayload.inputs``, a job with ``[[sources]]``): each
part's file downloaded once per executor, the model's columns assembled in its order."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LinearRegression

from executor.protocol import RemoteFile, ShardPart, TaskPayload, array_to_npy, sha256_hex
from executor.runner import SandboxCache, TaskError, run_task


def blob_file(blobs: dict[str, bytes], array: np.ndarray) -> RemoteFile:
    data = array_to_npy(array)
    url = f"mem://{sha256_hex(data)}"
    blobs[url] = data
    return RemoteFile(url, sha256_hex(data))


def test_parts_are_assembled_in_the_models_column_order_and_each_file_fetched_once(tmp_path: Path) -> None:
    x, y = load_breast_cancer(return_X_y=True)
    order = [12, 13, 0, 1, 5]  # interleaves two "sources": 12, 13 from one, 0, 1, 5 from the other
    model = LinearRegression().fit(x[:, order], y)
    joblib.dump(model, tmp_path / "m.joblib")
    blobs: dict[str, bytes] = {"mem://m": (tmp_path / "m.joblib").read_bytes()}
    first = blob_file(blobs, np.ascontiguousarray(x[:50, 10:15]))  # columns 10..14
    second = blob_file(blobs, np.ascontiguousarray(x[:50, 0:10]))  # columns 0..9
    fetched: list[str] = []

    def download(url: str) -> bytes:
        fetched.append(url)
        return blobs[url]

    cache = SandboxCache(tmp_path, download)

    def payload(task_id: str, parts: list[ShardPart]) -> TaskPayload:
        raw = TaskPayload(task_id=task_id, operation="predict", model_name="m",
                          model=RemoteFile("mem://m", sha256_hex(blobs["mem://m"])), model_file="m.joblib",
                          method="predict", shard=parts[0].file, shard_index=0, result_upload_url="unused",
                          inputs=parts)
        return TaskPayload.from_json(raw.to_json())  # as the executor receives it

    parts = [ShardPart(first, [2, 3]), ShardPart(second, [0, 1, 5])]
    output = run_task(payload("t1", parts), cache)
    assert np.array_equal(output, model.predict(np.ascontiguousarray(x[:50, order])))
    run_task(payload("t2", parts), cache)  # another task (member) on the same shard: no new download
    assert sorted(fetched) == sorted([first.url, second.url])  # (the model file is already in the sandbox)

    with pytest.raises(TaskError, match=r"takes column 7 of shard 0 part 0, which has 5"):
        run_task(payload("t3", [ShardPart(first, [7])]), cache)
    short = blob_file(blobs, np.ascontiguousarray(x[:40, 0:10]))
    with pytest.raises(TaskError, match=r"shard 0 part 1 has shape \(40, 10\), expected 50 rows"):
        run_task(payload("t4", [ShardPart(first, [2, 3]), ShardPart(short, [0, 1, 5])]), cache)
