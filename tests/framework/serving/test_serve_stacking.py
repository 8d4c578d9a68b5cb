"""``serve`` of a stacking job on the embedded cluster: ``serve`` fits the final estimator from the
numbers ``run`` recorded beside ``save_to`` when they are for the same members, train data and
``[stacking]``, else runs the fit phase as ``run`` does (the members' cross-validation folds as
Mesos tasks, the final estimator fitted from their numbers); then it deploys the members with
their stack methods.  Either way the gateway's answers are the batch job's, bit for bit, which are
``StackingClassifier``'s/``StackingRegressor``'s.  A reload that changes a member rolls the whole
stack: the final estimator fitted again, the new replicas started, then the gateway switched to
both in one step, under load, without a failed request or an answer mixing old and new."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import StackingClassifier
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.tree import DecisionTreeClassifier

from deploy_helpers import LoopingClient, Served, post, wait_for
from framework.job import JobRunner
from framework.jobspec import load_job
from job_files import model_table

ROWS_PER_SHARD = 20


def write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*(f"f{i}" for i in range(x.shape[1])), "target"])
        integral = np.issubdtype(np.asarray(y).dtype, np.integer)
        writer.writerows([*map(repr, map(float, row)), int(label) if integral else repr(float(label))]
                         for row, label in zip(x, y))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_stacking_job(directory: Path, members: dict[str, Any], kind: str, output: str,
                       data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], passthrough: bool,
                       features: dict[str, list[str]] | None = None, save_to: bool = False) -> Path:
    """A stacking job over ``members`` (fitted), its final estimator trained on ``data``'s
    (x_train, y_train), predicting (x_test, y_test); the gateway on any free port; ``save_to``: the
    batch job saves its fit (and records its numbers beside it)."""
    directory.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = data
    write_csv(directory / "train.csv", x_train, y_train)
    write_csv(directory / "test.csv", x_test, y_test)
    models = "\n".join(model_table(directory, name, model, kind=kind, output=output,
                                   features=(features or {}).get(name), cpus=0.5, mem=128)
                       for name, model in members.items())
    job = directory / "job.toml"
    job.write_text(f"""
[job]
name = "stacked"
integration = "stacking"
output = "out.npy"

[data]
path = "test.csv"
label = "target"
rows_per_shard = {ROWS_PER_SHARD}

[stacking]
train = {{ path = "train.csv", label = "target" }}
cv = 3
passthrough = {str(passthrough).lower()}
{'save_to = "stacking.joblib"' if save_to else ""}

{models}
[framework]
master = "local"

[serve]
address = "127.0.0.1:0"
scale_interval_s = 0.2
""")
    return job


def stacking_job(directory: Path) -> tuple[Path, dict[str, object], tuple[np.ndarray, ...]]:
    """Iris, a tree on the petal columns and naive Bayes on all four, stacked with passthrough."""
    x, y = load_iris(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.4, random_state=1, stratify=y)
    members: dict[str, Any] = {
        "tree": DecisionTreeClassifier(max_depth=3, random_state=0).fit(x_train[:, 2:4], y_train),
        "bayes": GaussianNB().fit(x_train, y_train)}
    job = write_stacking_job(directory, members, "classifier", "predict_proba", (x_train, y_train, x_test, y_test),
                             True, {"tree": ["f2", "f3"]}, save_to=True)
    return job, members, (x_train, x_test, y_train)


def served_answers(url: str, x: np.ndarray) -> list[Any]:
    """The gateway's predictions for ``x``, one request per shard of the batch job (the final
    estimator then sees the batch job's batches)."""
    columns = [f"f{i}" for i in range(x.shape[1])]
    answers = []
    for start in range(0, len(x), ROWS_PER_SHARD):
        status, answer = post(url, {"columns": columns, "data": x[start:start + ROWS_PER_SHARD].tolist()})
        assert status == 200, answer
        answers += answer["predictions"]
    return answers


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
        # The batch job recorded its fit's numbers beside save_to: no cross-validation task here.
        assert (job.parent / "stacking.joblib.fit.npz").is_file()
        assert any("recorded by run in" in note and "no cross-validation task" in note for note in served.notes)
        assert not any("cross-validation tasks" in note for note in served.notes), served.notes
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


