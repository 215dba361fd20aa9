"""A fake Convex deployment on 127.0.0.1 for tests.

`FakeConvex` speaks two things, enough for the real clients:

1. Convex's HTTP function API: `POST /api/query`, `/api/mutation`, `/api/action` with the body
   `{"path": "dir/file:func", "args": {...}, "format": "json"}`. It answers with the same bodies and
   status codes as a real deployment. It can also inject transport faults (`fail_next`).
2. The Convex WebSocket sync protocol at `/api/sync` (Python/Rust client) and `/api/<anything>/sync`
   (JS client). This is enough for `convex.ConvexClient(fake.url)` (convex==0.8.1) to subscribe to a
   query and get pushed updates (`notify_changed`).

Every function call goes to one test-supplied callable `call(kind, path, args)`. It runs on a
worker thread (Starlette's thread pool), so it may block. It may also run concurrently with itself
and with code in the test thread, so guard shared test data with a lock where that matters.

Like a deployment, the fake holds every call to Convex's limits: arguments and results with an
array over 8,192 elements or over 8 MiB are refused, and so is a function that reports, through
`charge`, more documents read or written than one transaction may. A refusal is an uncaught error
(no code), as on a deployment, and is counted in `refusals`.

The server is uvicorn + Starlette in one daemon thread with its own asyncio loop. `url` points at a
tiny byte relay in a child process (stdlib only) that answers WebSocket handshakes itself: the
official client's `subscribe()` holds the GIL until its WebSocket is open, so an in-process server
could never answer it. Even so, the client's *blocking* calls (`query`, `mutation`, `action`, sync
`next(subscription)`) hold the GIL until the answer comes, and the answer needs this process: from
the test process, use only `subscribe()` + `async for` (others: HTTP, or another process).
Frame formats and client rules are the ones in the project's Convex research notes (sections 1-3).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import secrets
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from tests.fake_server import bound_socket, serve, shut_down

__all__ = [
    "FAULTS",
    "MAX_ARRAY_ELEMENTS",
    "MAX_DOCUMENTS_READ",
    "MAX_DOCUMENTS_WRITTEN",
    "MAX_VALUE_BYTES",
    "Call",
    "FakeConvex",
    "LimitExceeded",
    "RecordedRequest",
    "Refusal",
    "ServiceError",
    "charge",
    "to_convex_json",
]

Call = Callable[[str, str, dict[str, Any]], Any]
"""`(kind, path, args) -> result`: kind is "query" | "mutation" | "action", path is "dir/file:func",
args is the call's argument object. The result must be JSON-able (see `to_convex_json`). Raise
`ServiceError` to fail with a code. Any other exception becomes a plain "Uncaught Error"."""

FAULTS: frozenset[str] = frozenset(
    {"500", "503", "429", "unauthorized", "malformed", "timeout", "reset"}
)
"""The fault names that `FakeConvex.fail_next` accepts."""

_FAULT_RESPONSES: dict[str, tuple[int, str, str]] = {
    "500": (500, "InternalServerError", "Your request couldn't be completed. Try again later."),
    "503": (503, "Overloaded", "The deployment is temporarily overloaded. Try again later."),
    "429": (429, "RateLimited", "Too many concurrent requests. Try again later."),
    "unauthorized": (401, "Unauthenticated", "Could not verify OIDC token claim."),
}
MAX_ARRAY_ELEMENTS = 8_192
MAX_VALUE_BYTES = 8 * 1024 * 1024
MAX_DOCUMENTS_READ = 16_384
MAX_DOCUMENTS_WRITTEN = 8_192
"""Convex's limits (https://docs.convex.dev/production/state/limits), the stricter where the page
has said two values: elements of an array; bytes of an argument or a return value (8 MiB before, 16
MiB since; measured here as the JSON's length); documents read and written by one function. Every
call to the fake is held to them (see `LimitExceeded`), so code that would fail on a deployment
fails its tests."""

_TIMEOUT_STATUS = 504
_MALFORMED_BODY = b'{"status":"success","value":'  # truncated JSON, served as application/json
_STOP_TIMEOUT_S = 10.0
_NOTIFY_TIMEOUT_S = 10.0
_RESET_DISCONNECT_WAIT_S = 5.0


# A byte relay, run in a child process, that owns the public port (`FakeConvex.url`).
#
# Why: `convex.ConvexClient` (0.8.1) runs `subscribe()` (and query/mutation/action) as a Rust
# `block_on` that holds the GIL, and the first `subscribe()` waits until the WebSocket handshake is
# done. An in-process server needs the GIL to answer that handshake, so a bare in-thread server
# deadlocks the whole test process (`ConvexClient(url)` then `subscribe(...)`, exactly what
# production code does). The relay answers the WebSocket handshake itself, at once, then forwards
# the request to the in-process server and copies bytes both ways (the two handshakes negotiate no
# extensions, so the frames are the same on both legs). Plain HTTP connections are copied as they
# are. An RST from the server (the "reset" fault) is passed on as an RST.
_RELAY_SOURCE = r"""
import asyncio, base64, hashlib, os, socket, struct, sys, threading

UPSTREAM_PORT, LISTEN_FD = int(sys.argv[1]), int(sys.argv[2])
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LIMIT = 1 << 16


def exit_with_parent():
    sys.stdin.buffer.read()  # EOF: the parent closed the pipe (stop()) or died
    os._exit(0)


def reset(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


async def copy(reader, writer):
    try:
        while data := await reader.read(LIMIT):
            writer.write(data)
            await writer.drain()
    except (ConnectionResetError, ConnectionAbortedError):
        return "reset"
    except OSError:
        return "error"
    return "eof"


async def handle(creader, cwriter):
    uwriter = None
    try:
        try:
            head = await creader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            return
        headers = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        upgrade = headers.get("upgrade", "").lower()
        websocket = upgrade == "websocket" and "sec-websocket-key" in headers
        if websocket:
            key = headers["sec-websocket-key"].encode()
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
            cwriter.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
            )
            lines = head.split(b"\r\n")[:-2]
            lines = [l for l in lines if not l.lower().startswith(b"sec-websocket-extensions:")]
            head = b"\r\n".join(lines) + b"\r\n\r\n"
        try:
            ureader, uwriter = await asyncio.open_connection(
                "127.0.0.1", UPSTREAM_PORT, limit=LIMIT
            )
        except OSError:
            reset(cwriter)
            return
        uwriter.write(head)
        if websocket:
            try:
                answer = await ureader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                return
            if not answer.startswith(b"HTTP/1.1 101"):
                return
        to_client = asyncio.ensure_future(copy(ureader, cwriter))
        to_server = asyncio.ensure_future(copy(creader, uwriter))
        await asyncio.wait({to_client, to_server}, return_when=asyncio.FIRST_COMPLETED)
        if to_client.done() and to_client.result() == "reset":
            reset(cwriter)
        to_client.cancel()
        to_server.cancel()
    finally:
        for writer in (cwriter, uwriter):
            if writer is not None and not writer.transport.is_closing():
                writer.close()


async def main():
    sock = socket.socket(fileno=LISTEN_FD)
    server = await asyncio.start_server(handle, sock=sock, limit=LIMIT)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


threading.Thread(target=exit_with_parent, daemon=True).start()
asyncio.run(main())
"""


class ServiceError(Exception):
    """What a service function raises to fail with a code.

    The fake turns it into a Convex `ConvexError` with data `{"code": code, "message": message}`.
    Over HTTP: a 200 `{"status": "error", "errorMessage": ..., "errorData": {code, message}}`.
    Over WebSocket: a `QueryFailed` / `MutationResponse` / `ActionResponse` with that `errorData`,
    which the Python client raises as `convex.ConvexError` with `.data == {"code", "message"}`.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code: str = code
        self.message: str = message

    @property
    def data(self) -> dict[str, str]:
        """The ConvexError data the client receives."""
        return {"code": self.code, "message": self.message}


class LimitExceeded(Exception):
    """A call broke one of Convex's limits. Raised by the fake for arguments and results, and by a
    function (`charge`) for documents; answered as a deployment answers it: an uncaught error
    without a code, never retried by the runtime. Each one is counted in `FakeConvex.refusals`."""


def charge(*, read: int = 0, written: int = 0) -> None:
    """Raise `LimitExceeded`, with a deployment's message, if one function call reads or writes
    more documents than Convex allows (`read`, `written`: its estimate of the call's documents)."""
    if read > MAX_DOCUMENTS_READ:
        raise LimitExceeded(
            f"Too many documents read in a single function execution (limit: {MAX_DOCUMENTS_READ})."
        )
    if written > MAX_DOCUMENTS_WRITTEN:
        raise LimitExceeded(
            f"Too many writes in a single function execution (limit: {MAX_DOCUMENTS_WRITTEN})"
        )


def _check_value(what: str, value: Any) -> None:
    """`LimitExceeded` if `value` has an array over MAX_ARRAY_ELEMENTS elements or is over
    MAX_VALUE_BYTES."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            if len(item) > MAX_ARRAY_ELEMENTS:
                raise LimitExceeded(
                    f"{what} invalid: Array length is too long"
                    f" ({len(item)} > maximum length {MAX_ARRAY_ELEMENTS})"
                )
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > MAX_VALUE_BYTES:
        raise LimitExceeded(
            f"{what} invalid: Value is too large ({size} bytes > maximum size {MAX_VALUE_BYTES})"
        )


@dataclass(frozen=True)
class Refusal:
    """A call the fake refused for one of Convex's limits: the function and the message."""

    path: str
    message: str


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP function call the fake received.

    kind: "query" | "mutation" | "action" (from the URL).
    path: the body's `path` ("" if the body had none or was not JSON).
    args: the argument object (the legacy 1-element array is unwrapped; {} if none could be read).
    status: the HTTP status the fake answered with, or None if it answered nothing ("reset").
    fault: the injected fault name (see `FAULTS`), or None for a normal answer.
    """

    kind: str
    path: str
    args: dict[str, Any]
    status: int | None
    fault: str | None


@dataclass
class _PendingFault:
    name: str
    remaining: int
    path: str | None


@dataclass(frozen=True)
class _Outcome:
    """Result of evaluating one function: `sig` compares results (request ids left out)."""

    ok: bool
    value: Any = None  # Convex JSON, when ok
    message: str = ""  # errorMessage, when not ok
    error_data: Any = None  # ConvexError data, or None for a plain error
    sig: str = ""


def to_convex_json(value: Any) -> Any:  # noqa: PLR0911
    """Convert a Python value to Convex JSON the official clients accept (the sync-protocol form).

    Python ints (but not bools) become floats, recursively: `convex.json_to_convex` rejects JSON
    integers, and real Convex sends JS numbers as float64 (`5.0`). str/bool/None stay, lists and
    tuples become lists, mappings become dicts (keys must be str). bytes become
    `{"$bytes": b64}` and non-finite floats `{"$float": b64 f64 LE}`. To send a Convex int64,
    pass its wire form yourself, `{"$integer": b64 i64 LE}`: dicts pass through. Raises
    TypeError for anything else.
    Over HTTP ("json" format) the fake then turns `$bytes` into a base64 string, `$integer` into a
    decimal string and `$float` into "NaN"/"Infinity"/"-Infinity", as real Convex does.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"$float": base64.b64encode(struct.pack("<d", value)).decode()}
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"Convex object keys must be str, got {key!r}")
            out[key] = to_convex_json(item)
        return out
    if isinstance(value, list | tuple):
        return [to_convex_json(item) for item in value]
    raise TypeError(f"not a Convex JSON value: {type(value).__name__}")


