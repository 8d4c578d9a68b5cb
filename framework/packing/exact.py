"""Exact phase: the assignment MILP solved by HiGHS (scipy.optimize.milp).

Variables x[t,a] (task on agent), y[m,a] (executor of model m started on a; only for
models with executor resources, a per-agent limit or a spread), z[a] (agent used).
Objective: sum price[a] z[a] - W * sum x[t,a] with W above the total price, so the number
of placed tasks is maximised first (lexicographic policy). Identical agents get
z[a] >= z[a+1] symmetry breaking, and each group of identical agents is cut to the number
the incumbent's cost allows.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from .highs import milp_options
from .problem import Problem, State


def candidate_agents(p: Problem, incumbent: State) -> np.ndarray:
    """Agents worth modelling: all used ones plus, per identical group, as many as could pay."""
    ub = incumbent.cost()
    key = [(p.cap[a].tobytes(), float(p.price[a]), p.allowed[:, a].tobytes(),
            p.loaded[a].tobytes(), p.running[a].tobytes()) for a in range(p.A)]
    groups: dict[tuple, list[int]] = {}
    for a in range(p.A):
        groups.setdefault(key[a], []).append(a)
    keep = []
    for members in groups.values():
        price = p.price[members[0]]
        limit = p.T if price <= 0 else min(p.T, int(ub / price + 1e-9))
        used = [a for a in members if incumbent.ntask[a] > 0]
        rest = [a for a in members if incumbent.ntask[a] == 0]
        keep += (used + rest)[:max(limit, len(used))]
    return np.array(sorted(keep), dtype=np.int64)


def model_size(p: Problem, agents: np.ndarray) -> int:
    pairs = int(p.allowed[:, agents].sum())
    return pairs + len(agents) * (p.M + 1)


def solve_exact(p: Problem, incumbent: State, time_limit: float,
                node_limit: int | None = None) -> tuple[State | None, bool]:
    """Solve on the candidate agents. Returns (state or None, proven optimal)."""
    agents = candidate_agents(p, incumbent)
    if len(agents) == 0 or time_limit <= 0.003:
        return None, False
    A = len(agents)
    ti, ai = np.nonzero(p.allowed[:, agents])
    nx = len(ti)
    models = [m for m in range(p.M) if len(p.tasks_of[m]) and (
        p.has_exec[m] or p.limited[m] or p.spread[m] > 0)]
    ym = np.repeat(models, A).astype(np.int64)
    ya = np.tile(np.arange(A), len(models)).astype(np.int64)
    ny = len(ym)
    nz = A
    n = nx + ny + nz
    price = p.price[agents]
    # the incumbent places every task -> so does the optimum: force it (tighter, and HiGHS
    # then only searches complete placements); else maximise placed tasks first via -W
    complete = bool((incumbent.where >= 0).all())
    W = 0.0 if complete else float(price.sum()) + 1.0
    c = np.concatenate([np.full(nx, -W), np.zeros(ny), price])
    rows, cols, vals, lo, hi = [], [], [], [], []
    r = 0

    def add_row(cs: list[int], vs: list[float], lb: float, ub: float) -> None:
        nonlocal r
        rows.extend([r] * len(cs))
        cols.extend(cs)
        vals.extend(vs)
        lo.append(lb)
        hi.append(ub)
        r += 1

    by_task: list[list[int]] = [[] for _ in range(p.T)]
    by_agent: list[list[int]] = [[] for _ in range(A)]
    for k in range(nx):
        by_task[ti[k]].append(k)
        by_agent[ai[k]].append(k)
    for t in range(p.T):
        if by_task[t]:
            add_row(by_task[t], [1.0] * len(by_task[t]), 1.0 if complete else 0.0, 1.0)
    yidx = {(int(m), int(a)): nx + j for j, (m, a) in enumerate(zip(ym, ya))}
    for a in range(A):
        ag = agents[a]
        for res in range(p.R):
            cs = [k for k in by_agent[a] if p.demand[ti[k], res] != 0]
            vs = [float(p.demand[ti[k], res]) for k in cs]
            for m in models:
                if p.has_exec[m] and not p.loaded[ag, m] and p.exec_dem[m, res] != 0:
                    cs.append(yidx[(m, a)])
                    vs.append(float(p.exec_dem[m, res]))
            if cs:
                cs.append(nx + ny + a)
                vs.append(-float(p.cap_tol[ag, res]))
                add_row(cs, vs, -np.inf, 0.0)
        # every x needs z (through its model's y where modelled)
        for m in models:
            ks = [k for k in by_agent[a] if p.model_of[ti[k]] == m]
            if not ks:
                continue
            y = yidx[(m, a)]
            for k in ks:
                add_row([k, y], [1.0, -1.0], -np.inf, 0.0)
            lim = max(0, int(min(p.max_per[m] - p.running[ag, m], len(ks))))
            add_row(ks + [y], [1.0] * len(ks) + [-float(lim)], -np.inf, 0.0)
            add_row([y] + ks, [1.0] + [-1.0] * len(ks), -np.inf, 0.0)  # no idle executors
            add_row([y, nx + ny + a], [1.0, -1.0], -np.inf, 0.0)
        plain = [k for k in by_agent[a] if p.model_of[ti[k]] not in models]
        if plain:
            add_row(plain + [nx + ny + a], [1.0] * len(plain) + [-float(len(plain))], -np.inf, 0.0)
    for m in models:
        if p.spread[m] > 0:
            # y counts agents newly hosting m; need min(K, running + placed) distinct agents
            ks = [k for k in range(nx) if p.model_of[ti[k]] == m]
            fresh = [yidx[(m, a)] for a in range(A) if p.running[agents[a], m] == 0]
            base = int(p.run_agents[m])
            # need fresh >= min(K - base, placed); linear form fresh >= placed - (n_m - need)
            # is exact when all of m's tasks are placed; other solutions are re-checked below
            need = max(0, int(p.spread[m]) - base)
            add_row(fresh + ks, [1.0] * len(fresh) + [-1.0] * len(ks),
                    -float(max(0, len(p.tasks_of[m]) - need)), np.inf)
    # identical agents: use lower indices first
    for a in range(A - 1):
        g, h = agents[a], agents[a + 1]
        if (p.price[g] == p.price[h] and np.array_equal(p.cap[g], p.cap[h])
                and np.array_equal(p.allowed[:, g], p.allowed[:, h])
                and not p.loaded[g].any() and not p.loaded[h].any()
                and not p.running[g].any() and not p.running[h].any()):
            add_row([nx + ny + a, nx + ny + a + 1], [1.0, -1.0], 0.0, np.inf)
    A_mat = coo_array((vals, (rows, cols)), shape=(r, n)).tocsr()
    res = milp(c, integrality=np.ones(n), bounds=Bounds(0, 1),
               constraints=LinearConstraint(A_mat, lo, hi),
               options=milp_options(max(0.01, time_limit), node_limit, presolve=True, mip_rel_gap=0.0))
    if res.x is None:
        return None, False
    x = np.round(res.x).astype(np.int64)
    s = State(p)
    for chosen in np.flatnonzero(x[:nx]).tolist():
        t, a = int(ti[chosen]), int(agents[ai[chosen]])
        if s.where[t] < 0:
            s.add(t, a)
    ok = bool((s.load <= p.cap_tol).all()) and s.spread_ok()
    if not ok:
        return None, False
    return s, res.status == 0
