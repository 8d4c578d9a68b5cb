"""One cross-validation fold as ``cross_val_predict`` runs it; pure (numpy and scikit-learn, no I/O).

The executor fits a stacking member's fold with :func:`fit_fold` (``executor.runner``); the
framework's in-process stacking reference calls :func:`cv_fit_predict`, so both fit the same way.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.base import clone


def rows(indexes: Sequence[int] | np.ndarray) -> np.ndarray:
    """Row indexes as an index array."""
    return np.asarray(indexes, dtype=np.intp)


def fit_fold(estimator: Any, features: np.ndarray, labels: np.ndarray,
             train_rows: Sequence[int] | np.ndarray) -> Any:
    """A clone of ``estimator`` fitted on the fold's training rows."""
    train = rows(train_rows)
    return clone(estimator).fit(features[train], np.asarray(labels)[train])


def cv_fit_predict(estimator: Any, features: Any, labels: np.ndarray, train_rows: Sequence[int] | np.ndarray,
                   test_rows: Sequence[int] | np.ndarray, method: str) -> tuple[np.ndarray, Any]:
    """Fit a clone on the train rows; return ``(method on the test rows, the fitted clone)``."""
    features = np.asarray(features)
    fitted = fit_fold(estimator, features, labels, train_rows)
    return getattr(fitted, method)(features[rows(test_rows)]), fitted
