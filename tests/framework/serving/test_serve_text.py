"""``serve`` of a job with a text member on the embedded cluster: a request's row carries the text
column as a string; the text member's replicas get a 1-D array of ``str`` as the batch executor
gives its text shards; the answers are the batch job's, bit for bit per shard.  A text value that
is not a string, a missing text column and an ``.npy`` body (which cannot carry text) are refused
in one line."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from deploy_helpers import Served, post
from framework.job import JobRunner
from framework.jobspec import load_job
from serving_helpers import npy
from serving_helpers import post as post_body
from text_helpers import expected_mean, stacking_text_job, write_text_job

ROWS_PER_SHARD = 40


def test_a_text_member_is_served_with_the_batch_jobs_answers(tmp_path: Path) -> None:
    job = write_text_job(tmp_path / "job", rows_per_shard=ROWS_PER_SHARD)
    job.write_text(job.read_text() + '\n[serve]\naddress = "127.0.0.1:0"\nscale_interval_s = 0.2\n')
    batch = pa_csv.read_csv(JobRunner(load_job(job), work_dir=tmp_path / "work").run().output)
    expected = batch.column("prediction").to_numpy()
    assert np.array_equal(expected, expected_mean(job.parent, ROWS_PER_SHARD))
    table = pq.read_table(job.parent / "data.parquet")
    docs, f0, f1 = (table.column(c).to_pylist() for c in ("review", "f0", "f1"))
    with Served(job, tmp_path / "state") as served:
        answers: list[float] = []
        for start in range(0, len(docs), ROWS_PER_SHARD):  # one request per shard: the batch job's batches
            end = start + ROWS_PER_SHARD
            rows = [{"f0": a, "review": d, "f1": b} for a, b, d in zip(f0[start:end], f1[start:end], docs[start:end])]
            status, answer = post(served.url, {"rows": rows})
            assert status == 200, answer
            answers += answer["predictions"]
        assert answers == expected.tolist()
        # The columns/data form, text anywhere among the columns, and each member's own value.
        status, answer = post(served.url, {"columns": ["review", "f0", "f1"], "members": True,
                                           "data": [[d, a, b] for a, b, d in zip(f0[:3], f1[:3], docs[:3])]})
        assert status == 200 and set(answer["members"]) == {"text", "numbers"}
        # Bad input: one line, 400, naming the row and column.
        for body, message in (
                ({"rows": [{"f0": 1.0, "f1": 2.0, "review": 7}]}, 'rows[0].review: expected a string (a text column), '
                                                                  "got 7"),
                ({"rows": [{"f0": 1.0, "f1": 2.0}]}, "rows[0]: missing column 'review'"),
                ({"columns": ["f0", "f1"], "data": [[1.0, 2.0]]}, "columns: missing column 'review'"),
                ({"columns": ["f0", "review", "f1"], "data": [[1.0, None, 2.0]]},
                 "data[0][1] (review): expected a string (a text column), got null"),
                ({"rows": [{"f0": 1.0, "f1": "x", "review": "a day"}]}, 'rows[0].f1: expected a number, got "x"')):
            status, answer = post(served.url, body)
            assert (status, answer["error"]) == (400, message)
        status, answer = post_body(f"{served.url}/v1/predict", npy(np.zeros((1, 2))), "application/x-npy")
        assert status == 400 and answer["error"] == ("body: this job has text columns (review), which an .npy body "
                                                     "cannot carry; send JSON")
        with urllib.request.urlopen(f"{served.url}/v1/models", timeout=10) as response:
            models = json.loads(response.read())
        assert models["columns"] == ["f0", "f1"] and models["text_columns"] == ["review"]


def test_a_stacking_job_with_a_text_member_is_served_with_the_batch_jobs_answers(tmp_path: Path) -> None:
    """``serve`` fits the final estimator itself (its fit phase: each member's folds as Mesos tasks,
    the text member's on its column of the train set) and answers as the batch job did, bit for
    bit, one request per shard of the batch job."""
    job = write_text_job(tmp_path / "job", rows_per_shard=ROWS_PER_SHARD)
    stacking_text_job(job)
    job.write_text(job.read_text() + '\n[serve]\naddress = "127.0.0.1:0"\nscale_interval_s = 0.2\n')
    batch = np.load(JobRunner(load_job(job), work_dir=tmp_path / "work").run().output)
    table = pq.read_table(job.parent / "data.parquet")
    docs, f0, f1 = (table.column(c).to_pylist() for c in ("review", "f0", "f1"))
    with Served(job, tmp_path / "state") as served:
        assert any("cross-validation tasks (2 models x 3 folds)" in note for note in served.notes), served.notes
        answers: list[dict] = []
        for start in range(0, len(docs), ROWS_PER_SHARD):
            end = start + ROWS_PER_SHARD
            rows = [{"f0": a, "f1": b, "review": d} for a, b, d in zip(f0[start:end], f1[start:end], docs[start:end])]
            status, answer = post(served.url, {"rows": rows})
            assert status == 200, answer
            answers += answer["predictions"]
    assert [a["label"] for a in answers] == batch["prediction"].tolist()
    for c in (0, 1):  # bit for bit: floats survive JSON exactly
        assert [a["proba"][str(c)] for a in answers] == batch[f"proba_{c}"].tolist()
