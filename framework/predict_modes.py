"""Where earlier runs' executors measured a model's predictions parallel on threads, kept between runs.

An executor probes each model once before its first task (``executor.workers``: one prediction
alone, then two at once on two threads) to choose threads or forked worker processes; the probes
of the mixed benchmark's four members were 0.1-0.3 s each of a task slot's time at the job's
start, with the other slot's core taken by the probe's second thread.  A probe that measures two
threads clearly faster than one (``thread``) says something about the model's code that does not
change between runs (its predictions release the GIL: calls that hold it cannot measure that
fast, their concurrency caps the ratio near 1), so the framework keeps it, by the model file's
sha256 and the method, and later runs' tasks carry it (``TaskPayload.predict_mode``): their
executors take threads without probing.  A ``process`` verdict is never kept: a busy machine can
make a model that releases the GIL look serial, so such a model is probed again in every run.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import executor as executor_package
from framework import atomic
from framework.inspection import cache_root


def cache_dir() -> Path:
    """Where the verdicts are kept: one small JSON file per model file and method."""
    return cache_root() / "predict-modes"


@functools.lru_cache(maxsize=1)
def _probe_code() -> str:
    """The probing code's checksum: a verdict holds for the probe that measured it."""
    return hashlib.sha256((Path(executor_package.__file__).parent / "workers.py").read_bytes()).hexdigest()


def _entry(sha256: str, method: str) -> Path:
    key = hashlib.sha256("\0".join((sha256, method, _probe_code())).encode()).hexdigest()
    return cache_dir() / f"{key}.json"


def recall(sha256: str, method: str) -> str | None:
    """``thread`` if an earlier run's probe measured this model file's ``method`` parallel on
    threads; None otherwise (or if the entry cannot be read: the executor probes, as before)."""
    try:
        kept = json.loads(_entry(sha256, method).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return "thread" if isinstance(kept, dict) and kept.get("mode") == "thread" else None


def remember(sha256: str, method: str, mode: str) -> bool:
    """Keep a probe's ``thread`` verdict (any other is ignored); whether an entry was written.  A
    cache that cannot be written is skipped silently: it only saves the next run's probe."""
    if mode != "thread":
        return False
    entry = _entry(sha256, method)
    try:
        entry.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic.write_text(entry, json.dumps({"mode": "thread"}))
    except OSError:
        return False
    return True
