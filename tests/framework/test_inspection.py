"""Model inspection in a limited subprocess: the metadata equals what the loaded estimator says,
the framework's checks give the same answers from it, and a model that misbehaves while loading
(runs code, hangs, crashes, exhausts memory) is one clear error naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import joblib
import numpy as np
import pytest
import skops.io
import sklearn
from sklearn.base import is_classifier, is_regressor
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from framework.demo import train_demo
from framework.ensemble import EnsembleCompatibilityError, MemberSpec, check_compatibility, resolve_stack_method
from framework.errors import JobSpecError
from framework.inspection import (CACHE_ENV, InspectionError, InspectionLimits, ModelMetadata, inspect_model,
                                  inspect_models, parse_metadata)
from framework.job import member_features, member_specs, validate_job
from framework.jobspec import load_job
from harness import alive, wait_for
from trojans import markers, marker_expression, write_joblib_trojan

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray, list[str]]:
    data = load_iris()
    return data.data, data.target, list(data.feature_names)


def named(estimator, columns):  # noqa: ANN001, ANN201
    """What fitting on a DataFrame records (pandas is not installed here)."""
    estimator.feature_names_in_ = np.asarray(columns, dtype=object)
    return estimator


@pytest.fixture(scope="module")
def zoo(iris, tmp_path_factory) -> tuple[dict[str, object], dict[str, ModelMetadata]]:  # noqa: ANN001
    """Real estimators, saved and inspected (joblib and skops), by name."""
    x, y, cols = iris
    directory = tmp_path_factory.mktemp("zoo")
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    estimators = {
        "pipeline": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y),
        "svc": SVC().fit(x, y),
        "strings": LogisticRegression(max_iter=1000).fit(x, labels),
        "ols": named(LinearRegression().fit(x, y), cols),
        "bools": LogisticRegression().fit(x, y == 1),
        "forest": RandomForestClassifier(n_estimators=3, random_state=0).fit(x[:, :2], y),
    }
    specs = []
    for name, estimator in estimators.items():
        joblib.dump(estimator, directory / f"{name}.joblib")
        skops.io.dump(estimator, directory / f"{name}.skops")
        specs.append(SimpleNamespace(name=name, path=directory / f"{name}.joblib", format="joblib", trusted_types=()))
        specs.append(SimpleNamespace(name=f"{name}-skops", path=directory / f"{name}.skops", format="skops",
                                     trusted_types=("sklearn.tree._tree.Tree",)))
    return estimators, inspect_models(specs, lambda i, m: m.name)


@pytest.mark.parametrize("name", ["pipeline", "svc", "strings", "ols", "bools", "forest"])
@pytest.mark.parametrize("suffix", ["", "-skops"])
def test_metadata_equals_the_loaded_estimator(zoo, name: str, suffix: str) -> None:  # noqa: ANN001
    estimators, metadata = zoo
    estimator, meta = estimators[name], metadata[name + suffix]
    assert meta.format == ("skops" if suffix else "joblib")
    assert meta.estimator_class == f"{type(estimator).__module__}.{type(estimator).__qualname__}"
    assert (is_classifier(meta), is_regressor(meta)) == (is_classifier(estimator), is_regressor(estimator))
    assert meta.n_features_in_ == estimator.n_features_in_
    for attribute in ("feature_names_in_", "classes_"):
        assert hasattr(meta, attribute) == hasattr(estimator, attribute)
        if hasattr(estimator, attribute):
            ours, theirs = getattr(meta, attribute), getattr(estimator, attribute)
            assert ours.dtype == theirs.dtype and ours.tolist() == theirs.tolist()
    for method in ("predict", "predict_proba", "decision_function"):
        assert (getattr(meta, method, None) is None) == (getattr(estimator, method, None) is None)
    if meta.predict is not None:
        with pytest.raises(RuntimeError, match="not loaded in the framework's process"):
            meta.predict(np.zeros((1, 4)))
    assert meta.sklearn_version == sklearn.__version__
    assert meta.loaded_bytes > 0
    assert meta.untrusted_types == (("sklearn.tree._tree.Tree",) if name == "forest" and suffix else ())


def problems(estimators, members, columns, method):  # noqa: ANN001, ANN201
    try:
        check_compatibility(estimators, members, columns, method, sklearn.__version__)
    except EnsembleCompatibilityError as error:
        return error.problems
    return []


@pytest.mark.parametrize("method", ["mean", "soft_vote", "hard_vote", "stacking"])
def test_checks_answer_the_same_from_metadata(zoo, iris, method: str) -> None:  # noqa: ANN001
    """check_compatibility, member features and classes, and stack-method resolution give what
    they give for the loaded estimators."""
    estimators, metadata = zoo
    x, y, cols = iris
    members = [MemberSpec("pipeline", "classifier", "predict_proba", proba_class=1),
               MemberSpec("svc", "classifier", "predict_proba"),
               MemberSpec("strings", "classifier", "predict"),
               MemberSpec("ols", "classifier", "predict", features=tuple(reversed(cols))),
               MemberSpec("forest", "classifier", "predict")]
    inspected = {n: metadata[n] for n in estimators}
    expected = problems(estimators, members, cols, method)
    assert expected and problems(inspected, members, cols, method) == expected
    for name in estimators:
        assert (resolve_stack_method(name, inspected[name], "auto", "classifier")
                == resolve_stack_method(name, estimators[name], "auto", "classifier"))
    spec = SimpleNamespace(models=[SimpleNamespace(name=n, kind="classifier", output="predict", weight=1.0,
                                                   proba_class=None, features=None) for n in estimators])
    data_columns = (*cols, "extra")
    assert member_features(spec, inspected, data_columns) == member_features(spec, estimators, data_columns)
    assert member_specs(spec, inspected) == member_specs(spec, estimators)


def test_answer_is_type_checked(tmp_path: Path) -> None:
    good = {"format": "joblib", "estimator_class": "x.Y", "estimator_type": "classifier", "n_features_in": 2,
            "feature_names_in": None, "classes": {"dtype": "<i8", "values": [0, 1]}, "methods": ["predict"],
            "sklearn_version": "1.0", "loaded_bytes": 10, "untrusted_types": []}
    assert parse_metadata(tmp_path, good).classes_.tolist() == [0, 1]
    for key, bad in (("n_features_in", "2"), ("methods", ["__reduce__"]), ("loaded_bytes", None),
                     ("classes", {"dtype": "V8", "values": []}), ("feature_names_in", [1, 2]), ("format", 3)):
        with pytest.raises((ValueError, TypeError)):
            parse_metadata(tmp_path, {**good, key: bad})


def probe_expression(out: Path) -> str:
    """Writes what the inspection process sees: its environment, limits, directory and flags."""
    return ("__import__('json').dump({'env': dict(__import__('os').environ), 'cwd': __import__('os').getcwd(), "
            "'as': __import__('resource').getrlimit(__import__('resource').RLIMIT_AS), "
            "'cpu': __import__('resource').getrlimit(__import__('resource').RLIMIT_CPU), "
            "'core': __import__('resource').getrlimit(__import__('resource').RLIMIT_CORE), "
            "'isolated': __import__('sys').flags.isolated, 'sid': __import__('os').getsid(0), "
            f"'pid': __import__('os').getpid()}}, open({str(out)!r}, 'w'))")


def test_inspection_process_has_no_secrets_and_has_limits(tmp_path: Path, iris,  # noqa: ANN001
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    x, y, _ = iris
    monkeypatch.setenv("MESOS_ENSEMBLE_SECRET", "hunter2")
    monkeypatch.setenv("PYTHONPATH", "/nowhere")
    path = write_joblib_trojan(tmp_path / "probe.joblib", LinearRegression().fit(x, y),
                               probe_expression(tmp_path / "seen.json"))
    meta = inspect_model(path, limits=InspectionLimits(timeout_seconds=100, memory_mb=1500))
    assert meta.estimator_class == "sklearn.linear_model._base.LinearRegression"
    seen = json.loads((tmp_path / "seen.json").read_text())
    given = {"PATH", "LANG", "HOME", "TMPDIR", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"}
    set_by_sklearn_itself = {"KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK"}
    assert given <= set(seen["env"]) <= given | set_by_sklearn_itself
    assert "hunter2" not in json.dumps(seen)
    assert seen["as"] == [1500 * 2**20, 1500 * 2**20] and seen["cpu"] == [100, 105] and seen["core"] == [0, 0]
    assert seen["isolated"] == 1 and seen["sid"] == seen["pid"] != os.getpid()
    assert seen["cwd"] != os.getcwd() and not Path(seen["cwd"]).exists()  # its own directory, removed after


def test_several_models_each_load_in_a_process_of_their_own(tmp_path: Path, iris,  # noqa: ANN001
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """One inspection process imports scikit-learn once, then each model loads in a child of its
    own (its own session, limits and directory); one model's failure is its own."""
    x, y, _ = iris
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    paths = [write_joblib_trojan(tmp_path / f"m{i}.joblib", LinearRegression().fit(x, y),
                                 probe_expression(tmp_path / f"seen{i}.json")) for i in range(2)]
    crash = write_joblib_trojan(tmp_path / "crash.joblib", LinearRegression().fit(x, y), "__import__('os')._exit(3)")
    specs = [SimpleNamespace(name=f"m{i}", path=p, format="joblib", trusted_types=()) for i, p in enumerate(paths)]
    found = inspect_models(specs, lambda i, m: m.name, InspectionLimits(timeout_seconds=90, memory_mb=1600))
    assert [m.estimator_class for m in found.values()] == ["sklearn.linear_model._base.LinearRegression"] * 2
    seen = [json.loads((tmp_path / f"seen{i}.json").read_text()) for i in range(2)]
    assert seen[0]["pid"] != seen[1]["pid"] and all(s["sid"] == s["pid"] != os.getpid() for s in seen)
    assert seen[0]["cwd"] != seen[1]["cwd"] and all(s["as"] == [1600 * 2**20] * 2 for s in seen)
    with pytest.raises(JobSpecError, match=r"^bad: crash.joblib: the inspection process exited with status 3"):
        inspect_models([*specs, SimpleNamespace(name="bad", path=crash, format="joblib", trusted_types=())],
                       lambda i, m: m.name)


