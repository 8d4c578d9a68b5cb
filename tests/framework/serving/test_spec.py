"""The job file's [serve] table: defaults, per-member bounds, and every bad value as one line
naming its field (through ``load_job``, as the rest of the job file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from framework.demo import train_demo
from framework.errors import JobSpecError
from framework.jobspec import load_job
from framework.serving.spec import (ReplicaBounds, ServeSpec, ServeSpecError, parse_address, parse_serve,
                                   reload_changes)


@pytest.fixture(scope="module")
def demo_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's job file without any [serve] table of its own."""
    job = train_demo(tmp_path_factory.mktemp("serve-demo"))
    kept, skipping = [], False
    for line in job.read_text().splitlines():
        if line.lstrip().startswith("["):
            skipping = line.lstrip().startswith("[serve")
        if not skipping:
            kept.append(line)
    job.write_text("\n".join(kept) + "\n")
    return job


def with_serve(job: Path, name: str, serve: str) -> Path:
    target = job.parent / f"{name}.toml"
    target.write_text(job.read_text() + "\n" + serve)
    return target


def test_a_job_without_serve_has_none(demo_job: Path) -> None:
    assert load_job(demo_job).serve is None


def test_serve_table_with_per_member_bounds(demo_job: Path) -> None:
    spec = load_job(with_serve(demo_job, "serve-ok", """
[serve]
address = "0.0.0.0:0"
target_p99_ms = 50
max_batch_rows = 64
max_wait_ms = 1.5
hedge = false
scale_interval_s = 0.5
scale_down_delay_s = 20
max_queue = 64
queue_timeout_ms = 250
retry_after_s = 3

[serve.models.linear]
min_replicas = 2
max_replicas = 6
""")).serve
    assert spec is not None
    assert (spec.host, spec.port, spec.address) == ("0.0.0.0", 0, "0.0.0.0:0")
    assert (spec.target_p99_ms, spec.max_batch_rows, spec.max_wait_ms, spec.hedge) == (50.0, 64, 1.5, False)
    assert (spec.scale_interval_s, spec.scale_down_delay_s) == (0.5, 20.0)
    assert (spec.max_queue, spec.queue_timeout_ms, spec.retry_after_s) == (64, 250.0, 3)
    assert spec.bounds("linear") == ReplicaBounds(2, 6)
    assert spec.bounds("logistic") == ReplicaBounds(1, 4)  # every member gets the defaults
    assert set(spec.models) == {"linear", "logistic"}


def test_empty_serve_table_takes_the_defaults(demo_job: Path) -> None:
    spec = load_job(with_serve(demo_job, "serve-empty", "[serve]\n")).serve
    assert spec is not None
    assert spec == ServeSpec(models={"linear": ReplicaBounds(), "logistic": ReplicaBounds()})
    assert spec.address == "127.0.0.1:8080"
    assert (spec.max_queue, spec.queue_timeout_ms, spec.retry_after_s) == (1000, 0.0, 1)


