"""Dynamic batching of one member's requests (as Triton's dynamic batcher does).

Requests for a member wait in a queue; a batch is cut when it holds ``max_batch_rows`` rows or
when its oldest request has waited ``max_wait_s``, whichever comes first, and only while fewer
than ``max_concurrent()`` batches of the member are at its replicas (while they all are, the
queue grows and the next batch is larger). When none of the member's batches is out, the queue
is sent at once (``wait_when_idle=False``, the default): waiting only delays a request when there
is no load to batch it with, so light load pays no ``max_wait_s``.  A member whose answers
would wait for a slower member anyway (``slack``: the gateway's measure of how much sooner its
calls end) waits that long for others in any case, for free.  Each batch is one call (one POST to one replica); its
output is split back by rows. A request larger than ``max_batch_rows`` is cut across batches and
its parts joined in order. Rows are never reordered, so each row's output is what the member
says for that row.

Overload protection (as Triton's ``max_queue_size`` and ``default_queue_policy`` with REJECT):
a request that finds ``max_queue`` requests already waiting is refused at once
(:class:`Shed` ``queue_full``); one that waited ``queue_timeout_s`` without any of its rows sent
leaves the queue (``queue_timeout``); one whose client deadline passes while it waits leaves it
too (``deadline``: no replica time is spent on an answer nobody waits for), and one whose deadline
passes while its batch is at a replica is given up (``deadline``, ``sent``).  :func:`expected_s`
estimates, for the gateway's early refusal, how long a request joining the queue now takes.

The cutting and splitting are pure functions (:func:`take_rows`, :func:`split_rows`,
:func:`expected_s`); :class:`MemberBatcher` is the asyncio queue around them.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

import numpy as np


def take_rows(remaining: Sequence[int], max_rows: int) -> list[int]:
    """How many rows of each queued request (in queue order) the next batch takes.

    Requests are taken whole while they fit; the first one that does not fit is cut (so a
    batch is always full when the queue holds enough rows). The result is as long as the
    number of requests touched; each count is > 0.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    taken: list[int] = []
    room = max_rows
    for rows in remaining:
        if room == 0:
            break
        if rows <= 0:
            raise ValueError(f"a queued request has {rows} rows left")
        n = min(rows, room)
        taken.append(n)
        room -= n
    return taken


