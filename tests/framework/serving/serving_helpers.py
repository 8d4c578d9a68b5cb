"""Real replicas for the gateway's tests: a fitted scikit-learn model behind the replica HTTP
contract (SERVE-DESIGN.md, "Replica task"), on its own asyncio loop in a thread, with switches
to make it slow, fail or drop its connections; and small HTTP clients."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import urllib.error
import urllib.request
from functools import partial
from typing import Any, Sequence

import aiohttp
import numpy as np
from aiohttp import web
import harness

NPY = "application/x-npy"


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class ModelReplica:
    """One fitted model served as a replica does: ``POST /v1/predict`` (.npy in, .npy out)."""

    def __init__(self, model: Any, output: str = "predict", name: str = "replica") -> None:
        self.model, self.output, self.name = model, output, name
        self.calls = 0
        """Predict requests received."""
        self.answered = 0
        """Predict requests answered with an output."""
        self.batch_rows: list[int] = []
        self.fail = False
        """Answer 500 ``member_error`` (the model raised)."""
        self.drop = False
        """Close the connection without an answer (the replica died mid-request)."""
        self.hold: asyncio.Event | None = None
        """While set to an unset event, requests wait for it (a slow replica)."""
        self.delay_s = 0.0
        """Every predict request takes at least this long (a model this slow)."""
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> "ModelReplica":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
        return self

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/predict", self._predict)
        app.router.add_get("/v1/health", self._health)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    def slow(self) -> None:
        """Hold every request until :meth:`release`."""
        async def make() -> asyncio.Event:
            return asyncio.Event()
        self.hold = asyncio.run_coroutine_threadsafe(make(), self._loop).result()

    def release(self) -> None:
        if self.hold is not None:
            self._loop.call_soon_threadsafe(self.hold.set)

    def stop(self) -> None:
        """The replica dies: its server closes (connections refused from now on)."""
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            self.release()
            if self._runner is not None:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"model": self.name, "ready": True, "in_flight": 0})

    async def _predict(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.calls += 1
        try:
            X = np.load(io.BytesIO(body), allow_pickle=False)
        except ValueError as exc:
            return web.json_response({"error": f"body: {exc}"}, status=400)
        self.batch_rows.append(int(X.shape[0]))
        if self.drop:
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        if self.fail:
            return web.json_response({"error": "ValueError: the model raised", "kind": "member_error"}, status=500)
        if self.hold is not None:
            await self.hold.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        started = time.perf_counter()
        output = getattr(self.model, self.output)(X)
        self.answered += 1
        return web.Response(body=npy(np.asarray(output)), content_type=NPY,
                            headers={"X-Compute-Seconds": f"{time.perf_counter() - started:.6f}"})


def post_json(url: str, document: Any) -> tuple[int, Any]:
    """POST a JSON document; (status, parsed JSON answer)."""
    return post(url, json.dumps(document).encode(), "application/json")


def post(url: str, body: bytes, content_type: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def post_with_headers(url: str, body: bytes, content_type: str = "application/json",
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """POST with extra request headers; (status, response headers, parsed JSON answer)."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type, **(headers or {})},
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post_concurrently(url: str, documents: Sequence[Any]) -> list[tuple[int, Any]]:
    """POST every JSON document at once (one asyncio client, concurrent requests)."""
    async def run() -> list[tuple[int, Any]]:
        async with aiohttp.ClientSession() as session:
            async def one(document: Any) -> tuple[int, Any]:
                async with session.post(url, json=document) as response:
                    return response.status, await response.json()
            return list(await asyncio.gather(*(one(d) for d in documents)))
    return asyncio.run(run())


wait_for = partial(harness.wait_for, interval=0.01)
