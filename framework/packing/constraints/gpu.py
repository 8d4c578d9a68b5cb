"""``needs_gpu``: a task asking for gpus goes only to agents offering some (implied, not declared)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..agents import Agent
from .base import Constraint

NEEDS_GPU = "needs_gpu"


@dataclass(frozen=True)
class NeedsGpu(Constraint):
    """Only agents with gpus; the packer adds it after a task's own constraints when it needs gpus."""

    name = NEEDS_GPU

    def feasible(self, agents: Sequence[Agent]) -> np.ndarray:
        return np.array([ag.capacity.gpus > 0 for ag in agents], dtype=bool)
