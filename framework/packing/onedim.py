"""Special case: one resource, identical bins, no executors or constraints (1-D bin packing).

``as_1d`` detects the case on the array form; ``solve_1d`` then runs, within the budget:
FFD (kept as a floor, so the result is never worse than FFD), Minimum Bin Slack
(Gupta–Ho MBS': each bin holds its largest remaining item plus the subset of the rest that
leaves least slack, found by a node-capped depth-first search over item types), and, when
the bound is not met and the graph is small, the exact arc-flow model. The bound is the
best of Martello–Toth L2 and the arc-flow solver's dual bound.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from .arcflow import build_graph, integer_scale, solve_arcflow
from .bounds import l2_bound
from .improve import Budget, improve
from .problem import BIG, Problem, State

ARCFLOW_MAX_ARCS = 2500        # larger graphs rarely solve within a sub-second budget
MAX_GRAPH_CAP = 1_000_000      # no arc-flow graph for larger integer capacities
LNS_SHARE = 0.5                # share of the remaining time for the MBS' ruin-and-recreate,
LNS_MAX_S = 0.25               # but at most this long (slack budgets go to the pool search)
LNS_MAX_ROUNDS = 300            # cap (determinism when the budget is slack)
MAX_DEPTH = 100                # items per bin the MBS' subset search chooses (recursion depth)


@dataclass
class OneDim:
    sizes: np.ndarray    # (K,) integer sizes of the item types, decreasing
    counts: np.ndarray   # (K,) items per type
    members: list[np.ndarray]  # task indices per type
    cap: int             # integer bin capacity
    dim: int             # the resource used


def as_1d(p: Problem, max_cap: int = 10_000_000) -> OneDim | None:
    """The 1-D identical-bin view of ``p``, or None when it is not that special case."""
    if p.T == 0 or p.A == 0:
        return None
    nz = np.flatnonzero((p.demand != 0).any(axis=0))
    if len(nz) != 1 or p.has_exec.any() or (p.max_per < BIG).any() or p.spread.any():
        return None
    if p.loaded.any() or p.running.any() or not p.allowed.all():
        return None
    if not (np.all(p.cap == p.cap[0]) and np.all(p.price == p.price[0]) and p.price[0] > 0):
        return None
    r = int(nz[0])
    w, cap = p.demand[:, r], float(p.cap[0, r])
    if (w <= 0).any() or (w > cap + p.tol[0, r]).any():
        return None
    k = integer_scale(w, cap, max_cap)
    if k is None:
        return None
    wi = np.round(w * k).astype(np.int64)
    sizes, inverse = np.unique(-wi, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    return OneDim(-sizes, np.array([len(m) for m in members], np.int64), members,
                  int(np.floor(cap * k + 1e-9)), r)


def ffd_bins(d: OneDim) -> list[list[int]]:
    """First-fit decreasing on types (bins as lists of type indices)."""
    loads: list[int] = []
    bins: list[list[int]] = []
    for i, (w, c) in enumerate(zip(d.sizes.tolist(), d.counts.tolist())):
        for _ in range(c):
            for b, load in enumerate(loads):
                if load + w <= d.cap:
                    loads[b] += w
                    bins[b].append(i)
                    break
            else:
                loads.append(w)
                bins.append([i])
    return bins


def mbs_bins(d: OneDim, deadline: float, counts: np.ndarray | None = None,
             order: list[int] | None = None, node_cap: int = 3000) -> list[list[int]] | None:
    """MBS': per bin, the largest remaining item plus a least-slack subset (None on timeout).

    ``counts``: items to pack (default all); ``order``: the order in which the subset search
    tries the other types (default decreasing size)."""
    sizes = d.sizes.tolist()
    left = (d.counts if counts is None else counts).tolist()
    K = len(sizes)
    seq = list(range(K)) if order is None else order
    bins: list[list[int]] = []
    while True:
        first = next((i for i in range(K) if left[i] > 0), -1)
        if first < 0:
            return bins
        if time.perf_counter() > deadline:
            return None
        left[first] -= 1
        best, best_slack = _least_slack(sizes, left, seq, 0 if order is not None else first,
                                        d.cap - sizes[first], node_cap)
        for i in best:
            left[i] -= 1
        room = best_slack
        for i in range(K):  # top up greedily, largest first
            while left[i] > 0 and sizes[i] <= room:
                left[i] -= 1
                room -= sizes[i]
                best.append(i)
        bins.append([first] + best)


def _least_slack(sizes: list[int], left: list[int], seq: list[int], start: int, room: int,
                 node_cap: int) -> tuple[list[int], int]:
    """Depth-first search (at most ``node_cap`` nodes) for the item types, taken in ``seq``
    order from position ``start``, that fill ``room`` leaving least slack: (types, slack).
    ``left`` is restored on return."""
    best: list[int] = []
    best_slack = room
    path: list[int] = []
    nodes = 0

    def dfs(j: int, room: int) -> bool:
        nonlocal best, best_slack, nodes
        if room < best_slack:
            best, best_slack = path.copy(), room
            if room == 0:
                return True
        if len(path) >= MAX_DEPTH:   # many tiny items: the greedy top-up finishes
            return False
        for pos in range(j, len(sizes)):
            i = seq[pos]
            nodes += 1
            if nodes > node_cap:
                return True
            if left[i] > 0 and sizes[i] <= room:
                left[i] -= 1
                path.append(i)
                done = dfs(pos, room - sizes[i])
                path.pop()
                left[i] += 1
                if done:
                    return True
        return False

    dfs(start, room)
    return best, best_slack


def lns_mbs(d: OneDim, bins: list[list[int]], lower: int, rng: np.random.Generator,
            deadline: float, rounds: int) -> list[list[int]]:
    """Ruin and recreate: empty the two least-loaded bins and a few random ones, repack
    their items by MBS'. Kept when it needs fewer bins, or as many with a larger sum of
    squared loads (slack gathers in fewer bins, so a later round can empty one)."""
    sizes = d.sizes
    bins = [list(b) for b in bins]
    loads = np.array([int(sizes[b].sum()) for b in bins], np.int64)
    for _ in range(rounds):
        if len(bins) <= lower or time.perf_counter() > deadline:
            break
        low = np.argsort(loads, kind="stable")[:3]
        extra = rng.choice(len(bins), size=min(len(bins), int(rng.integers(3, 11))), replace=False)
        pick = np.unique(np.concatenate([low, extra]))
        counts = np.zeros(len(sizes), np.int64)
        for k in pick:
            np.add.at(counts, bins[k], 1)
        new = mbs_bins(d, deadline, counts, node_cap=500)
        if new is None:
            break
        new_loads = np.array([int(sizes[b].sum()) for b in new], np.int64)
        better = len(new) < len(pick) or (len(new) == len(pick) and
                                          (new_loads ** 2).sum() >= (loads[pick] ** 2).sum())
        if better:
            keep = np.ones(len(bins), bool)
            keep[pick] = False
            bins = [b for b, k in zip(bins, keep) if k] + new
            loads = np.concatenate([loads[keep], new_loads])
    return bins


def solve_1d(p: Problem, d: OneDim, deadline: float, rng: np.random.Generator,
             max_iterations: int, node_limit: int | None = None) -> tuple[State, float, bool] | None:
    """Best plan found by the 1-D phases before ``deadline``: (state, cost bound, proven).
    None when FFD needs more bins than there are agents (the general path handles that)."""
    price = float(p.price[0])
    w = d.sizes.repeat(d.counts).astype(float)
    lower = l2_bound(w, float(d.cap))
    best = ffd_bins(d)
    if len(best) > p.A:
        return None
    if len(best) > lower:
        mbs = mbs_bins(d, deadline)
        if mbs is not None and len(mbs) < len(best):
            best = mbs
    if len(best) > lower:
        now = time.perf_counter()
        # no deadline (math.inf): the round cap alone ends the LNS
        stop = deadline if math.isinf(deadline) else now + min(LNS_SHARE * (deadline - now), LNS_MAX_S)
        best = lns_mbs(d, best, lower, rng, stop, min(max_iterations, LNS_MAX_ROUNDS))
    state = to_state(p, d, best)
    small = len(best) > lower and d.cap <= MAX_GRAPH_CAP
    graph = build_graph(d.sizes, d.counts, d.cap, ARCFLOW_MAX_ARCS) if small else None
    if len(best) > lower:  # pool-and-swap search; leave half the time to the arc-flow model
        now = time.perf_counter()
        stop = now + 0.5 * (deadline - now) if graph is not None else deadline
        state = improve(state, price * lower, Budget(stop, max_iterations), rng)
    left = deadline - time.perf_counter()
    proven = state.cost() <= price * lower
    if graph is not None and not proven and left > 0.02:
        bins, bound, opt = solve_arcflow(d.sizes, d.counts, d.cap, int(round(state.cost() / price)),
                                         lower, 0.6 * left, graph, node_limit)
        lower = max(lower, bound)
        if bins and len(bins) * price < state.cost():
            state = to_state(p, d, bins)
        proven = opt or state.cost() <= price * lower
    return state, min(price * lower, state.cost()), proven


def to_state(p: Problem, d: OneDim, bins: list[list[int]]) -> State:
    """Bins (type indices) -> a State over the first ``len(bins)`` agents."""
    if len(bins) > p.A:
        raise ValueError("more bins than agents")
    s = State(p)
    pos = [0] * len(d.members)
    where = np.empty(p.T, np.int64)
    for a, items in enumerate(bins):
        for i in items:
            where[d.members[i][pos[i]]] = a
            pos[i] += 1
    s.where = where
    s.ntask = np.bincount(where, minlength=p.A).astype(np.int64)
    np.add.at(s.cnt, (where, p.model_of), 1)
    np.add.at(s.load, where, p.demand)
    s.distinct = (s.cnt > 0).sum(axis=0).astype(np.int64)
    return s
