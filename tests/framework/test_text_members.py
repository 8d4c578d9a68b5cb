"""Text members: a member that takes one string column (``text = "review"``) gets it as a 1-D
array of ``str``, from text shards (UTF-8 and offsets in plain ``.npy`` arrays, no pickle), beside numeric
members in one ensemble; bad declarations are refused in one line before anything launches."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from framework.dataset import spill_shards, text_bytes_per_row, text_column, write_text_shard
from framework.errors import JobSpecError
from framework.job import JobRunner, validate_job
from framework.jobspec import load_job
from framework.preflight import resolve_shard_rows
from harness import run_cli
from text_helpers import digest, documents, expected_mean, stacking_text_job, write_text_job

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("text-template") / "job"
    write_text_job(directory)
    return directory


@pytest.fixture()
def job(template: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "job"
    shutil.copytree(template, directory)
    return directory / "text.toml"


def read_predictions(path: Path) -> np.ndarray:
    return pa_csv.read_csv(path).column("prediction").to_numpy()


def test_text_and_numeric_members_on_the_embedded_cluster_equal_scikit_learn(job: Path, tmp_path: Path) -> None:
    """One ensemble, one text member and one numeric member, real executors: the answers are
    scikit-learn's on the same rows (the text member given a list of str), bit for bit per shard."""
    spec = load_job(job)
    assert spec.data.text == ("review",)
    assert "model text: classifier, predict_proba, weight 1.0; columns review" in validate_job(spec)
    outcome = JobRunner(spec, work_dir=tmp_path / "work").run()
    assert np.array_equal(read_predictions(outcome.output), expected_mean(job.parent, 40))
    assert outcome.rows == 150 and outcome.tasks == 2 * 4
    report = json.loads((job.parent / "report.json").read_text())
    assert set(report["members"]) == {"text", "numbers"}


def test_text_shards_are_utf8_and_offsets_in_plain_npy_arrays(job: Path, tmp_path: Path) -> None:
    spec = load_job(job)
    spilled = spill_shards(spec.data, ("f0", "f1"), tmp_path / "shards", rows_per_shard=64)
    docs = pq.read_table(job.parent / "data.parquet").column("review").to_pylist()
    texts = spilled.text_shards["review"]
    assert [(s.start, s.stop) for s in texts] == [(s.start, s.stop) for s in spilled.shards] == [
        (0, 64), (64, 128), (128, 150)]
    for shard in texts:
        assert shard.path is not None and shard.path.name == f"text0-{shard.index:05d}.npy"
        with shard.path.open("rb") as handle:  # numpy alone reads it, without pickle: offsets, then bytes
            offsets, data = np.load(handle, allow_pickle=False), np.load(handle, allow_pickle=False)
            assert handle.read() == b""
        expected = [d.encode() for d in docs[shard.start:shard.stop]]
        assert offsets.dtype == np.int64 and data.dtype == np.uint8
        assert data.tobytes() == b"".join(expected)  # UTF-8, no padding: ~4x less than <U for ASCII
        assert offsets.tolist() == np.concatenate([[0], np.cumsum([len(e) for e in expected])]).tolist()
        assert shard.array().tolist() == docs[shard.start:shard.stop]
        assert digest(shard.path) == shard.sha256
    assert spilled.shards[0].array().shape == (64, 2)  # the numeric shards are as before


def test_a_text_column_is_taken_from_arrows_buffers_exactly(tmp_path: Path) -> None:
    """Sliced and chunked columns, either string type: the rows' own bytes, and a document that
    ends in NUL keeps it (a fixed-width <U shard dropped it)."""
    docs = ["α β", "", "ends in NUL\x00", "déjà vu", "g"]
    for kind in (pa.string(), pa.large_string()):
        column = pa.chunked_array([pa.array(docs[:2], kind), pa.array(docs[2:], kind)]).slice(1, 3)
        offsets, data = text_column(column, "w", 0)
        assert offsets[0] == 0 and data.tobytes() == "".join(docs[1:4]).encode()
        shard = write_text_shard(0, 1, (offsets, data), tmp_path, "text0")
        assert (shard.start, shard.stop) == (1, 4) and shard.array().tolist() == docs[1:4]
    offsets, data = text_column(pa.array([], pa.string()), "w", 0)
    assert offsets.tolist() == [0] and len(data) == 0


