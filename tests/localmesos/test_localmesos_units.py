"""Unit tests: RecordIO framing and resource arithmetic/formatting."""
from __future__ import annotations

import io

import pytest

from framework.localmesos import recordio
from framework.localmesos.protocol import format_duration
from framework.localmesos.resources import Resources, attribute_json, parse_attributes


def test_recordio_encode_and_incremental_decode():
    events = [b'{"type":"HEARTBEAT"}', '{"x":"é"}'.encode(), b"{}"]
    data = b"".join(recordio.encode(e) for e in events)
    assert data.startswith(b'20\n{"type":"HEARTBEAT"}10\n')  # byte length (é = 2 bytes), no separator
    decoder = recordio.Decoder()
    out = []
    for i in range(len(data)):  # one byte at a time: records split across reads
        out += decoder.feed(data[i:i + 1])
    assert out == events and decoder.pending == b""
    assert recordio.Decoder().feed(data) == events  # packed in one read
    assert list(recordio.iter_records(io.BytesIO(data))) == events
    with pytest.raises(ValueError):
        recordio.encode(b"")
    with pytest.raises(ValueError):
        recordio.Decoder().feed(b"x\n{}")


def test_resources_arithmetic_and_mesos_text():
    total = Resources.from_spec({"cpus": 2, "mem": 4096, "ports": "[31000-32000]"})
    task = Resources.from_json([
        {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
        {"name": "ports", "type": "RANGES", "ranges": {"range": [{"begin": 31000, "end": 31001}]}}])
    rest = total - task
    assert rest.scalar("cpus") == 1.9 and rest.ranges["ports"] == [(31002, 32000)]
    assert total.contains(task) and not rest.contains(task)
    assert str(rest) == "ports(allocated: *):[31002-32000]; cpus(allocated: *):1.9; mem(allocated: *):4096"
    assert (rest + task).ranges["ports"] == [(31000, 32000)]
    assert not Resources.from_spec({"cpus": 0.001, "mem": 16}).allocatable()
    with pytest.raises(ValueError):
        Resources.from_json([{"name": "x", "type": "SET", "set": {"item": ["a"]}}])


def test_attributes_and_durations():
    assert parse_attributes("zone:a;price:1.5") == {"zone": "a", "price": "1.5"}
    assert attribute_json("price", "1.5") == {"name": "price", "type": "SCALAR", "scalar": {"value": 1.5}}
    assert attribute_json("rack", "[1-3]")["type"] == "RANGES"
    assert attribute_json("zone", "a")["type"] == "TEXT"
    assert [format_duration(s) for s in (5, 2.5, 180, 0.001)] == ["5secs", "2500ms", "3mins", "1ms"]
