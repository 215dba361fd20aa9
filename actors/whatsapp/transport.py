"""The send path of the WhatsAppActor: one text message, one POST to the Cloud API, one
classified `SendResult`.

A transport never retries and never sleeps: the actor owns attempts, backoff and pacing,
and `SendResult` tells it which to apply (`sent`, `retry`, `permanent`, `pause`). Calls
block up to the transport's timeout; the actor calls them from its own thread.

`CloudTransport` speaks the Graph API (`POST /{version}/{phone-number-id}/messages`);
`ConsoleTransport` only logs, for local work. The access token is only ever placed in
the Authorization header: never in a reason, a log line or a repr.

A Cloud API send has no idempotency key: a timeout after the request went out may hide
an accepted message, so a retry of it can duplicate (the reason says so).
"""

import logging
import math
import secrets
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import httpx
from pydantic import SecretStr

from messages.text import cut, escape_controls

logger = logging.getLogger(__name__)

__all__ = [
    "CONSOLE_TEXT_CHARS",
    "MAX_REASON_CHARS",
    "PAIR_RATE_LIMIT_CODES",
    "PAUSE_CODES",
    "PAUSE_CODE_RANGE",
    "PERMANENT_CODES",
    "PERMANENT_CODE_RANGE",
    "RATE_LIMIT_CODES",
    "RETRY_AFTER_STATUSES",
    "TEMPORARY_CODES",
    "CloudTransport",
    "ConsoleTransport",
    "SendKind",
    "SendResult",
    "Transport",
    "classify",
]

MAX_REASON_CHARS = 300
"""A reason is stored on the message and logged: one line, cut past this length."""

CONSOLE_TEXT_CHARS = 200
"""How much of a text ConsoleTransport logs."""

# The Cloud API's error codes (error.code of a Graph error body), by what the sender does.
# Unknown codes are retried: the caller's attempt limit ends a code that never clears.

RATE_LIMIT_CODES: frozenset[int] = frozenset({4, 80007, 130429})
"""Retry after a backoff: the app's (4), the business account's (80007) or the number's
(130429) throughput is spent for now."""

PAIR_RATE_LIMIT_CODES: frozenset[int] = frozenset({131056})
"""Retry after a backoff, pacing only that contact: too many messages to one recipient
in a short time (the account may keep sending to others)."""

TEMPORARY_CODES: frozenset[int] = frozenset({1, 2, 131000, 131016, 133004})
"""Retry after a backoff: Meta failed or is unavailable for now (unknown error, service
error, something went wrong, service unavailable, server temporarily unavailable)."""

PERMANENT_CODES: frozenset[int] = frozenset({100, 131008, 131009, 131021, 131026, 131047, 131051})
"""Fail the message: it can never go out as it is (invalid or missing parameter, the
recipient is the sender or cannot receive it, outside the 24 h window, unsupported type);
sending it again repeats the error."""

PERMANENT_CODE_RANGE = range(132000, 133000)
"""Fail the message: template errors (132xxx) belong to the message, not the account."""

PAUSE_CODES: frozenset[int] = frozenset({0, 10, 190, 368, 131031, 131042})
"""Pause the account's sending: no message can go out until an operator acts (token
invalid or expired, permission denied, account blocked for policy, locked, payment)."""

PAUSE_CODE_RANGE = range(200, 300)
"""Pause the account's sending: a Graph API permission is missing or revoked (2xx codes)."""

RETRY_AFTER_STATUSES = frozenset({429, 503})
"""The statuses whose `Retry-After` header (seconds) is passed on in `retry_after_s`."""

SendKind = Literal["sent", "retry", "permanent", "pause"]


def _reason(text: str) -> str:
    return cut(escape_controls(text), MAX_REASON_CHARS)


