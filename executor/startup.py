"""The cyclic garbage collector, held off while the executor starts.

An executor's start allocates about 120,000 objects that live as long as it does: numpy's,
scipy's and scikit-learn's modules, classes and functions, aiohttp's for a replica, the first
model.  Python's collector ran about 300 times during those imports, 0.21-0.31 s of CPU of a cold
replica's 2.1-3.0 s (measured 2026-12-02 with ``gc.callbacks`` on the executor's imports and a
100-tree forest's load), and found about 2,000 objects to free.  :func:`hold` stops it at the
process' first line; :func:`release`, once the start is done (the first model loaded, or
:data:`HOLD_LIMIT` seconds at most), freezes what is alive then (``gc.freeze``: later
collections do not walk it: a full one took 120-190 ms of CPU after the start; and, as Python's
documentation advises before a fork, prediction workers forked later do not write to its pages)
and starts the collector again.  Without the freeze, the first collections after the hold would
walk all of it until it reached the oldest generation.

Standard library only: :func:`hold` runs before anything else is imported.
"""

from __future__ import annotations

import gc
import os
import threading
from typing import Mapping

HOLD_LIMIT = 60.0
"""Seconds after :func:`hold` by which the collector runs again, whatever the start does."""
COLLECT_DURING_START = "MESOS_ENSEMBLE_GC_DURING_START"
"""Set to ``1``, the executor collects during its start as Python does by default (to compare:
``bench/replica_start_bench.py``'s ``before`` rows)."""

_lock = threading.Lock()
_held = False


def hold(environ: Mapping[str, str] = os.environ, limit: float = HOLD_LIMIT) -> bool:
    """Stop the cyclic collector until :func:`release` (called by a timer after ``limit``
    seconds at the latest); False, and nothing changed, when ``environ`` asks to collect."""
    global _held
    if environ.get(COLLECT_DURING_START, "").strip() in ("1", "true", "yes"):
        return False
    with _lock:
        if _held:
            return True
        _held = True
        gc.disable()
    timer = threading.Timer(limit, release)
    timer.name, timer.daemon = "gc-release", True
    timer.start()
    return True


def release() -> bool:
    """End :func:`hold`: freeze every object alive now and start the collector again; False,
    and nothing done, when it was not held (or released already)."""
    global _held
    with _lock:
        if not _held:
            return False
        _held = False
        gc.freeze()
        gc.enable()
    return True


def held() -> bool:
    """Whether the collector is held off by :func:`hold` now."""
    with _lock:
        return _held
