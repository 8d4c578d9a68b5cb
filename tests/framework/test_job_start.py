"""The job's start: the models' inspection process runs while the data is cut and the cluster
starts (nothing launches before its answer), ``mesos-ensemble run`` starts it before it reads the
job file, an abandoned run leaves no inspection process behind, and the start's steps are
recorded in order."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import argparse

import joblib
import pytest

from framework import cli
from framework import inspection as inspection_module
from framework import job as job_module
from framework.demo import train_demo
from framework.errors import JobSpecError
from framework.inspection import CACHE_ENV, InspectionAhead, Zygote, inspect_job_models
from framework.job import JobRunner
from framework.jobspec import load_job
from harness import InProcessMesos, alive, wait_for
from trojans import write_joblib_trojan


def slow_demo(tmp_path: Path, seconds: float) -> Path:
    """The founding example whose linear model sleeps ``seconds`` when loaded, after writing the
    loading process' id to ``tmp_path/pids`` and its parent's to ``tmp_path/parents`` (its sha256
    declared correctly)."""
    demo = train_demo(tmp_path / "demo")
    linear = demo.parent / "linear.joblib"
    declared = hashlib.sha256(linear.read_bytes()).hexdigest()
    pids, parents = tmp_path / "pids", tmp_path / "parents"
    write_joblib_trojan(linear, joblib.load(linear),
                        f"[open({str(parents)!r}, 'a').write('%d\\n' % __import__('os').getppid()), "
                        f"open({str(pids)!r}, 'a').write('%d\\n' % __import__('os').getpid()), "
                        f"__import__('time').sleep({seconds})]")
    text = demo.read_text().replace(declared, hashlib.sha256(linear.read_bytes()).hexdigest())
    demo.write_text(text)
    return demo


class Stop(Exception):
    """Ends the run where the test has seen what it wanted."""


def test_shards_are_cut_while_the_models_are_inspected_and_an_abandoned_run_kills_the_inspection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))  # inspected anew
    demo = slow_demo(tmp_path, 60)
    seen: dict[str, bool] = {}
    real_spill = job_module.spill_shards

    def spill_and_stop(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        real_spill(*args, **kwargs)
        inspecting = [t for t in threading.enumerate() if t.name == "inspection" and t.is_alive()]
        seen["inspecting"] = bool(inspecting)
        assert wait_for(lambda: (tmp_path / "pids").exists())  # the model is being loaded, elsewhere
        raise Stop

    monkeypatch.setattr(job_module, "spill_shards", spill_and_stop)
    started = time.monotonic()
    with pytest.raises(Stop):
        JobRunner(load_job(demo), work_dir=tmp_path / "work", progress=lambda message: None).run()
    assert seen == {"inspecting": True}  # the shards were cut while the inspection ran
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert pids and os.getpid() not in pids
    assert wait_for(lambda: not any(alive(p) for p in pids), timeout=10)  # killed, not left to sleep on
    assert time.monotonic() - started < 50
    assert not [t for t in threading.enumerate() if t.name == "inspection"]


def test_a_model_refused_by_its_inspection_launches_nothing_even_after_the_shards_are_cut(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    demo = train_demo(tmp_path / "demo")
    linear = demo.parent / "linear.joblib"
    declared = hashlib.sha256(linear.read_bytes()).hexdigest()
    linear.write_bytes(b"not a pickle")
    demo.write_text(demo.read_text().replace(declared, hashlib.sha256(linear.read_bytes()).hexdigest()))
    factory = InProcessMesos.factory([{"agent": "a1", "cpus": 2, "mem": 2048}], tmp_path / "sandboxes")
    runner = JobRunner(load_job(demo), work_dir=tmp_path / "work", start_local_cluster=False,
                       driver_factory=factory)
    with pytest.raises(JobSpecError, match=r"models\[0\] \(linear\): linear\.joblib: could not be loaded"):
        runner.run()
    assert getattr(factory, "last", None) is None  # no driver was ever made: nothing subscribed or launched
    assert "shards cut" in runner.steps and "driver started" not in runner.steps
    assert not (tmp_path / "work").exists()  # made by the run, removed with the refusal


def test_the_start_is_recorded_step_by_step(tmp_path: Path) -> None:
    demo = train_demo(tmp_path / "demo")
    spec = load_job(demo)
    inspection = InspectionAhead(spec)  # as `mesos-ensemble run` starts it, before the framework's imports
    factory = InProcessMesos.factory([{"agent": "a1", "cpus": 2, "mem": 2048}], tmp_path / "sandboxes")
    runner = JobRunner(spec, start_local_cluster=False, driver_factory=factory, inspection=inspection)
    runner.run()
    steps = runner.steps
    order = ["run", "data described", "shards cut", "cluster started", "artifacts served", "checked",
             "driver started", "work handed over"]
    assert [name for name in sorted(steps, key=steps.__getitem__) if name in order] == order
    assert steps["run"] <= steps["models inspected"] <= steps["checked"]
    assert inspection.finished_at == steps["models inspected"]  # the run used the answer given, not its own
    described = runner.describe_steps()
    # (by time: the inspection's answer comes wherever it came, first when its cache answered)
    positions = [described.index(f"{name} ") for name in order[1:]]
    assert positions == sorted(positions) and "models inspected " in described


def test_a_zygote_started_before_the_job_is_read_inspects_its_models(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The zygote ``run`` starts before it reads the job file loads the job's models (each in a
    child of its own) and answers what a zygote started with its work answers; then it is gone."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    demo = slow_demo(tmp_path, 0)
    zygote = Zygote()  # before the job file is read: it knows no model yet
    spec = load_job(demo)
    early = InspectionAhead(spec, zygote=zygote).result()
    loaders = {int(p) for p in (tmp_path / "parents").read_text().split()}
    assert loaders == {zygote.process.pid}  # the linear model loaded in a child of the early zygote
    assert zygote.process.returncode is not None and not alive(zygote.process.pid)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache-again"))
    again = inspect_job_models(spec)
    assert early.keys() == again.keys()
    def answer(name: str, inspected: dict[str, Any]) -> dict[str, Any]:  # (a second load's growth varies a little)
        return {key: value for key, value in inspected[name].to_json().items() if key != "loaded_bytes"}

    assert all(answer(name, early) == answer(name, again) for name in early)


def test_a_zygote_not_needed_is_stopped_without_loading_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every answer cached: the early zygote is stopped (no model loaded); a run abandoned before
    the zygote got its work, or a zygote whose stdin closes empty (its framework gone), ends too."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    demo = slow_demo(tmp_path, 0)
    spec = load_job(demo)
    inspect_job_models(spec)  # cached from now on
    (tmp_path / "pids").unlink()
    zygote = Zygote()
    InspectionAhead(spec, zygote=zygote).result()
    assert zygote.process.returncode is not None and not (tmp_path / "pids").exists()
    orphan = Zygote()
    orphan.process.stdin.close()  # type: ignore[union-attr]
    assert orphan.process.wait(timeout=60) == 0
    orphan.stop()
    unused = Zygote()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cold"))
    slow = InspectionAhead(load_job(slow_demo(tmp_path / "slow", 60)), zygote=unused)
    slow.cancel()
    assert unused.process.returncode is not None and not alive(unused.process.pid)


class ReadJob(Exception):
    """Ends ``cmd_run`` where it reads the job file."""


@pytest.mark.parametrize("command", ["run", "validate"])
def test_run_and_validate_start_the_inspection_process_before_they_read_the_job_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """Unless the inspection cache answers for every model the job file names (then no process)."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    demo = train_demo(tmp_path / "demo")
    started: list[Zygote] = []
    seen: list[bool] = []  # when the job file was read: an inspection process importing scikit-learn

    class Recorded(Zygote):
        def __init__(self) -> None:
            super().__init__()
            started.append(self)

    def read_job(args: argparse.Namespace):  # noqa: ANN202
        seen.append(bool(started) and started[-1].process.poll() is None)
        raise ReadJob

    monkeypatch.setattr(inspection_module, "Zygote", Recorded)
    monkeypatch.setattr(cli, "load_checked", read_job)
    monkeypatch.setattr(cli, "install_signal_handlers", lambda after_pymesos=True: None)
    command_function = {"run": cli.cmd_run, "validate": cli.cmd_validate}[command]
    with pytest.raises(ReadJob):
        command_function(argparse.Namespace(job=demo, scan=False))
    assert seen == [True] and len(started) == 1
    assert started[0].process.returncode is not None and not alive(started[0].process.pid)  # stopped with the run
    inspect_job_models(load_job(demo))  # every answer cached from now on (by a zygote of its own)
    before = len(started)
    with pytest.raises(ReadJob):
        command_function(argparse.Namespace(job=demo, scan=False))
    assert seen == [True, False] and len(started) == before


