"""The job file: a TOML description of an ensemble job, parsed and validated up front.

Everything is checked before anything is launched; each problem names its file and field.
Relative paths are resolved against the job file's directory.  See README "Job file".
"""

from __future__ import annotations

import codecs
import dataclasses
import getpass
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, TypeVar

from executor.modelfile import FORMATS as MODEL_FORMATS
from executor.modelfile import format_of
from executor.protocol import file_sha256
from framework import ensemble, readers
from framework.balancing import auto_rows_per_shard
from framework.errors import JobSpecError
from framework.packing import Constraint, ConstraintValueError, CostModel, PriceTable, Resources, parse_port_ranges
from framework.packing.constraints import from_job as constraint_from_job
from framework.packing.constraints import job_keys as constraint_keys
from framework.serving.spec import ServeSpec, ServeSpecError, parse_serve

ModelKind = ensemble.Kind
MODEL_KINDS = ensemble.KINDS
OUTPUTS = ensemble.OUTPUTS
EXECUTOR_MODES = ("shared", "per_model")
OUTPUT_SUFFIXES = (".csv", ".npy", ".parquet")
# The integration methods, stack methods and final estimators are the ensemble registry's.


@dataclass(frozen=True)
class ModelSpec:
    """One ensemble member: a model file (joblib or skops) and what it needs to run."""

    name: str
    path: Path
    sha256: str
    kind: ModelKind
    output: ensemble.Output = "predict"
    weight: float = 1.0
    proba_class: str | int | None = None
    cpus: float = 0.5
    mem: float = 256.0
    disk: float = 0.0
    gpus: float = 0.0
    executor_cpus: float = 0.01
    """Cpus of the executor process itself, carved out of its tasks' ``cpus`` (see
    ``framework.catalog.launched_cpus``); 0.01 is the least Mesos allocates."""
    executor_mem: float = 0.0
    """Memory (MB) of the executor that holds the loaded model; 0 means estimated from the file size."""
    constraints: tuple[Constraint, ...] = ()
    duration: float | None = None
    features: tuple[str, ...] | None = None
    """The data columns this member takes, in order; None: those it was fitted on
    (``feature_names_in_``) when the data has them all, else every feature column."""
    allow_nan: bool = False
    """The model accepts missing values (NaN) in its columns, as HistGradientBoosting does;
    without it a NaN in a column it takes is refused before anything launches. Inf never is."""
    format: str = "joblib"
    """``joblib`` (a pickle: its code runs when loaded) or ``skops`` (only allowed types load)."""
    trusted_types: tuple[str, ...] = ()
    """skops: types allowed on top of the default (scikit-learn's and numpy's own classes)."""
    timeout: float | None = None
    """Seconds one task may compute; past it the task is killed and retried on another agent."""
    text: str | None = None
    """A text member: the one string column of the data it takes, handed to it as a 1-D array of
    ``str`` (as a ``TfidfVectorizer`` pipeline wants); None: it takes numbers (``features``)."""
    inputs: tuple["SourceColumns", ...] = ()
    """With ``[[sources]]``: the sources this member reads and their columns, in order (from
    ``source`` [+ ``features``] or ``columns``); empty: resolved from the model (see
    ``framework.sources``)."""


@dataclass(frozen=True)
class SourceColumns:
    """A model's columns from one source, in order; ``columns`` None: every feature column of the
    source (or those the model was fitted on)."""

    source: str
    columns: tuple[str, ...] | None = None


MISSING_POLICIES = ("error", "drop")


@dataclass(frozen=True)
class SourceSpec:
    """One ``[[sources]]`` table: a named file whose rows are joined to the others by ``key``."""

    name: str
    path: Path
    key: str


@dataclass(frozen=True)
class DataSpec:
    """The input rows: Parquet, Arrow IPC/Feather, CSV with a header, a 2-D ``.npy`` array, or a
    directory of files of one of these formats (see :mod:`framework.readers`)."""

    path: Path
    features: tuple[str, ...] | None = None
    label: str | None = None
    rows_per_shard: int | Literal["auto"] = "auto"
    """Rows per shard (one work item per model and shard), or ``auto``: sized from the data's rows
    and the job's cores (see :meth:`shard_rows`)."""

    def shard_rows(self, rows: int, features: int, cores: float, text_bytes: float = 0.0) -> int:
        """The rows of one shard for data of ``rows`` x ``features`` (and ``text_bytes`` of text
        per row) on ``cores`` cores."""
        if self.rows_per_shard == "auto":
            return auto_rows_per_shard(rows, features, cores, text_bytes)
        return self.rows_per_shard

    @property
    def resolved_rows_per_shard(self) -> int:
        """The rows of one shard, once ``auto`` was resolved (``preflight.resolve_shard_rows``)."""
        if self.rows_per_shard == "auto":
            raise ValueError("rows_per_shard = \"auto\" not resolved yet (preflight.resolve_shard_rows)")
        return self.rows_per_shard
    delimiter: str = ","
    """CSV only: the field delimiter."""
    encoding: str = "utf-8"
    """CSV only: the text encoding (any Python codec name pyarrow accepts, e.g. latin-1)."""
    text: tuple[str, ...] = ()
    """The string columns text members take (their ``text``), each cut into text shards of its
    own; never numeric features."""
    primary: str | None = None
    """With ``[[sources]]``: the source whose row order the output keeps (default: the first)."""
    missing: str = "error"
    """With ``[[sources]]``: a primary key absent from another source is an ``error``, or ``drop``
    drops that row for every member."""


