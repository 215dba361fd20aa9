"""The WhatsApp webhook, served for real (uvicorn on 127.0.0.1, httpx as Meta): the
handshake, the signature (401/403 so Meta retries), the 3 MB cap, bad payloads (400),
recording into the embedded backend once (200 only after it returned, duplicates
counted), backend failures (500), and logs that never show the secrets."""

import concurrent.futures
import hashlib
import hmac
import json
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from unittest.mock import create_autospec

import httpx
import pytest
from pydantic import SecretStr

from agent_runtime.app.config import Settings
from agent_runtime.app.http import HttpServer
from agent_runtime.app.webhooks import (
    MAX_BODY_BYTES,
    SIGNATURE_HEADER,
    WEBHOOK_PATH,
    parse_delivery,
    webhook_routes,
)
from agent_runtime.errors import BackendError
from agent_runtime.status import StatusBoard
from backend.local import LocalBackend
from backend.port import Backend
from messages.whatsapp import MAX_TEXT_CHARS, WebhookRecorded
from tests.conftest import wait_for

ACCOUNT = "acct-1"
APP_SECRET = "app-secret-9f1c2e"
VERIFY_TOKEN = "verify-token-77ab"
CONTACT = "16505551234"
SENT_WAMID = "wamid.OUTBOUND-1"
T0 = 1_749_416_383
"""Unix seconds, as Meta stamps a delivery."""

Serve = Callable[[Backend], httpx.Client]


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def text_message(wamid: str, body: str, at: int = T0) -> dict[str, Any]:
    return {
        "from": CONTACT,
        "id": wamid,
        "timestamp": str(at),
        "type": "text",
        "text": {"body": body},
    }


def status(wamid: str, state: str, at: int = T0, **extra: Any) -> dict[str, Any]:
    return {"id": wamid, "status": state, "timestamp": str(at), "recipient_id": CONTACT, **extra}


def delivery(
    messages: list[dict[str, Any]] | None = None, statuses: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A Cloud API delivery as Meta sends it: one entry, one `messages` change."""
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
    }
    if messages is not None:
        value["contacts"] = [{"profile": {"name": "Sheena"}, "wa_id": CONTACT}]
        value["messages"] = messages
    if statuses is not None:
        value["statuses"] = statuses
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}],
    }


def post(client: httpx.Client, payload: Any, secret: str = APP_SECRET) -> httpx.Response:
    body = json.dumps(payload).encode()
    return client.post(WEBHOOK_PATH, content=body, headers={SIGNATURE_HEADER: sign(body, secret)})


def webhook_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "agent_runtime.app.webhooks"]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start the HTTP server with the webhook routes on a backend; an httpx client to it."""
    servers: list[HttpServer] = []
    clients: list[httpx.Client] = []

    def start(backend: Backend) -> httpx.Client:
        settings = Settings(
            AGENT_ROLE="whatsapp",
            HOST="127.0.0.1",
            PORT=0,
            WORKER_ID="w",
            WHATSAPP_ACCOUNT_ID=ACCOUNT,
            WHATSAPP_APP_SECRET=APP_SECRET,
            WHATSAPP_VERIFY_TOKEN=VERIFY_TOKEN,
        )
        routes = webhook_routes(ACCOUNT, SecretStr(APP_SECRET), SecretStr(VERIFY_TOKEN), backend)
        server = HttpServer(settings, StatusBoard(), 0.0, routes=routes)
        server.start()
        servers.append(server)
        client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10)
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()
    for server in servers:
        server.stop()


@pytest.fixture
def client(serve: Serve, local_backend: LocalBackend) -> httpx.Client:
    return serve(local_backend)


# --- the handshake -------------------------------------------------------------------------


