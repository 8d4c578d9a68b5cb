"""Dynamic batching: how batches are cut and split (pure), and the asyncio queue around it."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from framework.serving.batcher import BatchSent, MemberBatcher, Shed, expected_s, retry_after_s, split_rows, take_rows


def test_take_rows_takes_whole_requests_and_cuts_the_one_that_does_not_fit():
    assert take_rows([3, 4, 5], 100) == [3, 4, 5]
    assert take_rows([3, 4, 5], 8) == [3, 4, 1]
    assert take_rows([3, 4, 5], 7) == [3, 4]
    assert take_rows([20], 8) == [8]
    assert take_rows([], 8) == []
    with pytest.raises(ValueError):
        take_rows([1], 0)
    with pytest.raises(ValueError):
        take_rows([0], 4)


def test_split_rows_gives_each_request_its_rows():
    output = np.arange(20.0).reshape(10, 2)
    parts = split_rows(output, [3, 1, 6])
    assert [p.shape for p in parts] == [(3, 2), (1, 2), (6, 2)]
    assert np.array_equal(np.concatenate(parts), output)
    assert [p.tolist() for p in split_rows(np.array(["a", "b", "c"]), [1, 2])] == [["a"], ["b", "c"]]
    with pytest.raises(ValueError, match="the batch has 4 rows but its output has shape"):
        split_rows(np.zeros(3), [2, 2])


class Model:
    """A real computation per row (a weighted sum and a label), with a gate to hold batches."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate: asyncio.Event | None = None
        self.weights = np.array([0.5, -2.0, 3.0])

    async def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.shape[0])
        if self.gate is not None:
            await self.gate.wait()
        return self.compute(batch)

    def compute(self, rows: np.ndarray) -> np.ndarray:
        """Elementwise, so each row's bits do not depend on the batch (a matrix product's may)."""
        return rows[:, 0] * self.weights[0] + rows[:, 1] * self.weights[1] + rows[:, 2] * self.weights[2]

    def expected(self, rows: np.ndarray) -> np.ndarray:
        return np.concatenate([self.compute(rows[i:i + 1]) for i in range(len(rows))])


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    async def run() -> None:
        model = Model()
        model.gate = asyncio.Event()
        sent: list[BatchSent] = []
        batcher = MemberBatcher("m", model, max_batch_rows=10, max_wait_s=0.001,
                                on_batch=lambda member, b: sent.append(b))
        batcher.start()
        rng = np.random.default_rng(0)
        requests = [rng.normal(size=(int(rng.integers(1, 5)), 3)) for _ in range(30)]
        tasks = [asyncio.create_task(batcher.submit(r)) for r in requests]
        while not model.batches:  # every request is queued (submit queues at once) behind the first batch
            await asyncio.sleep(0)
        model.gate.set()
        answers = await asyncio.gather(*tasks)
        for rows, answer in zip(requests, answers):
            assert np.array_equal(answer, model.expected(rows))
        total = sum(r.shape[0] for r in requests)
        assert sum(model.batches) == total and max(model.batches) <= 10
        assert len(model.batches) == 1 + -(-(total - model.batches[0]) // 10)  # full batches after the first
        assert [b.rows for b in sent] == model.batches and sum(b.requests for b in sent) >= len(requests)
        await batcher.close()
    asyncio.run(run())


def test_a_batch_s_rows_are_exactly_the_requests_rows_in_order():
    async def run() -> None:
        seen: list[np.ndarray] = []

        async def echo(batch: np.ndarray) -> np.ndarray:
            seen.append(batch.copy())
            return batch[:, 0] * 1.0

        batcher = MemberBatcher("m", echo, max_batch_rows=4, max_wait_s=0.0)
        batcher.start()
        big = np.arange(30.0).reshape(10, 3)
        answer = await batcher.submit(big)
        assert np.array_equal(answer, big[:, 0]) and [b.shape[0] for b in seen] == [4, 4, 2]
        assert np.array_equal(np.concatenate(seen), big)
        await batcher.close()
    asyncio.run(run())


def test_a_failed_batch_fails_each_of_its_requests_and_the_next_batch_goes_on():
    async def run() -> None:
        calls = []

        async def flaky(batch: np.ndarray) -> np.ndarray:
            calls.append(batch.shape[0])
            if len(calls) == 1:
                raise RuntimeError("replica lost")
            return batch.sum(axis=1)

        batcher = MemberBatcher("m", flaky, max_batch_rows=100, max_wait_s=0.01)
        batcher.start()
        first = await asyncio.gather(batcher.submit(np.ones((2, 2))), batcher.submit(np.ones((1, 2))),
                                     return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "replica lost" in str(r) for r in first)
        assert np.array_equal(await batcher.submit(np.full((3, 2), 2.0)), np.full(3, 4.0))
        await batcher.close()
    asyncio.run(run())


def test_batches_in_flight_are_limited_and_the_queue_grows_meanwhile():
    async def run() -> None:
        model = Model()
        model.gate = asyncio.Event()
        limit = [2]
        batcher = MemberBatcher("m", model, max_batch_rows=1, max_wait_s=0.0, max_concurrent=lambda: limit[0])
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(np.ones((1, 3)) * i)) for i in range(5)]
        while len(model.batches) < 2 or batcher.queue_depth < 3:
            await asyncio.sleep(0)
        for _ in range(20):
            await asyncio.sleep(0)
        assert batcher.in_flight == batcher.in_flight_requests == 2 and len(model.batches) == 2
        assert batcher.queue_depth == 3
        model.gate.set()
        answers = await asyncio.gather(*tasks)
        assert [a.tolist() for a in answers] == [[1.5 * i] for i in range(5)]
        await batcher.close()
    asyncio.run(run())


