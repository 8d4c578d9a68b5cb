"""The job file's ``[serve]`` table (and ``[serve.models.<name>]``) as frozen values.

Parsed by :func:`parse_serve`, which ``framework.jobspec`` calls with the job's member names; a
bad value raises :class:`ServeSpecError` naming the field (relative to ``serve``) and what was
expected, which ``jobspec`` turns into its one-line ``file: serve.field ...`` error (exit 2).
Pure: no I/O, no project imports beyond the standard library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

DEFAULT_MIN_REPLICAS = 1
DEFAULT_MAX_REPLICAS = 4
DEFAULT_MAX_QUEUE = 1000
"""Requests a member's queue holds before the gateway sheds new ones (503)."""


class ServeSpecError(ValueError):
    """A bad ``[serve]`` value: ``field`` (dotted, under ``serve``) and what was expected."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"serve.{field} {problem}" if field else f"serve {problem}")
        self.field, self.problem = field, problem


@dataclass(frozen=True)
class ReplicaBounds:
    """``[serve.models.<name>]``: how many replicas of one member may run."""

    min_replicas: int = DEFAULT_MIN_REPLICAS
    max_replicas: int = DEFAULT_MAX_REPLICAS
    standby_replicas: int = 0
    """Replicas kept started, loaded and health-checked beyond the autoscaler's count but out of
    the gateway's table (never above ``max_replicas`` in all): a scale-up or a lost replica puts one
    in the table at once, with no cold start.  They hold their agents and resources: the cost per
    hour counts them, and the lower bound is that of the count with them."""

    def clamp(self, count: int) -> int:
        """``count`` brought within ``min_replicas..max_replicas``."""
        return max(self.min_replicas, min(self.max_replicas, count))


@dataclass(frozen=True)
class ServeSpec:
    """A validated ``[serve]`` table; ``models`` has an entry for every member of the job."""

    host: str = "127.0.0.1"
    port: int = 8080
    """The gateway's port; 0: any free port."""
    target_p99_ms: float = 100.0
    max_batch_rows: int = 256
    max_wait_ms: float = 2.0
    hedge: bool = True
    """Hedge a call to another replica past the member's recent p95 (at least ``hedge_min_ms``)."""
    hedge_min_ms: float = 10.0
    scale_interval_s: float = 1.0
    """How often the autoscaler runs."""
    scale_down_delay_s: float = 30.0
    """Load must stay low this long before a replica drains."""
    max_queue: int = DEFAULT_MAX_QUEUE
    """Requests waiting in one member's queue (for a batch or a replica) before the gateway sheds
    new requests with 503 ``queue_full`` (as Triton's ``max_queue_size``); 0: no cap."""
    queue_timeout_ms: float = 0.0
    """A request still waiting in a member's queue (none of its rows sent) after this long is
    answered 503 ``queue_timeout`` (as Triton's ``default_queue_policy`` with REJECT); 0: none."""
    retry_after_s: int = 1
    """The most a shed request's ``Retry-After`` header says (whole seconds), and what it says
    when the member's queue drained nothing lately; else the queue's depth over the rate it has
    been draining, rounded up (:func:`framework.serving.batcher.retry_after_s`)."""
    models: Mapping[str, ReplicaBounds] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """``host:port`` as written in the job file (IPv6 hosts in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def bounds(self, member: str) -> ReplicaBounds:
        """The replica bounds of ``member`` (the defaults for a member the table does not name)."""
        return self.models.get(member, ReplicaBounds())


KNOWN_FIELDS = ("address", "target_p99_ms", "max_batch_rows", "max_wait_ms", "hedge", "hedge_min_ms",
                "scale_interval_s", "scale_down_delay_s", "max_queue", "queue_timeout_ms", "retry_after_s", "models")
MODEL_FIELDS = ("min_replicas", "max_replicas", "standby_replicas")


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6; port 0..65535, 0 = any free port) -> (host, port);
    raises ``ValueError`` saying what was expected."""
    host, colon, port_text = text.rpartition(":")
    if not colon:
        raise ValueError(f"must be host:port (e.g. \"127.0.0.1:8080\"; port 0 = any free port), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        bad_host = not host or any(c not in "0123456789abcdefABCDEF:." for c in host)
    else:
        bad_host = not host or any(c.isspace() or c in ":/@[],?#" for c in host)
    if bad_host:
        raise ValueError(f"must be host:port with a host name or address before the colon, got {text!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"must end in a port from 0 to 65535 (0 = any free port), got {text!r}")
    return host, int(port_text)


def parse_serve(table: Mapping[str, Any], members: Sequence[str]) -> ServeSpec:
    """The ``[serve]`` table of a job whose members are ``members``; raises :class:`ServeSpecError`."""
    if not isinstance(table, Mapping):
        raise ServeSpecError("", f"must be a table, got {type(table).__name__}")
    _reject_unknown(table, KNOWN_FIELDS, "")
    defaults = ServeSpec()
    host, port = defaults.host, defaults.port
    if "address" in table:
        try:
            host, port = parse_address(_typed(table, "address", str, ""))
        except ValueError as error:
            raise ServeSpecError("address", str(error)) from None
    hedge = table.get("hedge", defaults.hedge)
    if not isinstance(hedge, bool):
        raise ServeSpecError("hedge", f"must be true or false, got {hedge!r}")
    return ServeSpec(
        host=host, port=port,
        target_p99_ms=_number(table, "target_p99_ms", defaults.target_p99_ms),
        max_batch_rows=_count(table, "max_batch_rows", defaults.max_batch_rows, minimum=1),
        max_wait_ms=_number(table, "max_wait_ms", defaults.max_wait_ms, positive=False),
        hedge=hedge,
        hedge_min_ms=_number(table, "hedge_min_ms", defaults.hedge_min_ms, positive=False),
        scale_interval_s=_number(table, "scale_interval_s", defaults.scale_interval_s),
        scale_down_delay_s=_number(table, "scale_down_delay_s", defaults.scale_down_delay_s, positive=False),
        max_queue=_count(table, "max_queue", defaults.max_queue, minimum=0, why=" (0: no cap)"),
        queue_timeout_ms=_number(table, "queue_timeout_ms", defaults.queue_timeout_ms, positive=False),
        retry_after_s=_count(table, "retry_after_s", defaults.retry_after_s, minimum=1,
                             why=" (whole seconds, as the Retry-After header takes)"),
        models=_parse_models(table.get("models", {}), members),
    )


RESTART_FIELDS = ("address",)
"""``[serve]`` fields a running deployment cannot change (the gateway's listening socket)."""


def reload_changes(before: ServeSpec, after: ServeSpec) -> list[str]:
    """What a reload from ``before`` to ``after`` changes, one ``field old -> new`` per field (in
    ``KNOWN_FIELDS`` order; ``models.<name>`` for replica bounds).  Raises :class:`ServeSpecError`
    naming the first field that cannot change while serving (:data:`RESTART_FIELDS`)."""
    if before.address != after.address:
        raise ServeSpecError("address", f"changed ({before.address} -> {after.address}); the gateway keeps "
                                        "listening where it is: restart serve to move it")
    changes = [f"{name} {getattr(before, name)!r} -> {getattr(after, name)!r}" for name in KNOWN_FIELDS
               if name not in RESTART_FIELDS and name != "models" and getattr(before, name) != getattr(after, name)]
    for member in sorted(set(before.models) | set(after.models)):
        old, new = before.bounds(member), after.bounds(member)
        if old != new:
            changes.append(f"models.{member} {old.min_replicas}..{old.max_replicas} -> "
                           f"{new.min_replicas}..{new.max_replicas} replicas"
                           + (f", standby {old.standby_replicas} -> {new.standby_replicas}"
                              if old.standby_replicas != new.standby_replicas else ""))
    return changes


def _parse_models(table: Any, members: Sequence[str]) -> dict[str, ReplicaBounds]:
    if not isinstance(table, Mapping):
        raise ServeSpecError("models", f"must be a table of [serve.models.<name>] tables, got {table!r}")
    for name in table:
        if name not in members:
            raise ServeSpecError(f"models.{name}", f"names {name!r}, which is not a [[models]] name "
                                                   f"(known: {', '.join(members)})")
    bounds = {}
    for name in members:
        entry = table.get(name, {})
        where = f"models.{name}"
        if not isinstance(entry, Mapping):
            raise ServeSpecError(where, f"must be a table (min_replicas, max_replicas, standby_replicas), "
                                        f"got {entry!r}")
        _reject_unknown(entry, MODEL_FIELDS, where)
        low = _count(entry, "min_replicas", DEFAULT_MIN_REPLICAS, minimum=1, where=where,
                     why=" (a member with no replica cannot answer)")
        high = _count(entry, "max_replicas", max(DEFAULT_MAX_REPLICAS, low), minimum=1, where=where)
        if high < low:
            raise ServeSpecError(f"{where}.max_replicas", f"must be at least min_replicas ({low}), got {high}")
        standby = _count(entry, "standby_replicas", 0, minimum=0, where=where)
        bounds[name] = ReplicaBounds(low, high, standby)
    return bounds


def _reject_unknown(table: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    for key in sorted(set(table) - set(known)):
        name = f"{where}.{key}" if where else key
        raise ServeSpecError(name, f"is not a known field (known: {', '.join(sorted(known))})")


def _typed(table: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = table[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ServeSpecError(f"{where}.{key}" if where else key, f"must be {kind.__name__}, got {value!r}")
    return value


def _number(table: Mapping[str, Any], key: str, default: float, positive: bool = True) -> float:
    if key not in table:
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        raise ServeSpecError(key, f"must be a {'positive' if positive else 'non-negative'} number, got {value!r}")
    return float(value)


def _count(table: Mapping[str, Any], key: str, default: int, minimum: int, where: str = "", why: str = "") -> int:
    if key not in table:
        return default
    value = _typed(table, key, int, where)
    if value < minimum:
        raise ServeSpecError(f"{where}.{key}" if where else key, f"must be at least {minimum}{why}, got {value}")
    return int(value)
