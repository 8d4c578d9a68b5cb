"""What earlier runs measured a model's predictions to cost, kept between runs (seconds per row).

Within a run the scheduler learns each model's cost from its first finished task
(``framework.balancing.Measurements``): until then each model's first item goes alone, as a
probe, and nothing is ordered longest first or bundled.  A later run over the same model file and
method starts from what the earlier one measured (per row, so a different shard size still gives
a per-item figure): its first offer round already orders the work longest first and bundles it,
and the run's own measurements replace the figure as soon as its model's first task reports.  The
figure only steers order and bundle sizes (never outputs, never straggler detection): a run on a
slower or busier machine is merely ordered by an older figure until its own first results.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from framework import atomic
from framework.inspection import cache_root


def cache_dir() -> Path:
    """Where the figures are kept: one small JSON file per model file and method."""
    return cache_root() / "task-costs"


def _entry(sha256: str, method: str) -> Path:
    key = hashlib.sha256("\0".join((sha256, method)).encode()).hexdigest()
    return cache_dir() / f"{key}.json"


def recall(sha256: str, method: str) -> float | None:
    """Seconds per row an earlier run measured for this model file's ``method``; None if none
    (or if the entry cannot be read: the run measures it, as before)."""
    try:
        kept = json.loads(_entry(sha256, method).read_text(encoding="utf-8"))
        seconds = float(kept["seconds_per_row"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def remember(sha256: str, method: str, seconds: float, rows: int) -> bool:
    """Keep what ``rows`` rows of this model file's ``method`` took (``seconds``, as its executors
    measured them); whether an entry was written.  A cache that cannot be written is skipped
    silently: it only saves the next run its probe tasks."""
    if rows <= 0 or not math.isfinite(seconds) or seconds <= 0:
        return False
    entry = _entry(sha256, method)
    try:
        entry.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic.write_text(entry, json.dumps({"seconds_per_row": seconds / rows}))
    except OSError:
        return False
    return True