def test_close_fails_what_is_still_queued():
    async def run() -> None:
        never = asyncio.Event()

        async def stuck(batch: np.ndarray) -> np.ndarray:
            await never.wait()
            return batch

        batcher = MemberBatcher("m", stuck, max_batch_rows=1, max_wait_s=0.0, max_concurrent=lambda: 1)
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(np.ones((1, 1)))) for _ in range(3)]
        while batcher.in_flight == 0:
            await asyncio.sleep(0)
        await batcher.close()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "stopping" in str(r) for r in results)
    asyncio.run(run())


def test_bad_submissions_and_settings():
    async def run() -> None:
        batcher = MemberBatcher("m", Model(), max_batch_rows=2, max_wait_s=0.0)
        with pytest.raises(ValueError):
            await batcher.submit(np.ones(3))
        with pytest.raises(ValueError):
            await batcher.submit(np.ones((0, 3)))
    asyncio.run(run())
    with pytest.raises(ValueError):
        MemberBatcher("m", Model(), max_batch_rows=0, max_wait_s=0.0)


def test_an_idle_member_sends_at_once_and_a_busy_one_gathers_a_batch():
    async def run() -> None:
        model = Model()
        batcher = MemberBatcher("m", model, max_batch_rows=100, max_wait_s=3600.0)
        batcher.start()
        rows = np.arange(6.0).reshape(2, 3)
        # Nothing out: no waiting for company (a wait of max_wait_s would be an hour).
        assert np.array_equal(await asyncio.wait_for(batcher.submit(rows), 60), model.expected(rows))
        model.gate = asyncio.Event()
        first = asyncio.create_task(batcher.submit(rows))
        while not batcher.in_flight:
            await asyncio.sleep(0)
        # A batch is out: the next requests wait for more rows (up to max_wait_s or a full batch).
        waiting = [asyncio.create_task(batcher.submit(rows + i)) for i in range(3)]
        for _ in range(50):
            await asyncio.sleep(0)
        assert batcher.queue_depth == 3 and model.batches == [2, 2]
        assert batcher.backlog == 3  # every batch slot taken: they wait for a replica
        model.gate.set()
        await first
        for _ in range(50):
            await asyncio.sleep(0)
        assert batcher.queue_depth == 0 and model.batches == [2, 2, 6]  # idle again: sent at once, together
        assert [np.array_equal(await w, model.expected(rows + i)) for i, w in enumerate(waiting)] == [True] * 3
        await batcher.close()
    asyncio.run(run())


def test_an_idle_member_with_slack_waits_that_long_for_company():
    async def run() -> None:
        model = Model()
        slack = [3600.0]
        batcher = MemberBatcher("m", model, max_batch_rows=100, max_wait_s=0.0, slack=lambda: slack[0])
        batcher.start()
        rows = np.arange(6.0).reshape(2, 3)
        waiting = [asyncio.create_task(batcher.submit(rows + i)) for i in range(3)]
        for _ in range(50):
            await asyncio.sleep(0)
        assert batcher.queue_depth == 3 and model.batches == []  # idle, but its answers can wait
        assert batcher.backlog == 0  # held for company with the replica free: no load for the autoscaler
        slack[0] = 0.0  # read afresh when the next request comes: no time to spare, so all go together
        waiting.append(asyncio.create_task(batcher.submit(rows + 3)))
        answers = await asyncio.wait_for(asyncio.gather(*waiting), 60)
        assert model.batches == [8]
        assert all(np.array_equal(a, model.expected(rows + i)) for i, a in enumerate(answers))
        await batcher.close()
    asyncio.run(run())


