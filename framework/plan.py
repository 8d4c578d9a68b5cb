"""``mesos-ensemble plan``: what a run's first offer round would do, without launching anything.

The agents come from Mesos offer JSON (``--offers``, read by ``framework.translator``), from a
running master's ``/master/state`` (``--master``: each agent's resources minus what is used), or
from the job's own ``[local_cluster]`` agents. They become one offer each, and the job's work
items (every model x every shard, all pending) go through the scheduler's own round decision,
:func:`framework.rounds.decide`, with the packer (``framework.packing.pack``), the executors'
reserve and the launch order exactly as in a run. The result says which agent gets which tasks
and executors, the cost, the lower bound and gap, and why any task waits or can never run.

Only the first round is planned: tasks that do not fit in it wait for capacity that earlier
tasks free, as they would in a run. A stacking job's cross-validation phase is not planned (it
runs the same models, one task per fold, before the prediction tasks planned here).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from framework import translator
from framework.balancing import Measurements, SpeculationPolicy
from framework.catalog import JobDemands
from framework.dataset import open_data
from framework.readers import count_rows
from framework.errors import FrameworkError, JobSpecError
from framework.jobspec import JobSpec, parse_master
from framework.offers import OfferView, total
from framework.packing import RESOURCE_NAMES, Agent, PackingOptions, Resources, resolve_price
from framework.preflight import local_agents, resolve_shard_rows, unplaceable
from framework.progress import exhausted_on
from framework.rounds import OfferPolicy, RoundDecision, RoundSnapshot, decide
from framework.tasks import Tracker, WorkItem

log = logging.getLogger(__name__)

STATE_TIMEOUT_SECONDS = 10.0
"""How long to wait for a master's ``/master/state``."""


