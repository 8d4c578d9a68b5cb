"""Predictions in forked worker processes: real forks, real kills, outputs bit for bit."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from executor.protocol import RemoteFile, TaskPayload, array_to_npy, sha256_hex
from executor.runner import MemberError, SandboxCache, describe_failure, fetch_inputs, report_failure
from executor.workers import (PARALLEL_ENOUGH, PROBE_MIN_ROWS, PredictionPool, RemoteTaskError, WorkerDied, probe_rows,
                              thread_speedup)

ROOT = Path(__file__).resolve().parents[2]


def python_level(x: np.ndarray) -> np.ndarray:
    """A transformer that runs Python per value (holds the GIL), as users write them."""
    return np.array([[math.log1p(abs(v)) for v in row] for row in x])


def slow_python_level(x: np.ndarray) -> np.ndarray:
    time.sleep(0.5)
    return python_level(x)


def failing(x: np.ndarray) -> np.ndarray:
    raise ValueError("a member's own bug")


class InputTypeReporter:
    """A member that answers, per row, whether its input was a plain ``ndarray`` (1) or a subclass
    such as ``np.memmap`` (0)."""

    classes_ = np.array([0, 1])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), float(type(x) is np.ndarray))


class MappingReporter:
    """A member that answers, per row, whether its input lies in a memory mapping of the file whose
    name holds ``needle`` (1 or 0), and its input's address modulo the page size."""

    classes_ = np.array([0, 1])

    def __init__(self, needle: str) -> None:
        self.needle = needle

    def predict(self, x: np.ndarray) -> np.ndarray:
        address = x.ctypes.data
        spans = [[int(bound, 16) for bound in line.split()[0].split("-")]
                 for line in Path("/proc/self/maps").read_text().splitlines() if self.needle in line]
        inside, offset = any(low <= address < high for low, high in spans), address % os.sysconf("SC_PAGE_SIZE")
        return np.column_stack([np.full(len(x), float(inside)), np.full(len(x), float(offset))])


def wait_for(condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met")


def gone(pid: int) -> bool:
    """No such process, or a zombie (dead, waiting for whoever adopted it to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return load_breast_cancer(return_X_y=True)


def task(tmp_path: Path, model: Any, shard: np.ndarray, name: str = "m", task_id: str = "t1",
         method: str = "predict_proba") -> tuple[TaskPayload, SandboxCache]:
    """A predict payload for ``model`` (dumped with joblib) on ``shard``, and a sandbox cache."""
    joblib.dump(model, tmp_path / f"{name}.joblib")
    blob, raw = array_to_npy(shard), (tmp_path / f"{name}.joblib").read_bytes()
    blobs = {f"mem://{name}": raw, f"mem://shard/{sha256_hex(blob)}": blob}
    payload = TaskPayload(task_id=task_id, operation="predict", model_name=name,
                          model=RemoteFile(f"mem://{name}", sha256_hex(raw)), model_file=f"{name}.joblib",
                          method=method, shard=RemoteFile(f"mem://shard/{sha256_hex(blob)}", sha256_hex(blob)),
                          shard_index=0, result_upload_url="unused")
    return payload, SandboxCache(tmp_path / "sandbox", blobs.__getitem__)


def gil_bound(x: np.ndarray, y: np.ndarray, function: Any = python_level) -> Any:
    return make_pipeline(FunctionTransformer(function), StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)


def probed_model(x: np.ndarray, y: np.ndarray) -> Any:
    """A model whose class says nothing about the GIL (a Pipeline: its steps decide), so it is probed."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)


def test_outputs_in_a_worker_are_bit_for_bit_the_threads(tmp_path: Path, data: Any) -> None:
    x, y = data
    for name, model in (("plain", make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)),
                        ("python", gil_bound(x, y))):
        payload, cache = task(tmp_path, model, x, name=name)
        loaded, shard = fetch_inputs(payload, cache)
        threaded, _ = PredictionPool(2, cache, "thread").compute(payload, loaded, shard)
        pool = PredictionPool(2, cache, "process")
        try:
            forked, usage = pool.compute(payload, loaded, shard)
            assert len(pool.worker_pids) == 1 and pool.worker_pids[0] != os.getpid()
        finally:
            pool.close()
        assert forked.dtype == threaded.dtype and np.array_equal(forked, threaded)
        assert np.array_equal(forked, model.predict_proba(x))
        assert usage.seconds > 0 and usage.cpu_seconds > 0


def test_a_member_sees_a_plain_array_of_its_mapped_shard_in_a_thread_or_a_worker(tmp_path: Path, data: Any) -> None:
    """A mapped shard reaches the member as a plain ``ndarray`` view (each slice of an ``np.memmap``
    runs Python code: 3x slower for a member that works row by row), the same bytes."""
    x, _y = data
    payload, cache = task(tmp_path, InputTypeReporter(), x[:30], method="predict")
    loaded, shard = fetch_inputs(payload, cache)
    assert isinstance(shard, np.memmap)
    for mode in ("thread", "process"):
        pool = PredictionPool(2, cache, mode)
        try:
            output, _usage = pool.compute(payload, loaded, shard)
        finally:
            pool.close()
        assert np.array_equal(output, np.ones(30)), mode


def test_a_worker_reads_a_small_shard_at_the_address_a_mapping_would_give(tmp_path: Path, data: Any) -> None:
    """A prediction worker reads a small shard into memory rather than mapping it (the mapping's
    ``mmap``, page faults and ``munmap`` cost a third of a tiny task's overhead in the worker), its
    data at the same address modulo the page size as the mapped shard on a thread, so that
    vectorised loops split it alike (outputs bit for bit)."""
    x, _y = data
    shard = x[:30]
    payload, cache = task(tmp_path, MappingReporter(sha256_hex(array_to_npy(shard))), shard, method="predict")
    loaded, mapped = fetch_inputs(payload, cache)
    outputs = {}
    for mode in ("thread", "process"):
        pool = PredictionPool(2, cache, mode)
        try:
            outputs[mode], _usage = pool.compute(payload, loaded, mapped)
        finally:
            pool.close()
    assert np.all(outputs["thread"][:, 0] == 1.0)  # the executor's own tasks compute on the mapping
    assert np.all(outputs["process"][:, 0] == 0.0)  # the worker's copy, read
    assert np.array_equal(outputs["process"][:, 1], outputs["thread"][:, 1])


def test_a_model_holding_the_gil_is_measured_and_gets_processes(tmp_path: Path, data: Any,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A model whose predictions hold the GIL is probed and predicts in worker processes; the
    probe's log line says the executor's CPU while it probed (the tiny-tasks bench takes it off the
    executor's CPU per item: a fixed cost, which varied the per-item figure by 0.4-0.8 ms)."""
    x, y = data
    model = gil_bound(x, y)
    probe = probe_rows(model.predict_proba, np.tile(x, (4, 1)))
    assert thread_speedup(model.predict_proba, probe) < 1.4  # two threads are no faster than one
    payload, cache = task(tmp_path, model, np.tile(x, (4, 1)))
    loaded, shard = fetch_inputs(payload, cache)
    pool = PredictionPool(2, cache)
    caplog.set_level(logging.INFO, logger="executor.workers")
    try:
        assert pool.mode(payload, loaded, shard) == ("process" if len(os.sched_getaffinity(0)) > 1 else "thread")
        if len(os.sched_getaffinity(0)) > 1:
            said = [re.search(r"\(([\d.]+) s of the executor's CPU while it probed\)", record.getMessage())
                    for record in caplog.records if "two probe threads" in record.getMessage()]
            assert len(said) == 1 and said[0] is not None and float(said[0][1]) > 0
        output, _ = pool.compute(payload, loaded, shard)
        assert np.array_equal(output, model.predict_proba(np.tile(x, (4, 1))))
        key = (payload.model_file, payload.model.sha256)
        assert pool.measured.get(key, 0.0) < 1.4
    finally:
        pool.close()
    # One task slot: nothing to run beside it, so no probe and no worker.
    single = PredictionPool(1, cache)
    assert single.mode(payload, loaded, shard) == "thread" and single.measured == {}


def test_probe_rows_are_scaled_from_a_warm_call() -> None:
    """A model's first call can be much slower than the next (imports, caches): the probe's rows
    come from calls after it, so a probe call lasts about PROBE_SECONDS, not a fraction of it."""
    calls: list[int] = []

    def model(x: np.ndarray) -> None:
        time.sleep(0.3 if not calls else len(x) * 1e-5)  # a slow first call, then 10 us per row
        calls.append(len(x))

    rows = probe_rows(model, np.zeros((100_000, 3)))
    assert calls[0] == PROBE_MIN_ROWS and len(calls) > 2  # the warm-up, then timed calls
    # 8,000 rows on an idle machine; other work only makes the timed calls slower (fewer rows),
    # whereas scaling from the warm-up call gave the minimum, 64.
    assert len(rows) >= 1_000


def test_threads_that_never_run_at_once_are_not_parallel() -> None:
    """Two calls that end together on two threads but used no CPU at once (here: they sleep)
    are not parallel predictions: the pair's concurrency caps the measured speedup."""
    assert thread_speedup(lambda x: time.sleep(0.02), np.zeros((10, 2)), repeats=2) < PARALLEL_ENOUGH


def test_an_openmp_model_predicts_in_a_worker_forked_after_its_thread_used_openmp(tmp_path: Path) -> None:
    """GNU OpenMP is not fork-safe: a child forked from a thread that has run an OpenMP region
    waits forever in its own first one.  The task's thread predicts with OpenMP here before it
    asks for a worker, whose fork must happen elsewhere (the pool's own thread)."""
    x, y = make_classification(n_samples=20_000, n_features=10, random_state=0)
    model = HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(x, y)
    payload, cache = task(tmp_path, model, x)
    loaded, shard = fetch_inputs(payload, cache)
    pool, threads = PredictionPool(2, cache, "process"), ThreadPoolExecutor(1)

    def on_one_thread() -> tuple[np.ndarray, np.ndarray]:
        expected = loaded.predict_proba(x)  # OpenMP's pool now exists for this thread
        return expected, pool.compute(payload, loaded, shard)[0]

    try:
        expected, output = threads.submit(on_one_thread).result(timeout=240)
    finally:
        pool.close()  # a hung worker is killed: its task ends as WorkerDied
        threads.shutdown()
    assert np.array_equal(output, expected)


def test_a_member_error_in_a_worker_is_a_member_error(tmp_path: Path, data: Any) -> None:
    x, y = data
    model = gil_bound(x, y)
    model.steps[0] = ("functiontransformer", FunctionTransformer(failing))
    payload, cache = task(tmp_path, model, x[:20])
    loaded, shard = fetch_inputs(payload, cache)
    pool = PredictionPool(2, cache, "process")
    try:
        with pytest.raises(RemoteTaskError) as raised:
            pool.compute(payload, loaded, shard)
    finally:
        pool.close()
    failure = describe_failure(raised.value)
    assert failure.kind == "member_error" and failure.error_type == "ValueError"
    assert "a member's own bug" in failure.message
    written = []
    report_failure("t1", raised.value, stream=type("S", (), {"write": written.append, "flush": lambda s: None})())
    assert "a member's own bug" in written[0] and "Traceback" in written[0]
    assert MemberError.__name__ in written[0]  # the worker's own traceback, as text


def test_a_killed_worker_fails_only_its_task(tmp_path: Path, data: Any) -> None:
    x, y = data
    model = gil_bound(x, y, slow_python_level)
    payload, cache = task(tmp_path, model, x)
    loaded, shard = fetch_inputs(payload, cache)
    pool = PredictionPool(2, cache, "process")
    try:
        with ThreadPoolExecutor(2) as threads:
            first = threads.submit(pool.compute, payload, loaded, shard)
            victim = wait_for(lambda: pool.worker_pids)[0]
            second = threads.submit(pool.compute, payload, loaded, shard)
            wait_for(lambda: len(pool.worker_pids) == 2)
            os.kill(victim, signal.SIGKILL)
            results = []
            for future in (first, second):
                try:
                    results.append(future.result())
                except WorkerDied as error:
                    results.append(error)
        died = [r for r in results if isinstance(r, WorkerDied)]
        assert len(died) == 1 and f"worker {victim}" in str(died[0]) and "signal 9" in str(died[0])
        assert describe_failure(died[0]).kind == "infrastructure"  # retried elsewhere by the framework
        [(output, _usage)] = [r for r in results if not isinstance(r, WorkerDied)]
        assert np.array_equal(output, model.predict_proba(x))
        assert victim not in pool.worker_pids and gone(victim)
        again, _ = pool.compute(payload, loaded, shard)  # the pool forks a replacement
        assert np.array_equal(again, model.predict_proba(x))
    finally:
        pool.close()


def test_close_leaves_no_worker(tmp_path: Path, data: Any) -> None:
    x, y = data
    model = gil_bound(x, y, slow_python_level)
    payload, cache = task(tmp_path, model, x[:50])
    loaded, shard = fetch_inputs(payload, cache)
    pool = PredictionPool(2, cache, "process")
    with ThreadPoolExecutor(2) as threads:
        running = [threads.submit(pool.compute, payload, loaded, shard) for _ in range(2)]
        pids = wait_for(lambda: len(pool.worker_pids) == 2 and pool.worker_pids)
        assert all(os.getpgid(pid) == os.getpgid(0) for pid in pids)  # pymesos kills this group on shutdown
        pool.close()
        for future in running:
            with pytest.raises(WorkerDied):
                future.result()
    assert all(gone(pid) for pid in pids)


def test_workers_die_with_a_killed_executor(tmp_path: Path) -> None:
    """``kill -9`` of the executor process itself: its workers go too (PR_SET_PDEATHSIG)."""
    script = textwrap.dedent(f"""
        import sys, time, threading, numpy as np
        sys.path[:0] = [{str(ROOT)!r}, {str(Path(__file__).parent)!r}]
        from test_workers import task, gil_bound, slow_python_level
        from sklearn.datasets import load_breast_cancer
        from pathlib import Path
        from executor.runner import fetch_inputs
        from executor.workers import PredictionPool
        x, y = load_breast_cancer(return_X_y=True)
        payload, cache = task(Path({str(tmp_path)!r}), gil_bound(x, y, slow_python_level), x[:50])
        model, shard = fetch_inputs(payload, cache)
        pool = PredictionPool(2, cache, "process")
        threading.Thread(target=pool.compute, args=(payload, model, shard), daemon=True).start()
        while not pool.worker_pids:
            time.sleep(0.01)
        print(pool.worker_pids[0], flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        assert not gone(worker)
        parent.kill()
        parent.wait()
        wait_for(lambda: gone(worker))
    finally:
        parent.kill()
        parent.wait()


def test_a_bundles_tasks_go_to_one_worker_in_one_message_and_fail_alone(tmp_path: Path, data: Any) -> None:
    """compute_many: a process-mode model's tasks travel in one message to one worker, their
    outputs bit for bit each task's own; a task that raises fails alone, in its place."""
    x, y = data
    model = gil_bound(x, y)
    payload, cache = task(tmp_path, model, x[:100])
    loaded, shard = fetch_inputs(payload, cache)
    bad = dataclasses.replace(payload, task_id="t2", method="no_such_method")
    pool = PredictionPool(2, cache, "process")
    sent: list[Any] = []
    try:
        checkout = pool._checkout

        def watched(key: Any) -> Any:
            worker = checkout(key)
            send = worker.conn.send
            worker.conn.send = lambda message: (sent.append(message), send(message))[1]  # type: ignore[method-assign]
            return worker

        pool._checkout = watched  # type: ignore[method-assign]
        outcomes = pool.compute_many([(payload, loaded, shard), (bad, loaded, shard), (payload, loaded, shard)])
        assert len(pool.worker_pids) == 1
    finally:
        pool.close()
    assert len(sent) == 1 and isinstance(sent[0], list) and len(sent[0]) == 3
    first, failed, third = outcomes
    assert isinstance(failed, RemoteTaskError) and describe_failure(failed).kind == "member_error"
    assert not isinstance(first, Exception) and not isinstance(third, Exception)
    for output, usage in (first, third):
        assert np.array_equal(output, model.predict_proba(x[:100])) and usage.seconds > 0


def watch_sends_and_receives(pool: PredictionPool, events: list[str]) -> None:
    """Record every message to and from the pool's workers, in order ("send n" / "recv n")."""
    checkout = pool._checkout

    def watched(key: Any) -> Any:
        worker = checkout(key)
        if not getattr(worker, "watched", False):
            send, recv = worker.conn.send, worker.conn.recv
            worker.conn.send = lambda message: (events.append(f"send {len(message)}"), send(message))[1]  # type: ignore[method-assign]
            worker.conn.recv = lambda: (lambda reply: (events.append(f"recv {len(reply)}"), reply)[1])(recv())  # type: ignore[method-assign]
            worker.watched = True
        return worker

    pool._checkout = watched  # type: ignore[method-assign]


def test_a_bundles_next_batch_waits_at_its_worker_while_the_executor_handles_the_last(tmp_path: Path,
                                                                                     data: Any) -> None:
    """compute_stream: batch n+1 is sent to the worker before batch n's answer is read (the worker
    never idles between batches), every output bit for bit its task's own, in order."""
    x, y = data
    model = gil_bound(x, y)
    payload, cache = task(tmp_path, model, x[:100])
    loaded, shard = fetch_inputs(payload, cache)
    pool = PredictionPool(2, cache, "process")
    events: list[str] = []
    watch_sends_and_receives(pool, events)
    batches = [[(dataclasses.replace(payload, task_id=f"t{b}.{i}"), loaded, shard) for i in range(size)]
               for b, size in enumerate((3, 2, 1))]
    try:
        streamed = list(pool.compute_stream(iter(batches)))
        assert len(pool.worker_pids) == 1
    finally:
        pool.close()
    assert events == ["send 3", "send 2", "recv 3", "send 1", "recv 2", "recv 1"]
    assert [batch for batch, _outcomes in streamed] == batches
    expected = model.predict_proba(x[:100])
    for batch, outcomes in streamed:
        assert len(outcomes) == len(batch)
        assert all(not isinstance(o, Exception) and np.array_equal(o[0], expected) for o in outcomes)


def test_a_worker_killed_mid_bundle_fails_the_items_it_held_and_a_new_one_takes_the_rest(tmp_path: Path,
                                                                                         data: Any) -> None:
    x, y = data
    model = gil_bound(x, y, slow_python_level)
    payload, cache = task(tmp_path, model, x)
    loaded, shard = fetch_inputs(payload, cache)
    pool = PredictionPool(1, cache, "process")
    batches = [[(dataclasses.replace(payload, task_id=f"t{b}"), loaded, shard)] for b in range(4)]
    try:
        stream = pool.compute_stream(iter(batches))
        first_batch, first = next(stream)  # batch 1 is computing in the worker now
        victim = pool.worker_pids[0]
        os.kill(victim, signal.SIGKILL)
        rest = list(stream)
        assert gone(victim) and victim not in pool.worker_pids and len(pool.worker_pids) == 1
    finally:
        pool.close()
    assert first_batch is batches[0] and not isinstance(first[0], Exception)
    outcomes = {batch[0][0].task_id: out[0] for batch, out in rest}
    assert list(outcomes) == ["t1", "t2", "t3"]  # each batch answered once, in order
    died = [task_id for task_id, outcome in outcomes.items() if isinstance(outcome, WorkerDied)]
    assert "t1" in died and "t3" not in died  # the held ones fail; later batches go to a new worker
    assert all(describe_failure(outcomes[t]).kind == "infrastructure" for t in died)  # type: ignore[arg-type]
    assert np.array_equal(outcomes["t3"][0], model.predict_proba(x))  # type: ignore[index]


def test_a_bundle_stopped_early_leaves_its_worker_idle_for_the_next(tmp_path: Path, data: Any) -> None:
    x, y = data
    model = gil_bound(x, y)
    payload, cache = task(tmp_path, model, x[:50])
    loaded, shard = fetch_inputs(payload, cache)
    pool = PredictionPool(1, cache, "process")
    batches = [[(dataclasses.replace(payload, task_id=f"t{b}"), loaded, shard)] * 2 for b in range(5)]
    try:
        stream = pool.compute_stream(iter(batches))
        next(stream)  # two batches were sent; the caller stops (its task was killed)
        stream.close()
        output, _usage = pool.compute(payload, loaded, shard)  # the one worker is free, its pipe clean
        assert np.array_equal(output, model.predict_proba(x[:50])) and len(pool.worker_pids) == 1
    finally:
        pool.close()


def test_a_probe_stops_once_threads_are_clearly_parallel(tmp_path: Path, data: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose first round shows two threads twice as fast is decided there (1 round: 3
    calls, not 9); one whose pair runs no faster than one call is measured every round."""
    from executor import workers

    rounds: list[int] = []

    def measured(parallel: bool) -> Callable[[Any, np.ndarray, int], tuple[float, float]]:
        def seconds(function: Any, features: np.ndarray, threads: int) -> tuple[float, float]:
            rounds.append(threads)
            wall = 0.02 if parallel or threads == 1 else 0.04
            return wall, 0.02 * threads  # (wall, CPU): two calls at once use two cores' worth, or one
        return seconds

    x, y = data
    payload, cache = task(tmp_path, probed_model(x, y), np.tile(x, (4, 1)))
    loaded, shard = fetch_inputs(payload, cache)
    for parallel, mode, calls in ((True, "thread", [1, 2]), (False, "process", [1, 2] * 3)):
        monkeypatch.setattr(workers, "_concurrent_seconds", measured(parallel))
        monkeypatch.setattr(workers, "cores", lambda: 2)
        rounds.clear()
        pool = PredictionPool(2, cache)
        try:
            assert pool.model_mode(payload, loaded, shard) == mode
        finally:
            pool.close()
        assert rounds == calls, parallel
    assert thread_speedup(np.sum, np.zeros(10), repeats=3, clear=None) >= 0  # the plain form still measures


def test_a_model_an_earlier_run_measured_on_threads_is_not_probed_again(tmp_path: Path, data: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A payload saying ``predict_mode = "thread"`` (an earlier run's probe measured the model
    parallel on threads) takes threads at once: no probe call, nothing reported as measured; a
    model probed here reports its verdict (the framework keeps a ``thread`` one for later runs)."""
    from executor import workers

    probed: list[int] = []

    def seconds(function: Any, features: np.ndarray, threads: int) -> tuple[float, float]:
        probed.append(threads)
        return 0.02, 0.02 * threads  # two threads as fast as one call: parallel

    monkeypatch.setattr(workers, "_concurrent_seconds", seconds)
    monkeypatch.setattr(workers, "cores", lambda: 2)
    x, y = data
    payload, cache = task(tmp_path, probed_model(x, y), np.tile(x, (4, 1)))
    loaded, shard = fetch_inputs(payload, cache)
    hinted = dataclasses.replace(payload, predict_mode="thread")
    pool = PredictionPool(2, cache)
    try:
        assert pool.mode(hinted, loaded, shard) == "thread"
        assert probed == [] and pool.measured == {} and pool.measured_mode(hinted) is None
        output, _usage = pool.compute(hinted, loaded, shard)
        assert np.array_equal(output, loaded.predict_proba(np.tile(x, (4, 1))))
    finally:
        pool.close()
    pool = PredictionPool(2, cache)
    try:
        assert pool.measured_mode(payload) is None  # not decided yet
        assert pool.mode(payload, loaded, shard) == "thread" and probed == [1, 2]
        assert pool.measured_mode(payload) == "thread"
    finally:
        pool.close()
    assert TaskPayload.from_json(hinted.to_json()) == hinted
    with pytest.raises(ValueError, match="predict_mode"):
        TaskPayload.from_json(dataclasses.replace(payload, predict_mode="process").to_json())


class ForestInPython(RandomForestClassifier):
    """A subclass of a class known to release the GIL: its own methods may not, so it is probed."""


def test_a_model_whose_class_releases_the_gil_takes_threads_without_a_probe(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13: the mixed benchmark's members (logistic regression, random forest, histogram
    boosting, k-neighbours) take threads at once, whatever another model is probing meanwhile:
    no probe call, nothing reported as measured; a subclass of one of them is probed, and so is
    each of them on shards of fewer than DERIVED_MIN_ROWS rows (a small call's Python holds the GIL)."""
    from executor import workers

    probed: list[int] = []

    def seconds(function: Any, features: np.ndarray, threads: int) -> tuple[float, float]:
        probed.append(threads)
        return 0.04 if threads == 2 else 0.02, 0.02 * threads  # serial: a probe would say processes

    monkeypatch.setattr(workers, "_concurrent_seconds", seconds)
    monkeypatch.setattr(workers, "cores", lambda: 2)
    x, y = make_classification(n_samples=3000, n_features=8, random_state=0)
    members = {"logistic": LogisticRegression(max_iter=500), "boosting": HistGradientBoostingClassifier(max_iter=5),
               "forest": RandomForestClassifier(n_estimators=3, random_state=0),
               "neighbours": KNeighborsClassifier(n_neighbors=3), "subclass": ForestInPython(n_estimators=3)}
    for name, model in members.items():
        (tmp_path / name).mkdir()
        payload, cache = task(tmp_path / name, model.fit(x, y), x, name=name)
        loaded, shard = fetch_inputs(payload, cache)
        pool = PredictionPool(2, cache)
        probed.clear()
        try:
            if name == "subclass":
                assert pool.mode(payload, loaded, shard) == "process" and probed, name
                continue
            small = PredictionPool(2, cache)
            try:
                assert small.mode(payload, loaded, shard[:workers.DERIVED_MIN_ROWS - 1]) == "process" and probed, name
            finally:
                small.close()
            probed.clear()
            with ThreadPoolExecutor(1) as other:
                pool._one_probe.acquire()  # another model probing: this one does not wait for it
                try:
                    assert other.submit(pool.mode, payload, loaded, shard).result(timeout=20) == "thread", name
                finally:
                    pool._one_probe.release()
            assert probed == [] and pool.measured == {} and pool.measured_mode(payload) is None, name
            output, _usage = pool.compute(payload, loaded, shard)
            assert np.array_equal(output, model.predict_proba(x)) and pool.worker_pids == [], name
        finally:
            pool.close()
