"""The executor's start holds the cyclic garbage collector off until its first model is loaded
(``executor.startup``).  Each case runs in a fresh interpreter: the collector is the process'."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression

import executor as executor_package
from executor.protocol import file_sha256
from executor.startup import COLLECT_DURING_START

ROOT = Path(executor_package.__file__).resolve().parent.parent


def run_python(code: str) -> Any:
    """Run ``code`` in a fresh interpreter (this tree first on its path); the JSON it prints last."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    environ.pop(COLLECT_DURING_START, None)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environ, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_python_m_executor_holds_the_collector_from_its_first_line() -> None:
    """``python -m executor`` stops the collector before it imports anything else (its
    ``executor.main`` is replaced here: no agent to subscribe to)."""
    seen = run_python("""
        import gc, json, runpy, sys, types
        fake = types.ModuleType("executor.main")
        def main():
            import numpy  # what the real executor.main imports first
            print(json.dumps({"enabled": gc.isenabled(), "numpy": "numpy" in sys.modules}), flush=True)
            return 0
        fake.main = main
        sys.modules["executor.main"] = fake
        runpy.run_module("executor", run_name="__main__")
    """)
    assert seen["enabled"] is False and seen["numpy"] is True


def test_the_first_model_load_releases_the_collector_and_freezes_the_start(tmp_path: Path) -> None:
    """Held from the start through the imports until the first model load ends (here a failed
    one: no such file); then every object alive is frozen (later collections skip it) and
    collections resume."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 3))
    path = tmp_path / "model.joblib"
    joblib.dump(LogisticRegression().fit(features, features[:, 0] > 0), path)
    seen = run_python(f"""
        import gc, json
        from executor import startup
        held = startup.hold()
        at_hold = sum(s["collections"] for s in gc.get_stats())
        import numpy, sklearn.linear_model
        from pathlib import Path
        from executor.protocol import RemoteFile
        from executor.runner import SandboxCache, TaskError
        during = {{"enabled": gc.isenabled(), "held": startup.held(),
                   "collections": sum(s["collections"] for s in gc.get_stats()) - at_hold}}
        cache = SandboxCache(Path({str(tmp_path)!r}))
        try:
            cache.model(RemoteFile("", "0" * 64), "absent.joblib", "absent")
        except TaskError:
            pass
        after_failure = gc.isenabled()
        model = cache.model(RemoteFile("", {file_sha256(path)!r}), "model.joblib", "logistic")
        print(json.dumps({{"held": held, "during": during, "after_failure": after_failure,
                          "enabled": gc.isenabled(), "frozen": gc.get_freeze_count(),
                          "released_again": startup.release()}}))
    """)
    assert seen["held"] is True
    assert seen["during"] == {"enabled": False, "held": True, "collections": 0}
    assert seen["after_failure"] is True  # the first load ended the start, even though it failed
    assert seen["enabled"] is True and seen["frozen"] > 50_000 and seen["released_again"] is False


def test_the_collector_runs_again_after_the_limit_and_can_be_asked_to_run_throughout() -> None:
    """Released by its timer when no model load ends the start; not held at all when the
    executor's environment asks for collections during the start."""
    seen = run_python("""
        import gc, json, time
        from executor import startup
        held = startup.hold(limit=0.2)
        during = gc.isenabled()
        deadline = time.monotonic() + 30
        while not gc.isenabled() and time.monotonic() < deadline:
            time.sleep(0.01)
        print(json.dumps({"held": held, "during": during, "after": gc.isenabled(), "frozen": gc.get_freeze_count()}))
    """)
    assert seen == {"held": True, "during": False, "after": True, "frozen": seen["frozen"]} and seen["frozen"] > 0
    seen = run_python("""
        import gc, json
        from executor import startup
        print(json.dumps({"held": startup.hold({startup.COLLECT_DURING_START: "1"}), "enabled": gc.isenabled(),
                          "released": startup.release()}))
    """)
    assert seen == {"held": False, "enabled": True, "released": False}
