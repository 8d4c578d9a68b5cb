"""The executor's pure runner: real joblib files, real sha256 checks, real predictions."""

from __future__ import annotations

import dataclasses
import mmap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from executor.protocol import RemoteFile, TaskPayload, array_to_npy, npy_to_array, sha256_hex
from executor.runner import READ_NPY_BYTES, SandboxCache, TaskError, map_npy, read_npy, run_task


def scaled_logistic():  # noqa: ANN201
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    return x, y


@pytest.fixture()
def sandbox(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> Path:
    x, y = data
    joblib.dump(scaled_logistic().fit(x, y), tmp_path / "m.joblib")
    return tmp_path


def payload_for(sandbox: Path, shard: np.ndarray, **overrides: object) -> tuple[TaskPayload, dict[str, bytes]]:
    """A predict payload for the sandbox's model ``m.joblib`` and its blobs by URL (``mem://``)."""
    blob, model = array_to_npy(shard), (sandbox / "m.joblib").read_bytes()
    fields: dict[str, object] = dict(
        task_id="t1", operation="predict", model_name="m", model=RemoteFile("mem://m", sha256_hex(model)),
        model_file="m.joblib", method="predict_proba",
        shard=RemoteFile(f"mem://shard/{sha256_hex(blob)}", sha256_hex(blob)), shard_index=0,
        result_upload_url="unused",
    )
    fields.update(overrides)
    return TaskPayload(**fields), {"mem://m": model, f"mem://shard/{sha256_hex(blob)}": blob}  # type: ignore[arg-type]


class CountingDownloads(dict):
    """Blobs by URL that count how often each is downloaded."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()

    def download(self, url: str) -> bytes:
        with self.lock:
            self.counts[url] = self.counts.get(url, 0) + 1
        time.sleep(0.01)  # widen the window in which concurrent tasks could both download
        return self[url]


def test_predicts_exactly_what_sklearn_predicts(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = data
    payload, blobs = payload_for(sandbox, x[:40])
    output = run_task(payload, SandboxCache(sandbox, blobs.__getitem__))
    expected = joblib.load(sandbox / "m.joblib").predict_proba(x[:40])
    assert np.array_equal(output, expected)


def test_payload_round_trips_through_json(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    payload, _ = payload_for(sandbox, data[0][:3], train_rows=[1, 2], test_rows=[0])
    assert TaskPayload.from_json(payload.to_json()) == payload
    assert np.array_equal(npy_to_array(array_to_npy(data[0][:3])), data[0][:3])


def test_model_loaded_once_per_executor(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    blobs = CountingDownloads()
    cache = SandboxCache(sandbox, blobs.download)
    for start in (0, 10, 20):
        payload, more = payload_for(sandbox, data[0][start:start + 10])
        blobs.update(more)
        run_task(payload, cache)
    assert cache.models_loaded == 1
    assert "mem://m" not in blobs.counts  # already in the sandbox (as the Mesos fetcher leaves it)


def test_missing_model_is_downloaded_once_and_checked(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    payload, more = payload_for(sandbox, data[0][:10])
    (sandbox / "m.joblib").unlink()
    blobs = CountingDownloads(more)
    cache = SandboxCache(sandbox, blobs.download)
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda _: run_task(payload, cache), range(4)))
    assert blobs.counts["mem://m"] == 1 and cache.models_loaded == 1
    assert all(np.array_equal(o, outputs[0]) for o in outputs)
    assert sha256_hex((sandbox / "m.joblib").read_bytes()) == payload.model.sha256


def test_corrupted_model_download(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    payload, blobs = payload_for(sandbox, data[0][:5])
    (sandbox / "m.joblib").unlink()
    blobs["mem://m"] = blobs["mem://m"][:-10]
    with pytest.raises(TaskError, match="model file m.joblib: sha256 mismatch after download"):
        run_task(payload, SandboxCache(sandbox, blobs.__getitem__))
    assert not (sandbox / "m.joblib").exists()


def test_models_of_one_shard_share_one_download(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    joblib.dump(make_pipeline(StandardScaler(), LogisticRegression(C=0.1)).fit(x, y), sandbox / "other.joblib")
    shard = x[:50]
    first, blobs = payload_for(sandbox, shard)
    other = (sandbox / "other.joblib").read_bytes()
    blobs = CountingDownloads({**blobs, "mem://other": other})
    payloads = [first, *(dataclasses.replace(first, task_id=f"t{i}", model_name="other", model_file="other.joblib",
                                             model=RemoteFile("mem://other", sha256_hex(other)), method="predict")
                         for i in range(2, 5))]
    cache = SandboxCache(sandbox, blobs.download)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda p: run_task(p, cache), payloads))
    assert blobs.counts[first.shard.url] == 1


def test_hash_mismatch_fails_with_clear_message(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    payload, blobs = payload_for(sandbox, data[0][:5], model=RemoteFile("mem://m", "0" * 64))
    with pytest.raises(TaskError, match=r"m\.joblib: sha256 mismatch \(expected 0{64}"):
        run_task(payload, SandboxCache(sandbox, blobs.__getitem__))


def test_unreadable_model(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    (sandbox / "m.joblib").write_bytes(b"not a pickle")
    payload, blobs = payload_for(sandbox, data[0][:5])
    with pytest.raises(TaskError, match="could not be loaded"):
        run_task(payload, SandboxCache(sandbox, blobs.__getitem__))


def test_wrong_number_of_features(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    payload, blobs = payload_for(sandbox, data[0][:5, :7])
    with pytest.raises(TaskError, match="expects 30 features, the shard has 7"):
        run_task(payload, SandboxCache(sandbox, blobs.__getitem__))


def test_corrupted_shard_download(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    payload, blobs = payload_for(sandbox, data[0][:5])
    blobs[payload.shard.url] = blobs[payload.shard.url][:-8]
    with pytest.raises(TaskError, match="shard 0: sha256 mismatch"):
        run_task(payload, SandboxCache(sandbox, blobs.__getitem__))


def test_missing_method(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    payload, blobs = payload_for(sandbox, data[0][:5], method="transform")
    with pytest.raises(TaskError, match="has no method transform"):
        run_task(payload, SandboxCache(sandbox, blobs.__getitem__))


def test_cv_fit_predict_fits_a_clone_on_the_fold(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    labels = array_to_npy(y)
    train, test = list(range(0, 400)), list(range(400, 569))
    payload, blobs = payload_for(sandbox, x, operation="cv_fit_predict", method="predict",
                                 labels=RemoteFile("mem://labels", sha256_hex(labels)),
                                 train_rows=train, test_rows=test)
    blobs["mem://labels"] = labels
    output = run_task(payload, SandboxCache(sandbox, blobs.__getitem__))
    expected = scaled_logistic().fit(x[train], y[train]).predict(x[test])
    assert np.array_equal(output, expected)


def test_model_gets_only_its_columns(sandbox: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    joblib.dump(scaled_logistic().fit(x[:, [3, 1]], y), sandbox / "m.joblib")
    payload, blobs = payload_for(sandbox, x[:20], columns=[3, 1])
    output = run_task(payload, SandboxCache(sandbox, blobs.__getitem__))
    assert np.array_equal(output, joblib.load(sandbox / "m.joblib").predict_proba(x[:20, [3, 1]]))
    with pytest.raises(TaskError, match="model m takes column 30, shard 0 has 30"):
        run_task(dataclasses.replace(payload, columns=[30]), SandboxCache(sandbox, blobs.__getitem__))


def test_concurrent_first_loads_of_different_models_do_not_deadlock(tmp_path: Path) -> None:
    """Tasks of several models start at once in a fresh executor: their unpickling imports parts
    of scikit-learn, which deadlocked CPython's module locks in two threads (_DeadlockError)."""
    import subprocess
    import sys

    from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier

    x = np.random.default_rng(0).random((200, 5))
    y = (x[:, 0] > 0.5).astype(int)
    models = {"forest": RandomForestClassifier(5, random_state=0), "extra": ExtraTreesClassifier(5, random_state=0),
              "boosting": HistGradientBoostingClassifier(max_iter=5), "logistic": LogisticRegression()}
    for name, model in models.items():
        joblib.dump(model.fit(x, y), tmp_path / f"{name}.joblib")
    script = f"""
import threading
from pathlib import Path
from executor.protocol import RemoteFile, file_sha256
from executor.runner import SandboxCache
cache, errors = SandboxCache(Path({str(tmp_path)!r})), []
def load(name):
    try:
        cache.model(RemoteFile("unused", file_sha256(cache.sandbox / f"{{name}}.joblib")), f"{{name}}.joblib", name)
    except Exception as error:
        errors.append(repr(error))
threads = [threading.Thread(target=load, args=(n,)) for n in {list(models)!r}]
[t.start() for t in threads]
[t.join() for t in threads]
print(errors or "ok")
"""
    root = Path(__file__).resolve().parents[2]
    for _ in range(2):  # a fresh interpreter each time: nothing of scikit-learn imported yet
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=root)
        assert result.stdout.strip() == "ok", result.stdout + result.stderr


