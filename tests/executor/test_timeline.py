"""The executor's start steps: each logged once, at its first time, in a line the bench reads back."""

from __future__ import annotations

import logging
import time

import pytest

from executor import timeline


def test_a_step_is_logged_once_at_its_first_time(caplog: pytest.LogCaptureFixture) -> None:
    before = time.time()
    with caplog.at_level(logging.INFO, logger="executor.timeline"):
        timeline.mark("test_step_once")
        first = timeline.marked()["test_step_once"]
        timeline.mark("test_step_once")
        timeline.mark("test_step_given", 123.5)
    lines = [record.getMessage() for record in caplog.records]
    found = {match.group(1): float(match.group(2)) for line in lines if (match := timeline.LINE.search(line))}
    assert found == {"test_step_once": pytest.approx(first, abs=1e-6), "test_step_given": 123.5}
    assert before <= first <= time.time()


def test_the_process_start_is_before_now() -> None:
    started = timeline.process_started()
    assert started is not None and started <= time.time()
    assert time.time() - started < 3600  # this test process, not the machine's boot
