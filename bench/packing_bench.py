"""Packing benchmark: our packer vs first-fit decreasing, side by side.

Sets: 1-D classic (BPPLIB subsets, proven optima), vector bin packing (Panigrahy and New
classes, known optima; opt=-1 instances are compared with the published lower bound and
counted separately), a generator of priced heterogeneous 4-resource instances with
executor sharing (optima certified by HiGHS where it proves them), and speed cases.

    .venv/bin/python bench/packing_bench.py --quick
    .venv/bin/python bench/packing_bench.py --budget 1.0 --out bench/RESULTS-packing.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from framework.packing import (Agent, PackingOptions, Resources, TaskDemand,  # noqa: E402
                               first_fit_decreasing, pack)
from framework.packing.baseline import ffd_state  # noqa: E402
from framework.packing.packer import solve  # noqa: E402
from framework.packing.problem import Problem  # noqa: E402

BPP_FAMILIES = [("Falkenauer", "Falkenauer_"), ("Scholl3", "HARD"), ("Schwerin1", "Schwerin1_"),
                ("Schwerin2", "Schwerin2_"), ("Waescher", "Waescher_"), ("Hard28", "Hard28_")]


def bpp_family(name: str) -> str:
    for fam, prefix in BPP_FAMILIES:
        if name.startswith(prefix):
            return fam
    return "Scholl1" if "C" in name.split("W")[0] else "Scholl2"


def load_bpp(data: Path) -> list[tuple[str, str, Problem, int]]:
    out = []
    for line in (data / "bounds.tsv").read_text().splitlines()[1:]:
        name, lb, ub = line.split("\t")
        vals = [int(x) for x in (data / "bpp" / f"{name}.txt").read_text().split()]
        n, cap, w = vals[0], vals[1], np.array(vals[2:2 + vals[0]], float)
        out.append((bpp_family(name), name, (w, float(cap), n), int(ub)))
    return out


def load_vector(data: Path, which: str) -> list:
    out = []
    for line in (data / "vector" / "optima.tsv").read_text().splitlines()[1:]:
        s, name, lb, opt = line.split("\t")
        if s != which:
            continue
        out.append((f"{which}:{name.split('_')[0]}", name, (data / "vector" / s / f"{name}.vbp"), int(opt), int(lb)))
    return out


def read_vbp(path: Path) -> tuple[np.ndarray, np.ndarray]:
    v = [int(x) for x in path.read_text().split()]
    d = v[0]
    cap = np.array(v[1:1 + d], float)
    m = v[1 + d]
    rows, pos = [], 2 + d
    for _ in range(m):
        s, q = v[pos:pos + d], v[pos + d]
        rows += [s] * q
        pos += d + 1
    return np.array(rows, float), cap


def uniform_problem(demand: np.ndarray, cap: np.ndarray, n_bins: int) -> Problem:
    return Problem.simple(demand, np.tile(cap, (n_bins, 1)))


def run_case(p: Problem, budget: float, seed: int = 0):
    t0 = time.perf_counter()
    st, lb, proven = solve(p, PackingOptions(time_budget_s=budget, seed=seed))
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ff = ffd_state(p)
    t_ffd = time.perf_counter() - t0
    assert (st.where >= 0).all() and (ff.where >= 0).all()
    assert (st.load <= p.cap_tol).all()
    return st.cost(), ff.cost(), t_ours, t_ffd, lb, proven


class Table:
    def __init__(self) -> None:
        self.rows = defaultdict(list)  # set -> [(ours, ffd, opt, t_ours, t_ffd, proven)]

    def add(self, key, ours, ffd, opt, t1, t2, proven):
        self.rows[key].append((ours, ffd, opt, t1, t2, proven))

    def render(self, title: str, ref: str = "opt") -> str:
        out = [f"### {title}", "",
               f"| set | n | ours = {ref} | FFD = {ref} | ours/{ref} mean | worst | FFD/{ref} mean | worst "
               "| ours worse than FFD | proven | ours ms median | max | FFD ms median |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        tot = []
        for key in sorted(self.rows):
            rs = self.rows[key]
            tot += rs
            out.append(self._line(key, rs))
        if len(self.rows) > 1:
            out.append(self._line("**all**", tot))
        return "\n".join(out) + "\n"

    @staticmethod
    def _line(key, rs):
        n = len(rs)
        ours = [r[0] / r[2] for r in rs]
        ffd = [r[1] / r[2] for r in rs]
        return (f"| {key} | {n} | {100 * sum(abs(r[0] - r[2]) < 1e-6 * max(1, r[2]) for r in rs) / n:.1f}% "
                f"| {100 * sum(abs(r[1] - r[2]) < 1e-6 * max(1, r[2]) for r in rs) / n:.1f}% "
                f"| {statistics.fmean(ours):.4f} | {max(ours):.4f} | {statistics.fmean(ffd):.4f} "
                f"| {max(ffd):.4f} | {sum(r[0] > r[1] + 1e-9 for r in rs)} | {sum(r[5] for r in rs)} "
                f"| {1000 * statistics.median(r[3] for r in rs):.1f} | {1000 * max(r[3] for r in rs):.1f} "
                f"| {1000 * statistics.median(r[4] for r in rs):.1f} |")


def subsample(items: list, limit: int | None, seed: int = 1) -> list:
    if not limit:
        return items
    by = defaultdict(list)
    for it in items:
        by[it[0]].append(it)
    out = []
    for key in sorted(by):
        group = by[key]
        idx = np.random.default_rng(seed).permutation(len(group))[:limit]
        out += [group[i] for i in sorted(idx)]
    return out


def bench_bpp(data: Path, limit, budget, log) -> str:
    table, excess = Table(), []
    for fam, name, (w, cap, n), opt in subsample(load_bpp(data), limit):
        ub = int(np.ceil(w.sum() / cap)) * 2 + 2
        p = uniform_problem(w[:, None], np.array([cap]), min(n, ub))
        ours, ffd, t1, t2, lb, proven = run_case(p, budget)
        table.add(fam, ours, ffd, opt, t1, t2, proven)
        excess.append(ours - opt)
        if ours > ffd or ours > opt:
            log(f"  bpp {name}: ours {ours:.0f} ffd {ffd:.0f} opt {opt}")
    mean_excess = statistics.fmean(excess)
    return table.render("1-D classic (agents = bins, price 1)") + \
        f"\nmean excess over optimum: {mean_excess:.4f} bins\n"


def bench_vector(data: Path, which: str, limit, budget, log) -> str:
    known, unknown = Table(), Table()
    for key, _name, path, opt, lb in subsample(load_vector(data, which), limit):
        demand, cap = read_vbp(path)
        p = uniform_problem(demand, cap, len(demand))
        ours, ffd, t1, t2, mylb, proven = run_case(p, budget)
        if opt > 0:
            known.add(key, ours, ffd, opt, t1, t2, proven)
        else:
            unknown.add(key, ours, ffd, lb, t1, t2, proven)
    return known.render(f"Vector {which}: instances with known optimum") + "\n" + \
        unknown.render(f"Vector {which}: optimum unknown, ratios to the published lower bound", "lb")


# ---- priced heterogeneous generator --------------------------------------------------
AGENT_TYPES = [  # cpus, mem (GiB), disk (GiB), gpus, base price
    (4, 16, 100, 0, 1.0), (8, 32, 200, 0, 1.9), (16, 64, 400, 0, 3.6),
    (8, 64, 200, 0, 2.5), (16, 128, 400, 0, 4.8), (8, 32, 200, 1, 4.0),
]


def generate(n_tasks: int, n_agents: int, seed: int) -> tuple[list[TaskDemand], list[Agent]]:
    """Priced, heterogeneous agents (price jitter +-10%); models with 1-20 shards each and
    an executor holding the model (mem), so co-location saves memory; some gpu models."""
    rng = np.random.default_rng(seed)
    agents = []
    for i in range(n_agents):
        c, m, d, g, pr = AGENT_TYPES[int(rng.integers(len(AGENT_TYPES)))]
        used = rng.uniform(0, 0.3)
        agents.append(Agent(f"agent-{i:05d}", f"host-{i}", (f"offer-{i}",),
                            Resources(round(c * (1 - used), 2), round(m * (1 - used), 2), d, g),
                            {"zone": "ab"[i % 2]}, price=round(pr * rng.uniform(0.9, 1.1), 3)))
    tasks, t = [], 0
    mi = 0
    while t < n_tasks:
        shards = int(min(n_tasks - t, rng.integers(1, 21)))
        gpu = rng.random() < 0.05
        exec_mem = float(rng.choice([0.5, 1, 2, 4]))
        cpus, mem = float(rng.choice([0.25, 0.5, 1, 2])), float(rng.choice([0.5, 1, 2, 4]))
        for _ in range(shards):
            tasks.append(TaskDemand(f"task-{t:05d}", f"model-{mi}",
                                    Resources(cpus, mem, float(rng.choice([1, 2, 5])), 1.0 if gpu else 0.0),
                                    Resources(0.1, exec_mem, 1.0, 0.0)))
            t += 1
        mi += 1
    return tasks, agents


def bench_priced(sizes, seeds, budget, certify_budget, log) -> str:
    table, lbtable = Table(), Table()
    table2 = Table()
    for n_tasks, n_agents in sizes:
        for seed in seeds:
            tasks, agents = generate(n_tasks, n_agents, seed)
            t0 = time.perf_counter()
            plan = pack(tasks, agents, options=PackingOptions(time_budget_s=budget))
            t1 = time.perf_counter() - t0
            t0 = time.perf_counter()
            ffd = first_fit_decreasing(tasks, agents)
            t2 = time.perf_counter() - t0
            key = f"{n_tasks}x{n_agents}"
            if plan.unplaced or ffd.unplaced:
                log(f"  priced {key} seed {seed}: unplaced ours {len(plan.unplaced)} ffd {len(ffd.unplaced)}")
                continue
            cert = pack(tasks, agents, options=PackingOptions(time_budget_s=certify_budget,
                                                                exact_max_vars=200_000))
            if cert.proven_optimal:
                table.add(key, plan.cost, ffd.cost, cert.cost, t1, t2, plan.proven_optimal)
                t0 = time.perf_counter()
                slow = pack(tasks, agents, options=PackingOptions(time_budget_s=1.0))
                table2.add(key, slow.cost, ffd.cost, cert.cost, time.perf_counter() - t0, t2, slow.proven_optimal)
            else:
                lbtable.add(key, plan.cost, ffd.cost, max(plan.lower_bound, cert.lower_bound), t1, t2,
                            plan.proven_optimal)
    return table.render(f"Priced heterogeneous, budget {budget:g} s, optimum certified by HiGHS "
                        f"({certify_budget:g} s)") + "\n" + \
        table2.render("Same instances, budget 1 s") + "\n" + \
        lbtable.render("Priced heterogeneous, not certified: ratio to lower bound", "lb")


def bench_speed(cases, reps, budget, log) -> str:
    out = ["### Speed (full `pack` call incl. compile, reasons, plan; one core)", "",
           "| tasks x offers | budget s | runs | median ms | max ms | cost / lower bound (median) | FFD cost / lb |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for n_tasks, n_agents, b in cases:
        times, ratios, fr = [], [], []
        for seed in range(reps):
            tasks, agents = generate(n_tasks, n_agents, 100 + seed)
            t0 = time.perf_counter()
            plan = pack(tasks, agents, options=PackingOptions(time_budget_s=b))
            times.append(time.perf_counter() - t0)
            ratios.append(plan.cost / plan.lower_bound)
            fr.append(first_fit_decreasing(tasks, agents).cost / plan.lower_bound)
        out.append(f"| {n_tasks} x {n_agents} | {b:g} | {reps} | {1000 * statistics.median(times):.1f} "
                   f"| {1000 * max(times):.1f} | {statistics.median(ratios):.4f} | {statistics.median(fr):.4f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data" / "packing")
    ap.add_argument("--sets", default="bpp,panigrahy,new,priced,speed")
    ap.add_argument("--limit", type=int, default=None, help="instances per class/family")
    ap.add_argument("--budget", type=float, default=0.05, help="time budget per classic instance (s)")
    ap.add_argument("--quick", action="store_true", help="5 instances per class, small priced/speed runs")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown tables here")
    args = ap.parse_args(argv)
    sets = args.sets.split(",")
    limit = args.limit or (5 if args.quick else None)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    parts = [f"Command: `{' '.join(['python bench/packing_bench.py'] + (argv if argv is not None else sys.argv[1:]))}`",
             f"Classic-set budget per instance: {args.budget:g} s (FFD has no budget).", ""]
    data = args.data.resolve()
    for s in sets:
        t0 = time.perf_counter()
        if s == "bpp":
            parts.append(bench_bpp(data, limit, args.budget, log))
        elif s in ("panigrahy", "new"):
            parts.append(bench_vector(data, s, limit, args.budget, log))
        elif s == "priced":
            sizes = [(30, 12), (60, 20)]
            seeds = range(12 if not args.quick else 3)
            parts.append(bench_priced(sizes, seeds, 0.05, 10.0 if not args.quick else 5.0, log))
        elif s == "speed":
            # the speed targets use the scheduler's default budget; one slack row shows the trade
            default = PackingOptions().time_budget_s
            cases = [(1000, 200, default), (10000, 2000, default), (1000, 200, 1.0)]
            parts.append(bench_speed(cases, 3 if args.quick else 9, default, log))
        log(f"{s}: {time.perf_counter() - t0:.1f} s")
        print(parts[-1], flush=True)
    if args.out:
        args.out.write_text("# Packing benchmark results\n\n" + "\n".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
