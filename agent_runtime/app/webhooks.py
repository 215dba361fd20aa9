"""WhatsApp webhook ingress: the routes Meta calls at /webhooks/whatsapp.

`GET` answers Meta's subscription handshake. `POST` takes a delivery (a batch of inbound
messages and status updates), checks that Meta signed it, and records it in the backend
before answering. Meta retries every non-200 answer, with backoff, for up to 7 days, so
each status code is chosen for what Meta should do next:

- 200 only after `Backend.record_webhook` returned: an answered delivery is stored.
- 401 (no `X-Hub-Signature-256`) and 403 (a signature that does not match the app secret):
  the delivery is not trusted, and Meta keeps retrying it until the operator fixes
  WHATSAPP_APP_SECRET, so nothing sent meanwhile is lost. One WARNING line per rejected
  request; it never shows the secret or the body.
- 413 for a body over MAX_BODY_BYTES, told by Content-Length before any of the body is
  read, or by the body itself once it grows past the cap (a chunked upload, or a
  Content-Length that lies): no more than the cap is ever buffered.
- 400 for a signed body that is not JSON or not a WhatsApp Business Account delivery, with
  a one-line reason that names the offending value.
- 500 when the backend fails: Meta retries, and retries are harmless because the backend
  records each provider id once (deduplicated for at least 8 days, longer than Meta's
  7 days of retries); the answer says how many items were duplicates.

A worker serves one account (WHATSAPP_ACCOUNT_ID): a delivery for another phone number or
WABA of the same Meta app is recorded under this worker's account id all the same, since
the webhook URL is per app and dropping it would lose messages.
"""

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from agent_runtime.errors import BackendError
from backend.port import Backend
from messages.text import shown
from messages.whatsapp import MAX_TEXT_CHARS, DeliveryStatus, InboundMessage, StatusUpdate

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/whatsapp"
"""Where Meta's app is configured to call (GET for the handshake, POST for deliveries)."""

MAX_BODY_BYTES = 3 * 1024 * 1024
"""The largest delivery accepted. Meta batches at most a few hundred small items (tens
of KB); the cap bounds what one request can make the worker buffer."""

SIGNATURE_HEADER = "X-Hub-Signature-256"
"""`sha256=` and the hex HMAC-SHA256 of the raw body, keyed with the Meta app secret."""

BUSINESS_ACCOUNT_OBJECT = "whatsapp_business_account"
"""The `object` of every WhatsApp Cloud API delivery."""

MAX_TIMESTAMP_DIGITS = 12
"""Unix seconds have 10 digits until the year 2286; more is not a timestamp."""

_DELIVERY_STATUSES: frozenset[DeliveryStatus] = frozenset({"sent", "delivered", "read", "failed"})