def test_a_model_that_hangs_is_killed_with_what_it_started(tmp_path: Path, iris) -> None:  # noqa: ANN001
    x, y, _ = iris
    hang = (f"[open({str(tmp_path / 'pids')!r}, 'a').write('%d\\n' % __import__('os').getpid()), "
            f"__import__('os').fork() == 0 and open({str(tmp_path / 'pids')!r}, 'a').write("
            "'%d\\n' % __import__('os').getpid()), __import__('time').sleep(1000)]")
    path = write_joblib_trojan(tmp_path / "hang.joblib", LinearRegression().fit(x, y), hang)
    # The child's clock starts after the zygote imported scikit-learn, which has as long again
    # (the zygote's whole deadline is twice this): long enough on a loaded machine.
    with pytest.raises(InspectionError, match=r"did not finish loading within 10 s in the inspection process"):
        inspect_model(path, limits=InspectionLimits(timeout_seconds=10))
    pids_file = tmp_path / "pids"
    assert wait_for(lambda: pids_file.exists() and len(pids_file.read_text().split()) == 2)  # model and its child
    pids = [int(p) for p in pids_file.read_text().split()]
    assert wait_for(lambda: not any(alive(p) for p in pids))


def test_a_model_that_exhausts_memory(tmp_path: Path, iris) -> None:  # noqa: ANN001
    x, y, _ = iris
    path = write_joblib_trojan(tmp_path / "hog.joblib", LinearRegression().fit(x, y), "bytearray(16 * 2**30)")
    with pytest.raises(InspectionError, match=r"ran out of memory while loading in the inspection process "
                                              r"\(limit 1200 MB\)"):
        inspect_model(path, limits=InspectionLimits(memory_mb=1200))


