"""Stacking, phase 1 of a stacking job: the members' cross-validation fits run as Mesos tasks (one
per member and fold), then the final estimator is fitted here on their out-of-fold predictions,
as scikit-learn's ``Stacking*.fit`` does; phase 2 (prediction) is an ordinary job.

With ``stacking.save_to``, ``run`` also records the numbers the final estimator was fitted on (the
members' out-of-fold predictions, the encoded target, the classes: ``<save_to>.fit.npz``, no
pickle) under a key naming what they depend on (every member's name, sha256 and columns, the stack
methods, the train data's checksum and ``[stacking]``, scikit-learn's version); ``serve`` fits
its final estimator from that record when the key matches, instead of running the folds again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from executor.protocol import RemoteFile, array_to_npy, sha256_hex
from framework import atomic, ensemble
from framework.artifacts import ArtifactServer
from framework.catalog import JobCatalog
from framework.dataset import cut_shards, load_dataset, text_kind, write_atomic, write_text_shard
from framework.errors import JobSpecError
from framework.jobspec import JobSpec
from framework.members import member_output
from framework.tasks import WorkItem

log = logging.getLogger(__name__)

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


def fit_record_path(spec: JobSpec) -> Path | None:
    """Where ``run`` records its stacking fit's numbers: beside ``stacking.save_to`` (None without one)."""
    save_to = spec.stacking.save_to if spec.stacking is not None else None
    return None if save_to is None else save_to.with_name(save_to.name + ".fit.npz")


def data_checksum(path: Path) -> str:
    """sha256 of a data file's bytes, or of a directory's files (names and bytes, sorted by name)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def fit_key(spec: JobSpec, members: list[ensemble.MemberSpec], methods: Mapping[str, str]) -> str:
    """What a stacking fit's numbers depend on, as one JSON text: the members (name, sha256, kind,
    columns), their stack methods, the train data (its checksum and how it is read), the
    ``[stacking]`` fields and scikit-learn's version."""
    import sklearn  # only a stacking job comes here: a job without one never imports it in this process

    stacking = spec.stacking
    assert stacking is not None
    columns = {m.name: list(m.features) if m.features is not None else None for m in members}
    return json.dumps({
        "members": [[m.name, m.sha256, m.kind, columns.get(m.name), methods[m.name]] for m in spec.models],
        "train": [data_checksum(stacking.train.path), repr(dataclasses.replace(stacking.train, path=Path(
            stacking.train.path.name)))],
        "stacking": [stacking.cv, stacking.stack_method, stacking.final_estimator, stacking.passthrough],
        "sklearn": sklearn.__version__,
    }, sort_keys=True)


def write_fit_record(path: Path, key: str, meta: np.ndarray, plan: ensemble.FoldPlan) -> bool:
    """Record the final estimator's inputs at ``path`` (atomically; arrays only, no pickle); False
    (nothing written) when an array holds Python objects."""
    arrays = {"key": np.array(key), "meta": np.asarray(meta), "y_fit": np.asarray(plan.y_fit)}
    if plan.classes is not None:
        arrays["classes"] = np.asarray(plan.classes)
    if any(a.dtype.kind == "O" for a in arrays.values()):
        return False
    with atomic.atomic_open(path, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]
    return True