def test_a_stacking_regressor_is_served_with_the_batch_jobs_answers(tmp_path: Path) -> None:
    """Diabetes, a tree and nearest neighbours stacked by RidgeCV (the default): per shard, the
    batch job's numbers, which are StackingRegressor's."""
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import StackingRegressor
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.tree import DecisionTreeRegressor

    x, y = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0)
    members = {"tree": DecisionTreeRegressor(max_depth=4, random_state=0).fit(x_train, y_train),
               "neighbours": KNeighborsRegressor(n_neighbors=7).fit(x_train, y_train)}
    job = write_stacking_job(tmp_path / "job", members, "regressor", "predict", (x_train, y_train, x_test, y_test),
                             False)
    batch = np.load(JobRunner(load_job(job)).run().output)
    reference = StackingRegressor(list(members.items()), cv=3).fit(x_train, y_train)
    np.testing.assert_allclose(batch["prediction"], reference.predict(x_test), rtol=1e-12)
    with Served(job, tmp_path / "state") as served:
        # No save_to: nothing recorded, so serve runs the folds itself.
        assert any("stacking: 6 cross-validation tasks" in note for note in served.notes), served.notes
        assert served_answers(served.url, x_test) == batch["prediction"].tolist()


def test_a_recorded_fit_is_reused_only_for_the_same_members_train_data_and_stacking(tmp_path: Path) -> None:
    """The record's key names every input of the fit; a record made for other inputs, a missing
    one and a damaged one are not reused (serve then runs the folds); what is read back is exact."""
    from framework.ensemble import FoldPlan
    from framework.job import prepare
    from framework.stacking_run import fit_key, fit_record_path, read_fit_record, write_fit_record

    job, _members, (x_train, _x_test, y_train) = stacking_job(tmp_path / "job")
    spec = load_job(job)
    _info, members, _estimators = prepare(spec)
    methods = {m.name: "predict_proba" for m in members}
    key = fit_key(spec, members, methods)
    record = fit_record_path(spec)
    assert record == job.parent / "stacking.joblib.fit.npz"
    assert read_fit_record(record, key) is None  # none yet
    meta = np.random.default_rng(0).normal(size=(len(y_train), 6))
    plan = FoldPlan(folds=(), y_fit=np.asarray(y_train) % 3, classes=np.array([0, 1, 2]), n_samples=len(y_train))
    assert write_fit_record(record, key, meta, plan)
    got_meta, got_y, got_classes = read_fit_record(record, key)
    assert got_meta.tobytes() == meta.tobytes() and got_y.dtype == plan.y_fit.dtype
    assert np.array_equal(got_y, plan.y_fit) and np.array_equal(got_classes, plan.classes)
    # Another member file, other train rows, another [stacking] or stack method: another key.
    text = job.read_text()
    changed = [load_job(_write(job, text.replace("cv = 3", "cv = 4")))]
    joblib.dump(GaussianNB(var_smoothing=1e-3).fit(x_train, y_train), job.parent / "bayes.joblib")
    changed.append(load_job(_write(job, text.replace(spec.model("bayes").sha256,
                                                     sha256(job.parent / "bayes.joblib")))))
    assert all(fit_key(other, members, methods) != key for other in changed)
    assert fit_key(spec, members, {**methods, "tree": "predict"}) != key
    _write(job, text)
    write_csv(job.parent / "train.csv", x_train[::-1], y_train[::-1])
    assert fit_key(spec, members, methods) != key
    assert read_fit_record(record, fit_key(spec, members, methods)) is None
    record.write_bytes(record.read_bytes()[:100])  # damaged: not reused
    assert read_fit_record(record, key) is None
    # Labels held as Python objects are not recorded (they could only be read back unpickled).
    assert not write_fit_record(tmp_path / "objects.npz", key, meta,
                                FoldPlan((), plan.y_fit, np.array(["a", 1], dtype=object), len(y_train)))
    assert not (tmp_path / "objects.npz").exists()


def _write(job: Path, text: str) -> Path:
    job.write_text(text)
    return job


