"""A two-source Parquet job (features + a second table joined by id, in another row order and
lacking one key, ``missing = "drop"``) on the embedded cluster with real pymesos drivers, real
executor processes and real HTTP: equal to scikit-learn on the joined frame, and each executor
downloads only the column groups its members take."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from framework.job import JobRunner
from framework.jobspec import load_job
from framework.sources import join_sources
from sources_helpers import MISSING_KEY, expected_mean, joined_frame, write_sources

pytestmark = pytest.mark.timeout(240)


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The Parquet output's keys (passed through) and predictions."""
    table = pq.read_table(path)
    assert table.column_names == ["id", "prediction"]
    return table.column("id").to_numpy(), table.column("prediction").to_numpy()


def test_two_source_parquet_job_equals_scikit_learn_and_executors_fetch_only_their_columns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Three agents, each model held to its own by a constraint: each agent's (shared) executor
    holds exactly the files of its model's column groups, each fetched once."""
    directory = tmp_path / "job"
    job = write_sources(directory, rows_per_shard=50)
    text = job.read_text().replace('output = "predictions.csv"',
                                   'output = "predictions.parquet"\npass_through = ["id"]')
    for model, zone in (("linear", "a"), ("logistic", "b"), ("both", "c")):
        text = text.replace(f'name = "{model}"\n',
                            f'name = "{model}"\nconstraints = {{ attribute = {{ zone = "{zone}" }} }}\n')
    job.write_text(text + '\n[local_cluster]\nkeep_sandboxes = true\nagents = ['
                   + ", ".join(f'{{ hostname = "{z}", cpus = 2, mem = 4096, attributes = {{ zone = "{z}" }} }}'
                               for z in "abc") + "]\n")
    spec = load_job(job)
    caplog.set_level(logging.DEBUG, logger="framework.artifacts")
    outcome = JobRunner(spec, work_dir=tmp_path / "work").run()
    # Exact: the same rows, in the primary's order, per shard, as the executors computed them.
    ids, predictions = read_predictions(outcome.output)
    assert np.array_equal(predictions, expected_mean(directory, 50))
    assert np.array_equal(ids, joined_frame(directory)[0])
    assert outcome.rows == 168 and outcome.tasks == 3 * 4
    assert outcome.sources is not None and outcome.sources["dropped_rows"] == 1
    assert outcome.sources["dropped_by_source"] == {"extra": 1}
    report = json.loads((directory / "report.json").read_text())
    assert report["sources"]["dropped_sample_keys"] == {"extra": [MISSING_KEY]}

    from framework.inspection import inspect_job_models

    joined = join_sources(spec, inspect_job_models(spec))
    files = joined.write_shards(tmp_path / "again")  # the same bytes the run served
    by_digest = {f.sha256: group for (group, _shard), f in files.files.items()}
    wanted = {model: {group for group, _columns in parts} for model, parts in files.parts.items()}
    assert wanted == {"linear": {0, 1}, "logistic": {2, 3}, "both": {0, 2}}
    sandboxes = [s for s in (tmp_path / "work" / "cluster" / "slaves").glob("*/frameworks/*/executors/*/runs/*")
                 if (s / "cache").is_dir() and not s.is_symlink()]  # not runs/latest
    held = sorted(sorted({by_digest[path.stem] for path in (sandbox / "cache").glob("*.npy")}) for sandbox in sandboxes)
    assert held == sorted(sorted(groups) for groups in wanted.values())  # one agent per model, its groups only
    # Each group's shard file was fetched by the one executor (agent) whose model takes it, once
    # (group 0 and 2 by two agents each).
    fetched = Counter(m.group(1) for r in caplog.records
                      for m in [re.search(r'"GET /<token>/files/([^ ]+\.npy) ', r.getMessage())] if m)
    takers = {0: 2, 1: 1, 2: 2, 3: 1}
    expected = {f"{source}-g{g}-{s:05d}.npy": takers[g] for source, g in
                (("features", 0), ("features", 1), ("extra", 2), ("extra", 3)) for s in range(4)}
    assert dict(fetched) == expected