def split_rows(output: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """Split a batch's output (rows first) into consecutive parts of ``counts`` rows."""
    output = np.asarray(output)
    total = sum(counts)
    if output.ndim == 0 or output.shape[0] != total:
        raise ValueError(f"the batch has {total} rows but its output has shape {output.shape}")
    bounds = np.cumsum(counts)[:-1]
    return np.split(output, bounds, axis=0)


def expected_s(call_s: float, batches_out: int, queued_rows: int, rows: int, max_batch_rows: int,
               slots: int) -> float:
    """Expected seconds until a request of ``rows`` rows joining a member's queue now is answered:
    the batches ahead of and including it (``queued_rows`` already waiting, cut at
    ``max_batch_rows``; the ``batches_out`` at replicas counted as half done) over the ``slots``
    batches the member runs at once, each a typical call of ``call_s``; at least one call."""
    if call_s <= 0:
        return 0.0
    mine = math.ceil((queued_rows + rows) / max(1, max_batch_rows))
    return call_s * max(1.0, (batches_out / 2.0 + mine) / max(1, slots))


def retry_after_s(waiting: int, drain_rps: float | None, cap_s: int) -> int:
    """The ``Retry-After`` of a request a member shed: the seconds its queue (``waiting``
    requests) takes to drain at the rate it has been draining (``drain_rps``, requests answered
    per second recently), rounded up to whole seconds as HTTP's ``Retry-After`` is, at least 1 and
    at most ``cap_s``; ``cap_s`` itself when no drain was measured (nothing answered lately: the
    queue is not known to drain at all)."""
    if cap_s < 1:
        raise ValueError(f"cap_s must be >= 1, got {cap_s}")
    if drain_rps is None or not math.isfinite(drain_rps) or drain_rps <= 0:
        return cap_s
    seconds = max(0, waiting) / drain_rps
    return max(1, min(cap_s, math.ceil(seconds - 1e-9)))  # (3 / 1.5 is 2 s, not 3 after rounding)


class Shed(Exception):
    """A request the gateway will not wait for; ``reason``: ``queue_full``, ``queue_timeout`` or
    ``deadline``; ``sent``: some of its rows were at a replica when it was given up."""

    def __init__(self, reason: str, detail: str, sent: bool = False) -> None:
        super().__init__(detail)
        self.reason, self.sent = reason, sent


@dataclass(eq=False)
class _Request:
    rows: np.ndarray
    future: asyncio.Future[np.ndarray]
    arrived: float
    deadline: float | None = None
    """The client's deadline (loop time), or None."""
    taken: int = 0
    parts: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def left(self) -> int:
        return self.rows.shape[0] - self.taken

    def deliver(self, start: int, part: np.ndarray) -> None:
        if self.future.done():
            return
        self.parts[start] = part
        if sum(p.shape[0] for p in self.parts.values()) == self.rows.shape[0]:
            ordered = [self.parts[k] for k in sorted(self.parts)]
            self.future.set_result(ordered[0] if len(ordered) == 1 else np.concatenate(ordered, axis=0))

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


Send = Callable[[np.ndarray], Awaitable[np.ndarray]]
"""Sends one batch (2-D rows) to the member; returns its output (rows first)."""


@dataclass(frozen=True)
class BatchSent:
    """One batch handed to ``send`` (for the metrics)."""

    rows: int
    requests: int


class MemberBatcher:
    """The queue of one member's requests; runs on the gateway's event loop."""

    def __init__(self, member: str, send: Send, max_batch_rows: int, max_wait_s: float,
                 max_concurrent: Callable[[], int] = lambda: 1,
                 on_batch: Callable[[str, BatchSent], None] | None = None, wait_when_idle: bool = False,
                 slack: Callable[[], float] = lambda: 0.0, max_queue: int = 0, queue_timeout_s: float = 0.0) -> None:
        self.member = member
        self.send = send
        self._wakeup = asyncio.Event()
        self.max_batch_rows, self.max_wait_s, self.max_queue, self.queue_timeout_s = 1, 0.0, 0, 0.0
        self.reconfigure(max_batch_rows, max_wait_s, max_queue, queue_timeout_s)
        self.max_concurrent = max_concurrent
        self.on_batch = on_batch
        self.wait_when_idle = wait_when_idle
        self.slack = slack
        """Seconds a request may wait for others even when none of the member's batches is out
        (its answer waits for slower members anyway); the wait is the larger of this and ``max_wait_s``."""
        self.queue: deque[_Request] = deque()
        self.in_flight = 0
        """Batches handed to ``send`` and not answered yet."""
        self.in_flight_requests = 0
        """Requests in those batches (a request cut across batches counts in each)."""
        self.batches = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        """Requests waiting for (the rest of their rows to get into) a batch."""
        return len(self.queue)

    @property
    def backlog(self) -> int:
        """Requests waiting for a replica: the queue while every batch slot is taken, else 0.
        Requests held for company while a slot is free (``max_wait_s``, the slack) wait by
        choice, not for capacity, so the autoscaler must not read them as load it cannot carry."""
        return len(self.queue) if self.in_flight >= max(1, self.max_concurrent()) else 0

    def reconfigure(self, max_batch_rows: int, max_wait_s: float, max_queue: int = 0,
                    queue_timeout_s: float = 0.0) -> None:
        """New limits, from the next batch on (a reload); requests already queued keep their place
        and are held to the new ``queue_timeout_s`` (0: none) and ``max_queue`` (0: no cap)."""
        if max_batch_rows < 1 or max_wait_s < 0 or max_queue < 0 or queue_timeout_s < 0:
            raise ValueError("max_batch_rows must be >= 1 and max_wait_s, max_queue, queue_timeout_s >= 0")
        self.max_batch_rows, self.max_wait_s = max_batch_rows, max_wait_s
        self.max_queue, self.queue_timeout_s = max_queue, queue_timeout_s
        self._wakeup.set()

    @property
    def full(self) -> bool:
        """``max_queue`` requests are waiting: a new one is shed."""
        return 0 < self.max_queue <= len(self.queue)

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.member}")

    async def submit(self, rows: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """The member's output for ``rows`` (2-D, at least one row), once its batch(es) came back;
        :class:`Shed` when the queue is full, or the request timed out in it or missed ``deadline``."""
        return await self.wait(self.enqueue(rows, deadline))

    def enqueue(self, rows: np.ndarray, deadline: float | None = None) -> _Request:
        """Queue ``rows`` (at once, no await: the gateway admits a request to every member in one
        step) with the client's ``deadline`` (loop time); :class:`Shed` ``queue_full`` if it is full."""
        if rows.ndim not in (1, 2) or rows.shape[0] == 0 or (rows.ndim == 1 and rows.dtype.kind != "U"):
            raise ValueError(f"a request needs 2-D rows (or a 1-D text column), got shape {rows.shape}")
        if self.full:
            raise Shed("queue_full", f"member {self.member}: {len(self.queue)} requests are waiting "
                                     f"(max_queue {self.max_queue})")
        loop = asyncio.get_running_loop()
        request = _Request(rows, loop.create_future(), loop.time(), deadline)
        self.queue.append(request)
        self._wakeup.set()
        return request

    def withdraw(self, request: _Request) -> None:
        """Give a request up: out of the queue if none of its rows was sent yet, its future
        cancelled (what of it is at a replica is dropped when it comes back)."""
        if request.taken == 0 and request in self.queue:
            self.queue.remove(request)
            self._wakeup.set()
        request.future.cancel()

    async def wait(self, request: _Request) -> np.ndarray:
        """The output of a request :meth:`enqueue` queued (see :meth:`submit`)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                queued = request.taken == 0
                limits = [request.deadline] if request.deadline is not None else []
                if queued and self.queue_timeout_s > 0:
                    limits.append(request.arrived + self.queue_timeout_s)
                if not limits:
                    return await request.future
                left = min(limits) - loop.time()
                if left > 0:
                    await asyncio.wait((request.future,), timeout=left)
                    if request.future.done():
                        return request.future.result()
                    continue
                if request.future.done():
                    return request.future.result()
                self.withdraw(request)
                waited = loop.time() - request.arrived
                if not queued:
                    raise Shed("deadline", f"member {self.member}: the request's deadline passed after "
                                           f"{waited * 1000:.0f} ms, its batch at a replica", sent=True)
                if request.deadline is not None and request.deadline <= min(limits):
                    raise Shed("deadline", f"member {self.member}: the request's deadline passed after "
                                           f"{waited * 1000:.0f} ms waiting for a replica")
                raise Shed("queue_timeout", f"member {self.member}: waited {waited * 1000:.0f} ms for a replica "
                                            f"(queue_timeout_ms {self.queue_timeout_s * 1000:g})")
        except asyncio.CancelledError:
            self.withdraw(request)  # nothing of it was sent: drop it
            raise

    async def close(self) -> None:
        """Stop cutting batches; requests still queued fail; batches in flight are cancelled."""
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
            self._runner = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self.queue:
            self.queue.popleft().fail(RuntimeError(f"member {self.member}: the gateway is stopping"))

    # The loop -------------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            while self.in_flight >= max(1, self.max_concurrent()):
                self._wakeup.clear()
                await self._wakeup.wait()
            # Wait for more rows, until the batch is full or its oldest request waited max_wait_s
            # (not while none of the member's batches is out: an idle member answers at once), or
            # the member's slack (the time its answers would wait for slower members anyway).
            while self.queue and self.queued_rows() < self.max_batch_rows:
                wait = max(self.max_wait_s if self.in_flight or self.wait_when_idle else 0.0, self.slack())
                left = self.queue[0].arrived + wait - loop.time()
                if left <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except asyncio.TimeoutError:
                    break
            if self.queue:
                self._dispatch()

    def queued_rows(self) -> int:
        """Rows waiting in the queue (of requests cut across batches, the rows not sent yet)."""
        return sum(r.left for r in self.queue)

    def _dispatch(self) -> None:
        if any(r.future.done() for r in self.queue):  # failed in part, or its client went away
            self.queue = deque(r for r in self.queue if not r.future.done())
            if not self.queue:
                return
        counts = take_rows([r.left for r in self.queue], self.max_batch_rows)
        segments: list[tuple[_Request, int, int]] = []
        for n in counts:
            request = self.queue[0]
            segments.append((request, request.taken, n))
            request.taken += n
            if request.left == 0:
                self.queue.popleft()
        batch = (segments[0][0].rows[segments[0][1]:segments[0][1] + segments[0][2]] if len(segments) == 1
                 else np.concatenate([r.rows[s:s + n] for r, s, n in segments], axis=0))
        self.in_flight += 1
        self.in_flight_requests += len(segments)
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(self.member, BatchSent(rows=int(batch.shape[0]), requests=len(segments)))
        task = asyncio.get_running_loop().create_task(self._send(batch, segments))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: np.ndarray, segments: list[tuple[_Request, int, int]]) -> None:
        try:
            output = await self.send(batch)
            parts = split_rows(output, [n for _r, _s, n in segments])
        except asyncio.CancelledError:
            for request, _s, _n in segments:
                request.fail(RuntimeError(f"member {self.member}: the gateway is stopping"))
            raise
        except Exception as exc:  # the member's failure is each request's failure
            for request, _s, _n in segments:
                request.fail(exc)
        else:
            for (request, start, _n), part in zip(segments, parts):
                request.deliver(start, part)
        finally:
            self.in_flight -= 1
            self.in_flight_requests -= len(segments)
            self._wakeup.set()
