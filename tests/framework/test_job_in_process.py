"""A whole job through the real Scheduler subclass and the real executor runner (in-process mock
Mesos from tests/harness.py), checked against scikit-learn computed directly on the same rows."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from framework.demo import train_demo
from framework.errors import JobFailed
from framework.job import JobRunner
from framework.jobspec import load_job
from harness import InProcessMesos

AGENTS = [{"agent": "a1", "cpus": 2, "mem": 2048},
          {"agent": "a2", "cpus": 2, "mem": 2048, "attributes": {"price": 2.0}}]


def in_process(spec: Any, factory: Any, **options: Any) -> JobRunner:
    """A job run against the in-process mock master (no embedded cluster)."""
    return JobRunner(spec, start_local_cluster=False, driver_factory=factory, **options)


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open() as handle:
        rows = list(csv.reader(handle))
    return rows[0], np.array(rows[1:], dtype=float)


@pytest.fixture()
def demo(tmp_path: Path) -> Path:
    return train_demo(tmp_path / "demo")


def direct_mean(demo_dir: Path) -> np.ndarray:
    header, rows = read_csv(demo_dir / "test.csv")
    features = rows[:, :-1]
    linear = joblib.load(demo_dir / "linear.joblib").predict(features)
    logistic = joblib.load(demo_dir / "logistic.joblib").predict_proba(features)[:, 1]
    return np.mean(np.stack([linear, logistic]), axis=0)


def test_founding_example_equals_direct_sklearn(demo: Path, tmp_path: Path) -> None:
    factory = InProcessMesos.factory(AGENTS, tmp_path / "sandboxes")
    outcome = in_process(load_job(demo), factory).run()
    header, output = read_csv(outcome.output)
    expected = direct_mean(demo.parent)
    assert output.shape[0] == expected.shape[0] == 171
    np.testing.assert_allclose(output[:, 0], expected, rtol=0, atol=1e-12)
    assert outcome.members_used == ("linear", "logistic") and not outcome.members_missing
    assert outcome.tasks == 2 * 4 and outcome.report is not None
    driver = factory.last  # type: ignore[attr-defined]
    assert driver.stopped and driver.suppressed >= 1


def test_explained_output_names_what_each_member_said(demo: Path, tmp_path: Path) -> None:
    job = demo.parent / "explain.toml"
    job.write_text(demo.read_text().replace('integration = "mean"', 'integration = "mean"\nexplain = true'))
    outcome = in_process(load_job(job), InProcessMesos.factory(AGENTS, tmp_path / "sb")).run()
    header, output = read_csv(outcome.output)
    assert header == ["prediction", "member_linear", "member_logistic"]
    _, rows = read_csv(demo.parent / "test.csv")
    linear, logistic = joblib.load(demo.parent / "linear.joblib"), joblib.load(demo.parent / "logistic.joblib")
    np.testing.assert_allclose(output[:, 1], linear.predict(rows[:, :-1]), atol=1e-12)
    np.testing.assert_allclose(output[:, 2], logistic.predict_proba(rows[:, :-1])[:, 1], atol=1e-12)
    np.testing.assert_allclose(output[:, 0], direct_mean(demo.parent), rtol=0, atol=1e-12)


def test_failures_are_retried_and_the_result_is_still_exact(demo: Path, tmp_path: Path) -> None:
    failed_once: set[str] = set()

    def fail_first_attempt(payload, agent):  # noqa: ANN001
        key = payload.task_id.rsplit(".a", 1)[0]
        if key not in failed_once:
            failed_once.add(key)
            return "injected failure"
        return None

    outcome = in_process(load_job(demo), InProcessMesos.factory(AGENTS, tmp_path / "sb", fail_first_attempt)).run()
    assert outcome.task_attempts == 2 * outcome.tasks
    np.testing.assert_allclose(read_csv(outcome.output)[1][:, 0], direct_mean(demo.parent), rtol=0, atol=1e-12)


def test_straggler_gets_a_backup_on_another_agent_and_the_first_result_wins(demo: Path, tmp_path: Path) -> None:
    """Work moves to where capacity is: one task hangs on a slow agent; once it has run well past
    its model's measured mean, a copy starts on the other agent, finishes, and the slow one is
    killed. The result is still exact."""
    slow: list[str] = []

    def first_task_on_a1_is_slow(payload, agent):  # noqa: ANN001
        if agent == "a1" and not slow:
            slow.append(payload.task_id)
            return 60.0
        return 0.0

    factory = InProcessMesos.factory(AGENTS, tmp_path / "sb", delay=first_task_on_a1_is_slow)
    outcome = in_process(load_job(demo), factory).run()
    # The job did not wait out the slow copy's 60 s: it was killed (a finished copy is never killed).
    assert outcome.backups_launched == 1 and slow
    driver = factory.last  # type: ignore[attr-defined]
    assert slow[0] in driver.kills
    backup = [t for _ids, tasks, _f in driver.launches for t in tasks
              if t["task_id"]["value"].startswith(slow[0].rsplit(".a", 1)[0]) and t["task_id"]["value"] != slow[0]]
    assert len(backup) == 1 and backup[0]["agent_id"]["value"] == "a2"
    np.testing.assert_allclose(read_csv(outcome.output)[1][:, 0], direct_mean(demo.parent), rtol=0, atol=1e-12)


def test_member_that_keeps_failing_fails_the_job_and_leaves_no_output(demo: Path, tmp_path: Path) -> None:
    previous = demo.parent / "predictions.csv"
    previous.write_text("earlier results\n")

    def logistic_always_fails(payload, agent):  # noqa: ANN001
        return "broken node" if payload.model_name == "logistic" else None

    factory = InProcessMesos.factory(AGENTS, tmp_path / "sb", logistic_always_fails)
    with pytest.raises(JobFailed, match=r"model logistic failed on logistic\.s0000\d after 4 attempts: .*broken node"):
        in_process(load_job(demo), factory).run()
    assert previous.read_text() == "earlier results\n"


def write_job(directory: Path, body: str, models: dict[str, object], kinds: dict[str, str], outputs: dict[str, str],
              extra: dict[str, list[str]] | None = None) -> Path:
    import hashlib

    lines = [body]
    for name, model in models.items():
        path = directory / f"{name}.joblib"
        joblib.dump(model, path)
        lines += ["[[models]]", f'name = "{name}"', f'path = "{path.name}"',
                  f'sha256 = "{hashlib.sha256(path.read_bytes()).hexdigest()}"', f'kind = "{kinds[name]}"',
                  f'output = "{outputs[name]}"', "cpus = 0.5", "mem = 64", *(extra or {}).get(name, []), ""]
    job = directory / "job.toml"
    job.write_text("\n".join(lines))
    return job


def write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*(f"f{i}" for i in range(x.shape[1])), "target"])
        writer.writerows([*map(repr, map(float, row)), int(label)] for row, label in zip(x, y))


def test_stacking_job_equals_stacking_classifier(tmp_path: Path) -> None:
    """Members' CV fits run as tasks; the result equals StackingClassifier fitted in one process."""
    from sklearn.datasets import load_iris
    from sklearn.ensemble import StackingClassifier
    from sklearn.model_selection import train_test_split
    from sklearn.naive_bayes import GaussianNB
    from sklearn.tree import DecisionTreeClassifier

    x, y = load_iris(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.4, random_state=1, stratify=y)
    members = {"tree": DecisionTreeClassifier(max_depth=3, random_state=0).fit(x_train, y_train),
               "bayes": GaussianNB().fit(x_train, y_train)}
    write_csv(tmp_path / "train.csv", x_train, y_train)
    write_csv(tmp_path / "test.csv", x_test, y_test)
    body = "\n".join(['[job]', 'integration = "stacking"', 'output = "out.npy"', '',
                      '[data]', 'path = "test.csv"', 'label = "target"', 'rows_per_shard = 17', '',
                      '[stacking]', 'train = { path = "train.csv", label = "target" }', 'cv = 4',
                      'save_to = "stacking.joblib"', ''])
    job = write_job(tmp_path, body, members, {n: "classifier" for n in members}, {n: "predict_proba" for n in members})
    outcome = in_process(load_job(job), InProcessMesos.factory(AGENTS, tmp_path / "sb")).run()
    assert outcome.tasks == 2 * 4 + 2 * 4  # 4 folds and 4 shards per member
    reference = StackingClassifier([(n, m) for n, m in members.items()], cv=4).fit(x_train, y_train)
    result = np.load(outcome.output)
    assert np.array_equal(result["prediction"], reference.predict(x_test))
    probabilities = np.stack([result[f"proba_{c}"] for c in reference.classes_], axis=1)
    np.testing.assert_allclose(probabilities, reference.predict_proba(x_test), rtol=1e-12, atol=1e-15)
    assert (tmp_path / "stacking.joblib").is_file()


