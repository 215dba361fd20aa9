"""The FakeConvex fixture, proven with real clients: httpx, websockets and `convex.ConvexClient`."""

import asyncio
import base64
import contextlib
import gc
import json
import re
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from agent_runtime.clock import monotonic_s
from convex import ConvexClient, ConvexError
from tests.conftest import stays_false, wait_for
from tests.fake_convex import (
    MAX_ARRAY_ELEMENTS,
    MAX_DOCUMENTS_READ,
    MAX_DOCUMENTS_WRITTEN,
    MAX_VALUE_BYTES,
    FakeConvex,
    RecordedRequest,
    ServiceError,
    charge,
)

ERROR_MESSAGE = re.compile(r"^\[Request ID: [0-9a-f]+\] Server Error\nUncaught (.*)$", re.DOTALL)


class Service:
    """The functions behind the fake: a counter, plus paths that fail."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 1
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def call(self, kind: str, path: str, args: dict[str, Any]) -> Any:
        with self.lock:
            self.calls.append((kind, path, args))
            if path == "tasks:fail":
                raise ServiceError("NOT_ALLOWED", "no way")
            if path == "tasks:boom":
                raise RuntimeError("kaboom")
            if path == "tasks:bump":
                self.count += 1
                return {"count": self.count}
            if path == "tasks:many":
                return list(range(args["n"]))
            if path == "tasks:big":
                return "x" * args["bytes"]
            if path == "tasks:reads":
                charge(read=args["read"], written=args["written"])
                return None
            return {"kind": kind, "count": self.count, "args": args, "tags": ["a", True, None]}

    def set_count(self, count: int) -> None:
        with self.lock:
            self.count = count


@pytest.fixture
def service() -> Service:
    return Service()


HTTP = httpx.Client(verify=False, timeout=5.0)  # noqa: S501 - plain-http URLs only
"""One shared client: each new one costs ~0.1 s (its TLS context); these URLs are plain http."""


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    HTTP.close()


@pytest.fixture
def fake(service: Service) -> Iterator[FakeConvex]:
    with FakeConvex(service.call) as f:
        yield f


def post(
    fake: FakeConvex, kind: str, path: str, args: Any = None, timeout_s: float = 5.0
) -> httpx.Response:
    body = {"path": path, "args": {} if args is None else args, "format": "json"}
    return HTTP.post(f"{fake.url}/api/{kind}", json=body, timeout=timeout_s)


# ---------------------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize("kind", ["query", "mutation", "action"])
def test_http_success_body_and_recorded_request(
    fake: FakeConvex, service: Service, kind: str
) -> None:
    response = post(fake, kind, "dir/file:get", {"n": 7})

    assert response.status_code == 200
    assert response.json() == {
        "status": "success",
        "value": {"kind": kind, "count": 1.0, "args": {"n": 7.0}, "tags": ["a", True, None]},
    }
    assert '"count":1.0' in response.text  # numbers are float64, as real Convex sends them
    assert service.calls == [(kind, "dir/file:get", {"n": 7})]
    assert fake.requests == [RecordedRequest(kind, "dir/file:get", {"n": 7}, 200, None)]


def test_http_accepts_legacy_one_element_array_args(fake: FakeConvex, service: Service) -> None:
    response = post(fake, "query", "tasks:get", [{"x": "y"}])

    assert response.json()["status"] == "success"
    assert service.calls == [("query", "tasks:get", {"x": "y"})]


def test_http_service_error_is_a_convex_error_body(fake: FakeConvex) -> None:
    response = post(fake, "mutation", "tasks:fail")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "errorMessage", "errorData"}
    assert body["status"] == "error"
    assert body["errorData"] == {"code": "NOT_ALLOWED", "message": "no way"}
    match = ERROR_MESSAGE.match(body["errorMessage"])
    assert match is not None, body["errorMessage"]
    assert match.group(1) == 'ConvexError: {"code":"NOT_ALLOWED","message":"no way"}'
    assert fake.requests == [RecordedRequest("mutation", "tasks:fail", {}, 200, None)]


def test_http_other_exception_is_an_error_body_without_data(fake: FakeConvex) -> None:
    response = post(fake, "action", "tasks:boom")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "errorMessage"}
    assert body["status"] == "error"
    match = ERROR_MESSAGE.match(body["errorMessage"])
    assert match is not None, body["errorMessage"]
    assert match.group(1) == "Error: kaboom"


@pytest.mark.parametrize(
    ("path", "args", "message"),
    [
        ("tasks:many", {"n": MAX_ARRAY_ELEMENTS + 1}, "return value invalid: Array length is too"),
        ("tasks:big", {"bytes": MAX_VALUE_BYTES}, "return value invalid: Value is too large"),
        ("tasks:get", {"ids": [0] * (MAX_ARRAY_ELEMENTS + 1)}, "arguments invalid: Array length"),
        ("tasks:reads", {"read": MAX_DOCUMENTS_READ + 1, "written": 0}, "Too many documents read"),
        ("tasks:reads", {"read": 0, "written": MAX_DOCUMENTS_WRITTEN + 1}, "Too many writes"),
    ],
)
def test_a_call_over_convexs_limits_is_refused_and_counted(
    fake: FakeConvex, path: str, args: dict[str, Any], message: str
) -> None:
    response = post(fake, "query", path, args)

    body = response.json()
    assert (response.status_code, body["status"], "errorData" in body) == (200, "error", False)
    assert message in body["errorMessage"]
    (refusal,) = fake.refusals
    assert refusal.path == path
    assert message in refusal.message


def test_a_call_at_convexs_limits_is_answered(fake: FakeConvex) -> None:
    assert (
        post(fake, "query", "tasks:many", {"n": MAX_ARRAY_ELEMENTS}).json()["status"] == "success"
    )
    args = {"read": MAX_DOCUMENTS_READ, "written": MAX_DOCUMENTS_WRITTEN}
    assert post(fake, "mutation", "tasks:reads", args).json()["status"] == "success"
    assert fake.refusals == []


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"{not json", "BadJsonBody"),
        (b"[1, 2]", "BadJsonBody"),
        (b'{"args": {}, "format": "json"}', "BadJsonBody"),
        (b'{"path": "tasks:get", "format": "json"}', "BadJsonBody"),
        (b'{"path": "tasks:get", "args": 5, "format": "json"}', "BadJsonBody"),
        (b'{"path": "tasks:get", "args": {}, "format": "convex_encoded_json"}', "BadFormat"),
    ],
)
def test_http_bad_request_is_400(
    fake: FakeConvex, service: Service, content: bytes, code: str
) -> None:
    response = HTTP.post(f"{fake.url}/api/query", content=content)

    assert response.status_code == 400
    assert response.json()["code"] == code
    assert isinstance(response.json()["message"], str)
    assert service.calls == []
    assert [(r.status, r.fault) for r in fake.requests] == [(400, None)]


def test_http_unknown_route_is_404(fake: FakeConvex, service: Service) -> None:
    response = HTTP.post(f"{fake.url}/api/run_everything", json={"path": "tasks:get"})

    assert response.status_code == 404
    assert service.calls == []
    assert fake.requests == []


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("500", 500, "InternalServerError"),
        ("503", 503, "Overloaded"),
        ("429", 429, "RateLimited"),
        ("unauthorized", 401, "Unauthenticated"),
    ],
)
def test_fault_answers_status_and_code_without_calling(
    fake: FakeConvex, service: Service, fault: str, status: int, code: str
) -> None:
    fake.fail_next(fault)

    failed = post(fake, "mutation", "tasks:bump")
    after = post(fake, "mutation", "tasks:bump")

    assert failed.status_code == status
    assert failed.json()["code"] == code
    assert after.status_code == 200
    assert service.calls == [("mutation", "tasks:bump", {})]  # the failed call never reached it
    assert [(r.status, r.fault) for r in fake.requests] == [(status, fault), (200, None)]


def test_fault_count_then_clear(fake: FakeConvex) -> None:
    fake.fail_next("503", count=2)
    statuses = [post(fake, "query", "tasks:get").status_code for _ in range(3)]
    fake.fail_next("500", count=5)
    fake.clear_faults()

    assert statuses == [503, 503, 200]
    assert post(fake, "query", "tasks:get").status_code == 200


def test_fault_malformed_is_200_with_a_body_that_is_not_json(fake: FakeConvex) -> None:
    fake.fail_next("malformed")

    response = post(fake, "query", "tasks:get")

    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()
    assert fake.requests[-1].fault == "malformed"


def test_fault_timeout_fires_the_client_read_timeout(fake: FakeConvex, service: Service) -> None:
    fake.hang_s = 3.0
    fake.fail_next("timeout")

    started = monotonic_s()
    with pytest.raises(httpx.ReadTimeout):
        post(fake, "query", "tasks:get", timeout_s=0.3)
    other = post(fake, "query", "tasks:get", timeout_s=1.0)  # while the first one still hangs

    assert other.status_code == 200
    assert monotonic_s() - started < 2.0
    assert service.calls == [("query", "tasks:get", {})]
    assert [(r.status, r.fault) for r in fake.requests] == [(504, "timeout"), (200, None)]


def test_fault_timeout_answers_504_after_hang_s(fake: FakeConvex) -> None:
    fake.hang_s = 0.3
    fake.fail_next("timeout")

    started = monotonic_s()
    response = post(fake, "query", "tasks:get", timeout_s=5.0)

    assert response.status_code == 504
    assert response.json()["code"] == "Timeout"
    assert 0.3 <= monotonic_s() - started < 3.0


def test_hanging_request_does_not_block_stop(service: Service) -> None:
    fake = FakeConvex(service.call).start()
    fake.hang_s = 30.0
    fake.fail_next("timeout")
    outcome: list[object] = []

    def hang() -> None:
        try:
            outcome.append(post(fake, "query", "tasks:get", timeout_s=20.0).status_code)
        except httpx.HTTPError as error:
            outcome.append(error)

    caller = threading.Thread(target=hang, daemon=True)
    caller.start()
    wait_for(lambda: fake.requests, what="the hanging request to arrive")
    started = monotonic_s()
    fake.stop()

    assert monotonic_s() - started < 3.0
    caller.join(5.0)
    assert not caller.is_alive()
    assert outcome == [504]  # stop() ended the hang and the answer still went out


def test_fault_reset_closes_the_connection_without_a_response(
    fake: FakeConvex, service: Service
) -> None:
    fake.fail_next("reset")

    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        post(fake, "query", "tasks:get")
    after = post(fake, "query", "tasks:get")

    assert after.status_code == 200
    assert service.calls == [("query", "tasks:get", {})]
    assert [(r.status, r.fault) for r in fake.requests] == [(None, "reset"), (200, None)]


def test_fail_next_with_path_affects_only_that_path(fake: FakeConvex) -> None:
    fake.fail_next("500", path="tasks:bump")

    other = post(fake, "query", "tasks:get")
    targeted = post(fake, "mutation", "tasks:bump")
    again = post(fake, "mutation", "tasks:bump")

    assert (other.status_code, targeted.status_code, again.status_code) == (200, 500, 200)
    assert [(r.path, r.fault) for r in fake.requests] == [
        ("tasks:get", None),
        ("tasks:bump", "500"),
        ("tasks:bump", None),
    ]


def test_fail_next_rejects_unknown_fault(fake: FakeConvex) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        fake.fail_next("502")


# --------------------------------------------------------------- ConvexClient (official client)


class Subscriber:
    """`ConvexClient(url).subscribe(path, args)` read with `async for`, on its own thread + loop.

    Awaiting the async iterator is the one way to wait on the client without holding the GIL.
    `close()` cancels the iteration, unsubscribes and drops the client (del + gc).
    """

    def __init__(self, url: str, path: str, args: dict[str, Any] | None = None) -> None:
        self.values: list[Any] = []
        self.error: BaseException | None = None
        self._url, self._path, self._args = url, path, args
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="subscriber", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        client = ConvexClient(self._url)
        subscription = client.subscribe(self._path, self._args)
        consumer = asyncio.create_task(self._consume(subscription))
        await self._stop.wait()
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        if subscription.inner.exists():  # cancelling a pending anext() already dropped it
            subscription.unsubscribe()
        del subscription, client, consumer
        gc.collect()

    async def _consume(self, subscription: Any) -> None:
        try:
            async for value in subscription:
                self.values.append(value)
        except Exception as error:  # ConvexError, or the client's bare Exception
            self.error = error

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        wait_for(lambda: self._loop is not None, what="the subscriber's loop")
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5.0)
        assert not self._thread.is_alive(), "subscriber thread did not finish"


@pytest.fixture
def subscribers() -> Iterator[list[Subscriber]]:
    started: list[Subscriber] = []
    yield started
    for subscriber in started:
        subscriber.close()


def test_client_gets_first_value_then_a_pushed_update(
    fake: FakeConvex, service: Service, subscribers: list[Subscriber]
) -> None:
    subscriber = Subscriber(fake.url, "tasks:get", {"agentId": "a1"})
    subscribers.append(subscriber)

    wait_for(lambda: subscriber.values, what="the first value")
    service.set_count(5)
    fake.notify_changed()
    wait_for(lambda: len(subscriber.values) >= 2, timeout_s=1.0, what="the pushed update")

    first, update = subscriber.values
    assert first == {
        "kind": "query",
        "count": 1.0,
        "args": {"agentId": "a1"},
        "tags": ["a", True, None],
    }
    assert isinstance(first["count"], float)
    assert update["count"] == 5.0
    assert subscriber.error is None
    assert fake.sync_connections == 1


def test_http_mutation_pushes_an_update_by_itself(
    fake: FakeConvex, subscribers: list[Subscriber]
) -> None:
    subscriber = Subscriber(fake.url, "tasks:get")
    subscribers.append(subscriber)
    wait_for(lambda: subscriber.values, what="the first value")

    assert post(fake, "mutation", "tasks:bump").json()["value"] == {"count": 2.0}
    wait_for(lambda: len(subscriber.values) >= 2, timeout_s=1.0, what="the pushed update")

    assert [value["count"] for value in subscriber.values] == [1.0, 2.0]


def test_without_changed_after_mutation_only_notify_pushes(
    service: Service, subscribers: list[Subscriber]
) -> None:
    with FakeConvex(service.call, changed_after_mutation=False) as fake:
        subscriber = Subscriber(fake.url, "tasks:get")
        subscribers.append(subscriber)
        wait_for(lambda: subscriber.values, what="the first value")

        post(fake, "mutation", "tasks:bump")
        assert stays_false(lambda: len(subscriber.values) > 1, 0.3)
        fake.notify_changed()
        wait_for(lambda: len(subscriber.values) >= 2, timeout_s=1.0, what="the pushed update")

        assert [value["count"] for value in subscriber.values] == [1.0, 2.0]
        subscriber.close()


def test_query_failed_with_service_error_raises_convex_error(
    fake: FakeConvex, subscribers: list[Subscriber]
) -> None:
    subscriber = Subscriber(fake.url, "tasks:fail")
    subscribers.append(subscriber)

    wait_for(lambda: subscriber.error, what="the query error")

    assert isinstance(subscriber.error, ConvexError)
    assert subscriber.error.data == {"code": "NOT_ALLOWED", "message": "no way"}
    assert subscriber.values == []


def test_stalled_sync_connects_gets_nothing_and_does_not_hold_the_gil(
    service: Service,
) -> None:
    fake = FakeConvex(service.call).start()
    fake.stall_sync = True
    subscriber = Subscriber(fake.url, "tasks:get")

    wait_for(lambda: fake.sync_connections == 1, what="the client to connect")
    iterations = 0
    deadline = monotonic_s() + 1.0
    while monotonic_s() < deadline:
        iterations += 1

    assert subscriber.values == []
    assert subscriber.error is None
    assert iterations > 100_000, f"main thread starved: {iterations} loop iterations in 1 s"
    subscriber.close()  # cancels the pending anext(), drops the client
    started = monotonic_s()
    fake.stop()
    assert monotonic_s() - started < 3.0


def test_dropping_the_client_does_not_break_stop(service: Service) -> None:
    fake = FakeConvex(service.call).start()
    subscriber = Subscriber(fake.url, "tasks:get")
    wait_for(lambda: subscriber.values, what="the first value")

    subscriber.close()  # del + gc: the socket closes without a close frame
    started = monotonic_s()
    fake.stop()

    assert monotonic_s() - started < 3.0
    with pytest.raises(httpx.ConnectError):
        post(fake, "query", "tasks:get", timeout_s=1.0)


_CHILD_CLIENT = """
import json, sys
from convex import ConvexClient, ConvexError
client = ConvexClient(sys.argv[1])
out = {"query": client.query("tasks:get", {"n": 1})}
out["mutation"] = client.mutation("tasks:bump")
out["action"] = client.action("tasks:get")
try:
    client.mutation("tasks:fail")
