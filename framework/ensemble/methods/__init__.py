"""The integration methods: each module here registers its methods in :mod:`framework.ensemble.registry`.

Every module of this package is imported when :mod:`framework.ensemble` is, so adding a method
is adding a module here (plus its tests). The built-in ones come first, in the order the job
file documents them; any other module follows in name order.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Iterable, Sequence

BUILT_IN = ("averaging", "voting", "stacking")


def import_all(package: str, path: Iterable[str], first: Sequence[str] = ()) -> list[str]:
    """Import the modules ``first`` of ``package``, then every other module on its ``path`` by name;
    return the names in import order."""
    names = list(first) + sorted(m.name for m in pkgutil.iter_modules(list(path)) if m.name not in first)
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names


import_all(__name__, __path__, BUILT_IN)
