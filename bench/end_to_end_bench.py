"""End-to-end benchmark: one ensemble job through mesos-ensemble on the embedded cluster, side by
side with joblib.Parallel over the same members and shards in one process pool, and with plain
sequential scikit-learn.  Prints wall times and ratios.

    .venv/bin/python bench/end_to_end_bench.py [--rows 1000000] [--shard-rows 125000]

Members: a random forest, a gradient-boosting model, a logistic regression and an extra-trees
model (compute-heavy ones included), trained on a small labelled sample of a generated
classification problem, then asked for predict_proba on ``--rows`` generated rows.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import make_classification
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import dump_members, model_entry, predict_shard, soft_vote  # noqa: E402

from framework.job import JobRunner  # noqa: E402
from framework.jobspec import load_job  # noqa: E402


def make_members(x: np.ndarray, y: np.ndarray) -> dict[str, object]:
    return {
        "forest": RandomForestClassifier(n_estimators=60, max_depth=12, random_state=0, n_jobs=1).fit(x, y),
        "boosting": HistGradientBoostingClassifier(max_iter=150, random_state=0).fit(x, y),
        "logistic": LogisticRegression(max_iter=2000).fit(x, y),
        "extra": ExtraTreesClassifier(n_estimators=60, max_depth=12, random_state=0, n_jobs=1).fit(x, y),
    }


def job_file(directory: Path, members: dict[str, Path], data: Path, shard_rows: int, cpus: float,
             executors: str) -> Path:
    lines = ["[job]", 'name = "bench"', 'integration = "soft_vote"', 'output = "out.npy"', "",
             "[data]", f'path = "{data.name}"', f"rows_per_shard = {shard_rows}", ""]
    for name, path in members.items():
        lines += model_entry(name, path, cpus, 512, "executor_cpus = 0.05")
    lines += ["[framework]", f'executors = "{executors}"', ""]
    lines += ["[local_cluster]", f"agents = [{{ hostname = \"bench-agent\", cpus = {os.cpu_count()}, mem = 16384 }}]"]
    path = directory / "bench.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shard-rows", type=int, default=125_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--executors", choices=("shared", "per_model"), default="shared",
                        help="[framework] executors of the mesos-ensemble job")
    parser.add_argument("--verbose", action="store_true", help="print the job's progress with timestamps")
    args = parser.parse_args()

    x_all, y_all = make_classification(n_samples=args.rows + 20_000, n_features=args.features, n_informative=10,
                                       random_state=0)
    x_train, y_train, x = x_all[:20_000], y_all[:20_000], x_all[20_000:]
    members = make_members(x_train, y_train)
    shards = [x[i:i + args.shard_rows] for i in range(0, len(x), args.shard_rows)]
    tasks = len(members) * len(shards)
    print(f"{args.rows:,} rows x {args.features} features, "
          f"{len(members)} members x {len(shards)} shards = {tasks} tasks, "
          f"{args.workers} cores")

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        directory = Path(tmp)
        paths = dump_members(members, directory)
        np.save(directory / "data.npy", x)

        start = time.perf_counter()
        sequential = soft_vote([np.concatenate([predict_shard(m, s) for s in shards]) for m in members.values()])
        t_sequential = time.perf_counter() - start

        start = time.perf_counter()
        loaded = [joblib.load(p) for p in paths.values()]
        parts = joblib.Parallel(n_jobs=args.workers)(
            joblib.delayed(predict_shard)(m, s) for m in loaded for s in shards
        )
        per_member = [np.concatenate(parts[i * len(shards):(i + 1) * len(shards)]) for i in range(len(members))]
        parallel = soft_vote(per_member)
        t_joblib = time.perf_counter() - start

        # Each task takes one core (less the executors' small share), as each joblib worker does.
        executors = 1 if args.executors == "shared" else len(members)
        cpus_per_task = round(1.0 - 0.05 * executors / args.workers, 3)
        spec = load_job(job_file(directory, paths, directory / "data.npy", args.shard_rows, cpus=cpus_per_task,
                                  executors=args.executors))
        start = time.perf_counter()
        marks: list[tuple[float, str]] = []
        # As `run` does: with the job's journal (every launch, update and result made durable).
        outcome = JobRunner(spec, progress=lambda m: marks.append((time.perf_counter() - start, m)),
                            state_dir=directory / "job.state").run()
        t_mesos = time.perf_counter() - start
        if args.verbose:
            for at, message in marks:
                print(f"  {at:7.2f} s  {message}")
        ensemble = np.load(outcome.output)

    assert np.array_equal(parallel, sequential), "joblib and sequential disagree"
    labels = np.asarray(members["forest"].classes_)[sequential]  # type: ignore[attr-defined]
    identical = bool(np.array_equal(ensemble["prediction"], labels))
    print(f"{'run':<34}{'wall s':>9}{'ratio':>8}")
    print(f"{'sequential scikit-learn':<34}{t_sequential:>9.2f}{t_sequential / t_joblib:>8.2f}")
    print(f"{'joblib.Parallel (' + str(args.workers) + ' workers)':<34}{t_joblib:>9.2f}{1.0:>8.2f}")
    print(f"{'mesos-ensemble (local cluster)':<34}{t_mesos:>9.2f}{t_mesos / t_joblib:>8.2f}")
    print(f"mesos-ensemble / joblib = {t_mesos / t_joblib:.2f}x; / sequential = {t_mesos / t_sequential:.2f}x")
    first = outcome.time_to_first_running
    print(f"time from run to first TASK_RUNNING: {first:.2f} s" if first is not None else "first TASK_RUNNING: n/a")
    print(f"per-task overhead vs joblib: {(t_mesos - t_joblib) / tasks * 1000:.0f} ms over {tasks} tasks "
          f"({outcome.task_attempts} attempts, {outcome.agents_used} agent(s), "
          f"{outcome.executors_launched} executor(s), executors = {args.executors})")
    print(f"ensemble labels identical to in-process soft vote: {identical}")


if __name__ == "__main__":
    main()
