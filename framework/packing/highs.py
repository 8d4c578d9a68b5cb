"""Options for the HiGHS MILP phases (``scipy.optimize.milp``)."""

from __future__ import annotations

from typing import Any


def milp_options(time_limit: float, node_limit: int | None, **extra: Any) -> dict[str, Any]:
    """``time_limit`` (seconds; math.inf: none) and, when given, ``node_limit`` (branch-and-bound
    nodes: a cap that does not depend on machine load); ``extra`` passes other HiGHS options."""
    options: dict[str, Any] = {"time_limit": time_limit, "disp": False, **extra}
    if node_limit is not None:
        options["node_limit"] = int(node_limit)
    return options