@dataclass(frozen=True)
class StackingSpec:
    """Stacking: a final estimator trained on out-of-fold member predictions over ``train``."""

    train: DataSpec
    final_estimator: str = "auto"
    cv: int = 5
    stack_method: ensemble.StackMethod = "auto"
    passthrough: bool = False
    save_to: Path | None = None


@dataclass(frozen=True)
class FrameworkSettings:
    """How to reach Mesos and who we are there."""

    master: str = "local"
    name: str = "mesos-ensemble"
    role: str = "*"
    user: str = field(default_factory=getpass.getuser)
    principal: str | None = None
    secret: str | None = field(default=None, repr=False)
    """From ``secret_file`` or the environment variable ``secret_env`` (or, discouraged, inline)."""
    failover_timeout: float = 3600.0
    executor_python: str | None = None
    """Python on the agents; default: this interpreter for the local cluster, ``python3`` elsewhere."""
    artifact_host: str | None = None
    """Address agents use to reach the framework's artifact server; default: auto."""
    artifact_port: int = 0
    status_port: int = 0
    """Port of the framework's live status page (``/`` and ``/status``); 0: any free port."""
    executors: str = "shared"
    """``shared``: one executor per agent runs every model's tasks (one process start, one download
    of each shard per agent); ``per_model``: one executor per (agent, model), models isolated."""
    max_retries: int = 3
    speculation_factor: float = 2.0
    """A task running longer than this many times its model's measured mean (+1 s) gets a backup
    copy on another agent the job uses; 0 turns speculation off."""
    refuse_seconds: float = 5.0
    never_fits_refuse_seconds: float = 300.0
    packing_budget_ms: float = 50.0
    timeout_seconds: float = 3600.0
    master_timeout: float = 60.0
    """Once subscribed, a master unreachable for longer than this fails the job (journal kept)."""
    placement_timeout: float = 60.0
    """Pending work that no offer has fitted for this long fails the job with the packer's reasons."""


@dataclass(frozen=True)
class LocalClusterSpec:
    """The embedded cluster used when ``master = "local"``."""

    agents: tuple[dict[str, Any], ...] = ()
    keep_sandboxes: bool = False


@dataclass(frozen=True)
class JobSpec:
    """A whole, validated job."""

    source: Path
    name: str
    models: tuple[ModelSpec, ...]
    data: DataSpec
    integration: str
    output: Path
    report: Path | None
    min_members: int | None
    framework: FrameworkSettings
    local_cluster: LocalClusterSpec
    pricing: PriceTable
    cost_model: CostModel
    stacking: StackingSpec | None = None
    explain: bool = False
    """Add a ``member_<name>`` column per member to the output: what it said for each row."""
    pass_through: tuple[str, ...] = ()
    """Columns of the data copied into a Parquet output beside the predictions (e.g. the key)."""
    sources: tuple[SourceSpec, ...] = ()
    """``[[sources]]``: several files joined by key (empty: the one ``[data] path``)."""
    serve: ServeSpec | None = None
    """``[serve]``: how ``mesos-ensemble serve`` deploys the members (None: no such table)."""

    def source_spec(self, name: str) -> SourceSpec:
        return next(s for s in self.sources if s.name == name)

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)


Choice = TypeVar("Choice", bound=str)