def test_stacking_with_members_on_their_own_columns(tmp_path: Path) -> None:
    """A member on two columns (cross-validation fits included) equals a column-selecting
    Pipeline inside StackingClassifier; a train file with other columns is refused."""
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_iris
    from sklearn.ensemble import StackingClassifier
    from sklearn.model_selection import train_test_split
    from sklearn.naive_bayes import GaussianNB
    from sklearn.pipeline import make_pipeline
    from sklearn.tree import DecisionTreeClassifier

    from framework.errors import JobSpecError

    x, y = load_iris(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.4, random_state=1, stratify=y)
    members = {"tree": DecisionTreeClassifier(max_depth=3, random_state=0).fit(x_train[:, 2:4], y_train),
               "bayes": GaussianNB().fit(x_train, y_train)}
    write_csv(tmp_path / "train.csv", x_train, y_train)
    write_csv(tmp_path / "test.csv", x_test, y_test)
    body = "\n".join(['[job]', 'integration = "stacking"', 'output = "out.npy"', '',
                      '[data]', 'path = "test.csv"', 'label = "target"', 'rows_per_shard = 25', '',
                      '[stacking]', 'train = { path = "train.csv", label = "target" }', 'cv = 3', ''])
    job = write_job(tmp_path, body, members, {n: "classifier" for n in members}, {n: "predict_proba" for n in members},
                    extra={"tree": ['features = ["f2", "f3"]']})
    outcome = in_process(load_job(job), InProcessMesos.factory(AGENTS, tmp_path / "sb")).run()
    columns = make_pipeline(ColumnTransformer([("petals", "passthrough", [2, 3])]),
                            DecisionTreeClassifier(max_depth=3, random_state=0))
    reference = StackingClassifier([("tree", columns), ("bayes", GaussianNB())], cv=3).fit(x_train, y_train)
    result = np.load(outcome.output)
    assert np.array_equal(result["prediction"], reference.predict(x_test))
    probabilities = np.stack([result[f"proba_{c}"] for c in reference.classes_], axis=1)
    np.testing.assert_allclose(probabilities, reference.predict_proba(x_test), rtol=1e-12, atol=1e-15)

    write_csv(tmp_path / "train.csv", x_train[:, :3], y_train)
    with pytest.raises(JobSpecError, match=r"stacking\.train: train\.csv has feature columns \['f0', 'f1', 'f2'\], "
                                           r"the data has \['f0', 'f1', 'f2', 'f3'\]"):
        in_process(load_job(job), InProcessMesos.factory(AGENTS, tmp_path / "sb2")).run()


