"""A fake Meta Graph API (the Cloud API's send endpoint) on 127.0.0.1 for tests.

It serves `POST /{version}/{phone-number-id}/messages`, records every request, and answers
as Meta does: by default success with a unique wamid (`wamid.1`, `wamid.2`, ...); or what
the test scripted (`fail_next`, `answer_next`), or what `recipient_rule` says for a
contact; after `delay_s`, to play a slow API. With `access_token` set, another bearer token
gets Meta's 401 (code 190).

uvicorn + Starlette in one daemon thread on a free port; `url` ("http://127.0.0.1:PORT") is
what a CloudTransport takes as its graph URL, in this process or in a worker subprocess
(WHATSAPP_GRAPH_URL). Use as `with FakeGraph() as graph: ...`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent_runtime.clock import monotonic_s

__all__ = ["Answer", "FakeGraph", "GraphRequest"]

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Answer:
    """A scripted answer: `status`, a JSON `body` (a `str` is sent as it is, as text), and
    extra `headers`."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def error(
        cls,
        status: int,
        error_code: int | None,
        message: str = "error",
        retry_after: float | None = None,
        *,
        error_subcode: int | None = None,
        details: str | None = None,
    ) -> Answer:
        """A Graph error `{"error": {"message", "type", "code", ...}}`; with no
        `error_code`, a text body without JSON (a proxy's error page)."""
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        if error_code is None:
            return cls(status, message, headers)
        error: dict[str, Any] = {
            "message": f"(#{error_code}) {message}",
            "type": "OAuthException",
            "code": error_code,
            "fbtrace_id": "AbCdEfGhIjK",
        }
        if error_subcode is not None:
            error["error_subcode"] = error_subcode
        if details is not None:
            error["error_data"] = {"messaging_product": "whatsapp", "details": details}
        return cls(status, {"error": error}, headers)


@dataclass(frozen=True)
class GraphRequest:
    """One request the fake received.

    path: the URL path ("/v21.0/123/messages"); headers: lowercased names;
    bearer: the token of `Authorization: Bearer ...` (None without one);
    body: the parsed JSON body (None if it was not JSON); at_s: monotonic arrival time;
    status: the status answered; wamid: the id given when it was answered as sent.
    """

    path: str
    headers: dict[str, str]
    bearer: str | None
    body: Any
    at_s: float
    status: int
    wamid: str | None

    @property
    def to(self) -> str | None:
        """The body's recipient, if any."""
        return self.body.get("to") if isinstance(self.body, dict) else None

    @property
    def text(self) -> str | None:
        """The body's text, if any."""
        text = self.body.get("text") if isinstance(self.body, dict) else None
        return text.get("body") if isinstance(text, dict) else None


class _Server(uvicorn.Server):
    """uvicorn's server, whose main loop ends as soon as `stop()` sets the fake's stopping
    event (uvicorn itself checks `should_exit` every 0.1 s, which every test would wait)."""

    def __init__(self, config: uvicorn.Config, fake: FakeGraph) -> None:
        super().__init__(config)
        self._fake = fake

    async def main_loop(self) -> None:
        stopping = self._fake._stopping  # set by the lifespan startup, which ran already
        while not await self.on_tick(0):  # refreshes the Date header, checks should_exit
            if stopping is None:
                await asyncio.sleep(0.1)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1.0)
            if stopping.is_set():
                return


RecipientRule = Callable[[str], Answer | None]
"""`to -> Answer | None`: an answer for this contact, or None for the default."""