class _Section:
    """Typed access to one TOML table, with errors that name ``file: section.field``."""

    def __init__(self, source: Path, prefix: str, table: Any) -> None:
        self.source, self.prefix = source, prefix
        if not isinstance(table, dict):
            self.fail("", f"must be a table, got {type(table).__name__}")
        self.table: dict[str, Any] = table

    def where(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix and key else (self.prefix or key)

    def fail(self, key: str, problem: str) -> None:
        raise JobSpecError(f"{self.source}: {self.where(key)} {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        if key not in self.table:
            if required:
                self.fail(key, "is required")
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            self.fail(key, f"must be {names}, got {value!r}")
        return value

    def number(self, key: str, default: float | None, minimum: float = 0.0, positive: bool = False) -> float | None:
        value = self.get(key, float, default)
        if value is None:
            return None
        if not math.isfinite(value) or value < minimum or (positive and value <= 0):
            self.fail(key, f"must be a {'positive' if positive else 'non-negative'} number, got {value!r}")
        return value

    def choice(self, key: str, choices: tuple[Choice, ...], default: Choice | None = None) -> Choice:
        value = self.get(key, str, default, required=default is None)
        if value not in choices:
            self.fail(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return next(c for c in choices if c == value)

    def path(self, key: str, required: bool = True, must_exist: bool = True) -> Path | None:
        value = self.get(key, str, None, required=required)
        if value is None:
            return None
        resolved = (self.source.parent / value).resolve()
        if must_exist and not resolved.is_file():
            self.fail(key, f"names {value!r}, which is not a file ({resolved})")
        return resolved

    def reject_unknown(self, known: set[str]) -> None:
        for key in sorted(set(self.table) - known):
            self.fail(key, f"is not a known field (known: {', '.join(sorted(known))})")


def load_job(path: Path | str) -> JobSpec:
    """Read and validate a job file; raise :class:`JobSpecError` naming the first problem."""
    source = Path(path).resolve()
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobSpecError(f"{source}: job file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise JobSpecError(f"{source}: not valid TOML: {error}") from None
    top = _Section(source, "", raw)
    top.reject_unknown({"job", "data", "models", "framework", "local_cluster", "pricing", "stacking", "sources",
                       "serve"})
    job = _Section(source, "job", top.get("job", dict, required=True))
    job.reject_unknown({"name", "integration", "output", "report", "min_members", "explain", "pass_through"})
    models_raw = top.get("models", list, required=True)
    if not models_raw:
        top.fail("models", "must list at least one model ([[models]])")
    sources = _parse_sources(top, top.get("sources", list, []))
    models = tuple(_parse_model(source, i, entry, tuple(s.name for s in sources))
                   for i, entry in enumerate(models_raw))
    names = [m.name for m in models]
    for name in names:
        if names.count(name) > 1:
            top.fail("models", f"has two models named {name!r}; names must be unique")
    integration = job.choice("integration", ensemble.method_names(), "mean")
    min_members = job.get("min_members", int)
    if min_members is not None and not 1 <= min_members <= len(models):
        job.fail("min_members", f"must be between 1 and the number of models ({len(models)}), got {min_members}")
    if min_members is not None and min_members < len(models) and not ensemble.method(integration).supports_subsets:
        job.fail("min_members", f'is {min_members}, but integration = "{integration}" needs every member (it cannot '
                                f"combine a subset of them); remove it or set it to {len(models)}")
    _check_weights(top, models, integration, min_members)
    output = job.path("output", must_exist=False)
    assert output is not None
    if output.suffix not in OUTPUT_SUFFIXES:
        job.fail("output", f"must end in .csv, .npy or .parquet, got {output.name!r}")
    pass_through = job.get("pass_through", list, [])
    if not all(isinstance(c, str) and c for c in pass_through) or len(set(pass_through)) != len(pass_through):
        job.fail("pass_through", f"must be a list of distinct column names, got {pass_through!r}")
    if pass_through and output.suffix != ".parquet":
        job.fail("pass_through", f"applies to a .parquet output (which keeps the data's columns beside the "
                                 f"predictions); job.output is {output.name!r}")
    _check_writable(job, "output", output)
    report = job.path("report", required=False, must_exist=False)
    if report is not None:
        _check_writable(job, "report", report)
        if report == output:
            job.fail("report", f"names the same file as job.output ({output}); it would replace the predictions")
        if is_html_report(report) and json_beside(report).is_dir():
            job.fail("report", f"is an HTML page, whose JSON goes beside it to {json_beside(report)}, which is a "
                               "directory")
    data = (_parse_data(source, "data", top.get("data", dict, required=True)) if not sources
            else _parse_joined_data(source, top.get("data", dict, {}), sources))
    if sources and "stacking" in raw:
        top.fail("stacking", "cannot be used with [[sources]] yet (its train set is one [data]-style file)")
    stacking = _parse_stacking(source, top.get("stacking", dict)) if "stacking" in raw else None
    texts = [(i, m) for i, m in enumerate(models) if m.text is not None]
    if texts and data.features is not None:
        for i, m in texts:
            if m.text in data.features:
                top.fail(f"models[{i}] ({m.name}).text", f"names {m.text!r}, which data.features lists as a numeric "
                                                         "feature; list only numeric columns in data.features")
    if texts:
        data = dataclasses.replace(data, text=tuple(dict.fromkeys(m.text for _i, m in texts if m.text)))
        if stacking is not None:  # the train set holds the same text columns, for the text members' folds
            stacking = dataclasses.replace(stacking, train=dataclasses.replace(stacking.train, text=data.text))
    train_table = ensemble.method(integration).train_table
    if train_table is not None and train_table not in raw:
        job.fail("integration", f'is "{integration}", which needs a [{train_table}] table with a labelled train set')
    inputs = {data.path: "data.path", **{s.path: f"sources[{i}] ({s.name}).path" for i, s in enumerate(sources)},
              **{m.path: f"models[{i}] ({m.name}).path" for i, m in enumerate(models)}}
    if stacking is not None:
        inputs[stacking.train.path] = "stacking.train.path"
    report_json = json_beside(report) if report is not None and is_html_report(report) else None
    for key, written in (("output", output), ("report", report), ("report", report_json)):
        if written in inputs:
            job.fail(key, f"names {written.name!r}, the job's input {inputs[written]}, which it would overwrite")
    return JobSpec(
        source=source,
        name=job.get("name", str, source.stem),
        models=models,
        data=data,
        integration=integration,
        output=output,
        report=report,
        min_members=min_members,
        explain=job.get("explain", bool, False),
        pass_through=tuple(pass_through),
        framework=_parse_framework(source, top.get("framework", dict, {})),
        local_cluster=_parse_local_cluster(source, top.get("local_cluster", dict, {})),
        **_parse_pricing(source, top.get("pricing", dict, {})),
        stacking=stacking,
        sources=sources,
        serve=_parse_serve(top, names) if "serve" in raw else None,
    )


def _parse_serve(top: _Section, names: list[str]) -> ServeSpec:
    """``[serve]`` (see ``framework.serving.spec``), its errors named as the rest of the file's."""
    try:
        return parse_serve(top.get("serve", dict), names)
    except ServeSpecError as error:
        raise JobSpecError(f"{top.source}: {error}") from None


WEIGHTED_METHODS = ("weighted_mean", "hard_vote", "soft_vote")
"""Integration methods that divide by (or vote with) the members' weights."""


def _check_weights(top: _Section, models: tuple[ModelSpec, ...], integration: str, min_members: int | None) -> None:
    """Weights the integration can use: finite and non-negative (checked per model), not 1 for a
    median, and never a set of members that may be integrated alone whose weights are all 0."""
    if integration == "median":
        for i, m in enumerate(models):
            if m.weight != 1.0:
                top.fail(f"models[{i}] ({m.name}).weight", f"must be 1 for integration = \"median\" (a median is "
                                                           f"unweighted), got {m.weight:g}")
    if integration not in WEIGHTED_METHODS:
        return
    zero = [m.name for m in models if m.weight == 0.0]
    needed = min_members if min_members is not None else len(models)
    if len(zero) == len(models):
        top.fail("models[*].weight", f"are all 0 ({', '.join(zero)}); {integration} needs a positive weight "
                                     "on at least one model")
    if len(zero) >= needed:
        top.fail("models[*].weight", f"are 0 for {', '.join(zero)}, and job.min_members = {min_members} lets those "
                                     f"alone be integrated, which {integration} cannot do with weights summing to 0; "
                                     f"raise min_members above {len(zero)} or give them positive weights")


HTML_REPORT_SUFFIXES = (".html", ".htm")


def is_html_report(path: Path) -> bool:
    """A ``report`` path that asks for the HTML page (``.html``/``.htm``); any other is the JSON."""
    return path.suffix.lower() in HTML_REPORT_SUFFIXES


def json_beside(path: Path) -> Path:
    """Where the JSON of an HTML report goes: ``report.html`` -> ``report.json``, same directory."""
    return path.with_suffix(".json")


def _check_writable(section: _Section, key: str, path: Path) -> None:
    """``path`` can be written the way outputs are (a temporary sibling renamed over it): its
    directory exists and this user may create files in it, and it is not itself a directory."""
    parent = path.parent
    if not parent.exists():
        section.fail(key, f"is in {parent}, which does not exist")
    if not parent.is_dir():
        section.fail(key, f"is in {parent}, which is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        section.fail(key, f"is in {parent}, which is not writable by {getpass.getuser()}")
    if path.is_dir():
        section.fail(key, f"names {path}, which is a directory; expected a file name")


def _parse_model(source: Path, index: int, entry: Any, source_names: tuple[str, ...] = ()) -> ModelSpec:
    section = _Section(source, f"models[{index}]", entry)
    section.reject_unknown(
        {"name", "path", "sha256", "kind", "output", "weight", "proba_class", "cpus", "mem", "disk", "gpus",
         "executor_cpus", "executor_mem", "constraints", "duration", "features", "allow_nan",
         "format", "trusted_types", "timeout", "source", "columns", "text"}
    )
    name = section.get("name", str, required=True)
    section.prefix = f"models[{index}] ({name})"
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        section.fail("name", f"must be letters, digits, '-' or '_', got {name!r}")
    path = section.path("path")
    assert path is not None
    sha256 = section.get("sha256", str, required=True).lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        section.fail("sha256", f"must be 64 hex digits, got {sha256!r}")
    actual = file_sha256(path)
    if actual != sha256:
        section.fail("sha256", f"does not match {path.name} (file has {actual})")
    kind = section.choice("kind", MODEL_KINDS)
    output = section.choice("output", OUTPUTS, "predict")
    if kind == "regressor" and output != "predict":
        section.fail("output", f"must be predict for a regressor, got {output!r}")
    proba_class = section.get("proba_class", (str, int))
    constraints_table = section.get("constraints", dict, {})
    constraints = _parse_constraints(_Section(source, f"{section.prefix}.constraints", constraints_table))
    features = section.get("features", list)
    if features is not None:
        if not features or not all(isinstance(f, str) for f in features):
            section.fail("features", f"must be a non-empty list of column names, got {features!r}")
        repeated = sorted({f for f in features if features.count(f) > 1})
        if repeated:
            section.fail("features", f"names a column twice: {repeated}")
    model_format = section.choice("format", MODEL_FORMATS, format_of(path))
    trusted_types = section.get("trusted_types", list, [])
    if not all(isinstance(t, str) and t for t in trusted_types):
        section.fail("trusted_types", f"must be a list of type names (e.g. \"sklearn.tree._tree.Tree\"), "
                                      f"got {trusted_types!r}")
    if trusted_types and model_format != "skops":
        section.fail("trusted_types", f"applies only to skops files; {path.name} is a {model_format} file, "
                                      "whose code runs when it is loaded whatever this list says")
    inputs = _parse_model_inputs(section, features, source_names)
    text = section.get("text", str)
    if text is not None:
        if not text:
            section.fail("text", "must name the string column this model takes, got ''")
        if features is not None:
            section.fail("text", f"and features are both given; a text member takes one string column ({text!r}), "
                                 "a numeric member takes features")
        if source_names:
            section.fail("text", "cannot be used with [[sources]] yet; give the data as [data] path")
    number: Callable[..., Any] = section.number
    return ModelSpec(
        name=name, path=path, sha256=sha256, kind=kind, output=output,
        weight=number("weight", 1.0), proba_class=proba_class,
        cpus=number("cpus", 0.5, positive=True), mem=number("mem", 256.0, positive=True),
        disk=number("disk", 0.0), gpus=number("gpus", 0.0),
        executor_cpus=number("executor_cpus", 0.01), executor_mem=number("executor_mem", 0.0),
        constraints=constraints, duration=number("duration", None, positive=True),
        features=tuple(features) if features is not None else None,
        allow_nan=section.get("allow_nan", bool, False),
        format=model_format, trusted_types=tuple(trusted_types),
        timeout=number("timeout", None, positive=True),
        inputs=inputs, text=text,
    )


def _parse_model_inputs(section: _Section, features: list[str] | None,
                        source_names: tuple[str, ...]) -> tuple[SourceColumns, ...]:
    """A model's ``source`` (with ``features``: those columns of it) or ``columns`` (a table of
    source = [columns], taken in the order written), each naming one of ``source_names``."""
    source = section.get("source", str)
    columns = section.get("columns", dict)
    for key, named in (("source", [source] if source is not None else []), ("columns", list(columns or {}))):
        if named and not source_names:
            section.fail(key, "names a source, but the job has no [[sources]] tables (its data is [data] path)")
        for name in named:
            if name not in source_names:
                section.fail(key if key == "source" else f"columns.{name}",
                             f"names {name!r}, which is not a [[sources]] name (known: {', '.join(source_names)})")
    if source is not None and columns is not None:
        section.fail("columns", "and source are both given; use source (one source, optionally with features) "
                                "or columns (several sources)")
    if columns is not None and features is not None:
        section.fail("columns", "and features are both given; list the columns under each source in columns")
    if source is not None:
        if not source:
            section.fail("source", "must name a [[sources]] table, got ''")
        return (SourceColumns(source, tuple(features) if features is not None else None),)
    if columns is None:
        return ()
    if not columns:
        section.fail("columns", 'must name at least one source, e.g. columns = { features = ["f0", "f1"] }')
    inputs = []
    seen: set[tuple[str, str]] = set()
    for name, listed in columns.items():
        if not isinstance(listed, list) or not listed or not all(isinstance(c, str) and c for c in listed):
            section.fail(f"columns.{name}", f"must be a non-empty list of column names, got {listed!r}")
        for column in listed:
            if (name, column) in seen:
                section.fail(f"columns.{name}", f"names the column {column!r} twice")
            seen.add((name, column))
        inputs.append(SourceColumns(name, tuple(listed)))
    return tuple(inputs)


def _parse_sources(top: _Section, entries: list[Any]) -> tuple[SourceSpec, ...]:
    """The ``[[sources]]`` tables: unique names, an existing file of a known format, a key column."""
    sources: list[SourceSpec] = []
    for index, entry in enumerate(entries):
        section = _Section(top.source, f"sources[{index}]", entry)
        section.reject_unknown({"name", "path", "key"})
        name = section.get("name", str, required=True)
        section.prefix = f"sources[{index}] ({name})"
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            section.fail("name", f"must be letters, digits, '-' or '_', got {name!r}")
        if any(s.name == name for s in sources):
            top.fail("sources", f"has two sources named {name!r}; names must be unique")
        path = _data_path(section)
        key = section.get("key", str, required=True)
        if not key:
            section.fail("key", "must name the source's key column, got ''")
        sources.append(SourceSpec(name=name, path=path, key=key))
    return tuple(sources)


def _parse_joined_data(source: Path, table: Any, sources: tuple[SourceSpec, ...]) -> DataSpec:
    """``[data]`` beside ``[[sources]]``: how rows are cut and joined; no ``path`` (the sources
    have them). Its ``path`` is the primary source's, so what names the data file keeps working."""
    section = _Section(source, "data", table)
    if "path" in section.table:
        section.fail("path", "and [[sources]] are both given; with [[sources]] every file is a source")
    section.reject_unknown({"label", "rows_per_shard", "primary", "missing"})
    rows = _rows_per_shard(section)
    names = [s.name for s in sources]
    primary = section.get("primary", str, names[0])
    if primary not in names:
        section.fail("primary", f"names {primary!r}, which is not a [[sources]] name (known: {', '.join(names)})")
    return DataSpec(path=next(s.path for s in sources if s.name == primary), label=section.get("label", str),
                    rows_per_shard=rows, primary=primary, missing=section.choice("missing", MISSING_POLICIES, "error"))


def _parse_constraints(section: _Section) -> tuple[Constraint, ...]:
    """A model's placement constraints, each key parsed by the plug-in registered for it."""
    section.reject_unknown(set(constraint_keys()))
    found: list[Constraint] = []
    for key in constraint_keys():
        if key in section.table:
            try:
                found.extend(constraint_from_job(key, section.table[key]))
            except ConstraintValueError as error:
                section.fail(f"{key}.{error.field}" if error.field else key, error.problem)
    return tuple(found)


DATA_FORMATS_TEXT = ".parquet, .feather/.arrow, .csv (with a header; .csv.gz too) or .npy"


def _data_path(section: _Section) -> Path:
    """A section's ``path``: an existing data file of a known format, or a directory of them."""
    path = section.path("path", must_exist=False)
    assert path is not None
    if path.is_dir():
        if not any(readers.format_of(p) for p in path.iterdir() if p.is_file()):
            section.fail("path", f"names the directory {path}, which holds no {DATA_FORMATS_TEXT} files")
    elif not path.is_file():
        section.fail("path", f"names {section.table['path']!r}, which is not a file ({path})")
    elif readers.format_of(path) is None:
        section.fail("path", f"must be a {DATA_FORMATS_TEXT} file (or a directory of them), got {path.name!r}")
    return path


def _parse_data(source: Path, prefix: str, table: Any) -> DataSpec:
    section = _Section(source, prefix, table)
    section.reject_unknown({"path", "features", "label", "rows_per_shard", "delimiter", "encoding"})
    path = _data_path(section)
    delimiter = section.get("delimiter", str, ",")
    if len(delimiter) != 1 or delimiter in "\"\r\n":
        section.fail("delimiter", f"must be one character (not a quote or line break), got {delimiter!r}")
    encoding = section.get("encoding", str, "utf-8")
    try:
        codecs.lookup(encoding)
    except LookupError:
        section.fail("encoding", f"is not a known text encoding, got {encoding!r} (e.g. utf-8, latin-1, cp1252)")
    features = section.get("features", list)
    if features is not None:
        if not features or not all(isinstance(f, str) for f in features):
            section.fail("features", "must be a non-empty list of column names")
        features = tuple(features)
    rows = _rows_per_shard(section)
    return DataSpec(path=path, features=features, label=section.get("label", str), rows_per_shard=rows,
                    delimiter=delimiter, encoding=encoding)


def _rows_per_shard(section: _Section) -> int | Literal["auto"]:
    """``rows_per_shard``: a number of rows (at least 1) or ``"auto"`` (the default)."""
    rows: int | Literal["auto"] = "auto"
    if section.table.get("rows_per_shard", "auto") != "auto":
        if isinstance(section.table["rows_per_shard"], str):
            section.fail("rows_per_shard", f"must be int, got {section.table['rows_per_shard']!r} "
                                           "(a number of rows, or \"auto\")")
        count: int = section.get("rows_per_shard", int)
        if count < 1:
            section.fail("rows_per_shard", f"must be at least 1, got {count}")
        rows = count
    return rows


def _parse_stacking(source: Path, table: Any) -> StackingSpec:
    section = _Section(source, "stacking", table)
    section.reject_unknown({"train", "final_estimator", "cv", "stack_method", "passthrough", "save_to"})
    train = _parse_data(source, "stacking.train", section.get("train", dict, required=True))
    if train.label is None:
        section.fail("train.label", "is required: stacking trains its final estimator on labelled rows")
    cv = section.get("cv", int, 5)
    if cv < 2:
        section.fail("cv", f"must be at least 2 folds, got {cv}")
    save_to = section.path("save_to", required=False, must_exist=False)
    if save_to is not None:
        _check_writable(section, "save_to", save_to)
    return StackingSpec(
        train=train,
        final_estimator=section.choice("final_estimator", tuple(ensemble.FINAL_ESTIMATORS), "auto"),
        cv=cv,
        stack_method=section.choice("stack_method", ensemble.STACK_METHODS, "auto"),
        passthrough=section.get("passthrough", bool, False),
        save_to=save_to,
    )


def _parse_framework(source: Path, table: Any) -> FrameworkSettings:
    section = _Section(source, "framework", table)
    known = set(FrameworkSettings.__dataclass_fields__) | {"secret_file", "secret_env"}
    section.reject_unknown(known)
    defaults = FrameworkSettings()
    values: dict[str, Any] = {}
    for key in ("master", "name", "role", "user", "principal", "executor_python", "artifact_host"):
        values[key] = section.get(key, str, getattr(defaults, key))
    values["secret"] = _secret(section)
    if (values["principal"] is None) != (values["secret"] is None):
        section.fail("principal", "and secret_file (or secret_env, or secret) must be given together")
    for key in ("failover_timeout", "refuse_seconds", "never_fits_refuse_seconds", "packing_budget_ms",
                "speculation_factor"):
        values[key] = section.number(key, getattr(defaults, key))
    for key in ("timeout_seconds", "master_timeout", "placement_timeout"):
        values[key] = section.number(key, getattr(defaults, key), positive=True)
    for key in ("artifact_port", "status_port", "max_retries"):
        values[key] = section.get(key, int, getattr(defaults, key))
        if values[key] < 0:
            section.fail(key, f"must be at least 0, got {values[key]}")
    values["executors"] = section.choice("executors", EXECUTOR_MODES, defaults.executors)
    try:
        parse_master(values["master"])
    except ValueError as error:
        section.fail("master", str(error))
    return FrameworkSettings(**values)


DEFAULT_MASTER_PORT = 5050
"""The port pymesos (and Mesos) assume when a master is given as a bare host."""
DEFAULT_ZOOKEEPER_PORT = 2181
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class MasterAddress:
    """A parsed ``[framework] master``: the embedded cluster, one master, or a ZooKeeper ensemble
    that elects the master (``zk://[user:pass@]host:2181[,host:2181...]/path``)."""

    kind: Literal["local", "host", "zk"]
    hosts: tuple[tuple[str, int], ...] = ()
    """``host``: the master; ``zk``: the ZooKeeper servers (not the master, which they name)."""
    path: str = ""
    """ZooKeeper only: the znode under which the masters register (``/mesos``)."""

    @property
    def loopback(self) -> bool:
        """Every host is this machine's loopback (the framework's artifact server can bind there)."""
        return bool(self.hosts) and all(host in LOOPBACK_HOSTS for host, _port in self.hosts)


def _host_port(text: str, default_port: int, what: str) -> tuple[str, int]:
    host, colon, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not colon:
        host = text
    if not host or any(c.isspace() or c in ":/@[]," for c in host):
        raise ValueError(f"must name a {what} as host:port, got {text!r}")
    if not colon:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"must have a port from 1 to 65535 after {host!r}, got {port_text!r}")
    return host, int(port_text)


def parse_master(value: str) -> MasterAddress:
    """Parse a master string as pymesos reads it; raise ``ValueError`` saying what was expected.

    ``"local"``; ``host[:port]`` (port 5050 by default); ``zk://`` or ``zoo://`` followed by
    ``[user:password@]host[:2181][,host[:port]...]/path``.
    """
    expected = 'must be host:port, zk://host:2181/mesos or "local"'
    if value == "local":
        return MasterAddress("local")
    scheme, sep, rest = value.partition("://")
    if sep and scheme in ("zk", "zoo"):
        servers, slash, path = rest.partition("/")
        servers = servers.rpartition("@")[2]  # credentials, if any, are pymesos's business
        if not servers or not slash or not path:
            raise ValueError(f"{expected}; a ZooKeeper master needs servers and a path, got {value!r}")
        return MasterAddress("zk", tuple(_host_port(s, DEFAULT_ZOOKEEPER_PORT, "ZooKeeper server")
                                         for s in servers.split(",")), "/" + path)
    if sep:
        raise ValueError(f"{expected}, got {value!r}")
    try:
        return MasterAddress("host", (_host_port(value, DEFAULT_MASTER_PORT, "master"),))
    except ValueError as error:
        raise ValueError(f"{expected}: {error}") from None


def with_master(spec: JobSpec, master: str, origin: str = "--master") -> JobSpec:
    """``spec`` with its master replaced (a command-line ``--master``), checked as the job file's is."""
    try:
        parse_master(master)
    except ValueError as error:
        raise JobSpecError(f"{origin} {error}") from None
    return dataclasses.replace(spec, framework=dataclasses.replace(spec.framework, master=master))


MASTER_ENV = "MESOS_MASTER"
"""The environment variable naming the default master, as Mesos' own tools read it."""


def with_master_override(spec: JobSpec, flag: str | None, environ: Mapping[str, str]) -> JobSpec:
    """The master a command uses: ``--master`` if given, else ``$MESOS_MASTER`` if set and not
    empty, else the job file's ``[framework] master`` (``"local"`` when the file has none), the way
    command line > environment > file works elsewhere (AWS_REGION, DOCKER_HOST).  The value used is
    checked as the job file's is, and an error names where it came from."""
    if flag is not None:
        return with_master(spec, flag, "--master")
    from_environment = environ.get(MASTER_ENV, "").strip()
    if from_environment:
        return with_master(spec, from_environment, MASTER_ENV)
    return spec

def _secret(section: _Section) -> str | None:
    """The framework's secret from ``secret_file``, the variable named by ``secret_env`` or
    ``secret``, at most one of them; errors never show the secret itself."""
    given = [key for key in ("secret", "secret_file", "secret_env") if key in section.table]
    if len(given) > 1:
        section.fail(given[1], f"and {given[0]} are both given; use one")
    if "secret" in section.table and not isinstance(section.table["secret"], str):
        section.fail("secret", "must be a string (better: secret_file or secret_env)")
    secret_file = section.path("secret_file", required=False)
    if secret_file is not None:
        return secret_file.read_text(encoding="utf-8").strip()
    variable = section.get("secret_env", str)
    if variable is not None:
        value = os.environ.get(variable, "").strip()
        if not value:
            section.fail("secret_env", f"names the environment variable {variable!r}, which is not set or empty")
        return value
    return section.table.get("secret")


def _parse_local_cluster(source: Path, table: Any) -> LocalClusterSpec:
    section = _Section(source, "local_cluster", table)
    section.reject_unknown({"agents", "keep_sandboxes"})
    agents = section.get("agents", list, [])
    for i, agent in enumerate(agents):
        entry = _Section(source, f"local_cluster.agents[{i}]", agent)
        entry.reject_unknown({"hostname", "cpus", "mem", "disk", "gpus", "ports", "attributes"})
        for key in ("cpus", "mem", "disk", "gpus"):
            entry.number(key, 0.0)
        ports = entry.get("ports", str)
        if ports is not None:
            try:
                parse_port_ranges(ports)
            except ValueError:
                entry.fail("ports", f"must be port ranges within 0-65535 like \"[31000-32000]\" (or \"[]\"), "
                                    f"got {ports!r}")
        entry.get("attributes", dict, {})
    return LocalClusterSpec(agents=tuple(agents), keep_sandboxes=section.get("keep_sandboxes", bool, False))


def _parse_pricing(source: Path, table: Any) -> dict[str, Any]:
    """The ``[pricing]`` table as the packer's ``pricing`` (PriceTable) and ``cost_model``."""
    section = _Section(source, "pricing", table)
    section.reject_unknown({"price_attribute", "by_hostname", "by_attribute", "default", "unit_prices"})

    def prices(key: str, table_: dict[str, Any]) -> dict[str, float]:
        """A table of non-negative finite numbers, each bad value named by its full key."""
        for name, value in table_.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                section.fail(f"{key}.{name}", f"must be a non-negative number, got {value!r}")
        return {str(name): float(value) for name, value in table_.items()}

    by_hostname = prices("by_hostname", section.get("by_hostname", dict, {}))
    by_attribute = {}
    for attribute, values in section.get("by_attribute", dict, {}).items():
        if not isinstance(values, dict):
            section.fail(f"by_attribute.{attribute}", f"must be a table of value = price, got {values!r}")
        by_attribute[attribute] = prices(f"by_attribute.{attribute}", values)
    unit_prices = prices("unit_prices", section.get("unit_prices", dict, {}))
    for name in unit_prices:
        if name not in ("cpus", "mem", "disk", "gpus"):
            section.fail(f"unit_prices.{name}", "is not a resource (cpus, mem, disk, gpus)")
    pricing = PriceTable(
        attribute=section.get("price_attribute", str, "price"),
        by_hostname=by_hostname,
        by_attribute=by_attribute,
        default=section.number("default", 1.0) or 0.0,
    )
    return {"pricing": pricing, "cost_model": CostModel(unit_prices=Resources(**unit_prices))}
