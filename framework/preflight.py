"""Checks made before anything launches: can every model be placed, can the data be used.

Each check raises :class:`JobSpecError` with one line naming the file, the field or value and
what was expected (the command line prints it and exits 2). The pieces are pure functions of the
job's values, so the scheduler can reuse :func:`unplaceable` against the agents a real master offers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from framework.dataset import Dataset, NonFinite, non_finite_columns, open_data, text_bytes_per_row
from framework.errors import JobSpecError
from framework.jobspec import DataSpec, JobSpec, LocalClusterSpec, ModelSpec
from framework.packing import Agent, AttributeEquals, Resources, count_ports, parse_port_ranges
from framework.readers import count_rows, open_table

LOCAL_AGENT_DEFAULTS = {"cpus": 2.0, "mem": 4096.0, "disk": 10000.0, "gpus": 0.0}
"""What an embedded-cluster agent offers when ``[local_cluster] agents`` does not say."""

LOCAL_AGENT_PORTS = "[31000-32000]"
"""The ports an embedded-cluster agent offers when its ``[local_cluster] agents`` entry names none
(what a Mesos agent offers by default)."""

LOCAL_AGENT_COUNT = 2
"""How many agents the embedded cluster starts when ``[local_cluster] agents`` is not given."""

UNITS = {"cpus": "cpus", "mem": "MB", "disk": "MB", "gpus": "gpus"}


def _num(value: float) -> str:
    """A resource amount as a person writes it: 1000000, 0.5, 3999.99."""
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}".rstrip("0").rstrip(".")


def local_agents(cluster: LocalClusterSpec) -> list[Agent]:
    """The agents ``master = "local"`` starts, as the packer sees them."""
    entries: Sequence[Mapping[str, Any]] = cluster.agents or [{}] * LOCAL_AGENT_COUNT
    agents = []
    for i, entry in enumerate(entries):
        ports = parse_port_ranges(str(entry.get("ports", LOCAL_AGENT_PORTS)))
        agents.append(Agent(agent_id=f"local-{i + 1}", hostname=str(entry.get("hostname", f"agent-{i + 1}")),
                            offer_ids=(), attributes=dict(entry.get("attributes", {})), port_ranges=ports,
                            capacity=Resources(**{k: float(entry.get(k, d)) for k, d in LOCAL_AGENT_DEFAULTS.items()},
                                               ports=count_ports(ports))))
    return agents


def _feasible(constraint: Any, agents: Sequence[Agent]) -> np.ndarray | None:
    """The agents a constraint statically allows (None: it filters none, e.g. a spread)."""
    feasible = getattr(constraint, "feasible", None)
    if feasible is not None:  # constraint plug-ins
        mask = feasible(agents)
        return None if mask is None else np.asarray(mask, dtype=bool)
    return None


def _constraint_field(constraint: Any) -> str:
    if isinstance(constraint, AttributeEquals):
        return f"constraints.attribute.{constraint.attribute} = {constraint.value!r}"
    return f"constraints ({constraint.label()})"


def unplaceable(models: Sequence[ModelSpec], agents: Sequence[Agent], executors: str = "shared") -> list[str]:
    """Why each model whose task plus executor fits on none of ``agents`` can never run.

    A model's task needs its own ``cpus``/``mem``/``disk``/``gpus`` on one agent, beside its
    executor: with ``executors = "shared"`` the one executor that holds every model
    (``shared_executor_resources``), else the model's own (``executor_memory``); and the agent
    must satisfy the model's static constraints (attributes). Each reason names the model as
    ``models[i] (name)``, the field, what it asks and what the best agent offers; [] when every
    model fits somewhere.
    """
    from framework.catalog import executor_memory, shared_executor_resources, task_resources  # lazy (jobspec)

    shared = executors == "shared"
    reserve = shared_executor_resources(list(models)) if shared and models else Resources()
    reasons = []
    for index, model in enumerate(models):
        where = f"models[{index}] ({model.name})"
        executor = reserve if shared else Resources(cpus=model.executor_cpus, mem=executor_memory(model))
        task = task_resources(model, executor.cpus)
        allowed = list(agents)
        for constraint in model.constraints:
            mask = _feasible(constraint, allowed)
            if mask is not None and not mask.any():
                reasons.append(f"{where}.{_constraint_field(constraint)}, but no agent"
                               f"{' that passes its other constraints' if len(allowed) < len(agents) else ''} "
                               f"has it (agents: {_describe_attributes(allowed)})")
                break
            if mask is not None:
                allowed = [agent for agent, ok in zip(allowed, mask) if ok]
        else:
            if not any((task + executor).fits_in(agent.capacity) for agent in allowed):
                reasons.append(_resource_reason(where, task, executor, allowed, shared,
                                                filtered=len(allowed) < len(agents), model=model))
    return reasons


def _describe_attributes(agents: Sequence[Agent]) -> str:
    if not agents:
        return "none"
    return "; ".join(f"{a.hostname} {dict(a.attributes) or '{}'}" for a in agents[:8]) + (
        "; ..." if len(agents) > 8 else "")


def _resource_reason(where: str, task: Resources, executor: Resources, agents: Sequence[Agent], shared: bool,
                     filtered: bool, model: ModelSpec) -> str:
    """One resource that no agent has enough of, or else the combination no agent offers at once."""
    which = "the shared executor" if shared else "its executor"
    qualifier = " its constraints allow" if filtered else ""
    need = task + executor
    for name in UNITS:
        largest = max(getattr(a.capacity, name) for a in agents)
        if not Resources(**{name: getattr(need, name)}).fits_in(Resources(**{name: largest})):
            asked, unit, for_executor = getattr(task, name), UNITS[name], getattr(executor, name)
            # Say what the job asked: the task gives its executor's cpus back, and its prediction
            # worker's memory counts with the executor's.
            asked, extra = getattr(model, name), round(getattr(task, name) - getattr(model, name), 9)
            for_executor, beside = max(0.0, for_executor + extra), which
            if name == "mem":
                beside = f"{which} and a prediction worker"
            left = ("" if not for_executor
                    else f" ({_num(largest - for_executor)} {unit} after {beside})" if largest > for_executor
                    else f" (none left after {beside}: {_num(for_executor)} {unit})")
            return (f"{where}.{name} = {_num(asked)} {unit} per task, but the largest agent{qualifier} offers "
                    f"{_num(largest)} {unit}{left}")
    asks = ", ".join(f"{name} {_num(getattr(need, name))}" for name in UNITS if getattr(need, name))
    return (f"{where} needs {asks} on one agent (task + {which}), which no agent{qualifier} offers at once "
            f"(agents: {'; '.join(_describe_capacity(a) for a in agents[:8])})")


def _describe_capacity(agent: Agent) -> str:
    return f"{agent.hostname} " + ", ".join(f"{name} {_num(getattr(agent.capacity, name))}" for name in UNITS
                                            if getattr(agent.capacity, name))


IDLE_CPUS_WORTH_A_WARNING = 0.25
"""Cpus of an agent that a model's tasks leave unreserved when they fill it (a quarter of a core)."""