VALIDATE_AND_SAY_IF_SKLEARN = ("import sys; from framework.cli import main; "
                               "code = main(['-q', 'validate', sys.argv[1]]); "
                               "print('sklearn imported:', 'sklearn' in sys.modules); sys.exit(code)")


@pytest.mark.parametrize("swap_kinds", [False, True])
def test_checking_a_job_without_stacking_imports_no_scikit_learn_here(tmp_path: Path, swap_kinds: bool) -> None:
    """The framework's process reads, inspects and checks a job's members (kinds, outputs, classes,
    versions) from their metadata alone: scikit-learn's import (about a second) is the inspection
    process' and the executors' (a kind that does not match the model is still refused)."""
    demo = train_demo(tmp_path / "demo")
    if swap_kinds:
        demo.write_text(demo.read_text().replace('kind = "regressor"', 'kind = "classifier"', 1))
    done = subprocess.run([sys.executable, "-c", VALIDATE_AND_SAY_IF_SKLEARN, str(demo)], capture_output=True,
                          text=True, timeout=120, env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[2])})
    assert done.stdout.strip().endswith("sklearn imported: False"), done.stdout + done.stderr
    if swap_kinds:
        assert done.returncode == 2 and "declared a classifier but LinearRegression is not one" in done.stderr
    else:
        assert done.returncode == 0, done.stderr
