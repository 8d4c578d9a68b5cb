"""The serving gateway: an aiohttp server on its own asyncio loop in a thread of the framework.

``POST /v1/predict`` takes rows (JSON ``{"rows": [{column: value}, ...]}``, JSON
``{"columns": [...], "data": [[...], ...]}``, or an ``.npy`` body with ``Content-Type:
application/x-npy`` whose columns are the job's feature columns in order; a text column travels
as a JSON string, never in an ``.npy``), gives each member its
columns of them through the member's dynamic batcher (:mod:`framework.serving.batcher`), sends
each batch to one of the member's ready replicas (:mod:`framework.serving.balancer`: least
outstanding, hedging past the member's recent p95, failover on error) and integrates the
members' outputs with the job's combiner (:mod:`framework.serving.combine`), answering
``{"predictions": [...], "answered_by": [...], "missing": [...]}`` (and ``"members"``: what
each member said per row, with ``"members": true`` or ``?members=true``). With ``min_members``
below the number of members, an answer comes from the members that answered (``missing`` names
the others and ``errors`` says why). A bad body is a 400 with ``{"error": "<one line naming the
field, column or value>"}``; too few members answering is a 503.

``GET /v1/health`` (200 while enough members have a ready replica, 503 otherwise or while
draining), ``GET /v1/models`` (members, columns, replicas with their sha256) and ``GET
/metrics`` (Prometheus text, :mod:`framework.serving.metrics`).

The controller drives it from its own thread: :meth:`Gateway.start`, :meth:`Gateway.stop`,
:meth:`Gateway.load_samples`, :meth:`Gateway.set_cost_per_hour`; the replicas it routes to are
those of the :class:`~framework.serving.routing.ReplicaTable` the controller keeps.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
import time
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, Sequence

import aiohttp
import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from executor import npycodec
from framework.ensemble import IntegrationError, MemberSpec
from framework.serving.balancer import Balancer
from framework.serving.batcher import BatchSent, MemberBatcher, Shed, expected_s, retry_after_s
from framework.serving.combine import CombinerFactory, RequestCombiner
from framework.serving.autoscale import MemberLoad
from framework.serving.metrics import GatewayMetrics, LiveState
from framework.serving.routing import Replica, ReplicaTable

NPY_TYPE = "application/x-npy"
DEADLINE_HEADER = "X-Request-Timeout-Ms"
"""A client's budget for its request, in ms from its arrival at the gateway (optional)."""


