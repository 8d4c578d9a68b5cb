"""Journal benchmark: what the durable job journal costs per task, side by side with keeping the
same records in memory (what the scheduler does without a journal).

    .venv/bin/python bench/journal_bench.py [--tasks 2000] [--power-tasks 200] [--dir DIR]

Per task, as the scheduler will call it: ``record_launch`` (offer round), ``record_update``
(TASK_RUNNING), ``record_result`` (the result's ``.npy`` bytes, returning once durable) and
``record_update`` (TASK_FINISHED).  Two result sizes: small (100 float64, 0.9 KB) and 64 KiB (the
largest result an executor sends inline).  Journals: ``durability="process"`` (the default: WAL,
synchronous=NORMAL, no fsync; survives kill -9 of the scheduler) and ``durability="power"``
(fsync of each result file and its directory, synchronous=FULL for result rows; survives power
loss); each with results kept in the database (``db``, the default for results up to 64 KiB) or
as files in ``results/`` (``files``, what larger results get).  Baselines: nothing at all (the
loop alone) and an in-memory dict holding the same records.  Prints wall ms per task, the
journal's overhead over the dict, the ratio, and this process's CPU ms per task (the figure
least disturbed by other work on the machine).  Target: under 1 ms of overhead per task with
the default durability.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from executor.protocol import array_to_npy  # noqa: E402
from framework.journal import DEFAULT_BLOB_LIMIT, Journal, compute_fingerprint  # noqa: E402
from framework.tasks import WorkItem  # noqa: E402

Runner = Callable[[list[str], bytes], None]


def run_nothing(keys: list[str], npy: bytes) -> None:
    for key in keys:
        task = key + ".a1"
        del task


def run_dict(keys: list[str], npy: bytes) -> None:
    """The same records kept in memory: attempts by task id, results by item key."""
    attempts: dict[str, dict[str, object]] = {}
    results: dict[str, bytes] = {}
    for key in keys:
        task = key + ".a1"
        attempts[task] = {"item": key, "agent": "agent-1", "state": "TASK_STAGING", "at": time.time()}
        attempts[task].update(state="TASK_RUNNING", at=time.time())
        results[key] = npy
        attempts[task].update(state="TASK_FINISHED", at=time.time())


def journal_runner(directory: Path, durability: str, blob_limit: int) -> Runner:
    job = directory / "job.toml"
    job.write_text('[job]\nname = "bench"\n')
    fingerprint = compute_fingerprint(job, {"data": job})

    def run(keys: list[str], npy: bytes) -> None:
        state = Path(tempfile.mkdtemp(prefix="state-", dir=directory))
        journal = Journal.open(state, fingerprint, durability=durability,  # type: ignore[arg-type]
                               blob_limit=blob_limit)
        journal.add_items([WorkItem(k, "m", i) for i, k in enumerate(keys)])  # once per job, not per task
        try:
            started, cpu_started = time.perf_counter(), time.process_time()
            for key in keys:
                task = key + ".a1"
                journal.record_launch(key, task, "agent-1")
                journal.record_update(task, "TASK_RUNNING")
                journal.record_result(key, task, npy)
                journal.record_update(task, "TASK_FINISHED")
            run.elapsed = time.perf_counter() - started  # type: ignore[attr-defined]
            run.cpu = time.process_time() - cpu_started  # type: ignore[attr-defined]
        finally:
            journal.close()
            shutil.rmtree(state)

    return run


def per_task_ms(runner: Runner, tasks: int, npy: bytes, repeats: int) -> tuple[float, float]:
    """Medians over ``repeats`` of the wall time and the CPU time (this process's) per task, in ms.
    CPU time is the figure least disturbed by other work on the machine."""
    keys = [f"m.s{i:05d}" for i in range(tasks)]
    walls, cpus = [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        runner(keys, npy)
        walls.append((getattr(runner, "elapsed", None) or (time.perf_counter() - started)) / tasks * 1e3)
        cpus.append((getattr(runner, "cpu", None) or (time.process_time() - cpu_started)) / tasks * 1e3)
    return statistics.median(walls), statistics.median(cpus)


def machine() -> str:
    cpu = platform.processor() or "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cpus, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per run with the default durability")
    parser.add_argument("--power-tasks", type=int, default=200, help="tasks per run with durability=power")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the journals go (default: a temporary "
                        "directory under the current directory, i.e. the disk a job's state would use)")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix=".journal-bench-", dir=args.dir or Path.cwd()))
    try:
        print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}; journals in {base}")
        sizes = {"small (0.9 KB)": array_to_npy(np.arange(100, dtype=np.float64)),
                 "64 KiB": array_to_npy(np.arange((64 * 1024 - 128) // 8, dtype=np.float64))}
        print(f"{'result':<16}{'variant':<24}{'tasks':>7}{'wall ms/task':>14}{'over dict':>11}{'ratio':>8}"
              f"{'cpu ms/task':>13}")
        for label, npy in sizes.items():
            nothing = per_task_ms(run_nothing, args.tasks, npy, args.repeats)
            in_memory = per_task_ms(run_dict, args.tasks, npy, args.repeats)
            rows = [("nothing", args.tasks, nothing), ("in-memory dict", args.tasks, in_memory)]
            for durability, tasks in (("process", args.tasks), ("power", args.power_tasks)):
                for storage, blob_limit in (("db", DEFAULT_BLOB_LIMIT), ("files", 0)):
                    cost = per_task_ms(journal_runner(base, durability, blob_limit), tasks, npy, args.repeats)
                    rows.append((f"journal {durability}/{storage}", tasks, cost))
            for name, tasks, (wall, cpu) in rows:
                print(f"{label:<16}{name:<24}{tasks:>7}{wall:>14.4f}{wall - in_memory[0]:>11.4f}"
                      f"{wall / in_memory[0]:>7.0f}x{cpu:>13.4f}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
