"""The send path: how Cloud API answers are classified, CloudTransport against a fake
Graph API, and the console transport."""

import logging
import socket
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from actors.whatsapp.transport import (
    MAX_REASON_CHARS,
    CloudTransport,
    ConsoleTransport,
    SendResult,
    classify,
)
from agent_runtime.clock import monotonic_s
from tests.fake_graph import Answer, FakeGraph

TOKEN = "EAAGtest-access-token-4f1c9e"
VERSION = "v21.0"
PHONE_NUMBER_ID = "109876543210"
TO = "+15550001111"

# The table, written out here (not read from the module) so a wrong constant fails.
THROTTLED = [4, 80007, 130429]
TEMPORARY = [1, 2, 131000, 131016, 133004]
PERMANENT = [100, 131008, 131009, 131021, 131026, 131047, 131051, 132000, 132001, 132999]
PAUSE = [0, 190, 10, 200, 250, 299, 368, 131031, 131042]
UNKNOWN = [3, 300, 999, 131999, 133000, 470, 2_000_000]


# --- classify -------------------------------------------------------------------------


@pytest.mark.parametrize("code", THROTTLED)
def test_a_rate_limit_code_holds_back_the_whole_account(code: int) -> None:
    result = classify(400, code, "try later")
    assert (result.kind, result.per_account, result.per_recipient) == ("retry", True, False)
    assert f"error {code}" in result.reason


def test_a_429_without_a_code_holds_back_the_whole_account() -> None:
    assert classify(429, None, "slow down").per_account


@pytest.mark.parametrize("code", TEMPORARY)
def test_a_temporary_code_is_retried_for_that_message(code: int) -> None:
    result = classify(400, code, "try later")
    assert (result.kind, result.per_account, result.per_recipient) == ("retry", False, False)
    assert f"error {code}" in result.reason


def test_the_pair_rate_limit_is_retried_for_that_recipient_only() -> None:
    result = classify(400, 131056, "pair rate limit hit")
    assert (result.kind, result.per_recipient) == ("retry", True)


@pytest.mark.parametrize("code", PERMANENT)
def test_a_message_level_code_fails_the_message(code: int) -> None:
    result = classify(400, code, "cannot be sent")
    assert result == SendResult.permanent(f"error {code}, HTTP 400: cannot be sent")


@pytest.mark.parametrize("code", PAUSE)
def test_an_account_level_code_pauses_the_account(code: int) -> None:
    result = classify(403, code, "not allowed")
    assert result.kind == "pause"
    assert result.reason == f"error {code}, HTTP 403: not allowed"


@pytest.mark.parametrize("code", UNKNOWN)
def test_an_unknown_code_is_retried(code: int) -> None:
    assert classify(400, code, "new to us") == SendResult.retry(
        f"error {code}, HTTP 400: new to us"
    )


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_server_error_without_a_code_is_retried(status: int) -> None:
    result = classify(status, None, "Service Unavailable")
    assert result == SendResult.retry(f"HTTP {status}: Service Unavailable")


def test_a_transport_error_is_retried() -> None:
    assert classify(None, None, "cannot connect") == SendResult.retry(
        "transport error: cannot connect"
    )


def test_retry_after_is_kept_on_a_retry_only() -> None:
    assert classify(429, 130429, "slow down", retry_after_s=7.0).retry_after_s == 7.0
    assert classify(503, None, "busy", retry_after_s=2.5).retry_after_s == 2.5
    assert classify(429, None, "slow down").retry_after_s is None
    assert classify(400, 131047, "window", retry_after_s=7.0).retry_after_s is None
    assert classify(401, 190, "expired", retry_after_s=7.0).retry_after_s is None


def test_a_reason_is_one_line_cut_to_the_limit() -> None:
    result = classify(400, 100, "line\nbreak\x1b[2J" * 10_000)
    assert result.reason.startswith(r"error 100, HTTP 400: line\nbreak\x1b[2J")
    assert result.reason.isprintable()
    assert len(result.reason) <= MAX_REASON_CHARS + 20  # plus the "...(N chars)" marker
    assert result.reason.endswith(" chars)")


# --- CloudTransport against the fake Graph API ------------------------------------------


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with FakeGraph(access_token=TOKEN) as fake:
        yield fake


def cloud(url: str, timeout_s: float = 5.0, token: str = TOKEN) -> CloudTransport:
    return CloudTransport(url, VERSION, PHONE_NUMBER_ID, SecretStr(token), timeout_s)


@pytest.fixture
def transport(graph: FakeGraph) -> Iterator[CloudTransport]:
    t = cloud(graph.url)
    yield t
    t.close()


def test_a_send_posts_the_text_message_with_the_bearer_token(
    graph: FakeGraph, transport: CloudTransport
) -> None:
    transport.send_text(TO, "hello there")
    (request,) = graph.requests
    assert request.path == f"/{VERSION}/{PHONE_NUMBER_ID}/messages"
    assert request.bearer == TOKEN
    assert request.headers["content-type"] == "application/json"
    assert request.body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": TO,
        "type": "text",
        "text": {"preview_url": False, "body": "hello there"},
    }


def test_an_accepted_message_is_sent_with_its_wamid(
    graph: FakeGraph, transport: CloudTransport
) -> None:
    first = transport.send_text(TO, "one")
    second = transport.send_text(TO, "two")
    assert first == SendResult.sent("wamid.1")
    assert second == SendResult.sent("wamid.2")
    assert [r.wamid for r in graph.sent] == ["wamid.1", "wamid.2"]


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, 131047, ("permanent", False)),
        (400, 132001, ("permanent", False)),
        (401, 190, ("pause", False)),
        (403, 200, ("pause", False)),
        (400, 131056, ("retry", True)),
        (400, 130429, ("retry", False)),
        (500, 131000, ("retry", False)),
    ],
)
def test_a_graph_error_is_classified_by_its_code(
    graph: FakeGraph, transport: CloudTransport, status: int, code: int, expected: tuple[str, bool]
) -> None:
    graph.answer_next(Answer.error(status, code, "nope", error_subcode=2494010, details="why"))
    result = transport.send_text(TO, "hi")
    assert (result.kind, result.per_recipient, result.wamid) == (*expected, None)
    assert result.reason == f"error {code}, HTTP {status}: (#{code}) nope (subcode 2494010): why"


