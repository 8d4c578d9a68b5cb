"""Exact 1-D bin packing with identical bins: the arc-flow model (Valério de Carvalho).

Nodes are the loads 0..C a bin can reach; an arc (d, d + w_i) puts an item of type i into
a bin at load d; loss arcs lead every node to the sink C. A bin is a path 0 -> C, so an
integer flow of value z with at least b_i type-i arcs is a packing into z bins. Items are
taken in decreasing size order along a path, so a type-i arc only starts at loads reachable
with items of types 0..i (bounded by their demands): this keeps the graph small. The model
is solved with HiGHS (``scipy.optimize.milp``); its LP relaxation equals the Gilmore–Gomory
bound, so the MILP often closes at the root.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array

from .highs import milp_options

Graph = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Arc-flow graph: (tail, head, item type) per item arc."""


def integer_scale(weights: np.ndarray, capacity: float, max_cap: int) -> int | None:
    """Smallest k in (1, 10, 100, 1000) making weights and capacity integral and k*C <= max_cap."""
    for k in (1, 10, 100, 1000):
        vals = np.append(weights, capacity) * k
        if np.allclose(vals, np.round(vals), rtol=0, atol=1e-9) and capacity * k <= max_cap:
            return k
    return None


def build_graph(sizes: np.ndarray, demand: np.ndarray, cap: int,
                max_arcs: int) -> Graph | None:
    """Arcs (tail, head, type) of the reduced graph; types must be sorted by decreasing size.
    None when the graph would exceed ``max_arcs`` item arcs."""
    reach = np.zeros(cap + 1, bool)
    reach[0] = True
    tails, types = [], []
    count = 0
    for i, (w, b) in enumerate(zip(sizes.tolist(), demand.tolist())):
        # loads reachable with types 0..i (at most b copies of type i)
        cur = reach.copy()
        layer = reach
        for _ in range(int(b)):
            shifted = np.zeros_like(layer)
            shifted[w:] = layer[:-w] if w > 0 else layer
            new = shifted & ~cur
            if not new.any():
                break
            cur |= shifted
            layer = shifted
        starts = np.flatnonzero(cur[:cap - w + 1])
        # a type-i arc may start where the path so far used types <= i
        count += len(starts)
        if count > max_arcs:
            return None
        tails.append(starts)
        types.append(np.full(len(starts), i, dtype=np.int64))
        reach = cur
    tail = np.concatenate(tails) if tails else np.zeros(0, np.int64)
    typ = np.concatenate(types) if types else np.zeros(0, np.int64)
    head = tail + sizes[typ]
    return tail.astype(np.int64), head.astype(np.int64), typ


def solve_arcflow(sizes: np.ndarray, demand: np.ndarray, cap: int, upper: int, lower: int,
                  time_limit: float, graph: Graph | None,
                  node_limit: int | None = None) -> tuple[list[list[int]] | None, int, bool]:
    """Min bins for ``demand[i]`` items of integer size ``sizes[i]`` (decreasing) on the
    ``build_graph`` graph. Returns (bins as lists of type indices or None, lower bound,
    proven optimal). ``upper`` bounds the number of bins (an incumbent), ``lower`` is a
    known lower bound. HiGHS may overrun ``time_limit`` somewhat on large graphs."""
    if graph is None or time_limit <= 0.005:
        return None, lower, False
    tail, head, typ = graph
    nodes = np.unique(np.concatenate(([0, cap], tail, head)))
    pos = {int(v): k for k, v in enumerate(nodes)}
    na, nn = len(tail), len(nodes)
    # loss arcs: every node except the sink to the sink (node 0's is useless)
    loss_tail = nodes[(nodes != 0) & (nodes != cap)]
    nl = len(loss_tail)
    n = na + nl + 1                      # item arcs, loss arcs, z (flow out of the source)
    t_idx = np.array([pos[int(v)] for v in tail], np.int64)
    h_idx = np.array([pos[int(v)] for v in head], np.int64)
    l_idx = np.array([pos[int(v)] for v in loss_tail], np.int64)
    sink = pos[cap]
    # conservation rows for nodes other than 0 and sink: in - out = 0
    rows = np.concatenate([h_idx, t_idx, l_idx])
    cols = np.concatenate([np.arange(na), np.arange(na), na + np.arange(nl)])
    vals = np.concatenate([np.ones(na), -np.ones(na), -np.ones(nl)])
    # source row: out - z = 0 (node 0 is row pos 0)
    rows = np.append(rows, 0)
    cols = np.append(cols, n - 1)
    vals = np.append(vals, 1.0)  # node 0: -(out) + z = 0 -> in (none) - out + z = 0
    keep = rows != sink
    flow = csr_array((vals[keep], (rows[keep], cols[keep])), shape=(nn, n))
    flow = flow[np.flatnonzero(np.arange(nn) != sink)]
    dem = csr_array((np.ones(na), (typ, np.arange(na))), shape=(len(sizes), n))
    c = np.zeros(n)
    c[-1] = 1.0
    ub = np.full(n, np.inf)
    ub[-1] = upper
    ub[:na] = demand[typ]
    lb = np.zeros(n)
    lb[-1] = lower
    res = milp(c, integrality=np.ones(n), bounds=Bounds(lb, ub),
               constraints=[LinearConstraint(flow, 0.0, 0.0), LinearConstraint(dem, demand.astype(float), np.inf)],
               options=milp_options(max(0.01, time_limit), node_limit, mip_rel_gap=0.0))
    bound = lower
    if getattr(res, "mip_dual_bound", None) is not None and np.isfinite(res.mip_dual_bound):
        bound = max(lower, int(math.ceil(res.mip_dual_bound - 1e-6)))
    if res.x is None:
        return None, bound, False
    x = np.round(res.x).astype(np.int64)
    bins = _decompose(x[:na], tail, head, typ, demand, cap)
    proven = res.status == 0 or len(bins) <= bound
    return bins, max(bound, len(bins)) if proven else bound, proven


def _decompose(x: np.ndarray, tail: np.ndarray, head: np.ndarray, typ: np.ndarray,
               demand: np.ndarray, cap: int) -> list[list[int]]:
    """Split the integer flow into paths; drop items beyond the demand."""
    out: dict[int, list[int]] = {}
    for arc in np.flatnonzero(x).tolist():
        out.setdefault(int(tail[arc]), []).append(arc)
    left = x.copy()
    need = demand.astype(np.int64).copy()
    bins: list[list[int]] = []
    while True:
        d, path = 0, []
        while True:
            arcs = [k for k in out.get(d, ()) if left[k] > 0]
            if not arcs:
                break
            k = arcs[0]
            left[k] -= 1
            path.append(int(typ[k]))
            d = int(head[k])
        if not path:
            break
        items = []
        for i in path:
            if need[i] > 0:
                need[i] -= 1
                items.append(i)
        if items:
            bins.append(items)
    if need.any():  # flow did not decompose into full paths (should not happen)
        return []
    return bins
