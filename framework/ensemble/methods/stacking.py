"""``stacking``: a fitted final estimator over the members' outputs (``Stacking*``).

The fitting pieces (folds, out-of-fold predictions, meta-features, the saved model) are in
:mod:`framework.ensemble.stacking`; this module is the combiner the job integrates with.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from framework.ensemble.combiners import field_names, proba_column_names, records
from framework.ensemble.registry import Evaluation, IntegrationMethod, register
from framework.ensemble.specs import FEATURES_KEY, MemberSpec
from framework.ensemble.stacking import FittedStacking, encode_member_output, load_stacking


class StackingCombiner:
    """Combiner ``stacking``: final estimator over the members' shard outputs.

    Output columns: ``prediction`` (original label or value), plus ``proba_<c>`` per class
    when the final estimator of a classifier stacking has ``predict_proba``. With passthrough
    the integrator must also be fed the shard's features under :data:`FEATURES_KEY`.
    Needs every member (no degraded integration).
    """

    method = "stacking"
    supports_subsets = False

    def __init__(self, members: Sequence[MemberSpec], model: FittedStacking) -> None:
        by_name = {m.name: m for m in members}
        if sorted(by_name) != sorted(model.members):
            raise ValueError(f"stacking: members {sorted(by_name)} differ from the fitted stacking's "
                             f"{sorted(model.members)}")
        for name, method in zip(model.members, model.stack_methods):
            if by_name[name].output != method:
                raise ValueError(f"stacking: member {name} outputs {by_name[name].output} but was stacked "
                                 f"with {method}")
        self.members = tuple(by_name[n] for n in model.members)
        self.model = model
        self.inputs = model.members + ((FEATURES_KEY,) if model.passthrough else ())
        self.classes: np.ndarray | None = model.classes if model.kind == "classifier" else None
        self.predicts_labels = self.classes is not None
        fields: list[tuple[str, Any]]
        if self.classes is not None:
            fields = [("prediction", self.classes.dtype)]
            if hasattr(model.final_estimator, "predict_proba"):
                fields += [(c, np.float64) for c in proba_column_names(self.classes)]
        else:
            fields = [("prediction", np.float64)]
        self.output_dtype = np.dtype(fields)

    @property
    def output_columns(self) -> list[str]:
        return field_names(self.output_dtype)

    def meta_features(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The final estimator's input for one shard."""
        missing = [n for n in self.inputs if n not in outputs]
        if missing:
            raise ValueError(f"stacking needs every member; missing {missing}")
        encoded = [encode_member_output(m, meth, outputs[m.name], self.model.classes)
                   for m, meth in zip(self.members, self.model.stack_methods)]
        return self.model.features(encoded, outputs.get(FEATURES_KEY))

    def combine(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        X_meta = self.meta_features(outputs)
        final = self.model.final_estimator
        if self.classes is None:
            return records({"prediction": final.predict(X_meta)}, self.output_dtype)
        columns = {"prediction": self.classes[np.asarray(final.predict(X_meta), dtype=int)]}
        proba_names = self.output_columns[1:]
        if proba_names:
            proba = final.predict_proba(X_meta)
            columns.update({n: proba[:, j] for j, n in enumerate(proba_names)})
        return records(columns, self.output_dtype)


def _factory(method: str, members: Sequence[MemberSpec], params: Mapping[str, Any]) -> StackingCombiner:
    """``model=`` a :class:`FittedStacking`, or ``model_path=`` to one saved by ``save_stacking``."""
    model = params.get("model")
    if model is None and params.get("model_path") is not None:
        model = load_stacking(params["model_path"])
    if model is None:
        raise ValueError("stacking: needs model= (a fitted FittedStacking) or model_path=")
    return StackingCombiner(members, model)


register(IntegrationMethod(
    name="stacking", factory=_factory, evaluation=Evaluation.FITTED, predicts_labels=None,
    output_columns=("prediction", "proba_*"), params=("model", "model_path"), train_table="stacking",
    supports_subsets=False,
    summary="a final estimator fitted on the members' out-of-fold predictions (StackingClassifier/Regressor)"))