def test_large_results_are_uploaded_and_checked(tmp_path: Path) -> None:
    """Shards whose results exceed the inline limit travel through the artifact server intact."""
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB

    from executor.protocol import INLINE_RESULT_LIMIT

    x, y = make_classification(n_samples=12_000, n_features=6, random_state=0)
    members = {"logistic": LogisticRegression().fit(x, y), "bayes": GaussianNB().fit(x, y)}
    np.save(tmp_path / "data.npy", x)
    body = "\n".join(['[job]', 'integration = "soft_vote"', 'output = "out.npy"', '',
                      '[data]', 'path = "data.npy"', 'rows_per_shard = 6000', ''])
    job = write_job(tmp_path, body, members, {n: "classifier" for n in members}, {n: "predict_proba" for n in members})
    assert 6000 * 2 * 8 > INLINE_RESULT_LIMIT
    outcome = JobRunner(load_job(job), work_dir=tmp_path / "work",
                        start_local_cluster=False, driver_factory=InProcessMesos.factory(AGENTS, tmp_path / "sb")).run()
    expected = np.average(np.stack([m.predict_proba(x) for m in members.values()]), axis=0)
    result = np.load(outcome.output)
    assert np.array_equal(np.stack([result["proba_0"], result["proba_1"]], axis=1), expected)
    assert list((tmp_path / "work" / "results").iterdir()) == []  # every upload consumed


def test_partly_used_agents_are_offered_their_free_share_and_never_overcommitted(demo: Path, tmp_path: Path) -> None:
    """Offers of what running tasks leave free (as a master makes them): the job still equals
    scikit-learn, and no ACCEPT asks for more than its offers hold."""
    agents = [{"agent": "a1", "cpus": 1.5, "mem": 4096}, {"agent": "a2", "cpus": 1.5, "mem": 4096}]  # 2 tasks each
    factory = InProcessMesos.factory(agents, tmp_path / "sb", delay=lambda payload, agent: 0.2,
                                     partial_offers=True)
    outcome = in_process(load_job(demo), factory).run()
    np.testing.assert_allclose(read_csv(outcome.output)[1][:, 0], direct_mean(demo.parent), rtol=0, atol=1e-12)
    driver = factory.last  # type: ignore[attr-defined]
    assert driver.overcommitted == []
    assert driver.partial_offers_made >= 1  # an agent was offered while tasks of ours ran on it
