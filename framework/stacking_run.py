"""Stacking, phase 1 of a stacking job: the members' cross-validation fits run as Mesos tasks (one
per member and fold), then the final estimator is fitted here on their out-of-fold predictions,
as scikit-learn's ``Stacking*.fit`` does; phase 2 (prediction) is an ordinary job."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np

from executor.protocol import RemoteFile, array_to_npy, sha256_hex
from framework import ensemble
from framework.artifacts import ArtifactServer
from framework.catalog import JobCatalog
from framework.dataset import cut_shards, load_dataset, write_atomic
from framework.errors import JobSpecError
from framework.jobspec import JobSpec
from framework.members import member_output
from framework.tasks import WorkItem

RunTasks = Callable[[list[WorkItem], Callable[[WorkItem, np.ndarray], None]], None]
"""Runs work items to the end, handing each result to the callback (the job's scheduler loop)."""


def check_train_columns(spec: JobSpec, train_features: tuple[str, ...], data_features: tuple[str, ...]) -> None:
    """JobSpecError (one line) unless the stacking train file has the data's feature columns, in
    order: the members' column indexes and passthrough both assume them."""
    stacking = spec.stacking
    assert stacking is not None
    if train_features != data_features:
        raise JobSpecError(f"{spec.source}: stacking.train: {stacking.train.path.name} has feature columns "
                           f"{list(train_features)[:20]}, the data has {list(data_features)[:20]}; "
                           "they must be the same, in the same order")


def fit_stacking(spec: JobSpec, catalog: JobCatalog, server: ArtifactServer, members: list[ensemble.MemberSpec],
                 estimators: dict[str, Any], data_features: tuple[str, ...], work_dir: Path, run_tasks: RunTasks,
                 progress: Callable[[str], None]) -> tuple[list[ensemble.MemberSpec], Any]:
    """Stacking, phase 1: the members' cross-validation fits run as Mesos tasks; then the final
    estimator is fitted here on their out-of-fold predictions (as ``Stacking*.fit`` does).
    Returns the members as stacked (each ``output`` its stack method) and the job's combiner."""
    stacked_members, fitted = fit_stacking_model(spec, catalog, server, members, estimators, data_features,
                                                 work_dir, run_tasks, progress)
    return stacked_members, ensemble.make_combiner("stacking", stacked_members, model=fitted)


def fit_stacking_model(spec: JobSpec, catalog: JobCatalog, server: ArtifactServer,
                       members: list[ensemble.MemberSpec], estimators: dict[str, Any], data_features: tuple[str, ...],
                       work_dir: Path, run_tasks: RunTasks, progress: Callable[[str], None], save: bool = True
                       ) -> tuple[list[ensemble.MemberSpec], ensemble.FittedStacking]:
    """:func:`fit_stacking`'s fit: the members as stacked and the fitted stacking layer (its final
    estimator fitted here from the numbers the tasks returned: nothing is unpickled). ``catalog``
    keeps the stack methods (``catalog.methods``): the members' prediction tasks, or replicas,
    use them.  ``save``: write it to ``stacking.save_to`` when the job names one (``serve`` does not:
    that file is ``run``'s)."""
    stacking = spec.stacking
    assert stacking is not None
    train = load_dataset(stacking.train)
    check_train_columns(spec, tuple(train.feature_names), data_features)
    kind: ensemble.Kind = "classifier" if all(m.kind == "classifier" for m in members) else "regressor"
    plan = ensemble.plan_folds(train.features, train.labels, kind, stacking.cv)
    methods = {name: ensemble.resolve_stack_method(name, est, stacking.stack_method, kind)
               for name, est in estimators.items()}
    train_shards = cut_shards(train.features, train.features.shape[0])
    labels_path = work_dir / "train" / "labels.npy"
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(labels_path, array_to_npy(np.asarray(plan.y_fit)))
    catalog.add_training(train_shards, RemoteFile(server.publish("labels.npy", labels_path),
                                                  sha256_hex(labels_path.read_bytes())),
                         [(tr.tolist(), te.tolist()) for tr, te in plan.folds], methods)
    items = [WorkItem(f"{m.name}.fold{k}", m.name, 0, operation="cv_fit_predict", fold=k)
             for m in spec.models for k in range(len(plan.folds))]
    fold_outputs: dict[tuple[str, int], np.ndarray] = {}
    progress(f"stacking: {len(items)} cross-validation tasks ({len(members)} models x {len(plan.folds)} folds)")
    run_tasks(items, lambda item, output: fold_outputs.__setitem__((item.model, item.fold or 0), output))
    names = [m.name for m in spec.models]
    out_of_fold = [ensemble.assemble_out_of_fold([fold_outputs[(n, k)] for k in range(len(plan.folds))],
                                                 plan, methods[n]) for n in names]
    n_classes = None if plan.classes is None else len(plan.classes)
    meta = ensemble.stack_features(out_of_fold, [methods[n] for n in names], n_classes,
                                   train.features if stacking.passthrough else None)
    final = ensemble.fit_final_estimator(meta, plan, kind, ensemble.final_estimator(stacking.final_estimator, kind))
    fitted = ensemble.FittedStacking(kind=kind, members=tuple(names), stack_methods=tuple(methods[n] for n in names),
                                     classes=plan.classes, passthrough=stacking.passthrough, final_estimator=final)
    if save and stacking.save_to is not None:
        ensemble.save_stacking(fitted, stacking.save_to)
    stacked_members = [dataclasses.replace(m, output=member_output(methods[m.name])) for m in members]
    return stacked_members, fitted

