"""Fast construction: agent-by-agent filling with dot-product alignment.

Identical tasks (same model, demand and static constraints) form one *type*, so an agent
takes as many copies of a type as fit in one step. Agents are opened free ones first,
then by price per unit of still-needed capacity; each opened agent is filled with the type
whose normalised demand aligns best with the agent's normalised residual capacity.
"""

from __future__ import annotations

import numpy as np

from .problem import BIG, Problem, State


def opening_order(p: Problem, remaining: np.ndarray, closed: np.ndarray) -> np.ndarray:
    """Closed agents, free ones first, then by price per unit of useful capacity."""
    idx = np.flatnonzero(closed)
    rem = np.maximum(remaining, 0.0)
    # weight resources by pressure (remaining demand / total capacity): bottlenecks dominate
    pressure = rem / np.maximum(p.total_cap, 1e-12)
    weight = pressure / max(pressure.sum(), 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(rem > 0, np.minimum(p.cap[idx] / np.where(rem > 0, rem, 1.0), 1.0), 0.0)
    useful = share @ weight
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(useful > 0, p.price[idx] / useful, np.inf)
    return idx[np.lexsort((idx, -useful, ratio))]


def construct(state: State, tasks: np.ndarray | None = None, first: list[int] | None = None) -> None:
    """Place the given (else all unplaced) tasks, agent by agent; leftovers stay unplaced.

    ``first``: agents to fill before opening others (default: all agents already in use)."""
    p = state.p
    if tasks is None:
        tasks = np.flatnonzero(state.where < 0)
    if len(tasks) == 0 or p.A == 0:
        return
    tid, members = p.task_types()
    want = np.zeros(p.T, bool)
    want[tasks] = True
    queues = [list(m[want[m]][::-1]) for m in members]   # unplaced tasks per type, pop() = lowest index
    left = np.array([len(q) for q in queues], dtype=np.int64)
    rep = np.array([m[0] for m in members], dtype=np.int64)
    tdem = p.demand[rep]                               # (nt, R)
    pos = tdem > 0
    p.inv_demand = (np.where(pos, 1.0 / np.where(pos, tdem, 1.0), 0.0), np.where(pos, 0.0, float(BIG)))
    tmodel = p.model_of[rep]
    tallowed = p.allowed[rep]                          # (nt, A)
    texec = p.exec_dem[tmodel]
    remaining = (tdem * left[:, None]).sum(axis=0)
    # agents that are already open take more tasks first
    order = [int(a) for a in (np.flatnonzero(state.ntask > 0) if first is None else first)]
    closed = state.ntask == 0
    tried = np.zeros(p.A, bool)
    # per closed agent: how many types with tasks left fit there alone (skip agents with none)
    fits_empty = empty_fits(p, tdem, tmodel, tallowed, texec)
    nfit = fits_empty[left > 0].sum(axis=0)
    batch = max(1, p.A // 200)   # agents taken per opening-order ranking (re-ranked after)
    while left.any():
        if not order:
            cand = closed & ~tried & (nfit > 0)
            if not cand.any():
                break
            order = [int(x) for x in opening_order(p, remaining, cand)[:batch]]
        a = order.pop(0)
        if not (closed[a] or state.ntask[a] > 0) or tried[a] or (closed[a] and nfit[a] <= 0):
            continue
        tried[a] = True
        before = left > 0
        _fill(state, a, queues, left, tdem, tmodel, tallowed[:, a], texec)
        done = before & (left == 0)
        if done.any():
            nfit -= fits_empty[done].sum(axis=0)
        remaining = (tdem * left[:, None]).sum(axis=0)
        closed[a] = False


def empty_fits(p: Problem, tdem: np.ndarray, tmodel: np.ndarray, tallowed: np.ndarray,
               texec: np.ndarray) -> np.ndarray:
    """(types, A) bool: one task of the type (plus its executor) fits on the empty agent."""
    with_exec = np.ones_like(tallowed)
    for r in range(p.R):
        with_exec &= (tdem[:, r] + texec[:, r])[:, None] <= p.cap_tol[None, :, r]
    if p.loaded.any():  # a live executor: the task alone is enough
        alone = np.ones_like(tallowed)
        for r in range(p.R):
            alone &= tdem[:, r][:, None] <= p.cap_tol[None, :, r]
        with_exec |= alone & p.loaded[:, tmodel].T
    return tallowed & with_exec


def _fill(state: State, a: int, queues: list[list[int]], left: np.ndarray, tdem: np.ndarray,
          tmodel: np.ndarray, tallowed: np.ndarray, texec: np.ndarray) -> None:
    """Fill agent a: repeatedly add as many copies as fit of the type whose normalised
    demand (its executor included when not yet there) aligns best with the normalised
    residual; ties go to the lowest type index. Per-type data is gathered once per agent."""
    p = state.p
    idx = np.flatnonzero((left > 0) & tallowed)
    if len(idx) == 0:
        return
    cap = p.cap_tol[a]
    capn = np.where(p.cap[a] > 0, p.cap[a], 1.0)
    capn2 = capn * capn
    # (R, n) layouts: reductions over resources run along the fast axis
    d, m = tdem[idx].T.copy(), tmodel[idx]
    assert p.inv_demand is not None, "set by construct()"
    inv, big = p.inv_demand[0][idx].T.copy(), p.inv_demand[1][idx].T.copy()
    lft = left[idx].astype(float)
    execs = bool(p.has_exec.any())
    if execs:
        ex = texec[idx].T.copy()
        need = (state.cnt[a, m] == 0) & ~p.loaded[a, m]
    limits = bool(p.limited.any()) or bool(p.spread.any())
    while True:
        residual = (cap - state.load[a])[:, None]
        if execs:
            extra = ex * need
            base = residual - extra
            k = np.minimum((np.floor(base * inv + 1e-12) + big).min(axis=0), lft)
            k[(base < -1e-12).any(axis=0)] = 0
            dn = d + extra
        else:
            k = np.minimum((np.floor(residual * inv + 1e-12) + big).min(axis=0), lft)
            dn = d
        if limits:
            cm = state.cnt[a, m]
            run = p.running[a, m]
            k = np.minimum(k, p.max_per[m] - cm - run)
            if p.spread.any():
                lock = state.distinct[m] < p.spread[m]
                k = np.where(lock, np.where(cm + run == 0, np.minimum(k, 1), 0), k)
        ok = k >= 1
        if not ok.any():
            return
        score = np.where(ok, (np.maximum(residual[:, 0], 0.0) / capn2) @ dn, -np.inf)
        b = int(np.argmax(score))   # first maximum: lowest type index on ties
        j, kk = int(idx[b]), int(k[b])
        q = queues[j]
        for _ in range(kk):
            state.add(q.pop(), a)
        left[j] -= kk
        lft[b] -= kk
        if execs:
            need &= m != m[b]   # the model's executor is on the agent now
