"""executor.preload: a fresh serving executor imports what its replicas load while it subscribes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from executor import preload

ROOT = Path(preload.__file__).resolve().parent.parent


def test_only_modules_of_this_package_and_of_scikit_learn_may_be_preloaded() -> None:
    assert preload.allowed("sklearn.ensemble._forest") and preload.allowed("executor.replica")
    for name in ("os", "antigravity", "sklearnx.evil", "sklearn..x", "sklearn.x-y", "", "executorx"):
        assert not preload.allowed(name), name
    assert preload.start("os,antigravity, ,") is None  # nothing allowed: no thread


def test_a_fresh_process_imports_the_named_modules_on_a_thread_and_wait_returns_once_done() -> None:
    code = ("import sys, threading\n"
            "from executor import preload\n"
            "thread = preload.start(sys.argv[1])\n"
            "assert thread is not None and thread.name == 'preload' and thread.daemon\n"
            "preload.wait()\n"
            "import json\n"
            "print(json.dumps({n: n in sys.modules for n in sys.argv[1].split(',')}))\n")
    names = "executor.npycodec,sklearn.linear_model._logistic,antigravity,executor.no_such_module"
    result = subprocess.run([sys.executable, "-c", code, names], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    imported = json.loads(result.stdout)
    assert imported == {"executor.npycodec": True, "sklearn.linear_model._logistic": True, "antigravity": False,
                        "executor.no_such_module": False}
    # A module that cannot be imported is said and skipped (the replica's own load reports it).
    assert "could not preload executor.no_such_module: ModuleNotFoundError" in result.stderr