def read_fit_record(path: Path, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """(meta-features, encoded target, classes) recorded at ``path`` under ``key``; None when there
    is no record, it was recorded under another key, or it cannot be read (without pickles)."""
    try:
        with np.load(path, allow_pickle=False) as record:
            if str(record["key"]) != key:
                log.info("%s was recorded for other members, train data or [stacking]: not reused", path)
                return None
            return (record["meta"], record["y_fit"],
                    record["classes"] if "classes" in record.files else None)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        log.warning("%s cannot be read (%s): not reused", path, error)
        return None


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
                       work_dir: Path, run_tasks: RunTasks, progress: Callable[[str], None], save: bool = True,
                       reuse: bool = False) -> tuple[list[ensemble.MemberSpec], ensemble.FittedStacking]:
    """:func:`fit_stacking`'s fit: the members as stacked and the fitted stacking layer (its final
    estimator fitted here from the numbers the tasks returned: nothing is unpickled). ``catalog``
    keeps the stack methods (``catalog.methods``): the members' prediction tasks, or replicas,
    use them.  ``save``: write it to ``stacking.save_to`` when the job names one, and record its
    numbers beside it (``serve`` does not: those files are ``run``'s).  ``reuse``: fit the final
    estimator from such a record when it was made for the same inputs (:func:`fit_key`), running
    no task."""
    stacking = spec.stacking
    assert stacking is not None
    train = load_dataset(stacking.train)
    check_train_columns(spec, tuple(train.feature_names), data_features)
    kind: ensemble.Kind = "classifier" if all(m.kind == "classifier" for m in members) else "regressor"
    methods = {name: ensemble.resolve_stack_method(name, est, stacking.stack_method, kind)
               for name, est in estimators.items()}
    names = [m.name for m in spec.models]
    record = fit_record_path(spec)
    key = fit_key(spec, members, methods) if record is not None else ""
    recorded = read_fit_record(record, key) if reuse and record is not None else None
    if recorded is not None:
        meta, y_fit, classes = recorded
        catalog.methods = methods
        progress(f"stacking: the final estimator's inputs recorded by run in {record} are for these members, "
                 "train data and [stacking]: fitting it from them (no cross-validation task)")
        plan = ensemble.FoldPlan(folds=(), y_fit=y_fit, classes=classes, n_samples=len(y_fit))
    else:
        plan, meta = _out_of_fold(spec, catalog, server, members, methods, train, kind, work_dir, run_tasks,
                                  progress)
        if save and record is not None and not write_fit_record(record, key, meta, plan):
            log.info("the stacking fit's numbers hold Python objects: not recorded in %s", record)
    final = ensemble.fit_final_estimator(meta, plan, kind, ensemble.final_estimator(stacking.final_estimator, kind))
    fitted = ensemble.FittedStacking(kind=kind, members=tuple(names), stack_methods=tuple(methods[n] for n in names),
                                     classes=plan.classes, passthrough=stacking.passthrough, final_estimator=final)
    if save and stacking.save_to is not None:
        ensemble.save_stacking(fitted, stacking.save_to)
    stacked_members = [dataclasses.replace(m, output=member_output(methods[m.name])) for m in members]
    return stacked_members, fitted


def _out_of_fold(spec: JobSpec, catalog: JobCatalog, server: ArtifactServer, members: list[ensemble.MemberSpec],
                 methods: Mapping[str, str], train: Any, kind: ensemble.Kind, work_dir: Path, run_tasks: RunTasks,
                 progress: Callable[[str], None]) -> tuple[ensemble.FoldPlan, np.ndarray]:
    """The folds' plan and the final estimator's input: the members' out-of-fold predictions (each
    member's folds run as ``cv_fit_predict`` tasks; a text member's on its column of the train set
    as a text shard), then the passthrough features (the numeric ones)."""
    stacking = spec.stacking
    assert stacking is not None
    plan = ensemble.plan_folds(train.features, train.labels, kind, stacking.cv)
    train_shards = cut_shards(train.features, train.features.shape[0])
    labels_path = work_dir / "train" / "labels.npy"
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(labels_path, array_to_npy(np.asarray(plan.y_fit)))
    text_shards = {text_kind(number): [write_text_shard(0, 0, train.texts[name], labels_path.parent,
                                                        f"train-{text_kind(number)}")]
                   for number, name in enumerate(stacking.train.text)}
    catalog.add_training(train_shards, RemoteFile(server.publish("labels.npy", labels_path),
                                                  sha256_hex(labels_path.read_bytes())),
                         [(tr.tolist(), te.tolist()) for tr, te in plan.folds], methods, text_shards)
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
    return plan, meta

