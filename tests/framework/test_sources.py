"""Several sources joined by key (``framework.sources``): the job file's [[sources]] and per-model
source fields, the join and its policies, column groups and shard files (no cluster here)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from framework.errors import JobSpecError
from framework.job import prepare, validate_job
from framework.jobspec import SourceColumns, load_job
from framework.sources import JoinedData
from sources_helpers import EXTRA, FEATURES, MISSING_KEY, joined_frame, write_sources


@pytest.fixture()
def job(tmp_path: Path) -> Path:
    return write_sources(tmp_path / "job")


def edited(job: Path, old: str, new: str) -> Path:
    text = job.read_text()
    assert old in text, old
    job.write_text(text.replace(old, new, 1))
    return job


def test_job_file_reads_sources_and_model_columns(job: Path) -> None:
    spec = load_job(job)
    assert [(s.name, s.path.name, s.key) for s in spec.sources] == [("features", "features.parquet", "id"),
                                                                     ("extra", "extra.parquet", "id")]
    assert spec.data.primary == "features" and spec.data.missing == "drop" and spec.data.path.name == "features.parquet"
    assert spec.model("linear").inputs == (SourceColumns("features"),)
    assert spec.model("both").inputs == (SourceColumns("extra", ("e2", "e3")), SourceColumns("features", ("f0", "f1")))


@pytest.mark.parametrize(("old", "new", "message"), [
    ('source = "extra"', 'source = "text"',
     r"models\[1\] \(logistic\)\.source names 'text', which is not a \[\[sources\]\] name \(known: features, extra\)"),
    ('columns = { extra', 'columns = { txt = ["a"], extra',
     r"models\[2\] \(both\)\.columns\.txt names 'txt', which is not a \[\[sources\]\] name"),
    ('columns = { extra = ["e2", "e3"]', 'columns = { extra = []',
     r"models\[2\] \(both\)\.columns\.extra must be a non-empty list of column names"),
    ('source = "extra"', 'source = "extra"\ncolumns = { extra = ["e0"] }',
     r"models\[1\] \(logistic\)\.columns and source are both given"),
    ('missing = "drop"', 'missing = "skip"', r"data\.missing must be one of error, drop; got 'skip'"),
    ('primary = "features"', 'primary = "nope"', r"data\.primary names 'nope', which is not a \[\[sources\]\] name"),
    ('primary = "features"', 'path = "features.parquet"', r"data\.path and \[\[sources\]\] are both given"),
    ('key = "id"', 'key = ""', r"sources\[0\] \(features\)\.key must name the source's key column"),
    ('name = "extra"', 'name = "features"', r"sources has two sources named 'features'"),
    ('path = "extra.parquet"', 'path = "extra.txt"',
     r"sources\[1\] \(extra\)\.path names 'extra.txt', which is not a file"),
])
def test_bad_source_fields_are_one_line_naming_the_field(job: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(JobSpecError, match=message) as caught:
        load_job(edited(job, old, new))
    assert "\n" not in str(caught.value)


def test_source_fields_without_sources_are_refused(tmp_path: Path) -> None:
    from framework.demo import train_demo

    demo = train_demo(tmp_path / "demo")
    edited(demo, 'proba_class = 1', 'proba_class = 1\nsource = "features"')
    with pytest.raises(JobSpecError, match=r"models\[1\] \(logistic\)\.source names a source, but the job has no "
                                           r"\[\[sources\]\] tables"):
        load_job(demo)


def test_join_keeps_the_primary_order_and_drops_missing_keys_for_every_member(job: Path) -> None:
    joined, members, _ = prepare(load_job(job))
    assert isinstance(joined, JoinedData)
    ids, values, labels = joined_frame(job.parent)
    assert np.array_equal(joined.keys.to_numpy(), ids) and MISSING_KEY not in ids
    assert np.array_equal(joined.labels, labels)
    assert joined.dropped_rows == 1 and joined.dropped == {"extra": 1}
    assert joined.describe()["dropped_sample_keys"] == {"extra": [MISSING_KEY]}
    assert "dropped 1 rows whose key another source lacks (extra lack 1 (e.g. 1407))" in joined.summary()
    assert {m.name: m.features for m in members} == {"linear": tuple(FEATURES), "logistic": tuple(EXTRA),
                                                     "both": ("e2", "e3", "f0", "f1")}


def test_shard_files_hold_each_column_group_once_in_output_order(job: Path, tmp_path: Path) -> None:
    joined, _, _ = prepare(load_job(job))
    assert isinstance(joined, JoinedData)
    # Groups: the columns one set of members takes; "both" shares f0, f1 with linear and e2, e3 with logistic.
    assert [(g.source, g.columns, sorted(g.models)) for g in joined.groups] == [
        ("features", ("f0", "f1"), ["both", "linear"]), ("features", tuple(FEATURES[2:]), ["linear"]),
        ("extra", ("e2", "e3"), ["both", "logistic"]), ("extra", ("e0", "e1", "e4"), ["logistic"])]
    _ids, values, _labels = joined_frame(job.parent)
    names = FEATURES + EXTRA
    for budget in (10**9, 20_000):  # one wave; several waves (each reading each source again)
        shards = joined.write_shards(tmp_path / f"shards-{budget}", budget_bytes=budget)
        assert shards.shard_rows == [50, 50, 50, 18]
        for model, columns in (("linear", FEATURES), ("logistic", EXTRA), ("both", ["e2", "e3", "f0", "f1"])):
            assembled = np.concatenate([
                np.concatenate([np.load(shards.files[(group, shard)].path)[:, indexes]
                                for group, indexes in shards.parts[model]], axis=1)
                for shard in range(len(shards.shard_rows))])
            assert np.array_equal(assembled, values[:, [names.index(c) for c in columns]]), model


def test_missing_key_with_error_policy_is_one_line_naming_source_and_key(job: Path) -> None:
    with pytest.raises(JobSpecError, match=rf"source extra has no row for key {MISSING_KEY} of the primary source "
                                           r"features \(1 key\(s\) missing\); set \[data\] missing = \"drop\""):
        prepare(load_job(edited(job, 'missing = "drop"', 'missing = "error"')))


def test_duplicate_key_is_an_error_naming_the_source_and_key(job: Path) -> None:
    table = pq.read_table(job.parent / "extra.parquet")
    pq.write_table(pa.concat_tables([table, table.slice(5, 1)]), job.parent / "extra.parquet")
    key = table.column("id")[5].as_py()
    with pytest.raises(JobSpecError, match=rf"extra.parquet \(source extra\): key {key} appears 2 times in key column "
                                           r"'id' \(1 duplicated key\(s\)\); keys must be unique"):
        prepare(load_job(job))


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.set_column(t.schema.get_field_index("e3"), "e3", pa.array(["x"] * t.num_rows)),
     r"models\[1\] \(logistic\) takes column 'e3' of source extra, which holds string; expected numbers"),
    (lambda t: t.drop_columns(["e3"]),
     r"models\[2\] \(both\)\.columns\.extra names \['e3'\], which are not feature columns of source extra"),
    (lambda t: t.set_column(0, "id", pa.array([str(v) for v in t.column("id").to_pylist()])),
     r"sources\[1\] \(extra\)\.key 'id' holds strings but the primary source features's key 'id' holds integers"),
    (lambda t: t.rename_columns(["key"] + t.column_names[1:]),
     r"extra.parquet \(source extra\): key column 'id' is not a column"),
])
def test_column_type_and_presence_checks_name_source_and_column(job: Path, change, message: str) -> None:  # noqa: ANN001
    table = pq.read_table(job.parent / "extra.parquet")
    pq.write_table(change(table), job.parent / "extra.parquet")
    with pytest.raises(JobSpecError, match=message) as caught:
        prepare(load_job(job))
    assert "\n" not in str(caught.value)


def test_nan_is_refused_naming_source_column_and_key_unless_allowed(job: Path) -> None:
    table = pq.read_table(job.parent / "extra.parquet")
    row = int(np.flatnonzero(table.column("id").to_numpy() >= 1400)[0])  # a row the join keeps
    values = table.column("e0").to_numpy().copy()
    values[row] = np.nan
    pq.write_table(table.set_column(1, "e0", pa.array(values)), job.parent / "extra.parquet")
    key = table.column("id")[row].as_py()
    with pytest.raises(JobSpecError, match=rf"column 'e0', data row {row + 1} \(key {key}\): missing value "
                                           r"\(NaN\), and models\[1\] \(logistic\) takes this column "
                                           r"without allow_nan = true"):
        validate_job(load_job(job), scan=True)
    assert "every value checked" in validate_job(load_job(edited(job, 'source = "extra"',
                                                                 'source = "extra"\nallow_nan = true')), scan=True)


def test_csv_and_feather_sources_join_like_parquet(job: Path) -> None:
    directory = job.parent
    pacsv.write_csv(pq.read_table(directory / "extra.parquet"), directory / "extra.csv")
    feather.write_feather(pq.read_table(directory / "features.parquet"), directory / "features.feather",
                          chunksize=30)
    edited(job, 'path = "extra.parquet"', 'path = "extra.csv"')
    edited(job, 'path = "features.parquet"', 'path = "features.feather"')
    joined, _, _ = prepare(load_job(job))
    assert isinstance(joined, JoinedData)
    shards = joined.write_shards(directory / "shards")
    _ids, values, _labels = joined_frame(directory)
    both = np.concatenate([np.concatenate([np.load(shards.files[(g, s)].path)[:, i] for g, i in shards.parts["both"]],
                                          axis=1) for s in range(len(shards.shard_rows))])
    names = FEATURES + EXTRA
    assert np.array_equal(both, values[:, [names.index(c) for c in ("e2", "e3", "f0", "f1")]])


def test_a_model_naming_no_source_is_found_by_its_fitted_columns_or_refused(job: Path) -> None:
    edited(job, 'source = "features"\n', '')  # linear was fitted on f0..f9: found in features
    joined, _, _ = prepare(load_job(job))
    assert isinstance(joined, JoinedData) and joined.members["linear"] == [("features", c) for c in FEATURES]
    edited(job, 'source = "extra"\n', '')  # logistic has no feature_names_in_: it must say
    with pytest.raises(JobSpecError, match=re.escape("models[1] (logistic) names no source and was not fitted on "
                                                     "named columns")):
        prepare(load_job(job))


def test_validate_command_exits_2_with_one_line_for_a_missing_key(job: Path) -> None:
    import os
    import subprocess
    import sys

    edited(job, 'missing = "drop"', 'missing = "error"')
    result = subprocess.run([sys.executable, "-m", "framework.cli", "validate", str(job)], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "source extra has no row for key 1407" in lines[0], result.stderr


def test_stacking_with_sources_is_refused_up_front(job: Path) -> None:
    text = job.read_text().replace('integration = "mean"', 'integration = "stacking"')
    job.write_text(text + '\n[stacking]\ntrain = { path = "features.parquet", label = "target" }\n')
    with pytest.raises(JobSpecError, match=r"stacking cannot be used with \[\[sources\]\] yet"):
        load_job(job)


def test_string_keys_join_and_a_repeated_string_key_is_named(job: Path) -> None:
    directory = job.parent
    for name in ("features", "extra"):
        table = pq.read_table(directory / f"{name}.parquet")
        keyed = table.set_column(0, "id", pa.array([f"k{v}" for v in table.column("id").to_pylist()]))
        pacsv.write_csv(keyed, directory / f"{name}.csv")
        edited(job, f'path = "{name}.parquet"', f'path = "{name}.csv"')
    joined, _, _ = prepare(load_job(job))
    assert isinstance(joined, JoinedData)
    ids, _values, _labels = joined_frame(directory)
    assert joined.keys.to_pylist() == [f"k{v}" for v in ids]
    assert joined.describe()["dropped_sample_keys"] == {"extra": [f"k{MISSING_KEY}"]}
    with (directory / "extra.csv").open("a") as handle:
        handle.write(f"k{ids[3]},1,2,3,4,5\n")
    with pytest.raises(JobSpecError, match=rf"key 'k{ids[3]}' appears 2 times in key column 'id'"):
        prepare(load_job(job))