def webhook_routes(
    account_id: str,
    app_secret: SecretStr,
    verify_token: SecretStr,
    backend: Backend,
    *,
    agent_id: str | None = None,
) -> list[BaseRoute]:
    """The GET and POST routes at WEBHOOK_PATH, for `HttpServer(..., routes=...)`.

    GET answers 200 with `hub.challenge` (text/plain) when `hub.mode` is `subscribe` and
    `hub.verify_token` equals `verify_token` (constant-time compare), else 403.

    POST checks size (413), signature (401 missing, 403 wrong) and shape (400, see
    `parse_delivery`), records the delivery under `account_id` with
    `backend.record_webhook` (with `agent_id`, WHATSAPP_AGENT_ID, each new inbound message
    also queues a job for that agent, in the same write) in a worker thread (it blocks;
    the event loop does not) and
    answers 200 `{"messages", "statuses", "duplicates"}` once it returned, or 500 if it
    raised BackendError (the write may still have happened, as after a timeout: Meta's
    retry then counts as duplicates).

    Raises:
        ValueError: `app_secret` or `verify_token` is empty (anyone could sign with an
            empty key, or pass an empty token).
    """
    secret = app_secret.get_secret_value().encode()
    token = verify_token.get_secret_value().encode()
    if not secret or not token:
        raise ValueError("the WhatsApp app secret and verify token must not be empty")

    async def handshake(request: Request) -> Response:
        params = request.query_params
        given = params.get("hub.verify_token", "").encode()
        challenge = params.get("hub.challenge")
        token_matches = hmac.compare_digest(given, token)
        if params.get("hub.mode") != "subscribe" or not token_matches or challenge is None:
            logger.warning(
                "refused a WhatsApp webhook handshake: expected hub.mode 'subscribe', the"
                " WHATSAPP_VERIFY_TOKEN and a hub.challenge (got mode %s, %s token)",
                shown(params.get("hub.mode")),
                "the right" if token_matches else "a wrong",
            )
            return PlainTextResponse("forbidden", status_code=403)
        return PlainTextResponse(challenge)

    async def deliver(request: Request) -> Response:
        body = await _signed_body(request, secret)
        if isinstance(body, Response):
            return body
        try:
            messages, statuses = parse_delivery(json.loads(body))
        except (ValueError, RecursionError) as error:  # bad JSON, UTF-8 or nesting too
            reason = f"not a WhatsApp delivery: {error}"
            logger.warning("refused a WhatsApp webhook delivery (400): %s", reason)
            return _error(400, reason)
        if not messages and not statuses:  # e.g. an account_update: nothing to store
            return JSONResponse({"messages": 0, "statuses": 0, "duplicates": 0})
        try:
            recorded = await run_in_threadpool(
                backend.record_webhook, account_id, messages, statuses, agent_id
            )
        except BackendError as error:
            logger.error(
                "could not record a WhatsApp webhook delivery (%d messages, %d statuses),"
                " answered 500 so Meta retries it: %s",
                len(messages),
                len(statuses),
                error,
            )
            return _error(500, "the delivery could not be stored; retry later")
        return JSONResponse(recorded.model_dump())

    return [
        Route(WEBHOOK_PATH, handshake, methods=["GET"]),
        Route(WEBHOOK_PATH, deliver, methods=["POST"]),
    ]


def parse_delivery(payload: Any) -> tuple[list[InboundMessage], list[StatusUpdate]]:
    """The inbound messages and status updates of one decoded webhook delivery, in order.

    Reads `entry[].changes[].value.messages[]` and `.statuses[]`; a change without either
    (an account or template update) adds nothing. A text message keeps its body; any other
    type (image, audio, location, reaction, ...) is recorded too, as `[type]` (followed by
    its caption if it has one), so that nothing a contact sent is silently dropped. Text
    longer than MAX_TEXT_CHARS is cut to it. Timestamps (Unix seconds, as strings) become
    epoch milliseconds. A status update keeps `sent`, `delivered`, `read` and `failed`
    (with `code: title` of its first error, if any); other statuses are ignored. Which
    phone number or WABA the delivery is for is not read.

    Raises:
        ValueError: `payload` is not a WhatsApp Business Account delivery, or an item in
            it lacks a field or has one of the wrong type; the one-line message names the
            field's path and quotes the offending value.
    """
    delivery = _object(payload, "the payload")
    if delivery.get("object") != BUSINESS_ACCOUNT_OBJECT:
        raise ValueError(
            f"object is {shown(delivery.get('object'))}: expected {BUSINESS_ACCOUNT_OBJECT!r}"
        )
    messages: list[InboundMessage] = []
    statuses: list[StatusUpdate] = []
    for e, entry in enumerate(_array(delivery.get("entry"), "entry")):
        changes = _object(entry, f"entry[{e}]").get("changes", [])
        for c, change in enumerate(_array(changes, f"entry[{e}].changes")):
            path = f"entry[{e}].changes[{c}]"
            value = _object(_object(change, path).get("value"), f"{path}.value")
            path += ".value"
            for m, item in enumerate(_array(value.get("messages", []), f"{path}.messages")):
                messages.append(_inbound(item, f"{path}.messages[{m}]"))
            for s, item in enumerate(_array(value.get("statuses", []), f"{path}.statuses")):
                update = _status(item, f"{path}.statuses[{s}]")
                if update is not None:
                    statuses.append(update)
    return messages, statuses


