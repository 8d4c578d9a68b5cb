"""``serve`` of a stacking job on the embedded cluster: ``serve`` runs the fit phase as ``run`` does
(the members' cross-validation folds as Mesos tasks, the final estimator fitted from their
numbers), then deploys the members with their stack methods; the gateway's answers are the batch
job's, bit for bit, which are ``StackingClassifier``'s.  A reload that changes a member is refused
in one line (the final estimator would need fitting again)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_iris
from sklearn.ensemble import StackingClassifier
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.tree import DecisionTreeClassifier

from deploy_helpers import Served, post, wait_for
from framework.job import JobRunner
from framework.jobspec import load_job

ROWS_PER_SHARD = 20


def write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*(f"f{i}" for i in range(x.shape[1])), "target"])
        writer.writerows([*map(repr, map(float, row)), int(label)] for row, label in zip(x, y))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stacking_job(directory: Path) -> tuple[Path, dict[str, object], tuple[np.ndarray, ...]]:
    """Iris, a tree on the petal columns and naive Bayes on all four, stacked with passthrough."""
    directory.mkdir(parents=True, exist_ok=True)
    x, y = load_iris(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.4, random_state=1, stratify=y)
    members = {"tree": DecisionTreeClassifier(max_depth=3, random_state=0).fit(x_train[:, 2:4], y_train),
               "bayes": GaussianNB().fit(x_train, y_train)}
    for name, model in members.items():
        joblib.dump(model, directory / f"{name}.joblib")
    write_csv(directory / "train.csv", x_train, y_train)
    write_csv(directory / "test.csv", x_test, y_test)
    job = directory / "job.toml"
    job.write_text(f"""
[job]
name = "stacked-iris"
integration = "stacking"
output = "out.npy"

[data]
path = "test.csv"
label = "target"
rows_per_shard = {ROWS_PER_SHARD}

[stacking]
train = {{ path = "train.csv", label = "target" }}
cv = 3
passthrough = true

[[models]]
name = "tree"
path = "tree.joblib"
sha256 = "{sha256(directory / 'tree.joblib')}"
kind = "classifier"
output = "predict_proba"
features = ["f2", "f3"]
cpus = 0.5
mem = 128

[[models]]
name = "bayes"
path = "bayes.joblib"
sha256 = "{sha256(directory / 'bayes.joblib')}"
kind = "classifier"
output = "predict_proba"
cpus = 0.5
mem = 128

[framework]
master = "local"

[serve]
address = "127.0.0.1:0"
scale_interval_s = 0.2
""")
    return job, members, (x_train, x_test, y_train)


def test_a_stacking_job_is_served_with_the_batch_jobs_answers(tmp_path: Path) -> None:
    job, members, (x_train, x_test, y_train) = stacking_job(tmp_path / "job")
    batch = np.load(JobRunner(load_job(job)).run().output)
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline

    petals = make_pipeline(ColumnTransformer([("petals", "passthrough", [2, 3])]),
                           DecisionTreeClassifier(max_depth=3, random_state=0))
    reference = StackingClassifier([("tree", petals), ("bayes", GaussianNB())], cv=3,
                                   passthrough=True).fit(x_train, y_train)
    assert np.array_equal(batch["prediction"], reference.predict(x_test))
    columns = [f"f{i}" for i in range(4)]
    with Served(job, tmp_path / "state") as served:
        assert any("stacking: 6 cross-validation tasks" in note for note in served.notes), served.notes
        # One request per shard of the batch job: the final estimator sees the same batches.
        answers = []
        for start in range(0, len(x_test), ROWS_PER_SHARD):
            status, answer = post(served.url, {"columns": columns, "data": x_test[start:start + ROWS_PER_SHARD]
                                               .tolist(), "members": True})
            assert status == 200, answer
            answers += answer["predictions"]
        assert [a["label"] for a in answers] == batch["prediction"].tolist()
        for c in (0, 1, 2):  # bit for bit: floats survive JSON exactly
            assert [a["proba"][str(c)] for a in answers] == batch[f"proba_{c}"].tolist()
        assert {r.member: r for r in served.controller.replicas.values()}.keys() == {"tree", "bayes"}
        # A reload that changes a member is refused (the final estimator was fitted on its CV
        # predictions); the deployment keeps answering as before.
        old_sha = sha256(job.parent / "tree.joblib")
        joblib.dump(DecisionTreeClassifier(max_depth=1, random_state=0).fit(x_train[:, 2:4], y_train),
                    job.parent / "tree.joblib")
        text = job.read_text()
        job.write_text(text.replace(old_sha, sha256(job.parent / "tree.joblib")))
        served.runner.reload_requested.set()
        wait_for(lambda: any("reload refused" in note for note in served.notes))
        [refused] = [note for note in served.notes if "reload refused" in note]
        assert "models (tree).sha256 changed; a stacking deployment's final estimator" in refused
        assert "\n" not in refused
        status, answer = post(served.url, {"columns": columns, "data": x_test[:ROWS_PER_SHARD].tolist()})
        assert status == 200 and answer["predictions"] == answers[:ROWS_PER_SHARD]


def test_a_stacking_train_file_with_other_columns_is_one_line_and_exit_2_before_serve_starts(tmp_path: Path) -> None:
    from test_serve_cli import run_cli

    job, _members, (x_train, _x_test, y_train) = stacking_job(tmp_path / "job")
    write_csv(job.parent / "train.csv", x_train[:, :3], y_train)
    done = run_cli("serve", job, "--state-dir", tmp_path / "state")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.endswith("stacking.train: train.csv has feature columns ['f0', 'f1', 'f2'], the data has "
                         "['f0', 'f1', 'f2', 'f3']; they must be the same, in the same order"), line
    assert not (tmp_path / "state").exists(), "serve created its state before checking its input"
