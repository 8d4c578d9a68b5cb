"""Watching a real run on the embedded cluster (real pymesos driver, executor processes, HTTP): its
live status moves while a thread reads it, the master's /master/state links to it (webui_url),
``mesos-ensemble status`` reads it, and nothing in it is a secret."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

import framework.job as job_module
from framework import cli
from framework.artifacts import ArtifactServer
from framework.job import JobOutcome, JobRunner
from framework.jobspec import load_job
from framework.live_status import ADDRESS_FILE
from framework.plan import master_state
from slow_models import write_slow_job

pytestmark = pytest.mark.timeout(240)


def wait_for(condition: Callable[[], Any], what: str, job: threading.Thread, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert job.is_alive(), f"the job ended before {what}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def test_a_running_job_serves_a_status_that_moves_and_mesos_links_to_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    servers: list[ArtifactServer] = []

    class Recorded(ArtifactServer):
        def start(self) -> ArtifactServer:
            servers.append(self)
            return super().start()

    monkeypatch.setattr(job_module, "ArtifactServer", Recorded)
    job = write_slow_job(tmp_path / "job", delay=1.0, rows=60)  # 2 models x 6 shards, each task >= 1 s
    state = tmp_path / "job" / "job.state"
    runner = JobRunner(load_job(job), work_dir=tmp_path / "work", state_dir=state)
    ended: dict[str, Any] = {}

    def run() -> None:
        try:
            ended["outcome"] = runner.run()
        except BaseException as error:  # noqa: BLE001 (reported by the test)
            ended["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    url = wait_for(lambda: runner.status_url if (state / ADDRESS_FILE).is_file() else None, "the status address",
                   thread)
    assert json.loads((state / ADDRESS_FILE).read_text())["url"] == url

    seen: list[dict[str, Any]] = []

    def midway() -> dict[str, Any] | None:
        document = json.loads(get(url + "status"))
        seen.append(document)
        done, tasks = document["progress"]["done"], document["progress"]["tasks"]
        return document if 0 < done < tasks and document["state"] == "running" else None

    middle = wait_for(midway, "a status with some but not all tasks done", thread)
    assert set(middle["models"]) == {"slow_a", "slow_b"} and middle["progress"]["tasks"] == 12
    assert middle["agents_used"] and middle["cost"] >= 1.0 and middle["framework_id"]
    assert sum(middle["tasks_by_state"].values()) == 12

    # The master's /master/state reports the framework's webui_url, and it answers.
    assert runner.credentials is not None and runner.master is not None
    principal, secret = runner.credentials
    frameworks = master_state(runner.master, principal, secret)["frameworks"]
    ours = [f for f in frameworks if f["id"] == middle["framework_id"]]
    assert len(ours) == 1 and ours[0]["webui_url"] == url
    page = get(ours[0]["webui_url"])
    assert "<html" in page and "slow_a" in page and 'http-equiv="refresh"' in page

    # `mesos-ensemble status` reads the live status while the job runs.
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        assert cli.main(["status", str(job)]) == 0
    assert f"slow: running (live, from {url})" in shown.getvalue() and "model slow_a: " in shown.getvalue()
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        assert cli.main(["status", str(job), "--json"]) == 0
    live = json.loads(shown.getvalue())
    assert live["source"] == "live" and live["url"] == url and live["progress"]["tasks"] == 12

    while thread.is_alive():  # until the run ends, the status keeps answering
        with contextlib.suppress(OSError):
            seen.append(json.loads(get(url + "status")))
        time.sleep(0.1)
    assert "error" not in ended, ended.get("error")
    outcome: JobOutcome = ended["outcome"]
    dones = [d["progress"]["done"] for d in seen]
    assert dones == sorted(dones) and dones[-1] > middle["progress"]["done"], dones  # it moved, forward
    assert outcome.status_url == url and outcome.cost >= 1.0

    # Gone with the run: the address file, and `status` says it shows the journal.
    assert not (state / ADDRESS_FILE).exists()
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        assert cli.main(["status", str(job)]) == 0
    assert "(from the journal: no run of it answers now)" in shown.getvalue()
    journal_json = io.StringIO()
    with contextlib.redirect_stdout(journal_json):
        assert cli.main(["--json", "status", str(job)]) == 0
    from_journal = json.loads(journal_json.getvalue())
    assert from_journal["source"] == "journal" and from_journal["items_by_state"] == {"finished": 12}
    assert from_journal["completed"] and from_journal["total"] == 12

    # No secret anywhere it showed: the framework's secret, the artifact server's token.
    assert servers and len(servers[0].token) > 10
    everything = json.dumps(seen) + page + shown.getvalue()
    assert secret not in everything and servers[0].token not in everything
