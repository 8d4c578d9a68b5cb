"""When each step of the executor's start first happened, logged once per step.

An executor's cold start (the interpreter, the imports, the subscription, each model's download,
load and thread-or-process probe, the first shard, the first computation) is most of a short
job's fixed cost.  :func:`mark` logs the wall-clock time a step first happened as one line on the
executor's stderr (the sandbox's ``stderr`` file), ``start step NAME at EPOCH``, which
``bench/cores_bench.py --timeline`` reads back beside the framework's own times.  Nothing else
reads them; a step is a name, several steps may share a prefix (``model_loaded:forest``).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time

log = logging.getLogger("executor.timeline")

LINE = re.compile(r"start step (\S+) at (\d+\.\d+)")
"""How a logged step reads (for whoever parses a sandbox's stderr)."""

_marked: dict[str, float] = {}
_lock = threading.Lock()


def process_started() -> float | None:
    """The wall-clock time this process started (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/stat", "rb") as stat_file:
            started_ticks = int(stat_file.read().rsplit(b")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.time() - age


def mark(step: str, when: float | None = None) -> None:
    """Log ``step`` (at ``when``, default now) unless it was logged before in this process."""
    when = time.time() if when is None else when
    with _lock:
        if step in _marked:
            return
        _marked[step] = when
    log.info("start step %s at %.6f", step, when)


def marked() -> dict[str, float]:
    """The steps logged so far, with their times."""
    with _lock:
        return dict(_marked)