@dataclass(frozen=True)
class SendResult:
    """What one send attempt came to; build it with the class-method constructors.

    kind: `sent` (Meta accepted it: `wamid`), `retry` (try again after a backoff, or
    after `retry_after_s` when Meta said; `per_recipient`: pace that contact, not the
    account), `permanent` (fail the message with `reason`) or `pause` (stop the account's
    sending; `reason` says what an operator must fix).
    reason: one line, at most MAX_REASON_CHARS (plus the cut marker); "" when sent.
    """

    kind: SendKind
    wamid: str | None = None
    reason: str = ""
    retry_after_s: float | None = None
    per_recipient: bool = False
    per_account: bool = False
    """The account is throttled (rate limits, 429): every message must wait, and this one
    did not fail through any fault of its own."""
    may_have_sent: bool = False
    """The request went out and no answer came back: Meta may have accepted it, so a
    retry may send it twice (counted by the sender)."""

    @classmethod
    def sent(cls, wamid: str) -> "SendResult":
        """Meta accepted the message under `wamid`."""
        return cls("sent", wamid=wamid)

    @classmethod
    def retry(
        cls,
        reason: str,
        retry_after_s: float | None = None,
        *,
        per_recipient: bool = False,
        per_account: bool = False,
    ) -> "SendResult":
        """Not sent this time; worth another attempt (`reason` is cut and escaped)."""
        return cls(
            "retry",
            reason=_reason(reason),
            retry_after_s=retry_after_s,
            per_recipient=per_recipient,
            per_account=per_account,
        )

    @classmethod
    def permanent(cls, reason: str) -> "SendResult":
        """Never sendable as it is; fail the message with `reason` (cut and escaped)."""
        return cls("permanent", reason=_reason(reason))

    @classmethod
    def pause(cls, reason: str) -> "SendResult":
        """The account cannot send; pause it with `reason` (cut and escaped)."""
        return cls("pause", reason=_reason(reason))


def classify(
    status_code: int | None,
    error_code: int | None,
    message: str,
    *,
    retry_after_s: float | None = None,
) -> SendResult:
    """The SendResult for a failed send: by the Graph `error_code` when it is a known one
    (see the *_CODES constants), else retry.

    status_code is the HTTP status, None for a transport error (no answer). `message` is
    the detail for the reason; the caller must have removed any secret from it.
    `retry_after_s` (Meta's Retry-After) is kept on a retry only. Never raises.
    """
    where = [f"error {error_code}"] if error_code is not None else []
    where += [f"HTTP {status_code}"] if status_code is not None else ["transport error"]
    reason = f"{', '.join(where)}: {message}"
    if error_code is not None:
        if error_code in PAIR_RATE_LIMIT_CODES:
            return SendResult.retry(reason, retry_after_s, per_recipient=True)
        if error_code in PERMANENT_CODES or error_code in PERMANENT_CODE_RANGE:
            return SendResult.permanent(reason)
        if error_code in PAUSE_CODES or error_code in PAUSE_CODE_RANGE:
            return SendResult.pause(reason)
    if error_code in RATE_LIMIT_CODES or (error_code is None and status_code == 429):
        return SendResult.retry(reason, retry_after_s, per_account=True)
    # TEMPORARY_CODES, unknown codes, 5xx, transport errors, and any answer without a code.
    return SendResult.retry(reason, retry_after_s)


class Transport(Protocol):
    """What the WhatsAppActor sends through."""

    def send_text(self, to: str, text: str) -> SendResult:
        """Send `text` to `to` once; block until answered or timed out. Never raises for
        a failed send: the result says what happened."""
        ...

    def close(self) -> None:
        """Release connections; a send in progress may fail (as a retry)."""
        ...


