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

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tests.fake_server import BackgroundServer, ServedFake

__all__ = ["Answer", "FakeOpenAI", "OpenAIRequest", "completion", "error_body"]


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


class FakeOpenAI(ServedFake):
    """The fake chat completions API (see the module docstring)."""

    URL_PATH = "/v1"

    def __init__(self, *, api_key: str | None = None) -> None:
        self.url = ""
        self._api_key = api_key
        self._lock = threading.Lock()
        self._requests: list[OpenAIRequest] = []
        self._script: list[Answer] = []
        self._received = 0
        routes, handlers = self._routes()
        self._server = BackgroundServer("fake-openai", routes, handlers)

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

    # ------------------------------------------------------------------ serving

    def _routes(self) -> tuple[list[BaseRoute], dict[Any, Any]]:
        async def not_found(request: Request, exc: Exception) -> Response:
            return JSONResponse(error_body(f"Unknown path {request.url.path}"), 404)

        route = Route("/v1/chat/completions", self._completions, methods=["POST"])
        return [route], {404: not_found}

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
        await self._server.pause(answer.delay_s)
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
