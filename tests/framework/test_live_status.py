"""The live status: its document (pure, secrets redacted), its page, its thin HTTP edge and the
address file ``mesos-ensemble status`` reads."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from framework.live_status import (ADDRESS_FILE, REDACTED, StatusServer, StatusView, read_live, remove_address,
                                   render_html, status_document, write_address)

SECRET = "s3cret-principal-pw"
TOKEN = "tok-Abc123_artifact"


def view(state: str = "running", events: tuple[tuple[float, str], ...] = ()) -> StatusView:
    counts = {"tasks": 4, "done": 1, "rows": 40, "rows_done": 10, "resumed": 0, "retries": 1, "backups": 0,
              "failed": None, "rows_per_second": 5.0, "eta_seconds": 6.0}
    return StatusView(job="demo <b>", state=state, master="127.0.0.1:5050", framework_id="F1", started_at=1000.0,
                      now=1012.5, progress=counts, models={"linear": counts},
                      tasks_by_state={"running": 2, "pending": 1, "finished": 1},
                      agents_used=["a2", "a1"], executors=2, cost=2.0, lower_bound=1.0,
                      waiting="1 task waits: mem exhausted on 2 agents", events=events)


def test_the_document_holds_the_job_and_never_a_secret() -> None:
    events = ((1001.0, "framework subscribed"),
              (1002.0, f"retry linear.s00001: fetch failed: http://h:1/{TOKEN}/files/x (principal pw {SECRET})"))
    document = status_document(view(events=events), secrets=(SECRET, TOKEN, None))
    text = json.dumps(document)
    assert SECRET not in text and TOKEN not in text
    assert document["events"][0]["text"] == f"retry linear.s00001: fetch failed: http://h:1/{REDACTED}/files/x " \
                                            f"(principal pw {REDACTED})"  # newest first
    assert document["events"][1]["text"] == "framework subscribed"
    assert document["elapsed_seconds"] == 12.5 and document["agents_used"] == ["a1", "a2"]
    assert document["tasks_by_state"] == {"finished": 1, "pending": 1, "running": 2}
    assert document["models"]["linear"]["done"] == 1 and document["cost"] == 2.0
    page = render_html(document)
    assert SECRET not in page and TOKEN not in page


def test_the_page_is_self_contained_escaped_and_refreshes_only_while_running() -> None:
    running = render_html(status_document(view(events=((1.0, "<script>alert(1)</script>"),))))
    assert '<meta http-equiv="refresh"' in running
    assert "<script>" not in running and "&lt;script&gt;" in running and "demo &lt;b&gt;" in running
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", running)  # no external asset
    assert "1 task waits: mem exhausted on 2 agents" in running and "1/4" in running
    finished = render_html(status_document(view(state="finished")))
    assert "refresh" not in finished


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_the_server_answers_json_html_404_and_500_over_http() -> None:
    calls: list[int] = []

    def document() -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError(f"broken {SECRET}")
        return status_document(view())

    server = StatusServer(document, bind="127.0.0.1").start()
    try:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/")
        code, kind, body = get(server.url + "status")
        assert code == 200 and kind == "application/json" and json.loads(body)["job"] == "demo <b>"
        code, kind, body = get(server.url)
        assert code == 200 and kind.startswith("text/html") and "<html" in body
        code, _kind, body = get(server.url + "status")
        assert code == 500 and "RuntimeError" in body and SECRET not in body
        code, _kind, _body = get(server.url + "etc/passwd")
        assert code == 404
    finally:
        server.stop()


def test_status_reads_the_recorded_address_only_while_its_server_answers(tmp_path: Path) -> None:
    server = StatusServer(lambda: status_document(view()), bind="127.0.0.1").start()
    try:
        assert read_live(tmp_path) is None  # nothing recorded
        write_address(tmp_path, server.url, "demo <b>")
        live = read_live(tmp_path)
        assert live is not None and live[0] == server.url and live[1]["state"] == "running"
        write_address(tmp_path, server.url, "another job")  # a server of some other job: not ours
        assert read_live(tmp_path) is None
        write_address(tmp_path, server.url, "demo <b>")
    finally:
        server.stop()
    assert read_live(tmp_path) is None  # the run was killed: its file is left, nobody answers
    remove_address(tmp_path)
    assert not (tmp_path / ADDRESS_FILE).exists()


@pytest.mark.parametrize("bad", ["", "{", '{"job": "x"}'])
def test_a_damaged_address_file_means_not_running(tmp_path: Path, bad: str) -> None:
    (tmp_path / ADDRESS_FILE).write_text(bad)
    assert read_live(tmp_path) is None


def test_status_port_is_read_from_the_job_file(tmp_path: Path) -> None:
    from executor.protocol import file_sha256
    from framework.errors import FrameworkError
    from framework.jobspec import load_job

    (tmp_path / "m.joblib").write_bytes(b"not loaded by load_job")
    (tmp_path / "data.csv").write_text("x\n1\n")
    job = tmp_path / "job.toml"
    text = ('[job]\nname = "j"\noutput = "out.csv"\n[data]\npath = "data.csv"\n'
            f'[[models]]\nname = "m"\npath = "m.joblib"\nsha256 = "{file_sha256(tmp_path / "m.joblib")}"\n'
            'kind = "regressor"\n[framework]\n')
    job.write_text(text)
    assert load_job(job).framework.status_port == 0  # any free port
    job.write_text(text + "status_port = 8765\n")
    assert load_job(job).framework.status_port == 8765
    job.write_text(text + "status_port = -1\n")
    with pytest.raises(FrameworkError, match=r"status_port.*must be at least 0, got -1"):
        load_job(job)
