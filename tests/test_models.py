"""The model side of a job: the offline EchoProvider, and OpenAIProvider against a fake
chat completions API (request shape, replies, retries, errors, secrets)."""

import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from actors.jobs.models import (
    ChatMessage,
    EchoProvider,
    ModelError,
    ModelReply,
    OpenAIProvider,
    ToolCall,
)
from messages.jobs import Usage
from tests.conftest import wait_for
from tests.fake_openai import FakeOpenAI, completion, error_body

KEY = "sk-test-4f1c9e0b7a2d-secret"
MODEL = "gpt-default"
TIME_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "current_time",
        "description": "The current time.",
        "parameters": {"type": "object", "properties": {}},
    },
}


# --- EchoProvider ---------------------------------------------------------------------


def echo(*messages: ChatMessage) -> ModelReply:
    return EchoProvider().complete(messages, [], None)


def test_echo_repeats_the_last_user_message() -> None:
    reply = echo(
        ChatMessage.system("be brief"),
        ChatMessage.user("first"),
        ChatMessage.assistant("echo: first"),
        ChatMessage.user("hello there"),
    )
    assert (reply.content, reply.tool_calls, reply.finish_reason) == (
        "echo: hello there",
        (),
        "stop",
    )


def test_echo_counts_words_as_tokens_deterministically() -> None:
    conversation = [ChatMessage.system("be brief"), ChatMessage.user("hello there")]
    first = EchoProvider().complete(conversation, [TIME_TOOL], "any-model")
    assert first.usage == Usage(input_tokens=4, output_tokens=3)
    assert EchoProvider().complete(conversation, [], None) == first


def test_echo_calls_the_tool_a_slash_tool_command_names() -> None:
    reply = echo(ChatMessage.user("/tool current_time"))
    assert reply.content is None
    assert reply.tool_calls == (ToolCall("call_1", "current_time", "{}"),)
    assert reply.finish_reason == "tool_calls"
    assert reply.usage == Usage(input_tokens=2, output_tokens=2)  # "current_time {}"


def test_echo_passes_the_commands_json_arguments() -> None:
    reply = echo(ChatMessage.user('/tool add {"a": 1, "b": [2]}'))
    (call,) = reply.tool_calls
    assert (call.name, json.loads(call.arguments)) == ("add", {"a": 1, "b": [2]})


def test_echo_refuses_arguments_that_are_not_a_json_object() -> None:
    with pytest.raises(ModelError, match="expected a JSON object") as caught:
        echo(ChatMessage.user("/tool add [1, 2]"))
    assert caught.value.retryable is False


def test_echo_answers_with_the_tool_result_once_it_came_back() -> None:
    call = ToolCall("call_1", "current_time", "{}")
    conversation = [
        ChatMessage.user("/tool current_time"),
        ChatMessage.assistant(None, [call]),
        ChatMessage.tool("call_1", "12:00 UTC"),
    ]
    reply = echo(*conversation)
    assert (reply.content, reply.tool_calls) == ("tool current_time returned: 12:00 UTC", ())
    # The exchange is over: the same command is not run again for this user message.
    again = echo(*conversation, ChatMessage.assistant(reply.content))
    assert again.content == "echo: /tool current_time"
    assert again.tool_calls == ()


def test_a_message_out_of_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="tool_call_id"):
        ChatMessage("tool", "12:00")
    with pytest.raises(ValueError, match="cannot carry tool calls"):
        ChatMessage("user", "hi", (ToolCall("c", "t"),))


# --- OpenAIProvider -------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def sleeps() -> list[float]:
    return []


def provider_for(
    api: FakeOpenAI,
    sleeps: list[float] | None,
    *,
    key: str | None = KEY,
    timeout_s: float = 5.0,
    max_retries: int = 3,
    max_retry_wait_s: float = 30.0,
) -> OpenAIProvider:
    return OpenAIProvider(
        api.url,
        SecretStr(key) if key is not None else None,
        MODEL,
        timeout_s,
        max_retries=max_retries,
        max_retry_wait_s=max_retry_wait_s,
        sleep=sleeps.append if sleeps is not None else None,
    )


@pytest.fixture
def provider(api: FakeOpenAI, sleeps: list[float]) -> Iterator[OpenAIProvider]:
    model = provider_for(api, sleeps)
    yield model
    model.close()


HELLO = [ChatMessage.user("hello there")]


def test_the_request_is_an_authorised_chat_completion(
    api: FakeOpenAI, provider: OpenAIProvider
) -> None:
    call = ToolCall("call_7", "current_time", '{"tz": "UTC"}')
    conversation = [
        ChatMessage.system("be brief"),
        ChatMessage.user("what time is it?"),
        ChatMessage.assistant(None, [call]),
        ChatMessage.tool("call_7", "12:00"),
    ]
    provider.complete(conversation, [TIME_TOOL], None)
    (request,) = api.requests
    assert request.path == "/v1/chat/completions"
    assert request.bearer == KEY
    assert request.body == {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what time is it?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_7",
                        "type": "function",
                        "function": {"name": "current_time", "arguments": '{"tz": "UTC"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_7", "content": "12:00"},
        ],
        "tools": [TIME_TOOL],
    }


