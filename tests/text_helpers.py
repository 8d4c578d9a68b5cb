"""A small text data set and its members (a TfidfVectorizer + LogisticRegression pipeline on a
string column, a LogisticRegression on two numeric columns) for the text member tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from job_files import model_table

POSITIVE = ["bright", "sunny", "warm", "gentle", "café", "naïve"]
NEGATIVE = ["grey", "stormy", "cold", "harsh", "bleak", "wet"]
FILLER = ["the", "a", "day", "walk", "river", "town", "old", "new", "road", "cat", "dog", "tree"]


def documents(rows: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``rows`` deterministic pseudo-documents (5-40 words, some non-ASCII), their 0/1 labels and
    two numeric features loosely tied to the labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows)
    docs = []
    for label in labels:
        words = list(rng.choice(FILLER, rng.integers(5, 40)))
        mood = POSITIVE if label else NEGATIVE
        for _ in range(rng.integers(0, 4)):
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(mood if rng.random() < 0.8 else
                                                                              POSITIVE + NEGATIVE)))
        docs.append(" ".join(words))
    features = rng.normal(size=(rows, 2)) + labels[:, None] * 0.7
    return docs, features, labels


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_text_job(directory: Path, rows: int = 150, rows_per_shard: int = 40, extra: str = "") -> Path:
    """A Parquet data set (``f0``, ``f1``, ``review``, ``target``), the two members trained on
    other rows of the same kind, and a ``mean`` job over them; returns the job file."""
    directory.mkdir(parents=True, exist_ok=True)
    train_docs, train_x, train_y = documents(400, seed=1)
    text = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000)).fit(train_docs, train_y)
    numbers = LogisticRegression(max_iter=1000).fit(train_x, train_y)
    docs, features, labels = documents(rows)
    pq.write_table(pa.table({"f0": features[:, 0], "f1": features[:, 1], "review": pa.array(docs, pa.string()),
                             "target": labels}), directory / "data.parquet", row_group_size=64)
    job = directory / "text.toml"
    job.write_text(f"""
[job]
integration = "mean"
output = "predictions.csv"
report = "report.json"

[data]
path = "data.parquet"
label = "target"
rows_per_shard = {rows_per_shard}

{model_table(directory, "text", text, kind="classifier", output="predict_proba", proba_class=1, text="review")}
{model_table(directory, "numbers", numbers, kind="classifier", output="predict_proba", proba_class=1)}{extra}""")
    return job


def expected_mean(directory: Path, rows_per_shard: int) -> np.ndarray:
    """scikit-learn on the same rows, shard by shard, the text member given a list of ``str``,
    averaged as ``integration = "mean"`` does."""
    table = pq.read_table(directory / "data.parquet")
    docs = table.column("review").to_pylist()
    features = np.column_stack([table.column("f0").to_numpy(), table.column("f1").to_numpy()])
    text, numbers = joblib.load(directory / "text.joblib"), joblib.load(directory / "numbers.joblib")
    outputs = []
    for start in range(0, len(docs), rows_per_shard):
        outputs.append(np.mean(np.stack([
            text.predict_proba(docs[start:start + rows_per_shard])[:, 1],
            numbers.predict_proba(np.ascontiguousarray(features[start:start + rows_per_shard]))[:, 1],
        ]), axis=0))
    return np.concatenate(outputs)


def stacking_text_job(job: Path, cv: int = 3) -> Path:
    """``job`` (``write_text_job``'s) made a stacking job with an ``.npy`` output, trained on the
    rows its members were trained on (written beside it as ``train.parquet``, returned)."""
    docs, features, labels = documents(400, seed=1)
    train = job.parent / "train.parquet"
    pq.write_table(pa.table({"f0": features[:, 0], "f1": features[:, 1], "review": pa.array(docs, pa.string()),
                             "target": labels}), train)
    text = job.read_text().replace('integration = "mean"', 'integration = "stacking"')
    text = text.replace('output = "predictions.csv"', 'output = "predictions.npy"')
    job.write_text(text + f'\n[stacking]\ntrain = {{ path = "{train.name}", label = "target" }}\ncv = {cv}\n')
    return train
