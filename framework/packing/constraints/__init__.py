"""Placement constraints as plug-ins (see ``base``): one module per constraint.

Every module of this package is imported here, so a new constraint is one new module: a
frozen dataclass subclassing :class:`Constraint`, decorated with :func:`register` when the
job file may name it. The built-ins are re-exported by name.
"""

from __future__ import annotations

import importlib
import pkgutil

from .attribute import AttributeEquals
from .avoid import AvoidAgents
from .base import (Constraint, ConstraintValueError, ModelLimits, from_job, job_keys, register, unregister,
                   whole_number)
from .gpu import NEEDS_GPU, NeedsGpu
from .max_per_agent import MaxPerAgent
from .spread import SpreadAtLeast


def _import_plugins() -> None:
    """Import the package's other modules (sorted by name) so their constraints register."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_plugins()

__all__ = ["NEEDS_GPU", "AttributeEquals", "AvoidAgents", "Constraint", "ConstraintValueError", "MaxPerAgent",
           "ModelLimits", "NeedsGpu", "SpreadAtLeast", "from_job", "job_keys", "register", "unregister",
           "whole_number"]