except ConvexError as error:
    out["error"] = error.data
print("RESULT " + json.dumps(out))
"""


def test_blocking_client_calls_from_another_process(fake: FakeConvex) -> None:
    # query/mutation/action block while holding the GIL, so they can only reach this in-process
    # fake from another process; this proves MutationResponse/ActionResponse + Transition.
    done = subprocess.run(
        [sys.executable, "-c", _CHILD_CLIENT, fake.url],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )

    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout + done.stderr
    out = json.loads(lines[0].removeprefix("RESULT "))
    assert out["query"]["args"] == {"n": 1.0}
    assert out["mutation"] == {"count": 2.0}
    assert out["action"]["kind"] == "action"
    assert out["error"] == {"code": "NOT_ALLOWED", "message": "no way"}


# ------------------------------------------------------------------- sync protocol, frame level


def ts(raw: str) -> int:
    value: int = struct.unpack("<Q", base64.b64decode(raw))[0]
    return value


def recv(ws: ClientConnection) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(ws.recv(timeout=2.0))
        if message["type"] != "Ping":
            return message


def test_sync_protocol_versions_chain_per_connection(fake: FakeConvex, service: Service) -> None:
    fake.ping_interval_s = 60.0
    ws_url = fake.url.replace("http://", "ws://") + "/api/sync"
    with connect(ws_url) as ws:
        ws.send(json.dumps({"type": "Connect", "sessionId": "s", "connectionCount": 0}))
        ws.send(
            json.dumps(
                {
                    "type": "ModifyQuerySet",
                    "baseVersion": 0,
                    "newVersion": 1,
                    "modifications": [
                        {"type": "Add", "queryId": 0, "udfPath": "tasks:get", "args": [{}]},
                        {"type": "Add", "queryId": 1, "udfPath": "tasks:fail", "args": [{}]},
                    ],
                }
            )
        )
        added = recv(ws)
        assert added["type"] == "Transition"
        assert added["startVersion"] == {"querySet": 0, "identity": 0, "ts": "AAAAAAAAAAA="}
        assert added["endVersion"]["querySet"] == 1
        updated, failed = added["modifications"]
        assert updated["type"] == "QueryUpdated"
        assert updated["value"]["count"] == 1.0
        assert updated["logLines"] == []
        assert failed["type"] == "QueryFailed"
        assert failed["errorData"] == {"code": "NOT_ALLOWED", "message": "no way"}

        ws.send(
            json.dumps({"type": "Mutation", "requestId": 0, "udfPath": "tasks:bump", "args": [{}]})
        )
        response = recv(ws)
        assert response["type"] == "MutationResponse"
        assert response["success"] is True
        assert response["result"] == {"count": 2.0}
        pushed = recv(ws)
        assert pushed["startVersion"] == added["endVersion"]
        assert ts(pushed["endVersion"]["ts"]) >= ts(response["ts"]) > ts(added["endVersion"]["ts"])
        assert [(m["type"], m["queryId"]) for m in pushed["modifications"]] == [("QueryUpdated", 0)]

        ws.send(
            json.dumps({"type": "Mutation", "requestId": 1, "udfPath": "tasks:fail", "args": [{}]})
        )
        refused = recv(ws)
        assert refused["success"] is False
        assert refused["errorData"] == {"code": "NOT_ALLOWED", "message": "no way"}
        after_refused = recv(ws)
        assert after_refused["startVersion"] == pushed["endVersion"]
        assert after_refused["modifications"] == []

        ws.send(
            json.dumps({"type": "Action", "requestId": 2, "udfPath": "tasks:get", "args": [{}]})
        )
        action = recv(ws)
        assert (action["type"], action["success"]) == ("ActionResponse", True)
        after_action = recv(ws)
        assert after_action["startVersion"] == after_refused["endVersion"]

        ws.send(json.dumps({"type": "Authenticate", "baseVersion": 0, "tokenType": "None"}))
        authenticated = recv(ws)
        assert authenticated["endVersion"]["identity"] == 1

        fake.notify_changed()  # nothing changed: nothing is sent (and no Ping is due)
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.3)

        service.set_count(9)
        fake.notify_changed()
        changed = recv(ws)
        assert changed["startVersion"] == authenticated["endVersion"]
        assert changed["modifications"][0]["value"]["count"] == 9.0

        ws.send(
            json.dumps(
                {
                    "type": "ModifyQuerySet",
                    "baseVersion": 1,
                    "newVersion": 2,
                    "modifications": [{"type": "Remove", "queryId": 0}],
                }
            )
        )
        removed = recv(ws)
        assert removed["startVersion"] == changed["endVersion"]
        assert removed["endVersion"]["querySet"] == 2
        assert removed["modifications"] == [{"type": "QueryRemoved", "queryId": 0}]


def test_sync_pings_on_the_js_client_path(service: Service) -> None:
    with FakeConvex(service.call) as fake:
        fake.ping_interval_s = 0.2
        with connect(fake.url.replace("http://", "ws://") + "/api/1.48.0/sync") as ws:
            assert json.loads(ws.recv(timeout=2.0)) == {"type": "Ping"}
        assert fake.sync_connections == 1