def test_the_handshake_echoes_the_challenge(client: httpx.Client) -> None:
    params = {
        "hub.mode": "subscribe",
        "hub.verify_token": VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    response = client.get(WEBHOOK_PATH, params=params)
    assert response.status_code == 200
    assert response.text == "1158201444"
    assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "not-the-token", "hub.challenge": "42"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "42"},
        {"hub.mode": "subscribe", "hub.challenge": "42"},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN},
    ],
    ids=["wrong-token", "wrong-mode", "no-token", "no-challenge"],
)
def test_a_wrong_handshake_is_forbidden(
    client: httpx.Client, params: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    response = client.get(WEBHOOK_PATH, params=params)
    assert response.status_code == 403
    assert "42" not in response.text
    assert VERIFY_TOKEN not in caplog.text
    assert [r.levelname for r in webhook_logs(caplog)] == ["WARNING"]


# --- the signature -----------------------------------------------------------------------


def test_an_unsigned_delivery_is_refused_with_401(
    client: httpx.Client, local_backend: LocalBackend, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps(delivery([text_message("wamid.IN1", "hello")])).encode()
    response = client.post(WEBHOOK_PATH, content=body)
    assert response.status_code == 401
    assert SIGNATURE_HEADER in response.json()["error"]
    assert local_backend.list_inbox(ACCOUNT) == []
    [line] = webhook_logs(caplog)
    assert line.levelname == "WARNING"
    assert SIGNATURE_HEADER in line.getMessage()
    assert "hello" not in caplog.text


@pytest.mark.parametrize(
    "signature",
    [sign(b"another body"), "sha1=abc", "", "sha256=\u00e9"],
    ids=["other-body", "sha1", "empty", "non-ascii"],
)
def test_a_wrongly_signed_delivery_is_refused_with_403(
    client: httpx.Client,
    local_backend: LocalBackend,
    caplog: pytest.LogCaptureFixture,
    signature: str,
) -> None:
    body = json.dumps(delivery([text_message("wamid.IN1", "hello")])).encode()
    response = client.post(
        WEBHOOK_PATH, content=body, headers={SIGNATURE_HEADER: signature.encode("latin-1")}
    )
    assert response.status_code == 403
    assert local_backend.list_inbox(ACCOUNT) == []
    [line] = webhook_logs(caplog)
    assert line.levelname == "WARNING"
    assert "WHATSAPP_APP_SECRET" in line.getMessage()
    assert APP_SECRET not in caplog.text
    assert "hello" not in caplog.text


def test_a_delivery_signed_with_another_secret_is_refused(
    client: httpx.Client, local_backend: LocalBackend
) -> None:
    response = post(client, delivery([text_message("wamid.IN1", "hello")]), "another-secret")
    assert response.status_code == 403
    assert local_backend.list_inbox(ACCOUNT) == []


def test_a_signature_in_upper_case_hex_is_accepted(
    client: httpx.Client, local_backend: LocalBackend
) -> None:
    body = json.dumps(delivery([text_message("wamid.IN1", "hello")])).encode()
    signature = "sha256=" + sign(body).removeprefix("sha256=").upper()
    response = client.post(WEBHOOK_PATH, content=body, headers={SIGNATURE_HEADER: signature})
    assert response.status_code == 200
    assert [m["text"] for m in local_backend.list_inbox(ACCOUNT)] == ["hello"]


# --- the size cap ------------------------------------------------------------------------


def oversized_body() -> bytes:
    """A valid delivery just over the cap: its 413 can only come from the cap."""
    padding = "x" * (MAX_BODY_BYTES + 1 - len(json.dumps(delivery([]))))
    payload = delivery([text_message("wamid.BIG", "big")])
    payload["padding"] = padding
    return json.dumps(payload).encode()


def test_a_body_over_3_mb_with_content_length_is_refused_with_413(
    client: httpx.Client, local_backend: LocalBackend, caplog: pytest.LogCaptureFixture
) -> None:
    body = oversized_body()
    assert len(body) > MAX_BODY_BYTES
    response = client.post(WEBHOOK_PATH, content=body, headers={SIGNATURE_HEADER: sign(body)})
    assert response.request.headers["content-length"] == str(len(body))
    assert response.status_code == 413
    assert local_backend.list_inbox(ACCOUNT) == []
    assert [r.levelname for r in webhook_logs(caplog)] == ["WARNING"]


def test_a_chunked_body_over_3_mb_is_refused_with_413(
    client: httpx.Client, local_backend: LocalBackend
) -> None:
    body = oversized_body()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    response = client.post(WEBHOOK_PATH, content=chunks(), headers={SIGNATURE_HEADER: sign(body)})
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413
    assert local_backend.list_inbox(ACCOUNT) == []


def test_a_body_within_3_mb_is_read(client: httpx.Client) -> None:
    payload = delivery([])
    payload["padding"] = "x" * (MAX_BODY_BYTES - len(json.dumps(payload)) - len(', "padding": ""'))
    body = json.dumps(payload).encode()
    assert len(body) == MAX_BODY_BYTES
    response = client.post(WEBHOOK_PATH, content=body, headers={SIGNATURE_HEADER: sign(body)})
    assert response.status_code == 200


def first_status_code(port: int, request: bytes) -> int:
    """Send raw bytes (a request whose body never ends) and read the status line: the
    server must answer without the rest of the body (else the 5 s timeout fails)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(request)
        reply = b""
        while b"\r\n" not in reply:
            chunk = raw.recv(4096)
            assert chunk, f"connection closed after {reply!r}"
            reply += chunk
    return int(reply.split()[1])


def test_an_announced_oversize_body_is_refused_before_it_is_sent(client: httpx.Client) -> None:
    port = client.base_url.port
    assert port is not None
    head = (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
    ).encode()
    assert first_status_code(port, head + b"{") == 413


def test_a_chunked_body_is_not_read_past_3_mb(client: httpx.Client) -> None:
    # A chunked body that never ends: answered once it passes the cap, not buffered on.
    port = client.base_url.port
    assert port is not None
    size = MAX_BODY_BYTES + 64 * 1024
    head = (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        f"{2 * size:x}\r\n"
    ).encode()
    assert first_status_code(port, head + b"x" * size) == 413


# --- bad payloads ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"object": "whatsapp_business_account", "entry": [', "Expecting value"),
        (b"\xff\xfe{", "can't decode"),
        (b"[" * 100_000 + b"]" * 100_000, "not a WhatsApp delivery"),
        (json.dumps({"object": "page", "entry": []}).encode(), "object is 'page'"),
        (json.dumps(["not", "an", "object"]).encode(), "the payload: expected an object"),
        (
            json.dumps(delivery([{"from": CONTACT, "timestamp": "1", "type": "text"}])).encode(),
            "entry[0].changes[0].value.messages[0].text: expected an object, got None",
        ),
    ],
    ids=["truncated", "not-utf8", "too-deep", "not-whatsapp", "array", "no-text"],
)
def test_a_signed_bad_payload_is_refused_with_400_and_a_one_line_reason(
    client: httpx.Client, local_backend: LocalBackend, body: bytes, reason: str
) -> None:
    response = client.post(WEBHOOK_PATH, content=body, headers={SIGNATURE_HEADER: sign(body)})
    assert response.status_code == 400
    error = response.json()["error"]
    assert reason in error
    assert error.isprintable()
    assert len(error) < 300
    assert local_backend.list_inbox(ACCOUNT) == []


# --- recording -----------------------------------------------------------------------------


def sent_message(backend: LocalBackend) -> str:
    """An outbound message to CONTACT, claimed and sent as SENT_WAMID; its id."""
    lease = backend.acquire_lease(ACCOUNT, "w", 15_000)
    assert lease.held
    message_id = backend.enqueue_outbound(ACCOUNT, CONTACT, "your order shipped")
    [claimed] = backend.claim_outbound(
        ACCOUNT, "w", lease.epoch, limit=1, lock_ms=30_000, max_attempts=3
    )
    backend.mark_sent(claimed.id, claimed.claim_token, lease.epoch, SENT_WAMID)
    return message_id


REALISTIC = delivery(
    [
        text_message("wamid.IN1", "Does it come in another color?", T0),
        text_message("wamid.IN2", "Blue, ideally", T0 + 1),
        {
            "from": CONTACT,
            "id": "wamid.IN3",
            "timestamp": str(T0 + 2),
            "type": "image",
            "image": {"mime_type": "image/jpeg", "sha256": "abc", "id": "1003383421387256"},
        },
    ],
    [
        status(SENT_WAMID, "delivered", T0 + 3),
        status("wamid.UNKNOWN", "read", T0 + 4),
        status(SENT_WAMID, "deleted", T0 + 5),  # not a delivery status: ignored
    ],
)


def test_a_delivery_is_recorded_and_moves_the_outbound_message(
    client: httpx.Client, local_backend: LocalBackend
) -> None:
    message_id = sent_message(local_backend)

    response = post(client, REALISTIC)

    assert response.status_code == 200
    assert response.json() == {"messages": 3, "statuses": 2, "duplicates": 0}
    assert local_backend.list_inbox(ACCOUNT) == [
        {
            "providerId": "wamid.IN1",
            "from": CONTACT,
            "text": "Does it come in another color?",
            "receivedAt": T0 * 1000,
        },
        {
            "providerId": "wamid.IN2",
            "from": CONTACT,
            "text": "Blue, ideally",
            "receivedAt": (T0 + 1) * 1000,
        },
        {
            "providerId": "wamid.IN3",
            "from": CONTACT,
            "text": "[image]",
            "receivedAt": (T0 + 2) * 1000,
        },
    ]
    [outbound] = local_backend.list_outbox(ACCOUNT)
    assert (outbound["id"], outbound["status"]) == (message_id, "delivered")


def test_a_repeated_delivery_is_recorded_once(
    client: httpx.Client, local_backend: LocalBackend
) -> None:
    sent_message(local_backend)
    assert post(client, REALISTIC).json() == {"messages": 3, "statuses": 2, "duplicates": 0}

    response = post(client, REALISTIC)

    assert response.status_code == 200
    assert response.json() == {"messages": 0, "statuses": 0, "duplicates": 5}
    assert len(local_backend.list_inbox(ACCOUNT)) == 3


def test_a_failed_status_keeps_the_first_error(
    client: httpx.Client, local_backend: LocalBackend
) -> None:
    sent_message(local_backend)
    error = {"code": 131047, "title": "Re-engagement message", "message": "More than 24 hours"}
    response = post(client, delivery(statuses=[status(SENT_WAMID, "failed", errors=[error])]))
    assert response.json() == {"messages": 0, "statuses": 1, "duplicates": 0}
    [outbound] = local_backend.list_outbox(ACCOUNT)
    assert (outbound["status"], outbound["lastError"]) == (
        "failed",
        "131047: Re-engagement message",
    )


def test_a_delivery_for_another_phone_number_is_recorded_under_this_account(
    client: httpx.Client, local_backend: LocalBackend
) -> None:
    payload = delivery([text_message("wamid.IN1", "hi")])
    payload["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = "999"
    assert post(client, payload).status_code == 200
    assert [m["providerId"] for m in local_backend.list_inbox(ACCOUNT)] == ["wamid.IN1"]


# --- backend failures ----------------------------------------------------------------------------


def test_a_backend_failure_is_answered_500_so_meta_retries(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    backend = create_autospec(Backend, instance=True)
    backend.record_webhook.side_effect = BackendError("local database 'x.db': disk I/O error")
    client = serve(backend)

    response = post(client, REALISTIC)

    assert response.status_code == 500
    assert "disk" not in response.text
    backend.record_webhook.assert_called_once()
    assert backend.record_webhook.call_args.args[0] == ACCOUNT
    [line] = webhook_logs(caplog)
    assert line.levelname == "ERROR"
    assert "disk I/O error" in line.getMessage()
    assert "3 messages, 2 statuses" in line.getMessage()


def test_a_closed_local_backend_is_answered_500(
    client: httpx.Client, local_backend: LocalBackend
) -> None:
    local_backend.close()
    assert post(client, REALISTIC).status_code == 500


def test_the_event_loop_serves_others_while_the_backend_records(serve: Serve) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_record(*_: object) -> WebhookRecorded:
        entered.set()
        assert release.wait(10)
        return WebhookRecorded(messages=3, statuses=2, duplicates=0)

    backend = create_autospec(Backend, instance=True)
    backend.record_webhook.side_effect = slow_record
    client = serve(backend)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post, client, REALISTIC)
        wait_for(entered.is_set, what="record_webhook to be called")
        with httpx.Client(base_url=client.base_url, timeout=2) as other:
            assert other.get("/health").status_code == 200  # the loop is not blocked
        assert not answer.done()  # 200 only once the backend returned
        release.set()
        assert answer.result(timeout=10).json() == {"messages": 3, "statuses": 2, "duplicates": 0}


# --- logs -----------------------------------------------------------------------------------


def test_no_log_line_shows_a_secret_or_a_body(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    backend = create_autospec(Backend, instance=True)
    backend.record_webhook.side_effect = BackendError("unreachable")
    client = serve(backend)
    marker = "private-words-of-a-contact"
    body = json.dumps(delivery([text_message("wamid.IN1", marker)])).encode()

    client.get(WEBHOOK_PATH, params={"hub.mode": "subscribe", "hub.verify_token": "guess"})
    client.post(WEBHOOK_PATH, content=body)
    client.post(WEBHOOK_PATH, content=body, headers={SIGNATURE_HEADER: sign(body, "guess")})
    client.post(WEBHOOK_PATH, content=body, headers={SIGNATURE_HEADER: sign(body)})

    levels = [r.levelname for r in webhook_logs(caplog)]
    assert levels == ["WARNING", "WARNING", "WARNING", "ERROR"]
    assert all(r.getMessage().isprintable() for r in webhook_logs(caplog))
    for secret in (APP_SECRET, VERIFY_TOKEN, marker):
        assert secret not in caplog.text


def test_the_routes_refuse_an_empty_secret(local_backend: LocalBackend) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        webhook_routes(ACCOUNT, SecretStr(""), SecretStr(VERIFY_TOKEN), local_backend)
    with pytest.raises(ValueError, match="must not be empty"):
        webhook_routes(ACCOUNT, SecretStr(APP_SECRET), SecretStr(""), local_backend)


# --- parse_delivery ------------------------------------------------------------------------


def test_parse_reads_every_entry_and_change() -> None:
    first, second = delivery([text_message("a", "one")]), delivery([text_message("b", "two")])
    first["entry"][0]["changes"] += second["entry"][0]["changes"]
    first["entry"] += delivery(statuses=[status("c", "sent", T0 + 9)])["entry"]
    messages, statuses = parse_delivery(first)
    assert [(m.provider_id, m.sender, m.text, m.timestamp) for m in messages] == [
        ("a", CONTACT, "one", T0 * 1000),
        ("b", CONTACT, "two", T0 * 1000),
    ]
    assert [(s.provider_id, s.status, s.timestamp, s.error) for s in statuses] == [
        ("c", "sent", (T0 + 9) * 1000, None)
    ]


@pytest.mark.parametrize(
    ("message", "text"),
    [
        (
            {"type": "image", "image": {"id": "1", "caption": "the blue one"}},
            "[image] the blue one",
        ),
        ({"type": "audio", "audio": {"id": "1", "voice": True}}, "[audio]"),
        ({"type": "reaction", "reaction": {"message_id": "m", "emoji": "👍"}}, "[reaction]"),
        ({"type": "unsupported", "errors": [{"code": 131051}]}, "[unsupported]"),
        ({"type": "text", "text": {"body": "é" * (MAX_TEXT_CHARS + 10)}}, "é" * MAX_TEXT_CHARS),
    ],
    ids=["caption", "audio", "reaction", "unsupported", "long-text"],
)
def test_parse_keeps_every_message_type(message: dict[str, Any], text: str) -> None:
    item = {"from": CONTACT, "id": "m1", "timestamp": str(T0), **message}
    [parsed], _ = parse_delivery(delivery([item]))
    assert parsed.text == text


def test_parse_ignores_changes_without_messages_or_statuses() -> None:
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {"id": "1", "changes": [{"field": "account_update", "value": {"event": "VERIFIED"}}]},
            {"id": "2", "time": T0},
        ],
    }
    assert parse_delivery(payload) == ([], [])


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, "the payload: expected an object, got None"),
        ({"entry": []}, "object is None: expected 'whatsapp_business_account'"),
        ({"object": "whatsapp_business_account"}, "entry: expected an array, got None"),
        (delivery([text_message("", "x")]), "messages[0].id: expected a non-empty string, got ''"),
        (delivery([{**text_message("m", "x"), "timestamp": "-1"}]), "timestamp: expected Unix"),
        (delivery([{**text_message("m", "x"), "timestamp": "9" * 5000}]), "...(5000 chars)"),
        (delivery(statuses=[{**status("s", "read"), "timestamp": True}]), "got True"),
        (delivery(statuses=[{"status": "read", "timestamp": "1"}]), "statuses[0].id"),
    ],
)
def test_parse_names_what_is_wrong_in_one_line(payload: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as raised:
        parse_delivery(payload)
    assert str(raised.value).isprintable()
    assert len(str(raised.value)) < 300
