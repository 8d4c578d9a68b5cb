"""Reading one member's raw output: the value it contributes, the label it predicts."""

from __future__ import annotations

import numpy as np

from framework.ensemble.specs import MemberSpec, class_index, label_array


def member_score(spec: MemberSpec, output: np.ndarray) -> np.ndarray:
    """The 1-D values a member contributes to ``mean``/``weighted_mean``/``median``.

    * ``predict``: the prediction itself (a regressor's value or a classifier's numeric label);
    * ``predict_proba``: the column of class ``proba_class`` (located in ``classes`` by label);
    * ``decision_function``: the 1-D binary score, or the column of ``proba_class`` when 2-D.
    """
    output = np.asarray(output)
    if spec.output == "predict" or (spec.output == "decision_function" and output.ndim == 1):
        if output.ndim != 1:
            raise ValueError(f"member {spec.name}: {spec.output} output must be 1-D, got shape {output.shape}")
        if output.dtype.kind not in "biuf":
            raise ValueError(f"member {spec.name}: non-numeric {spec.output} output cannot be averaged")
        return output
    if spec.proba_class is None or not spec.classes:
        raise ValueError(f"member {spec.name}: {spec.output} output needs proba_class and classes to pick a column")
    if output.ndim != 2 or output.shape[1] != len(spec.classes):
        raise ValueError(f"member {spec.name}: {spec.output} output of shape {output.shape} does not match "
                         f"its {len(spec.classes)} classes")
    return output[:, class_index(spec.classes, spec.proba_class, spec.name)]


def member_view(spec: MemberSpec, output: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(predicted labels, probabilities, classes) of a classifier member; Nones where absent."""
    output = np.asarray(output)
    classes = label_array(spec.classes) if spec.classes else None
    if spec.output == "predict":
        return output, None, None
    if classes is None:
        return None, None, None
    if output.ndim == 1:
        return classes[(output > 0).astype(int)], None, None
    labels = classes[np.argmax(output, axis=1)]
    return labels, (output if spec.output == "predict_proba" else None), classes


def member_column(spec: MemberSpec, output: np.ndarray, labels: bool) -> np.ndarray:
    """What a member said for each row, as one column: its predicted label when the ensemble
    predicts labels, else the value it contributes (``member_score``)."""
    if labels:
        predicted, _proba, _classes = member_view(spec, output)
        if predicted is not None:
            return np.asarray(predicted)
    return member_score(spec, output)
