"""IO-thread benchmark: how long pymesos' IO thread is blocked per callback while a round packs.

A real ``EnsembleScheduler`` with a recording fake driver gets one batch of offers from
``--agents`` agents (addict.Dicts, as pymesos delivers them) with ``--tasks`` tasks pending.  A
thread playing pymesos' IO thread calls ``resourceOffers`` and then, until the round has been
applied, keeps delivering status updates (for tasks of the round: unknown before the launch,
TASK_RUNNING after) and rescinds of unrelated offers, timing every callback.  Two modes:

* ``worker``: the scheduler as it runs in a job (the round is decided by the decision worker);
* ``in-callback``: the old behaviour, the round decided inside ``resourceOffers``
  (``rounds_in_callback=True``), so the IO thread is blocked for the whole round.

Prints, per mode and repeat, the round's wall time, the longest callback and the callbacks
handled during the round, then the ratio of the longest blocks.  Target: under 20 ms.  The
longest callback includes time the GIL and the OS kept the thread waiting, so the benchmark also
prints the longest wait for the scheduler's lock alone and a floor: the same loop next to a busy
thread that never takes the lock (on a loaded machine the floor alone can exceed the target).

    .venv/bin/python bench/io_thread_bench.py            # 2,000 agents, 10,000 tasks
    .venv/bin/python bench/io_thread_bench.py --agents 200 --tasks 1000 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from addict import Dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from framework import translator  # noqa: E402
from framework.packing import Agent, CostModel, PackingOptions, PriceTable, Resources, TaskDemand  # noqa: E402
from framework.rounds import OfferPolicy  # noqa: E402
from framework.scheduler import EnsembleScheduler  # noqa: E402
from framework.tasks import Tracker, WorkItem  # noqa: E402
from framework.translator import Message, PoolAllocator  # noqa: E402

MODELS = {"forest": Resources(cpus=1.0, mem=512.0), "linear": Resources(cpus=0.5, mem=256.0),
          "boost": Resources(cpus=2.0, mem=1024.0), "knn": Resources(cpus=1.0, mem=2048.0)}
SHARED = Resources(cpus=0.5, mem=512.0)


class BenchCatalog:
    """A ``WorkCatalog`` with the job's shape (shared executor, real TaskInfo/ExecutorInfo
    messages through the translator) without an artifact server behind it."""

    agent_reserve = SHARED

    def demand(self, item: WorkItem) -> TaskDemand:
        return TaskDemand(item.key, item.model, MODELS[item.model], Resources())

    def task_info(self, item: WorkItem, task_id: str, agent: Agent, allocator: PoolAllocator,
                  executor: Message) -> Message:
        payload = f'{{"task_id": "{task_id}", "model": "{item.model}", "shard": {item.shard}}}'.encode()
        return translator.task_info(task_id, f"{item.model} shard {item.shard}", agent.agent_id,
                                    allocator.take(MODELS[item.model]), executor, payload)

    def executor_info(self, key: str, agent: Agent, allocator: PoolAllocator, generation: int) -> Message:
        return translator.executor_info(translator.ExecutorLaunch(
            translator.executor_id(key, generation), "all models", "python3", "http://bench/executor.tar.gz", 8,
            tuple(allocator.take(SHARED))))

    def executor_key(self, model: str) -> str:
        return "ensemble"

    def executor_models(self, key: str) -> frozenset[str]:
        return frozenset(MODELS)

    def isolate(self, model: str) -> None:
        pass


@dataclass
class RecordingDriver:
    """Records what the scheduler sends (no master behind it)."""

    launches: int = 0
    tasks: int = 0
    declines: int = 0
    other: list[str] = field(default_factory=list)

    def launchTasks(self, offer_ids: Any, tasks: list[Any], filters: Any = None) -> None:  # noqa: N802
        self.launches += 1
        self.tasks += len(tasks)

    def declineOffer(self, offer_ids: Any, filters: Any = None) -> None:  # noqa: N802
        self.declines += 1

    def suppressOffers(self, roles: Any = ()) -> None:  # noqa: N802
        self.other.append("suppress")

    def reviveOffers(self, roles: Any = ()) -> None:  # noqa: N802
        self.other.append("revive")

    def killTask(self, task_id: Any) -> None:  # noqa: N802
        self.other.append("kill")

    def reconcileTasks(self, tasks: Any) -> None:  # noqa: N802
        self.other.append("reconcile")


def offers(agents: int) -> list[Dict]:
    """One offer per agent, of a few sizes (the packer sees a mixed cluster), some partly used."""
    sizes = [(4, 8192), (8, 16384), (16, 65536), (2, 4096), (3.5, 5000)]
    made = []
    for i in range(agents):
        cpus, mem = sizes[i % len(sizes)]
        made.append(Dict({
            "id": {"value": f"O{i}"}, "framework_id": {"value": "F1"}, "agent_id": {"value": f"agent-{i:05d}"},
            "hostname": f"agent-{i:05d}.bench",
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": float(cpus)}, "role": "*"},
                          {"name": "mem", "type": "SCALAR", "scalar": {"value": float(mem)}, "role": "*"},
                          {"name": "disk", "type": "SCALAR", "scalar": {"value": 10000.0}, "role": "*"}],
            "attributes": [{"name": "rack", "type": "TEXT", "text": {"value": f"r{i % 20}"}}],
        }))
    return made


class TimedLock:
    """The scheduler's lock, timing how long each thread waits to acquire it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.longest_wait: dict[str, float] = {}

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        begin = time.perf_counter()
        acquired = self._lock.acquire(blocking, timeout)
        name, waited = threading.current_thread().name, time.perf_counter() - begin
        self.longest_wait[name] = max(waited, self.longest_wait.get(name, 0.0))
        return acquired

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class Result:
    mode: str
    round_seconds: float
    longest_callback: float
    """The longest an IO-thread callback was late during the round: from when it was due (1 ms
    after the previous one) to when it returned, so time the thread could not even start it
    (the GIL held by another thread, a garbage collection, the OS) counts too."""
    longest_lock_wait: float
    """The longest the IO thread waited for the scheduler's lock."""
    callbacks: int
    launched: int


