"""The `service/whatsapp:*` functions of `LocalService`, on a real `LocalBackend`: the same
arguments, results and error codes as the reference functions in convex/."""

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from backend.local import LocalBackend
from messages.agent import describe_validation_error
from messages.whatsapp import InboundMessage, Lease, StatusUpdate
from tests.convex_pages import PAGE_ARGS, page_of
from tests.fake_convex import ServiceError, charge
from tests.service_args import label, string, whole

Function = tuple[str, Callable[[dict[str, Any]], Any], set[str]]

Item = TypeVar("Item", InboundMessage, StatusUpdate)

MAX_WEBHOOK_ITEMS = 100
OUTBOUND_STATUSES = ("queued", "sending", "sent", "delivered", "read", "failed")


def whatsapp_functions(backend: LocalBackend) -> dict[str, Function]:
    """path -> (kind, implementation, the arguments it takes besides serviceKey)."""

    def acquire(a: dict[str, Any]) -> dict[str, Any]:
        lease = backend.acquire_lease(
            label(a, "accountId"), label(a, "ownerId"), whole(a, "ttlMs", 1000, 600_000)
        )
        return _lease(lease, held=True)

    def release_lease(a: dict[str, Any]) -> dict[str, bool]:
        released = backend.release_lease(
            label(a, "accountId"), label(a, "ownerId"), whole(a, "epoch", 1)
        )
        return {"released": released}

    def get_lease(a: dict[str, Any]) -> dict[str, Any] | None:
        lease = backend.get_lease(label(a, "accountId"))
        return _lease(lease, held=False) if lease is not None else None

    def enqueue(a: dict[str, Any]) -> dict[str, str]:
        key = label(a, "idempotencyKey") if "idempotencyKey" in a else None
        to, text = string(a, "to"), string(a, "text")
        return {"id": backend.enqueue_outbound(label(a, "accountId"), to, text, key)}

    def claim(a: dict[str, Any]) -> list[dict[str, Any]]:
        claimed = backend.claim_outbound(
            label(a, "accountId"),
            label(a, "ownerId"),
            whole(a, "epoch", 1),
            limit=whole(a, "limit", 1, 100),
            lock_ms=whole(a, "lockMs", 1000, 600_000),
            max_attempts=whole(a, "maxAttempts", 1, 100),
        )
        return [m.model_dump(by_alias=True) for m in claimed]

    def mark_sent(a: dict[str, Any]) -> None:
        backend.mark_sent(
            string(a, "id"), string(a, "claimToken"), whole(a, "epoch", 1), label(a, "wamid")
        )

    def mark_failed(a: dict[str, Any]) -> dict[str, str]:
        status = backend.mark_failed(
            string(a, "id"),
            string(a, "claimToken"),
            whole(a, "epoch", 1),
            error=string(a, "error"),
            retry_at_ms=whole(a, "retryAt", 0) if "retryAt" in a else None,
            max_attempts=whole(a, "maxAttempts", 1, 100),
        )
        return {"status": status}

    def release(a: dict[str, Any]) -> dict[str, bool]:
        not_before = whole(a, "notBefore", 0) if "notBefore" in a else None
        return {
            "released": backend.release_outbound(
                string(a, "id"), string(a, "claimToken"), not_before
            )
        }

    def record(a: dict[str, Any]) -> dict[str, int]:
        messages = [_item(InboundMessage, m) for m in _array(a, "messages")]
        statuses = [_item(StatusUpdate, s) for s in _array(a, "statuses")]
        agent_id = string(a, "agentId") if "agentId" in a else None
        # A dedupe read per item; a message and its job, a status and its message written.
        charge(read=len(messages) + len(statuses), written=2 * (len(messages) + len(statuses)))
        recorded = backend.record_webhook(label(a, "accountId"), messages, statuses, agent_id)
        return recorded.model_dump()

    def outbox(a: dict[str, Any]) -> dict[str, Any]:
        status = a.get("status")
        if status is not None and status not in OUTBOUND_STATUSES:
            raise ServiceError("INVALID_ARGUMENT", f"status: one of {OUTBOUND_STATUSES}")
        return page_of(backend.list_outbox(label(a, "accountId"), status), a)

    return {
        "service/whatsapp:acquireLease": ("mutation", acquire, {"accountId", "ownerId", "ttlMs"}),
        "service/whatsapp:releaseLease": (
            "mutation",
            release_lease,
            {"accountId", "ownerId", "epoch"},
        ),
        "service/whatsapp:getLease": ("query", get_lease, {"accountId"}),
        "service/whatsapp:enqueue": (
            "mutation",
            enqueue,
            {"accountId", "to", "text", "idempotencyKey"},
        ),
        "service/whatsapp:claimOutbound": (
            "mutation",
            claim,
            {"accountId", "ownerId", "epoch", "limit", "lockMs", "maxAttempts"},
        ),
        "service/whatsapp:markSent": (
            "mutation",
            mark_sent,
            {"id", "claimToken", "epoch", "wamid"},
        ),
        "service/whatsapp:markFailed": (
            "mutation",
            mark_failed,
            {"id", "claimToken", "epoch", "error", "retryAt", "maxAttempts"},
        ),
        "service/whatsapp:release": ("mutation", release, {"id", "claimToken", "notBefore"}),
        "service/whatsapp:recordWebhook": (
            "mutation",
            record,
            {"accountId", "messages", "statuses", "agentId"},
        ),
        "service/whatsapp:listOutbox": ("query", outbox, {"accountId", "status", *PAGE_ARGS}),
        "service/whatsapp:listInbox": (
            "query",
            lambda a: page_of(backend.list_inbox(label(a, "accountId")), a),
            {"accountId", *PAGE_ARGS},
        ),
    }


def _lease(lease: Lease, *, held: bool) -> dict[str, Any]:
    row = lease.model_dump(by_alias=True)
    if held:
        row["held"] = lease.held
    else:
        del row["held"]
    return row


def _array(args: dict[str, Any], name: str) -> list[Any]:
    value = args.get(name)
    if not isinstance(value, list) or len(value) > MAX_WEBHOOK_ITEMS:
        raise ServiceError(
            "INVALID_ARGUMENT", f"{name}: an array of at most {MAX_WEBHOOK_ITEMS} items"
        )
    return value


def _item(kind: type[Item], item: Any) -> Item:
    try:
        return kind.model_validate(item)
    except ValidationError as error:
        raise ServiceError("INVALID_ARGUMENT", describe_validation_error(error)) from None
