"""The model side of running a job: a conversation goes in, the model's reply comes out
(text, tool calls, or both, with the tokens it used).

`ModelProvider` is the interface; `EchoProvider` answers offline and deterministically
(local work and tests), `OpenAIProvider` calls an OpenAI-compatible chat completions API.
A provider call blocks (up to its timeout, times its retries): call it from the job's
blocking worker thread, never from an actor's pooled thread.

Why httpx directly: the `openai` SDK's current major no longer uses httpx; httpx directly
is fine for this protocol (one POST, a JSON body, a JSON answer), and it is the HTTP
client the rest of the runtime already uses and tests against a local fake.

Retrying a chat completion is safe: it has no side effect but its cost, so
`OpenAIProvider` retries what can clear by itself (429, 408, 409, 5xx, timeouts,
connection failures) and raises `ModelError` for the rest. The API key is only ever
placed in the Authorization header: never in a message, a log line or a repr.
"""

import json
import logging
import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx
from pydantic import SecretStr

from agent_runtime.backoff import Backoff
from agent_runtime.errors import RuntimeErrorBase
from messages.jobs import Usage
from messages.text import cut, escape_controls

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_ERROR_CHARS",
    "RETRY_BACKOFF",
    "RETRY_STATUSES",
    "ChatMessage",
    "EchoProvider",
    "ModelError",
    "ModelProvider",
    "ModelReply",
    "OpenAIProvider",
    "Role",
    "ToolCall",
]

MAX_ERROR_CHARS = 300
"""A ModelError's message is one line, cut past this length (it is logged and may be
stored on the job)."""

RETRY_STATUSES = frozenset({408, 409, 429})
"""The 4xx statuses retried (as the `openai` SDK does), besides every 5xx: a request
timeout, a conflict (a lock) and a rate limit all clear by themselves."""

RETRY_BACKOFF = Backoff(min_s=0.5, max_s=8.0)
"""The wait before retry N when the API gave no Retry-After: 0.5 s, 1 s, 2 s, ... up to
8 s (plus up to 20% jitter), and never more than the provider's `max_retry_wait_s`."""

Role = Literal["system", "user", "assistant", "tool"]
_ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "tool"})


# ---------------------------------------------------------------------------- values


@dataclass(frozen=True)
class ToolCall:
    """One call of a tool the model asked for: `id` (echoed back in the tool's result
    message), the tool's `name`, and its `arguments` as a JSON object in a string
    (always a string, whatever the provider sent)."""

    id: str
    name: str
    arguments: str = "{}"


@dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation, as a model sees it.

    role: `system` (instructions), `user`, `assistant` (a model's reply: `content`,
    `tool_calls` or both) or `tool` (a tool's result: `content`, answering the call
    `tool_call_id`). Raises ValueError for a role out of those four, a tool message
    without `tool_call_id`, or tool calls on a message that is not the assistant's.
    """

    role: Role
    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise ValueError(f"role {self.role!r} is invalid: expected one of {sorted(_ROLES)}")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"a {self.role} message cannot carry tool calls")

    @classmethod
    def system(cls, content: str) -> "ChatMessage":
        """Instructions for the model."""
        return cls("system", content)

    @classmethod
    def user(cls, content: str) -> "ChatMessage":
        """What the person said."""
        return cls("user", content)

    @classmethod
    def assistant(cls, content: str | None, tool_calls: Sequence[ToolCall] = ()) -> "ChatMessage":
        """A model's reply, kept in the conversation (with its tool calls, if any)."""
        return cls("assistant", content, tuple(tool_calls))

    @classmethod
    def tool(cls, tool_call_id: str, content: str) -> "ChatMessage":
        """The result of the tool call `tool_call_id`."""
        return cls("tool", content, tool_call_id=tool_call_id)


@dataclass(frozen=True)
class ModelReply:
    """What the model answered: its text (`content`, None when it only called tools), the
    tools it wants called (empty for a final answer), the tokens it used, and why it
    stopped (`finish_reason`: `stop`, `tool_calls`, `length`, ...; None when unknown)."""

    content: str | None
    tool_calls: tuple[ToolCall, ...]
    usage: Usage
    finish_reason: str | None = None