def test_the_model_argument_overrides_the_default(
    api: FakeOpenAI, provider: OpenAIProvider
) -> None:
    provider.complete(HELLO, [], "gpt-other")
    assert api.requests[0].model == "gpt-other"


def test_without_a_key_or_tools_neither_is_sent(api: FakeOpenAI, sleeps: list[float]) -> None:
    provider = provider_for(api, sleeps, key=None)
    try:
        provider.complete(HELLO, [], None)
    finally:
        provider.close()
    (request,) = api.requests
    assert "authorization" not in request.headers
    assert "tools" not in request.body


def test_a_final_answer_comes_back_with_its_usage(provider: OpenAIProvider) -> None:
    reply = provider.complete([ChatMessage.system("be brief"), *HELLO], [], None)
    assert reply == ModelReply(
        "echo: hello there", (), Usage(input_tokens=4, output_tokens=3), "stop"
    )


@pytest.mark.parametrize(
    "arguments", ['{"city": "Paris", "days": 2}', {"city": "Paris", "days": 2}], ids=["str", "obj"]
)
def test_tool_call_arguments_become_a_json_string(
    api: FakeOpenAI, provider: OpenAIProvider, arguments: object
) -> None:
    calls = [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "weather", "arguments": arguments},
        },
        {"id": "call_b", "type": "function", "function": {"name": "current_time"}},
    ]
    api.answer_next(200, completion(None, calls, prompt_tokens=11, completion_tokens=7))
    reply = provider.complete(HELLO, [TIME_TOOL], None)
    assert reply.content is None
    assert reply.finish_reason == "tool_calls"
    assert reply.usage == Usage(input_tokens=11, output_tokens=7)
    first, second = reply.tool_calls
    assert (first.id, first.name, second.id, second.name) == (
        "call_a",
        "weather",
        "call_b",
        "current_time",
    )
    assert isinstance(first.arguments, str)
    assert json.loads(first.arguments) == {"city": "Paris", "days": 2}
    assert second.arguments == "{}"


def test_a_429_waits_as_long_as_retry_after_says(
    api: FakeOpenAI, provider: OpenAIProvider, sleeps: list[float]
) -> None:
    api.answer_next(429, error_body("Rate limit reached", "requests"), {"Retry-After": "2"})
    reply = provider.complete(HELLO, [], None)
    assert reply.content == "echo: hello there"
    assert sleeps == [2.0]
    assert [r.status for r in api.requests] == [429, 200]


def test_a_long_retry_after_is_capped(api: FakeOpenAI, sleeps: list[float]) -> None:
    provider = provider_for(api, sleeps, max_retry_wait_s=5.0)
    api.answer_next(429, error_body("Rate limit reached", "requests"), {"Retry-After": "120"})
    try:
        provider.complete(HELLO, [], None)
    finally:
        provider.close()
    assert sleeps == [5.0]


def test_server_errors_are_retried_with_backoff_until_one_succeeds(
    api: FakeOpenAI, sleeps: list[float]
) -> None:
    provider = provider_for(api, sleeps, max_retry_wait_s=0.9)
    api.answer_next(500, error_body("The server had an error", "server_error"))
    api.answer_next(503, "<html>Service Unavailable</html>")
    try:
        reply = provider.complete(HELLO, [], None)
    finally:
        provider.close()
    assert reply.content == "echo: hello there"
    assert [r.status for r in api.requests] == [500, 503, 200]
    # RETRY_BACKOFF: 0.5 s then 1 s (plus jitter), the second capped at 0.9 s.
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 0.6
    assert sleeps[1] == 0.9


def test_spent_retries_raise_a_retryable_error(api: FakeOpenAI, sleeps: list[float]) -> None:
    provider = provider_for(api, sleeps, max_retries=2)
    for _ in range(3):
        api.answer_next(503, error_body("overloaded", "server_error"))
    with pytest.raises(ModelError, match="HTTP 503: overloaded") as caught:
        provider.complete(HELLO, [], None)
    provider.close()
    assert caught.value.retryable is True
    assert "3 attempts" in str(caught.value)
    assert len(api.requests) == 3
    assert len(sleeps) == 2


