"""``serve`` end to end on the embedded cluster: real executor processes holding replicas, the
real gateway over HTTP.  The gateway's answers equal the batch job's output for the same rows; a
replica whose executor is killed (``kill -9``) is replaced while requests keep being answered;
replicas follow the load up and back down; a changed model rolls without a failed request."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import joblib
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LinearRegression

from framework.jobspec import load_job
from deploy_helpers import LoopingClient, Served, metric, post, predict, serve_job, wait_for


def test_gateway_answers_equal_the_batch_jobs_output(tmp_path: Path, batch_reference: Any) -> None:
    columns, rows, expected = batch_reference
    job = serve_job(tmp_path / "job")
    with Served(job, tmp_path / "state") as served:
        # One request per shard of the batch job (rows_per_shard = 50): each member predicts the same
        # rows in one call, as in the batch job (LinearRegression's last bits depend on the batch size).
        answers = [value for start in range(0, len(rows), 50)
                   for value in predict(served.url, columns, rows[start:start + 50])]
        assert answers == expected
        # Named columns in any order, and each member's own values when asked.
        status, answer = post(served.url, {"rows": [dict(reversed(list(zip(columns, rows[0]))))], "members": True})
        assert status == 200 and set(answer["members"]) == {"linear", "logistic"}
        assert sorted(answer["answered_by"]) == ["linear", "logistic"]
        counts = served.controller.counts()
        assert counts["linear"]["ready"] == 1 and counts["logistic"]["ready"] == 1
        # Cost per hour (each agent holding a replica at its price, 1.0 by default) against the
        # bound, once every replica the autoscaler wants is placed (a loaded machine may scale up).
        def priced() -> tuple[float, float, int] | None:
            agents = {r.agent_id for r in served.controller.replicas.values()}
            [(_labels, cost)] = metric(served.url, "mesos_ensemble_cost_per_hour")
            [(_labels, bound)] = metric(served.url, "mesos_ensemble_cost_lower_bound_per_hour")
            return (cost, bound, len(agents)) if cost > 0 and bound <= cost else None
        cost, bound, agents = wait_for(priced)
        assert cost == float(agents) and 0 < bound <= cost
        state = (tmp_path / "state")
        assert (state / "serve.json").exists()
    assert not (state / "serve.json").exists(), "serve.json outlived serve"
    assert any("deploying" in note for note in served.notes)


def spread_job(directory: Path, serve: str = "", replicas: str = "min_replicas = 2\nmax_replicas = 2") -> Path:
    """The demo on two agents, each member's replicas one per agent (so each agent's executor holds
    one replica of every member)."""
    job = serve_job(directory, serve, models={"linear": replicas, "logistic": replicas})
    text = job.read_text().replace("proba_class = 1\n", "proba_class = 1\nconstraints = { max_per_agent = 1 }\n")
    text = text.replace('output = "predict"\n', 'output = "predict"\nconstraints = { max_per_agent = 1 }\n', 1)
    job.write_text(text)
    return job


class Client(LoopingClient):
    """Requests in a loop on threads; every answer's status is kept."""

    def __init__(self, url: str, columns: list[str], rows: list[list[float]], threads: int = 2) -> None:
        self.url, self.columns, self.rows = url, columns, rows
        self.statuses: list[int] = []
        self.failures: list[Any] = []
        super().__init__(threads)

    def _loop(self, thread: int) -> None:
        index = 0
        while not self.stopped.is_set():
            status, answer = post(self.url, {"columns": self.columns, "data": self.rows[index % 150:][:5]})
            self.statuses.append(status)
            if status != 200:
                self.failures.append(answer)
            index += 5


def test_a_replica_whose_executor_is_killed_is_replaced_and_requests_keep_being_answered(
        tmp_path: Path, batch_reference: Any) -> None:
    columns, rows, _expected = batch_reference
    job = spread_job(tmp_path / "job")
    with Served(job, tmp_path / "state") as served:
        controller = served.controller
        victim = next(r for r in controller.ready("linear"))
        assert victim.pid, "TASK_RUNNING carries the executor's pid"
        with Client(served.url, columns, rows) as client:
            wait_for(lambda: len(client.statuses) >= 5)
            os.kill(victim.pid, signal.SIGKILL)
            wait_for(lambda: victim.task_id not in controller.replicas)
            wait_for(lambda: controller.all_ready() and victim.task_id not in {r.task_id for r in
                                                                              controller.ready("linear")})
            answered = len(client.statuses)
            wait_for(lambda: len(client.statuses) >= answered + 5)
        assert client.failures == [], client.failures[:3]
        assert controller.replaced >= 2  # the executor held a replica of each member
        assert len(controller.ready("linear")) == 2 and len(controller.ready("logistic")) == 2


@pytest.mark.faults
def test_replicas_follow_the_load_up_and_back_down(tmp_path: Path, batch_reference: Any) -> None:
    columns, rows, _expected = batch_reference
    job = spread_job(tmp_path / "job", serve="target_p99_ms = 0.001\nscale_down_delay_s = 1\nmax_wait_ms = 0",
                     replicas="min_replicas = 1\nmax_replicas = 2")
    with Served(job, tmp_path / "state") as served:
        controller = served.controller
        assert len(controller.ready("linear")) == 1
        with Client(served.url, columns, rows, threads=4) as client:
            wait_for(lambda: len(controller.ready("linear")) == 2 and len(controller.ready("logistic")) == 2)
        assert client.failures == []
        # The load is gone: after scale_down_delay_s, back to one replica each (drained, then killed).
        wait_for(lambda: len(controller.ready("linear")) == 1 and len(controller.ready("logistic")) == 1
                 and len(controller.replicas) == 2)
        assert predict(served.url, columns, rows[:3])


