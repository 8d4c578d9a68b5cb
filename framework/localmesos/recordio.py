"""RecordIO framing used by the Mesos v1 streaming APIs: ``<byte length>\\n<bytes>``."""
from __future__ import annotations

import json
from typing import Any, Iterator


def encode(record: bytes) -> bytes:
    """Frame one record (the length counts bytes, never 0)."""
    if not record:
        raise ValueError("RecordIO records may not be empty")
    return str(len(record)).encode("ascii") + b"\n" + record


def encode_event(event: dict[str, Any]) -> bytes:
    """JSON-encode an event and frame it."""
    return encode(json.dumps(event, separators=(",", ":")).encode("utf-8"))


class Decoder:
    """Incremental decoder: feed arbitrary byte slices, get complete records back."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        records: list[bytes] = []
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                break
            header = self._buffer[:newline]
            if not header.isdigit():
                raise ValueError(f"invalid RecordIO header {header!r}")
            length = int(header)
            if length == 0:
                raise ValueError("zero-length RecordIO record")
            end = newline + 1 + length
            if len(self._buffer) < end:
                break
            records.append(self._buffer[newline + 1:end])
            self._buffer = self._buffer[end:]
        return records

    @property
    def pending(self) -> bytes:
        return self._buffer


def iter_records(stream: Any) -> Iterator[bytes]:
    """Read records from a file-like object (e.g. a chunked http.client response)."""
    while True:
        header = stream.readline()
        if not header:
            return
        header = header.strip()
        if not header.isdigit():
            raise ValueError(f"invalid RecordIO header {header!r}")
        length = int(header)
        data = stream.read(length)
        if len(data) < length:
            return
        yield data