# --- agents ------------------------------------------------------------------------------------
def offers_from_json(path: Path, role: str = "*") -> list[OfferView]:
    """Offers as a master sends them: a JSON list of v1 ``Offer`` objects, or an ``OFFERS`` event
    (``{"type": "OFFERS", "offers": {"offers": [...]}}``), or ``{"offers": [...]}``."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobSpecError(f"{path}: offers file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise JobSpecError(f"{path}: not valid JSON: {error}") from None
    offers: Any = document
    if isinstance(offers, dict) and "offers" in offers:
        offers = offers["offers"]
        if isinstance(offers, dict):  # an OFFERS event: {"offers": {"offers": [...]}}
            offers = offers.get("offers")
    if not isinstance(offers, list) or not offers:
        raise JobSpecError(f"{path}: expected a non-empty list of Mesos offers (or an OFFERS event), "
                           f"got {type(document).__name__}")
    views = []
    for index, offer in enumerate(offers):
        try:
            if not isinstance(offer, dict):
                raise TypeError(f"an object, got {type(offer).__name__}")
            views.append(translator.read_offer(offer, role))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            problem = f"missing {error}" if isinstance(error, KeyError) else str(error)
            raise JobSpecError(f"{path}: offers[{index}] is not a Mesos v1 Offer (id, agent_id, hostname, "
                               f"resources): {problem}") from None
    return views


def offers_from_agents(agents: Sequence[Agent]) -> list[OfferView]:
    """One offer per agent, holding all of its capacity (unreserved)."""
    return [OfferView(offer_id=f"plan-{a.agent_id}", agent_id=a.agent_id, hostname=a.hostname,
                      pools=tuple((name, "*", float(getattr(a.capacity, name))) for name in RESOURCE_NAMES
                                  if getattr(a.capacity, name) > 0),
                      attributes=dict(a.attributes))
            for a in agents]


def master_state(address: str, principal: str | None = None, secret: str | None = None) -> dict[str, Any]:
    """``GET http://<address>/master/state`` (HTTP Basic with ``principal``/``secret`` when given)."""
    try:
        parsed = parse_master(address)
    except ValueError as error:
        raise JobSpecError(f"--master {error}") from None
    if parsed.kind == "zk":  # the master ZooKeeper elects
        from framework.zookeeper import leading_master

        parsed = parse_master(leading_master(parsed, f"--master {address}"))
    if parsed.kind != "host":
        raise JobSpecError(f"--master {address!r}: plan reads /master/state of a running master (host:port or "
                           "zk://...)")
    host, port = parsed.hosts[0]
    url = f"http://{host}:{port}/master/state"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if principal is not None and secret is not None:
        token = base64.b64encode(f"{principal}:{secret}".encode()).decode("ascii")
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=STATE_TIMEOUT_SECONDS) as response:
            state = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as error:
        hint = (" (the master requires authentication: --principal and --secret-file, or the job's principal "
                "and secret)" if error.code == 401 else "")
        raise JobSpecError(f"--master {address}: {url} answered HTTP {error.code}{hint}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise JobSpecError(f"--master {address}: cannot read {url}: {reason}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise JobSpecError(f"--master {address}: {url} did not answer with JSON") from None
    if not isinstance(state, dict) or not isinstance(state.get("slaves"), list):
        raise JobSpecError(f"--master {address}: {url} has no 'slaves' list; is this a Mesos master?")
    return state


def _scalars(resources: Any) -> Resources:
    """The scalar resources of a state JSON resources object (``{"cpus": 2.0, "ports": "[...]"}``)."""
    if not isinstance(resources, Mapping):
        return Resources()
    return Resources(**{name: float(resources.get(name) or 0.0) for name in RESOURCE_NAMES
                        if isinstance(resources.get(name) or 0.0, (int, float))})


def offers_from_state(state: Mapping[str, Any]) -> list[OfferView]:
    """Each active agent of a master's state as one offer: its resources minus those in use (by any
    framework). Resources offered to other frameworks count as available (they come back)."""
    views = []
    for agent in state.get("slaves") or []:
        if not isinstance(agent, Mapping) or not agent.get("active", True):
            continue
        free = (_scalars(agent.get("resources")) - _scalars(agent.get("used_resources"))).nonnegative()
        attributes = {str(k): (float(v) if isinstance(v, (int, float)) else str(v))
                      for k, v in (agent.get("attributes") or {}).items()}
        views.append(OfferView(offer_id=f"state-{agent.get('id')}", agent_id=str(agent.get("id")),
                               hostname=str(agent.get("hostname") or ""),
                               pools=tuple((name, "*", float(getattr(free, name))) for name in RESOURCE_NAMES
                                           if getattr(free, name) > 0),
                               attributes=attributes))
    return views


# --- the plan ----------------------------------------------------------------------------------
def work_items(spec: JobSpec) -> tuple[list[WorkItem], dict[str, int]]:
    """The prediction work items a run creates (every model x every shard, as ``JobRunner``
    names them) and the rows of each shard."""
    spec = resolve_shard_rows(spec)
    if spec.sources:
        from framework.sources import align_rows

        rows = align_rows(spec).rows
    else:
        rows = count_rows(open_data(spec.data))  # metadata, or one column streamed (CSV)
    per_shard = spec.data.resolved_rows_per_shard
    shards = max(1, math.ceil(rows / per_shard))
    shard_rows = {f"s{i:05d}": min(per_shard, rows - i * per_shard) for i in range(shards)}
    items = [WorkItem(f"{m.name}.s{i:05d}", m.name, i) for m in spec.models for i in range(shards)]
    return items, shard_rows


def first_round_snapshot(spec: JobSpec, demands: JobDemands, items: list[WorkItem],
                         packing: PackingOptions | None = None) -> RoundSnapshot:
    """What the scheduler's ``snapshot()`` holds at a run's first offer round: every item pending,
    nothing measured, no executor running."""
    tracker = Tracker(items, spec.framework.max_retries)
    models = list(dict.fromkeys(item.model for item in items))
    firsts = {model: next(i for i in items if i.model == model) for model in models}
    executor_keys = {model: demands.executor_key(model) for model in models}
    settings = spec.framework
    return RoundSnapshot(
        pending=tracker.pending_views(), active=(),
        demands={model: demands.demand(item) for model, item in firsts.items()},
        executor_keys=executor_keys,
        executor_models={key: demands.executor_models(key) for key in set(executor_keys.values())},
        agent_reserve=demands.agent_reserve, executors=frozenset(), executor_generation={},
        measurements=Measurements(), started_at={}, known_agents=frozenset(), retried_at={},
        max_retries=settings.max_retries, suppressed=False,
        prices=spec.pricing, cost_model=spec.cost_model,
        packing=packing or PackingOptions(time_budget_s=settings.packing_budget_ms / 1000.0),
        policy=OfferPolicy(settings.refuse_seconds, settings.never_fits_refuse_seconds, settings.role),
        speculation=SpeculationPolicy(factor=settings.speculation_factor),
    )


@dataclass(frozen=True)
class AgentPlan:
    agent_id: str
    hostname: str
    price: float
    offered: Resources
    tasks: Mapping[str, tuple[str, ...]]
    """Per model, the task ids placed here (in launch order)."""
    executors: tuple[str, ...]
    """Executor ids started here for these tasks."""
    used: Resources
    declined: str | None = None
    """``unneeded`` or ``never_fits`` when the agent gets no task."""


@dataclass(frozen=True)
class ModelPlan:
    name: str
    tasks: int
    placed: int
    agents: Mapping[str, int]
    """Hostname -> tasks placed there."""
    waiting_reason: str | None


@dataclass(frozen=True)
class JobPlan:
    job: str
    source: str
    agents_from: str
    total_tasks: int
    rows: int
    agents: tuple[AgentPlan, ...]
    models: tuple[ModelPlan, ...]
    cost: float
    lower_bound: float
    proven_optimal: bool
    never_runs: tuple[str, ...] = ()
    """Models that fit on none of the agents (with their executor), one line each."""
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def gap(self) -> float:
        return max(0.0, (self.cost - self.lower_bound) / self.cost) if self.cost > 0 else 0.0

    @property
    def placed(self) -> int:
        return sum(m.placed for m in self.models)

    def to_json(self) -> dict[str, Any]:
        def res(r: Resources) -> dict[str, float]:
            return {name: round(float(getattr(r, name)), 6) for name in RESOURCE_NAMES}

        return {
            "job": self.job, "source": self.source, "agents_from": self.agents_from,
            "tasks": self.total_tasks, "rows": self.rows, "placed_first_round": self.placed,
            "waiting": self.total_tasks - self.placed,
            "cost": self.cost, "lower_bound": self.lower_bound, "gap": self.gap, "proven_optimal": self.proven_optimal,
            "agents": [{"agent_id": a.agent_id, "hostname": a.hostname, "price": a.price, "offered": res(a.offered),
                        "used": res(a.used), "tasks": {m: list(t) for m, t in a.tasks.items()},
                        "executors": list(a.executors), "declined": a.declined} for a in self.agents],
            "models": [{"name": m.name, "tasks": m.tasks, "placed": m.placed, "waiting": m.tasks - m.placed,
                        "agents": dict(m.agents), "waiting_reason": m.waiting_reason} for m in self.models],
            "never_runs": list(self.never_runs), "warnings": list(self.warnings), "notes": list(self.notes),
        }


def plan_job(spec: JobSpec, offers: Sequence[OfferView], agents_from: str,
             packing: PackingOptions | None = None) -> JobPlan:
    """The first offer round of a run of ``spec`` given ``offers`` (see the module docstring)."""
    if not offers:
        raise JobSpecError(f"{agents_from}: no agents to plan on")
    demands = JobDemands(spec)
    items, shard_rows = work_items(spec)
    snapshot = first_round_snapshot(spec, demands, items, packing)
    try:
        decision = decide(snapshot, offers, 0.0)
    except ValueError as error:  # e.g. an offer's price attribute is negative
        raise JobSpecError(f"{agents_from}: {error}") from None
    for line in decision.log:
        log.log(line.level, "%s", line.message)
    return _describe(spec, demands, items, shard_rows, offers, decision, agents_from)


def _describe(spec: JobSpec, demands: JobDemands, items: list[WorkItem], shard_rows: Mapping[str, int],
              offers: Sequence[OfferView], decision: RoundDecision, agents_from: str) -> JobPlan:
    plan = decision.plan
    assert plan is not None  # every item is pending: the round packs
    merged: dict[str, list[OfferView]] = {}
    for offer in offers:
        merged.setdefault(offer.agent_id, []).append(offer)
    launches = {launch.agent.agent_id: launch for launch in decision.launches}
    declines = {d.agent_id: d.reason for d in decision.declines if d.agent_id}
    agent_plans = []
    placed_on: dict[str, Counter[str]] = {m.name: Counter() for m in spec.models}
    for agent_id, views in merged.items():
        hostname = views[0].hostname
        offered = total(p for v in views for p in v.pools)
        launch = launches.get(agent_id)
        tasks: dict[str, list[str]] = {}
        used = Resources()
        executors: tuple[str, ...] = ()
        if launch is not None:
            for task in launch.tasks:
                tasks.setdefault(task.model, []).append(task.task_id)
                used = used + demands.task_resources[task.model]
                placed_on[task.model][hostname or agent_id] += 1
            for start in launch.executors:
                used = used + demands.executor_resources[start.key]
            executors = tuple(translator.executor_id(s.key, s.generation) for s in launch.executors)
        agent_plans.append(AgentPlan(
            agent_id=agent_id, hostname=hostname, price=resolve_price(hostname, views[0].attributes, spec.pricing),
            offered=offered, tasks={m: tuple(t) for m, t in tasks.items()}, executors=executors, used=used,
            declined=None if launch is not None else declines.get(agent_id, "unneeded")))
    agents_as_packed = [Agent(a.agent_id, a.hostname, (), a.offered, dict(merged[a.agent_id][0].attributes))
                        for a in agent_plans]
    never = unplaceable(spec.models, agents_as_packed, spec.framework.executors)
    never_by_model = {m.name: reason for i, m in enumerate(spec.models) for reason in never
                      if reason.startswith(f"models[{i}] ({m.name})")}
    model_of = {item.key: item.model for item in items}
    unplaced_by_model: dict[str, list[str]] = {}
    for key, unplaced in plan.unplaced.items():
        unplaced_by_model.setdefault(model_of[key], []).append(_reason(unplaced.exhausted, unplaced.filtered))
    model_plans = []
    for model in spec.models:
        total_tasks = sum(1 for owner in model_of.values() if owner == model.name)
        placed = sum(placed_on[model.name].values())
        reason = None
        if placed < total_tasks:
            if model.name in never_by_model:
                reason = f"never fits: {never_by_model[model.name]}"
            else:
                if model.name in unplaced_by_model:  # given to the packer, which found no room
                    full = Counter(unplaced_by_model[model.name]).most_common(1)[0][0]
                else:  # not given to the packer: the offers were full before its turn
                    short = exhausted_on(decision, demands.task_resources[model.name], demands.task_resources)
                    full = "; ".join(f"{name} exhausted on {n} agent{'s' if n != 1 else ''}"
                                     for name, n in short.most_common()) or "no room left"
                reason = f"{full} after this round; waits for what finished tasks free"
        model_plans.append(ModelPlan(model.name, total_tasks, placed, dict(placed_on[model.name]), reason))
    notes = []
    if spec.stacking is not None and spec.integration == "stacking":
        notes.append(f"stacking: {len(spec.models)} models x {spec.stacking.cv} cross-validation folds run first "
                     "(not planned here); the plan is the prediction phase")
    return JobPlan(
        job=spec.name, source=str(spec.source), agents_from=agents_from, total_tasks=len(items),
        rows=sum(shard_rows.values()), agents=tuple(agent_plans), models=tuple(model_plans),
        cost=plan.cost, lower_bound=plan.lower_bound, proven_optimal=plan.proven_optimal,
        never_runs=tuple(never), warnings=tuple(line.message for line in decision.log if line.level >= 30),
        notes=tuple(notes))


def _reason(exhausted: Mapping[str, int], filtered: Mapping[str, int]) -> str:
    """Why a task was not placed, as the packer counted it per agent."""
    parts = [f"{name} exhausted on {n} agent{'s' if n != 1 else ''}" for name, n in exhausted.items() if n]
    parts += [f"{n} agent{'s' if n != 1 else ''} excluded by {name}" for name, n in filtered.items() if n]
    return "; ".join(parts) or "no agent offered"


# --- output ------------------------------------------------------------------------------------
def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}".rstrip("0").rstrip(".")