def test_a_document_ending_in_nul_reaches_the_shard_whole(job: Path, tmp_path: Path) -> None:
    table = pq.read_table(job.parent / "data.parquet")
    docs = table.column("review").to_pylist()
    docs[5] += "\x00"
    pq.write_table(table.set_column(2, "review", pa.array(docs, pa.string())), job.parent / "data.parquet")
    spilled = spill_shards(load_job(job).data, ("f0", "f1"), tmp_path / "shards", rows_per_shard=64)
    assert spilled.text_shards["review"][0].array()[5] == docs[5]


def test_auto_shards_of_long_documents_are_sized_by_their_bytes(job: Path) -> None:
    """``rows_per_shard = "auto"`` counts a text column's UTF-8 bytes (sampled), not one number:
    1,200 documents of 20 KB on the default 2 cpus make shards of 16 MiB, 837 documents (it was
    1,000, as if the text column were one number wide)."""
    long_docs = ["w" * 19_995 + f"{i:05d}" for i in range(1200)]
    pq.write_table(pa.table({"f0": np.zeros(1200), "f1": np.ones(1200), "review": long_docs,
                             "target": np.arange(1200) % 2}), job.parent / "data.parquet")
    job.write_text(job.read_text().replace("rows_per_shard = 40\n", ""))
    spec = load_job(job)
    assert spec.data.rows_per_shard == "auto"
    assert text_bytes_per_row(spec.data) == 20_000 + 8
    assert resolve_shard_rows(spec).data.rows_per_shard == 16 * 2**20 // (2 * 8 + 20_008) == 837
    job.write_text(job.read_text().replace('text = "review"', 'text = "summary"'))
    assert text_bytes_per_row(load_job(job).data) == 0.0  # (the job's checks name the missing column)


def test_a_csv_text_column_is_read_as_strings(tmp_path: Path) -> None:
    """CSV: quoted text with commas and quotes, and a text column that looks like numbers in
    places, arrives as the strings written."""
    directory = tmp_path / "csv"
    job = write_text_job(directory, rows=30, rows_per_shard=30)
    table = pq.read_table(directory / "data.parquet")
    docs = table.column("review").to_pylist()
    docs[3], docs[7] = 'quoted, "comma" text', "12.5"
    table = table.set_column(2, "review", pa.array(docs, pa.string()))
    pa_csv.write_csv(table, directory / "data.csv")
    job.write_text(job.read_text().replace("data.parquet", "data.csv"))
    spilled = spill_shards(load_job(job).data, ("f0", "f1"), tmp_path / "shards")
    assert spilled.text_shards["review"][0].array().tolist() == docs


@pytest.mark.parametrize("edit, message", [
    (('text = "review"', 'text = "summary"'),
     r"data\.parquet: text column 'summary' \(a model's text\) is not in its columns \(f0, f1, review, target\)$"),
    (('text = "review"', 'text = "f0"'),
     r"data\.parquet: text column 'f0' \(a model's text\) holds double, expected text \(a string column\)$"),
    (('text = "review"', 'text = "review"\nfeatures = ["f0"]'),
     r"text\.toml: models\[0\] \(text\)\.text and features are both given; a text member takes one string "
     r"column \('review'\), a numeric member takes features$"),
    (('proba_class = 1\n\n', 'proba_class = 1\nfeatures = ["f0", "review"]\n\n'),
     r"text\.toml: models\[1\] \(numbers\)\.features names 'review', a text column; a numeric member takes "
     r"numbers \(a text member takes it with text = 'review'\)$"),
    (('text = "review"', 'text = ""'),
     r"text\.toml: models\[0\] \(text\)\.text must name the string column this model takes, got ''$"),
])
def test_bad_text_declarations_are_one_line_before_launch(job: Path, edit: tuple[str, str], message: str) -> None:
    job.write_text(job.read_text().replace(*edit, 1) if edit[0] != "proba_class = 1\n\n"
                   else _replace_last(job.read_text(), *edit))
    with pytest.raises(JobSpecError) as caught:
        validate_job(load_job(job))
    assert re.search(message, str(caught.value)), str(caught.value)
    assert "\n" not in str(caught.value)


