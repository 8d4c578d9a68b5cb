"""Shared data, test-only adapters and the shard-streaming driver for the ensemble tests."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from framework.ensemble import MemberSpec, StreamingIntegrator


def labelled(loader: Any, as_strings: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A scikit-learn toy data set, labels as class names (strings) to exercise label encoding."""
    data = loader()
    y = np.asarray(data.target_names)[data.target] if as_strings else data.target
    return data.data, y


def spec_for(name: str, est: Any, output: str, weight: float = 1.0, proba_class: Any = None) -> MemberSpec:
    """A MemberSpec filled from a fitted estimator, as the scheduler builds it."""
    kind = "classifier" if hasattr(est, "classes_") else "regressor"
    classes = tuple(est.classes_) if hasattr(est, "classes_") else None
    return MemberSpec(name=name, kind=kind, output=output, weight=weight, proba_class=proba_class, classes=classes)


def shard_sizes(n: int, seed: int) -> list[int]:
    """Uneven shard sizes (including 1-row shards) summing to n."""
    rng = np.random.default_rng(seed)
    sizes, left = [], n
    while left:
        size = int(min(left, rng.choice([1, 7, 50, 113])))
        sizes.append(size)
        left -= size
    return sizes


def stream(combiner: Any, members: Sequence[MemberSpec], outputs: Mapping[str, np.ndarray], out_path: Path,
           seed: int = 0, extra: Mapping[str, np.ndarray] | None = None, **kwargs: Any):
    """Feed all (member, shard) outputs in a shuffled order with duplicates (retries); finish."""
    n = len(next(iter(outputs.values())))
    sizes = shard_sizes(n, seed)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    integ = StreamingIntegrator(combiner, members, sizes, out_path, **kwargs)
    feeds = {**outputs, **(extra or {})}
    deliveries = [(m, s) for m in feeds for s in range(len(sizes))]
    deliveries += random.Random(seed).sample(deliveries, len(deliveries) // 3)
    random.Random(seed + 1).shuffle(deliveries)
    for m, s in deliveries:
        integ.add(m, s, np.asarray(feeds[m])[bounds[s]:bounds[s + 1]])
    return integ, integ.finish()


class Permuted(ClassifierMixin, BaseEstimator):
    """A fitted classifier whose classes_ (and predict_proba columns) come in a permuted order."""

    def __init__(self, est: Any = None, order: Sequence[int] = ()) -> None:
        self.est = est
        self.order = order

    @property
    def classes_(self) -> np.ndarray:
        return self.est.classes_[list(self.order)]

    def predict(self, X: Any) -> np.ndarray:
        return self.est.predict(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        return self.est.predict_proba(X)[:, list(self.order)]


class Aligned:
    """Reference-side adapter: a member's probabilities padded/ordered to ``classes`` (0 if absent)."""

    def __init__(self, est: Any, classes: np.ndarray) -> None:
        self.est, self.classes = est, classes

    def predict_proba(self, X: Any) -> np.ndarray:
        proba = self.est.predict_proba(X)
        full = np.zeros((proba.shape[0], len(self.classes)))
        full[:, np.searchsorted(self.classes, self.est.classes_)] = proba
        return full

    def predict(self, X: Any) -> np.ndarray:
        return np.searchsorted(self.classes, self.est.predict(X))


class Column:
    """Reference-side adapter: ``predict`` = one predict_proba column (for VotingRegressor)."""

    def __init__(self, est: Any, column: int) -> None:
        self.est, self.column = est, column

    def predict(self, X: Any) -> np.ndarray:
        return self.est.predict_proba(X)[:, self.column]
