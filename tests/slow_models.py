"""Jobs whose tasks are slow enough to be interrupted mid-job, deterministically.

A slow model is a fitted ``LinearRegression`` saved with joblib so that, when loaded, it becomes
an instance of a subclass (made at load time, from builtins only, so that the inspection
subprocess and any executor can load it without this module) whose ``predict`` first sleeps
``delay`` seconds.  Its predictions are exactly the ``LinearRegression``'s; pickled again (as the
executor does to measure it) it is a plain ``LinearRegression``."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from executor.protocol import file_sha256
from sklearn.linear_model import LinearRegression


class SlowOnLoad:
    """Pickles as: unpickle ``model``, then switch its class to a subclass whose predict sleeps."""

    def __init__(self, model: Any, delay: float) -> None:
        self.model, self.delay = model, delay

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        inner = pickle.dumps(self.model, protocol=pickle.HIGHEST_PROTOCOL)
        expression = (
            "(lambda m: (lambda base: [setattr(m, '__class__', type(base.__name__, (base,), "
            "{'__module__': base.__module__, "
            "'__reduce_ex__': lambda self, protocol, base=base: "
            "(__import__('copyreg')._reconstructor, (base, object, None), dict(self.__dict__)), "
            f"'predict': lambda self, X, base=base: [__import__('time').sleep({self.delay!r}), "
            "base.predict(self, X)][1]})), m][1])(type(m)))"
            f"(__import__('pickle').loads({inner!r}))")
        return eval, (expression,)


def write_slow_job(directory: Path, *, delay: float = 1.0, rows: int = 120, rows_per_shard: int = 10,
                   master: str = "local", framework_extra: str = "") -> Path:
    """Two slow regressors (``rows / rows_per_shard`` shards each, every task at least ``delay``
    seconds), integration mean, output ``out/predictions.csv``; returns the job file."""
    directory.mkdir(parents=True)
    (directory / "out").mkdir()
    rng = np.random.default_rng(7)
    features = rng.normal(size=(200, 4))
    for i, name in enumerate(("slow_a", "slow_b")):
        target = features @ np.array([1.0, -2.0, 0.5, i + 1.0]) + rng.normal(scale=0.1, size=200)
        model = LinearRegression().fit(features, target)
        joblib.dump(SlowOnLoad(model, delay), directory / f"{name}.joblib")
    test = rng.normal(size=(rows, 4))
    lines = ["f0,f1,f2,f3"] + [",".join(f"{v:.6f}" for v in row) for row in test]
    (directory / "test.csv").write_text("\n".join(lines) + "\n")
    models = "".join(f'''
[[models]]
name = "{name}"
path = "{name}.joblib"
sha256 = "{file_sha256(directory / f"{name}.joblib")}"
kind = "regressor"
output = "predict"
cpus = 0.5
mem = 128
''' for name in ("slow_a", "slow_b"))
    job = directory / "job.toml"
    job.write_text(f'''[job]
name = "slow"
integration = "mean"
output = "out/predictions.csv"

[data]
path = "test.csv"
rows_per_shard = {rows_per_shard}
{models}
[framework]
master = "{master}"
speculation_factor = 0
{framework_extra}''')
    return job