class FakeGraph:
    """The fake Graph API. Attributes the test may set at any time:

    delay_s: how long every answer waits (default 0); `stop()` ends a wait at once.
    recipient_rule: consulted for each request no scripted answer took (default None).
    """

    def __init__(self, *, access_token: str | None = None) -> None:
        self.url = ""
        self.delay_s = 0.0
        self.recipient_rule: RecipientRule | None = None
        self._access_token = access_token
        self._lock = threading.Lock()
        self._requests: list[GraphRequest] = []
        self._script: list[Answer] = []
        self._sent = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    # ------------------------------------------------------------------ test controls

    @property
    def requests(self) -> list[GraphRequest]:
        """A snapshot of every request so far, oldest first. Thread-safe."""
        with self._lock:
            return list(self._requests)

    @property
    def sent(self) -> list[GraphRequest]:
        """The requests answered with a wamid, oldest first."""
        return [r for r in self.requests if r.wamid is not None]

    def answer_next(self, answer: Answer) -> None:
        """Queue `answer` for the next request (scripted answers go first in, first out)."""
        with self._lock:
            self._script.append(answer)

    def fail_next(
        self,
        status: int,
        error_code: int | None,
        message: str = "error",
        retry_after: float | None = None,
    ) -> None:
        """Queue a Graph error for the next request (see `Answer.error`)."""
        self.answer_next(Answer.error(status, error_code, message, retry_after))

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeGraph:
        """Serve on a free port of 127.0.0.1; return once it accepts connections."""
        if self._server is not None:
            raise RuntimeError("FakeGraph already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Accepted sockets inherit it: without it every kept-alive answer waited ~40 ms
        # for the client's delayed ACK (as in docs/performance.md, "The Convex adapter").
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app(),
            lifespan="on",
            loop="asyncio",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=3,
        )
        server = _Server(config, self)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"fake-graph-{port}", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        started = threading.Event()
        for _ in range(int(_START_TIMEOUT_S / 0.01)):
            if server.started:
                break
            if not thread.is_alive():
                self.stop()
                raise RuntimeError("FakeGraph server thread died during startup")
            started.wait(0.01)
        else:
            self.stop()
            raise RuntimeError(f"FakeGraph did not start within {_START_TIMEOUT_S} s")
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        """Stop serving (ending any `delay_s` wait) and join the thread. Idempotent."""
        server, thread, loop, stopping = self._server, self._thread, self._loop, self._stopping
        if server is not None and thread is not None:
            if loop is not None and stopping is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(stopping.set)
            server.should_exit = True
            thread.join(_STOP_TIMEOUT_S)
        self._server = self._thread = None

    def __enter__(self) -> FakeGraph:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ serving

    def _app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            yield

        async def not_found(request: Request, exc: Exception) -> Response:
            answer = Answer.error(404, 100, f"Unknown path {request.url.path}")
            return JSONResponse(answer.body, answer.status)

        route = Route("/{version}/{phone_number_id}/messages", self._messages, methods=["POST"])
        return Starlette(routes=[route], lifespan=lifespan, exception_handlers={404: not_found})

    async def _messages(self, request: Request) -> Response:
        at_s = monotonic_s()
        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        headers = {name.lower(): value for name, value in request.headers.items()}
        scheme, _, token = headers.get("authorization", "").partition(" ")
        bearer = token if scheme == "Bearer" else None
        answer, wamid = self._answer(bearer, body)
        if self.delay_s > 0 and self._stopping is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.delay_s)
        with self._lock:
            self._requests.append(
                GraphRequest(request.url.path, headers, bearer, body, at_s, answer.status, wamid)
            )
        if isinstance(answer.body, str):
            return Response(answer.body, answer.status, answer.headers, media_type="text/plain")
        return JSONResponse(answer.body, answer.status, answer.headers)

    def _answer(self, bearer: str | None, body: Any) -> tuple[Answer, str | None]:
        """The answer to one request, and its wamid when it is a success."""
        with self._lock:
            if self._script:
                return self._script.pop(0), None
        if self._access_token is not None and bearer != self._access_token:
            return Answer.error(401, 190, "Error validating access token"), None
        to = body.get("to") if isinstance(body, dict) else None
        if not isinstance(to, str) or body.get("messaging_product") != "whatsapp":
            return Answer.error(400, 100, "Invalid parameter"), None
        rule = self.recipient_rule
        answer = rule(to) if rule is not None else None
        if answer is not None:
            return answer, None
        with self._lock:
            self._sent += 1
            wamid = f"wamid.{self._sent}"
        success = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to.lstrip("+")}],
            "messages": [{"id": wamid}],
        }
        return Answer(200, success), wamid
