"""The backend port: every call the runtime makes to the system that stores its state.

Adapters: `backend.local` (SQLite, embedded) and `backend.convex` (Convex's HTTP API).
Semantics are the contract (contract/README.md); an adapter only maps them onto its
storage. Every method may raise
`BackendError`; callers log it and retry later, and nothing is lost by a failed call.
"""

import abc
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from messages import AgentRecord, Heartbeat
from messages.jobs import ClaimedJob, Conversation, JobKind, JobStatus, Turn, Usage
from messages.whatsapp import (
    ClaimedMessage,
    InboundMessage,
    Lease,
    OutboundStatus,
    StatusUpdate,
    WebhookRecorded,
)

CLOSE_TIMEOUT_S = 5.0

ChangeSignal = Literal["agents", "jobs"]
"""Which change signal moved: `agents_version()` or `jobs_version()`."""

FeedState = Literal["subscribed", "down"]
"""A change feed is `subscribed` while every signal it watches is pushed."""


class Watch(Protocol):
    """A running change feed (see `Backend.watch_changes`)."""

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop the feed; no `on_change` call starts after this returns."""


class Backend(abc.ABC):
    """What the runtime needs from its backend. Safe to call from several threads."""

    signal_poll_s: float = 0.1
    """How often a caller without a change feed reads the jobs change signal: a local read
    costs microseconds; an adapter whose every read is a billed call polls less often."""

    # --- agent sync --------------------------------------------------------------

    @abc.abstractmethod
    def list_agents(self) -> list[dict[str, Any]]:
        """Every agent's configuration, oldest first, as raw camelCase rows
        (`id, name, sessionKey, heartbeatIntervalMs, instructions, model, wakeupPrompt,
        wakeupIntervalMs, updatedAt`; the optional ones null when unset).

        No presence: heartbeats never change this list. Rows are not validated here: the
        caller validates each one (`messages.parse_agent_rows`), so one bad row cannot
        hide the others.
        """

    def agents_and_workers(self) -> tuple[list[dict[str, Any]], list[str]]:
        """`list_agents()` and `list_workers()`, read together: what an agent sync needs,
        in one call where the backend allows."""
        return self.list_agents(), self.list_workers()

    @abc.abstractmethod
    def agents_version(self) -> str:
        """A cheap change signal: a value that changes whenever an agent is created,
        updated or removed, or a worker joins, leaves or expires; never because of a
        heartbeat."""

    # --- presence ----------------------------------------------------------------

    @abc.abstractmethod
    def list_presence(self) -> list[dict[str, Any]]:
        """`{agentId, status, lastHeartbeatAt}` for every agent, in `list_agents` order."""

    def list_agents_with_presence(self) -> list[dict[str, Any]]:
        """`list_agents` rows with `status` and `lastHeartbeatAt` added from
        `list_presence` (offline and null for an agent without presence)."""
        presence = {p["agentId"]: p for p in self.list_presence()}
        return [
            {
                **row,
                "status": presence.get(row.get("id"), {}).get("status", "offline"),
                "lastHeartbeatAt": presence.get(row.get("id"), {}).get("lastHeartbeatAt"),
            }
            for row in self.list_agents()
        ]

    @abc.abstractmethod
    def record_heartbeats(self, beats: Sequence[Heartbeat]) -> list[str]:
        """Set each agent online with `lastHeartbeatAt = at_ms`, in one write, and
        return the ids of the refused beats: those more than 60 s ahead of the backend's
        clock (the worker's clock is wrong; such a beat would pin the agent online).

        Beats for agents that no longer exist are ignored (not refused); a beat older
        than the stored one does not move `lastHeartbeatAt` back. Presence expires: an
        agent reads as offline once `lastHeartbeatAt + 3 x interval` has passed.
        """

    @abc.abstractmethod
    def mark_offline(self, agent_ids: Sequence[str]) -> None:
        """Set these agents offline, in one write; unknown ids are ignored."""

    # --- workers (the core fleet) -----------------------------------------------------

    @abc.abstractmethod
    def register_worker(self, worker_id: str, instance_id: str, ttl_ms: int) -> list[str]:
        """Register this worker, or renew its registration, live for `ttl_ms` from now
        by the backend's clock; return the live worker ids, sorted.

        Raises:
            WorkerIdTaken: a live registration of `worker_id` belongs to another
                instance (another process started with the same WORKER_ID).
        """

    @abc.abstractmethod
    def deregister_worker(self, worker_id: str, instance_id: str) -> bool:
        """Remove the registration if it belongs to `instance_id`; True if one was
        removed. Never removes another instance's registration."""

    @abc.abstractmethod
    def list_workers(self) -> list[str]:
        """The live worker ids (registrations not yet expired by the backend's clock),
        sorted."""

    # --- WhatsApp: the lease, the outbound queue, webhooks ------------------------------

    @abc.abstractmethod
    def acquire_lease(self, account_id: str, owner_id: str, ttl_ms: int) -> Lease:
        """Take the account's lease (none, or expired and another owner's: epoch + 1),
        or renew it (this owner's, live or expired but not taken since: same epoch), for
        `ttl_ms` from now by the backend's clock. Another owner's live lease is returned
        unchanged with `held=False`."""

    @abc.abstractmethod
    def release_lease(self, account_id: str, owner_id: str, epoch: int) -> bool:
        """Expire the lease now if it carries this owner and epoch; True if it did. Never
        releases a successor's lease."""

    @abc.abstractmethod
    def get_lease(self, account_id: str) -> Lease | None:
        """The account's lease as stored (`held` False), or None if it never had one."""

    @abc.abstractmethod
    def enqueue_outbound(
        self, account_id: str, to: str, text: str, idempotency_key: str | None = None
    ) -> str:
        """Queue a text message to `to` and return its id; a repeated `idempotency_key`
        returns the first message's id and queues nothing.

        Raises:
            InvalidArgument: `to` is not 7 to 15 digits, or `text` not 1 to 4096 chars.
        """

    @abc.abstractmethod
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
        """Claim up to `limit` sendable messages, oldest first, each locked for
        `lock_ms` under a new claim token; an expired lock counts as an attempt (and
        fails a message that reaches `max_attempts`).

        Raises:
            Fenced: this owner does not hold the live lease at this epoch.
        """

    @abc.abstractmethod
    def mark_sent(self, message_id: str, claim_token: str, epoch: int, wamid: str) -> None:
        """Record the send with the provider's id. Idempotent for the same claim.

        Raises:
            Fenced: the claim token is not current, or the lease moved past `epoch`.
        """

    @abc.abstractmethod
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
        """Count a failed attempt; queue the message again from `retry_at_ms` if given
        and attempts remain, else fail it with `error`. Returns the new status.

        Raises:
            Fenced: the claim token is not current, or the lease moved past `epoch`.
        """

    @abc.abstractmethod
    def release_outbound(
        self, message_id: str, claim_token: str, not_before_ms: int | None = None
    ) -> bool:
        """Put a claimed, unsent message back in the queue without counting an attempt;
        False if the claim token is no longer current. Needs no lease."""

    @abc.abstractmethod
    def record_webhook(
        self,
        account_id: str,
        messages: Sequence[InboundMessage],
        statuses: Sequence[StatusUpdate],
        agent_id: str | None = None,
    ) -> WebhookRecorded:
        """Store inbound messages and apply status updates, each once (provider ids are
        deduplicated for at least 8 days); with `agent_id`, queue a job for that agent
        per newly recorded message; in one write."""

    @abc.abstractmethod
    def list_outbox(
        self, account_id: str, status: OutboundStatus | None = None
    ) -> list[dict[str, Any]]:
        """Outbound messages, oldest first (at most 1000), as camelCase rows
        (`id, to, text, status, attempts, wamid, lastError, createdAt, updatedAt`)."""

    @abc.abstractmethod
    def list_inbox(self, account_id: str) -> list[dict[str, Any]]:
        """Inbound messages, oldest first, at most 1000
        (`providerId, from, text, receivedAt`)."""

    # --- jobs ---------------------------------------------------------------------------

    @abc.abstractmethod
    def enqueue_job(
        self,
        agent_id: str,
        input_text: str,
        conversation: Conversation | None = None,
        idempotency_key: str | None = None,
        *,
        kind: JobKind = "task",
    ) -> str:
        """Queue a job for the agent and return its id; a repeated `idempotency_key`
        returns the first job's id. A `wakeup` job is queued only if the agent has no
        queued or running one; otherwise that one's id is returned.

        Raises:
            AgentNotFound: no such agent.
            InvalidArgument: the input or the conversation is not acceptable.
        """

    @abc.abstractmethod
    def claim_jobs(
        self,
        agent_ids: Sequence[str],
        worker_id: str,
        *,
        limit: int,
        lock_ms: int,
        max_attempts: int,
    ) -> list[ClaimedJob]:
        """Claim up to `limit` jobs of these agents, each agent's (and conversation's)
        next one only, oldest first, locked for `lock_ms`; expired locks count an attempt
        first (dead at `max_attempts`)."""

    @abc.abstractmethod
    def renew_job(self, job_id: str, claim_token: str, lock_ms: int) -> int:
        """Extend the claim's lock to now + `lock_ms`; returns the new `lockedUntil`.

        Raises:
            Fenced: the claim is not current (the job was reclaimed or finished).
        """

    @abc.abstractmethod
    def release_job(self, job_id: str, claim_token: str) -> bool:
        """Give the claim back: the job is queued again at once, without counting an
        attempt (its agent moved, or the worker stops). False if the claim is not current."""

    @abc.abstractmethod
    def jobs_version(self) -> str:
        """A cheap change signal: a value that changes whenever a job becomes claimable
        by an event (enqueued, failed back to the queue, released, or its expired lock
        put back by a claim); a retry whose time comes changes nothing."""

    @abc.abstractmethod
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
        """Mark the job done with its result, append the turn to its conversation in the
        agent session `session_key`, and queue the reply of a WhatsApp conversation (once,
        keyed by the job): all in one transaction. Returns the reply's outbound id (None
        without a WhatsApp conversation). Idempotent for the same claim.

        Raises:
            Fenced: the claim is not current.
        """

    @abc.abstractmethod
    def fail_job(
        self,
        job_id: str,
        claim_token: str,
        *,
        error: str,
        retry_at_ms: int | None,
        max_attempts: int,
    ) -> JobStatus:
        """Count a failed attempt: queued again from `retry_at_ms` while attempts remain,
        dead after the last; without `retry_at_ms`, failed for good.

        Raises:
            Fenced: the claim is not current, or it already finished the job.
        """

    @abc.abstractmethod
    def get_job(self, job_id: str) -> dict[str, Any]:
        """The job as a camelCase row (contract/README.md, "Jobs").

        Raises:
            JobNotFound: no such job.
        """

    @abc.abstractmethod
    def list_jobs(
        self, agent_id: str | None = None, status: JobStatus | None = None
    ) -> list[dict[str, Any]]:
        """Jobs, oldest first (at most 1000), as `get_job` rows."""

    @abc.abstractmethod
    def conversation_history(
        self, conversation: Conversation, session_key: str, limit: int
    ) -> list[Turn]:
        """The last `limit` turns of the conversation in the agent session `session_key`,
        oldest first."""

    # --- administration (the `agents` CLI) -----------------------------------------

    @abc.abstractmethod
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
        """Create an agent (offline until a worker beats for it) and return it. A repeated
        `idempotency_key` returns the agent the first call created and creates none, so a
        create whose answer was lost can be retried. Empty `instructions`, `model` or
        `wakeup_prompt` are unset.

        Raises:
            InvalidAgent: the name or interval is not acceptable.
        """

    @abc.abstractmethod
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
        """Change the given fields (None leaves a field as it is; `""`, or 0 for
        `wakeup_interval_ms`, clears an optional one) and return the agent.

        Raises:
            AgentNotFound: no agent has this id.
            InvalidAgent: a new value is not acceptable.
        """

    @abc.abstractmethod
    def remove_agent(self, agent_id: str) -> None:
        """Delete the agent and its presence; its queued and running jobs fail
        (`agent removed`), so a worker still running one is fenced.

        Raises:
            AgentNotFound: no agent has this id.
        """

    def watch_changes(
        self,
        on_change: Callable[[ChangeSignal], None],
        on_state: Callable[[FeedState, str | None], None],
    ) -> Watch | None:
        """If this backend can push changes: start calling, from another thread,
        `on_change("agents")` whenever `agents_version()` changes and `on_change("jobs")`
        whenever `jobs_version()` does (the current values count as changes whenever
        the feed (re)connects), and `on_state(state, last_error)` as the feed goes
        `subscribed` or `down`; it starts down. None if it cannot push, and the caller
        polls both signals instead."""
        return None

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:  # noqa: B027 - adapters without resources need not override
        """Release connections, waiting at most `timeout_s` for a call in progress in
        another thread (past that, they are left to the process's exit). The backend
        must not be used afterwards."""
