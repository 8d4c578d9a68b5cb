"""Durable jobs, quick cases: the journal wired into a whole job (in-process mock Mesos, real
executor runner), resume without recomputing, a changed job refused, ``status``, and the
acknowledgement of a finished update only once its result is durable.  The slow cases with real
processes and real signals are in ``tests/faults/``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pymesos
import pytest

from executor.protocol import BundlePayload, decode_task
from factories import make_offer, make_status
from framework import cli
from framework.artifacts import ArtifactServer
from framework.catalog import JobCatalog
from framework.dataset import cut_shards, load_dataset
from framework.demo import train_demo
from framework.job import JobAlreadyFinished, JobRunner
from framework.jobspec import load_job
from framework.journal import Journal, JournalMismatch
from framework.packing import CostModel, PackingOptions, PriceTable
from framework.scheduler import EnsembleScheduler, OfferPolicy
from framework.tasks import ItemState, Tracker, WorkItem
from harness import FakeDriver, InProcessMesos

AGENTS = [{"agent": "a1", "cpus": 2, "mem": 2048}, {"agent": "a2", "cpus": 2, "mem": 2048}]
ROOT = Path(__file__).resolve().parents[2]


class Stop(Exception):
    """Raised from the progress callback to end a run part-way, as an interrupt would."""


def sharded_demo(directory: Path, rows_per_shard: int = 20) -> Path:
    """The founding example cut into more shards (171 rows: 9 shards x 2 models = 18 items),
    writing its output into ``out/``."""
    job = train_demo(directory)
    text = job.read_text().replace("rows_per_shard = 50", f"rows_per_shard = {rows_per_shard}")
    text = text.replace('output = "predictions.csv"', 'output = "out/predictions.csv"')
    job.write_text(text.replace('report = "report.json"\n', ""))
    (directory / "out").mkdir()
    return job


def in_process(job: Path, sandbox: Path, **options: Any) -> tuple[JobRunner, Any]:
    factory = InProcessMesos.factory(AGENTS, sandbox)
    return JobRunner(load_job(job), start_local_cluster=False, driver_factory=factory, **options), factory


def stop_after(finished: int) -> Any:
    seen: list[str] = []

    def progress(message: str) -> None:
        if message.startswith("done "):
            seen.append(message)
            if len(seen) == finished:
                raise Stop(message)
    return progress


def carriers(driver: Any) -> dict[str, str]:
    """Per launched item's task id, the Mesos task that carried it (its own, or its bundle's)."""
    carried = {}
    for _offers, tasks, _filters in driver.launches:
        for task in tasks:
            payload = decode_task(pymesos.decode_data(task["data"]))
            for task_id in ([item.task_id for item in payload.items] if isinstance(payload, BundlePayload)
                            else [task["task_id"]["value"]]):
                carried[task_id] = task["task_id"]["value"]
    return carried


def launched_items(driver: Any) -> list[str]:
    """The items launched, each bundle's items counted one by one (a Mesos task may carry several)."""
    return [task_id.rsplit(".a", 1)[0] for task_id in carriers(driver)]


def test_resume_loads_finished_items_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    reference_job = sharded_demo(tmp_path / "reference")
    in_process(reference_job, tmp_path / "sb0")[0].run()
    expected = (tmp_path / "reference" / "out" / "predictions.csv").read_bytes()

    job = sharded_demo(tmp_path / "job")
    state = tmp_path / "state"
    runner, _factory = in_process(job, tmp_path / "sb1", state_dir=state, progress=stop_after(5))
    with pytest.raises(Stop):
        runner.run()
    assert sorted(p.name for p in (tmp_path / "job" / "out").iterdir()) == []  # no partial output left
    with Journal.read(state) as journal:
        finished_before = journal.finished()
        attempts_before = {key: len(item.attempts) for key, item in journal.items().items()}
        assert len(finished_before) >= 5 and journal.completed is None

    runner, factory = in_process(job, tmp_path / "sb2", state_dir=state)
    outcome = runner.run()
    assert (tmp_path / "job" / "out" / "predictions.csv").read_bytes() == expected
    assert sorted(p.name for p in (tmp_path / "job" / "out").iterdir()) == ["predictions.csv"]
    relaunched = launched_items(factory.last)
    assert not set(relaunched) & set(finished_before), "a finished item was computed again"
    assert len(relaunched) == len(set(relaunched)) == 18 - len(finished_before)
    assert outcome.resumed_items == len(finished_before) and outcome.tasks == 18
    with Journal.read(state) as journal:
        assert journal.completed is not None and len(journal.finished()) == 18
        items = journal.items()
        for key in finished_before:  # results kept, not recomputed: no new attempt
            assert len(items[key].attempts) == attempts_before[key]
        # A task id is never reused: resumed attempts number on from the journal's.
        task_ids = [a.task_id for item in items.values() for a in item.attempts]
        assert len(task_ids) == len(set(task_ids))
    # Finished results are acknowledged (explicitly, after being recorded) like every other update.
    acked = {status["task_id"]["value"] for status in factory.last.acks}
    carried = carriers(factory.last)
    assert {carried[f"{key}.a{len(items[key].attempts)}"] for key in relaunched} <= acked

    runner, factory = in_process(job, tmp_path / "sb3", state_dir=state)
    with pytest.raises(JobAlreadyFinished, match="already finished"):
        runner.run()
    assert not hasattr(factory, "last"), "a finished job was run again"


