"""How long a new replica takes from the moment it is wanted until it takes requests (issue 15).

    .venv/bin/python bench/replica_start_bench.py [--rounds 3] [--before gc|probe] [--keep DIR]

Deploys the serving benchmark's members (``bench/serve_bench.py``: a 100-tree forest, a histogram
gradient boosting model and a logistic regression) on the embedded cluster, in this process, with
two agents: ``serve-a`` (price 1) with room for two forest replicas beside the other members,
``serve-b`` (price 2) with nothing of ours.  The autoscaler is switched off; the script raises the
forest's desired count itself, as the autoscaler does on a load step:

1. forest 1 -> 2: the new replica goes to ``serve-a``, whose executor already runs the first one
   (**warm**: the model, scikit-learn and the probe's result are there already);
2. forest 2 -> 3: ``serve-a`` is full, the replica goes to ``serve-b`` (**cold**: a fresh executor
   process, scikit-learn imported, the model downloaded and loaded, its predict mode decided);

3. with ``standby_replicas = 1`` set on the forest (and its count back to 1): once its standby
   replica is ready, forest 1 -> 2 (**standby**: the standby replica goes into the gateway's table;
   nothing starts), then the standby switched off again;

then back to one forest replica, until ``serve-b``'s executor is shut down (idle), and again
(``--rounds``).  Each round runs twice, alternately: as the code stands (``after``), and with
one cold-start measure switched off from outside (``before``), so both see the same machine load.
``--before`` names which: ``gc`` (the default), the executor collecting garbage during its start
(``executor.startup``); ``probe``, no predict mode passed on from the first replica, so each
fresh executor probes.  (A replica of a model its executor knows no longer drawing 32 MB of
probe rows, 0.15 s, cannot be switched off.)  A fresh executor's ``executor_cpu`` is the CPU its
process had used (user and system, ``/proc``) once its replica was in the gateway's table.
Each ready replica's timeline is the controller's own log line ("replica ... ready
in ..."): waiting for an offer (from the moment the count went up to the launch), the start (launch
to TASK_RUNNING, with the executor's timing of its steps: ``executor_start``, ``load``,
``probe``, ``warm_up``, ``listen``) and the health check; plus, measured here, when the gateway's
table first lists it.  Prints the median of each step per kind.  The machine's load average is
printed too: these are wall times on shared cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import joblib  # noqa: E402
import numpy as np  # noqa: E402

import serve_bench  # noqa: E402
from benchlib import process_cpu  # noqa: E402
import framework.catalog  # noqa: E402
from executor.startup import COLLECT_DURING_START  # noqa: E402
from framework.jobspec import load_job  # noqa: E402
from framework.serving.service import ServeRunner  # noqa: E402

READY = re.compile(r"replica (?P<task>\S+) of (?P<member>\S+) ready at \S+ in (?P<total>[\d.]+) s: (?P<steps>.*)")
STEP = re.compile(r"(?P<name>[a-z_ ]+?) (?P<seconds>[\d.]+)")


class Forgetful(dict):  # type: ignore[type-arg]
    """The controller's ``predict_modes`` as before: nothing measured is passed on."""

    def setdefault(self, key: Any, default: Any = None) -> Any:
        return default


