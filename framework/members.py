"""The ensemble's members as the combiners see them: the columns each one takes, its output, its
classes (read from the loaded estimators)."""

from __future__ import annotations

from typing import Any, Literal, TypeGuard, get_args

from framework import ensemble
from framework.errors import JobSpecError
from framework.jobspec import JobSpec

MemberOutput = Literal["predict", "predict_proba", "decision_function"]


def is_member_output(value: str) -> TypeGuard[MemberOutput]:
    return value in get_args(MemberOutput)


def member_output(value: str) -> MemberOutput:
    """``value`` as a member's output method (one of ``MemberOutput``)."""
    if not is_member_output(value):
        raise ValueError(f"output must be one of {', '.join(get_args(MemberOutput))}, got {value!r}")
    return value


def member_features(spec: JobSpec, estimators: dict[str, Any],
                    data_features: tuple[str, ...]) -> dict[str, tuple[str, ...] | None]:
    """The data columns each member takes (None: all of them, in the data's order).

    A model's ``features`` if given (each must be a feature column of the data); else the
    columns it was fitted on (``feature_names_in_``, as a DataFrame fit records them) when the
    data has them all; else every feature column.

    A text member (``text``) takes its one string column; a numeric member naming a text column,
    or either kind of member given the other kind of model (by what its inspection found), is
    refused in one line.
    """
    chosen: dict[str, tuple[str, ...] | None] = {}
    for index, model in enumerate(spec.models):
        takes_text = bool(getattr(estimators[model.name], "takes_text", False))
        text = getattr(model, "text", None)  # (duck-typed specs of numeric members may lack it)
        if text is not None:
            n_in = getattr(estimators[model.name], "n_features_in_", None)
            if n_in is not None and not takes_text:
                raise JobSpecError(f"{spec.source}: models[{index}] ({model.name}).text names the text column "
                                   f"{text!r}, but the model takes {n_in} numeric features (n_features_in_); give it "
                                   "features instead")
            chosen[model.name] = (text,)
            continue
        if takes_text:
            raise JobSpecError(f"{spec.source}: models[{index}] ({model.name}): the model takes text (its first step "
                               "is a text vectorizer); name its string column with text = \"...\"")
        if model.features is not None:
            texts = [f for f in model.features if f in spec.data.text]
            if texts:
                raise JobSpecError(f"{spec.source}: models[{index}] ({model.name}).features names {texts[0]!r}, a text "
                                   f"column; a numeric member takes numbers (a text member takes it with "
                                   f"text = {texts[0]!r})")
            unknown = [f for f in model.features if f not in data_features]
            if unknown:
                raise JobSpecError(f"{spec.source}: models[{index}] ({model.name}).features names columns that are not "
                                   f"feature columns of {spec.data.path.name}: {unknown[:10]} (it has "
                                   f"{', '.join(data_features[:20])}{', ...' if len(data_features) > 20 else ''})")
            chosen[model.name] = model.features
            continue
        fitted = getattr(estimators[model.name], "feature_names_in_", None)
        names = tuple(str(f) for f in fitted) if fitted is not None else None
        usable = names is not None and names != data_features and set(names) <= set(data_features)
        chosen[model.name] = names if usable else None
    return chosen


def member_specs(spec: JobSpec, estimators: dict[str, Any],
                 features: dict[str, tuple[str, ...] | None] | None = None) -> list[ensemble.MemberSpec]:
    return [
        ensemble.MemberSpec(
            name=m.name, kind=m.kind, output=member_output(m.output), weight=m.weight,
            proba_class=m.proba_class,
            classes=tuple(getattr(estimators[m.name], "classes_", ())) or None,
            features=(features or {}).get(m.name),
        )
        for m in spec.models
    ]


def member_columns(members: list[ensemble.MemberSpec], data_features: tuple[str, ...]) -> dict[str, list[int]]:
    """Per member, the indexes of its columns in the shards (empty: all columns)."""
    return {m.name: [data_features.index(f) for f in m.features]
            if m.features is not None and all(f in data_features for f in m.features) else [] for m in members}