def _inbound(item: Any, path: str) -> InboundMessage:
    message = _object(item, path)
    kind = _string(message.get("type"), f"{path}.type")
    if kind == "text":
        text_body = _object(message.get("text"), f"{path}.text").get("body")
        text = _string(text_body, f"{path}.text.body", allow_empty=True)
    else:
        text = _placeholder(kind, message.get(kind))
    return InboundMessage(
        provider_id=_string(message.get("id"), f"{path}.id"),
        sender=_string(message.get("from"), f"{path}.from"),
        text=text[:MAX_TEXT_CHARS],
        timestamp=_seconds(message.get("timestamp"), f"{path}.timestamp") * 1000,
    )


def _placeholder(kind: str, content: Any) -> str:
    """`[image]`, or `[image] the caption` for media sent with one."""
    caption = content.get("caption") if isinstance(content, Mapping) else None
    return f"[{kind}] {caption}" if isinstance(caption, str) and caption else f"[{kind}]"


def _status(item: Any, path: str) -> StatusUpdate | None:
    update = _object(item, path)
    status = update.get("status")
    if status not in _DELIVERY_STATUSES:
        return None
    return StatusUpdate(
        provider_id=_string(update.get("id"), f"{path}.id"),
        status=status,
        timestamp=_seconds(update.get("timestamp"), f"{path}.timestamp") * 1000,
        error=_first_error(update.get("errors")),
    )


def _first_error(errors: Any) -> str | None:
    """`code: title` of the first error Meta gave (either alone if the other is missing)."""
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], Mapping):
        return None
    parts = [str(errors[0][k]) for k in ("code", "title") if errors[0].get(k) is not None]
    return ": ".join(parts) or None


async def _signed_body(request: Request, secret: bytes) -> bytes | Response:
    """The raw body if it is within MAX_BODY_BYTES and signed with `secret`, else the
    answer that refuses it (413, 401, 403), logged."""
    try:
        body = await _capped_body(request)
    except ClientDisconnect:
        return Response(status_code=400)  # the client left: nobody reads this answer
    if body is None:
        logger.warning("refused a WhatsApp webhook delivery over %d bytes (413)", MAX_BODY_BYTES)
        return _error(413, f"the body is over {MAX_BODY_BYTES} bytes")
    signature = request.headers.get(SIGNATURE_HEADER)
    if signature is None:
        logger.warning(
            "refused a WhatsApp webhook delivery without %s (401): Meta retries it;"
            " only Meta's signed deliveries are accepted",
            SIGNATURE_HEADER,
        )
        return _error(401, f"missing {SIGNATURE_HEADER}")
    if not _signature_matches(signature, body, secret):
        logger.warning(
            "refused a WhatsApp webhook delivery whose %s does not match (403): Meta"
            " retries it until WHATSAPP_APP_SECRET is the Meta app's secret",
            SIGNATURE_HEADER,
        )
        return _error(403, f"{SIGNATURE_HEADER} does not match the body")
    return body


async def _capped_body(request: Request) -> bytes | None:
    """The raw body, or None as soon as it is (or announces itself as) over MAX_BODY_BYTES:
    the rest is never read into memory."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


def _signature_matches(header: str, body: bytes, secret: bytes) -> bool:
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    # Header values are latin-1: any header encodes, and a wrong one compares unequal.
    return hmac.compare_digest(header.strip().lower().encode("latin-1"), expected.encode())


def _error(status_code: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status_code)


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}: expected an object, got {shown(value)}")
    return value


def _array(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{path}: expected an array, got {shown(value)}")
    return value


def _string(value: Any, path: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or not (value or allow_empty):
        expected = "a string" if allow_empty else "a non-empty string"
        raise ValueError(f"{path}: expected {expected}, got {shown(value)}")
    return value


def _seconds(value: Any, path: str) -> int:
    """Unix seconds, as Meta sends them (a string of digits) or as a whole number."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if (
        isinstance(value, str)
        and value.isascii()
        and value.isdigit()
        and len(value) <= MAX_TIMESTAMP_DIGITS
    ):
        return int(value)
    raise ValueError(f"{path}: expected Unix seconds (a string of digits), got {shown(value)}")
