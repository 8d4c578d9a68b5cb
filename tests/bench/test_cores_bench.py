"""``bench/cores_bench.py --as-commands``: the plain user's joblib script it writes runs on its own
and saves the ensemble's soft-voted labels, and each run of the job gets the cache it is meant to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.tree import DecisionTreeClassifier

@pytest.fixture(scope="module")
def cores_bench(bench_script: Callable[[str], ModuleType]) -> ModuleType:
    return bench_script("cores_bench")


@pytest.mark.parametrize(("data", "max_nbytes", "cores"), [("data.npy", "1M", 2), ("data.parquet", None, 1)])
def test_user_script_saves_the_soft_vote(cores_bench: ModuleType, tmp_path: Path, data: str,
                                         max_nbytes: str | None, cores: int) -> None:
    if data.endswith(".parquet"):
        x, y = cores_bench.pseudo_text(130)
        members = [make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(x[:60], y[:60]),
                   make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 3)),
                                 LogisticRegression()).fit(x[:60], y[:60])]
        x = x[60:]
        pq.write_table(pa.table({"text": pa.array(x.tolist(), pa.string())}), tmp_path / data)
        x = cores_bench.as_documents(x)
    else:
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(130, 5)), np.array(["no", "yes"])[rng.integers(0, 2, 130)]
        members = [LogisticRegression().fit(x[:60], y[:60]), DecisionTreeClassifier(max_depth=3).fit(x[:60], y[:60])]
        x = x[60:]
        np.save(tmp_path / data, x)
    paths = []
    for number, member in enumerate(members):
        paths.append(tmp_path / "models" / f"member{number}.joblib")
        paths[-1].parent.mkdir(exist_ok=True)
        joblib.dump(member, paths[-1])

    script = cores_bench.user_script(tmp_path, paths, data, 25, cores, max_nbytes, "labels.npy")
    assert script.name == ("predict.py" if max_nbytes else "predict_pickled.py")
    subprocess.run([sys.executable, script.name], cwd=tmp_path, check=True, timeout=120)

    expected = members[0].classes_[np.mean([m.predict_proba(x) for m in members], axis=0).argmax(axis=1)]
    saved = np.load(tmp_path / "labels.npy", allow_pickle=False)
    assert saved.shape == (70,) and np.array_equal(saved, expected)
    assert len(set(saved.tolist())) == 2  # both labels occur: a vote, not a constant


def test_kept_answers_cold_fresh_per_run_warm_shared(cores_bench: ModuleType, tmp_path: Path) -> None:
    for mode in ("cold", "warm"):
        (tmp_path / mode).mkdir()
        kept = cores_bench.KeptAnswers(tmp_path / mode, mode)
        first, second = kept.next_dir(), kept.next_dir()
        assert (first == second) == (mode == "warm")
        for directory in (first, second):  # the executor package, built once, in every run's cache
            assert len(list((directory / "executor-packages").glob("*.tar.gz"))) == 1
