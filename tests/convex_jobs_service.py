"""The `service/jobs:*` functions of `LocalService`, on a real `LocalBackend`: the same
arguments, results and error codes as the reference functions in convex/."""

from typing import Any

from pydantic import ValidationError

from backend.local import LocalBackend
from messages.agent import describe_validation_error
from messages.jobs import CONVERSATION, MAX_INPUT_CHARS, Conversation, Usage
from tests.convex_pages import PAGE_ARGS, page_of
from tests.convex_whatsapp_service import Function
from tests.fake_convex import ServiceError, charge
from tests.service_args import label, string, whole

JOB_STATUSES = ("queued", "running", "done", "failed", "dead")
JOB_KINDS = ("task", "wakeup")
MAX_AGENT_IDS = 1000


def jobs_functions(backend: LocalBackend) -> dict[str, Function]:
    """path -> (kind, implementation, the arguments it takes besides serviceKey)."""

    def enqueue(a: dict[str, Any]) -> dict[str, str]:
        key = label(a, "idempotencyKey") if "idempotencyKey" in a else None
        conversation = _conversation(a["conversation"]) if "conversation" in a else None
        kind = a.get("kind", "task")
        if kind not in JOB_KINDS:
            raise ServiceError("INVALID_ARGUMENT", f"kind: one of {JOB_KINDS}, got {kind!r}")
        job_id = backend.enqueue_job(
            string(a, "agentId"), _text(a, "input", 1), conversation, key, kind=kind
        )
        return {"id": job_id}

    def claim(a: dict[str, Any]) -> list[dict[str, Any]]:
        agent_ids = a.get("agentIds")
        if (
            not isinstance(agent_ids, list)
            or not 0 < len(agent_ids) <= MAX_AGENT_IDS
            or not all(isinstance(i, str) for i in agent_ids)
        ):
            raise ServiceError(
                "INVALID_ARGUMENT", f"agentIds: expected 1 to {MAX_AGENT_IDS} strings"
            )
        limit = whole(a, "limit", 1, 100)
        # Each agent's running and next queued job; each claimed job written.
        charge(read=2 * len(agent_ids), written=limit)
        claimed = backend.claim_jobs(
            agent_ids,
            label(a, "workerId"),
            limit=limit,
            lock_ms=whole(a, "lockMs", 1000, 600_000),
            max_attempts=whole(a, "maxAttempts", 1, 100),
        )
        return [job.model_dump(by_alias=True) for job in claimed]

    def renew(a: dict[str, Any]) -> dict[str, int]:
        locked_until = backend.renew_job(
            string(a, "id"), string(a, "claimToken"), whole(a, "lockMs", 1000, 600_000)
        )
        return {"lockedUntil": locked_until}

    def complete(a: dict[str, Any]) -> dict[str, Any]:
        try:
            usage = Usage.model_validate(a.get("usage"))
        except ValidationError as error:
            raise ServiceError("INVALID_ARGUMENT", describe_validation_error(error)) from None
        reply_id = backend.complete_job(
            string(a, "id"),
            string(a, "claimToken"),
            session_key=label(a, "sessionKey"),
            result=_text(a, "result", 0),
            usage=usage,
            steps=whole(a, "steps", 0),
        )
        return {"status": "done", "replyId": reply_id}

    def release(a: dict[str, Any]) -> dict[str, bool]:
        return {"released": backend.release_job(string(a, "id"), label(a, "claimToken"))}

    def fail(a: dict[str, Any]) -> dict[str, str]:
        status = backend.fail_job(
            string(a, "id"),
            string(a, "claimToken"),
            error=string(a, "error"),
            retry_at_ms=whole(a, "retryAt", 0) if "retryAt" in a else None,
            max_attempts=whole(a, "maxAttempts", 1, 100),
        )
        return {"status": status}

    def listing(a: dict[str, Any]) -> dict[str, Any]:
        status = a.get("status")
        if status is not None and status not in JOB_STATUSES:
            raise ServiceError("INVALID_ARGUMENT", f"status: one of {JOB_STATUSES}")
        agent_id = string(a, "agentId") if "agentId" in a else None
        return page_of(backend.list_jobs(agent_id, status), a)

    def history(a: dict[str, Any]) -> list[dict[str, Any]]:
        turns = backend.conversation_history(
            _conversation(a.get("conversation")),
            label(a, "sessionKey"),
            whole(a, "limit", 1, 200),
        )
        return [turn.model_dump(by_alias=True) for turn in turns]

    return {
        "service/jobs:enqueue": (
            "mutation",
            enqueue,
            {"agentId", "kind", "input", "conversation", "idempotencyKey"},
        ),
        "service/jobs:claim": (
            "mutation",
            claim,
            {"agentIds", "workerId", "limit", "lockMs", "maxAttempts"},
        ),
        "service/jobs:renew": ("mutation", renew, {"id", "claimToken", "lockMs"}),
        "service/jobs:complete": (
            "mutation",
            complete,
            {"id", "claimToken", "sessionKey", "result", "usage", "steps"},
        ),
        "service/jobs:release": ("mutation", release, {"id", "claimToken"}),
        "service/jobs:version": ("query", lambda a: backend.jobs_version(), set()),
        "service/jobs:fail": (
            "mutation",
            fail,
            {"id", "claimToken", "error", "retryAt", "maxAttempts"},
        ),
        "service/jobs:get": ("query", lambda a: backend.get_job(string(a, "id")), {"id"}),
        "service/jobs:list": ("query", listing, {"agentId", "status", *PAGE_ARGS}),
        "service/jobs:history": ("query", history, {"conversation", "sessionKey", "limit"}),
    }


def _text(args: dict[str, Any], name: str, min_chars: int) -> str:
    value = string(args, name)
    if not min_chars <= len(value) <= MAX_INPUT_CHARS:
        raise ServiceError(
            "INVALID_ARGUMENT", f"{name}: {min_chars} to {MAX_INPUT_CHARS} characters"
        )
    return value


def _conversation(value: Any) -> Conversation:
    """Exactly the fields of its channel (as the reference functions); a WhatsApp contact
    as stored, without its "+"."""
    try:
        conversation = CONVERSATION.validate_python(value)
    except ValidationError as error:
        raise ServiceError("INVALID_ARGUMENT", describe_validation_error(error)) from None
    fields = {str(field.alias) for field in type(conversation).model_fields.values()}
    if set(value) != fields:
        raise ServiceError(
            "INVALID_ARGUMENT", f"conversation: expected exactly {sorted(fields)}, got {value!r}"
        )
    if conversation.channel == "whatsapp":
        return conversation.model_copy(update={"contact": conversation.contact.removeprefix("+")})
    return conversation
