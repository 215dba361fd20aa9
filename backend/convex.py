"""The Convex backend: Convex's HTTP function API, through one shared `httpx.Client`.

Every call is `POST {CONVEX_URL}/api/query|mutation|action` with
`{path, args, format: "json"}`, `args` encoded with `convex.values` and carrying
`serviceKey`. Answers map to typed errors (agent_runtime.errors); `backend.retry` retries
only what is safe. The secret is only ever placed in request bodies: never in a log
line, an error message or a repr.

Every call stays well within Convex's limits whatever the number of agents: lists are
read page by page, batches are written in chunks (docs/convex.md, "Limits").

The WebSocket `ConvexClient` is deliberately not used for calls: its blocking calls hold
the GIL for their whole duration and have no timeout (see DESIGN.md).
"""

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, cast

import httpx
from convex.values import convex_to_json
from pydantic import BaseModel, SecretStr, ValidationError

from agent_runtime import __version__
from agent_runtime.errors import (
    AgentNotFound,
    ApplicationError,
    Fenced,
    FunctionError,
    InvalidAgent,
    InvalidArgument,
    JobNotFound,
    MessageNotFound,
    ServiceKeyRejected,
    WorkerIdTaken,
)
from backend.convex_watch import ChangeFeed
from backend.port import CLOSE_TIMEOUT_S, Backend, ChangeSignal, FeedState
from backend.retry import Unavailable, call_with_retries
from messages import AgentRecord, Heartbeat
from messages.agent import describe_validation_error, parse_agent_row
from messages.jobs import ClaimedJob, Conversation, JobKind, JobStatus, Turn, Usage
from messages.whatsapp import (
    ClaimedMessage,
    InboundMessage,
    Lease,
    OutboundStatus,
    StatusUpdate,
    WebhookRecorded,
)

Parsed = TypeVar("Parsed", bound=BaseModel)

DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 10.0

AGENTS_VERSION = "service/agents:version"
JOBS_VERSION = "service/jobs:version"
"""The change signals: cheap queries, polled or subscribed to."""

CLIENT_VERSION = __version__ if re.fullmatch(r"\d+\.\d+\.\d+", __version__) else "0.0.0"
"""Convex refuses a `Convex-Client` header whose version is not semver (400)."""

WEBHOOK_CHUNK = 100
"""The most messages (and statuses) `service/whatsapp:recordWebhook` takes in one call:
100 of the longest messages, each also queued as a job, write about 3.2 MiB."""

PRESENCE_CHUNK = 1000
"""Beats per `service/presence:recordHeartbeats` call, and agent ids per `markOffline`
call: the functions' maximum. Each costs about one index range, one ~100-byte presence
document read and one write, so a full chunk stays well under Convex's per-transaction
limits (4,096 ranges, 16,384 documents read, 8,192 written; docs/convex.md, "Limits").
Few large calls matter at a stop: 20,000 agents are marked offline in 20 calls."""

LISTED_MAX = 1000
"""The most rows `list_jobs`, `list_outbox` and `list_inbox` return (the port's bound)."""

UDF_FAILED_STATUS = 560
"""Older deployments answer a failed function with this status instead of 200."""


