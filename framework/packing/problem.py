"""Array form of a packing instance and the mutable placement state used by all phases.

Any number of resource dimensions is supported (the public API uses four; the benchmark
feeds the vector sets with up to ten).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BIG = np.iinfo(np.int64).max // 4

TaskTypes = tuple[np.ndarray, list[np.ndarray]]
"""(type index per task, task indices of each type)."""


@dataclass
class Problem:
    demand: np.ndarray    # (T, R) per-task resources
    model_of: np.ndarray  # (T,) model index
    exec_dem: np.ndarray  # (M, R) executor resources, once per (agent, model)
    cap: np.ndarray       # (A, R) free capacity
    price: np.ndarray     # (A,) cost of using the agent (0 when already in use)
    loaded: np.ndarray    # (A, M) bool: live executor there, no executor resources needed
    running: np.ndarray   # (A, M) int: tasks of the model already running there
    allowed: np.ndarray   # (T, A) bool: static constraints (attributes, gpu) pass
    max_per: np.ndarray   # (M,) int: per-agent task limit (BIG if none)
    spread: np.ndarray    # (M,) int: agents the model must span (0 if none)

    def __post_init__(self) -> None:
        self.T: int = int(self.demand.shape[0])
        self.R: int = int(self.demand.shape[1])
        self.A: int = int(self.cap.shape[0])
        self.M: int = int(self.exec_dem.shape[0])
        self.tol: np.ndarray = np.abs(self.cap) * 1e-9 + 1e-9
        self.cap_tol: np.ndarray = self.cap + self.tol
        # scale for scalar sizes: mean positive capacity per resource
        pos = self.cap > 0
        npos = pos.sum(axis=0)
        scale = np.where(pos, self.cap, 0.0).sum(axis=0) / np.maximum(npos, 1)
        self.scale: np.ndarray = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        self.size: np.ndarray = (self.demand / self.scale).sum(axis=1)
        self.agent_size: np.ndarray = (self.cap / self.scale).sum(axis=1)
        self.run_agents: np.ndarray = (self.running > 0).sum(axis=0) if self.A else np.zeros(self.M, int)
        most_running = self.running.max(axis=0) if self.A else np.zeros(self.M, np.int64)
        self.limited: np.ndarray = self.max_per < self.T + most_running
        """(M,) bool: the model's per-agent limit can bind (the new tasks with those running on an
        agent can exceed it); the search checks the limits of these models only."""
        self.tasks_of: list[np.ndarray] = [np.flatnonzero(self.model_of == m) for m in range(self.M)]
        self.has_exec: np.ndarray = np.asarray((self.exec_dem > 0).any(axis=1))
        self.total_cap: np.ndarray = self.cap.sum(axis=0)
        self.types: TaskTypes | None = None  # filled lazily by task_types()
        self.inv_demand: tuple[np.ndarray, np.ndarray] | None = None
        """Per type: (1/demand or 0, BIG where demand is 0), filled by the construction."""
        self.eff_cap: np.ndarray | None = None  # filled lazily by bounds.effective_capacity

    def task_types(self) -> TaskTypes:
        """Type index per task and the tasks of each type (index order); computed once.

        Tasks of one type have the same model, demand and static constraints (``allowed`` row)."""
        if self.types is None:
            self.types = _task_types(self)
        return self.types

    @classmethod
    def simple(cls, demand: np.ndarray, cap: np.ndarray, price: np.ndarray | None = None) -> Problem:
        """A plain vector-packing instance: one model without executor, no constraints."""
        demand = np.asarray(demand, float).reshape(len(demand), -1)
        cap = np.asarray(cap, float).reshape(len(cap), -1)
        T, A = len(demand), len(cap)
        return cls(demand, np.zeros(T, int), np.zeros((1, demand.shape[1])), cap,
                   np.ones(A) if price is None else np.asarray(price, float),
                   np.zeros((A, 1), bool), np.zeros((A, 1), int), np.ones((T, A), bool),
                   np.array([BIG]), np.array([0]))


def _task_types(p: Problem) -> TaskTypes:
    keys: dict[tuple[int, bytes, int], int] = {}
    tid = np.empty(p.T, dtype=np.int64)
    arows = [hash(row.tobytes()) for row in np.packbits(p.allowed, axis=1)] if p.A else [0] * p.T
    for t in range(p.T):
        key = (int(p.model_of[t]), p.demand[t].tobytes(), arows[t])
        tid[t] = keys.setdefault(key, len(keys))
    members: list[list[int]] = [[] for _ in range(len(keys))]
    for t in range(p.T):
        members[tid[t]].append(t)
    return tid, [np.array(m, dtype=np.int64) for m in members]


class State:
    """Which agent each task is on, agent loads (executors included), per-model counts."""

    def __init__(self, p: Problem) -> None:
        self.p = p
        self.where = np.full(p.T, -1, dtype=np.int64)
        self.load = np.zeros((p.A, p.R))
        self.cnt = np.zeros((p.A, p.M), dtype=np.int64)
        self.ntask = np.zeros(p.A, dtype=np.int64)
        self.distinct = p.run_agents.astype(np.int64).copy()

    def copy(self) -> State:
        s = State.__new__(State)
        s.p = self.p
        s.where, s.load, s.cnt = self.where.copy(), self.load.copy(), self.cnt.copy()
        s.ntask, s.distinct = self.ntask.copy(), self.distinct.copy()
        return s

    # -- queries -----------------------------------------------------------------------
    def inc(self, t: int, a: int) -> np.ndarray:
        """Extra load of putting task t on agent a (its executor too if not there yet)."""
        p = self.p
        m = p.model_of[t]
        if self.cnt[a, m] == 0 and not p.loaded[a, m]:
            return p.demand[t] + p.exec_dem[m]
        return p.demand[t]

    def fits_mask(self, t: int) -> np.ndarray:
        """Bool (A,): agents where task t can be added now (capacity and all constraints)."""
        p = self.p
        m = p.model_of[t]
        cm = self.cnt[:, m]
        ok = p.allowed[t] & (cm + p.running[:, m] < p.max_per[m])
        if self.distinct[m] < p.spread[m]:
            ok &= (cm + p.running[:, m]) == 0
        if p.has_exec[m]:
            need = (cm == 0) & ~p.loaded[:, m]
            new = self.load + p.demand[t] + need[:, None] * p.exec_dem[m]
        else:
            new = self.load + p.demand[t]
        return ok & (new <= p.cap_tol).all(axis=1)

    def fits(self, t: int, a: int) -> bool:
        p = self.p
        m = p.model_of[t]
        c = self.cnt[a, m] + p.running[a, m]
        if not p.allowed[t, a] or c >= p.max_per[m]:
            return False
        if self.distinct[m] < p.spread[m] and c > 0:
            return False
        return bool((self.load[a] + self.inc(t, a) <= p.cap_tol[a]).all())

    def used(self) -> np.ndarray:
        return self.ntask > 0

    def cost(self) -> float:
        return float(self.p.price[self.ntask > 0].sum())

    def placed(self) -> int:
        return int((self.where >= 0).sum())

    # -- updates -----------------------------------------------------------------------
    def add(self, t: int, a: int) -> None:
        p = self.p
        m = p.model_of[t]
        self.load[a] += self.inc(t, a)
        if self.cnt[a, m] == 0 and p.running[a, m] == 0:
            self.distinct[m] += 1
        self.cnt[a, m] += 1
        self.ntask[a] += 1
        self.where[t] = a

    def remove(self, t: int) -> int:
        p = self.p
        a = int(self.where[t])
        m = p.model_of[t]
        self.cnt[a, m] -= 1
        self.ntask[a] -= 1
        self.load[a] -= self.inc(t, a)  # inc() now sees cnt==0 if it was the last one
        if self.cnt[a, m] == 0 and p.running[a, m] == 0:
            self.distinct[m] -= 1
        if self.ntask[a] == 0:
            self.load[a] = 0.0  # drop float residue
        self.where[t] = -1
        return a

    def spread_ok(self) -> bool:
        """Every model spans min(K, agents already running it + its placed tasks) agents."""
        p = self.p
        placed = np.bincount(p.model_of[self.where >= 0], minlength=p.M)
        need = np.minimum(p.spread, p.run_agents + placed)
        return bool((self.distinct >= need).all())

    def tasks_on(self, a: int) -> np.ndarray:
        return np.flatnonzero(self.where == a)
