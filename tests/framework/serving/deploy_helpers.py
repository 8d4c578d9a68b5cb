"""Helpers of the serving tests: the founding example with a ``[serve]`` table, a deployment run
in a thread of the test process (real embedded cluster, real executor processes, real HTTP), and
a small JSON client."""

from __future__ import annotations

import csv
import json
import re
import threading
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import harness
from framework.demo import train_demo
from framework.jobspec import load_job
from framework.serving.service import ServeRunner


wait_for = partial(harness.wait_for, timeout=120.0, interval=0.05)


def serve_job(directory: Path, serve: str = "", models: dict[str, str] | None = None, agents: str = "",
              framework: str = "") -> Path:
    """The founding example (``train-demo``) whose ``[serve]`` table is replaced: gateway on any
    free port, then ``serve`` lines; ``models``: extra lines per ``[serve.models.NAME]``."""
    job = train_demo(directory)
    text = job.read_text()
    text = text[:text.index("[serve]")] if "[serve]" in text else text
    text = text.replace('name = "mesos-ensemble-demo"\n', f'name = "mesos-ensemble-demo"\n{framework}\n')
    text += f'[serve]\naddress = "127.0.0.1:0"\nscale_interval_s = 0.2\n{serve}\n'
    for name, lines in (models or {}).items():
        text += f"\n[serve.models.{name}]\n{lines}\n"
    if agents:
        text += f"\n[local_cluster]\nagents = {agents}\n"
    job.write_text(text)
    return job


def held_out_rows(job: Path) -> tuple[list[str], list[list[float]]]:
    """The demo's held-out rows: feature names and values (label left out)."""
    with (job.parent / "test.csv").open() as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [[float(v) for v in row[:-1]] for row in reader]
    return header[:-1], rows


def post(url: str, body: dict[str, Any], timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{url}/v1/predict", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def predict(url: str, columns: list[str], rows: list[list[float]]) -> list[Any]:
    status, answer = post(url, {"columns": columns, "data": rows})
    assert status == 200, answer
    return list(answer["predictions"])


class Served:
    """``ServeRunner`` of ``job`` on a thread of this process until :meth:`stop`."""

    def __init__(self, job: Path, state_dir: Path) -> None:
        self.notes: list[str] = []
        self.runner = ServeRunner(job, load_job(job), state_dir, note=self.notes.append)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="serve", daemon=True)

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as error:  # shown by the test
            self.error = error

    def __enter__(self) -> "Served":
        self.thread.start()
        wait_for(lambda: (self.runner.url is not None and self.runner.controller is not None
                          and self.runner.controller.all_ready() and (Path(self.runner.state_dir) / "serve.json")
                          .exists()) or self.error is not None)
        if self.error is not None:
            raise self.error
        return self

    @property
    def url(self) -> str:
        assert self.runner.url is not None
        return self.runner.url

    @property
    def controller(self) -> Any:
        return self.runner.controller

    def stop(self) -> None:
        self.runner.stop_requested.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "serve did not stop"

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.error is not None and exc[0] is None:
            raise self.error


class LoopingClient:
    """Threads that each run :meth:`_loop` (its thread's number) until the ``with`` block ends."""

    def __init__(self, threads: int = 2) -> None:
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(t,), daemon=True) for t in range(threads)]

    def _loop(self, thread: int) -> None:
        raise NotImplementedError

    def __enter__(self) -> "LoopingClient":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=30)


def metric(url: str, name: str) -> list[tuple[str, float]]:
    """The samples of one metric of the gateway's ``/metrics`` (labels text, value)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [(m.group(1) or "", float(m.group(2))) for m in re.finditer(
        rf"^{re.escape(name)}(\{{[^}}]*\}})? ([-+0-9.eE]+|NaN)$", text, flags=re.M)]