def _request_id() -> str:
    return secrets.token_hex(8)


def _error_message(exc: BaseException) -> str:
    """The dev-deployment errorMessage text: `[Request ID: <hex>] Server Error\\nUncaught ...`."""
    if isinstance(exc, ServiceError):
        detail = "ConvexError: " + json.dumps(exc.data, separators=(",", ":"))
    else:
        detail = f"Error: {exc}"
    return f"[Request ID: {_request_id()}] Server Error\nUncaught {detail}"


def _enc_ts(ts: int) -> str:
    """A u64 timestamp on the sync wire: standard base64 of the 8-byte little-endian value."""
    return base64.b64encode(struct.pack("<Q", ts)).decode()


def _unwrap_args(raw: Any) -> dict[str, Any] | None:
    """The argument object of `args` (an object, or the legacy 1-element array), or None."""
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]
    if isinstance(raw, dict):
        return raw
    return None


@dataclass(frozen=True)
class _ParsedBody:
    path: str | None  # None when no path could be read
    args: dict[str, Any]
    error: tuple[str, str] | None  # (code, message) for a 400


def _parse_body(body: bytes) -> _ParsedBody:  # noqa: PLR0911
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return _ParsedBody(
            None, {}, ("BadJsonBody", f"Failed to parse the request body as JSON: {exc}")
        )
    if not isinstance(data, dict):
        return _ParsedBody(None, {}, ("BadJsonBody", "The request body must be a JSON object"))
    path = data.get("path")
    path = path if isinstance(path, str) and path else None
    args = _unwrap_args(data.get("args"))
    if path is None:
        return _ParsedBody(None, args or {}, ("BadJsonBody", "missing field `path`"))
    if "args" not in data:
        return _ParsedBody(path, {}, ("BadJsonBody", "missing field `args`"))
    if args is None:
        return _ParsedBody(path, {}, ("BadJsonBody", "`args` must be an object"))
    fmt = data.get("format", "json")
    if fmt != "json":
        return _ParsedBody(
            path, args, ("BadFormat", f"Invalid format {fmt!r}: this fake serves 'json'")
        )
    return _ParsedBody(path, args, None)


