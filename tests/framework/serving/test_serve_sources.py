"""``serve`` of a ``[[sources]]`` job on the embedded cluster: a request carries the columns the
members take, whichever source each comes from (``source.column`` where two sources share a
name); each member's replicas get its columns in its order, as a batch task's parts assemble
them; the answers are the batch job's, bit for bit per shard."""

from __future__ import annotations

from pathlib import Path

import pyarrow.csv as pa_csv

from deploy_helpers import Served, post
from framework.ensemble import MemberSpec
from framework.job import JobRunner
from framework.jobspec import load_job
from framework.serving.service import request_columns
from sources_helpers import EXTRA, FEATURES, joined_frame, write_sources

ROWS_PER_SHARD = 50


def test_a_sources_job_is_served_with_the_batch_jobs_answers(tmp_path: Path) -> None:
    job = write_sources(tmp_path / "job", rows_per_shard=ROWS_PER_SHARD)
    job.write_text(job.read_text() + '\n[serve]\naddress = "127.0.0.1:0"\nscale_interval_s = 0.2\n')
    expected = pa_csv.read_csv(JobRunner(load_job(job), work_dir=tmp_path / "work").run().output) \
        .column("prediction").to_pylist()
    _ids, x, _labels = joined_frame(job.parent)  # f0..f9 then e0..e4, the joined rows in output order
    columns = FEATURES + EXTRA
    assert len(x) == len(expected)
    with Served(job, tmp_path / "state") as served:
        assert served.runner.gateway.columns == tuple(columns)
        answers = []
        for start in range(0, len(x), ROWS_PER_SHARD):  # the batch job's shards
            status, answer = post(served.url, {"rows": [dict(zip(columns, map(float, row)))
                                                        for row in x[start:start + ROWS_PER_SHARD]]})
            assert status == 200, answer
            answers += answer["predictions"]
        assert answers == expected


def test_request_columns_name_a_column_two_sources_share_by_its_source() -> None:
    members = [MemberSpec(name="a", kind="regressor", output="predict"),
               MemberSpec(name="b", kind="regressor", output="predict")]
    sources = {"a": [("left", "x"), ("left", "y")], "b": [("right", "x"), ("left", "y"), ("right", "z")]}
    columns, named = request_columns(sources, members)
    assert columns == ("left.x", "y", "right.x", "z")
    assert [m.features for m in named] == [("left.x", "y"), ("right.x", "y", "z")]