def test_downloads_reuse_a_kept_alive_connection_until_the_server_closes_it() -> None:
    import http.server
    import threading as _threading
    import urllib.error

    from executor.runner import KeptAliveDownloads

    connections: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            connections.append(self.client_address[1])

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/missing":
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = self.path.encode() * 1000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            if self.path == "/last":
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    _threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        download = KeptAliveDownloads(timeout=10)
        assert [download(f"{base}/s{i}") for i in range(5)] == [f"/s{i}".encode() * 1000 for i in range(5)]
        assert len(connections) == 1, connections  # one connection for all five
        with pytest.raises(urllib.error.HTTPError):
            download(f"{base}/missing")
        assert download(f"{base}/last") == b"/last" * 1000  # the server closes this one after answering
        assert download(f"{base}/again") == b"/again" * 1000
        assert len(connections) == 3, connections
    finally:
        server.shutdown()
        server.server_close()


def test_preimport_imports_under_the_unpickling_lock_and_skips_what_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The executor's start-up import holds the lock model loads take (no two imports of one
    package at once), imports what it can and leaves a broken module to the load that needs it."""
    import sys

    from executor.runner import UNPICKLING, preimport

    (tmp_path / "preimport_probe_ok.py").write_text(
        "from executor.runner import UNPICKLING\nHELD = UNPICKLING.locked()\n")
    (tmp_path / "preimport_probe_broken.py").write_text("raise RuntimeError('broken on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("preimport_probe_ok", "preimport_probe_broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    thread = preimport(("preimport_probe_broken", "preimport_probe_ok", "no_such_module_here"))
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert sys.modules["preimport_probe_ok"].HELD is True
    assert "preimport_probe_broken" not in sys.modules
    assert not UNPICKLING.locked()


@pytest.mark.parametrize("array", [
    np.arange(5000, dtype=np.float64).reshape(250, 20), np.arange(7, dtype=np.int32), np.zeros((0, 3)),
    np.asfortranarray(np.arange(12.0).reshape(4, 3)), np.array(2.5), np.array([(1, 2.0)], dtype="i4,f8"),
], ids=["plain", "int32", "empty", "fortran", "scalar", "structured"])
def test_map_npy_maps_what_np_load_maps(tmp_path: Path, array: np.ndarray) -> None:
    """The cached-header mapping is np.load's own mapping, twice (the second from the cache)."""
    path = tmp_path / "a.npy"
    np.save(path, array)
    expected = np.load(str(path), mmap_mode="r", allow_pickle=False)
    for _ in range(2):
        mapped = map_npy(path)
        assert type(mapped) is type(expected) and mapped.dtype == expected.dtype and mapped.shape == expected.shape
        assert mapped.offset == expected.offset and mapped.filename == expected.filename
        assert mapped.flags.writeable is False and mapped.flags.f_contiguous == expected.flags.f_contiguous
        assert np.array_equal(mapped, expected)