@pytest.mark.parametrize("expression, message", [
    ("__import__('os').kill(__import__('os').getpid(), 11)", r"the inspection process crashed \(SIGSEGV\)"),
    ("__import__('os')._exit(3)", r"the inspection process exited with status 3"),
    ("1 / 0", r"could not be loaded as a joblib file: ZeroDivisionError: division by zero"),
    ("__import__('sys').stdout.write('{\"ok\": true}') and __import__('os').write(1, b'garbage')", None),
])
def test_a_model_that_crashes_or_fails(tmp_path: Path, iris, expression: str, message: str | None) -> None:  # noqa: ANN001
    x, y, _ = iris
    path = write_joblib_trojan(tmp_path / "bad.joblib", LinearRegression().fit(x, y), expression)
    if message is None:  # what the model prints cannot forge the answer: stdout is stderr while it loads
        assert inspect_model(path).estimator_class.endswith("LinearRegression")
        return
    with pytest.raises(InspectionError, match=message):
        inspect_model(path)


def test_not_a_model_file(tmp_path: Path) -> None:
    (tmp_path / "junk.joblib").write_bytes(b"not a pickle")
    with pytest.raises(InspectionError, match=r"could not be loaded as a joblib file"):
        inspect_model(tmp_path / "junk.joblib")
    (tmp_path / "junk.skops").write_bytes(b"not a zip")
    with pytest.raises(InspectionError, match=r"could not be loaded as a skops file"):
        inspect_model(tmp_path / "junk.skops")