def idle_cores(models: Sequence[ModelSpec], agents: Sequence[Agent], executors: str = "shared") -> list[str]:
    """Warnings for models whose tasks cannot use an agent's cores: filling an agent with one
    model's tasks (``cpus`` each, beside its executor, whose share is carved out of theirs)
    reserves at least :data:`IDLE_CPUS_WORTH_A_WARNING` cpus less than it has (``cpus = 0.7``
    on 2 cpus: 2 tasks, 1.4 cpus).  One line per model and agent size, with the ``cpus`` that
    would use the agent whole."""
    from framework.catalog import shared_executor_resources, task_resources  # lazy (jobspec)

    reserve = shared_executor_resources(list(models)) if executors == "shared" and models else None
    warnings = []
    for index, model in enumerate(models):
        executor_cpus = reserve.cpus if reserve is not None else model.executor_cpus
        launched = task_resources(model, executor_cpus).cpus
        for cpus in sorted({a.capacity.cpus for a in agents}):
            fitting = int((cpus - executor_cpus + 1e-9) // launched) if launched > 0 else 0
            reserved = fitting * model.cpus
            if fitting == 0 or cpus - reserved < IDLE_CPUS_WORTH_A_WARNING - 1e-9:
                continue
            hosts = [a.hostname for a in agents if a.capacity.cpus == cpus]
            filling = {math.floor(cpus / n * 1000) / 1000 for n in (fitting, fitting + 1)}  # down: n tasks fit
            whole = [f"{v:.3f}".rstrip("0").rstrip(".") for v in sorted(filling, reverse=True)]
            warnings.append(f"models[{index}] ({model.name}).cpus = {_num(model.cpus)} per task: {fitting} task(s) at "
                            f"once on {hosts[0]}{f' and {len(hosts) - 1} more' if len(hosts) > 1 else ''} "
                            f"({_num(cpus)} cpus) reserve {_num(round(reserved, 3))} of its {_num(cpus)} cpus; "
                            f"cpus = {' or '.join(whole)} would use them all")
    return warnings


def job_warnings(spec: JobSpec) -> list[str]:
    """What ``validate`` warns about before a run: models that leave the embedded cluster's
    cores idle (an external master's agents are known only from its offers)."""
    if spec.framework.master != "local":
        return []
    return idle_cores(spec.models, local_agents(spec.local_cluster), spec.framework.executors)


def check_job(spec: JobSpec) -> None:
    """The checks that need only the job file: every model can be placed on the embedded
    cluster's agents (``master = "local"``; an external master's agents are known only from
    its offers). Raises :class:`JobSpecError` naming the first model (and how many more)."""
    if spec.framework.master != "local":
        return
    reasons = unplaceable(spec.models, local_agents(spec.local_cluster), spec.framework.executors)
    if reasons:
        more = f" (and {len(reasons) - 1} more: {'; '.join(reasons[1:])})" if len(reasons) > 1 else ""
        raise JobSpecError(f"{spec.source}: {reasons[0]}{more}")


def check_data(spec: JobSpec, dataset: Dataset, features: Mapping[str, Sequence[str] | None],
               data: DataSpec | None = None) -> None:
    """:func:`check_non_finite` over the rows of ``dataset`` (in memory)."""
    check_non_finite(spec, non_finite_columns(dataset), features, data)


def check_non_finite(spec: JobSpec, problems: Sequence[NonFinite], features: Mapping[str, Sequence[str] | None],
                     data: DataSpec | None = None) -> None:
    """No model is given a value it cannot take: +-inf never, NaN only if every model that
    takes its column declares ``allow_nan = true`` (and no stacking passthrough feeds the raw
    columns to the final estimator, which does not). ``problems``: the feature columns holding
    NaN or inf (``non_finite_columns`` of the rows read, or ``SpilledData.non_finite`` of every
    row); ``features``: per model, the columns it takes (None: all), as ``member_features``
    resolves them; ``data``: which data set (default ``spec.data``; ``spec.stacking.train``
    for stacking's rows)."""
    data = data or spec.data
    if not problems:
        return
    takers = {p.column: [(i, m) for i, m in enumerate(spec.models)
                         if features.get(m.name) is None or p.column in (features.get(m.name) or ())]
              for p in problems}
    passthrough = spec.stacking is not None and spec.stacking.passthrough and spec.integration == "stacking"
    for problem in problems:
        models = takers[problem.column]
        if not models and not passthrough:
            continue  # no one reads this column
        where = f"{data.path}: column {problem.column!r}"
        if problem.first_inf is not None:
            user = f"models[{models[0][0]}] ({models[0][1].name})" if models else "stacking.passthrough"
            raise JobSpecError(f"{where}, data row {problem.first_inf + 1}: {problem.inf_value} is not a finite "
                               f"number ({user} takes this column; inf is never accepted)")
        assert problem.first_nan is not None
        refusing = [f"models[{i}] ({m.name})" for i, m in models if not m.allow_nan]
        if passthrough:
            refusing.append("stacking.passthrough (the final estimator)")
        if refusing:
            raise JobSpecError(f"{where}, data row {problem.first_nan + 1}: missing value (NaN), and {refusing[0]} "
                               "takes this column without allow_nan = true; fill the value in, or set allow_nan "
                               "= true on every model taking it if it accepts missing values (as "
                               "HistGradientBoosting does)")


EXTERNAL_CLUSTER_CORES = 16.0
"""``rows_per_shard = "auto"`` against an external master sizes shards for this many cores (the
cluster's size is known only from its offers; bundles adapt to it at run time)."""


def rows_per_shard(spec: JobSpec, rows: int, features: int, text_bytes: float = 0.0) -> int:
    """The job's rows per shard: as the job file says, or sized for the job's cores (the embedded
    cluster's agents, else :data:`EXTERNAL_CLUSTER_CORES`)."""
    cores = (sum(a.capacity.cpus for a in local_agents(spec.local_cluster)) if spec.framework.master == "local"
             else EXTERNAL_CLUSTER_CORES)
    return spec.data.shard_rows(rows, features, cores, text_bytes)


def resolve_shard_rows(spec: JobSpec) -> JobSpec:
    """``spec`` with ``rows_per_shard = "auto"`` replaced by the rows it comes to for this data on
    the job's cores (:func:`rows_per_shard`), so everything after sees one number.  The rows are
    counted from the data's metadata or one streamed column (the keys, with ``[[sources]]``),
    never by loading the data."""
    if spec.data.rows_per_shard != "auto":
        return spec
    if spec.sources:
        from framework.sources import align_rows  # (sources imports this module)

        rows = align_rows(spec).rows
        features = sum(len(open_table(s.path).schema.names) - 1 for s in spec.sources)
    else:
        reader = open_data(spec.data)
        rows = count_rows(reader)
        features = (len(spec.data.features) if spec.data.features
                    else len(reader.schema.names) - (1 if spec.data.label else 0) - len(spec.data.text))
    text_bytes = text_bytes_per_row(spec.data) if spec.data.text and not spec.sources else 0.0
    per_shard = rows_per_shard(spec, rows, max(0 if text_bytes else 1, features), text_bytes)
    return dataclasses.replace(spec, data=dataclasses.replace(spec.data, rows_per_shard=per_shard))