def _resources(r: Resources) -> str:
    units = {"cpus": "cpus", "mem": "MB", "disk": "MB disk", "gpus": "gpus"}
    return ", ".join(f"{_num(getattr(r, n))} {u}" for n, u in units.items() if getattr(r, n)) or "nothing"


def render(plan: JobPlan, console: Any) -> None:
    """Print the plan as tables on a ``rich.console.Console``."""
    from rich.markup import escape as e
    from rich.table import Table

    console.print(f"[bold]plan for {e(plan.job)}[/bold] ({e(plan.source)})")
    console.print(e(f"agents from {plan.agents_from}; {plan.total_tasks} tasks over {plan.rows} rows; "
                    f"the first offer round places {plan.placed}, {plan.total_tasks - plan.placed} wait"))
    agents = Table(title="where the first round's tasks go", title_justify="left")
    for column in ("agent", "price", "offered", "tasks", "executors", "uses"):
        agents.add_column(column, overflow="fold")
    for a in plan.agents:
        tasks = e(", ".join(f"{m} x{len(t)}" for m, t in a.tasks.items())) or f"[dim]declined ({a.declined})[/dim]"
        agents.add_row(e(f"{a.hostname} ({a.agent_id})" if a.hostname else a.agent_id), _num(a.price),
                       _resources(a.offered), tasks, e(", ".join(a.executors)) or "-",
                       _resources(a.used) if a.tasks else "-")
    console.print(agents)
    optimal = " (proven optimal)" if plan.proven_optimal else ""
    console.print(f"cost {plan.cost:.3f}, lower bound {plan.lower_bound:.3f}, gap {plan.gap:.1%}{optimal}")
    models = Table(title="models", title_justify="left")
    for column in ("model", "tasks", "first round", "waiting", "on agents", "why waiting"):
        models.add_column(column, overflow="fold")
    for m in plan.models:
        models.add_row(e(m.name), str(m.tasks), str(m.placed), str(m.tasks - m.placed),
                       e(", ".join(f"{h} x{n}" for h, n in m.agents.items())) or "-", e(m.waiting_reason or "-"))
    console.print(models)
    for line in plan.never_runs:
        console.print(f"[red]never runs:[/red] {e(line)}")
    for line in plan.warnings:
        console.print(f"[yellow]warning:[/yellow] {e(line)}")
    for line in plan.notes:
        console.print(f"note: {e(line)}")


