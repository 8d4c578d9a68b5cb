"""Lower bounds on the agent cost of placing a given set of tasks.

* ``l2_bound``: Martello–Toth L2 for one dimension with identical bins.
* ``cost_lower_bound``: for identical agents, price × (max over resources of L2 minus free
  agents); otherwise the best of a fractional (LP) cover per resource and, when all priced
  agents cost the same, the fewest agents whose capacities cover each resource's demand.
Executor resources enter as one extra item per model that is loaded nowhere (a relaxation:
the executor may sit apart from the model's tasks).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linprog

from .problem import Problem

_TOL = 1e-9


def _ceil(x: float) -> int:
    return int(math.ceil(x - 1e-9 * max(1.0, abs(x))))


def l2_bound(weights: np.ndarray, capacity: float) -> int:
    """Martello–Toth L2 bound on the number of bins of size ``capacity``."""
    w = np.sort(np.asarray(weights, float)[np.asarray(weights) > 0])
    if len(w) == 0 or capacity <= 0:
        return 0 if len(w) == 0 else len(w)
    C = float(capacity)
    half = C / 2.0
    csum = np.concatenate(([0.0], np.cumsum(w)))
    n = len(w)
    ks = np.unique(np.concatenate(([0.0], w[w <= half + _TOL])))
    # index helpers on the sorted weights
    i_gt_ck = np.searchsorted(w, C - ks + _TOL, side="left")      # first w > C-K
    i_gt_half = np.searchsorted(w, half + _TOL, side="left")       # first w > C/2
    i_ge_k = np.searchsorted(w, ks - _TOL, side="left")            # first w >= K
    n1 = n - i_gt_ck
    lo2 = np.full_like(i_gt_ck, i_gt_half)
    n2 = np.maximum(i_gt_ck - lo2, 0)
    s2 = np.where(n2 > 0, csum[np.maximum(i_gt_ck, lo2)] - csum[lo2], 0.0)
    s3 = csum[i_gt_half] - csum[np.minimum(i_ge_k, i_gt_half)]
    extra = (s3 - (n2 * C - s2)) / C
    extra = np.ceil(np.maximum(extra, 0.0) - 1e-9)
    best = int((n1 + n2 + extra).max())
    return max(best, _ceil(w.sum() / C))


def _items(p: Problem, mask: np.ndarray) -> np.ndarray:
    """Demands of the tasks in ``mask`` plus one executor item per model loaded nowhere."""
    items = [p.demand[mask]]
    models = np.unique(p.model_of[mask])
    for m in models:
        if p.has_exec[m] and not p.loaded[:, m].any():
            items.append(p.exec_dem[m][None, :])
    return np.vstack(items) if items else np.zeros((0, p.R))


def cost_lower_bound(p: Problem, mask: np.ndarray | None = None) -> float:
    """Lower bound on the agent cost of any plan placing all tasks in ``mask``."""
    if mask is None:
        mask = np.ones(p.T, bool)
    if not mask.any() or p.A == 0:
        return 0.0
    items = _items(p, mask)
    total = items.sum(axis=0)
    price = p.price
    free = price <= 0
    best = 0.0
    # fractional cover per resource: cheapest capacity first
    for r in range(p.R):
        need = total[r] - p.cap[free, r].sum()
        if need <= _TOL:
            continue
        cap_r = p.cap[~free, r]
        pr = price[~free]
        ok = cap_r > 0
        if not ok.any():
            continue
        order = np.lexsort((-cap_r[ok], pr[ok] / cap_r[ok]))
        c, q = cap_r[ok][order], pr[ok][order]
        cum = np.cumsum(c)
        k = int(np.searchsorted(cum, need - _TOL))
        if k >= len(c):
            best = max(best, float(q.sum()))
            continue
        before = cum[k - 1] if k > 0 else 0.0
        best = max(best, float(q[:k].sum() + (need - before) / c[k] * q[k]))
    priced = ~free
    if priced.any() and not np.all(price[priced] == price[priced][0]):
        best = max(best, _lp_cover(p, total))
    if priced.any():
        p0 = price[priced][0]
        same_price = bool(np.all(price[priced] == p0))
        same_cap = bool(np.all(p.cap == p.cap[0]))
        if same_price and same_cap:
            l2 = max(l2_bound(items[:, r], p.cap[0, r]) for r in range(p.R))
            best = max(best, p0 * max(0, l2 - int(free.sum())))
        elif same_price:
            for r in range(p.R):
                need = total[r] - p.cap[free, r].sum()
                if need <= _TOL:
                    continue
                cum = np.cumsum(np.sort(p.cap[priced, r])[::-1])
                k = int(np.searchsorted(cum, need - _TOL)) + 1
                best = max(best, p0 * min(k, int(priced.sum())))
    return best


def effective_capacity(p: Problem) -> np.ndarray:
    """Per agent and resource, the largest load any plan can put there: the largest sum of
    task/executor sizes (any multiplicities) not above the capacity. Computed exactly by a
    reachability table when all sizes are multiples of 1/k (k in 1, 10, 100, 1000);
    otherwise the plain capacity."""
    eff = p.cap.copy()
    for r in range(p.R):
        sizes = np.unique(np.concatenate([p.demand[:, r], p.exec_dem[:, r]]))
        sizes = sizes[sizes > 0]
        if len(sizes) == 0 or len(sizes) > 64:
            continue
        for k in (1, 10, 100, 1000):
            scaled = sizes * k
            top = float(p.cap[:, r].max()) * k
            if np.allclose(scaled, np.round(scaled), atol=1e-9) and top <= 200_000:
                break
        else:
            continue
        units = np.round(scaled).astype(np.int64)
        top = int(np.floor(top + 1e-9))
        reach = np.zeros(top + 1, bool)
        reach[0] = True
        for u in units:  # unbounded multiplicities: one forward pass per size
            for start in range(u):
                seg = reach[start::u]
                np.logical_or.accumulate(seg, out=seg)
        best = np.maximum.accumulate(np.where(reach, np.arange(top + 1), 0))
        caps = np.floor(p.cap[:, r] * k + 1e-9).astype(np.int64)
        eff[:, r] = np.minimum(p.cap[:, r], best[np.clip(caps, 0, top)] / k)
    return eff


def _lp_cover(p: Problem, total: np.ndarray) -> float:
    """LP: min sum price z, sum effcap z >= total per resource, 0 <= z <= 1 (all resources)."""
    rows = [r for r in range(p.R) if total[r] > _TOL]
    if not rows or p.A > 20000:
        return 0.0
    if p.eff_cap is None:
        p.eff_cap = effective_capacity(p)
    eff_cap = p.eff_cap
    res = linprog(p.price, A_ub=-eff_cap[:, rows].T, b_ub=-total[rows], bounds=(0, 1), method="highs")
    if res.status != 0:
        return 0.0
    return max(0.0, float(res.fun) * (1 - 1e-9) - 1e-9)
