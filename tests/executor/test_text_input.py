"""A text task (``input_format = "text"``): the executor maps the text shard (UTF-8 and offsets,
see ``executor.textshard``; no pickle) and hands the member the whole column decoded, a 1-D array
of ``str``, on a thread or in a forked worker (unprobed), with scikit-learn's own answers."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from executor.protocol import RemoteFile, TaskPayload, array_to_npy, sha256_hex
from executor.textshard import text_shard_bytes
from executor.runner import SandboxCache, TaskError, fetch_inputs, run_task
from executor.workers import PredictionPool
from text_helpers import documents


def text_task(tmp_path: Path, model: Any, docs: list[str] | bytes) -> tuple[TaskPayload, SandboxCache]:
    """A text task on a text shard of ``docs`` (or on the file bytes given)."""
    joblib.dump(model, tmp_path / "text.joblib")
    blob = docs if isinstance(docs, bytes) else text_shard_bytes(docs)
    raw = (tmp_path / "text.joblib").read_bytes()
    blobs = {"mem://text": raw, f"mem://shard/{sha256_hex(blob)}": blob}
    payload = TaskPayload(task_id="t1", operation="predict", model_name="text",
                          model=RemoteFile("mem://text", sha256_hex(raw)), model_file="text.joblib",
                          method="predict_proba", shard=RemoteFile(f"mem://shard/{sha256_hex(blob)}", sha256_hex(blob)),
                          shard_index=0, result_upload_url="unused", input_format="text")
    return payload, SandboxCache(tmp_path / "sandbox", blobs.__getitem__)


@pytest.fixture(scope="module")
def fitted() -> tuple[Any, list[str]]:
    train, _x, labels = documents(300, seed=1)
    docs, _x, _labels = documents(80)
    return make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000)).fit(train, labels), docs


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_a_text_member_gets_its_column_as_strings(tmp_path: Path, fitted: tuple[Any, list[str]], mode: str) -> None:
    model, docs = fitted
    payload, cache = text_task(tmp_path, model, docs)
    assert TaskPayload.from_json(payload.to_json()) == payload  # the format travels in the payload
    loaded, shard = fetch_inputs(payload, cache)
    assert isinstance(shard, np.memmap) and shard.dtype == np.uint8  # the file's bytes, decoded where it runs
    pool = PredictionPool(2, cache, mode)
    try:
        output, usage = pool.compute(payload, loaded, shard)
    finally:
        pool.close()
    assert np.array_equal(output, model.predict_proba(docs))  # scikit-learn on a list of str
    assert usage.cpu_seconds > 0


def test_a_text_member_goes_to_processes_unprobed(tmp_path: Path, fitted: tuple[Any, list[str]],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokenising holds the GIL: a text member's predictions go to worker processes without the
    probe (which cost each text model about 0.25 s while the other task slot waited)."""
    model, docs = fitted
    payload, cache = text_task(tmp_path, model, docs)
    loaded, shard = fetch_inputs(payload, cache)
    monkeypatch.setattr("executor.workers.cores", lambda: 2)
    monkeypatch.setattr("executor.workers.thread_speedup", lambda *args: pytest.fail("probed a text member"))
    pool = PredictionPool(2, cache)
    try:
        assert pool.mode(payload, loaded, shard) == "process" and pool.measured == {}
        output, _usage = pool.compute(payload, loaded, shard)
        assert pool.worker_pids  # computed in a worker
    finally:
        pool.close()
    assert np.array_equal(output, model.predict_proba(docs))
    assert PredictionPool(1, cache).mode(payload, loaded, shard) == "thread"  # one slot: nothing beside it


def test_a_text_shard_that_is_not_text_fails_the_task(tmp_path: Path, fitted: tuple[Any, list[str]]) -> None:
    model, _docs = fitted
    payload, cache = text_task(tmp_path, model, array_to_npy(np.zeros((4, 2))))
    with pytest.raises(TaskError, match=r"text shard 0 is not a text shard: the offsets are a float64 array of "
                                        r"shape \(4, 2\), expected a 1-D int64 array"):
        run_task(payload, cache)
    with pytest.raises(TaskError, match="unknown input format 'words'"):
        run_task(dataclasses.replace(payload, input_format="words"), cache)  # type: ignore[arg-type]


def test_inspection_tells_text_models_apart() -> None:
    """What ``executor.describe`` reports as ``takes_text`` (the framework's checks read it)."""
    from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer
    from sklearn.preprocessing import StandardScaler

    from executor.describe import takes_text

    assert takes_text(make_pipeline(TfidfVectorizer(), LogisticRegression()))
    assert takes_text(make_pipeline(make_pipeline(HashingVectorizer()), LogisticRegression()))
    assert takes_text(CountVectorizer())
    assert not takes_text(CountVectorizer(input="filename"))  # it reads files, not the strings given
    assert not takes_text(make_pipeline(StandardScaler(), LogisticRegression()))
    assert not takes_text(LogisticRegression())