class _SyncConnection:
    """One WebSocket's protocol state. The client's version is {0, 0, ts 0} on every connect."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.lock = asyncio.Lock()  # serialises sends, so versions chain in send order
        self.query_set = 0
        self.identity = 0
        self.ts = 0
        self.queries: dict[int, tuple[str, dict[str, Any]]] = {}
        self.last_sig: dict[int, str] = {}
        self.closed = False

    def wire_version(self) -> dict[str, Any]:
        return {"querySet": self.query_set, "identity": self.identity, "ts": _enc_ts(self.ts)}

    async def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            await self.ws.send_text(json.dumps(message, allow_nan=False))
        except Exception:  # the peer went away; the receive loop ends the connection
            self.closed = True


class FakeConvex:
    """A fake Convex deployment: HTTP function API + WebSocket sync, served on 127.0.0.1.

    Use as `with FakeConvex(call) as fake: ...`, or `FakeConvex(call).start()` and `.stop()`.
    `fake.url` ("http://127.0.0.1:PORT") is what both `convex.ConvexClient` and an HTTP client take.

    Attributes the test may set at any time:
      hang_s: how long a "timeout" fault holds the request before answering 504 (default 30 s).
        `stop()` ends the hang at once.
      stall_sync: when True, new WebSocket connections are accepted and then never answered. No
        Transition and no Ping are sent: the deployment accepts and never answers. Connections that
        are already open are not affected.
      ping_interval_s: how often each (non-stalled) sync connection gets a `Ping` (default 5 s; the
        client drops a socket after 30 s of silence). It is read when a connection opens.
    """

    def __init__(self, call: Call, *, changed_after_mutation: bool = True) -> None:
        """`call` evaluates every function. With `changed_after_mutation`, each successful HTTP or
        WebSocket mutation calls `notify_changed()` before it is answered."""
        self._call = call
        self.changed_after_mutation: bool = changed_after_mutation
        self.url: str = ""
        self.hang_s: float = 30.0
        self.stall_sync: bool = False
        self.ping_interval_s: float = 5.0
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._refusals: list[Refusal] = []
        self._faults: list[_PendingFault] = []
        self._sync_connections = 0
        self._ts = 0  # deployment-wide timestamp; every Transition and mutation takes the next one
        self._conns: set[_SyncConnection] = set()
        self._transports: dict[tuple[str, int], asyncio.Transport] = {}
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._relay: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread_id: int | None = None
        self._stopping: asyncio.Event | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeConvex:
        """Serve on 127.0.0.1, on a free port; return once it accepts connections.

        uvicorn + Starlette run in a daemon thread on a socket bound here (port 0) and handed to
        uvicorn. `url` is the port of a small relay process in front of it (see `_RELAY_SOURCE`:
        it answers WebSocket handshakes without this process's GIL, which `ConvexClient` needs).
        """
        if self._server is not None:
            raise RuntimeError("FakeConvex already started")
        inner = bound_socket()
        inner_port = inner.getsockname()[1]
        public = bound_socket()
        port = public.getsockname()[1]
        # The relay starts first (it reaches uvicorn only per connection): the startups overlap.
        relay = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-S",
                "-c",
                _RELAY_SOURCE,
                str(inner_port),
                str(public.fileno()),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(public.fileno(),),
        )
        public.close()  # the relay owns it now; once the relay exits, connections are refused
        self._relay = relay
        config = uvicorn.Config(
            self._build_app(),
            http=self._protocol_class(),
            ws="websockets-sansio",
            ws_ping_interval=None,  # the Convex-level Ping is what the client watches
            lifespan="on",
            loop="asyncio",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=3,
        )
        try:
            self._server, self._thread = serve(
                config, inner, f"fake-convex-{inner_port}", lambda: self._stopping
            )
        except RuntimeError:
            self.stop()  # the relay too
            raise
        assert relay.stdout is not None
        if relay.stdout.readline() != b"ready\n":
            self.stop()
            raise RuntimeError("FakeConvex relay process failed to start")
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        """Stop serving, join the server thread and end the relay process. Idempotent.

        Ends hanging "timeout" requests and closes WebSockets (close code 1012). Safe to call while
        clients are connected, stalled, or already dropped.
        """
        if self._server is not None and self._thread is not None:
            shut_down(self._server, self._thread, self._loop, self._stopping)
        self._server = self._thread = None
        relay, self._relay = self._relay, None
        if relay is not None:
            for pipe in (relay.stdin, relay.stdout):
                if pipe is not None:
                    pipe.close()  # stdin EOF makes the relay exit
            try:
                relay.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait(_STOP_TIMEOUT_S)

    def __enter__(self) -> FakeConvex:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test controls

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot (new list) of every HTTP function call so far, oldest first. Thread-safe."""
        with self._lock:
            return list(self._requests)

    @property
    def refusals(self) -> list[Refusal]:
        """A snapshot (new list) of every call refused for one of Convex's limits (HTTP or
        WebSocket), oldest first. Thread-safe."""
        with self._lock:
            return list(self._refusals)

    @property
    def sync_connections(self) -> int:
        """How many WebSocket sync connections were accepted so far (stalled ones included)."""
        with self._lock:
            return self._sync_connections

    def fail_next(self, fault: str, count: int = 1, *, path: str | None = None) -> None:
        """Make the next `count` HTTP function calls fail without reaching `call`.

        If `path` is given, only calls to that function path count (and fail); others pass through.
        Faults queue in the order they were added. Faults:
          "500" -> 500 {"code": "InternalServerError", ...};
          "503" -> 503 {"code": "Overloaded", ...};
          "429" -> 429 {"code": "RateLimited", ...};
          "unauthorized" -> 401 {"code": "Unauthenticated", ...};
          "malformed" -> 200 with a truncated JSON body (Content-Type application/json);
          "timeout" -> holds the request `hang_s` seconds (other requests carry on), then answers
                       504 {"code": "Timeout", ...}; `stop()` ends the hang at once;
          "reset" -> closes the TCP connection with an RST and no response.
        WebSocket traffic is never affected.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)}")
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._faults.append(_PendingFault(fault, count, path))

    def clear_faults(self) -> None:
        """Drop every fault still queued by `fail_next`."""
        with self._lock:
            self._faults.clear()

    def drop_sync(self) -> int:
        """Close every open WebSocket sync connection, as a deployment restart does (close code
        1012); return how many were open. Clients may connect again at once (unless `stall_sync`).
        Call it from a test thread (it waits for the server's loop). A no-op (0) before `start()`
        and after `stop()`."""
        loop = self._loop
        if loop is None or self._server is None or loop.is_closed():
            return 0
        future = asyncio.run_coroutine_threadsafe(self._drop_all(), loop)
        return future.result(_NOTIFY_TIMEOUT_S)

    def notify_changed(self) -> None:
        """Tell subscribers that data changed: re-evaluate every subscribed query everywhere.

        Each connection whose query results changed (value, or error code/message) gets one
        `Transition` with a `QueryUpdated` / `QueryFailed` for just those queries. Its startVersion
        is that connection's previous endVersion, and its ts is the next deployment timestamp. A
        connection with no change gets nothing; stalled connections get nothing. From a test thread
        (or from inside `call`) this returns after the Transitions were sent; from the server's
        loop thread it only schedules them. A no-op before `start()` and after `stop()`.
        """
        loop = self._loop
        if loop is None or self._server is None or loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(self._notify_all(), loop)
        if threading.get_ident() == self._loop_thread_id:
            return
        try:
            future.result(_NOTIFY_TIMEOUT_S)
        except FutureTimeoutError:
            future.cancel()
            raise TimeoutError(
                "notify_changed timed out (was it called from a query that is being evaluated?)"
            ) from None

    # ------------------------------------------------------------------ server plumbing

    def _protocol_class(self) -> type[H11Protocol]:
        """uvicorn's h11 protocol, also remembering each connection's transport (for "reset")."""
        transports = self._transports

        class _TrackingH11Protocol(H11Protocol):
            def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
                super().connection_made(transport)
                if self.client is not None:
                    transports[self.client] = transport

            def connection_lost(self, exc: Exception | None) -> None:
                if self.client is not None:
                    transports.pop(self.client, None)
                super().connection_lost(exc)

        return _TrackingH11Protocol

    def _build_app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            self._loop = asyncio.get_running_loop()
            self._loop_thread_id = threading.get_ident()
            self._stopping = asyncio.Event()
            yield

        async def not_found(request: Request, exc: Exception) -> Response:
            return JSONResponse(
                {"code": "NotFound", "message": f"No route {request.url.path}"}, 404
            )

        routes = [
            Route("/api/query", self._http_endpoint("query"), methods=["POST"]),
            Route("/api/mutation", self._http_endpoint("mutation"), methods=["POST"]),
            Route("/api/action", self._http_endpoint("action"), methods=["POST"]),
            WebSocketRoute("/api/sync", self._sync_endpoint),
            WebSocketRoute("/api/{version:path}/sync", self._sync_endpoint),
        ]
        exception_handlers: Mapping[Any, Callable[[Request, Exception], Any]] = {404: not_found}
        return Starlette(routes=routes, lifespan=lifespan, exception_handlers=exception_handlers)

    def _record(
        self,
        kind: str,
        path: str | None,
        args: dict[str, Any],
        status: int | None,
        fault: str | None,
    ) -> None:
        with self._lock:
            self._requests.append(RecordedRequest(kind, path or "", args, status, fault))

    def _take_fault(self, path: str | None) -> str | None:
        with self._lock:
            for pending in self._faults:
                if pending.path is None or pending.path == path:
                    pending.remaining -= 1
                    if pending.remaining <= 0:
                        self._faults.remove(pending)
                    return pending.name
        return None

    def _next_ts(self) -> int:
        with self._lock:
            self._ts += 1
            return self._ts

    async def _evaluate(self, kind: str, path: str, args: dict[str, Any]) -> _Outcome:
        try:
            _check_value(f"Function {path} arguments", args)
            result = await run_in_threadpool(self._call, kind, path, args)
            value = to_convex_json(result)
            _check_value(f"Function {path} return value", value)
        except ServiceError as exc:
            sig = json.dumps(["error", exc.data], sort_keys=True)
            return _Outcome(False, message=_error_message(exc), error_data=exc.data, sig=sig)
        except Exception as exc:
            if isinstance(exc, LimitExceeded):
                with self._lock:
                    self._refusals.append(Refusal(path, str(exc)))
            sig = json.dumps(["error", type(exc).__name__, str(exc)])
            return _Outcome(False, message=_error_message(exc), sig=sig)
        return _Outcome(True, value=value, sig=json.dumps(["ok", value], sort_keys=True))

    # ------------------------------------------------------------------ HTTP API

    def _http_endpoint(self, kind: str) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            return await self._http_call(kind, request)

        return endpoint

    async def _http_call(self, kind: str, request: Request) -> Response:
        parsed = _parse_body(await request.body())
        fault = self._take_fault(parsed.path)
        if fault is not None:
            return await self._http_fault(fault, kind, parsed, request)
        if parsed.error is not None or parsed.path is None:
            code, message = parsed.error or ("BadJsonBody", "missing field `path`")
            self._record(kind, parsed.path, parsed.args, 400, None)
            return JSONResponse({"code": code, "message": message}, 400)
        outcome = await self._evaluate(kind, parsed.path, parsed.args)
        if outcome.ok:
            body: dict[str, Any] = {"status": "success", "value": _clean(outcome.value)}
            if kind == "mutation" and self.changed_after_mutation:
                await self._notify_all()
        else:
            body = {"status": "error", "errorMessage": outcome.message}
            if outcome.error_data is not None:
                body["errorData"] = outcome.error_data
        self._record(kind, parsed.path, parsed.args, 200, None)
        return JSONResponse(body, 200)

    async def _http_fault(
        self, fault: str, kind: str, parsed: _ParsedBody, request: Request
    ) -> Response:
        if fault in _FAULT_RESPONSES:
            status, code, message = _FAULT_RESPONSES[fault]
            self._record(kind, parsed.path, parsed.args, status, fault)
            return JSONResponse({"code": code, "message": message}, status)
        if fault == "malformed":
            self._record(kind, parsed.path, parsed.args, 200, fault)
            return Response(_MALFORMED_BODY, 200, media_type="application/json")
        if fault == "timeout":
            self._record(kind, parsed.path, parsed.args, _TIMEOUT_STATUS, fault)
            stopping = self._stopping
            if stopping is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self.hang_s)
            return JSONResponse(
                {"code": "Timeout", "message": "The request timed out."}, _TIMEOUT_STATUS
            )
        # "reset": abort the TCP connection with SO_LINGER 0: the client gets an RST, no response.
        self._record(kind, parsed.path, parsed.args, None, fault)
        client = request.client
        transport = self._transports.get((client.host, client.port)) if client else None
        if transport is None:  # cannot happen with the h11 protocol above; answer loudly instead
            return JSONResponse({"code": "FakeResetFailed", "message": "no transport"}, 500)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        # Wait until uvicorn has seen the connection go, so it neither logs nor writes a 500.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_until_disconnected(request), _RESET_DISCONNECT_WAIT_S)
        return Response(status_code=500)  # dropped by uvicorn: the connection is gone

    # ------------------------------------------------------------------ WebSocket sync protocol

    async def _sync_endpoint(self, ws: WebSocket) -> None:
        await ws.accept()
        with self._lock:
            self._sync_connections += 1
        if self.stall_sync:
            await _drain_until_closed(ws)
            return
        conn = _SyncConnection(ws)
        self._conns.add(conn)
        pinger = asyncio.create_task(self._ping(conn, self.ping_interval_s))
        try:
            while not conn.closed:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    continue
                await self._handle_sync_message(conn, json.loads(text))
        except WebSocketDisconnect:
            pass
        finally:
            conn.closed = True
            self._conns.discard(conn)
            pinger.cancel()

    async def _ping(self, conn: _SyncConnection, interval_s: float) -> None:
        while not conn.closed:
            await asyncio.sleep(interval_s)
            async with conn.lock:
                await conn.send({"type": "Ping"})

    async def _transition(
        self,
        conn: _SyncConnection,
        modifications: list[dict[str, Any]],
        *,
        query_set: int | None = None,
        identity: int | None = None,
    ) -> None:
        """Send one Transition from the connection's current version. Call with `conn.lock` held."""
        start = conn.wire_version()
        if query_set is not None:
            conn.query_set = query_set
        if identity is not None:
            conn.identity = identity
        conn.ts = max(self._next_ts(), conn.ts + 1)
        await conn.send(
            {
                "type": "Transition",
                "startVersion": start,
                "endVersion": conn.wire_version(),
                "modifications": modifications,
            }
        )

    @staticmethod
    def _query_modification(query_id: int, outcome: _Outcome) -> dict[str, Any]:
        if outcome.ok:
            return {
                "type": "QueryUpdated",
                "queryId": query_id,
                "value": outcome.value,
                "logLines": [],
                "journal": None,
            }
        modification: dict[str, Any] = {
            "type": "QueryFailed",
            "queryId": query_id,
            "errorMessage": outcome.message,
            "logLines": [],
            "journal": None,
        }
        if outcome.error_data is not None:
            modification["errorData"] = outcome.error_data
        return modification

    async def _handle_sync_message(self, conn: _SyncConnection, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "ModifyQuerySet":
            async with conn.lock:
                modifications: list[dict[str, Any]] = []
                for change in message.get("modifications", []):
                    query_id = change["queryId"]
                    if change["type"] == "Add":
                        path = change["udfPath"]
                        args = _unwrap_args(change.get("args")) or {}
                        conn.queries[query_id] = (path, args)
                        outcome = await self._evaluate("query", path, args)
                        conn.last_sig[query_id] = outcome.sig
                        modifications.append(self._query_modification(query_id, outcome))
                    elif change["type"] == "Remove":
                        conn.queries.pop(query_id, None)
                        conn.last_sig.pop(query_id, None)
                        modifications.append({"type": "QueryRemoved", "queryId": query_id})
                await self._transition(conn, modifications, query_set=message["newVersion"])
        elif kind in ("Mutation", "Action"):
            await self._handle_request(
                conn, message, "mutation" if kind == "Mutation" else "action"
            )
        elif kind == "Authenticate":
            async with conn.lock:
                await self._transition(conn, [], identity=int(message.get("baseVersion", 0)) + 1)
        # "Connect", "Event" and anything unknown need no answer.

    async def _handle_request(
        self, conn: _SyncConnection, message: dict[str, Any], kind: str
    ) -> None:
        """A WS Mutation/Action: answer it, then send a Transition (the client resolves a mutation
        only once a later Transition arrives)."""
        path = message["udfPath"]
        args = _unwrap_args(message.get("args")) or {}
        outcome = await self._evaluate(kind, path, args)
        response: dict[str, Any] = {
            "type": "MutationResponse" if kind == "mutation" else "ActionResponse",
            "requestId": message["requestId"],
            "success": outcome.ok,
            "logLines": [],
        }
        if outcome.ok:
            response["result"] = outcome.value
            if kind == "mutation":
                response["ts"] = _enc_ts(self._next_ts())
        else:
            response["result"] = outcome.message
            if outcome.error_data is not None:
                response["errorData"] = outcome.error_data
        async with conn.lock:
            await conn.send(response)
        if outcome.ok and kind == "mutation" and self.changed_after_mutation:
            await self._notify_all(force=conn)
        else:
            async with conn.lock:
                await self._transition(conn, [])

    async def _drop_all(self) -> int:
        conns = list(self._conns)
        for conn in conns:
            async with conn.lock:
                conn.closed = True
                with contextlib.suppress(Exception):  # the peer may be gone already
                    await conn.ws.close(code=1012)
        return len(conns)

    async def _notify_all(self, force: _SyncConnection | None = None) -> None:
        """Re-evaluate every connection's queries; push a Transition where results changed
        (and to `force` even if nothing changed)."""
        for conn in list(self._conns):
            async with conn.lock:
                if conn.closed:
                    continue
                modifications = []
                for query_id, (path, args) in list(conn.queries.items()):
                    outcome = await self._evaluate("query", path, args)
                    if conn.last_sig.get(query_id) != outcome.sig:
                        conn.last_sig[query_id] = outcome.sig
                        modifications.append(self._query_modification(query_id, outcome))
                if modifications or conn is force:
                    await self._transition(conn, modifications)


def _clean(value: Any) -> Any:
    """Convex JSON (sync form) -> the HTTP "json" format: `$bytes` -> base64 str, `$float` -> names,
    `$integer` -> decimal string."""
    if isinstance(value, list):
        return [_clean(item) for item in value]
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, raw),) = value.items()
            if key == "$bytes" and isinstance(raw, str):
                return raw
            if key == "$integer" and isinstance(raw, str):
                return str(struct.unpack("<q", base64.b64decode(raw))[0])
            if key == "$float" and isinstance(raw, str):
                number = struct.unpack("<d", base64.b64decode(raw))[0]
                return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
        return {key: _clean(item) for key, item in value.items()}
    return value


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _drain_until_closed(ws: WebSocket) -> None:
    """Read and drop every frame until the peer (or the server's shutdown) closes the socket."""
    with contextlib.suppress(WebSocketDisconnect):
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass
