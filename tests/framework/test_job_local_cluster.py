"""Whole jobs through the real pymesos drivers, real executor processes and real HTTP, on the
embedded local Mesos cluster; outputs checked against scikit-learn computed directly."""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from framework.demo import train_demo
from framework.errors import JobFailed
from framework.job import JobRunner
from framework.jobspec import load_job

pytestmark = pytest.mark.timeout(240)


def executor_processes() -> list[str]:
    """Live executor processes started by this test's embedded clusters (there must be none after
    a job), from the clusters' own records: other runs on the machine do not count."""
    from cluster_records import live_cluster_processes, started

    assert started, "the job started no embedded cluster"
    assert any(cluster.process_records() for cluster in started), "no executor was recorded"
    return [str(pid) for pid in live_cluster_processes()]


@pytest.fixture()
def demo(tmp_path: Path) -> Path:
    return train_demo(tmp_path / "demo")


def read_predictions(path: Path) -> np.ndarray:
    with path.open() as handle:
        rows = list(csv.reader(handle))
    return np.array(rows[1:], dtype=float)[:, 0]


@pytest.mark.parametrize("executors", ["shared", "per_model"])
def test_founding_example_on_local_cluster(demo: Path, tmp_path: Path, executors: str) -> None:
    spec = load_job(demo)
    spec = dataclasses.replace(spec, framework=dataclasses.replace(spec.framework, executors=executors))
    outcome = JobRunner(spec, work_dir=tmp_path / "work").run()
    with (demo.parent / "test.csv").open() as handle:
        rows = np.array(list(csv.reader(handle))[1:], dtype=float)
    features = rows[:, :-1]
    expected = np.mean(np.stack([joblib.load(demo.parent / "linear.joblib").predict(features),
                                 joblib.load(demo.parent / "logistic.joblib").predict_proba(features)[:, 1]]), axis=0)
    np.testing.assert_allclose(read_predictions(outcome.output), expected, rtol=0, atol=1e-12)
    assert outcome.time_to_first_running is not None
    # One executor process per agent used, or one per agent and model.
    per_agent = 1 if executors == "shared" else len(spec.models)
    assert outcome.agents_used <= outcome.executors_launched <= per_agent * outcome.agents_used
    if executors == "shared":
        assert outcome.executors_launched == outcome.agents_used
    # Every task's cost was measured by its executor and recorded.
    assert {m: u["tasks"] for m, u in outcome.usage.items()} == {"linear": 4, "logistic": 4}
    assert all(u["mean_seconds"] > 0 and u["cpu_seconds"] > 0 for u in outcome.usage.values())
    assert executor_processes() == []