def test_a_code_sent_as_a_string_is_classified(graph: FakeGraph, transport: CloudTransport) -> None:
    graph.answer_next(Answer(400, {"error": {"code": "131047", "message": "window closed"}}))
    assert transport.send_text(TO, "hi").kind == "permanent"


def test_a_wrong_token_pauses_the_account(graph: FakeGraph) -> None:
    wrong = cloud(graph.url, token="EAAGsome-other-token")
    try:
        result = wrong.send_text(TO, "hi")
    finally:
        wrong.close()
    assert result.kind == "pause"
    assert "error 190, HTTP 401" in result.reason


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_in_seconds_is_honoured(
    graph: FakeGraph, transport: CloudTransport, status: int
) -> None:
    graph.fail_next(status, 130429 if status == 429 else None, "slow down", retry_after=12)
    result = transport.send_text(TO, "hi")
    assert (result.kind, result.retry_after_s) == ("retry", 12.0)


def test_a_retry_after_that_is_a_date_is_ignored(
    graph: FakeGraph, transport: CloudTransport
) -> None:
    graph.answer_next(Answer(429, {}, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert transport.send_text(TO, "hi") == SendResult.retry("HTTP 429: {}", per_account=True)


def test_a_503_without_json_is_retried(graph: FakeGraph, transport: CloudTransport) -> None:
    graph.fail_next(503, None, "<html>Service Unavailable</html>")
    result = transport.send_text(TO, "hi")
    assert result == SendResult.retry("HTTP 503: <html>Service Unavailable</html>")


@pytest.mark.parametrize(
    "answer",
    [
        Answer(200, {"messaging_product": "whatsapp", "contacts": []}),
        Answer(200, {"messages": [{"id": ""}]}),
        Answer(201, {"messages": []}),
        Answer(200, "not json"),
    ],
    ids=["no messages", "empty id", "empty list", "not json"],
)
def test_a_2xx_without_a_wamid_is_retried(
    graph: FakeGraph, transport: CloudTransport, answer: Answer
) -> None:
    graph.answer_next(answer)
    result = transport.send_text(TO, "hi")
    assert result.kind == "retry"
    assert result.reason.startswith(f"unexpected answer (HTTP {answer.status})")


def test_a_slow_api_is_retried_once_the_timeout_passes(graph: FakeGraph) -> None:
    graph.delay_s = 30.0  # stop() ends it
    slow = cloud(graph.url, timeout_s=0.3)
    started = monotonic_s()
    try:
        result = slow.send_text(TO, "hi")
    finally:
        slow.close()
    elapsed_s = monotonic_s() - started
    assert result.kind == "retry"
    assert "no answer in 0.3 s" in result.reason
    assert result.may_have_sent  # the request went out: a retry may duplicate it
    assert 0.3 <= elapsed_s < 1.5


def test_an_unreachable_api_is_retried() -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    unreachable = cloud(f"http://127.0.0.1:{port}", timeout_s=2.0)
    try:
        result = unreachable.send_text(TO, "hi")
    finally:
        unreachable.close()
    assert result.kind == "retry"
    assert result.reason.startswith("transport error: cannot connect")
    assert not result.may_have_sent  # never sent: a retry cannot duplicate it


def test_the_recipient_rule_answers_for_one_contact(
    graph: FakeGraph, transport: CloudTransport
) -> None:
    paced = "+15550002222"
    graph.recipient_rule = lambda to: Answer.error(400, 131056, "pair") if to == paced else None
    assert transport.send_text(paced, "hi").per_recipient is True
    assert transport.send_text(TO, "hi") == SendResult.sent("wamid.1")


def test_the_token_never_shows(
    graph: FakeGraph, transport: CloudTransport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    graph.fail_next(401, 190, f"Invalid OAuth access token - Cannot parse access token {TOKEN}")
    graph.fail_next(502, None, f"proxy echo: Authorization: Bearer {TOKEN}")
    graph.answer_next(Answer(200, {"echo": TOKEN}))
    results = [transport.send_text(TO, "hi") for _ in range(4)]
    assert [r.kind for r in results] == ["pause", "retry", "retry", "sent"]
    assert all("***" in r.reason for r in results[:3])  # the echo was there, and redacted
    shown = [repr(transport), str(transport), *map(repr, results), *map(str, results)]
    assert not [text for text in shown if TOKEN in text]
    assert caplog.records  # httpx and httpcore did log
    assert TOKEN not in caplog.text


# --- ConsoleTransport -------------------------------------------------------------------


def test_the_console_transport_logs_and_reports_sent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="actors.whatsapp.transport")
    console = ConsoleTransport()
    first = console.send_text(TO, "hello\nworld")
    second = console.send_text(TO, "x" * 1000)
    console.close()
    assert first.kind == "sent"
    assert first.wamid is not None
    assert first.wamid.startswith("console.")
    assert second.wamid != first.wamid
    lines = [r.getMessage() for r in caplog.records if r.name == "actors.whatsapp.transport"]
    assert lines == [
        f"whatsapp (console) to={TO} text=hello\nworld",
        f"whatsapp (console) to={TO} text={'x' * 200}...(1000 chars)",
    ]
