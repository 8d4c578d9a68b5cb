"""StreamingIntegrator: degraded answers, atomic output, CSV, argument checks."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_diabetes
from sklearn.ensemble import VotingRegressor
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.tree import DecisionTreeRegressor

from ensemble_helpers import spec_for
from framework.ensemble import IntegrationError, StreamingIntegrator, make_combiner

REGRESSORS = [("ols", LinearRegression()), ("ridge", Ridge(alpha=3.0)),
              ("tree", DecisionTreeRegressor(max_depth=4, random_state=0))]
WEIGHTS = [1.0, 2.0, 0.5]
SIZES = [100, 100, 100, 142]


@pytest.fixture(scope="module")
def setup():
    X, y = load_diabetes(return_X_y=True)
    members = {n: clone(e).fit(X, y) for n, e in REGRESSORS}
    specs = [spec_for(n, e, "predict", w) for (n, e), w in zip(members.items(), WEIGHTS)]
    outputs = {n: e.predict(X) for n, e in members.items()}
    return X, y, specs, outputs


def chunk(values, shard):
    bounds = np.concatenate([[0], np.cumsum(SIZES)])
    return values[bounds[shard]:bounds[shard + 1]]


def test_member_failing_midway_is_excluded_from_every_shard(tmp_path, setup):
    X, y, specs, outputs = setup
    integ = StreamingIntegrator(make_combiner("weighted_mean", specs), specs, SIZES, tmp_path / "o.npy",
                                min_members=2)
    for shard in (2, 0):  # two shards combined with all three members first
        for name in outputs:
            integ.add(name, shard, chunk(outputs[name], shard))
    assert integ.combined_with[0] == frozenset(outputs)
    integ.member_failed("tree", "executor lost 3 times")
    integ.add("tree", 1, chunk(outputs["tree"], 1))  # late result of a failed member: ignored
    for shard in (3, 1):
        for name in ("ols", "ridge"):
            integ.add(name, shard, chunk(outputs[name], shard))
    result = integ.finish()
    assert result.members_used == ("ols", "ridge")
    assert result.members_missing == {"tree": "executor lost 3 times"}
    vr = VotingRegressor(REGRESSORS[:2], weights=WEIGHTS[:2]).fit(X, y)
    assert np.array_equal(np.load(result.output_path)["prediction"], vr.predict(X))


def test_too_few_members_fails_and_leaves_earlier_output_untouched(tmp_path, setup):
    _, _, specs, outputs = setup
    target = tmp_path / "o.npy"
    target.write_bytes(b"earlier result")
    integ = StreamingIntegrator(make_combiner("mean", specs), specs, SIZES, target, min_members=2)
    for shard in range(4):
        integ.add("ols", shard, chunk(outputs["ols"], shard))
    integ.add("ridge", 0, chunk(outputs["ridge"], 0))
    integ.member_failed("tree", "bad model")
    with pytest.raises(IntegrationError, match="tree: bad model") as info:
        integ.finish()
    assert "ridge: did not deliver shard(s) 1, 2, 3" in str(info.value)
    assert target.read_bytes() == b"earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npy"]  # temp files removed


def test_failed_finish_leaves_no_file(tmp_path, setup):
    _, _, specs, outputs = setup
    target = tmp_path / "out.csv"
    integ = StreamingIntegrator(make_combiner("mean", specs), specs, SIZES, target)
    integ.add("ols", 0, chunk(outputs["ols"], 0))
    with pytest.raises(IntegrationError, match="min_members=3"):
        integ.finish()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(IntegrationError, match="already finished"):
        integ.add("ols", 1, chunk(outputs["ols"], 1))


def test_csv_output_round_trips(tmp_path, setup):
    X, y, specs, outputs = setup
    keep = tmp_path / "members"
    integ = StreamingIntegrator(make_combiner("weighted_mean", specs), specs, SIZES, tmp_path / "out.csv",
                                keep_member_outputs_dir=keep)
    for shard in reversed(range(4)):
        for name in outputs:
            integ.add(name, shard, chunk(outputs[name], shard))
    result = integ.finish()
    with open(result.output_path) as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["prediction"]
    expected = VotingRegressor(REGRESSORS, weights=WEIGHTS).fit(X, y).predict(X)
    assert np.array_equal(np.array([float(r[0]) for r in rows[1:]]), expected)
    assert np.array_equal(integ.ensemble_output()["prediction"], expected)
    assert np.array_equal(np.load(result.member_outputs["ridge"]), outputs["ridge"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_arrivals_are_rejected(tmp_path, setup):
    _, _, specs, outputs = setup
    integ = StreamingIntegrator(make_combiner("mean", specs), specs, SIZES, tmp_path / "o.npy")
    with pytest.raises(ValueError, match="has 100 rows"):
        integ.add("ols", 0, outputs["ols"][:99])
    with pytest.raises(ValueError, match="unknown member"):
        integ.add("nobody", 0, outputs["ols"][:100])
    with pytest.raises(ValueError, match="out of range"):
        integ.add("ols", 9, outputs["ols"][:100])
    integ.add("ols", 0, chunk(outputs["ols"], 0))
    with pytest.raises(ValueError, match="dtype"):
        integ.add("ols", 1, np.array(["x"] * 100))
    integ.abort()
    with pytest.raises(ValueError, match="min_members"):
        StreamingIntegrator(make_combiner("mean", specs), specs, SIZES, tmp_path / "o.npy", min_members=4)
    with pytest.raises(ValueError, match=r"\.npy and \.csv"):
        StreamingIntegrator(make_combiner("mean", specs), specs, SIZES, tmp_path / "o.parquet")


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_explain_adds_what_each_used_member_said(tmp_path, setup, suffix):
    """Each row carries every used member's contribution next to the ensemble's answer; a dropped
    member has no column; the ensemble's own columns are unchanged."""
    X, y, specs, outputs = setup
    plain = StreamingIntegrator(make_combiner("weighted_mean", specs), specs, SIZES, tmp_path / "plain.npy",
                                min_members=2)
    explained = StreamingIntegrator(make_combiner("weighted_mean", specs), specs, SIZES, tmp_path / f"e{suffix}",
                                    min_members=2, keep_member_outputs_dir=tmp_path / "kept", explain=True)
    for integ in (plain, explained):
        integ.member_failed("tree", "lost")
        for shard in range(len(SIZES)):
            for name in ("ols", "ridge"):
                integ.add(name, shard, chunk(outputs[name], shard))
        integ.finish()
    result = explained.ensemble_output()
    assert result.dtype.names == ("prediction", "member_ols", "member_ridge")
    assert np.array_equal(result["prediction"], np.load(tmp_path / "plain.npy")["prediction"])
    assert np.array_equal(result["member_ols"], outputs["ols"])
    assert np.array_equal(result["member_ridge"], outputs["ridge"])
    if suffix == ".csv":
        with (tmp_path / "e.csv").open() as handle:
            rows = list(csv.reader(handle))
        assert rows[0] == ["prediction", "member_ols", "member_ridge"] and len(rows) == 1 + len(y)
    assert not list(tmp_path.glob(".e*"))  # no temp file left behind


def test_explain_gives_member_labels_for_a_vote(tmp_path):
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB

    X, y = load_iris(return_X_y=True)
    members = {"logistic": LogisticRegression(max_iter=1000).fit(X, y), "bayes": GaussianNB().fit(X, y)}
    specs = [spec_for(n, e, "predict_proba") for n, e in members.items()]
    integ = StreamingIntegrator(make_combiner("soft_vote", specs), specs, [len(y)], tmp_path / "v.npy", explain=True)
    for name, model in members.items():
        integ.add(name, 0, model.predict_proba(X))
    result = np.load(integ.finish().output_path)
    for name, model in members.items():
        assert np.array_equal(result[f"member_{name}"], model.predict(X))
