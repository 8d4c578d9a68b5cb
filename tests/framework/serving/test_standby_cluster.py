"""A standby replica end to end on the embedded cluster (real executor processes, the real
gateway): started, loaded and health-checked but out of the gateway's table; when the member
wants one more replica it is in the table within one decision, with no replica launched (no cold
start), and it answers."""

from __future__ import annotations

import time
from pathlib import Path

from deploy_helpers import Served, held_out_rows, metric, predict, serve_job, wait_for


def test_a_standby_replica_is_routed_at_once_when_one_more_is_wanted(tmp_path: Path) -> None:
    job = serve_job(tmp_path / "job", models={"linear": "min_replicas = 1\nmax_replicas = 2\nstandby_replicas = 1"})
    columns, rows = held_out_rows(job)
    with Served(job, tmp_path / "state") as served:
        controller, table = served.controller, served.controller.table
        wait_for(lambda: controller.counts()["linear"].get("standby") == 1)
        [standby] = [r for r in controller.ready("linear") if not r.routed]
        assert [r.replica_id for r in table.ready("linear")] != [standby.task_id]
        assert len(table.ready("linear")) == 1
        ready_gauge = '{member="linear",state="ready"}'
        wait_for(lambda: dict(metric(served.url, "mesos_ensemble_replicas")).get(ready_gauge) == 1.0, timeout=10)
        assert predict(served.url, columns, rows[:3])
        launched = controller.launched
        # One more wanted (here by a reload raising min_replicas; the autoscaler's scale-up takes the
        # same path): the standby replica is routed, nothing is launched (at its most: no new standby).
        job.write_text(job.read_text().replace("min_replicas = 1\nmax_replicas = 2",
                                               "min_replicas = 2\nmax_replicas = 2"))
        asked = time.monotonic()
        served.runner.reload_requested.set()
        wait_for(lambda: {r.replica_id for r in table.ready("linear")} >= {standby.task_id})
        took = time.monotonic() - asked
        assert len(table.ready("linear")) == 2 and controller.launched == launched, took
        wait_for(lambda: dict(metric(served.url, "mesos_ensemble_replicas")).get(ready_gauge) == 2.0, timeout=10)
        assert predict(served.url, columns, rows[:3])
