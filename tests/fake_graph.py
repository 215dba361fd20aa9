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

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from agent_runtime.clock import monotonic_s
from tests.fake_server import BackgroundServer, ServedFake

__all__ = ["Answer", "FakeGraph", "GraphRequest"]


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


RecipientRule = Callable[[str], Answer | None]
"""`to -> Answer | None`: an answer for this contact, or None for the default."""


class FakeGraph(ServedFake):
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
        routes, handlers = self._routes()
        self._server = BackgroundServer("fake-graph", routes, handlers)

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

    # ------------------------------------------------------------------ serving

    def _routes(self) -> tuple[list[BaseRoute], dict[Any, Any]]:
        async def not_found(request: Request, exc: Exception) -> Response:
            answer = Answer.error(404, 100, f"Unknown path {request.url.path}")
            return JSONResponse(answer.body, answer.status)

        route = Route("/{version}/{phone_number_id}/messages", self._messages, methods=["POST"])
        return [route], {404: not_found}

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
        await self._server.pause(self.delay_s)
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
