"""``mesos-ensemble train-demo``: the founding example, reproducibly.

A LinearRegression and a LogisticRegression trained on scikit-learn's breast-cancer data (it
ships with scikit-learn), saved with joblib (a pickle) or skops (``model_format="skops"``: only
allowed types load), a held-out test CSV with labels, and a job file that averages the
regression's output with the classifier's probability of class 1; its ``[serve]`` table deploys
the same members behind ``mesos-ensemble serve``'s gateway (``scripts/serve-demo.sh``).
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import joblib
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from executor.modelfile import FORMATS as MODEL_FORMATS

JOB_TEMPLATE = """\
# The founding example: average a LinearRegression's output with a LogisticRegression's
# probability of class 1 (malignant = 0, benign = 1 in scikit-learn's breast-cancer data).
[job]
name = "breast-cancer-demo"
integration = "mean"
output = "predictions.csv"
report = "report.json"

[data]
path = "test.csv"
label = "target"
rows_per_shard = 50

[[models]]
name = "linear"
path = "linear.{ext}"
sha256 = "{linear_sha}"
kind = "regressor"
output = "predict"
cpus = 0.5
mem = 128

[[models]]
name = "logistic"
path = "logistic.{ext}"
sha256 = "{logistic_sha}"
kind = "classifier"
output = "predict_proba"
proba_class = 1
cpus = 0.5
mem = 128

[framework]
master = "local"   # the embedded cluster; or "host:5050" for a real Mesos master
name = "mesos-ensemble-demo"

# mesos-ensemble serve job.toml: the same members deployed behind an HTTP gateway
# (curl -d '{{"rows": [{{"f0": 13.0, ...}}]}}' http://127.0.0.1:8080/v1/predict)
[serve]
address = "127.0.0.1:8080"
target_p99_ms = 100

[serve.models.linear]
min_replicas = 1
max_replicas = 2

[serve.models.logistic]
min_replicas = 1
max_replicas = 2
"""


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_model(model: object, path: Path, model_format: str) -> None:
    """Save a fitted model as joblib or skops, to a temporary file renamed into place."""
    temporary = path.with_name(f".{path.name}.part")
    if model_format == "skops":
        import skops.io

        skops.io.dump(model, temporary)
    else:
        joblib.dump(model, temporary)
    temporary.replace(path)


def train_demo(out_dir: Path, seed: int = 0, model_format: str = "joblib") -> Path:
    """Write the demo models (``joblib`` or ``skops`` files), data and job file into ``out_dir``;
    return the job file's path."""
    if model_format not in MODEL_FORMATS:
        raise ValueError(f"model format must be one of {', '.join(MODEL_FORMATS)}, got {model_format!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_breast_cancer(as_frame=False)
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.3, random_state=seed, stratify=data.target
    )
    models = {
        "linear": LinearRegression().fit(x_train, y_train),
        "logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_train, y_train),
    }
    for name, model in models.items():
        save_model(model, out_dir / f"{name}.{model_format}", model_format)
    for name, rows, labels in (("train", x_train, y_train), ("test", x_test, y_test)):
        with (out_dir / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([*(f"f{i}" for i in range(rows.shape[1])), "target"])
            for row, label in zip(rows, labels):
                writer.writerow([*(repr(float(v)) for v in row), int(label)])
    job = out_dir / "job.toml"
    job.write_text(JOB_TEMPLATE.format(ext=model_format, linear_sha=sha256_of(out_dir / f"linear.{model_format}"),
                                       logistic_sha=sha256_of(out_dir / f"logistic.{model_format}")))
    return job
