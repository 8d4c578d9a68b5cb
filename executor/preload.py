"""Import, while a fresh executor subscribes to its agent, what its serving replicas will load.

A replica on a fresh agent pays for the executor's start and then for importing scikit-learn
(several seconds of wall time on a busy machine) before it can unpickle its model.  The serving
framework names the modules in the executor's environment (``MESOS_ENSEMBLE_PRELOAD``: the
replica server and the scikit-learn modules of the models it may serve, from their inspection),
and :func:`start` imports them on a thread as soon as the executor starts, so that the import
overlaps the subscription and the arrival of the first task instead of following it.

Imports of one package from two threads at once can hand one of them a module that is still
being initialised (CPython's import-lock deadlock avoidance), so a replica calls :func:`wait`
before it unpickles: it loads once the preload is done, never beside it.  Only modules of this
package and of scikit-learn are imported (a name is not a way to run a model file's code: the
model file itself is loaded later, with the usual checks).  A module that fails to import is
skipped: the replica's own load will report it.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time

log = logging.getLogger("executor.preload")

ENV = "MESOS_ENSEMBLE_PRELOAD"
ALLOWED = ("executor", "sklearn")
"""Top-level packages whose modules may be preloaded."""
WAIT_SECONDS = 120.0

_thread: threading.Thread | None = None


def allowed(name: str) -> bool:
    """Whether ``name`` is a module of one of the :data:`ALLOWED` packages."""
    return bool(name) and name.split(".", 1)[0] in ALLOWED and all(part.isidentifier() for part in name.split("."))


def start(value: str) -> threading.Thread | None:
    """Import the comma-separated modules of ``value`` (allowed ones only) on a thread of their own."""
    global _thread
    names = [n.strip() for n in value.split(",") if allowed(n.strip())]
    if not names:
        return None
    _thread = threading.Thread(target=_import, args=(names,), name="preload", daemon=True)
    _thread.start()
    return _thread


def _import(names: list[str]) -> None:
    started = time.perf_counter()
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # the replica's own load says what is wrong
            log.warning("could not preload %s: %s: %s", name, type(error).__name__, error)
    log.info("preloaded %s in %.2f s", ", ".join(names), time.perf_counter() - started)


def wait(timeout: float = WAIT_SECONDS) -> None:
    """Return once the preload (if any) is done (or after ``timeout``)."""
    thread = _thread
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)