def agents_for(spec: JobSpec, offers_file: Path | None, master: str | None, principal: str | None,
               secret: str | None) -> tuple[list[OfferView], str]:
    """The offers to plan on and where they came from: ``--offers``, ``--master``, the job's own
    master when it is an external one (``host:port`` or ``zk://``), else the job's ``[local_cluster]`` agents."""
    if offers_file is not None and master is not None:
        raise JobSpecError("--offers and --master: give one of them")
    if offers_file is not None:
        return offers_from_json(offers_file, spec.framework.role), str(offers_file)
    settings = spec.framework
    if master is None and settings.master != "local":
        master = settings.master
    if master is not None:
        if principal is None and secret is None:
            principal, secret = settings.principal, settings.secret
        if (principal is None) != (secret is None):
            raise JobSpecError("--principal and --secret-file must be given together")
        views = offers_from_state(master_state(master, principal, secret))
        return views, f"master {master}"
    return offers_from_agents(local_agents(spec.local_cluster)), f"{spec.source.name} [local_cluster]"


def read_secret(path: Path) -> str:
    """A secret from a file (its first line, stripped); errors never show it."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise FrameworkError(f"--secret-file {path}: cannot read it ({type(error).__name__})") from None
    if not secret:
        raise JobSpecError(f"--secret-file {path}: empty")
    return secret