def _replace_last(text: str, old: str, new: str) -> str:
    head, _, tail = text.rpartition(old.rstrip("\n"))
    return head + new.rstrip("\n") + tail


def test_a_text_column_left_to_a_numeric_member_is_refused(job: Path) -> None:
    """Without any text member, a string column among the default features is refused, as before."""
    text = job.read_text().replace('text = "review"\n', 'features = ["f0", "f1"]\n')
    job.write_text(text)
    with pytest.raises(JobSpecError, match=r"data\.parquet: column 'review' is string, expected numbers \(feature "
                                           r"columns must be numeric; name the ones to use in \[data\] features\)$"):
        validate_job(load_job(job))


def test_models_of_the_other_kind_are_refused_by_what_inspection_found(job: Path) -> None:
    """Inspection (in its subprocess) learns that the pipeline's first step takes text: declared
    as a numeric member it is refused, and a numeric model declared text is refused too."""
    swapped = (job.read_text().replace('path = "text.joblib"', 'path = "PLACEHOLDER"')
               .replace('path = "numbers.joblib"', 'path = "text.joblib"').replace("PLACEHOLDER", "numbers.joblib"))
    text_sha, numbers_sha = digest(job.parent / "text.joblib"), digest(job.parent / "numbers.joblib")
    swapped = swapped.replace(text_sha, "SHA").replace(numbers_sha, text_sha).replace("SHA", numbers_sha)
    job.write_text(swapped)
    with pytest.raises(JobSpecError, match=r"models\[0\] \(text\)\.text names the text column 'review', but the "
                                           r"model takes 2 numeric features \(n_features_in_\); give it features"):
        validate_job(load_job(job))
    job.write_text(swapped.replace('text = "review"\n', "").replace('label = "target"', 'label = "target"\n'
                                                                     'features = ["f0", "f1"]'))
    with pytest.raises(JobSpecError, match=r"models\[1\] \(numbers\): the model takes text \(its first step is a "
                                           r"text vectorizer\); name its string column with text = "):
        validate_job(load_job(job))


def test_missing_text_is_refused_naming_the_row(job: Path, tmp_path: Path) -> None:
    table = pq.read_table(job.parent / "data.parquet")
    docs = table.column("review").to_pylist()
    docs[97] = None
    pq.write_table(table.set_column(2, "review", pa.array(docs, pa.string())), job.parent / "data.parquet")
    spec = load_job(job)
    for check in (lambda: validate_job(spec), lambda: spill_shards(spec.data, ("f0",), tmp_path / "s", 40)):
        with pytest.raises(JobSpecError, match=r"data\.parquet: text column 'review', data row 98: missing text "
                                               r"\(null\); a text member needs a string in every row"):
            check()


def test_a_job_of_text_members_only(job: Path, tmp_path: Path) -> None:
    """Data holding nothing but the text column (no numeric features, no label) is a job too."""
    pq.write_table(pq.read_table(job.parent / "data.parquet").select(["review"]), job.parent / "data.parquet")
    text = job.read_text().replace('label = "target"\n', "").replace('report = "report.json"\n', "")
    job.write_text(text[:text.index('[[models]]\nname = "numbers"')])
    spec = load_job(job)
    assert "0 features" in validate_job(spec)
    spilled = spill_shards(spec.data, (), tmp_path / "shards")
    assert [s.rows for s in spilled.text_shards["review"]] == [40, 40, 40, 30]
    assert spilled.shards[0].array().shape == (40, 0)