def test_demo_command_end_to_end(demo: Path, tmp_path: Path) -> None:
    """The README's main job, as a user runs it: the console command, real processes, exit 0."""
    from framework.localmesos.cluster import live_processes, recorded_processes

    work = tmp_path / "work"  # kept, so the embedded cluster's process records can be read afterwards
    result = subprocess.run([sys.executable, "-m", "framework.cli", "run", str(demo), "--work-dir", str(work)],
                            capture_output=True, text=True, timeout=200, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr
    assert "wrote 171 integrated predictions" in result.stdout
    assert "member" in result.stdout and "cpu s" in result.stdout  # measured usage per member
    assert (demo.parent / "predictions.csv").is_file() and (demo.parent / "report.json").is_file()
    records = recorded_processes(work / "cluster")
    assert records  # the run's executors, as its cluster recorded them
    assert live_processes(records) == []


def test_bad_model_file_fails_cleanly(demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model corrupted after validation: executors report TASK_FAILED, the job fails with the reason."""
    from framework import job as job_module

    real_prepare = job_module.prepare

    def prepare_then_corrupt(spec, **kwargs):  # noqa: ANN001, ANN003, ANN202
        result = real_prepare(spec, **kwargs)
        spec.models[0].path.write_bytes(spec.models[0].path.read_bytes()[:-10] + b"0123456789")
        return result

    monkeypatch.setattr(job_module, "prepare", prepare_then_corrupt)
    with pytest.raises(JobFailed, match=r"model linear failed .*sha256 mismatch"):
        JobRunner(load_job(demo), work_dir=tmp_path / "work").run()
    assert not (demo.parent / "predictions.csv").exists()
    assert executor_processes() == []


def test_unreachable_master_fails_with_a_clear_message(demo: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses
    import socket

    from framework import job as job_module

    monkeypatch.setattr(job_module, "SUBSCRIBE_TIMEOUT_SECONDS", 3.0)
    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = load_job(demo)
    spec = dataclasses.replace(spec, framework=dataclasses.replace(spec.framework, master=f"127.0.0.1:{port}"))
    with pytest.raises(JobFailed, match=rf"could not subscribe to the Mesos master at 127.0.0.1:{port} within 3 s"):
        JobRunner(spec, work_dir=tmp_path / "work").run()


def test_member_that_crashes_the_shared_executor_is_isolated_and_dropped(demo: Path, tmp_path: Path) -> None:
    """A member whose predict kills the executor process (a segfault) takes down the shared
    executor once; after that it runs in executors of its own, fails alone, and is dropped,
    while the other members' killed tasks are retried and the ensemble is made without it."""
    import ctypes
    import hashlib

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    directory = demo.parent
    with (directory / "train.csv").open() as handle:
        rows = np.array(list(csv.reader(handle))[1:], dtype=float)
    # np.size turns the shard into a small integer, which ctypes.string_at reads as an address.
    crasher = Pipeline([("size", FunctionTransformer(np.size)), ("read", FunctionTransformer(ctypes.string_at)),
                        ("clf", LogisticRegression(max_iter=5000).fit(rows[:, :-1], rows[:, -1].astype(int)))])
    joblib.dump(crasher, directory / "crasher.joblib")
    digest = hashlib.sha256((directory / "crasher.joblib").read_bytes()).hexdigest()
    text = demo.read_text().replace('report = "report.json"', 'report = "report.json"\nmin_members = 2')
    text = text.replace('name = "mesos-ensemble-demo"', 'name = "mesos-ensemble-demo"\nmax_retries = 1')
    text += (f'\n[[models]]\nname = "crasher"\npath = "crasher.joblib"\nsha256 = "{digest}"\nkind = "classifier"\n'
             'output = "predict_proba"\nproba_class = 1\ncpus = 0.5\nmem = 128\n\n'
             '[local_cluster]\nagents = [{ hostname = "big", cpus = 8, mem = 8192 }]\n')
    job = directory / "crash.toml"
    job.write_text(text)
    outcome = JobRunner(load_job(job), work_dir=tmp_path / "work").run()
    assert outcome.members_used == ("linear", "logistic") and set(outcome.members_missing) == {"crasher"}
    with (directory / "test.csv").open() as handle:
        features = np.array(list(csv.reader(handle))[1:], dtype=float)[:, :-1]
    expected = np.mean(np.stack([joblib.load(directory / "linear.joblib").predict(features),
                                 joblib.load(directory / "logistic.joblib").predict_proba(features)[:, 1]]), axis=0)
    np.testing.assert_allclose(read_predictions(outcome.output), expected, rtol=0, atol=1e-12)
    assert executor_processes() == []


def test_the_jobs_embedded_cluster_refuses_other_frameworks(demo: Path, tmp_path: Path) -> None:
    """master = "local": the cluster a job starts requires framework authentication with a random
    per-run secret, so another local process can neither read its state (and the framework's id)
    nor SUBSCRIBE; the job's own driver is authenticated."""
    import urllib.error
    import urllib.request
    from contextlib import ExitStack

    runner = JobRunner(load_job(demo), work_dir=tmp_path / "work")
    with ExitStack() as stack:
        master, _python = runner._master(stack, tmp_path / "work")
        assert runner.credentials is not None and runner.credentials[0] == "mesos-ensemble"
        assert len(runner.credentials[1]) >= 32
        subscribe = b'{"type": "SUBSCRIBE", "subscribe": {"framework_info": {"user": "x", "name": "intruder"}}}'
        for request in (urllib.request.Request(f"http://{master}/master/state"),
                        urllib.request.Request(f"http://{master}/api/v1/scheduler", data=subscribe,
                                               headers={"Content-Type": "application/json"})):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 401
    other = JobRunner(load_job(demo), work_dir=tmp_path / "work2")
    with ExitStack() as stack:
        other._master(stack, tmp_path / "work2")
        assert other.credentials is not None and other.credentials[1] != runner.credentials[1]  # per run