class ConvexBackend(Backend):
    """The backend port over a Convex deployment at `url` running the reference functions
    in `convex/` (or functions with the same contract, see contract/README.md)."""

    def __init__(
        self,
        url: str,
        secret: SecretStr,
        *,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        subscribe: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        self._secret = secret
        self._subscribe = subscribe
        self._http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            headers={"Convex-Client": f"agent-runtime-{CLIENT_VERSION}"},
        )

    signal_poll_s = 0.25  # in poll mode, each read is a billed function call

    def __repr__(self) -> str:
        return f"convex:{self.url}"

    # --- the port ---------------------------------------------------------------------

    def list_agents(self) -> list[dict[str, Any]]:
        return self._every_row("service/agents:list", {})

    def agents_and_workers(self) -> tuple[list[dict[str, Any]], list[str]]:
        agents: list[dict[str, Any]] = []
        workers: list[str] = []
        for page in self._pages("service/agents:snapshot", {}):
            agents += _rows(page.get("page"))
            workers = _ids(page.get("workers"))  # every page has them: the last is the latest
        return agents, workers

    def agents_version(self) -> str:
        return self._change_signal(AGENTS_VERSION)

    def list_presence(self) -> list[dict[str, Any]]:
        return self._every_row("service/presence:list", {})

    def record_heartbeats(self, beats: Sequence[Heartbeat]) -> list[str]:
        refused: list[str] = []
        for start in range(0, len(beats), PRESENCE_CHUNK):
            chunk = beats[start : start + PRESENCE_CHUNK]
            # Setting lastHeartbeatAt to max(old, atMs) twice is harmless.
            args = {"beats": [{"agentId": b.agent_id, "atMs": b.at_ms} for b in chunk]}
            answer = self._call(
                "mutation", "service/presence:recordHeartbeats", args, idempotent=True
            )
            part = answer.get("refused") if isinstance(answer, dict) else None
            if not isinstance(part, list) or not all(isinstance(r, str) for r in part):
                raise FunctionError(f"expected {{refused: [agentId]}}, got {str(answer)[:80]}")
            refused += part
        return refused

    def register_worker(self, worker_id: str, instance_id: str, ttl_ms: int) -> list[str]:
        args = {"workerId": worker_id, "instanceId": instance_id, "ttlMs": ttl_ms}
        try:
            # A retry after a lost answer renews what the first attempt registered.
            answer = self._call("mutation", "service/workers:heartbeat", args, idempotent=True)
        except ApplicationError as error:
            if error.code == "CONFLICT":
                raise WorkerIdTaken(worker_id) from None
            raise
        return _ids(answer.get("workers") if isinstance(answer, dict) else answer)

    def deregister_worker(self, worker_id: str, instance_id: str) -> bool:
        args = {"workerId": worker_id, "instanceId": instance_id}
        answer = self._call("mutation", "service/workers:remove", args, idempotent=True)
        return isinstance(answer, dict) and answer.get("removed") is True

    def list_workers(self) -> list[str]:
        return _ids(self._call("query", "service/workers:list", {}, idempotent=True))

    def mark_offline(self, agent_ids: Sequence[str]) -> None:
        for start in range(0, len(agent_ids), PRESENCE_CHUNK):
            args = {"agentIds": list(agent_ids[start : start + PRESENCE_CHUNK])}
            self._call("mutation", "service/presence:markOffline", args, idempotent=True)

    def create_agent(
        self,
        name: str,
        heartbeat_interval_ms: int,
        session_key: str | None = None,
        idempotency_key: str | None = None,
        *,
        instructions: str | None = None,
        model: str | None = None,
        wakeup_prompt: str | None = None,
        wakeup_interval_ms: int | None = None,
    ) -> AgentRecord:
        args = _given(
            name=name,
            heartbeatIntervalMs=heartbeat_interval_ms,
            sessionKey=session_key,
            idempotencyKey=idempotency_key,
            instructions=instructions,
            model=model,
            wakeupPrompt=wakeup_prompt,
            wakeupIntervalMs=wakeup_interval_ms,
        )
        # With a key a retry after a lost answer returns the first agent; without one it
        # could create a second, so it is not retried then.
        idempotent = idempotency_key is not None
        return _record(self._agent_call("service/agents:create", args, idempotent=idempotent))

    def update_agent(
        self,
        agent_id: str,
        *,
        name: str | None = None,
        heartbeat_interval_ms: int | None = None,
        session_key: str | None = None,
        instructions: str | None = None,
        model: str | None = None,
        wakeup_prompt: str | None = None,
        wakeup_interval_ms: int | None = None,
    ) -> AgentRecord:
        args = _given(
            agentId=agent_id,
            name=name,
            heartbeatIntervalMs=heartbeat_interval_ms,
            sessionKey=session_key,
            instructions=instructions,
            model=model,
            wakeupPrompt=wakeup_prompt,
            wakeupIntervalMs=wakeup_interval_ms,
        )
        # Setting the same values twice is harmless.
        return _record(self._agent_call("service/agents:update", args, idempotent=True))

    def remove_agent(self, agent_id: str) -> None:
        # Not idempotent: a retry after a lost answer would report NOT_FOUND.
        self._agent_call("service/agents:remove", {"agentId": agent_id}, idempotent=False)

    def _agent_call(self, path: str, args: dict[str, Any], *, idempotent: bool) -> Any:
        try:
            return self._call("mutation", path, args, idempotent=idempotent)
        except InvalidArgument as error:
            raise InvalidAgent(str(error)) from None
        except ApplicationError as error:
            if error.code == "NOT_FOUND":
                raise AgentNotFound(args["agentId"]) from None
            raise

    # WhatsApp. Retried only where a repeat is harmless: a lease call is idempotent for
    # its owner, a mark answers a repeat as the first call did, a release of a released
    # claim says False. A claim is never retried (it would lock a second batch).

    def acquire_lease(self, account_id: str, owner_id: str, ttl_ms: int) -> Lease:
        args = {"accountId": account_id, "ownerId": owner_id, "ttlMs": ttl_ms}
        answer = self._call("mutation", "service/whatsapp:acquireLease", args, idempotent=True)
        return _parsed(Lease, answer)

    def release_lease(self, account_id: str, owner_id: str, epoch: int) -> bool:
        args = {"accountId": account_id, "ownerId": owner_id, "epoch": epoch}
        answer = self._call("mutation", "service/whatsapp:releaseLease", args, idempotent=True)
        return isinstance(answer, dict) and answer.get("released") is True

    def get_lease(self, account_id: str) -> Lease | None:
        args = {"accountId": account_id}
        answer = self._call("query", "service/whatsapp:getLease", args, idempotent=True)
        return None if answer is None else _parsed(Lease, answer)

    def enqueue_outbound(
        self, account_id: str, to: str, text: str, idempotency_key: str | None = None
    ) -> str:
        args = _given(accountId=account_id, to=to, text=text, idempotencyKey=idempotency_key)
        # With a key a retry returns the first message; without one it could queue two.
        idempotent = idempotency_key is not None
        answer = self._call("mutation", "service/whatsapp:enqueue", args, idempotent=idempotent)
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
            raise FunctionError(f"expected {{id}}, got {str(answer)[:80]}")
        return str(answer["id"])

    def claim_outbound(
        self,
        account_id: str,
        owner_id: str,
        epoch: int,
        *,
        limit: int,
        lock_ms: int,
        max_attempts: int,
    ) -> list[ClaimedMessage]:
        args = {
            "accountId": account_id,
            "ownerId": owner_id,
            "epoch": epoch,
            "limit": limit,
            "lockMs": lock_ms,
            "maxAttempts": max_attempts,
        }
        answer = self._whatsapp("service/whatsapp:claimOutbound", args, idempotent=False)
        if not isinstance(answer, list):
            raise FunctionError(f"expected a list of messages, got {str(answer)[:80]}")
        return [_parsed(ClaimedMessage, row) for row in answer]

    def mark_sent(self, message_id: str, claim_token: str, epoch: int, wamid: str) -> None:
        args = {"id": message_id, "claimToken": claim_token, "epoch": epoch, "wamid": wamid}
        self._whatsapp("service/whatsapp:markSent", args, idempotent=True)

    def mark_failed(
        self,
        message_id: str,
        claim_token: str,
        epoch: int,
        *,
        error: str,
        retry_at_ms: int | None,
        max_attempts: int,
    ) -> OutboundStatus:
        args = _given(
            id=message_id,
            claimToken=claim_token,
            epoch=epoch,
            error=error,
            retryAt=retry_at_ms,
            maxAttempts=max_attempts,
        )
        answer = self._whatsapp("service/whatsapp:markFailed", args, idempotent=True)
        status = answer.get("status") if isinstance(answer, dict) else None
        if status not in ("queued", "failed"):
            raise FunctionError(f"expected {{status}}, got {str(answer)[:80]}")
        return cast(OutboundStatus, status)

    def release_outbound(
        self, message_id: str, claim_token: str, not_before_ms: int | None = None
    ) -> bool:
        args = _given(id=message_id, claimToken=claim_token, notBefore=not_before_ms)
        answer = self._whatsapp("service/whatsapp:release", args, idempotent=True)
        return isinstance(answer, dict) and answer.get("released") is True

    def record_webhook(
        self,
        account_id: str,
        messages: Sequence[InboundMessage],
        statuses: Sequence[StatusUpdate],
        agent_id: str | None = None,
    ) -> WebhookRecorded:
        # The functions take at most WEBHOOK_CHUNK items of each kind per call; a larger
        # delivery goes in several calls, which is safe: recording is deduplicated on the
        # provider ids, so Meta's retry of a half-recorded delivery records the rest.
        totals = WebhookRecorded(messages=0, statuses=0, duplicates=0)
        for start in range(0, max(len(messages), len(statuses), 1), WEBHOOK_CHUNK):
            args = _given(
                accountId=account_id,
                messages=[
                    m.model_dump(by_alias=True) for m in messages[start : start + WEBHOOK_CHUNK]
                ],
                statuses=[
                    u.model_dump(by_alias=True, exclude_none=True)
                    for u in statuses[start : start + WEBHOOK_CHUNK]
                ],
                agentId=agent_id,
            )
            answer = self._call("mutation", "service/whatsapp:recordWebhook", args, idempotent=True)
            part = _parsed(WebhookRecorded, answer)
            totals = WebhookRecorded(
                messages=totals.messages + part.messages,
                statuses=totals.statuses + part.statuses,
                duplicates=totals.duplicates + part.duplicates,
            )
        return totals

    def list_outbox(
        self, account_id: str, status: OutboundStatus | None = None
    ) -> list[dict[str, Any]]:
        args = _given(accountId=account_id, status=status)
        return self._every_row("service/whatsapp:listOutbox", args, LISTED_MAX)

    def list_inbox(self, account_id: str) -> list[dict[str, Any]]:
        args = {"accountId": account_id}
        return self._every_row("service/whatsapp:listInbox", args, LISTED_MAX)

    def _whatsapp(self, path: str, args: dict[str, Any], *, idempotent: bool) -> Any:
        try:
            return self._call("mutation", path, args, idempotent=idempotent)
        except ApplicationError as error:
            if error.code == "FENCED":
                raise Fenced(str(error)) from None
            if error.code == "NOT_FOUND":
                raise MessageNotFound(str(args.get("id"))) from None
            raise

    # Jobs. Renew, complete and fail are idempotent for their claim token, and a release
    # of a released claim says False; a claim is never retried (it would lock a second
    # batch), nor an enqueue without a key.

    def enqueue_job(
        self,
        agent_id: str,
        input_text: str,
        conversation: Conversation | None = None,
        idempotency_key: str | None = None,
        *,
        kind: JobKind = "task",
    ) -> str:
        args = _given(
            agentId=agent_id,
            kind=kind,
            input=input_text,
            conversation=None if conversation is None else conversation.model_dump(by_alias=True),
            idempotencyKey=idempotency_key,
        )
        try:
            answer = self._call(
                "mutation", "service/jobs:enqueue", args, idempotent=idempotency_key is not None
            )
        except ApplicationError as error:
            if error.code == "NOT_FOUND":
                raise AgentNotFound(agent_id) from None
            raise
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
            raise FunctionError(f"expected {{id}}, got {str(answer)[:80]}")
        return str(answer["id"])

    def claim_jobs(
        self,
        agent_ids: Sequence[str],
        worker_id: str,
        *,
        limit: int,
        lock_ms: int,
        max_attempts: int,
    ) -> list[ClaimedJob]:
        args = {
            "agentIds": list(agent_ids),
            "workerId": worker_id,
            "limit": limit,
            "lockMs": lock_ms,
            "maxAttempts": max_attempts,
        }
        answer = self._call("mutation", "service/jobs:claim", args, idempotent=False)
        if not isinstance(answer, list):
            raise FunctionError(f"expected a list of jobs, got {str(answer)[:80]}")
        return [_parsed(ClaimedJob, row) for row in answer]

    def renew_job(self, job_id: str, claim_token: str, lock_ms: int) -> int:
        args = {"id": job_id, "claimToken": claim_token, "lockMs": lock_ms}
        answer = self._job_call("service/jobs:renew", args)
        locked_until = answer.get("lockedUntil") if isinstance(answer, dict) else None
        if not isinstance(locked_until, int | float):
            raise FunctionError(f"expected {{lockedUntil}}, got {str(answer)[:80]}")
        return int(locked_until)

    def release_job(self, job_id: str, claim_token: str) -> bool:
        args = {"id": job_id, "claimToken": claim_token}
        answer = self._call("mutation", "service/jobs:release", args, idempotent=True)
        return isinstance(answer, dict) and answer.get("released") is True

    def jobs_version(self) -> str:
        return self._change_signal(JOBS_VERSION)

    def complete_job(
        self,
        job_id: str,
        claim_token: str,
        *,
        session_key: str,
        result: str,
        usage: Usage,
        steps: int,
    ) -> str | None:
        args = {
            "id": job_id,
            "claimToken": claim_token,
            "sessionKey": session_key,
            "result": result,
            "usage": usage.model_dump(by_alias=True),
            "steps": steps,
        }
        answer = self._job_call("service/jobs:complete", args)
        reply_id = answer.get("replyId") if isinstance(answer, dict) else None
        return reply_id if isinstance(reply_id, str) else None

    def fail_job(
        self,
        job_id: str,
        claim_token: str,
        *,
        error: str,
        retry_at_ms: int | None,
        max_attempts: int,
    ) -> JobStatus:
        args = _given(
            id=job_id,
            claimToken=claim_token,
            error=error,
            retryAt=retry_at_ms,
            maxAttempts=max_attempts,
        )
        answer = self._job_call("service/jobs:fail", args)
        status = answer.get("status") if isinstance(answer, dict) else None
        if status not in ("queued", "failed", "dead"):
            raise FunctionError(f"expected {{status}}, got {str(answer)[:80]}")
        return cast(JobStatus, status)

    def get_job(self, job_id: str) -> dict[str, Any]:
        try:
            answer = self._call("query", "service/jobs:get", {"id": job_id}, idempotent=True)
        except ApplicationError as error:
            if error.code == "NOT_FOUND":
                raise JobNotFound(job_id) from None
            raise
        if not isinstance(answer, dict):
            raise FunctionError(f"expected a job, got {str(answer)[:80]}")
        return answer

    def list_jobs(
        self, agent_id: str | None = None, status: JobStatus | None = None
    ) -> list[dict[str, Any]]:
        args = _given(agentId=agent_id, status=status)
        return self._every_row("service/jobs:list", args, LISTED_MAX)

    def conversation_history(
        self, conversation: Conversation, session_key: str, limit: int
    ) -> list[Turn]:
        args = {
            "conversation": conversation.model_dump(by_alias=True),
            "sessionKey": session_key,
            "limit": limit,
        }
        answer = _rows(self._call("query", "service/jobs:history", args, idempotent=True))
        return [_parsed(Turn, row) for row in answer]

    def _job_call(self, path: str, args: dict[str, Any]) -> Any:
        try:
            return self._call("mutation", path, args, idempotent=True)
        except ApplicationError as error:
            if error.code == "FENCED":
                raise Fenced(str(error)) from None
            if error.code == "NOT_FOUND":
                raise JobNotFound(str(args["id"])) from None
            raise

    def watch_changes(
        self,
        on_change: Callable[[ChangeSignal], None],
        on_state: Callable[[FeedState, str | None], None],
    ) -> ChangeFeed | None:
        """A subscription to `service/agents:version` and `service/jobs:version` (unless
        AGENT_SYNC_MODE=poll), run in a child process (see `backend.convex_watch`)."""
        if not self._subscribe:
            return None
        signals: dict[str, ChangeSignal] = {AGENTS_VERSION: "agents", JOBS_VERSION: "jobs"}
        feed = ChangeFeed(
            self.url,
            self._secret,
            list(signals),
            lambda query: on_change(signals[query]),
            on_state,
            name="change",
        )
        feed.start()
        return feed

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        self._http.close()  # closing the pool does not wait for calls in progress

    # --- pages --------------------------------------------------------------------------

    def _pages(self, path: str, args: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Each page of the list query `path`, first to last (contract/README.md, "Pages"):
        one call per page, each retried on its own (a query; reading it twice is harmless)."""
        cursor: str | None = None
        while True:
            page = self._call("query", path, _given(**args, cursor=cursor), idempotent=True)
            done = page.get("isDone") if isinstance(page, dict) else None
            cursor = page.get("continueCursor") if isinstance(page, dict) else None
            if not isinstance(done, bool) or not isinstance(cursor, str):
                raise FunctionError(
                    f"expected a page {{continueCursor, isDone, ...}}, got {str(page)[:80]}"
                )
            yield page
            if done:
                return

    def _every_row(
        self, path: str, args: dict[str, Any], most: int | None = None
    ) -> list[dict[str, Any]]:
        """The rows of every page of `path` (`{page, continueCursor, isDone}`), or the first
        `most` of them: no page is read once `most` rows are in."""
        rows: list[dict[str, Any]] = []
        for page in self._pages(path, args):
            rows += _rows(page.get("page"))
            if most is not None and len(rows) >= most:
                return rows[:most]
        return rows

    # --- the HTTP API -------------------------------------------------------------------

    def _change_signal(self, path: str) -> str:
        # One attempt, no retries: a change signal is polled, the next poll is the retry.
        return str(self._post("query", path, self._body(path, {})))

    def _call(self, kind: str, path: str, args: dict[str, Any], *, idempotent: bool) -> Any:
        body = self._body(path, args)
        return call_with_retries(lambda: self._post(kind, path, body), idempotent=idempotent)

    def _body(self, path: str, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "path": path,
            "args": convex_to_json({**args, "serviceKey": self._secret.get_secret_value()}),
            "format": "json",
        }

    def _post(self, kind: str, path: str, body: dict[str, Any]) -> Any:
        where = f"Convex {kind} {path} at {self.url}"
        try:
            response = self._http.post(f"/api/{kind}", json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            raise Unavailable(f"{where}: cannot connect: {error!r}", may_have_run=False) from None
        except httpx.TimeoutException:
            raise Unavailable(f"{where}: no answer in time", may_have_run=True) from None
        except httpx.HTTPError as error:  # transport failures, undecodable bodies
            raise Unavailable(
                f"{where}: connection failed: {self._redact(repr(error))}", may_have_run=True
            ) from None
        status = response.status_code
        if status == 429:
            raise Unavailable(f"{where}: rate limited (429)", may_have_run=False)
        if status >= 500 and status != UDF_FAILED_STATUS:
            raise Unavailable(f"{where}: server error {status}", may_have_run=True)
        if status in (401, 403):
            text = self._redact(_error_text(response))
            raise ServiceKeyRejected(f"{where}: refused ({status}): {text}")
        if status not in (200, UDF_FAILED_STATUS):
            text = self._redact(_error_text(response))
            raise FunctionError(f"{where}: bad request ({status}): {text}")
        try:
            answer = response.json()
        except ValueError:  # not JSON, or not even UTF-8
            raise Unavailable(f"{where}: unreadable answer", may_have_run=True) from None
        if not isinstance(answer, dict) or answer.get("status") not in ("success", "error"):
            raise Unavailable(f"{where}: unexpected answer shape", may_have_run=True)
        if answer["status"] == "success":
            return answer.get("value")
        raise _function_failure(where, answer, self._redact)

    def _redact(self, text: str) -> str:
        # Server text can echo the request; the service key must never reach a message.
        return text.replace(self._secret.get_secret_value(), "***")


def _function_failure(
    where: str, answer: dict[str, Any], redact: Callable[[str], str]
) -> Exception:
    data = answer.get("errorData")
    if isinstance(data, dict) and isinstance(data.get("code"), str):
        code, message = data["code"], redact(str(data.get("message", "")))
        if code == "UNAUTHORIZED":
            return ServiceKeyRejected(
                f"{where}: the deployment refused the service key; AGENT_SECRET must equal"
                " the deployment's AGENT_SECRET (npx convex env set AGENT_SECRET ... --prod)"
            )
        if code == "INVALID_ARGUMENT":
            return InvalidArgument(message)
        return ApplicationError(code, message)
    first_lines = " ".join(str(answer.get("errorMessage", "")).split("\n")[:2]).strip()
    return FunctionError(f"{where}: function failed: {redact(first_lines)}")


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and "message" in body:
        return f"{body.get('code', '')}: {body['message']}"
    return str(body)[:200]


def _given(**args: Any) -> dict[str, Any]:
    """The arguments that are not None: the functions take a left-out key for "not given"."""
    return {name: value for name, value in args.items() if value is not None}


def _rows(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise FunctionError(f"expected a list of rows, got {type(value).__name__}")
    return value


def _parsed(kind: type[Parsed], value: Any) -> Parsed:
    try:
        return kind.model_validate(value)
    except ValidationError as error:
        raise FunctionError(
            f"the backend returned an invalid {kind.__name__}: {describe_validation_error(error)}"
        ) from None


def _ids(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FunctionError(f"expected a list of worker ids, got {str(value)[:80]}")
    return value


def _record(value: Any) -> AgentRecord:
    result = parse_agent_row(value, 0)
    if not isinstance(result, AgentRecord):
        raise FunctionError(f"the backend returned an invalid agent: {result.problem}")
    return result
