"""A bundle (several tasks in one Mesos task) through the real executor edge: one terminal update
for all its items, each item's result its own (computed on its own shard), a failed item alone."""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from addict import Dict
from sklearn.linear_model import LinearRegression

from executor.main import BUNDLE_LINE, EnsembleExecutor
from executor.protocol import (BundlePayload, BundleResult, RemoteFile, TaskPayload, array_to_npy, npy_to_array,
                               sha256_hex)
from tests.executor.test_main import RecordingExecutorDriver


def linear_model_payloads(tmp_path: Path, shards: list[np.ndarray], upload_url: str = "unused",
                          **fields: Any) -> tuple[LinearRegression, list[TaskPayload]]:
    """A LinearRegression fitted on ``shards`` and dumped to ``tmp_path``, and a predict payload per
    shard (its ``.npy`` beside it; ``upload_url`` may name the item's ``{task_id}``)."""
    model = LinearRegression().fit(np.vstack(shards), np.vstack(shards).sum(axis=1))
    joblib.dump(model, tmp_path / "m.joblib")
    model_file = RemoteFile((tmp_path / "m.joblib").as_uri(), sha256_hex((tmp_path / "m.joblib").read_bytes()))
    payloads = []
    for index, shard in enumerate(shards):
        npy, task_id = array_to_npy(shard), f"m.s{index}.a1"
        (tmp_path / f"shard{index}.npy").write_bytes(npy)
        payloads.append(TaskPayload(
            task_id=task_id, operation="predict", model_name="m", model_file="m.joblib", model=model_file,
            method="predict", shard=RemoteFile((tmp_path / f"shard{index}.npy").as_uri(), sha256_hex(npy)),
            shard_index=index, result_upload_url=upload_url.format(task_id=task_id), **fields))
    return model, payloads


def test_a_bundle_reports_every_item_in_one_update_and_a_failed_item_alone(tmp_path: Path) -> None:
    shards = [np.arange(12.0).reshape(4, 3), np.arange(30.0, 36.0).reshape(2, 3)]
    model, payloads = linear_model_payloads(tmp_path, shards)
    broken = TaskPayload(**{**payloads[0].__dict__, "task_id": "m.s9.a1",
                            "shard": RemoteFile((tmp_path / "missing.npy").as_uri(), "0" * 64)})
    bundle = BundlePayload("B1", [payloads[0], broken, payloads[1]])
    executor, driver = EnsembleExecutor(tmp_path, workers=1), RecordingExecutorDriver()
    executor.launchTask(driver, Dict({"task_id": {"value": "B1"}, "data": base64.b64encode(bundle.to_json()).decode()}))
    assert driver.done.wait(30)
    executor.shutdown(driver)
    assert [u["state"] for u in driver.updates] == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    assert {u["task_id"]["value"] for u in driver.updates} == {"B1"}
    assert driver.updates[-1]["message"].startswith("1 of 3 bundled task(s) failed: infrastructure: could not download")
    outcome = BundleResult.from_json(base64.b64decode(driver.updates[-1]["data"]))
    assert sorted(outcome.results) == ["m.s0.a1", "m.s1.a1"] and list(outcome.failures) == ["m.s9.a1"]
    assert outcome.failures["m.s9.a1"].kind == "infrastructure"
    for index, shard in enumerate(shards):
        envelope = outcome.results[f"m.s{index}.a1"]
        assert envelope.kind == "inline" and envelope.usage is not None
        result = npy_to_array(base64.b64decode(envelope.npy_b64 or ""))
        assert np.array_equal(result, model.predict(shard))  # each item on its own shard, bit for bit