class CloudTransport:
    """Sends through Meta's Cloud API at `graph_url` (https://graph.facebook.com) as the
    number `phone_number_id`, one shared `httpx.Client` whose connect and read timeouts
    are `timeout_s` each."""

    def __init__(
        self,
        graph_url: str,
        api_version: str,
        phone_number_id: str,
        access_token: SecretStr,
        timeout_s: float,
    ) -> None:
        self.url = f"{graph_url.rstrip('/')}/{api_version}/{phone_number_id}/messages"
        self._token = access_token
        self._timeout_s = timeout_s
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            headers={"Authorization": f"Bearer {access_token.get_secret_value()}"},
        )

    def __repr__(self) -> str:
        return f"CloudTransport({self.url})"

    def send_text(self, to: str, text: str) -> SendResult:
        """One POST of a text message (no link preview). 2xx with `messages[0].id`: sent;
        a Graph error body: `classify`; a 2xx without an id, a timeout or a connection
        failure: retry. Never raises."""
        body = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "text",
            "text": {"preview_url": False, "body": text},
        }
        try:
            response = self._http.post(self.url, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            return classify(None, None, f"cannot connect: {self._redact(repr(error))}")
        except httpx.TimeoutException:
            reason = f"no answer in {self._timeout_s} s (Meta may have accepted it)"
            return replace(classify(None, None, reason), may_have_sent=True)
        except httpx.HTTPError as error:
            detail = self._redact(repr(error))
            reason = f"connection failed (Meta may have accepted it): {detail}"
            return replace(classify(None, None, reason), may_have_sent=True)
        return self._result(response)

    def close(self) -> None:
        """Close the connection pool (a send in progress fails as a retry)."""
        self._http.close()

    def _result(self, response: httpx.Response) -> SendResult:
        status = response.status_code
        try:
            answer: Any = response.json()
        except ValueError:  # not JSON, or not even UTF-8
            answer = None
        if 200 <= status < 300:
            wamid = _wamid(answer)
            if wamid is None:
                shown = self._redact(cut(response.text, 200))
                return SendResult.retry(f"unexpected answer (HTTP {status}): {shown}")
            return SendResult.sent(wamid)
        retry_after_s = (
            _retry_after_s(response.headers.get("retry-after"))
            if status in RETRY_AFTER_STATUSES
            else None
        )
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, dict):
            shown = self._redact(cut(response.text, 200)) or "(no body)"
            return classify(status, None, shown, retry_after_s=retry_after_s)
        return classify(
            status,
            _code(error.get("code")),
            self._redact(_error_text(error)),
            retry_after_s=retry_after_s,
        )

    def _redact(self, text: str) -> str:
        # A proxy or an error page could echo the request's headers.
        return text.replace(self._token.get_secret_value(), "***")


class ConsoleTransport:
    """Logs each message (one INFO line) instead of sending it, and reports it sent; for
    local work without a Meta account."""

    def __repr__(self) -> str:
        return "ConsoleTransport()"

    def send_text(self, to: str, text: str) -> SendResult:
        """Log `to` and the text (cut to CONSOLE_TEXT_CHARS); sent as `console.<hex>`."""
        logger.info("whatsapp (console) to=%s text=%s", to, cut(text, CONSOLE_TEXT_CHARS))
        return SendResult.sent(f"console.{secrets.token_hex(8)}")

    def close(self) -> None:
        """Nothing to release."""


def _wamid(answer: Any) -> str | None:
    messages = answer.get("messages") if isinstance(answer, dict) else None
    first = messages[0] if isinstance(messages, list) and messages else None
    wamid = first.get("id") if isinstance(first, dict) else None
    return wamid if isinstance(wamid, str) and wamid else None


def _code(value: Any) -> int | None:
    """Graph sends codes as numbers; some proxies as digit strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _error_text(error: dict[str, Any]) -> str:
    """Graph's message, its subcode and its human detail (`error_data.details`)."""
    text = str(error.get("message") or "(no message)")
    subcode = error.get("error_subcode")
    if subcode is not None:
        text += f" (subcode {subcode})"
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    if isinstance(details, str) and details:
        text += f": {details}"
    return text


def _retry_after_s(value: str | None) -> float | None:
    """A Retry-After in seconds; None when absent or not seconds (an HTTP date)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