class ModelError(RuntimeErrorBase):
    """A model call failed. The message is one line without secrets (at most
    MAX_ERROR_CHARS plus the cut marker).

    retryable: True when the same call may succeed later (rate limits, server errors,
    timeouts, a malformed answer, a closed provider), so the job is retried with its
    backoff; False when it never will as it is (a 4xx such as a bad request, a wrong key
    or an unknown model), so the job fails.
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(cut(escape_controls(message), MAX_ERROR_CHARS))
        self.retryable = retryable


class ModelProvider(Protocol):
    """What a job runs its model calls through."""

    def complete(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]],
        model: str | None,
    ) -> ModelReply:
        """The model's reply to `messages`, offered `tools` (OpenAI tool definitions,
        `{"type": "function", "function": {...}}`), from `model` (None: the provider's
        default). Blocks until answered, retried or timed out; raises ModelError."""
        ...

    def close(self) -> None:
        """Release connections; a call in progress (or waiting to retry) ends with a
        retryable ModelError."""
        ...


# ---------------------------------------------------------------------------- echo

_TOOL_COMMAND = re.compile(r"/tool\s+(?P<name>[A-Za-z0-9_.-]+)\s*(?P<args>.*)", re.DOTALL)


class EchoProvider:
    """A model that repeats what it was told: offline, free and deterministic.

    - It answers `echo: <the last user message>`.
    - When the last user message is `/tool NAME [JSON-args]` and no tool result has come
      back since it, it calls the tool NAME with those arguments (a JSON object, default
      `{}`) under the id `call_1`; arguments that are not a JSON object raise a
      non-retryable ModelError (to exercise the failure path offline).
    - When the conversation's last message is a tool result, it answers
      `tool NAME returned: <content>` (NAME from the assistant call it answers).

    Usage counts words (whitespace-separated) as tokens: input, every message's content
    and tool calls; output, the reply's text or its tool call. `tools` and `model` are
    ignored (it calls NAME whether or not it was offered).
    """

    def __repr__(self) -> str:
        return "EchoProvider()"

    def complete(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]],
        model: str | None,
    ) -> ModelReply:
        """The echo reply described in the class docstring; never blocks."""
        input_tokens = sum(_words(_text_of(message)) for message in messages)
        last = messages[-1] if messages else None
        if last is not None and last.role == "tool":
            name = _called_name(messages, last.tool_call_id)
            return _echo_reply(f"tool {name} returned: {last.content or ''}", input_tokens)
        user_at = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
        said = (messages[user_at].content or "") if user_at >= 0 else ""
        command = _TOOL_COMMAND.fullmatch(said.strip())
        answered = any(m.role == "tool" for m in messages[user_at + 1 :])
        if command is None or answered:
            return _echo_reply(f"echo: {said}", input_tokens)
        call = ToolCall("call_1", command["name"], _echo_arguments(command["args"]))
        usage = Usage(input_tokens=input_tokens, output_tokens=_words(_call_text(call)))
        return ModelReply(None, (call,), usage, "tool_calls")

    def close(self) -> None:
        """Nothing to release."""


def _words(text: str) -> int:
    return len(text.split())


def _call_text(call: ToolCall) -> str:
    return f"{call.name} {call.arguments}"


def _text_of(message: ChatMessage) -> str:
    return " ".join([message.content or "", *(_call_text(c) for c in message.tool_calls)])


def _echo_reply(text: str, input_tokens: int) -> ModelReply:
    usage = Usage(input_tokens=input_tokens, output_tokens=_words(text))
    return ModelReply(text, (), usage, "stop")


def _called_name(messages: Sequence[ChatMessage], call_id: str | None) -> str:
    for message in reversed(messages):
        for call in message.tool_calls:
            if call.id == call_id:
                return call.name
    return "(unknown)"


def _echo_arguments(text: str) -> str:
    text = text.strip()
    if not text:
        return "{}"
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ModelError(
            f"/tool arguments {cut(text, 80)!r} are invalid: expected a JSON object",
            retryable=False,
        )
    return json.dumps(value, ensure_ascii=False)


# ---------------------------------------------------------------------------- OpenAI


class OpenAIProvider:
    """Calls `POST {base_url}/chat/completions` (base_url as `https://api.openai.com/v1`,
    or any OpenAI-compatible API) through one shared `httpx.Client` whose connect and
    read timeouts are `timeout_s` each; `Authorization: Bearer <api_key>` when a key is
    set (a local server may need none).

    A failed attempt that can clear by itself (RETRY_STATUSES, 5xx, a timeout, a
    connection failure) is tried again, up to `max_retries` times, after the answer's
    `Retry-After` (seconds) or else RETRY_BACKOFF, either capped at `max_retry_wait_s`.
    The wait is `sleep(seconds)` when given (tests record it), else a wait on an event
    that `close()` sets, so closing ends a waiting retry at once.
    """

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | None,
        default_model: str,
        timeout_s: float,
        *,
        max_retries: int = 3,
        max_retry_wait_s: float = 30.0,
        sleep: Callable[[float], None] | None = None,
        backoff: Backoff = RETRY_BACKOFF,
    ) -> None:
        if not default_model:
            raise ValueError("default_model is empty: expected a model name such as gpt-4o")
        if max_retries < 0:
            raise ValueError(f"max_retries {max_retries} is invalid: expected 0 or more")
        self.url = f"{base_url.rstrip('/')}/chat/completions"
        self.default_model = default_model
        self._key = api_key.get_secret_value() if api_key is not None else ""
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._max_retry_wait_s = max_retry_wait_s
        self._backoff = backoff
        self._closed = threading.Event()
        self._sleep = sleep if sleep is not None else self._wait_unless_closed
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s), headers=headers)

    def __repr__(self) -> str:
        return f"OpenAIProvider({self.url}, model={self.default_model})"

    def complete(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]],
        model: str | None,
    ) -> ModelReply:
        """The model's reply (see ModelProvider.complete), after up to `max_retries`
        retries.

        Raises ModelError: retryable=False for a 4xx out of RETRY_STATUSES (with the
        API's error message); retryable=True when the retries are spent, when the
        provider is closed, and for a 2xx answer that is malformed (not JSON, no
        choices, no message, a tool call without an id or a name, or with arguments that
        are not a JSON object). A malformed answer is not retried here: the call was
        answered (and billed), so the job's own backoff decides when to ask again.
        """
        body: dict[str, Any] = {
            "model": model or self.default_model,
            "messages": [_openai_message(message) for message in messages],
        }
        if tools:
            body["tools"] = list(tools)
        attempt = 0
        while True:
            if self._closed.is_set():
                raise ModelError("model provider closed", retryable=True)
            outcome, wait_s = self._attempt(body)
            if isinstance(outcome, ModelReply):
                return outcome
            failure = outcome
            if attempt >= self._max_retries:
                tries = "1 attempt" if attempt == 0 else f"{attempt + 1} attempts"
                raise ModelError(f"{failure} (gave up after {tries})", retryable=True)
            if wait_s is None:
                wait_s = self._backoff.delay_s(attempt)
            wait_s = min(wait_s, self._max_retry_wait_s)
            attempt += 1
            logger.warning(
                "model call failed (%s); retry %d of %d in %.1f s",
                failure,
                attempt,
                self._max_retries,
                wait_s,
            )
            self._sleep(wait_s)

    def close(self) -> None:
        """Close the connection pool and end a waiting retry; the call in progress, and
        every later one, raises a retryable ModelError. Idempotent."""
        self._closed.set()
        self._http.close()

    def _attempt(self, body: dict[str, Any]) -> tuple[ModelReply | str, float | None]:
        """One POST: the reply, or why it failed in a way worth retrying and the wait the
        API asked for. Raises ModelError for a failure that is not worth retrying here."""
        try:
            response = self._http.post(self.url, json=body)
        except httpx.TimeoutException:
            return f"no answer in {self._timeout_s} s", None
        except httpx.HTTPError as error:
            return f"connection failed: {self._redact(repr(error))}", None
        except RuntimeError as error:  # httpx: the client was closed meanwhile
            if self._closed.is_set():
                raise ModelError("model provider closed", retryable=True) from None
            detail = self._redact(repr(error))
            raise ModelError(f"model call failed: {detail}", retryable=True) from None
        status = response.status_code
        if 200 <= status < 300:
            return self._reply(response), None
        detail = f"HTTP {status}: {_error_text(response, self._redact)}"
        if status in RETRY_STATUSES or status >= 500:
            return detail, _retry_after_s(response.headers.get("retry-after"))
        raise ModelError(detail, retryable=False)

    def _reply(self, response: httpx.Response) -> ModelReply:
        try:
            answer: Any = response.json()
        except ValueError:  # not JSON, or not even UTF-8
            raise self._malformed(response, "not JSON") from None
        choices = answer.get("choices") if isinstance(answer, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            raise self._malformed(response, "no choices")
        message = choice.get("message")
        if not isinstance(message, dict):
            raise self._malformed(response, "no message")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise self._malformed(response, "content is not a string")
        raw_calls = message.get("tool_calls")
        raw_calls = [] if raw_calls is None else raw_calls
        if not isinstance(raw_calls, list):
            raise self._malformed(response, "tool_calls is not a list")
        calls = []
        for raw in raw_calls:
            call = _tool_call(raw)
            if call is None:
                raise self._malformed(response, "a tool call is malformed")
            calls.append(call)
        finish_reason = choice.get("finish_reason")
        return ModelReply(
            content,
            tuple(calls),
            _usage(answer.get("usage")),
            finish_reason if isinstance(finish_reason, str) else None,
        )

    def _malformed(self, response: httpx.Response, what: str) -> ModelError:
        shown = cut(self._redact(response.text), 200) or "(no body)"
        return ModelError(
            f"malformed answer (HTTP {response.status_code}, {what}): {shown}", retryable=True
        )

    def _redact(self, text: str) -> str:
        # An error page, a proxy or an exception could echo the request's headers.
        return text.replace(self._key, "***") if self._key else text

    def _wait_unless_closed(self, seconds: float) -> None:
        self._closed.wait(seconds)


def _openai_message(message: ChatMessage) -> dict[str, Any]:
    """`message` as the chat completions API takes it."""
    if message.role == "tool":
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id,
            "content": message.content or "",
        }
    if message.role == "assistant" and message.tool_calls:
        return {
            "role": "assistant",
            "content": message.content,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in message.tool_calls
            ],
        }
    return {"role": message.role, "content": message.content or ""}


def _tool_call(raw: Any) -> ToolCall | None:
    """A tool call of the answer, its arguments normalised to a JSON object in a string
    (providers send a string, some an object; "" means none); None if malformed."""
    function = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(function, dict):
        return None
    call_id, name, arguments = raw.get("id"), function.get("name"), function.get("arguments")
    if not (isinstance(call_id, str) and call_id and isinstance(name, str) and name):
        return None
    normalised = _arguments_json(arguments)
    return None if normalised is None else ToolCall(call_id, name, normalised)


def _arguments_json(arguments: Any) -> str | None:
    """Tool call arguments as a JSON object in a string: a string is kept as sent when it
    is one, an object is serialised, none ("" or null) is `{}`; None for anything else."""
    if arguments is None or arguments == "":
        return "{}"
    if isinstance(arguments, dict):
        return json.dumps(arguments, ensure_ascii=False)
    if not isinstance(arguments, str):
        return None
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return None
    return arguments if isinstance(parsed, dict) else None


def _usage(raw: Any) -> Usage:
    """The answer's usage; a count that is missing or not a count is 0 (some compatible
    servers send no usage)."""
    counts = raw if isinstance(raw, dict) else {}

    def count(key: str) -> int:
        value = counts.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    return Usage(input_tokens=count("prompt_tokens"), output_tokens=count("completion_tokens"))


def _error_text(response: httpx.Response, redact: Callable[[str], str]) -> str:
    """The API's error message (`{"error": {"message", "code"}}`), else the body's start;
    `redact` applied before anything is cut (a cut must not leave half a key)."""
    try:
        answer: Any = response.json()
    except ValueError:
        answer = None
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        code = error.get("code") or error.get("type")
        text = f"{error['message']} ({code})" if code else str(error["message"])
        return redact(text)
    return cut(redact(response.text), 200) or "(no body)"


def _retry_after_s(value: str | None) -> float | None:
    """A Retry-After in seconds; None when absent or not seconds (an HTTP date)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