def test_expected_time_counts_the_batches_ahead_over_the_slots():
    assert expected_s(0.0, 3, 500, 1, 10, 1) == 0.0  # nothing measured yet: never refused
    assert expected_s(0.02, 0, 0, 1, 256, 1) == pytest.approx(0.02)  # idle: one call
    assert expected_s(0.02, 1, 0, 1, 256, 1) == pytest.approx(0.03)  # behind a batch half done
    assert expected_s(0.02, 2, 600, 10, 256, 2) == pytest.approx(0.02 * (1 + 3) / 2)  # 610 rows: 3 batches
    assert expected_s(0.02, 0, 0, 1, 256, 4) == pytest.approx(0.02)  # at least one call


def test_a_full_queue_refuses_a_timed_out_request_leaves_it_and_limits_change_live():
    async def run() -> None:
        model = Model()
        model.gate = asyncio.Event()
        batcher = MemberBatcher("m", model, max_batch_rows=4, max_wait_s=0.0, max_concurrent=lambda: 1,
                                max_queue=2, queue_timeout_s=0.05)
        batcher.start()
        first = asyncio.create_task(batcher.submit(np.ones((1, 3))))
        while batcher.in_flight == 0:
            await asyncio.sleep(0)
        waiting = [asyncio.create_task(batcher.submit(np.ones((1, 3)) * i)) for i in (2, 3)]
        while batcher.queue_depth < 2:
            await asyncio.sleep(0)
        assert batcher.full
        with pytest.raises(Shed) as full:
            batcher.enqueue(np.ones((1, 3)))
        assert full.value.reason == "queue_full" and not full.value.sent
        # Past queue_timeout_s, the waiting requests leave the queue unsent.
        for task in waiting:
            with pytest.raises(Shed) as late:
                await task
            assert late.value.reason == "queue_timeout"
        assert batcher.queue_depth == 0 and len(model.batches) == 1
        # New limits: no timeout, a deadline instead; the next batch is cut at 2 rows.
        batcher.reconfigure(max_batch_rows=2, max_wait_s=0.0, max_queue=0, queue_timeout_s=0.0)
        loop = asyncio.get_running_loop()
        doomed = asyncio.create_task(batcher.submit(np.ones((1, 3)), deadline=loop.time() + 0.02))
        big = asyncio.create_task(batcher.submit(np.ones((3, 3)) * 5))
        with pytest.raises(Shed) as missed:
            await doomed
        assert missed.value.reason == "deadline" and not missed.value.sent
        model.gate.set()
        assert (await first).tolist() == [1.5]
        assert (await big).tolist() == [7.5] * 3
        assert model.batches == [1, 2, 1]  # the doomed request was never sent
        # A deadline that passes while the batch is out: given up, ``sent``.
        model.gate.clear()
        at_replica = asyncio.create_task(batcher.submit(np.ones((1, 3)), deadline=loop.time() + 0.02))
        with pytest.raises(Shed) as gone:
            await at_replica
        assert gone.value.reason == "deadline" and gone.value.sent
        model.gate.set()
        await batcher.close()
    asyncio.run(run())


@pytest.mark.parametrize("waiting, rate, cap, expected", [
    (40, 8.0, 60, 5),      # 5 s to drain
    (41, 8.0, 60, 6),      # 5.125 s: rounded up (HTTP's Retry-After is whole seconds)
    (3, 1.5, 60, 2),       # exactly 2 s, not 3 after floating-point rounding
    (0, 8.0, 60, 1),       # an empty queue (a deadline shed): at least 1 s
    (1, 100.0, 60, 1),
    (1000, 2.0, 30, 30),   # capped by retry_after_s
    (40, 0.0, 7, 7),       # nothing drained lately: the fixed value
    (40, None, 7, 7),
    (40, float("nan"), 7, 7),
])
def test_retry_after_is_the_queue_over_the_drain_rate_rounded_up_and_bounded(waiting, rate, cap, expected):
    assert retry_after_s(waiting, rate, cap) == expected