class ReadyLog(logging.Handler):
    """Collects the controller's "replica ... ready in ..." lines, parsed into steps."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.timelines: dict[str, dict[str, float]] = {}
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        match = READY.search(record.getMessage())
        if match is None:
            return
        steps = {"total": float(match["total"])}
        for step in STEP.finditer(match["steps"].replace("(", ", ").replace(")", "")):
            steps[step["name"].strip().replace(" ", "_")] = float(step["seconds"])
        with self.changed:
            self.timelines[match["task"]] = steps
            self.changed.notify_all()


class CollectingAtStart:
    """``framework.catalog.executor_info`` as before ``executor.startup``, while ``on``: the
    executors it describes collect garbage during their start."""

    def __init__(self) -> None:
        self.on = False
        self.original = framework.catalog.executor_info

    def __call__(self, launch: Any) -> Any:
        info = self.original(launch)
        if self.on:
            info["command"]["environment"]["variables"].append(
                {"name": COLLECT_DURING_START, "type": "VALUE", "value": "1"})
        return info


def write_job(directory: Path, rows: int) -> Path:
    """serve_bench's job, with agents sized so that ``serve-a`` takes two forest replicas."""
    x, y = serve_bench.make_classification(n_samples=rows + 500, n_features=serve_bench.FEATURES, n_informative=10,
                                           random_state=0)
    cache = directory / f"members-{rows}.joblib"
    if cache.exists():
        members = joblib.load(cache)  # this script's own earlier output (--keep)
    else:
        members = serve_bench.make_members(x[:rows], y[:rows])
        joblib.dump(members, cache)
    paths = {}
    for name, model in members.items():
        paths[name] = directory / f"{name}.joblib"
        joblib.dump(model, paths[name])
    columns = [f"f{i:02d}" for i in range(serve_bench.FEATURES)]
    data = directory / "data.csv"
    np.savetxt(data, np.column_stack([x[rows:], y[rows:]]), delimiter=",", header=",".join(columns + ["target"]),
               comments="", fmt=["%.17g"] * serve_bench.FEATURES + ["%d"])
    job = serve_bench.write_job(directory, paths, data, "127.0.0.1:0", 2, 2, 100.0, 600.0)
    text = job.read_text()
    # serve-a: the first replicas (0.85 cpus) and a second forest replica (0.5); serve-b: the rest.
    # Ports away from the default range, which other embedded clusters on a shared machine use.
    base = 42000 + 100 * (os.getpid() % 200)
    ports = f'ports = "[{base}-{base + 99}]"'
    text = re.sub(r"agents = \[.*\]", f'agents = [{{ hostname = "serve-a", cpus = 1.4, mem = 8192, {ports} }}, '
                                      f'{{ hostname = "serve-b", cpus = 1.4, mem = 8192, {ports} }}]', text)
    job.write_text(text)
    return job


def scale(runner: ServeRunner, member: str, count: int) -> None:
    controller = runner.controller
    assert controller is not None
    with controller.lock:
        if count > controller.desired[member]:
            controller._wanted_at[member] = controller.clock()
        controller.desired[member] = count
    controller.poke()


def wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", choices=("gc", "probe"), default="gc",
                        help="what the before rows switch off (see above)")
    parser.add_argument("--keep", type=Path,
                        help="keep the job, models, state and executor sandboxes here (models reused)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ready_log = ReadyLog()
    controller_log = logging.getLogger("framework.serving.controller")
    controller_log.setLevel(logging.INFO)
    controller_log.addHandler(ready_log)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    loads = [os.getloadavg()[0]]
    with ExitStack() as stack:
        directory = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="replica-start-")))
        directory.mkdir(parents=True, exist_ok=True)
        job = write_job(directory, 5_000)
        up = threading.Event()
        spec = load_job(job)
        if args.keep:  # the executors' sandboxes too (their stderr has each step of the start)
            spec = dataclasses.replace(spec, local_cluster=dataclasses.replace(spec.local_cluster, keep_sandboxes=True))
        runner = ServeRunner(job, spec, directory / "state", work_dir=directory / "work" if args.keep else None,
                             on_ready=lambda _outcome: up.set())
        runner.history_interval = 3600.0
        failure: list[BaseException] = []

        def run() -> None:
            try:
                runner.run()
            except BaseException as error:  # shown below
                failure.append(error)
                up.set()
        thread = threading.Thread(target=run, name="serve", daemon=True)
        thread.start()
        stack.callback(thread.join, 60)
        stack.callback(runner.stop_requested.set)
        if not up.wait(180) or failure:
            raise RuntimeError(f"serve did not start: {failure}")
        controller = runner.controller
        assert controller is not None
        controller.autoscale = None  # this script sets the counts
        table = controller.table
        modes = controller.predict_modes

        collecting = CollectingAtStart()
        framework.catalog.executor_info = collecting  # type: ignore[assignment]
        stack.callback(setattr, framework.catalog, "executor_info", collecting.original)

        def variant(name: str) -> None:
            with controller.lock:
                controller.predict_modes = Forgetful() if name == "before" and args.before == "probe" else modes
                collecting.on = name == "before" and args.before == "gc"
        print(f"deployed: {controller.counts()}", flush=True)

        def step(count: int, name: str) -> None:
            before = {r.task_id for r in controller.replicas.values() if r.member == "forest"}
            wanted = time.monotonic()
            scale(runner, "forest", count)
            wait(lambda: len([r for r in table.ready("forest")]) >= count, 120, f"{count} forest replicas")
            in_table = time.monotonic() - wanted
            new = [r for r in controller.replicas.values() if r.member == "forest" and r.task_id not in before]
            cpu = {r.task_id: process_cpu(r.pid) for r in new}  # the executor's, now it serves
            with ready_log.changed:
                ready_log.changed.wait_for(lambda: all(r.task_id in ready_log.timelines for r in new), 10)
            for replica in new:
                timeline = dict(ready_log.timelines[replica.task_id], in_table=in_table)
                if cpu[replica.task_id] is not None and "executor_start" in timeline:  # a fresh executor's
                    timeline["executor_cpu"] = cpu[replica.task_id]
                where = controller.hostnames.get(replica.agent_id, replica.agent_id)
                kind = "cold" if "executor_start" in timeline else "warm"
                results.setdefault((name, kind), []).append(timeline)
                print(f"{name:6} {kind} forest replica on {where}: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in timeline.items()), flush=True)
                loads.append(os.getloadavg()[0])

        def standby(count: int) -> None:
            with controller.lock:
                controller.targets["forest"] = dataclasses.replace(controller.targets["forest"],
                                                                   standby_replicas=count)

        def standby_step() -> None:
            standby(1)
            scale(runner, "forest", 1)
            wait(lambda: controller.counts()["forest"].get("standby") == 1 and len(table.ready("forest")) == 1,
                 120, "the forest's standby replica")
            wanted = time.monotonic()
            scale(runner, "forest", 2)
            wait(lambda: len(table.ready("forest")) >= 2, 120, "2 forest replicas")
            in_table = time.monotonic() - wanted
            results.setdefault(("after", "standby"), []).append({"total": in_table, "in_table": in_table})
            print(f"after  standby forest replica: in_table {in_table:.3f}", flush=True)
            loads.append(os.getloadavg()[0])
            standby(0)

        for _round in range(args.rounds):
            for name in ("before", "after"):
                variant(name)
                step(2, name)
                step(3, name)
                if name == "after":
                    standby_step()
                scale(runner, "forest", 1)
                # back to one replica, and serve-b's executor shut down (idle), so the next is cold again
                wait(lambda: len([r for r in controller.replicas.values() if r.member == "forest"]) == 1
                     and not any(controller.hostnames.get(a) == "serve-b" for a, _ in controller.hosting), 60,
                     "the scale-down and serve-b's executor shut down")
    steps = ["offer", "start", "executor_start", "fetch", "load", "probe", "warm_up", "listen", "health_check",
             "total", "in_table", "executor_cpu"]
    print(f"\nmedian seconds per step (load average {min(loads):.2f}-{max(loads):.2f}):")
    print(f"{'':12} {'n':>2} " + " ".join(f"{s:>14}" for s in steps))
    order = {"standby": 0, "warm": 1, "cold": 2}
    for (name, kind), timelines in sorted(results.items(), key=lambda item: (order[item[0][1]], item[0][0])):
        cells = []
        for step_name in steps:
            values = [t[step_name] for t in timelines if step_name in t]
            cells.append(f"{statistics.median(values):14.2f}" if values else f"{'-':>14}")
        print(f"{name + ' ' + kind:12} {len(timelines):2} " + " ".join(cells))


if __name__ == "__main__":
    main()
