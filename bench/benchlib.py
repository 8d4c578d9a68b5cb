"""What the benchmarks share: the members' joblib files, their ``[[models]]`` entries in a job
file, the reference computation (one shard's ``predict_proba``, the soft vote) that joblib's
workers and the in-process runs use, and a process's CPU seconds from ``/proc``.  ``bench/`` is
not a package: each script puts this directory on ``sys.path`` and imports ``benchlib``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import joblib
import numpy as np


def dump_members(members: dict[str, Any], directory: Path) -> dict[str, Path]:
    """Each member as ``directory/<name>.joblib``; the paths by name."""
    paths = {name: directory / f"{name}.joblib" for name in members}
    for name, model in members.items():
        joblib.dump(model, paths[name])
    return paths


def model_entry(name: str, path: Path, cpus: float, mem: int, *extra: str) -> list[str]:
    """The lines of one classifier's ``[[models]]`` table asking for ``predict_proba`` (its sha256
    read from the file), then ``extra`` lines, then a blank line."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ["[[models]]", f'name = "{name}"', f'path = "{path.name}"', f'sha256 = "{digest}"',
            'kind = "classifier"', 'output = "predict_proba"', f"cpus = {cpus}", f"mem = {mem}", *extra, ""]


def predict_shard(model: Any, shard: np.ndarray) -> np.ndarray:
    """One task's computation: the member's class probabilities for one shard."""
    return model.predict_proba(shard)  # type: ignore[no-any-return]


def soft_vote(outputs: list[np.ndarray]) -> np.ndarray:
    """The ensemble's labels (as class indices) from the members' probabilities."""
    return np.average(np.stack(outputs), axis=0).argmax(axis=1)


def process_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system, every thread) process ``pid`` has used so far (Linux ``/proc``);
    None once it is gone (or for no pid)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            fields = stat_file.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return None
