"""The integration methods: each module here registers its methods in :mod:`framework.ensemble.registry`.

Every module of this package is imported when :mod:`framework.ensemble` is, so adding a method
is adding a module here (plus its tests). The built-in ones come first, in the order the job
file documents them; any other module follows in name order.
"""

from __future__ import annotations

import importlib
import pkgutil

BUILT_IN = ("averaging", "voting", "stacking")

for _name in BUILT_IN + tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in BUILT_IN)):
    importlib.import_module(f"{__name__}.{_name}")
