"""A finished task's result: the envelope in its TASK_FINISHED data, the output array it names
(inline, or uploaded to the artifact server) checked against its sha256, and its measured usage."""

from __future__ import annotations

import base64

import numpy as np

from executor.protocol import ResultEnvelope, TaskUsage, npy_to_array, sha256_hex
from framework.artifacts import ArtifactServer


def decode_result(server: ArtifactServer, task_id: str, data_b64: str | None) -> tuple[np.ndarray, TaskUsage | None]:
    """Turn a terminal update's data into the task's output array (checking its sha256) and
    what the task cost, as its executor measured it."""
    if not data_b64:
        raise ValueError("TASK_FINISHED carried no result data")
    envelope = ResultEnvelope.from_json(base64.b64decode(data_b64))
    if envelope.kind == "inline":
        npy = base64.b64decode(envelope.npy_b64 or "")
    else:
        path = server.result_path(task_id)
        if not path.is_file():
            raise ValueError(f"uploaded result for {task_id} is missing")
        npy = path.read_bytes()
        path.unlink()
    if sha256_hex(npy) != envelope.sha256 or len(npy) != envelope.nbytes:
        raise ValueError(f"result of {task_id} failed its sha256/size check")
    return npy_to_array(npy), envelope.usage