def run(mode: str, agents: int, tasks: int, budget: float) -> Result:
    items = [WorkItem(f"{model}.s{i:05d}", model, i) for i in range(tasks // len(MODELS)) for model in MODELS]
    scheduler = EnsembleScheduler(Tracker(items, max_retries=2), BenchCatalog(), PriceTable(), CostModel(),
                                  PackingOptions(time_budget_s=budget), OfferPolicy(),
                                  rounds_in_callback=(mode == "in-callback"))
    lock = TimedLock()
    scheduler.lock = lock  # type: ignore[assignment]
    driver = RecordingDriver()
    scheduler.registered(driver, Dict({"value": "F1"}), Dict({"hostname": "bench", "port": 5050}))
    batch = offers(agents)
    updates = [Dict({"task_id": {"value": f"{item.key}.a1"}, "state": "TASK_RUNNING", "agent_id": {"value": "x"},
                     "source": "SOURCE_EXECUTOR"}) for item in items[:2000]]
    durations: list[float] = []
    offered, round_done = threading.Event(), threading.Event()
    round_seconds = [0.0]

    def io_thread() -> None:
        """pymesos' IO thread: the offers, then updates and rescinds until the round is applied."""
        started = time.perf_counter()
        scheduler.resourceOffers(driver, batch)
        durations.append(time.perf_counter() - started)
        offered.set()
        n, due = 0, time.perf_counter()
        while not round_done.is_set():
            # An update is due 1 ms after the last one was handled; what counts is how late it is
            # handled: the callback's own time plus however long the thread could not even start it.
            if n % 10 == 9:
                scheduler.offerRescinded(driver, Dict({"value": f"unrelated-{n}"}))
            else:
                scheduler.statusUpdate(driver, updates[n % len(updates)])
            done = time.perf_counter()
            durations.append(done - due)
            n, due = n + 1, done + 0.001
            time.sleep(0.001)

    thread = threading.Thread(target=io_thread, name="pymesos-io")
    started = time.perf_counter()
    thread.start()
    offered.wait()
    scheduler.wait_idle(600)  # returns at once in-callback: the round was decided in the callback
    round_seconds[0] = time.perf_counter() - started
    round_done.set()
    thread.join()
    scheduler.close()
    assert not any(e.kind == "fatal" for e in list(scheduler.events.queue)), list(scheduler.events.queue)
    return Result(mode, round_seconds[0], max(durations), lock.longest_wait.get("pymesos-io", 0.0), len(durations),
                  driver.tasks)


def floor(seconds: float) -> float:
    """The same IO-thread loop for ``seconds`` next to a busy Python thread that never takes the
    scheduler's lock: the longest callback there is what the GIL and the machine's load cost,
    a floor no scheduler design goes below."""
    scheduler = EnsembleScheduler(Tracker([], max_retries=2), BenchCatalog(), PriceTable(), CostModel(),
                                  PackingOptions(), OfferPolicy())
    update = Dict({"task_id": {"value": "x.a1"}, "state": "TASK_RUNNING", "agent_id": {"value": "x"}})
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            sorted(range(20000), key=lambda i: -i)

    spinner = threading.Thread(target=busy)
    spinner.start()
    longest, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        due = time.perf_counter()
        time.sleep(0.001)
        due += 0.001
        scheduler.statusUpdate(RecordingDriver(), update)
        longest = max(longest, time.perf_counter() - due)
    stop.set()
    spinner.join()
    return longest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=PackingOptions().time_budget_s,
                        help="packing time budget in seconds (the job's packing_budget_ms / 1000)")
    args = parser.parse_args()
    print(f"{args.agents} agents' offers, {args.tasks} pending tasks, packing budget {args.budget * 1000:.0f} ms, "
          f"switch interval {sys.getswitchinterval() * 1000:.0f} ms")
    print(f"{'mode':<12}{'round s':>9}{'longest callback ms':>21}{'longest lock wait ms':>22}{'callbacks':>11}"
          f"{'launched':>10}")
    results: dict[str, list[Result]] = {"in-callback": [], "worker": []}
    for _ in range(args.repeats):
        for mode in results:
            result = run(mode, args.agents, args.tasks, args.budget)
            results[mode].append(result)
            print(f"{mode:<12}{result.round_seconds:>9.3f}{result.longest_callback * 1000:>21.1f}"
                  f"{result.longest_lock_wait * 1000:>22.1f}{result.callbacks:>11}{result.launched:>10}")
    old = statistics.median(r.longest_callback for r in results["in-callback"])
    new = statistics.median(r.longest_callback for r in results["worker"])
    worst = max(r.longest_callback for r in results["worker"])
    worst_lock = max(r.longest_lock_wait for r in results["worker"])
    busy_floor = floor(statistics.median(r.round_seconds for r in results["worker"]))
    print(f"floor (the IO thread next to a busy thread that never takes the lock): {busy_floor * 1000:.1f} ms; "
          f"worst wait of the IO thread for the scheduler's lock: {worst_lock * 1000:.1f} ms")
    print(f"median longest IO-thread block: in-callback {old * 1000:.1f} ms, worker {new * 1000:.1f} ms "
          f"(worst {worst * 1000:.1f} ms); ratio {old / new:.1f}x; target < 20 ms: "
          f"{'met' if worst < 0.020 else 'NOT met'}")


if __name__ == "__main__":
    main()