def test_a_changed_job_is_refused_before_anything_launches(tmp_path: Path) -> None:
    job = sharded_demo(tmp_path / "job")
    state = tmp_path / "state"
    runner, _factory = in_process(job, tmp_path / "sb1", state_dir=state, progress=stop_after(2))
    with pytest.raises(Stop):
        runner.run()
    job.write_text(job.read_text().replace('name = "linear"', 'name = "linear"\nweight = 2.0'))
    runner, factory = in_process(job, tmp_path / "sb2", state_dir=state)
    with pytest.raises(JournalMismatch, match=r"models\[0\]\.weight added \(2\.0\)"):
        runner.run()
    assert not hasattr(factory, "last"), "a driver was started for a changed job"

    runner, factory = in_process(job, tmp_path / "sb3", state_dir=state, fresh=True)
    outcome = runner.run()
    assert outcome.resumed_items == 0 and len(launched_items(factory.last)) == 18


def test_cli_refuses_a_changed_job_in_one_line_and_status_shows_progress(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    job = sharded_demo(tmp_path / "job")
    runner, _factory = in_process(job, tmp_path / "sb1", state_dir=job.with_name("job.state"),
                                  progress=stop_after(3))
    with pytest.raises(Stop):
        runner.run()

    assert cli.main(["status", str(job)]) == 0
    shown = capsys.readouterr().out
    assert "job.toml: " in shown and "/18 items finished" in shown and "unfinished (run again to resume)" in shown
    assert "framework id: F1" in shown  # the mock master's id, saved when registered

    (tmp_path / "job" / "test.csv").write_text((tmp_path / "job" / "test.csv").read_text() + "\n")
    done = subprocess.run([sys.executable, "-m", "framework.cli", "run", str(job)], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 2, done.stderr
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("mesos-ensemble: error: ")
    assert "data: test.csv changed (sha256" in errors[0] and "--fresh" in errors[0]

    assert cli.main(["status", str(job), "--state-dir", str(tmp_path / "nowhere")]) == 2
    assert "no journal here" in capsys.readouterr().err


def test_finished_update_is_acknowledged_by_the_job_not_the_callback(tmp_path: Path) -> None:
    """The scheduler acknowledges every update as it handles it, except a finished one, whose
    status travels with the FINISHED event for the job to acknowledge after journaling it."""
    server = ArtifactServer(tmp_path / "results", bind="127.0.0.1").start()
    try:
        spec = load_job(train_demo(tmp_path / "demo"))
        shards = {"data": cut_shards(load_dataset(spec.data).features[:100], 50)}
        catalog = JobCatalog(spec, server, shards, "python3", server.publish("exec.tgz", spec.models[0].path))
        items = [WorkItem(f"{m.name}.s{s.index:05d}", m.name, s.index) for m in spec.models for s in shards["data"]]
        scheduler = EnsembleScheduler(Tracker(items, max_retries=2), catalog, PriceTable(), CostModel(),
                                      PackingOptions(), OfferPolicy(5.0, 300.0), rounds_in_callback=True)
        driver = FakeDriver(scheduler)
        scheduler.registered(driver, {"value": "F1"}, {"hostname": "master", "port": 5050})
        scheduler.resourceOffers(driver, [make_offer("a1", cpus=4, mem=4096)])
        launched = [t["task_id"]["value"] for _ids, tasks, _f in driver.launches for t in tasks]
        task_id = launched[0]
        item = scheduler.tracker.item_for_task(task_id)
        scheduler.statusUpdate(driver, make_status(task_id, "TASK_RUNNING", "a1"))
        assert [s["task_id"]["value"] for s in driver.acks] == [task_id]
        scheduler.statusUpdate(driver, make_status(task_id, "TASK_FINISHED", "a1", data="eA=="))
        assert len(driver.acks) == 1, "a finished update was acknowledged before its result was kept"
        event = scheduler.events.get_nowait()
        assert event.item is item and event.status["state"] == "TASK_FINISHED"
        scheduler.acknowledge(driver, event.status)
        assert len(driver.acks) == 2
        # A reconciliation answer "finished" carries no result: ignored (the resent update brings it).
        other = launched[1]
        scheduler.statusUpdate(driver, make_status(other, "TASK_FINISHED", "a1", reason="REASON_RECONCILIATION",
                                                   uuid=None))
        other_item = scheduler.tracker.item_for_task(other)
        assert other_item is not None and other_item.state is not ItemState.FINISHED
        assert scheduler.events.empty()
    finally:
        server.stop()
