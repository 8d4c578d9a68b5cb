"""Combining one request's member outputs: the batch job's combiners, unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.ensemble import VotingClassifier

from conftest import classifiers, spec_for
from framework.ensemble import IntegrationError, MemberSpec
from framework.serving.combine import RequestCombiner, combiner_factory


def test_soft_vote_predictions_carry_label_and_probabilities(cancer, fitted):
    names = ["tree", "nb", "logit"]
    specs = [spec_for(n, fitted[n], "predict_proba", w) for n, w in zip(names, [1.0, 2.0, 1.0])]
    combiner = RequestCombiner(combiner_factory("soft_vote")(specs), specs)
    X = cancer.X[:25]
    records = combiner.combine({n: fitted[n].predict_proba(X) for n in names})
    vc = VotingClassifier([(n, clone(classifiers()[n])) for n in names], voting="soft", weights=[1.0, 2.0, 1.0])
    vc.fit(cancer.X, cancer.y)
    answer = combiner.predictions(records)
    assert [a["label"] for a in answer] == vc.predict(X).tolist()
    proba = vc.predict_proba(X)
    assert [[a["proba"][c] for c in ("benign", "malignant")] for a in answer] == proba.tolist()
    assert all(type(a["label"]) is str for a in answer)


def test_a_subset_is_combined_as_the_batch_job_s_degraded_integration(cancer, fitted):
    names = ["tree", "nb", "forest"]
    specs = [spec_for(n, fitted[n], "predict_proba") for n in names]
    combiner = RequestCombiner(combiner_factory("soft_vote")(specs), specs, min_members=2)
    X = cancer.X[:10]
    outputs = {n: fitted[n].predict_proba(X) for n in ("forest", "tree")}
    vc = VotingClassifier([(n, clone(classifiers()[n])) for n in ("tree", "forest")], voting="soft")
    vc.fit(cancer.X, cancer.y)
    records = combiner.combine(outputs)
    assert np.array_equal(np.column_stack([records["proba_benign"], records["proba_malignant"]]), vc.predict_proba(X))
    with pytest.raises(IntegrationError, match=r"only 1 of 3 members answered \(min_members=2\); missing: nb, forest"):
        combiner.combine({"tree": outputs["tree"]})


def test_hard_vote_answers_labels_only_and_mean_answers_values(cancer, fitted):
    names = ["tree", "nb"]
    specs = [spec_for(n, fitted[n], "predict") for n in names]
    hard = RequestCombiner(combiner_factory("hard_vote")(specs), specs)
    X = cancer.X[:8]
    vc = VotingClassifier([(n, clone(classifiers()[n])) for n in names], voting="hard").fit(cancer.X, cancer.y)
    answer = hard.predictions(hard.combine({n: fitted[n].predict(X) for n in names}))
    assert answer == [{"label": label} for label in vc.predict(X).tolist()]

    specs = [MemberSpec(n, "classifier", "predict_proba", proba_class="malignant", classes=tuple(fitted[n].classes_))
             for n in names]
    mean = RequestCombiner(combiner_factory("mean")(specs), specs)
    outputs = {n: fitted[n].predict_proba(X) for n in names}
    values = mean.predictions(mean.combine(outputs))
    assert values == np.mean([outputs[n][:, 1] for n in names], axis=0).tolist()
    assert mean.member_values(outputs) == {n: outputs[n][:, 1].tolist() for n in names}


def test_settings_the_combiner_cannot_honour_are_refused(fitted):
    specs = [spec_for(n, fitted[n], "predict_proba") for n in ("tree", "nb")]
    combiner = combiner_factory("soft_vote")(specs)
    with pytest.raises(ValueError, match="min_members must be between 1 and 2"):
        RequestCombiner(combiner, specs, min_members=3)
    with pytest.raises(ValueError, match="differ from the combiner's"):
        RequestCombiner(combiner, specs[:1])
    with pytest.raises(ValueError, match="unknown integration method 'nope'"):
        combiner_factory("nope")
