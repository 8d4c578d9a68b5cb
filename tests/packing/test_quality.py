"""Known optima reached on a small fixed subset of the benchmark instances."""

from pathlib import Path

import numpy as np
import pytest

from framework.packing.baseline import ffd_state
from framework.packing.bounds import l2_bound
from framework.packing.packer import solve
from framework.packing.problem import Problem

from .packing_helpers import capped

# ../shared next to the checkout (main), or next to the worktrees' directory (/work/wt/<name>)
_CANDIDATES = [Path(__file__).resolve().parents[k] / "shared" / "data" / "packing" for k in (3, 4)]
DATA = next((c for c in _CANDIDATES if (c / "bounds.tsv").exists()), _CANDIDATES[0])
needs_data = pytest.mark.skipif(not (DATA / "bounds.tsv").exists(),
                                reason=f"benchmark data not found at {DATA} (../shared/data/packing)")


def _bpp(name):
    vals = [int(x) for x in (DATA / "bpp" / f"{name}.txt").read_text().split()]
    return np.array(vals[2:2 + vals[0]], float), float(vals[1])


def _vbp(set_, name):
    v = [int(x) for x in (DATA / "vector" / set_ / f"{name}.vbp").read_text().split()]
    d = v[0]
    cap = np.array(v[1:1 + d], float)
    rows = [v[2 + d + i * (d + 1): 2 + d + i * (d + 1) + d] for i in range(v[1 + d])]
    return np.array(rows, float), cap


def _opt_1d(name):
    for line in (DATA / "bounds.tsv").read_text().splitlines()[1:]:
        n, lb, ub = line.split("\t")
        if n == name:
            return int(ub)
    raise KeyError(name)


@needs_data
@pytest.mark.parametrize("name", ["Schwerin1_BPP9", "N2W3B1R3", "Waescher_TEST0084", "N1C1W1_A",
                                  "Falkenauer_u250_03"])
def test_one_dimensional_optimum_reached(name):
    w, cap = _bpp(name)
    p = Problem.simple(w[:, None], np.tile([cap], (len(w), 1)))
    state, lb, proven = solve(p, capped(max_iterations=300, exact_max_nodes=1000))
    opt = _opt_1d(name)
    assert (state.where >= 0).all()
    assert state.cost() == opt
    assert state.cost() <= ffd_state(p).cost()
    assert lb <= opt and proven == (lb == opt)


@needs_data
@pytest.mark.parametrize("set_,name,opt", [("panigrahy", "class6_60_5_1", 30), ("new", "class4_60_5_2", 28),
                                           ("panigrahy", "class9_40_3_0", 22)])
def test_vector_optimum_reached(set_, name, opt):
    d, cap = _vbp(set_, name)
    p = Problem.simple(d, np.tile(cap, (len(d), 1)))
    # without the exact phase: with no deadline its root LP alone takes tens of seconds here
    state, lb, _ = solve(p, capped(max_iterations=300, exact=False))
    assert state.cost() == opt and lb <= opt
    assert (state.load <= p.cap_tol).all()


@needs_data
def test_l2_bound_matches_known_values():
    # Martello-Toth example shape: L2 improves on the continuous bound with big items
    assert l2_bound(np.array([60, 60, 60, 30, 30, 30]), 100) == 3
    assert l2_bound(np.array([51, 51, 51, 10]), 100) == 3
    assert l2_bound(np.array([50, 50, 50, 50]), 100) == 2
    w, cap = _bpp("Schwerin1_BPP9")
    assert l2_bound(w, cap) <= _opt_1d("Schwerin1_BPP9")


def _min_bins(w, cap):
    best = len(w)
    def rec(i, loads):
        nonlocal best
        if len(loads) >= best:
            return
        if i == len(w):
            best = len(loads)
            return
        for j in range(len(loads)):
            if loads[j] + w[i] <= cap:
                loads[j] += w[i]
                rec(i + 1, loads)
                loads[j] -= w[i]
        rec(i + 1, loads + [w[i]])
    rec(0, [])
    return best


@pytest.mark.parametrize("seed", range(30))
def test_l2_bound_never_exceeds_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    w = sorted(rng.integers(1, 100, size=int(rng.integers(1, 9))).tolist(), reverse=True)
    assert l2_bound(np.array(w, float), 100) <= _min_bins(w, 100)
