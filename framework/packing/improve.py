"""Improvement phase: empty one agent at a time through a pool-and-swap local search.

To save an agent v (or trade it for a cheaper closed agent w), v's tasks go to a *pool*;
the search then repeatedly (1) inserts pool tasks where they fit, best fit first, and
(2) applies the swap between pool and placed tasks (1-1, 1-2, 2-1) that lowers the pool's
total normalised size most, with a short tabu list and seeded random perturbations when
stuck. The pool empties -> the cheaper plan is kept; otherwise the attempt is rolled back.
"""

from __future__ import annotations

import time

import numpy as np

from .construct import construct
from .problem import Problem, State


class Budget:
    """Deadline plus an iteration cap, so slack budgets still give deterministic results.

    ``spend`` also refuses when the longest gap seen between two of its calls would cross
    the deadline: a step that cannot finish in time is not started."""

    def __init__(self, deadline: float, max_iterations: int) -> None:
        self.deadline = deadline
        self.left = max_iterations
        self.last = time.perf_counter()
        self.step = 0.0

    def spend(self, n: int = 1) -> bool:
        self.left -= n
        now = time.perf_counter()
        self.step = max(self.step, now - self.last)
        self.last = now
        return self.left > 0 and now + self.step < self.deadline


def eval_moves(state: State, a: np.ndarray, rem: list[np.ndarray], add: list[np.ndarray]) -> np.ndarray:
    """Feasibility of K candidate moves: on agent a[k] remove rem[*][k], add add[*][k]."""
    p = state.p
    new = state.load[a].copy()
    ok = np.ones(len(a), bool)
    for t in rem:
        new -= p.demand[t]
    for t in add:
        new += p.demand[t]
        ok &= p.allowed[t, a]
    if p.has_exec.any() or p.limited.any() or p.spread.any():
        slots, signs = rem + add, [-1] * len(rem) + [1] * len(add)
        models = [p.model_of[t] for t in slots]
        for j, mj in enumerate(models):
            first = np.ones(len(a), bool)
            delta = np.zeros(len(a), np.int64)
            for i, mi in enumerate(models):
                same = mi == mj
                if i < j:
                    first &= ~same
                delta += signs[i] * same
            c0 = state.cnt[a, mj]
            c1 = c0 + delta
            lo = p.loaded[a, mj]
            ex = ((c1 > 0) & ~lo).astype(float) - ((c0 > 0) & ~lo)
            new += (first * ex)[:, None] * p.exec_dem[mj]
            if signs[j] > 0:
                ok &= c1 + p.running[a, mj] <= p.max_per[mj]
    return ok & (new <= p.cap_tol[a]).all(axis=1)


def _best_fit(state: State, t: int, usable: np.ndarray) -> int:
    p = state.p
    mask = state.fits_mask(t) & usable
    if not mask.any():
        return -1
    cand = np.flatnonzero(mask)
    slack = ((p.cap[cand] - state.load[cand]) / p.scale).sum(axis=1)
    return int(cand[np.argmin(slack)])