def write_job(demo: Path, replacements: dict[str, str]) -> Path:
    text = demo.read_text()
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    job = demo.parent / "edited.toml"
    job.write_text(text)
    return job


def sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_malicious_joblib_runs_nothing_in_the_framework_process(tmp_path: Path) -> None:
    """validate (in this process, and as the command) loads the trojan only in inspection
    subprocesses: no marker carries the framework process' id."""
    job = trojan_demo(tmp_path, marker_expression(tmp_path))
    assert "OK" in validate_job(load_job(job))
    found = markers(tmp_path)
    assert found and os.getpid() not in found  # it ran, but elsewhere
    fresh = {**os.environ, CACHE_ENV: str(tmp_path / "empty-cache")}  # else the answer above is reused
    command = subprocess.Popen([sys.executable, "-m", "framework.cli", "validate", str(job)], cwd=ROOT, env=fresh,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = command.communicate(timeout=300)
    assert command.returncode == 0, err
    assert command.pid not in markers(tmp_path) and len(markers(tmp_path)) == len(found) + 1


def test_answers_are_cached_by_checksum_format_and_allow_list(tmp_path: Path, iris,  # noqa: ANN001
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A model inspected once (with its sha256) is not loaded again: validate, then run, starts
    one inspection; another allow-list or other bytes are inspected anew; failures are not kept."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    x, y, _ = iris
    path = tmp_path / "model.skops"
    skops.io.dump(LogisticRegression(max_iter=500).fit(x, y), path)
    checksum = sha(path)
    first = inspect_model(path, sha256=checksum)
    assert len(list((tmp_path / "cache" / "inspections").iterdir())) == 1

    def no_process(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the cached answer should have been used")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    again = inspect_model(path, sha256=checksum)
    assert again.sklearn_version == first.sklearn_version and again.classes.tolist() == first.classes.tolist()
    assert again.n_features_in_ == first.n_features_in_ and again.loaded_bytes == first.loaded_bytes
    with pytest.raises(AssertionError, match="cached answer"):  # another allow-list is another question
        inspect_model(path, trusted_types=["numpy.float64"], sha256=checksum)
    with pytest.raises(AssertionError, match="cached answer"):  # no checksum: always inspected
        inspect_model(path)
    monkeypatch.undo()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    junk = tmp_path / "junk.joblib"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(InspectionError):
        inspect_model(junk, sha256=sha(junk))
    assert len(list((tmp_path / "cache" / "inspections").iterdir())) == 1  # the failure was not kept


def load_job_sha(demo: Path, model: str) -> str:
    return next(m.sha256 for m in load_job(demo).models if m.name == model)


def trojan_demo(tmp_path: Path, expression: str) -> Path:
    """The founding example whose linear model also evaluates ``expression`` when loaded, with
    its sha256 declared correctly (the pin proves the file is the one named, not that it is safe)."""
    demo = train_demo(tmp_path / "demo")
    linear, declared = demo.parent / "linear.joblib", load_job_sha(demo, "linear")
    write_joblib_trojan(linear, joblib.load(linear), expression)
    return write_job(demo, {f'sha256 = "{declared}"': f'sha256 = "{sha(linear)}"'})


def test_job_errors_name_the_model(tmp_path: Path) -> None:
    job = trojan_demo(tmp_path, "__import__('os').kill(__import__('os').getpid(), 11)")
    with pytest.raises(JobSpecError) as error:
        validate_job(load_job(job))
    assert str(error.value) == (f"{job}: models[0] (linear): linear.joblib: the inspection process crashed (SIGSEGV) "
                                "while loading it")
    result = subprocess.run([sys.executable, "-m", "framework.cli", "validate", str(job)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"mesos-ensemble: error: {error.value}"]


def test_skops_job_refuses_untrusted_types_before_launch(tmp_path: Path) -> None:
    from sklearn.datasets import load_breast_cancer

    demo = train_demo(tmp_path / "demo", model_format="skops")
    x, y = load_breast_cancer(return_X_y=True)
    forest = demo.parent / "forest.skops"
    skops.io.dump(RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y), forest)
    job = write_job(demo, {'path = "logistic.skops"': 'path = "forest.skops"',
                           f'sha256 = "{load_job_sha(demo, "logistic")}"': f'sha256 = "{sha(forest)}"'})
    with pytest.raises(JobSpecError, match=r"models\[1\] \(logistic\): forest.skops: holds types that are not "
                                           r"trusted: sklearn.tree._tree.Tree \(skops: its node indices"):
        validate_job(load_job(job))
    trusted = write_job(job, {'proba_class = 1': 'proba_class = 1\ntrusted_types = ["sklearn.tree._tree.Tree"]'})
    assert "OK" in validate_job(load_job(trusted))
    assert load_job(trusted).model("logistic").trusted_types == ("sklearn.tree._tree.Tree",)


def test_format_and_trusted_types_fields(tmp_path: Path) -> None:
    demo = train_demo(tmp_path / "demo")
    spec = load_job(demo)
    assert [(m.format, m.trusted_types) for m in spec.models] == [("joblib", ()), ("joblib", ())]
    with pytest.raises(JobSpecError, match=r"models\[0\] \(linear\).trusted_types applies only to skops files; "
                                           r"linear.joblib is a joblib file"):
        load_job(write_job(demo, {'output = "predict"\ncpus': 'output = "predict"\ntrusted_types = ["a.B"]\ncpus'}))
    with pytest.raises(JobSpecError, match=r"models\[0\] \(linear\).format must be one of joblib, skops"):
        load_job(write_job(demo, {'output = "predict"\ncpus': 'output = "predict"\nformat = "pickle"\ncpus'}))
    # A pickle declared as skops is refused by the inspection, naming the model.
    declared = write_job(demo, {'output = "predict"\ncpus': 'output = "predict"\nformat = "skops"\ncpus'})
    assert load_job(declared).models[0].format == "skops"
    with pytest.raises(JobSpecError, match=r"models\[0\] \(linear\): linear.joblib: could not be loaded as a skops"):
        validate_job(load_job(declared))