@pytest.mark.parametrize("array", [
    np.arange(5000, dtype=np.float64).reshape(250, 20), np.arange(7, dtype=np.int32), np.zeros((0, 3)),
    np.asfortranarray(np.arange(12.0).reshape(4, 3)), np.array(2.5), np.array([(1, 2.0)], dtype="i4,f8"),
    np.arange(READ_NPY_BYTES // 8 + 1, dtype=np.float64),
], ids=["plain", "int32", "empty", "fortran", "scalar", "structured", "large"])
def test_read_npy_reads_a_small_plain_file_and_maps_the_rest(tmp_path: Path, array: np.ndarray) -> None:
    """A small plain ``.npy`` is read, read-only, its data at a mapping's address modulo the page
    size; anything else is :func:`map_npy`'s mapping (a large file, Fortran order, a scalar...)."""
    path = tmp_path / "a.npy"
    np.save(path, array)
    expected = map_npy(path)
    for _ in range(2):  # the second from the cached header
        read = read_npy(path)
        small = array.ndim > 0 and array.flags.c_contiguous and array.dtype.names is None \
            and path.stat().st_size <= READ_NPY_BYTES
        assert type(read) is (np.ndarray if small else type(expected))
        assert read.dtype == expected.dtype and read.shape == expected.shape and read.flags.writeable is False
        assert read.flags.f_contiguous == expected.flags.f_contiguous and np.array_equal(read, expected)
        if small and array.size:  # (an empty array has no data to place)
            assert read.ctypes.data % mmap.ALLOCATIONGRANULARITY == expected.ctypes.data % mmap.ALLOCATIONGRANULARITY


def test_map_npy_maps_a_path_as_given_without_resolving_it(tmp_path: Path) -> None:
    """A shard is mapped by its path made absolute, as ``np.load`` of a ``str`` maps it, not
    resolved through symlinks (``np.memmap`` of a ``Path`` stats every directory of it)."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    path = tmp_path / "link" / "a.npy"
    np.save(path, np.arange(5000.0).reshape(250, 20))
    expected = np.load(str(path), mmap_mode="r", allow_pickle=False)
    for given in (path, str(path)):
        mapped = map_npy(given)
        assert mapped.filename == expected.filename == str(path)
        assert np.array_equal(mapped, expected)


def test_map_npy_says_what_np_load_says_for_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.arange(5000.0).reshape(250, 20))
    map_npy(path)  # its header is now known
    path.write_bytes(path.read_bytes()[:500])  # the same header, a truncated body
    with pytest.raises(Exception) as ours:  # noqa: PT011 - whatever numpy raises, the same
        map_npy(path)
    with pytest.raises(Exception) as numpys:  # noqa: PT011
        np.load(path, mmap_mode="r", allow_pickle=False)
    assert (type(ours.value), str(ours.value)) == (type(numpys.value), str(numpys.value))
