"""The scaling run of issue 13: the mixed members of ``cores_bench.py`` (logistic regression,
random forest, histogram boosting, k-nearest neighbours, ``predict_proba``, soft-voted) on the
embedded cluster over 1 and 2 agents and a growing number of cpus per agent, side by side with
``joblib.Parallel(n_jobs=<the same total cores>)`` over the same members and shards, and the
physical limit (the members' summed single-thread compute over the total cores).  Prints the
machine it ran on, wall times, ratios and each run's speed-up over its own one-core run.

    .venv/bin/python bench/scaling_bench.py [--rows-per-core 100000] [--max-cores N]

Sized by the machine: the totals of cores are 1, 2, 4, ... up to its cores (and its core count
itself); each runs on one agent of that many cpus and, from 2 cores, on two agents of half as many;
the data is ``--rows-per-core`` x the machine's cores rows in 8 shards per core of the largest
run (every run computes the same shards), so a larger machine runs a larger job.  The job is
written as a user writes it (``cpus = 1`` per task, the default ``executor_cpus``).  joblib's
one-core run computes in this process (``n_jobs=1`` starts no worker), the job's starts its
executor: the one-core row shows that fixed start, the larger rows how each scales.  Both use one
BLAS/OpenMP thread per task (joblib's ``inner_max_num_threads=1``; the executors set
``OMP_NUM_THREADS=1``), so a run of n cores computes on n cores; neither is pinned to them, so
the framework's own threads (or joblib's parent) may use other idle cores of a larger machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
from joblib.externals.loky import get_reusable_executor
from sklearn.datasets import make_classification
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402  (bench/ is not a package)
import cores_bench  # noqa: E402
from framework.job import JobRunner  # noqa: E402  (cores_bench put the project on the path)
from framework.jobspec import load_job  # noqa: E402


def machine() -> str:
    """One line naming the machine: CPU model, cores usable here, memory, OS and Python."""
    model = "unknown CPU"
    memory = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    return (f"{model}, {len(os.sched_getaffinity(0))} cores usable ({os.cpu_count()} online){memory}; "
            f"{platform.system()} {platform.release()}; Python {platform.python_version()}")


def core_counts(cores: int) -> list[int]:
    """1, 2, 4, ... up to ``cores``, and ``cores`` itself."""
    counts, total = [], 1
    while total < cores:
        counts.append(total)
        total *= 2
    return counts + [cores]


@dataclass(frozen=True)
class Run:
    agents: int
    cores: int

    @property
    def label(self) -> str:
        per = self.cores / self.agents
        return f"{self.agents} agent{'s' if self.agents > 1 else ''} x {per:g} cpu{'s' if per != 1 else ''}"


def runs(cores: int) -> list[Run]:
    """One agent of each total, and two agents of half as many cpus from 2 cores."""
    return [Run(agents, total) for total in core_counts(cores) for agents in (1, 2) if agents == 1 or total >= 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows-per-core", type=int, default=100_000)
    parser.add_argument("--max-cores", type=int, default=len(os.sched_getaffinity(0)),
                        help="the largest total of cores (default: this machine's)")
    parser.add_argument("--features", type=int, default=20)
    args = parser.parse_args()
    cores = max(1, args.max_cores)
    rows = args.rows_per_core * cores
    shard_rows = max(1, rows // (8 * cores))
    print(f"machine: {machine()}")
    x_all, y_all = make_classification(n_samples=rows + 20_000, n_features=args.features, n_informative=10,
                                       random_state=0)
    x_train, y_train, x = x_all[:20_000], y_all[:20_000], x_all[20_000:]
    members = cores_bench.mixed_members(x_train, y_train)
    shards = [x[i:i + shard_rows] for i in range(0, len(x), shard_rows)]
    print(f"mixed members ({', '.join(members)}) over {rows:,} rows x {args.features} features, {len(shards)} "
          f"shards of {shard_rows:,} rows = {len(members) * len(shards)} tasks; load average "
          f"{os.getloadavg()[0]:.1f}")

    with tempfile.TemporaryDirectory(prefix="scaling-bench-") as tmp:
        directory = Path(tmp)
        paths = benchlib.dump_members(members, directory)
        np.save(directory / "data.npy", x)
        started = time.perf_counter()
        with threadpool_limits(1):
            sequential = benchlib.soft_vote(
                [np.concatenate([benchlib.predict_shard(m, s) for s in shards]) for m in members.values()])
        compute = time.perf_counter() - started
        labels = np.asarray(members[next(iter(members))].classes_)[sequential]
        print(f"single-thread compute {compute:.2f} s")

        header = (f"{'run':<22}{'cores':>6}{'joblib s':>10}{'mesos s':>9}{'/ joblib':>10}{'limit s':>9}"
                  f"{'/ limit':>9}{'joblib / limit':>16}{'speed-up':>10}{'joblib speed-up':>17}")
        rows_out = []
        first: dict[str, float] = {}
        joblib_at: dict[int, float] = {}
        for run in runs(cores):
            if run.cores not in joblib_at:
                get_reusable_executor().shutdown(wait=True)
                started = time.perf_counter()
                # One BLAS/OpenMP thread per worker (in this process for n_jobs=1), as the job's
                # executors run: else each of n workers takes cores // n threads and a "1-core"
                # joblib run would use every core of the machine.
                with joblib.parallel_config(backend="loky", inner_max_num_threads=1), threadpool_limits(1):
                    parallel = cores_bench.run_joblib(list(paths.values()), shards, run.cores, "1M")
                joblib_at[run.cores] = time.perf_counter() - started
                assert np.array_equal(parallel, sequential), "joblib and sequential disagree"
            state = directory / f"job-{run.agents}-{run.cores}"
            spec = load_job(cores_bench.job_file(directory, paths, shard_rows, run.cores, 1.0, None, "shared",
                                                 agents=run.agents))
            started = time.perf_counter()
            outcome = JobRunner(spec, progress=lambda message: None, state_dir=state / "job.state").run()
            seconds = time.perf_counter() - started
            identical = bool(np.array_equal(np.load(outcome.output)["prediction"], labels))
            assert identical, f"{run.label}: the job's labels differ from the in-process soft vote"
            t_joblib, limit = joblib_at[run.cores], compute / run.cores
            first.setdefault("mesos", seconds)
            first.setdefault("joblib", t_joblib)
            rows_out.append(f"{run.label:<22}{run.cores:>6}{t_joblib:>10.2f}{seconds:>9.2f}{seconds / t_joblib:>10.2f}"
                            f"{limit:>9.2f}{seconds / limit:>9.2f}{t_joblib / limit:>16.2f}"
                            f"{first['mesos'] / seconds:>10.2f}{first['joblib'] / t_joblib:>17.2f}")
            print(rows_out[-1] if len(rows_out) > 1 else header + "\n" + rows_out[-1], flush=True)
    print(f"labels identical to the in-process soft vote in every run; load average after "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