def test_a_changed_model_rolls_and_serve_fields_apply_live_without_a_failed_request(
        tmp_path: Path, batch_reference: Any) -> None:
    """One reload rolls a changed model and applies changed [serve] fields live; reloads that change
    what cannot change while serving are refused whole, and the old configuration keeps serving."""
    columns, rows, _expected = batch_reference
    job = serve_job(tmp_path / "job", serve="max_batch_rows = 64",
                    models={"linear": "min_replicas = 1\nmax_replicas = 2"})
    with Served(job, tmp_path / "state") as served:
        controller, gateway = served.controller, served.runner.gateway
        [old] = controller.ready("linear")
        catalog = controller.catalog
        old_url = catalog.model_urls["linear"]
        before = predict(served.url, columns, rows[:5])
        # A new linear model (fitted on the squared target: other coefficients), swapped in the job file.
        data = load_breast_cancer()
        path = job.parent / "linear-v2.joblib"
        joblib.dump(LinearRegression().fit(data.data, data.target * 0.5), path)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        text = job.read_text().replace('path = "linear.joblib"', 'path = "linear-v2.joblib"')
        # ... and new batching, target, shedding, hedging and scaling settings.
        text = text.replace("scale_interval_s = 0.2\nmax_batch_rows = 64",
                            "scale_interval_s = 0.5\nmax_batch_rows = 16\ntarget_p99_ms = 250\nmax_queue = 50\n"
                            "queue_timeout_ms = 2000\nhedge = false\n"
                            "scale_down_delay_s = 7")
        job.write_text(text.replace(load_job(job).model("linear").sha256, sha))
        with Client(served.url, columns, rows) as client:
            wait_for(lambda: len(client.statuses) >= 5)
            served.runner.reload_requested.set()
            wait_for(lambda: {r.sha256 for r in controller.ready("linear")} == {sha}
                     and old.task_id not in controller.replicas)
            # Nothing left behind: the replaced file's kept copy goes once no replica runs it, and
            # the artifact server stops serving it; the current files stay.
            wait_for(lambda: not (catalog.models_dir / f"{old.sha256}.joblib").exists())
            assert {p.name for p in catalog.models_dir.iterdir()} == {
                f"{m.sha256}.{m.format}" for m in load_job(job).models}
            with pytest.raises(urllib.error.HTTPError) as gone:
                urllib.request.urlopen(old_url, timeout=5)
            assert gone.value.code == 404
            answered = len(client.statuses)
            wait_for(lambda: len(client.statuses) >= answered + 5)
            options = gateway.options
            assert (options.max_batch_rows, options.max_queue, options.queue_timeout_ms, options.hedge) == (
                16, 50, 2000.0, False)
            assert {b.max_batch_rows for b in gateway.batchers.values()} == {16}
            assert served.runner.serve_spec.target_p99_ms == 250 and served.runner.serve_spec.scale_down_delay_s == 7
            assert controller.scale_interval == 0.5
            # Refused whole: a new address (with a new target beside it), a bad value, new prices.
            good = job.read_text()
            for bad, why in ((good.replace('address = "127.0.0.1:0"', 'address = "127.0.0.1:1"')
                              .replace("target_p99_ms = 250", "target_p99_ms = 5"), "serve.address changed"),
                             (good.replace("max_queue = 50", "max_queue = -1"), "serve.max_queue must be at least 0"),
                             (good + "\n[pricing]\ndefault = 3.0\n", "[pricing] changed")):
                job.write_text(bad)
                refused = len([n for n in served.notes if "reload refused" in n])
                served.runner.reload_requested.set()
                wait_for(lambda n=refused: len([x for x in served.notes if "reload refused" in x]) > n)
                assert why in served.notes[-1]
                answered = len(client.statuses)
                wait_for(lambda n=answered: len(client.statuses) >= n + 5)
            assert gateway.options == options and served.runner.serve_spec.target_p99_ms == 250
        assert client.failures == [], client.failures[:3]
        after = predict(served.url, columns, rows[:5])
        assert after != before
        assert any("rolling linear" in note and "[serve] target_p99_ms 100.0 -> 250.0" in note
                   for note in served.notes), served.notes
        assert dataclasses.asdict(controller.targets["linear"])["sha256"] == sha


@pytest.mark.faults
def test_an_agent_lost_keeps_the_other_agents_replicas_answering_and_is_refilled_when_it_returns(
        tmp_path: Path, batch_reference: Any) -> None:
    import cluster_records

    columns, rows, _expected = batch_reference
    job = spread_job(tmp_path / "job")
    with Served(job, tmp_path / "state") as served:
        controller = served.controller
        [cluster] = cluster_records.started
        lost = {r.task_id for r in controller.replicas.values() if r.hostname == "agent-1"}
        assert len(lost) == 2  # one replica of each member
        with Client(served.url, columns, rows) as client:
            wait_for(lambda: len(client.statuses) >= 5)
            cluster.kill_agent("agent-1")
            wait_for(lambda: not lost & set(controller.replicas))
            answered = len(client.statuses)
            wait_for(lambda: len(client.statuses) >= answered + 5)  # agent-2's replicas answer meanwhile
            cluster.restart_agent("agent-1")
            wait_for(controller.all_ready)
        assert client.failures == [], client.failures[:3]
        assert {r.hostname for r in controller.replicas.values()} == {"agent-1", "agent-2"}
        assert controller.replaced >= 2