class ShardClient(LoopingClient):
    """Requests in a loop on threads, each one shard of the batch job's (so its answer is the batch
    job's for those rows); every answer kept as (thread, shard, status, predictions)."""

    def __init__(self, url: str, x: np.ndarray, threads: int = 2) -> None:
        self.url, self.x = url, x
        self.answers: list[tuple[int, int, int, Any]] = []
        super().__init__(threads)

    def _loop(self, thread: int) -> None:
        columns = [f"f{i}" for i in range(self.x.shape[1])]
        shards = -(-len(self.x) // ROWS_PER_SHARD)
        shard = thread
        while not self.stopped.is_set():
            rows = self.x[shard * ROWS_PER_SHARD:(shard + 1) * ROWS_PER_SHARD].tolist()
            status, answer = post(self.url, {"columns": columns, "data": rows})
            self.answers.append((thread, shard, status, answer.get("predictions", answer)))
            shard = (shard + 1) % shards


def batch_shards(output: Path) -> list[list[Any]]:
    """The batch job's predictions per shard, as the gateway answers them."""
    batch = np.load(output)
    answers = [{"label": int(label), "proba": {str(c): float(batch[f"proba_{c}"][i]) for c in (0, 1, 2)}}
               for i, label in enumerate(batch["prediction"].tolist())]
    return [answers[start:start + ROWS_PER_SHARD] for start in range(0, len(answers), ROWS_PER_SHARD)]


def swap_model(job: Path, name: str, model: Any) -> None:
    """Write ``model`` as member ``name``'s file and its sha256 into the job file."""
    old = sha256(job.parent / f"{name}.joblib")
    joblib.dump(model, job.parent / f"{name}.joblib")
    job.write_text(job.read_text().replace(old, sha256(job.parent / f"{name}.joblib")))


def test_a_stacking_deployment_rolls_to_new_members_and_a_refitted_final_estimator_in_one_step(
        tmp_path: Path) -> None:
    """A reload with a new member file refits the final estimator (here by the fit phase: run's
    record is for the old members), starts the new replicas beside the old, then switches: under
    load no request fails, each answer is the old batch job's or the new one's for its rows (never
    old members under the new final estimator), and no thread sees old after new.  Back to the
    old member file, the record run left is reused; a refit that fails changes nothing."""
    job, _members, (x_train, x_test, y_train) = stacking_job(tmp_path / "job")
    old = batch_shards(JobRunner(load_job(job)).run().output)  # and records its fit beside save_to
    new_tree = DecisionTreeClassifier(max_depth=1, random_state=0).fit(x_train[:, 2:4], y_train)
    shutil.copytree(job.parent, tmp_path / "new")
    swap_model(tmp_path / "new" / "job.toml", "tree", new_tree)
    new = batch_shards(JobRunner(load_job(tmp_path / "new" / "job.toml")).run().output)
    assert old != new
    old_text = job.read_text()
    with Served(job, tmp_path / "state") as served:
        controller = served.controller
        old_replicas = set(controller.replicas)
        with ShardClient(served.url, x_test) as client:
            wait_for(lambda: len(client.answers) >= 10)
            swap_model(job, "tree", new_tree)
            served.runner.reload_requested.set()
            wait_for(lambda: any("switched to the new replicas of tree" in n for n in served.notes)
                     and not old_replicas & {r.task_id for r in controller.replicas.values() if r.member == "tree"})
            answered = len(client.answers)
            wait_for(lambda: len(client.answers) >= answered + 10)
        assert [a for a in client.answers if a[2] != 200] == []
        for thread in (0, 1):
            said = ["old" if answer == old[shard] else "new" if answer == new[shard] else f"neither: {answer}"
                    for t, shard, _status, answer in client.answers if t == thread]
            assert set(said) <= {"old", "new"}, [s for s in said if s not in ("old", "new")][:1]
            assert said == sorted(said, key=["old", "new"].index), said  # old answers, then new ones only
            assert said[0] == "old" and said[-1] == "new"
        assert any("stacking: 6 cross-validation tasks" in n for n in served.notes), served.notes
        assert "bayes" not in controller.held and not controller.held
        # A refit that fails ([stacking] names a train file without the data's columns) changes nothing.
        write_csv(job.parent / "train3.csv", x_train[:, :3], y_train)
        job.write_text(job.read_text().replace('path = "train.csv"', 'path = "train3.csv"'))
        replicas = set(controller.replicas)
        served.runner.reload_requested.set()
        wait_for(lambda: any("reload refused" in n for n in served.notes))
        [refused] = [n for n in served.notes if "reload refused" in n]
        assert "the stacking refit failed" in refused and "train3.csv has feature columns" in refused, refused
        assert "\n" not in refused
        assert served_answers(served.url, x_test) == [a for shard in new for a in shard]
        assert set(controller.replicas) == replicas
        # Back to the old member file: run's record is for it, so no cross-validation task.
        job.write_text(old_text)
        joblib.dump(_members["tree"], job.parent / "tree.joblib")
        assert load_job(job).model("tree").sha256 == sha256(job.parent / "tree.joblib")
        folds = len([n for n in served.notes if "cross-validation tasks" in n])
        with ShardClient(served.url, x_test) as client:
            wait_for(lambda: len(client.answers) >= 10)
            served.runner.reload_requested.set()
            wait_for(lambda: len([n for n in served.notes if "switched to the new replicas of tree" in n]) == 2)
            answered = len(client.answers)
            wait_for(lambda: len(client.answers) >= answered + 10)
        assert [a for a in client.answers if a[2] != 200] == []
        assert any("recorded by run in" in n for n in served.notes[-6:]), served.notes[-6:]
        assert len([n for n in served.notes if "cross-validation tasks" in n]) == folds
        assert served_answers(served.url, x_test) == [a for shard in old for a in shard]


def test_a_reload_that_would_change_an_unchanged_members_stack_method_is_one_line(tmp_path: Path) -> None:
    """Its running replicas serve the old method of the same model file: they cannot switch with
    the final estimator, so the reload is refused (a changed member's file may change its method)."""
    from framework.errors import JobSpecError
    from framework.job import prepare
    from framework.serving.service import _check_stack_methods

    job, _members, (x_train, _x_test, y_train) = stacking_job(tmp_path / "job")
    before = load_job(job)
    running = {"tree": "predict_proba", "bayes": "predict_proba"}
    job.write_text(job.read_text().replace("cv = 3", 'cv = 3\nstack_method = "predict"'))
    after = load_job(job)
    with pytest.raises(JobSpecError, match=r"stacking.stack_method: models \(tree\) would be stacked with predict, "
                                           r"its running replicas serve predict_proba of the same model file"):
        _check_stack_methods(before, after, prepare(after)[2], running)
    swap_model(job, "tree", DecisionTreeClassifier(max_depth=2, random_state=0).fit(x_train[:, 2:4], y_train))
    swap_model(job, "bayes", GaussianNB(var_smoothing=1e-3).fit(x_train, y_train))
    _check_stack_methods(before, load_job(job), prepare(load_job(job))[2], running)  # both files changed: fine


@pytest.mark.faults
def test_a_held_replica_that_crashes_during_a_stacking_update_is_replaced_with_its_own_model_file(
        tmp_path: Path) -> None:
    """While a stacking update holds (the gateway answers with the old replicas and final estimator
    until every new replica is ready), the old tree replica's process is killed: a replica of the
    old model file replaces it and answers as the old one did; the new replica's process is killed
    too: a new one replaces it; the gateway switches only once that one is ready, and the old
    replica drains then.  The tree's replicas run in executors of their own (``per_model``), one
    per agent (``max_per_agent = 1``), so each kill takes exactly one replica."""
    job, _members, (x_train, x_test, y_train) = stacking_job(tmp_path / "job")
    text = job.read_text().replace('master = "local"\n', 'master = "local"\nexecutors = "per_model"\n')
    text = text.replace('features = ["f2", "f3"]\n', 'features = ["f2", "f3"]\nconstraints = { max_per_agent = 1 }\n')
    job.write_text(text + "".join(f"\n[serve.models.{name}]\nmin_replicas = 1\nmax_replicas = 1\n"
                                  for name in ("tree", "bayes")))
    with Served(job, tmp_path / "state") as served:
        controller = served.controller
        old_sha = controller.targets["tree"].sha256
        old_answers = served_answers(served.url, x_test)
        [old] = controller.ready("tree")
        # The new tree's replicas pass their health checks only once the test lets them: the hold
        # lasts while the test kills replicas.
        new_may_be_ready = threading.Event()
        check = controller.health_check

        def held_back(replica: Any) -> bool:
            if replica.member == "tree" and replica.sha256 != old_sha:
                new_may_be_ready.wait(120)
            return bool(check(replica))

        controller.health_check = held_back

        def starting_new() -> list[Any]:
            with controller.lock:
                return [r for r in controller.replicas.values() if r.member == "tree" and r.sha256 != old_sha
                        and r.state == "checking"]

        try:
            swap_model(job, "tree", DecisionTreeClassifier(max_depth=1, random_state=0).fit(x_train[:, 2:4], y_train))
            served.runner.reload_requested.set()
            [new] = wait_for(lambda: controller.held and starting_new())
            assert new.agent_id != old.agent_id and old.pid and new.pid and new.pid != old.pid
            os.kill(old.pid, signal.SIGKILL)  # the old tree replica's executor: that replica only
            wait_for(lambda: old.task_id not in controller.replicas)
            [replacement] = wait_for(lambda: controller.ready("tree", old_sha), timeout=60)
            assert replacement.agent_id == old.agent_id and controller.held == {"tree": old_sha}
            assert served_answers(served.url, x_test) == old_answers  # the old file, the old stack method
            os.kill(new.pid, signal.SIGKILL)  # the new tree replica's executor, before it was ready
            wait_for(lambda: new.task_id not in controller.replicas)
            [new_again] = wait_for(starting_new)
            assert new_again.agent_id == new.agent_id
            assert not any("switched" in n for n in served.notes) and controller.held == {"tree": old_sha}
            assert served_answers(served.url, x_test) == old_answers
        finally:
            new_may_be_ready.set()
        wait_for(lambda: any("switched to the new replicas of tree" in n for n in served.notes))
        wait_for(lambda: [r.sha256 for r in controller.ready("tree")] == [new_again.sha256]
                 and len(controller.replicas) == 2)
        assert not controller.held and replacement.task_id not in controller.replicas
        assert served_answers(served.url, x_test) != old_answers
