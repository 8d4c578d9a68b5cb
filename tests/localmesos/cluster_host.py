"""A process hosting an embedded cluster with long-running executors, for the kill -9 test.

Usage: ``python cluster_host.py WORK_DIR``; prints ``READY`` once a command task and a pymesos
executor's task run, then waits to be killed."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from framework.localmesos import AgentSpec, LocalCluster  # noqa: E402
from localmesos_helpers import Scheduler, command_task, executor_task  # noqa: E402


def main(work_dir: Path) -> None:
    cluster = LocalCluster([AgentSpec(hostname="agent-1")], work_dir=work_dir, allocation_interval=0.1).start()
    sched = Scheduler(cluster.master_address, failover_timeout=3600)
    offer = sched.offers()[0]
    executor = executor_task("py-1", offer, "py-exec", f"{sys.executable} {HERE / 'pymesos_executor.py'}",
                             data=b"x")
    sched.launch(offer, [command_task("sleeper", offer, "sleep 300"), executor])
    running = set()
    while running != {"sleeper", "py-1"}:
        status = sched.update()
        if status["state"] in ("TASK_RUNNING", "TASK_FINISHED"):
            running.add(status["task_id"]["value"])
        sched.ack(status)
    print("READY", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