def _pairs(placed: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = placed[np.argsort(where[placed], kind="stable")]
    w = where[order]
    firsts, seconds = [], []
    for k in range(1, len(order)):
        same = w[:-k] == w[k:]
        if not same.any():
            break
        firsts.append(order[:-k][same])
        seconds.append(order[k:][same])
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


def _sq_gain(p: Problem, la: np.ndarray, lb_: np.ndarray, ca: np.ndarray, cb: np.ndarray,
             d: np.ndarray) -> np.ndarray:
    """Change of sum over agents of squared relative loads when d moves from agent a to b."""
    na, nb = la - d, lb_ + d
    return (((na / ca) ** 2 - (la / ca) ** 2) + ((nb / cb) ** 2 - (lb_ / cb) ** 2)).sum(axis=-1)


def balance_move(state: State, usable: np.ndarray, tabu: np.ndarray, it: int,
                 rng: np.random.Generator, sample: int = 256) -> bool:
    """Best shift or swap between agents that concentrates load (raises the sum of squared
    relative loads), so that slack gathers where a pool task can go. True if one applied."""
    p = state.p
    placed = np.flatnonzero((state.where >= 0) & usable[np.maximum(state.where, 0)])
    placed = placed[tabu[placed] < it]
    if len(placed) < 2:
        return False
    if len(placed) > sample:
        placed = np.sort(rng.choice(placed, sample, replace=False))
    agents = np.flatnonzero(usable & (state.ntask > 0))
    capn = np.where(p.cap > 0, p.cap, 1.0)
    best: tuple[float, tuple[str, int, int] | None] = (1e-9, None)
    # shifts: task t from its agent to agent b
    ta = state.where[placed]
    T, B = np.meshgrid(placed, agents, indexing="ij")
    A_ = np.broadcast_to(ta[:, None], T.shape)
    t_f, b_f, a_f = T.ravel(), B.ravel(), A_.ravel()
    keep = b_f != a_f
    t_f, b_f, a_f = t_f[keep], b_f[keep], a_f[keep]
    if len(t_f):
        ok = eval_moves(state, b_f, [], [t_f]) & (state.ntask[a_f] > 1)
        g = _sq_gain(p, state.load[a_f], state.load[b_f], capn[a_f], capn[b_f], p.demand[t_f])
        g = np.where(ok, g, -np.inf)
        k = int(np.argmax(g))
        if g[k] > best[0]:
            best = (float(g[k]), ("shift", int(t_f[k]), int(b_f[k])))
    # swaps: t on a with u on b
    i, j = np.triu_indices(len(placed), 1)
    t_s, u_s = placed[i], placed[j]
    a_s, b_s = state.where[t_s], state.where[u_s]
    keep = (a_s != b_s) & (p.demand[t_s] != p.demand[u_s]).any(axis=1)
    t_s, u_s, a_s, b_s = t_s[keep], u_s[keep], a_s[keep], b_s[keep]
    if len(t_s):
        ok = eval_moves(state, a_s, [t_s], [u_s]) & eval_moves(state, b_s, [u_s], [t_s])
        d = p.demand[t_s] - p.demand[u_s]
        g = _sq_gain(p, state.load[a_s], state.load[b_s], capn[a_s], capn[b_s], d)
        g = np.where(ok, g, -np.inf)
        k = int(np.argmax(g))
        if g[k] > best[0]:
            best = (float(g[k]), ("swap", int(t_s[k]), int(u_s[k])))
    if best[1] is None:
        return False
    kind, x, y = best[1]
    if kind == "shift":
        state.remove(x)
        state.add(x, y)
        tabu[x] = it + 1
    else:
        ax, ay = state.where[x], state.where[y]
        state.remove(x)
        state.remove(y)
        state.add(x, int(ay))
        state.add(y, int(ax))
        tabu[x] = tabu[y] = it + 1
    return True


def pool_search(state: State, pool: list[int], usable: np.ndarray, budget: Budget,
                rng: np.random.Generator, steps: int, patience: int = 60) -> bool:
    """Try to place every pool task on ``usable`` agents; True on success (state updated).

    Tabu search on the pool's total normalised size: each step applies the best non-tabu
    swap (1-1, 1-2, 2-1, 2-2), even a worsening one; moved tasks are tabu for a few steps.
    Stops after ``patience`` steps without a new best pool size.
    """
    p = state.p
    size = p.size
    tabu = np.zeros(p.T, np.int64)
    best_w, since = np.inf, 0
    for it in range(1, steps + 1):
        if not budget.spend():
            return False
        pool.sort(key=lambda t: (-size[t], t))
        for t in list(pool):
            a = _best_fit(state, t, usable)
            if a >= 0:
                state.add(t, a)
                pool.remove(t)
        if not pool:
            return True
        w = float(size[pool].sum())
        if w < best_w - 1e-12:
            best_w, since = w, 0
        else:
            since += 1
            if since > patience:
                return False
        placed = np.flatnonzero((state.where >= 0) & usable[np.maximum(state.where, 0)])
        placed = placed[tabu[placed] < it]
        if len(placed) == 0:
            return False
        moves: list = []
        a1 = state.where[placed]
        head = pool[:8]
        for pt in head:
            ok = eval_moves(state, a1, [placed], [np.full(len(placed), pt)])
            ok &= (p.demand[placed] != p.demand[pt]).any(axis=1) | (p.model_of[placed] != p.model_of[pt])
            _collect(moves, ok, size[pt] - size[placed], (pt,), [placed], a1)
        t1, t2 = _pairs(placed, state.where)
        a2 = state.where[t1]
        pairs_in = [(head[i], head[j]) for i in range(len(head)) for j in range(i + 1, len(head))][:12]
        if len(t1):
            for pt in head:
                ok = eval_moves(state, a2, [t1, t2], [np.full(len(t1), pt)])
                _collect(moves, ok, size[pt] - size[t1] - size[t2], (pt,), [t1, t2], a2)
            for pi, pj in pairs_in:
                ok = eval_moves(state, a2, [t1, t2], [np.full(len(t1), pi), np.full(len(t1), pj)])
                _collect(moves, ok, size[pi] + size[pj] - size[t1] - size[t2], (pi, pj), [t1, t2], a2)
        for pi, pj in pairs_in:
            ok = eval_moves(state, a1, [placed], [np.full(len(placed), pi), np.full(len(placed), pj)])
            _collect(moves, ok, size[pi] + size[pj] - size[placed], (pi, pj), [placed], a1)
        improving = [m for m in moves if m[0] > 1e-12]
        if not improving and balance_move(state, usable, tabu, it, rng):
            continue
        if not moves:
            return False
        # best gain; ties: more tasks into the pool (smaller pieces), then a seeded coin
        noise = rng.random(len(moves))
        k = max(range(len(moves)), key=lambda i: (round(moves[i][0], 12), moves[i][1] - len(moves[i][2]), noise[i]))
        _, _, ins, outs, a = moves[k]
        for t in outs:
            state.remove(t)
            pool.append(t)
            tabu[t] = it + 2 + int(rng.integers(5))
        for t in ins:
            state.add(t, a)
            pool.remove(t)
            tabu[t] = it + 2 + int(rng.integers(5))
    return False


def _collect(moves: list, ok: np.ndarray, gain: np.ndarray, ins: tuple[int, ...],
             outs: list[np.ndarray], agents: np.ndarray) -> None:
    """Keep the best feasible candidate of this kind."""
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return
    k = idx[np.lexsort((idx, -gain[idx]))[0]]
    moves.append((float(gain[k]), len(outs), ins, tuple(int(o[k]) for o in outs), int(agents[k])))


def improve(state: State, lb: float, budget: Budget, rng: np.random.Generator,
            steps: int = 400, victims_per_round: int = 12, lns_rounds: int = 150) -> State:
    """Lower the plan's cost until lb or the budget: agent emptying, then ruin-and-recreate."""
    best = state
    failed: set[tuple[int, int]] = set()
    while best.cost() > lb + 1e-9 and budget.spend():
        before = best.cost()
        best = _empty_agents(best, lb, budget, rng, steps, victims_per_round, failed)
        if best.cost() <= lb + 1e-9 or not budget.spend():
            break
        best = ruin_recreate(best, lb, budget, rng, lns_rounds)
        if best.cost() >= before - 1e-12:
            break
    return best


def _empty_agents(best: State, lb: float, budget: Budget, rng: np.random.Generator, steps: int,
                  victims_per_round: int, failed: set) -> State:
    p = best.p
    while best.cost() > lb + 1e-9 and budget.spend():
        used = np.flatnonzero(best.ntask > 0)
        used = used[p.price[used] > 0]
        fill = (best.load[used] / p.scale).sum(axis=1) / np.maximum(p.agent_size[used], 1e-12)
        victims = used[np.lexsort((used, fill / p.price[used]))][:victims_per_round]
        improved = False
        for v in victims:
            for w in [-1] + _cheaper(best, int(v)):
                if (int(v), w) in failed:
                    continue
                trial = best.copy()
                pool = [int(t) for t in trial.tasks_on(int(v))]
                for t in pool:
                    trial.remove(t)
                usable = trial.ntask > 0
                if w >= 0:
                    usable[w] = True
                if pool_search(trial, pool, usable, budget, rng, steps) and trial.spread_ok() \
                        and trial.cost() < best.cost() - 1e-12:
                    best, improved = trial, True
                    failed.clear()
                    break
                failed.add((int(v), w))
                if not budget.spend():
                    return best
            if improved:
                break
        if not improved:
            break
    return best


def ruin_recreate(state: State, lb: float, budget: Budget, rng: np.random.Generator,
                  rounds: int) -> State:
    """LNS: empty 2-4 agents (a seeded pick biased to poor load per price), re-place their
    tasks with the construction (open agents with room first, then cheapest per unit);
    keep the result when every task is placed again and cost does not rise."""
    p = state.p
    best = cur = state
    for _ in range(rounds):
        if best.cost() <= lb + 1e-9 or not budget.spend():
            break
        used = np.flatnonzero(cur.ntask > 0)
        if len(used) < 2:
            break
        eff = (cur.load[used] / p.scale).sum(axis=1) / np.maximum(p.price[used], 1e-9)
        wts = 1.0 / (1.0 + eff / max(eff.mean(), 1e-12)) ** 3
        k = min(len(used), int(rng.integers(2, 5)))
        pick = rng.choice(used, size=k, replace=False, p=wts / wts.sum())
        trial = cur.copy()
        removed = np.flatnonzero(np.isin(trial.where, pick))
        for t in removed:
            trial.remove(int(t))
        if len(removed) == 0:
            continue
        small = p.demand[removed].min(axis=0)
        room = np.flatnonzero((trial.ntask > 0) & ((trial.load + small) <= p.cap_tol).all(axis=1))
        slack = ((p.cap[room] - trial.load[room]) / p.scale).sum(axis=1)
        construct(trial, removed, first=list(room[np.lexsort((room, slack))]))
        if (trial.where >= 0).all() and trial.spread_ok() and trial.cost() <= cur.cost() + 1e-12:
            cur = trial
            if cur.cost() < best.cost() - 1e-12:
                best = cur
    return best


def _cheaper(state: State, v: int, limit: int = 2) -> list[int]:
    """Closed agents cheaper than v, cheapest per unit capacity first."""
    p = state.p
    cand = np.flatnonzero((state.ntask == 0) & (p.price < p.price[v]))
    if len(cand) == 0:
        return []
    ratio = p.price[cand] / np.maximum(p.agent_size[cand], 1e-12)
    return [int(c) for c in cand[np.lexsort((cand, ratio))][:limit]]