@dataclass(frozen=True)
class GatewayOptions:
    """The gateway's knobs (the ``[serve]`` table's, where it has them).

    Attributes
    ----------
    max_batch_rows : int
        Most rows in one call to a replica.
    max_wait_ms : float
        Longest a request waits for others to join its batch.
    hedge : bool
        Hedge a call to a second replica past the member's recent p95.
    hedge_min_ms : float
        The hedge delay is at least this.
    replica_timeout_s : float
        A call to a replica that takes longer has failed (and goes to another replica).
    suspect_s : float
        A replica whose call failed gets new work only when no other can, for this long.
    batches_per_replica : int
        Batches of a member in flight per ready replica before its queue waits (and batches grow).
        One by default: a call's cost barely grows with its rows (a 100-tree forest: ~15 ms for
        1 row, ~20 ms for 256), so requests that wait for the replica's current batch and go
        together in the next cost less CPU than a second small batch queued at the replica
        behind the first, for about the same wait (the second batch would wait at the replica
        for the first anyway); what it gives up is the replica's idle round trip between batches.
    max_slack_ms : float
        A member whose calls end sooner than the slowest other member's lets its requests wait
        for others (and go in one call) that much longer, up to this many ms; 0 turns it off.
        An answer waits for every member, so this costs it nothing while the measures hold:
        the cheap members of ``bench/serve_bench.py``'s ensemble (logistic regression, boosting:
        a few ms a call) wait for the forest's ~20 ms instead of making a call per request.
    max_queue : int
        Requests waiting in one member's queue before new ones are shed (503 ``queue_full``); 0: no cap.
    queue_timeout_ms : float
        A request waiting this long in a member's queue, none of its rows sent, is shed; 0: never.
    retry_after_s : int
        The most a shed request's ``Retry-After`` says, in seconds, and what it says while nothing
        drained lately (else the seconds the shedding members' queues take to drain at the rate
        they have been draining: :meth:`Gateway.retry_after`).
    max_request_bytes : int
        Largest request body.
    window_s : float
        The load samples' window.
    drain_s : float
        ``stop`` waits this long for requests in flight.
    """

    max_batch_rows: int = 256
    max_wait_ms: float = 2.0
    hedge: bool = True
    hedge_min_ms: float = 10.0
    replica_timeout_s: float = 30.0
    suspect_s: float = 2.0
    batches_per_replica: int = 1
    max_slack_ms: float = 50.0
    max_queue: int = 1000
    queue_timeout_ms: float = 0.0
    retry_after_s: int = 1
    max_request_bytes: int = 64 * 1024 * 1024
    window_s: float = 10.0
    drain_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {self.max_batch_rows}")
        for name in ("max_wait_ms", "hedge_min_ms", "suspect_s", "drain_s", "max_slack_ms", "max_queue",
                     "queue_timeout_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("replica_timeout_s", "window_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.batches_per_replica < 1:
            raise ValueError(f"batches_per_replica must be >= 1, got {self.batches_per_replica}")
        if self.retry_after_s < 1:
            raise ValueError(f"retry_after_s must be >= 1, got {self.retry_after_s}")

    @classmethod
    def from_spec(cls, spec: Any, base: "GatewayOptions | None" = None, **overrides: Any) -> "GatewayOptions":
        """The options an object with some of these attributes (a ``ServeSpec``) sets; the rest as
        in ``base`` (default: the defaults)."""
        values = {f.name: getattr(base, f.name) for f in fields(cls)} if base is not None else {}
        if isinstance(spec, GatewayOptions):
            values.update({f.name: getattr(spec, f.name) for f in fields(cls)})
        else:
            values.update({f.name: getattr(spec, f.name) for f in fields(cls)
                           if spec is not None and hasattr(spec, f.name)})
        values.update(overrides)
        return cls(**values)


class BadRequest(ValueError):
    """A request body the gateway cannot answer; the message is one line naming what is wrong."""


class ReplicaCallError(Exception):
    """A call to a replica failed (HTTP error, bad answer, connection lost, timeout)."""


class MemberUnavailable(Exception):
    """No replica of a member answered a batch."""


def npy_bytes(array: np.ndarray) -> bytes:
    return npycodec.encode(array)


# Reading requests (pure) ----------------------------------------------------------------------
def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{where}: expected a number, got {json.dumps(value)[:40]}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise BadRequest(f"{where}: expected a finite number, got {str(value)[:40]}")
    return number


def _show(columns: Sequence[str], limit: int = 20) -> str:
    return ", ".join(columns[:limit]) + (", ..." if len(columns) > limit else "")


def rows_from_json(document: Any, columns: Sequence[str]) -> tuple[np.ndarray, bool]:
    """The float64 (rows, columns) matrix and the ``members`` flag of a JSON request; BadRequest
    (one line naming the field, column or value) otherwise."""
    if not isinstance(document, dict):
        raise BadRequest("body: expected a JSON object with \"rows\", or \"columns\" and \"data\"")
    unknown = sorted(set(document) - {"rows", "columns", "data", "members"})
    if unknown:
        raise BadRequest(f"body: unknown field {unknown[0]!r}; expected \"rows\", or \"columns\" and \"data\", "
                         "and optionally \"members\"")
    members = document.get("members", False)
    if not isinstance(members, bool):
        raise BadRequest(f"members: expected true or false, got {json.dumps(members)[:40]}")
    index = {c: i for i, c in enumerate(columns)}
    if "rows" in document:
        if "columns" in document or "data" in document:
            raise BadRequest("body: give \"rows\", or \"columns\" and \"data\", not both")
        rows = document["rows"]
        if not isinstance(rows, list) or not rows:
            raise BadRequest("rows: expected a non-empty list of objects (column -> value)")
        matrix = np.empty((len(rows), len(columns)), dtype=np.float64)
        for r, row in enumerate(rows):
            # Fast path: an object with exactly the columns, each a plain int or float.
            values = [row.get(name) for name in columns] if type(row) is dict and len(row) == len(columns) else None
            if values is None or not all(type(v) is float or type(v) is int for v in values) or not _fill(
                    matrix, r, values):
                _check_row(row, r, columns, index)  # raises, naming the column or value
        _check_finite(matrix, lambda r, c: f"rows[{r}].{columns[c]}")
        return matrix, members
    if "columns" not in document or "data" not in document:
        raise BadRequest("body: expected \"rows\", or \"columns\" and \"data\"")
    given = document["columns"]
    if not isinstance(given, list) or not all(isinstance(c, str) for c in given):
        raise BadRequest("columns: expected a list of column names")
    for name in given:
        if name not in index:
            raise BadRequest(f"columns: unknown column {name!r}; the feature columns are {_show(columns)}")
    if len(set(given)) != len(given):
        twice = next(c for c in given if given.count(c) > 1)
        raise BadRequest(f"columns: column {twice!r} is named twice")
    absent = [c for c in columns if c not in given]
    if absent:
        raise BadRequest(f"columns: missing column {absent[0]!r}" + (f" (and {len(absent) - 1} more)"
                                                                      if len(absent) > 1 else ""))
    data = document["data"]
    if not isinstance(data, list) or not data:
        raise BadRequest("data: expected a non-empty list of rows (lists of numbers)")
    order = [given.index(c) for c in columns]
    in_order = order == list(range(len(columns)))
    matrix = np.empty((len(data), len(columns)), dtype=np.float64)
    for r, row in enumerate(data):
        if type(row) is not list or len(row) != len(given):
            raise BadRequest(f"data[{r}]: expected a list of {len(given)} numbers (one per column), "
                             f"got {json.dumps(row)[:40]}")
        values = row if in_order else [row[source] for source in order]
        if not all(type(v) is float or type(v) is int for v in values) or not _fill(matrix, r, values):
            for c, source in enumerate(order):
                matrix[r, c] = _number(row[source], f"data[{r}][{source}] ({given[source]})")
    _check_finite(matrix, lambda r, c: f"data[{r}][{order[c]}] ({given[order[c]]})")
    return matrix, members


def split_text(document: Any, text_columns: Sequence[str]) -> tuple[Any, dict[str, np.ndarray]]:
    """A JSON request's text columns (each a 1-D unicode array, one string per row, as a batch
    job's text shards hold them) and the request without them (for :func:`rows_from_json`);
    BadRequest (one line naming the row and column) for a text value that is not a string."""
    if not text_columns or not isinstance(document, dict):
        return document, {}
    texts: dict[str, list[str]] = {name: [] for name in text_columns}

    def text(value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise BadRequest(f"{where}: expected a string (a text column), got {json.dumps(value)[:40]}")
        return value

    if "rows" in document and isinstance(document["rows"], list):
        rows = []
        for r, row in enumerate(document["rows"]):
            if not isinstance(row, dict):
                raise BadRequest(f"rows[{r}]: expected an object (column -> value), got {json.dumps(row)[:40]}")
            for name in text_columns:
                if name not in row:
                    raise BadRequest(f"rows[{r}]: missing column {name!r}")
                texts[name].append(text(row[name], f"rows[{r}].{name}"))
            rows.append({k: v for k, v in row.items() if k not in texts})
        document = {**document, "rows": rows}
    elif isinstance(document.get("columns"), list) and isinstance(document.get("data"), list):
        given = document["columns"]
        for name in text_columns:
            if name not in given:
                raise BadRequest(f"columns: missing column {name!r}")
        at = {given.index(name): name for name in text_columns}
        data = []
        for r, row in enumerate(document["data"]):
            if type(row) is not list or len(row) != len(given):
                raise BadRequest(f"data[{r}]: expected a list of {len(given)} values (one per column), "
                                 f"got {json.dumps(row)[:40]}")
            for c, name in at.items():
                texts[name].append(text(row[c], f"data[{r}][{c}] ({name})"))
            data.append([v for c, v in enumerate(row) if c not in at])
        document = {**document, "columns": [c for i, c in enumerate(given) if i not in at], "data": data}
    return document, {name: np.array(values, dtype=np.str_) for name, values in texts.items()}


def _fill(matrix: np.ndarray, r: int, values: list[Any]) -> bool:
    """Row ``r`` of ``matrix`` from plain numbers; False for an int too large for a float."""
    try:
        matrix[r] = values
    except OverflowError:
        return False
    return True


def _check_row(row: Any, r: int, columns: Sequence[str], index: Mapping[str, int]) -> None:
    """BadRequest naming what is wrong with ``rows[r]``."""
    if not isinstance(row, dict):
        raise BadRequest(f"rows[{r}]: expected an object (column -> value), got {json.dumps(row)[:40]}")
    for name in row:
        if name not in index:
            raise BadRequest(f"rows[{r}]: unknown column {name!r}; the feature columns are {_show(columns)}")
    for name in columns:
        if name not in row:
            raise BadRequest(f"rows[{r}]: missing column {name!r}")
        _number(row[name], f"rows[{r}].{name}")
    raise BadRequest(f"rows[{r}]: expected numbers")  # not reached: _number raised


def _check_finite(matrix: np.ndarray, where: Callable[[int, int], str]) -> None:
    bad = ~np.isfinite(matrix)
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        raise BadRequest(f"{where(r, c)}: expected a finite number, got {matrix[r, c]}")


def request_timeout_ms(value: str | None) -> float | None:
    """The client's budget from the ``X-Request-Timeout-Ms`` header (None without it); BadRequest
    for anything but a positive number of milliseconds."""
    if value is None:
        return None
    try:
        budget = float(value)
    except ValueError:
        budget = math.nan
    if not math.isfinite(budget) or budget <= 0:
        raise BadRequest(f"{DEADLINE_HEADER}: expected a positive number of milliseconds, got {value[:40]!r}")
    return budget


def rows_from_npy(body: bytes, columns: Sequence[str]) -> np.ndarray:
    """The float64 (rows, columns) matrix of an ``.npy`` body (no pickles); BadRequest otherwise."""
    try:
        array = npycodec.decode(body)
    except ValueError as exc:
        reason = "it holds Python objects (pickles are refused)" if "allow_pickle" in str(exc) else str(exc)
        raise BadRequest(f"body: not a readable .npy: {reason}") from None
    except (OSError, EOFError) as exc:
        raise BadRequest(f"body: not a readable .npy: {exc}") from None
    if not isinstance(array, np.ndarray):
        raise BadRequest("body: expected one .npy array, got an archive")
    if array.ndim != 2:
        raise BadRequest(f"body: expected a 2-D array (rows x {len(columns)} columns), got shape {array.shape}")
    if array.shape[0] == 0:
        raise BadRequest("body: the array has no rows")
    if array.shape[1] != len(columns):
        raise BadRequest(f"body: the array has {array.shape[1]} columns; expected {len(columns)}: {_show(columns)}")
    if array.dtype.kind not in "biuf":
        raise BadRequest(f"body: expected numbers, got dtype {array.dtype}")
    matrix = np.asarray(array, dtype=np.float64)
    bad = ~np.isfinite(matrix)
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        raise BadRequest(f"body: row {r}, column {columns[c]!r}: {matrix[r, c]}; expected finite numbers")
    return matrix


class Gateway:
    """The gateway of one deployed ensemble.

    Parameters
    ----------
    spec : ServeSpec, GatewayOptions or None
        Batching, hedging and timing knobs (attributes of :class:`GatewayOptions`; others ignored).
    members : sequence of MemberSpec
        The job's members (``features``: the columns each takes; None: all of ``columns``).
    table : ReplicaTable
        The replicas to route to (kept by the controller).
    combiner_factory : CombinerFactory
        Builds the job's combiner for ``members`` (:func:`framework.serving.combine.combiner_factory`).
    columns : sequence of str
        The job's feature columns, in the data's order (what a request gives per row).
    min_members : int, optional
        Fewest members that make an answer (default: all).
    integration : str, optional
        The integration method's name, shown by ``/v1/models``.
    rng : random.Random, optional
        The balancer's randomness (tie breaks).
    """

    def __init__(self, spec: Any, members: Sequence[MemberSpec], table: ReplicaTable,
                 combiner_factory: CombinerFactory, *, columns: Sequence[str], min_members: int | None = None,
                 integration: str | None = None, rng: random.Random | None = None,
                 text_columns: Sequence[str] = ()) -> None:
        self.options = GatewayOptions.from_spec(spec)
        self.members = tuple(members)
        self.table = table
        self.columns = tuple(columns)
        self.text_columns = tuple(text_columns)
        if not self.columns and not self.text_columns:
            raise ValueError("the gateway needs the job's feature columns")
        self.member_columns: dict[str, list[int] | None] = {}
        self.member_text: dict[str, str] = {}
        """Text members: the text column each takes (a 1-D array of strings, not numbers)."""
        for m in self.members:
            if m.features is not None and len(m.features) == 1 and m.features[0] in self.text_columns:
                self.member_text[m.name] = m.features[0]
                continue
            if m.features is None:
                self.member_columns[m.name] = None
                continue
            unknown = [f for f in m.features if f not in self.columns]
            if unknown:
                raise ValueError(f"member {m.name}: columns {unknown} are not feature columns ({_show(self.columns)})")
            self.member_columns[m.name] = [self.columns.index(f) for f in m.features]
        self.combiner = RequestCombiner(combiner_factory(self.members), self.members, min_members)
        self.integration = integration or self.combiner.combiner.method
        self.metrics = GatewayMetrics([m.name for m in self.members], window_s=self.options.window_s)
        self.balancer = Balancer(hedge=self.options.hedge, hedge_min_s=self.options.hedge_min_ms / 1000.0,
                                 suspect_s=self.options.suspect_s, rng=rng)
        self.batchers: dict[str, MemberBatcher] = {}
        self.draining = False
        self.address: tuple[str, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._table_version = -1
        self.pinned: dict[str, str] | None = None
        """Per member, the model file (sha256) whose replicas take this gateway's calls (None: any
        of the member's replicas).  A stacking deployment pins them: its final estimator was
        fitted on those members' predictions, so an update switches them all with it
        (:meth:`switch`)."""
        self._admitted = 0
        """Requests past admission and not answered yet (each was combined with the combiner in
        force when it was admitted: :meth:`switch` waits for them)."""
        self._quiet: asyncio.Event | None = None
        self._switching: asyncio.Event | None = None
        """Set while a switch waits for the requests in flight: new requests wait for it."""

    # Life cycle (called from the controller's thread) -----------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Serve on ``host:port`` (0: any free port) from a new thread; return the address bound."""
        if self._loop is not None:
            raise RuntimeError("the gateway is already started")
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="serving-gateway", daemon=True)
        self._thread.start()
        try:
            self.address = asyncio.run_coroutine_threadsafe(self._start(host, port), loop).result()
        except BaseException:  # e.g. the port is taken: close what was opened, then say why
            try:
                asyncio.run_coroutine_threadsafe(self._stop(), loop).result()
            finally:
                self._halt()
            raise
        return self.address

    def stop(self) -> None:
        """Drain: refuse new connections, answer the requests in flight (up to ``drain_s``), stop."""
        loop = self._loop
        if loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), loop).result()
        finally:
            self._halt()

    def _halt(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join()
        loop.close()
        self._loop = self._thread = None

    @property
    def url(self) -> str:
        if self.address is None:
            raise RuntimeError("the gateway is not started")
        host, port = self.address
        return f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    def load_samples(self) -> dict[str, MemberLoad]:
        """Each member's load over the last window (thread-safe)."""
        return self.metrics.load_samples(self._live())

    def rejected_rates(self) -> dict[str, dict[str, float]]:
        """Per member, its parts of requests shed per second over the last window, by reason
        (thread-safe; the demand the autoscaler's samples already include, broken down)."""
        return self.metrics.rejected_rates()

    def reconfigure(self, spec: Any) -> GatewayOptions:
        """Apply a reloaded ``[serve]`` table's batching, hedging and shedding limits (thread-safe;
        options ``spec`` does not set stay).  All at once on the gateway's loop, between two
        requests: none is dropped; batches already cut keep their rows.  Raises ``ValueError``
        (and changes nothing) for values the options refuse; returns the options in force."""
        options = GatewayOptions.from_spec(spec, base=self.options)
        loop = self._loop
        if loop is None:
            self._apply(options)
        else:
            async def apply() -> None:
                self._apply(options)
            asyncio.run_coroutine_threadsafe(apply(), loop).result()
        return options

    def _apply(self, options: GatewayOptions) -> None:
        self.options = options
        self.balancer.hedge, self.balancer.hedge_min_s = options.hedge, options.hedge_min_ms / 1000.0
        for batcher in self.batchers.values():
            batcher.reconfigure(options.max_batch_rows, options.max_wait_ms / 1000.0, options.max_queue,
                                options.queue_timeout_ms / 1000.0)

    def switch(self, members: Sequence[MemberSpec], combiner_factory: CombinerFactory,
               pinned: Mapping[str, str], timeout: float = 60.0) -> None:
        """Answer with new members' replicas and a new combiner from now on, all at once (a stacking
        update: new replicas, ``pinned`` by sha256, and the final estimator refitted on their
        predictions).  New requests wait while the admitted ones finish with the old combiner and
        replicas; then everything is swapped between two requests, so every answer is entirely
        old or entirely new, and none fails.  Thread-safe; the members keep their names and
        columns (their outputs may change).  Raises ``ValueError`` (nothing swapped) when the
        combiner does not take the members, and ``TimeoutError`` (nothing swapped; the requests
        held meanwhile go on with the old) when the admitted requests take over ``timeout`` s."""
        members = tuple(members)
        if [m.name for m in members] != [m.name for m in self.members]:
            raise ValueError(f"a switch keeps the members {[m.name for m in self.members]}, got "
                             f"{[m.name for m in members]}")
        combiner = RequestCombiner(combiner_factory(members), members, self.combiner.min_members)

        def apply() -> None:
            self.members, self.combiner, self.pinned = members, combiner, dict(pinned)

        loop = self._loop
        if loop is None:
            apply()
            return

        async def swap() -> bool:
            gate = self._switching = asyncio.Event()
            deadline = loop.time() + timeout
            try:
                while self._admitted:
                    self._quiet = asyncio.Event()
                    try:
                        await asyncio.wait_for(self._quiet.wait(), deadline - loop.time())
                    except TimeoutError:
                        return False
                apply()
                return True
            finally:  # the requests held meanwhile go on (with the new, or the old)
                self._switching = None
                gate.set()
        if not asyncio.run_coroutine_threadsafe(swap(), loop).result():
            raise TimeoutError(f"the requests in flight did not finish within {timeout:g} s; not switched")

    async def _enter(self) -> None:
        """Admit a request (after any switch under way)."""
        while self._switching is not None:
            await self._switching.wait()
        self._admitted += 1

    def _leave(self) -> None:
        self._admitted -= 1
        if not self._admitted and self._quiet is not None:
            self._quiet.set()

    def _ready(self, member: str) -> list[Replica]:
        """The member's replicas that take calls: ready, and of its pinned model file if any."""
        ready = self.table.ready(member)
        if self.pinned is None:
            return ready
        sha = self.pinned.get(member)
        return [r for r in ready if r.sha256 == sha]

    def set_cost_per_hour(self, cost: float, lower_bound: float | None = None) -> None:
        """The deployment's cost per hour (and the packer's lower bound), shown by ``/metrics``."""
        self.metrics.set_cost_per_hour(cost, lower_bound)

    # On the loop ------------------------------------------------------------------------------
    async def _start(self, host: str, port: int) -> tuple[str, int]:
        timeout = aiohttp.ClientTimeout(total=self.options.replica_timeout_s)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout)
        for m in self.members:
            batcher = MemberBatcher(m.name, self._sender(m.name), self.options.max_batch_rows,
                                    self.options.max_wait_ms / 1000.0,
                                    max_concurrent=self._concurrency(m.name), on_batch=self._batch_sent,
                                    slack=self._slack(m.name), max_queue=self.options.max_queue,
                                    queue_timeout_s=self.options.queue_timeout_ms / 1000.0)
            batcher.start()
            self.batchers[m.name] = batcher
        app = web.Application(client_max_size=self.options.max_request_bytes)
        app.router.add_post("/v1/predict", self._predict)
        app.router.add_get("/v1/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.options.drain_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        return str(bound[0]), int(bound[1])

    async def _stop(self) -> None:
        self.draining = True
        if self._runner is not None:
            await self._runner.cleanup()  # stops listening, waits for the handlers in flight
            self._runner = None
        for batcher in self.batchers.values():
            await batcher.close()
        self.batchers.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _slack(self, member: str) -> Callable[[], float]:
        """How long ``member``'s requests may wait for others: what its answers would wait for the
        slowest other member anyway (the balancer's measure), at most ``max_slack_ms``."""
        if self.options.max_slack_ms <= 0 or len(self.members) < 2:
            return lambda: 0.0
        names, cap = [m.name for m in self.members], self.options.max_slack_ms / 1000.0

        def slack() -> float:  # a member with no ready replica holds no answer back
            return min(cap, self.balancer.slack(member, [n for n in names if n == member or self._ready(n)]))
        return slack

    def _concurrency(self, member: str) -> Any:
        return lambda: self.options.batches_per_replica * max(1, len(self._ready(member)))

    def _batch_sent(self, member: str, sent: BatchSent) -> None:
        self.metrics.batch(member, sent.rows)

    def _live(self) -> dict[str, LiveState]:
        live = {}
        for m in self.members:
            counts = self.table.counts(m.name)
            batcher = self.batchers.get(m.name)
            ready = counts["ready"] if self.pinned is None else len(self._ready(m.name))  # (a pinned one's)
            live[m.name] = LiveState(queue_depth=batcher.queue_depth if batcher else 0,
                                     in_flight=batcher.in_flight_requests if batcher else 0,
                                     replicas_ready=ready, replicas_draining=counts["draining"],
                                     backlog=batcher.backlog if batcher else 0)
        return live

    # Calls to replicas ------------------------------------------------------------------------
    def _sender(self, member: str) -> Any:
        async def send(batch: np.ndarray) -> np.ndarray:
            return await self._call_member(member, batch)
        return send

    async def _post(self, replica: Replica, body: bytes, rows: int) -> np.ndarray:
        assert self._session is not None
        try:
            async with self._session.post(f"{replica.base_url}/v1/predict", data=body,
                                          headers={"Content-Type": NPY_TYPE}) as response:
                payload = await response.read()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise ReplicaCallError(f"replica {replica.replica_id}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
        if status != 200:
            try:
                reason = json.loads(payload)["error"]
            except (ValueError, KeyError, TypeError):
                reason = payload[:200].decode("utf-8", "replace")
            raise ReplicaCallError(f"replica {replica.replica_id}: HTTP {status}: {reason}")
        try:
            output = npycodec.decode(payload)
        except (ValueError, OSError, EOFError) as exc:
            raise ReplicaCallError(f"replica {replica.replica_id}: its answer is not a .npy: {exc}") from None
        if not isinstance(output, np.ndarray) or output.ndim == 0 or output.shape[0] != rows:
            raise ReplicaCallError(f"replica {replica.replica_id}: answered shape "
                                   f"{getattr(output, 'shape', None)} for {rows} rows")
        return output

    async def _call_member(self, member: str, batch: np.ndarray) -> np.ndarray:
        """One batch of ``member`` answered by one of its replicas: least outstanding first, a hedge
        to a second, idle one past the member's recent p95, a failed call sent to one not tried yet."""
        loop = asyncio.get_running_loop()
        body = npy_bytes(batch if batch.dtype.kind == "U" else np.ascontiguousarray(batch, dtype=np.float64))
        rows = int(batch.shape[0])
        tried: set[str] = set()
        running: dict[asyncio.Task[np.ndarray], tuple[str, float]] = {}
        errors: list[str] = []
        self._forget_gone()

        def launch(hedge: bool = False) -> bool:
            ready = {r.replica_id: r for r in self._ready(member)}
            pick = self.balancer.pick_hedge if hedge else self.balancer.pick
            chosen = pick(list(ready), loop.time(), exclude=tried)
            if chosen is None:
                return False
            tried.add(chosen)
            self.balancer.started(chosen)
            running[loop.create_task(self._post(ready[chosen], body, rows))] = (chosen, loop.time())
            return True

        if not launch():
            raise MemberUnavailable(f"member {member}: no ready replica")
        delay = self.balancer.hedge_delay(member)
        hedge_at = None if delay is None else loop.time() + delay
        hedged = False
        try:
            while running:
                timeout = None if hedge_at is None else max(0.0, hedge_at - loop.time())
                done, _pending = await asyncio.wait(running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:  # past the hedge delay: an idle replica races it (once, within the budget)
                    hedge_at = None
                    if self.balancer.may_hedge(member) and launch(hedge=True):
                        hedged = True
                        self.balancer.hedged(member)
                        self.metrics.hedge(member)
                    continue
                for task in done:
                    replica_id, started = running.pop(task)
                    exc = task.exception()
                    if exc is None:
                        self.balancer.succeeded(member, replica_id, loop.time() - started)
                        self.metrics.replica_call(member, "ok", self._busy(loop.time() - started))
                        return task.result()
                    self.balancer.failed(replica_id, loop.time())
                    self.metrics.replica_call(member, "error", self._busy(loop.time() - started))
                    errors.append(str(exc))
                if not running and launch():
                    self.metrics.failover(member)
            raise MemberUnavailable(f"member {member}: " + "; ".join(errors))
        finally:
            self.balancer.call_done(member, hedged)
            for task, (replica_id, started) in running.items():
                task.cancel()
                self.balancer.abandoned(replica_id, loop.time() - started)
                self.metrics.replica_call(member, "cancelled", self._busy(loop.time() - started))

    def _busy(self, seconds: float) -> float:
        """A call's share of its replica's time: a replica takes ``batches_per_replica`` at once."""
        return seconds / self.options.batches_per_replica

    def _forget_gone(self) -> None:
        version = self.table.version
        if version != self._table_version:
            self._table_version = version
            self.balancer.forget({r.replica_id for r, _state in self.table.snapshot()})

    # Handlers ---------------------------------------------------------------------------------
    async def _member_output(self, member: str, request: Any) -> np.ndarray:
        """The output of ``member``'s part of a request queued by ``_admit``."""
        batcher = self.batchers[member]
        started = time.monotonic()
        try:
            output = await batcher.wait(request)
        except Shed as shed:
            self.metrics.member_rejected_part(member, shed.reason, time.monotonic() - started)
            raise
        except BaseException:
            self.metrics.member_answered(member, time.monotonic() - started, False)
            raise
        self.metrics.member_answered(member, time.monotonic() - started, True)
        return output

    def _admit(self, names: Sequence[str], parts: Sequence[np.ndarray], deadline_ms: float | None
               ) -> tuple[dict[str, Any], dict[str, Shed]]:
        """Queue a request's part at every member that can take it, in one step (no await): the
        queued parts by member, and why the others refused (a full queue; a deadline shorter than
        the member's expected time).  Fewer than ``min_members`` taking it: none keeps it."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = None if deadline_ms is None else now + deadline_ms / 1000.0
        queued: dict[str, Any] = {}
        refused: dict[str, Shed] = {}
        for name, part in zip(names, parts):
            self.metrics.member_arrived(name)  # offered load, shed or not
            batcher = self.batchers[name]
            try:
                if deadline_ms is not None:
                    expected = expected_s(self.balancer.typical_call(name) or 0.0, batcher.in_flight,
                                          batcher.queued_rows(), int(part.shape[0]), batcher.max_batch_rows,
                                          max(1, batcher.max_concurrent()))
                    if expected * 1000.0 > deadline_ms:
                        raise Shed("deadline", f"member {name}: expected to take {expected * 1000:.0f} ms, "
                                               f"over the request's {deadline_ms:g} ms ({DEADLINE_HEADER})")
                queued[name] = batcher.enqueue(part, deadline)
            except Shed as shed:
                refused[name] = shed
        if len(queued) < self.combiner.min_members:
            for name, request in queued.items():
                self.batchers[name].withdraw(request)
            queued = {}
        for name, why in refused.items():
            self.metrics.member_rejected_part(name, why.reason)
        return queued, refused

    def retry_after(self, members: Sequence[str]) -> int:
        """The ``Retry-After`` of a request that ``members`` shed: the longest any of their queues
        takes to drain at its measured rate (:func:`~framework.serving.batcher.retry_after_s`,
        capped by ``retry_after_s``, which is also the answer while nothing drained lately)."""
        rates = self.metrics.drain_rates()
        cap = self.options.retry_after_s
        return max((retry_after_s(self.batchers[m].queue_depth, rates.get(m), cap)
                    for m in members if m in self.batchers), default=cap)

    def _shed(self, shed: Shed, answered: Sequence[str] = (), missing: Sequence[str] = (),
              errors: Mapping[str, str] | None = None, shed_by: Sequence[str] = ()) -> web.Response:
        """The answer to a shed request: 503 with ``Retry-After`` (:meth:`retry_after` of the
        members that shed it, ``shed_by``; 504 when its deadline passed at a replica),
        ``{"error", "reason", ...}``; counted by reason."""
        self.metrics.request_rejected(shed.reason, shed.sent)
        body: dict[str, Any] = {"error": str(shed), "reason": shed.reason}
        if answered or missing:
            body.update(answered_by=list(answered), missing=list(missing))
        if errors:
            body["errors"] = dict(errors)
        if shed.sent:
            return web.json_response(body, status=504)
        return web.json_response(body, status=503, headers={"Retry-After": str(self.retry_after(shed_by))})

    async def _read(self, request: web.Request) -> tuple[np.ndarray, dict[str, np.ndarray], bool]:
        """The request's numbers (rows x the job's feature columns), its text columns, and its
        ``members`` flag."""
        body = await request.read()
        if request.content_type in (NPY_TYPE, "application/octet-stream"):
            if self.text_columns:
                raise BadRequest(f"body: this job has text columns ({_show(self.text_columns)}), which an .npy "
                                 "body cannot carry; send JSON")
            flag = request.query.get("members", "false").lower()
            if flag not in ("true", "false", "1", "0"):
                raise BadRequest(f"members: expected true or false, got {flag!r}")
            return rows_from_npy(body, self.columns), {}, flag in ("true", "1")
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"body: not JSON ({exc}); send JSON, or an .npy with Content-Type: {NPY_TYPE}") from None
        document, texts = split_text(document, self.text_columns)
        rows, members = rows_from_json(document, self.columns)
        return rows, texts, members

    async def _predict(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        if self.draining:
            self.metrics.request("unavailable")
            return web.json_response({"error": "the gateway is draining"}, status=503)
        try:
            deadline_ms = request_timeout_ms(request.headers.get(DEADLINE_HEADER))
            rows, texts, want_members = await self._read(request)
        except BadRequest as exc:
            self.metrics.request("bad_request")
            return web.json_response({"error": str(exc)}, status=400)
        if deadline_ms is not None:
            deadline_ms -= (time.monotonic() - started) * 1000.0  # reading the body took some of it
        await self._enter()
        try:
            return await self._answer(rows, texts, want_members, deadline_ms, started)
        finally:
            self._leave()

    async def _answer(self, rows: np.ndarray, texts: Mapping[str, np.ndarray], want_members: bool,
                      deadline_ms: float | None, started: float) -> web.Response:
        """An admitted request's answer (the combiner and replicas in force stay so until it is in)."""
        combiner = self.combiner
        names = [m.name for m in self.members]
        parts = [texts[self.member_text[n]] if n in self.member_text
                 else rows if self.member_columns[n] is None else np.ascontiguousarray(rows[:, self.member_columns[n]])
                 for n in names]
        queued, refused = self._admit(names, parts, deadline_ms)
        if not queued:
            first = next(iter(refused.values()))
            return self._shed(first, missing=names, errors={n: str(e) for n, e in refused.items()},
                              shed_by=list(refused))
        asked = [n for n in names if n in queued]
        try:
            results = await asyncio.gather(*(self._member_output(n, queued[n]) for n in asked),
                                           return_exceptions=True)
        except asyncio.CancelledError:  # the client went away: what is still queued is not sent
            for name in asked:
                self.batchers[name].withdraw(queued[name])
            raise
        outputs: dict[str, np.ndarray] = {}
        errors: dict[str, str] = {n: str(e) for n, e in refused.items()}
        sheds: list[Shed] = list(refused.values())
        shed_by = list(refused)
        for name, result in zip(asked, results):
            if isinstance(result, BaseException):
                errors[name] = str(result) or type(result).__name__
                if isinstance(result, Shed):
                    sheds.append(result)
                    shed_by.append(name)
            else:
                outputs[name] = result
        errors = {n: errors[n] for n in names if n in errors}
        answered, missing = [n for n in names if n in outputs], [n for n in names if n not in outputs]
        try:
            records = combiner.combine(outputs, rows)
            answer: dict[str, Any] = {"predictions": combiner.predictions(records)}
        except IntegrationError as exc:
            if sheds:  # too few members answered because some shed it: say why, as a shed request
                return self._shed(next((s for s in sheds if s.sent), sheds[0]), answered, missing, errors, shed_by)
            self.metrics.request("unavailable")
            return web.json_response({"error": str(exc), "answered_by": answered, "missing": missing,
                                      "errors": errors}, status=503)
        except ValueError as exc:  # a member's output the combiner cannot take
            self.metrics.request("error")
            return web.json_response({"error": f"integration failed: {exc}", "answered_by": answered,
                                      "missing": missing}, status=500)
        if want_members:
            answer["members"] = combiner.member_values(outputs)
        answer["answered_by"], answer["missing"] = answered, missing
        if errors:
            answer["errors"] = errors
        self.metrics.request("degraded" if missing else "ok", time.monotonic() - started)
        return web.json_response(answer)

    async def _health(self, request: web.Request) -> web.Response:
        live = self._live()
        serving = [n for n, state in live.items() if state.replicas_ready > 0]
        status = ("draining" if self.draining else "ok" if len(serving) == len(live)
                  else "degraded" if len(serving) >= self.combiner.min_members else "unavailable")
        body = {"status": status, "min_members": self.combiner.min_members,
                "members": {n: {"ready": s.replicas_ready, "draining": s.replicas_draining} for n, s in live.items()}}
        return web.json_response(body, status=200 if status in ("ok", "degraded") else 503)

    async def _models(self, request: web.Request) -> web.Response:
        replicas: dict[str, list[dict[str, str]]] = {m.name: [] for m in self.members}
        for replica, state in self.table.snapshot():
            if replica.member in replicas:
                replicas[replica.member].append({"id": replica.replica_id, "url": replica.url,
                                                 "agent_id": replica.agent_id, "sha256": replica.sha256,
                                                 "state": state})
        body = {
            "integration": self.integration, "columns": list(self.columns), "text_columns": list(self.text_columns),
            "min_members": self.combiner.min_members,
            "predicts_labels": bool(self.combiner.combiner.predicts_labels),
            "classes": None if self.combiner.classes is None else self.combiner.classes.tolist(),
            "members": [{"name": m.name, "kind": m.kind, "output": m.output, "weight": m.weight,
                         "columns": list(m.features) if m.features is not None else list(self.columns),
                         "replicas": replicas[m.name]} for m in self.members],
        }
        return web.json_response(body)

    async def _metrics(self, request: web.Request) -> web.Response:
        self.metrics.observe(self._live())
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

