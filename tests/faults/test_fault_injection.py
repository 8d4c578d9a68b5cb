"""Fault injection on the embedded cluster: real pymesos drivers, real executor processes, real
HTTP.  Each job's output must equal the fault-free run's byte for byte, every shard of every
member must be integrated exactly once, and no executor process may be left behind (the clusters'
own process records, checked by ``tests/conftest.py`` after every test too)."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from framework import ensemble
from framework.demo import train_demo
from framework.errors import JobFailed, MasterLost
from framework.job import JobOutcome, JobRunner
from framework.jobspec import JobSpec, load_job
from framework.localmesos import LocalCluster
from tests.faults.conftest import controlled_job, shard_first_values, started

pytestmark = pytest.mark.timeout(300)
SHARDS = 4  # the demo: 171 rows, 50 per shard


def wait_for(condition: Callable[[], Any], what: str, job: threading.Thread | None = None,
             limit: float = 120.0) -> Any:
    """Poll ``condition`` until it is truthy, or the ``job`` thread ended (the limit only keeps a
    broken test from hanging)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if job is not None and not job.is_alive():
            raise AssertionError(f"the job ended before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    return train_demo(tmp_path / "demo")


@pytest.fixture
def reference(demo: Path, tmp_path: Path) -> bytes:
    """The fault-free run's output (the plain demo members on a cluster of its own)."""
    outcome = JobRunner(load_job(demo), work_dir=tmp_path / "reference").run()
    data = outcome.output.read_bytes()
    outcome.output.unlink()
    return data


@pytest.fixture
def integrated(monkeypatch: pytest.MonkeyPatch) -> Counter[tuple[str, int]]:
    """How many times each (member, shard) reached the integrator."""
    counts: Counter[tuple[str, int]] = Counter()
    original = ensemble.StreamingIntegrator.add

    def counting_add(self: Any, member: str, shard: int, output: Any) -> Any:
        counts[(member, shard)] += 1
        return original(self, member, shard, output)

    monkeypatch.setattr(ensemble.StreamingIntegrator, "add", counting_add)
    return counts


def on_cluster(job: Path, cluster: LocalCluster, **framework: Any) -> JobSpec:
    spec = load_job(job)
    return dataclasses.replace(spec, framework=dataclasses.replace(spec.framework, master=cluster.master_address,
                                                                   **framework))


def run_in_thread(spec: JobSpec, work: Path) -> tuple[threading.Thread, dict[str, Any]]:
    """Run the job on a thread (the test injects faults meanwhile); its outcome or error lands in
    the returned dict."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["outcome"] = JobRunner(spec, work_dir=work).run()
        except BaseException as error:  # noqa: BLE001 (handed to the test)
            result["error"] = error

    thread = threading.Thread(target=target, name="job")
    thread.start()
    return thread, result


def finish(thread: threading.Thread, result: dict[str, Any]) -> JobOutcome:
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["outcome"]


def check_exact(outcome: JobOutcome, reference: bytes, counts: Counter[tuple[str, int]]) -> None:
    assert outcome.output.read_bytes() == reference
    assert counts == Counter({(m, s): 1 for m in ("linear", "logistic") for s in range(SHARDS)})
    assert sorted(p.name for p in outcome.output.parent.iterdir() if p.name.startswith(".")) == []
    assert not [p for p in outcome.output.parent.iterdir() if "partial" in p.name or p.name.endswith(".part")]


def test_an_executor_killed_mid_task_is_retried(demo: Path, tmp_path: Path, reference: bytes,
                                                integrated: Counter[tuple[str, int]],
                                                make_cluster: Callable[..., LocalCluster]) -> None:
    control = tmp_path / "control"
    cluster = make_cluster()
    thread, result = run_in_thread(on_cluster(controlled_job(demo, control, seconds=1.0), cluster), tmp_path / "w")
    victim = wait_for(lambda: started(control), "a task computing", thread)[0]
    os.kill(victim, signal.SIGKILL)
    outcome = finish(thread, result)
    check_exact(outcome, reference, integrated)
    assert outcome.task_attempts > outcome.tasks  # the killed executor's tasks ran again


@pytest.mark.faults
def test_an_agent_failing_every_task_is_blamed_and_the_job_completes_elsewhere(
        demo: Path, tmp_path: Path, reference: bytes, integrated: Counter[tuple[str, int]],
        make_cluster: Callable[..., LocalCluster], caplog: pytest.LogCaptureFixture) -> None:
    control = tmp_path / "control"
    cluster = make_cluster(agents=3)
    bad = sorted(cluster.agent_endpoints())[0]
    job = controlled_job(demo, control, seconds=0.2)
    (control / "bad-agent").write_text(bad)
    outcome = finish(*run_in_thread(on_cluster(job, cluster, max_retries=5), tmp_path / "w"))
    check_exact(outcome, reference, integrated)
    assert "infrastructure" in caplog.text and "out of memory" in caplog.text


@pytest.mark.faults
def test_master_lost_beyond_master_timeout_fails_in_one_line(demo: Path, tmp_path: Path,
                                                             make_cluster: Callable[..., LocalCluster]) -> None:
    control = tmp_path / "control"
    cluster = make_cluster()
    spec = on_cluster(controlled_job(demo, control, seconds=2.0), cluster, master_timeout=2.0)
    thread, result = run_in_thread(spec, tmp_path / "w")
    wait_for(lambda: started(control), "a task computing", thread)
    restart = threading.Thread(target=cluster.restart_master, kwargs={"downtime": 8.0})
    restart.start()
    thread.join()
    restart.join()
    error = result.get("error")
    assert isinstance(error, MasterLost), result
    message = str(error)
    assert "\n" not in message and message.startswith(f"lost the Mesos master at {cluster.master_address} for ")
    assert "run again to resume" in message
    assert not (demo.parent / "predictions.csv").exists()


@pytest.mark.faults
def test_an_agent_killed_mid_task_is_blamed_and_its_work_retried(
        demo: Path, tmp_path: Path, reference: bytes, integrated: Counter[tuple[str, int]],
        make_cluster: Callable[..., LocalCluster]) -> None:
    control = tmp_path / "control"
    cluster = make_cluster(agents=3)
    thread, result = run_in_thread(on_cluster(controlled_job(demo, control, seconds=1.5), cluster), tmp_path / "w")
    victim = wait_for(lambda: started(control), "a task computing", thread)[0]
    agent = next(a for a in cluster.agents if any(pid == victim for _sid, pid in
                                                   (r for run in a.runs() for r in run.processes())))
    cluster.kill_agent(agent.agent_id)
    outcome = finish(thread, result)
    check_exact(outcome, reference, integrated)
    assert outcome.task_attempts > outcome.tasks


@pytest.mark.faults
def test_one_shard_ten_times_slower_gets_a_backup_that_wins(
        demo: Path, tmp_path: Path, reference: bytes, integrated: Counter[tuple[str, int]],
        make_cluster: Callable[..., LocalCluster]) -> None:
    control = tmp_path / "control"
    job = controlled_job(demo, control, seconds=1.0)
    (control / f"slow-{shard_first_values(demo, 50)[-1]!r}").touch()  # the last shard, first attempt: 10 s
    cluster = make_cluster()
    outcome = finish(*run_in_thread(on_cluster(job, cluster), tmp_path / "w"))
    check_exact(outcome, reference, integrated)
    assert outcome.backups_launched >= 1


@pytest.mark.faults
def test_master_restarted_within_master_timeout_the_job_completes(
        demo: Path, tmp_path: Path, reference: bytes, integrated: Counter[tuple[str, int]],
        make_cluster: Callable[..., LocalCluster]) -> None:
    control = tmp_path / "control"
    cluster = make_cluster()
    spec = on_cluster(controlled_job(demo, control, seconds=1.0), cluster, master_timeout=60.0)
    thread, result = run_in_thread(spec, tmp_path / "w")
    wait_for(lambda: started(control), "a task computing", thread)
    cluster.restart_master(downtime=2.0)
    outcome = finish(thread, result)
    check_exact(outcome, reference, integrated)


def test_a_members_own_error_is_retried_once_then_fails_the_job_in_one_line(
        demo: Path, tmp_path: Path, make_cluster: Callable[..., LocalCluster],
        caplog: pytest.LogCaptureFixture) -> None:
    control = tmp_path / "control"
    job = controlled_job(demo, control, seconds=0.0)
    (control / "member-error").touch()
    caplog.set_level(logging.INFO, "framework.scheduler")
    with pytest.raises(JobFailed) as failure:
        JobRunner(on_cluster(job, make_cluster()), work_dir=tmp_path / "w").run()
    message = str(failure.value)
    assert "\n" not in message and "after 2 attempts" in message  # not max_retries + 1
    assert "ValueError: simulated: column 2 is negative" in message
    assert "Traceback (most recent call last)" in caplog.text and "in pause" in caplog.text  # for --verbose
    assert not (demo.parent / "predictions.csv").exists()


def test_work_no_agent_can_run_fails_fast_with_the_packers_reasons(
        demo: Path, tmp_path: Path, make_cluster: Callable[..., LocalCluster]) -> None:
    """Against an external master the agents are known only from offers (validate cannot
    refuse): the run fails once every agent has been offered, not at timeout_seconds."""
    demo.write_text(demo.read_text().replace("mem = 128", "mem = 1000000", 1))
    cluster = make_cluster()
    with pytest.raises(JobFailed, match=r"model linear: 4 task\(s\) cannot be placed: none of the 2 known agents "
                                        r"can run one \(mem exhausted on 2 agents\)"):
        JobRunner(on_cluster(demo, cluster), work_dir=tmp_path / "w").run()
    assert not (demo.parent / "predictions.csv").exists()


def test_failed_authentication_is_one_line(demo: Path, tmp_path: Path,
                                           make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(credentials={"ensemble": "right"})
    (tmp_path / "secret").write_text("wrong")
    text = demo.read_text().replace('name = "mesos-ensemble-demo"',
                                    f'name = "mesos-ensemble-demo"\nprincipal = "ensemble"\n'
                                    f'secret_file = "{tmp_path / "secret"}"')
    demo.write_text(text)
    result = subprocess.run([sys.executable, "-m", "framework.cli", "run", str(demo), "--master",
                             cluster.master_address, "--work-dir", str(tmp_path / "w")],
                            capture_output=True, text=True, timeout=200)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "refused the framework's credentials (HTTP 401)" in lines[0]


@pytest.fixture(autouse=True)
def _no_stray_outputs(demo: Path) -> Iterator[None]:
    yield
    assert not [p.name for p in demo.parent.iterdir() if ".partial" in p.name or p.name.endswith(".part")]


def test_offers_rescinded_while_rounds_are_decided(demo: Path, tmp_path: Path, reference: bytes,
                                                   integrated: Counter[tuple[str, int]],
                                                   make_cluster: Callable[..., LocalCluster],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The master rescinds every offer 30 ms after making it (as Mesos does with
    --offer_timeout) and the first rounds take 100 ms to decide, so their offers vanish while
    they are decided: none is accepted once known rescinded (an ACCEPT that loses the race is
    refused by the master and its tasks retried), later rounds launch, the output is exact."""
    from framework.scheduler import EnsembleScheduler

    rescinded: list[str] = []
    original_rescinded, original_init = EnsembleScheduler.offerRescinded, EnsembleScheduler.__init__

    def counting(self: EnsembleScheduler, driver: Any, offer_id: Any) -> None:
        rescinded.append(str(offer_id))
        original_rescinded(self, driver, offer_id)

    def slow_rounds(self: EnsembleScheduler, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        decide, slow = self.decide, [2]

        def slowly(*decide_args: Any) -> Any:
            if slow[0] > 0:  # on the decision worker: the master's clock runs on meanwhile
                slow[0] -= 1
                time.sleep(0.1)
            return decide(*decide_args)

        self.decide = slowly

    monkeypatch.setattr(EnsembleScheduler, "offerRescinded", counting)
    monkeypatch.setattr(EnsembleScheduler, "__init__", slow_rounds)
    cluster = make_cluster(offer_timeout=0.03)
    outcome = finish(*run_in_thread(on_cluster(demo, cluster, max_retries=10), tmp_path / "w"))
    check_exact(outcome, reference, integrated)
    assert rescinded  # the fault happened
