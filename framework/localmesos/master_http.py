"""The master's HTTP endpoints: ``/api/v1/scheduler``, ``/master/state``, ``/version``, health."""
from __future__ import annotations

import base64
import hmac
import uuid as uuidlib
from typing import Any, Optional

from . import protocol
from .httputil import EventStream, Handler, HTTPError, Server
from .master import Master
from .state_json import VERSION, master_state

STATE_PATHS = ("/master/state", "/state", "/master/state.json", "/state.json")


def serve_master(master: Master, host: str, port: int) -> Server:
    """Bind the master's HTTP server (``port`` 0 = any free port) and record the port on ``master``."""
    server = Server((host, port), MasterHandler, master)
    master.port = server.server_address[1]
    return server


class MasterHandler(Handler):
    """HTTP endpoints of the master."""

    server: Server

    @property
    def master(self) -> Master:
        return self.server.owner

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == "/version":
            self.reply_json(200, {"version": VERSION, "build_date": "", "build_time": self.master.start_time,
                                  "build_user": "", "git_sha": ""})
        elif path in STATE_PATHS:
            try:
                self._authenticate()
            except HTTPError as error:
                self.reply_error(error)
                return
            with self.master.lock:
                state = master_state(self.master)
            self.reply_json(200, state)
        elif path == "/api/v1/scheduler":
            self._scheduler()
        elif path in ("/health", "/master/health"):
            self.reply(200)
        else:
            self.reply(404)

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] == "/api/v1/scheduler":
            self._scheduler()
        elif self.discard_body():
            self.reply(404)

    def _authenticate(self) -> Optional[str]:
        """The caller's principal when authentication is on (401 without valid credentials)."""
        credentials = self.master.credentials
        if not credentials:
            return None
        auth = self.basic_auth()
        expected = credentials.get(auth[0]) if auth is not None else None
        if auth is None or expected is None or not hmac.compare_digest(expected.encode(), auth[1].encode()):
            raise HTTPError(401, "", {"WWW-Authenticate": 'Basic realm="mesos"'})
        return auth[0]

    def _scheduler(self) -> None:
        try:
            try:
                principal = self._authenticate()
            except HTTPError:
                self.read_body()
                raise
            call = self.parse_call("scheduler")
            protocol.check_required(call, "SchedulerCall")
            validate_scheduler_call(call)
            if call["type"] == "SUBSCRIBE":
                self._subscribe(call, principal)
                return
            with self.master.lock:
                framework_id = call["framework_id"]["value"]
                framework = self.master.frameworks.get(framework_id)
                if framework is None:
                    raise HTTPError(400, "Framework cannot be found")
                if principal is not None and framework.info.get("principal") not in (None, principal):
                    raise HTTPError(400, f"Authenticated principal '{principal}' does not match principal "
                                         f"'{framework.info.get('principal')}' set in `FrameworkInfo`")
                if framework.stream is None:
                    raise HTTPError(403, "Framework is not subscribed")
                stream_id = self.headers.get("Mesos-Stream-Id")
                if stream_id is None:
                    raise HTTPError(400, "All non-subscribe calls should include the 'Mesos-Stream-Id' header")
                if stream_id != framework.stream.stream_id:
                    raise HTTPError(400, f"The stream ID '{stream_id}' included in this request didn't match the "
                                         f"stream ID currently associated with framework ID {framework_id}")
                self.master.handle_call(call, framework)
            self.reply(202)
        except HTTPError as error:
            self.reply_error(error)

    def _subscribe(self, call: dict[str, Any], principal: Optional[str]) -> None:
        if "Mesos-Stream-Id" in self.headers:
            raise HTTPError(400, "Subscribe calls should not include the 'Mesos-Stream-Id' header")
        info = call["subscribe"]["framework_info"]
        if principal is not None and info.get("principal") not in (None, principal):
            raise HTTPError(400, f"Authenticated principal '{principal}' does not match principal "
                                 f"'{info.get('principal')}' set in `FrameworkInfo`")
        master = self.master
        stream = EventStream(str(uuidlib.uuid4()), heartbeat=lambda: {"type": "HEARTBEAT"},
                             heartbeat_interval=master.heartbeat_interval)
        with master.lock:
            master.subscribe(call, stream, principal)
        self.start_stream({"Mesos-Stream-Id": stream.stream_id})
        stream.serve(self)


_NEEDS_BODY = {"ACCEPT", "DECLINE", "KILL", "ACKNOWLEDGE", "RECONCILE", "MESSAGE", "SHUTDOWN",
               "ACCEPT_INVERSE_OFFERS", "DECLINE_INVERSE_OFFERS", "REQUEST", "UPDATE_FRAMEWORK",
               "ACKNOWLEDGE_OPERATION_STATUS", "RECONCILE_OPERATIONS"}
_KNOWN_CALLS = _NEEDS_BODY | {"SUBSCRIBE", "TEARDOWN", "REVIVE", "SUPPRESS"}


def validate_scheduler_call(call: dict[str, Any]) -> None:
    """Mesos' ``scheduler::Call`` validation (400 with its texts)."""
    def fail(message: str) -> None:
        raise HTTPError(400, "Failed to validate scheduler::Call: " + message)

    kind = call.get("type")
    if kind not in _KNOWN_CALLS:
        fail("Expecting 'type' to be present")
    if kind == "SUBSCRIBE":
        if "subscribe" not in call:
            fail("Expecting 'subscribe' to be present")
        info_id = call["subscribe"]["framework_info"].get("id")
        if ("framework_id" in call or info_id is not None) and call.get("framework_id") != info_id:
            fail("'framework_id' differs from 'subscribe.framework_info.id'")
        return
    if "framework_id" not in call:
        fail("Expecting 'framework_id' to be present")
    if kind == "UPDATE_FRAMEWORK":
        raise HTTPError(400, "localmesos does not implement UPDATE_FRAMEWORK")
    if kind in _NEEDS_BODY and kind.lower() not in call:
        fail(f"Expecting '{kind.lower()}' to be present")
    if kind == "ACKNOWLEDGE" and protocol.valid_uuid(call["acknowledge"]["uuid"]) is None:
        fail("Not a valid UUID")
    if kind == "MESSAGE":
        try:
            base64.b64decode(call["message"]["data"], validate=True)
        except (ValueError, TypeError):
            raise HTTPError(400, "Failed to convert JSON into Call protobuf: Failed to base64-decode 'data'") from None