@pytest.mark.parametrize(("serve", "message"), [
    ("[serve]\nbogus = 1", r"serve\.bogus is not a known field \(known: address, "),
    ('[serve]\naddress = "localhost"', r"serve\.address must be host:port \(e\.g\. \"127\.0\.0\.1:8080\"; port 0 = any "
                                       r"free port\), got 'localhost'"),
    ('[serve]\naddress = "localhost:99999"', r"serve\.address must end in a port from 0 to 65535"),
    ('[serve]\naddress = ":8080"', r"serve\.address must be host:port with a host name or address before the colon"),
    ("[serve]\naddress = 8080", r"serve\.address must be str, got 8080"),
    ("[serve]\ntarget_p99_ms = 0", r"serve\.target_p99_ms must be a positive number, got 0"),
    ('[serve]\ntarget_p99_ms = "fast"', r"serve\.target_p99_ms must be a positive number, got 'fast'"),
    ("[serve]\nmax_batch_rows = 0", r"serve\.max_batch_rows must be at least 1, got 0"),
    ("[serve]\nmax_batch_rows = 2.5", r"serve\.max_batch_rows must be int, got 2\.5"),
    ("[serve]\nmax_wait_ms = -1", r"serve\.max_wait_ms must be a non-negative number, got -1"),
    ('[serve]\nhedge = "yes"', r"serve\.hedge must be true or false, got 'yes'"),
    ("[serve]\nscale_interval_s = 0", r"serve\.scale_interval_s must be a positive number, got 0"),
    ("[serve]\nscale_down_delay_s = nan", r"serve\.scale_down_delay_s must be a non-negative number, got nan"),
    ("[serve]\nmax_queue = -1", r"serve\.max_queue must be at least 0 \(0: no cap\), got -1"),
    ("[serve]\nmax_queue = 1.5", r"serve\.max_queue must be int, got 1\.5"),
    ("[serve]\nqueue_timeout_ms = -5", r"serve\.queue_timeout_ms must be a non-negative number, got -5"),
    ("[serve]\nretry_after_s = 0", r"serve\.retry_after_s must be at least 1 \(whole seconds, as the Retry-After "
                                   r"header takes\), got 0"),
    ("[serve]\nretry_after_s = 0.5", r"serve\.retry_after_s must be int, got 0\.5"),
    ("[serve.models.ridge]\nmin_replicas = 1",
     r"serve\.models\.ridge names 'ridge', which is not a \[\[models\]\] name \(known: linear, logistic\)"),
    ("[serve.models.linear]\nmin_replicas = 3\nmax_replicas = 2",
     r"serve\.models\.linear\.max_replicas must be at least min_replicas \(3\), got 2"),
    ("[serve.models.linear]\nmin_replicas = 0", r"serve\.models\.linear\.min_replicas must be at least 1 \(a member "
                                                r"with no replica cannot answer\), got 0"),
    ("[serve.models.linear]\nmax_replicas = true", r"serve\.models\.linear\.max_replicas must be int, got True"),
    ("[serve.models.linear]\nreplicas = 2", r"serve\.models\.linear\.replicas is not a known field \(known: "
                                            r"max_replicas, min_replicas, standby_replicas\)"),
    ("[serve]\nmodels = 3", r"serve\.models must be a table of \[serve\.models\.<name>\] tables, got 3"),
    ('[serve]\nmodels = { linear = 2 }',
     r"serve\.models\.linear must be a table \(min_replicas, max_replicas, standby_replicas\)"),
])
def test_bad_serve_values_are_one_line_naming_the_field(demo_job: Path, serve: str, message: str) -> None:
    name = f"bad-{abs(hash(serve))}"
    with pytest.raises(JobSpecError, match=message) as caught:
        load_job(with_serve(demo_job, name, serve))
    text = str(caught.value)
    assert "\n" not in text and text.startswith(f"{demo_job.parent.resolve() / name}.toml: ")


def test_serve_must_be_a_table(demo_job: Path) -> None:
    target = demo_job.parent / "serve-scalar.toml"
    target.write_text("serve = 1\n" + demo_job.read_text())
    with pytest.raises(JobSpecError, match=r"serve-scalar\.toml: serve must be dict, got 1$"):
        load_job(target)


def test_parse_serve_alone_raises_with_the_field() -> None:
    with pytest.raises(ServeSpecError) as caught:
        parse_serve({"models": {"a": {"min_replicas": 2, "max_replicas": 1}}}, ["a"])
    assert caught.value.field == "models.a.max_replicas"
    assert str(caught.value) == "serve.models.a.max_replicas must be at least min_replicas (2), got 1"


def test_max_defaults_to_at_least_min() -> None:
    assert parse_serve({"models": {"a": {"min_replicas": 6}}}, ["a"]).bounds("a") == ReplicaBounds(6, 6)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("localhost:0", ("localhost", 0)), ("[::1]:9000", ("::1", 9000)),
    ("serve.example.com:80", ("serve.example.com", 80)),
])
def test_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "host", "host:", "host:-1", "::1:80", "[::1]", "a b:80", "[zz]:80", "h:65536"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_clamp() -> None:
    assert [ReplicaBounds(2, 5).clamp(n) for n in (0, 2, 4, 9)] == [2, 2, 4, 5]


def test_reload_changes_name_every_live_field_and_refuse_a_new_address() -> None:
    before = parse_serve({"address": "127.0.0.1:0", "models": {"a": {"max_replicas": 2}}}, ["a", "b"])
    after = parse_serve({"address": "127.0.0.1:0", "target_p99_ms": 50, "max_queue": 10, "hedge": False,
                         "models": {"a": {"max_replicas": 3}}}, ["a", "b"])
    assert reload_changes(before, after) == ["target_p99_ms 100.0 -> 50.0", "hedge True -> False",
                                             "max_queue 1000 -> 10", "models.a 1..2 -> 1..3 replicas"]
    assert reload_changes(after, after) == []
    moved = parse_serve({"address": "127.0.0.1:9000", "target_p99_ms": 50}, ["a", "b"])
    with pytest.raises(ServeSpecError) as caught:
        reload_changes(before, moved)
    assert caught.value.field == "address"
    assert str(caught.value).startswith("serve.address changed (127.0.0.1:0 -> 127.0.0.1:9000); ")