def test_bad_text_input_exits_2_through_the_command_line(job: Path) -> None:
    job.write_text(job.read_text().replace('text = "review"', 'text = "f1"'))
    before = (job.parent / "data.parquet").stat().st_mtime_ns
    result = run_cli("run", job, "--state-dir", job.parent / "state")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].endswith("data.parquet: text column 'f1' (a model's text) holds double, expected text "
                              "(a string column)"), result.stderr
    assert not (job.parent / "predictions.csv").exists()
    assert (job.parent / "data.parquet").stat().st_mtime_ns == before


def column_selecting_stack(cv: int) -> Any:
    """``StackingClassifier`` over the job's members, each behind the selection of its columns from
    one object array (``f0``, ``f1``, ``review``): the text member's is the 1-D column of str."""
    from sklearn.ensemble import StackingClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    review = FunctionTransformer(lambda x: x[:, 2])
    numbers = FunctionTransformer(lambda x: x[:, :2].astype(np.float64))
    return StackingClassifier([("text", make_pipeline(review, TfidfVectorizer(), LogisticRegression(max_iter=1000))),
                               ("numbers", make_pipeline(numbers, LogisticRegression(max_iter=1000)))], cv=cv)


def as_objects(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(path)
    x = np.empty((table.num_rows, 3), dtype=object)
    x[:, 0], x[:, 1] = table.column("f0").to_numpy(), table.column("f1").to_numpy()
    x[:, 2] = table.column("review").to_pylist()
    return x, table.column("target").to_numpy()


def test_a_stacking_job_of_text_and_numeric_members_equals_stacking_classifier(job: Path, tmp_path: Path) -> None:
    """The text member's cross-validation folds run as Mesos tasks on its column of the train set
    (a text shard), beside the numeric member's on theirs, on real executors: the final
    estimator and every answer equal scikit-learn's ``StackingClassifier`` over column-selecting
    pipelines of the same members, fitted in one process."""
    train = stacking_text_job(job)
    spec = load_job(job)
    assert spec.stacking is not None and spec.stacking.train.text == ("review",)
    outcome = JobRunner(spec, work_dir=tmp_path / "work").run()
    assert outcome.tasks == 2 * 3 + 2 * 4  # 3 folds and 4 shards per member
    reference = column_selecting_stack(3).fit(*as_objects(train))
    x_test, _ = as_objects(job.parent / "data.parquet")
    result = np.load(outcome.output)
    assert np.array_equal(result["prediction"], reference.predict(x_test))
    probabilities = np.stack([result[f"proba_{c}"] for c in reference.classes_], axis=1)
    np.testing.assert_allclose(probabilities, reference.predict_proba(x_test), rtol=1e-12, atol=1e-15)
    before = outcome.output.read_bytes()

    pq.write_table(pq.read_table(train).drop_columns(["review"]), train)  # the train set without the text
    with pytest.raises(JobSpecError, match=r"train\.parquet: text column 'review' \(a model's text\) is not in "):
        JobRunner(load_job(job), work_dir=tmp_path / "work2").run()
    assert outcome.output.read_bytes() == before


def test_documents_are_deterministic() -> None:
    first, second = documents(20, seed=3), documents(20, seed=3)
    assert first[0] == second[0] and np.array_equal(first[1], second[1])
    assert joblib.hash(first) == joblib.hash(second)


def test_inspect_says_a_text_pipeline_takes_text(job: Path) -> None:
    result = run_cli("inspect", job.parent / "text.joblib")
    assert result.returncode == 0, result.stderr
    assert '  input: text (one string column per row: give it text = "column" in a job)' in result.stdout
    result = run_cli("inspect", job.parent / "numbers.joblib", "--json")
    assert json.loads(result.stdout)["takes_text"] is False
