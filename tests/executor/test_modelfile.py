"""Loading model files on the executor side: joblib, skops with the allow-list, checked again here."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pytest
import skops.io
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from executor.modelfile import UntrustedTypes, format_of, load_model, refused_types, trusted_by_default
from executor.protocol import RemoteFile, TaskPayload, array_to_npy, sha256_hex
from executor.runner import SandboxCache, TaskError, run_task
from trojans import SkopsTrojan, markers

TREE = "sklearn.tree._tree.Tree"


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return load_breast_cancer(return_X_y=True)


def test_default_allow_list_is_sklearn_and_numpy_classes_only() -> None:
    assert trusted_by_default("sklearn.linear_model._logistic.LogisticRegression")
    assert trusted_by_default("sklearn.ensemble._hist_gradient_boosting.binning._BinMapper")
    assert trusted_by_default("numpy.random.mtrand.RandomState")
    assert not trusted_by_default("numpy.load")  # a function, not a class
    assert not trusted_by_default("builtins.eval") and not trusted_by_default("posix.system")
    assert not trusted_by_default("sklearnx.Thing") and not trusted_by_default("sklearn.no_such.Thing")
    assert not trusted_by_default(TREE)  # skops lists it as unsafe to trust blindly
    assert refused_types([TREE, "numpy.load", "os.system"], []) == {
        TREE: "skops: its node indices are not bounds-checked; a crafted file can crash the process",
        "numpy.load": "not a class", "os.system": ""}
    assert refused_types([TREE, "numpy.load"], [TREE, "numpy.load"]) == {}


def test_format_from_suffix_unless_declared(tmp_path: Path) -> None:
    assert format_of(tmp_path / "m.skops") == "skops" and format_of(tmp_path / "m.joblib") == "joblib"
    assert format_of(tmp_path / "m.pkl") == "joblib" and format_of(tmp_path / "m.bin", "skops") == "skops"


def test_skops_and_joblib_load_the_same_model(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    joblib.dump(model, tmp_path / "m.joblib")
    skops.io.dump(model, tmp_path / "m.skops")
    from_joblib, version_joblib = load_model(tmp_path / "m.joblib", "joblib")
    from_skops, version_skops = load_model(tmp_path / "m.skops", "skops")
    import sklearn

    assert version_joblib == version_skops == sklearn.__version__
    assert np.array_equal(from_skops.predict_proba(x), from_joblib.predict_proba(x))
    with pytest.raises(zipfile.BadZipFile):  # a pickle is not a skops file
        load_model(tmp_path / "m.joblib", "skops")


def test_untrusted_skops_types_refused_unless_listed(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y)
    skops.io.dump(forest, tmp_path / "forest.skops")
    with pytest.raises(UntrustedTypes) as refused:
        load_model(tmp_path / "forest.skops", "skops")
    assert list(refused.value.refused) == [TREE]
    loaded, _ = load_model(tmp_path / "forest.skops", "skops", [TREE])
    assert np.array_equal(loaded.predict(x), forest.predict(x))


def skops_payload(sandbox: Path, name: str, shard: np.ndarray, trusted: list[str]) -> tuple[TaskPayload, dict]:
    blob, model = array_to_npy(shard), (sandbox / name).read_bytes()
    payload = TaskPayload(
        task_id="t1", operation="predict", model_name="m", model=RemoteFile("mem://m", sha256_hex(model)),
        model_file=name, method="predict", shard=RemoteFile("mem://shard", sha256_hex(blob)), shard_index=0,
        result_upload_url="unused", model_format="skops", trusted_types=trusted,
    )
    return payload, {"mem://m": model, "mem://shard": blob}


def test_executor_checks_the_allow_list_again(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    """The allow-list travels in the payload; the executor refuses what it does not allow."""
    x, y = data
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y)
    skops.io.dump(forest, tmp_path / "forest.skops")
    payload, blobs = skops_payload(tmp_path, "forest.skops", x[:20], [])
    with pytest.raises(TaskError, match=r"forest.skops of m was not loaded: untrusted types: sklearn.tree._tree.Tree"):
        run_task(payload, SandboxCache(tmp_path / "sandbox", blobs.__getitem__))
    payload, blobs = skops_payload(tmp_path, "forest.skops", x[:20], [TREE])
    output = run_task(payload, SandboxCache(tmp_path / "sandbox2", blobs.__getitem__))
    assert np.array_equal(output, forest.predict(x[:20]))


def test_skops_trojan_runs_nothing_unless_trusted(tmp_path: Path) -> None:
    """A skops file holding an object whose loading writes a marker: refused without a trace; the
    same file, trusted by name in a process that can import its class, does write the marker
    (so the refusal is what protects, not a broken trojan)."""
    skops.io.dump({"payload": SkopsTrojan(str(tmp_path))}, tmp_path / "evil.skops")
    assert markers(tmp_path) == {}
    payload, blobs = skops_payload(tmp_path, "evil.skops", np.zeros((2, 2)), [])
    with pytest.raises(TaskError, match=r"untrusted types: trojans.SkopsTrojan"):
        run_task(payload, SandboxCache(tmp_path / "sandbox", blobs.__getitem__))
    assert markers(tmp_path) == {}
    script = ("import sys; from executor.modelfile import load_model; "
              f"load_model({str(tmp_path / 'evil.skops')!r}, 'skops', ['trojans.SkopsTrojan'])")
    tests = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{tests.parent}{os.pathsep}{tests}"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    assert len(markers(tmp_path)) == 1