def test_a_bad_request_fails_at_once_with_the_apis_message(
    api: FakeOpenAI, provider: OpenAIProvider, sleeps: list[float]
) -> None:
    message = "The model `gpt-nope` does not exist or you do not have access to it."
    api.answer_next(400, error_body(message, code="model_not_found"))
    with pytest.raises(ModelError) as caught:
        provider.complete(HELLO, [], "gpt-nope")
    assert caught.value.retryable is False
    assert str(caught.value) == f"HTTP 400: {message} (model_not_found)"
    assert len(api.requests) == 1
    assert sleeps == []


def test_a_slow_answer_times_out_and_is_retried(api: FakeOpenAI, sleeps: list[float]) -> None:
    provider = provider_for(api, sleeps, timeout_s=0.3)
    api.answer_next(200, completion("too late"), delay_s=30.0)
    try:
        reply = provider.complete(HELLO, [], None)
    finally:
        provider.close()
    assert reply.content == "echo: hello there"
    assert api.received == 2
    assert len(sleeps) == 1


def test_a_timeout_without_retries_left_raises_a_retryable_error(
    api: FakeOpenAI, sleeps: list[float]
) -> None:
    provider = provider_for(api, sleeps, timeout_s=0.3, max_retries=0)
    api.answer_next(200, completion("too late"), delay_s=30.0)
    with pytest.raises(ModelError, match=r"no answer in 0.3 s \(gave up after 1 attempt\)") as c:
        provider.complete(HELLO, [], None)
    provider.close()
    assert c.value.retryable is True
    assert sleeps == []


def test_an_unreachable_api_is_retried_then_raises(sleeps: list[float]) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = OpenAIProvider(
        f"http://127.0.0.1:{port}/v1", None, MODEL, 2.0, max_retries=1, sleep=sleeps.append
    )
    with pytest.raises(ModelError, match="connection failed") as caught:
        provider.complete(HELLO, [], None)
    provider.close()
    assert caught.value.retryable is True
    assert len(sleeps) == 1


MALFORMED: dict[str, Any] = {
    "not-json": "<html>oops</html>",
    "no-choices": {"id": "x"},
    "empty-choices": {"choices": []},
    "no-message": {"choices": [{"index": 0, "finish_reason": "stop"}]},
    "content-not-text": {"choices": [{"message": {"content": 42}}]},
    "tool-calls-not-a-list": {"choices": [{"message": {"content": None, "tool_calls": {}}}]},
    "call-without-function": completion(None, [{"id": "c1", "type": "function"}]),
    "call-without-id": completion(None, [{"type": "function", "function": {"name": "f"}}]),
    "arguments-not-json": completion(
        None, [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]
    ),
    "arguments-not-an-object": completion(
        None, [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]
    ),
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_answer_raises_a_retryable_error_without_retrying(
    api: FakeOpenAI, provider: OpenAIProvider, sleeps: list[float], body: Any
) -> None:
    api.answer_next(200, body)
    with pytest.raises(ModelError, match="malformed answer") as caught:
        provider.complete(HELLO, [], None)
    assert caught.value.retryable is True
    assert len(api.requests) == 1
    assert sleeps == []


def test_the_key_never_shows(
    api: FakeOpenAI,
    provider: OpenAIProvider,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # A proxy's error page echoing the request headers, then a 401 quoting the key.
    api.answer_next(502, f"bad gateway; request had Authorization: Bearer {KEY}")
    api.answer_next(401, error_body(f"Incorrect API key provided: {KEY}.", code="invalid_api_key"))
    with pytest.raises(ModelError) as caught:
        provider.complete(HELLO, [], None)
    assert caught.value.retryable is False
    assert "Incorrect API key provided: ***." in str(caught.value)
    assert "Bearer ***" in caplog.text  # the retry's warning was logged, redacted
    for shown in (repr(provider), str(provider), str(caught.value), repr(caught.value)):
        assert KEY not in shown
    assert KEY not in caplog.text
    assert api.requests[0].bearer == KEY


def test_close_ends_a_waiting_retry_at_once(api: FakeOpenAI) -> None:
    provider = provider_for(api, None, max_retry_wait_s=60.0)  # the real, interruptible wait
    api.answer_next(503, error_body("overloaded", "server_error"), {"Retry-After": "60"})
    errors: list[ModelError] = []

    def call() -> None:
        try:
            provider.complete(HELLO, [], None)
        except ModelError as error:
            errors.append(error)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    wait_for(lambda: api.requests, what="the first attempt to be answered")
    provider.close()
    caller.join(5.0)
    assert not caller.is_alive(), "close() did not end the 60 s wait"
    (error,) = errors
    assert (str(error), error.retryable) == ("model provider closed", True)
    assert len(api.requests) == 1


def test_a_closed_provider_sends_nothing(api: FakeOpenAI, sleeps: list[float]) -> None:
    provider = provider_for(api, sleeps)
    provider.close()
    with pytest.raises(ModelError, match="closed") as caught:
        provider.complete(HELLO, [], None)
    assert caught.value.retryable is True
    assert api.received == 0
