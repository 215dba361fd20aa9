"""A fake OpenAI chat completions API on 127.0.0.1 for tests.

It serves `POST /v1/chat/completions`, records every request, and answers by default as a
model that echoes: `echo: <the last user message>`, with usage counted in words. A test
scripts other answers with `answer_next` (first in, first out), each after its own delay
to play a slow API. With `api_key` set, another bearer token gets OpenAI's 401.

uvicorn + Starlette in one daemon thread on a free port; `url`
("http://127.0.0.1:PORT/v1") is what an OpenAIProvider takes as its base URL. Use as
`with FakeOpenAI() as api: ...`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["Answer", "FakeOpenAI", "OpenAIRequest", "completion", "error_body"]

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


def completion(
    content: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    *,
    prompt_tokens: int = 3,
    completion_tokens: int = 2,
    finish_reason: str | None = None,
    model: str = "gpt-test",
) -> dict[str, Any]:
    """A chat completion body with one choice (`finish_reason` defaults to `tool_calls`
    when there are tool calls, else `stop`)."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason or ("tool_calls" if tool_calls else "stop"),
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None) -> Any:
    """OpenAI's error body `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


@dataclass(frozen=True)
class Answer:
    """A scripted answer: `status`, a JSON `body` (a `str` is sent as it is, as text),
    extra `headers`, sent after `delay_s` (ended at once by `stop()`)."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass(frozen=True)
class OpenAIRequest:
    """One request the fake received.

    path: the URL path; headers: lowercased names; bearer: the token of
    `Authorization: Bearer ...` (None without one); body: the parsed JSON body (None if it
    was not JSON); status: the status answered.
    """

    path: str
    headers: dict[str, str]
    bearer: str | None
    body: Any
    status: int

    @property
    def model(self) -> Any:
        """The body's model, if any."""
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def messages(self) -> Any:
        """The body's messages, if any."""
        return self.body.get("messages") if isinstance(self.body, dict) else None


class _Server(uvicorn.Server):
    """uvicorn's server, whose main loop ends as soon as `stop()` sets the fake's stopping
    event (uvicorn itself checks `should_exit` every 0.1 s, which every test would wait)."""

    def __init__(self, config: uvicorn.Config, fake: FakeOpenAI) -> None:
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


class FakeOpenAI:
    """The fake chat completions API (see the module docstring)."""

    def __init__(self, *, api_key: str | None = None) -> None:
        self.url = ""
        self._api_key = api_key
        self._lock = threading.Lock()
        self._requests: list[OpenAIRequest] = []
        self._script: list[Answer] = []
        self._received = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    # ------------------------------------------------------------------ test controls

    @property
    def requests(self) -> list[OpenAIRequest]:
        """A snapshot of every request answered so far, oldest first. Thread-safe."""
        with self._lock:
            return list(self._requests)

    @property
    def received(self) -> int:
        """How many requests arrived (a delayed one counts before it is answered)."""
        with self._lock:
            return self._received

    def answer_next(
        self,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        *,
        delay_s: float = 0.0,
    ) -> None:
        """Queue an answer for the next request (scripted answers go first in, first
        out); the default answers resume once the queue is empty."""
        with self._lock:
            self._script.append(Answer(status, body, dict(headers or {}), delay_s))

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeOpenAI:
        """Serve on a free port of 127.0.0.1; return once it accepts connections."""
        if self._server is not None:
            raise RuntimeError("FakeOpenAI already started")
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
            target=server.run, kwargs={"sockets": [sock]}, name=f"fake-openai-{port}", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        started = threading.Event()
        for _ in range(int(_START_TIMEOUT_S / 0.01)):
            if server.started:
                break
            if not thread.is_alive():
                self.stop()
                raise RuntimeError("FakeOpenAI server thread died during startup")
            started.wait(0.01)
        else:
            self.stop()
            raise RuntimeError(f"FakeOpenAI did not start within {_START_TIMEOUT_S} s")
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    def stop(self) -> None:
        """Stop serving (ending any delayed answer) and join the thread. Idempotent."""
        server, thread, loop, stopping = self._server, self._thread, self._loop, self._stopping
        if server is not None and thread is not None:
            if loop is not None and stopping is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(stopping.set)
            server.should_exit = True
            thread.join(_STOP_TIMEOUT_S)
        self._server = self._thread = None

    def __enter__(self) -> FakeOpenAI:
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
            return JSONResponse(error_body(f"Unknown path {request.url.path}"), 404)

        route = Route("/v1/chat/completions", self._completions, methods=["POST"])
        return Starlette(routes=[route], lifespan=lifespan, exception_handlers={404: not_found})

    async def _completions(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        headers = {name.lower(): value for name, value in request.headers.items()}
        scheme, _, token = headers.get("authorization", "").partition(" ")
        bearer = token if scheme == "Bearer" else None
        with self._lock:
            self._received += 1
        answer = self._answer(bearer, body)
        if answer.delay_s > 0 and self._stopping is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), answer.delay_s)
        with self._lock:
            self._requests.append(
                OpenAIRequest(request.url.path, headers, bearer, body, answer.status)
            )
        if isinstance(answer.body, str):
            return Response(answer.body, answer.status, answer.headers, media_type="text/plain")
        return JSONResponse(answer.body, answer.status, answer.headers)

    def _answer(self, bearer: str | None, body: Any) -> Answer:
        with self._lock:
            if self._script:
                return self._script.pop(0)
        if self._api_key is not None and bearer != self._api_key:
            shown = f"{bearer[:3]}***" if bearer else "(none)"
            message = f"Incorrect API key provided: {shown}."
            return Answer(401, error_body(message, code="invalid_api_key"))
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not isinstance(body.get("model"), str):
            return Answer(400, error_body("'model' and 'messages' are required"))
        said = next(
            (
                str(m.get("content") or "")
                for m in reversed(messages)
                if isinstance(m, dict) and m.get("role") == "user"
            ),
            "",
        )
        text = f"echo: {said}"
        prompt_words = sum(
            len(str(m.get("content") or "").split()) for m in messages if isinstance(m, dict)
        )
        return Answer(
            200,
            completion(
                text,
                prompt_tokens=prompt_words,
                completion_tokens=len(text.split()),
                model=body["model"],
            ),
        )