def test_a_task_whose_inputs_are_already_here_skips_task_starting(tmp_path: Path) -> None:
    shard = np.arange(12.0).reshape(4, 3)
    model = LinearRegression().fit(shard, shard.sum(axis=1))
    joblib.dump(model, tmp_path / "m.joblib")
    (tmp_path / "shard.npy").write_bytes(array_to_npy(shard))
    payload = TaskPayload(
        task_id="t1", operation="predict", model_name="m", model_file="m.joblib",
        model=RemoteFile((tmp_path / "m.joblib").as_uri(), sha256_hex((tmp_path / "m.joblib").read_bytes())),
        method="predict", shard=RemoteFile((tmp_path / "shard.npy").as_uri(), sha256_hex(array_to_npy(shard))),
        shard_index=0, result_upload_url="unused")
    executor = EnsembleExecutor(tmp_path, workers=1)
    states = []
    for task_id in ("t1", "t2"):
        driver = RecordingExecutorDriver()
        data = base64.b64encode(TaskPayload(**{**payload.__dict__, "task_id": task_id}).to_json()).decode()
        executor.launchTask(driver, Dict({"task_id": {"value": task_id}, "data": data}))
        assert driver.done.wait(30)
        states.append([u["state"] for u in driver.updates])
    executor.shutdown(driver)
    assert states == [["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"], ["TASK_RUNNING", "TASK_FINISHED"]]


def test_the_protocols_json_is_byte_for_byte_what_asdict_gave() -> None:
    """``json_bytes`` (the faster encoding a bundle's payloads and results use) writes exactly the
    bytes of ``json.dumps(asdict(...), sort_keys=True)``: nested files, None, lists, usage, failures."""
    import json
    from dataclasses import asdict

    from executor.protocol import TaskFailure, TaskUsage, inline_envelope

    shard = RemoteFile("http://h:1/shards/7", "b" * 64)
    payload = TaskPayload(task_id="m.s7.a1", operation="predict", model_name="m",
                          model=RemoteFile("http://h:1/m", "a" * 64), model_file="m.joblib", method="predict_proba",
                          shard=shard, shard_index=7,
                          result_upload_url="http://h:1/r", columns=[3, 1], trusted_types=["x.Y"])
    fold = TaskPayload(task_id="f", operation="cv_fit_predict", model_name="m", model=shard, model_file="m.joblib",
                       method="predict", shard=shard, shard_index=0, result_upload_url="u", labels=shard,
                       train_rows=[0, 5], test_rows=[5, 9])
    envelope = inline_envelope(array_to_npy(np.arange(6.0).reshape(3, 2)), (3, 2), TaskUsage(0.5, 0.25))
    failure = TaskFailure(kind="member_error", error_type="ValueError", message="bad \u00e9", traceback="tb")
    old = lambda value: json.dumps(asdict(value), sort_keys=True).encode()  # noqa: E731
    for value in (payload, fold, envelope, inline_envelope(b"x", (1,)), failure):
        assert value.to_json() == old(value)
    bundle = BundlePayload("b1", [payload, fold])
    assert bundle.to_json() == json.dumps({"task_id": "b1", "items": [asdict(payload), asdict(fold)],
                                           "inline_limit": bundle.inline_limit, "schema": bundle.schema,
                                           "version": bundle.version}, sort_keys=True).encode()
    result = BundleResult({"m.s7.a1": envelope}, {"f": failure})
    assert result.to_json() == json.dumps({"schema": result.schema, "results": {"m.s7.a1": asdict(envelope)},
                                           "failures": {"f": asdict(failure)}}, sort_keys=True).encode()


def test_a_bundles_first_items_compute_while_a_later_shard_still_downloads(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A batch does not wait for its later items' downloads: with the third shard's download
    held back, the first items compute (TASK_RUNNING is sent once the first batch goes) and the
    bundle finishes once the download is let go, every item bit for bit its own; the executor
    logs the bundle's time split in the line the tiny-tasks bench reads back."""
    import threading
    import urllib.request

    shards = [np.arange(12.0).reshape(4, 3) + 100 * index for index in range(3)]
    model, payloads = linear_model_payloads(tmp_path, shards)
    release = threading.Event()

    def download(url: str) -> bytes:
        if url.endswith("shard2.npy"):
            assert release.wait(30)
        with urllib.request.urlopen(url) as response:
            data: bytes = response.read()
        return data

    caplog.set_level(logging.INFO, logger="executor")
    executor, driver = EnsembleExecutor(tmp_path / "sandbox", workers=1), RecordingExecutorDriver()
    executor.cache.download = download
    bundle = BundlePayload("B1", payloads)
    executor.launchTask(driver, Dict({"task_id": {"value": "B1"}, "data": base64.b64encode(bundle.to_json()).decode()}))
    deadline = time.monotonic() + 20
    while "TASK_RUNNING" not in [u["state"] for u in driver.updates] and time.monotonic() < deadline:
        time.sleep(0.01)
    running = [u["state"] for u in driver.updates]
    release.set()
    assert driver.done.wait(30)
    executor.shutdown(driver)
    assert "TASK_RUNNING" in running  # before the third shard arrived
    assert [u["state"] for u in driver.updates] == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    outcome = BundleResult.from_json(base64.b64decode(driver.updates[-1]["data"]))
    assert not outcome.failures
    for index, shard in enumerate(shards):
        result = npy_to_array(base64.b64decode(outcome.results[f"m.s{index}.a1"].npy_b64 or ""))
        assert np.array_equal(result, model.predict(shard))
    lines = [BUNDLE_LINE.search(record.getMessage()) for record in caplog.records]
    logged = [line for line in lines if line is not None]
    assert len(logged) == 1 and logged[0][1] == "B1" and logged[0][2] == "3"
    assert float(logged[0][4]) <= float(logged[0][5])  # the items' compute within first inputs to last answer


def test_a_bundles_large_results_upload_while_its_next_items_compute(tmp_path: Path, monkeypatch: Any) -> None:
    """A bundled item's result too large for the update is uploaded on an upload thread while the
    bundle's next item computes (the upload's HTTP was slot time between two computations); every
    result arrives as it was computed, and an item whose upload fails fails alone."""
    import hashlib
    import threading
    import time

    from executor import main as executor_main
    from executor import workers

    shards = [np.arange(i, i + 12.0).reshape(4, 3) for i in range(4)]
    model, payloads = linear_model_payloads(tmp_path, shards, "http://results/{task_id}", inline_limit=0)
    events: list[tuple[str, int, float]] = []
    uploaded: dict[str, bytes] = {}
    real_compute = workers.compute_measured

    def compute(payload: TaskPayload, *args: Any) -> Any:
        events.append(("compute", payload.shard_index, time.monotonic()))
        return real_compute(payload, *args)

    def upload(url: str, npy: bytes) -> None:
        index = int(url.rsplit(".s", 1)[1].split(".")[0])
        time.sleep(0.3)
        assert threading.current_thread().name.startswith("upload")
        if index == 2:
            raise OSError("the artifact server went away")
        uploaded[url] = npy
        events.append(("uploaded", index, time.monotonic()))

    monkeypatch.setattr(workers, "compute_measured", compute)
    monkeypatch.setattr(executor_main, "upload_result", upload)
    monkeypatch.setattr(executor_main, "BUNDLE_BATCH", 1)  # one item per batch: the next is computed apart
    bundle = BundlePayload("B1", payloads, inline_limit=0)
    executor, driver = EnsembleExecutor(tmp_path, workers=1), RecordingExecutorDriver()
    executor.launchTask(driver, Dict({"task_id": {"value": "B1"}, "data": base64.b64encode(bundle.to_json()).decode()}))
    assert driver.done.wait(30)
    executor.shutdown(driver)
    when = {(kind, index): at for kind, index, at in events}
    assert when[("compute", 1)] < when[("uploaded", 0)]  # the next item computed while the last uploaded
    outcome = BundleResult.from_json(base64.b64decode(driver.updates[-1]["data"]))
    assert sorted(outcome.results) == ["m.s0.a1", "m.s1.a1", "m.s3.a1"] and list(outcome.failures) == ["m.s2.a1"]
    assert "artifact server went away" in outcome.failures["m.s2.a1"].message
    for index in (0, 1, 3):
        envelope = outcome.results[f"m.s{index}.a1"]
        npy = uploaded[f"http://results/m.s{index}.a1"]
        assert envelope.kind == "uploaded" and envelope.sha256 == hashlib.sha256(npy).hexdigest()
        assert np.array_equal(npy_to_array(npy), model.predict(shards[index]))


def test_a_bundles_first_item_computes_before_its_later_shards_are_in(tmp_path: Path, monkeypatch: Any) -> None:
    """The first item of a bundle computes as soon as its own shard is here: a later item's shard
    still downloading does not hold it (a batch's shards were all fetched before its first item
    computed)."""
    import threading

    from executor import workers

    shards = [np.arange(i, i + 12.0).reshape(4, 3) for i in range(3)]
    model = LinearRegression().fit(np.vstack(shards), np.vstack(shards).sum(axis=1))
    joblib.dump(model, tmp_path / "m.joblib")
    model_file = RemoteFile((tmp_path / "m.joblib").as_uri(), sha256_hex((tmp_path / "m.joblib").read_bytes()))
    blobs = {f"mem://shard{i}": array_to_npy(shard) for i, shard in enumerate(shards)}
    payloads = [TaskPayload(task_id=f"m.s{i}.a1", operation="predict", model_name="m", model_file="m.joblib",
                            model=model_file, method="predict",
                            shard=RemoteFile(f"mem://shard{i}", sha256_hex(blobs[f"mem://shard{i}"])), shard_index=i,
                            result_upload_url="unused") for i in range(len(shards))]
    first_computed = threading.Event()
    real_compute = workers.compute_measured

    def compute(payload: TaskPayload, *args: Any) -> Any:
        if payload.shard_index == 0:
            first_computed.set()
        return real_compute(payload, *args)

    executor, driver = EnsembleExecutor(tmp_path, workers=1), RecordingExecutorDriver()
    model_download = executor.cache.download

    def download(url: str) -> bytes:
        if url == "mem://shard2" and not first_computed.wait(10):  # the last shard comes after the first item
            raise OSError("the first item never computed while this shard was on its way")
        return blobs[url] if url in blobs else model_download(url)

    monkeypatch.setattr(workers, "compute_measured", compute)
    executor.cache.download = download
    bundle = BundlePayload("B1", payloads)
    executor.launchTask(driver, Dict({"task_id": {"value": "B1"}, "data": base64.b64encode(bundle.to_json()).decode()}))
    assert driver.done.wait(30)
    executor.shutdown(driver)
    outcome = BundleResult.from_json(base64.b64decode(driver.updates[-1]["data"]))
    assert not outcome.failures and sorted(outcome.results) == ["m.s0.a1", "m.s1.a1", "m.s2.a1"]
    for index, shard in enumerate(shards):
        result = npy_to_array(base64.b64decode(outcome.results[f"m.s{index}.a1"].npy_b64 or ""))
        assert np.array_equal(result, model.predict(shard))


def test_a_bundle_maps_each_items_shard_once(tmp_path: Path, monkeypatch: Any) -> None:
    """The prefetch of a bundle's shards downloads and checks them without mapping them: only the
    item's own fetch maps its shard (the prefetch mapped each shard too, a second mapping per item
    whose first was evicted from the executor's mapped arrays before its item came)."""
    import executor.runner as runner

    shards = [np.arange(12.0).reshape(4, 3) + 100 * index for index in range(3)]
    model, payloads = linear_model_payloads(tmp_path, shards)
    mapped: list[str] = []
    map_npy = runner.map_npy
    monkeypatch.setattr(runner, "map_npy", lambda path: (mapped.append(str(path)), map_npy(path))[1])
    monkeypatch.setattr(runner, "MAPPED_ARRAYS", 0)  # nothing kept mapped: every mapping shows
    executor, driver = EnsembleExecutor(tmp_path / "sandbox", workers=1), RecordingExecutorDriver()
    bundle = BundlePayload("B1", payloads)
    executor.launchTask(driver, Dict({"task_id": {"value": "B1"}, "data": base64.b64encode(bundle.to_json()).decode()}))
    assert driver.done.wait(30)
    executor.shutdown(driver)
    outcome = BundleResult.from_json(base64.b64decode(driver.updates[-1]["data"]))
    assert not outcome.failures
    for index, shard in enumerate(shards):
        result = npy_to_array(base64.b64decode(outcome.results[f"m.s{index}.a1"].npy_b64 or ""))
        assert np.array_equal(result, model.predict(shard))
    assert len(mapped) == len(shards) and len(set(mapped)) == len(shards)
