"""The embedded backend's jobs and conversation turns. Semantics in contract/README.md
("Jobs"); `LocalBackend` mixes this in, so every call is one SQLite transaction.

Every change after a claim checks the claim token in the same transaction, so a worker
that lost its claim can never complete the job; the reply to a WhatsApp conversation is
queued in the transaction that completes the job, keyed by the job id.
"""

import secrets
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, cast

from pydantic import ValidationError

from agent_runtime.errors import AgentNotFound, Fenced, InvalidArgument, JobNotFound
from backend.local_whatsapp import MAX_ERROR_CHARS, insert_outbound
from messages.agent import describe_validation_error
from messages.jobs import (
    CONVERSATION,
    MAX_INPUT_CHARS,
    ClaimedJob,
    Conversation,
    DirectConversation,
    JobKind,
    JobStatus,
    Turn,
    Usage,
    WhatsAppConversation,
)
from messages.whatsapp import MAX_TEXT_CHARS, InboundMessage

JOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT NOT NULL PRIMARY KEY,
    agent_id TEXT NOT NULL,
    conversation_key TEXT,
    account_id TEXT,
    contact TEXT,
    input TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before INTEGER NOT NULL,
    locked_until INTEGER,
    claim_token TEXT,
    worker_id TEXT,
    result TEXT,
    error TEXT,
    input_tokens INTEGER,
    output_tokens INTEGER,
    steps INTEGER,
    reply_id TEXT,
    idempotency_key TEXT UNIQUE,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    kind TEXT NOT NULL DEFAULT 'task',
    channel TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_agent ON jobs (agent_id, status, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_conversation ON jobs (conversation_key, status);
CREATE TABLE IF NOT EXISTS turns (
    conversation_key TEXT NOT NULL,
    job_id TEXT NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    at INTEGER NOT NULL,
    session_key TEXT
);
CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns (conversation_key, at);
INSERT OR IGNORE INTO change_counters (name, version) VALUES ('jobs', 0);
"""

_MIGRATE_JOBS_TO_V5 = """
ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'task';
ALTER TABLE jobs ADD COLUMN channel TEXT;
UPDATE jobs SET channel = 'whatsapp' WHERE conversation_key IS NOT NULL;
ALTER TABLE turns ADD COLUMN session_key TEXT;
"""
"""Schema version 5: job kinds and direct conversations; turns belong to a session (turns
stored before have none, so no session continues them)."""

_BUMP_JOBS_VERSION = "UPDATE change_counters SET version = version + 1 WHERE name = 'jobs'"

_JOB_COLUMNS = (
    "id, agent_id, kind, channel, account_id, contact, input, status, attempts, not_before,"
    " locked_until, worker_id, result, error, input_tokens, output_tokens, steps, created_at,"
    " updated_at"
)


def insert_job(
    db: sqlite3.Connection,
    now: int,
    agent_id: str,
    input_text: str,
    conversation: Conversation | None,
    *,
    idempotency_key: str | None,
    kind: JobKind = "task",
) -> str:
    """Queue a job inside the caller's transaction; the first job's id for a known key,
    the pending one's for a wake-up job."""
    if idempotency_key is not None:
        known = db.execute(
            "SELECT id FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
        ).fetchone()
        if known is not None:
            return str(known[0])
    if kind == "wakeup":
        pending = db.execute(
            "SELECT id FROM jobs WHERE agent_id = ? AND kind = 'wakeup'"
            " AND status IN ('queued', 'running')",
            (agent_id,),
        ).fetchone()
        if pending is not None:
            return str(pending[0])
    job_id = secrets.token_hex(8)
    account_id, contact = _stored(conversation)
    db.execute(
        "INSERT INTO jobs (id, agent_id, kind, channel, conversation_key, account_id, contact,"
        " input, status, not_before, idempotency_key, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
        (
            job_id,
            agent_id,
            kind,
            conversation.channel if conversation else None,
            conversation.key if conversation else None,
            account_id,
            contact,
            input_text,
            now,
            idempotency_key,
            now,
            now,
        ),
    )
    db.execute(_BUMP_JOBS_VERSION)
    return job_id


class LocalJobs:
    """The jobs half of `LocalBackend` (which provides `_write`, `_read`, `clock`)."""

    clock: Callable[[], int]
    _write: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _read: Callable[..., list[tuple[Any, ...]]]
    _columns: Callable[..., set[str]]

    def _jobs_migration(self) -> str:
        """The statements that bring an older jobs schema to this one ("" if none)."""
        return "" if "kind" in self._columns("jobs", absent={"kind"}) else _MIGRATE_JOBS_TO_V5

    def enqueue_job(
        self,
        agent_id: str,
        input_text: str,
        conversation: Conversation | None = None,
        idempotency_key: str | None = None,
        *,
        kind: JobKind = "task",
    ) -> str:
        if not 0 < len(input_text) <= MAX_INPUT_CHARS:
            raise InvalidArgument(
                f"input: expected 1 to {MAX_INPUT_CHARS} characters, got {len(input_text)}"
            )
        if isinstance(conversation, WhatsAppConversation):
            try:  # the contact as stored: digits only
                conversation = CONVERSATION.validate_python(
                    {**conversation.model_dump(), "contact": conversation.contact.removeprefix("+")}
                )
            except ValidationError as error:
                raise InvalidArgument(describe_validation_error(error)) from None
        now = self.clock()
        with self._write() as db:
            if not db.execute("SELECT 1 FROM agents WHERE id = ?", (agent_id,)).fetchone():
                raise AgentNotFound(agent_id)
            return insert_job(
                db,
                now,
                agent_id,
                input_text,
                conversation,
                idempotency_key=idempotency_key,
                kind=kind,
            )

    def claim_jobs(
        self,
        agent_ids: Sequence[str],
        worker_id: str,
        *,
        limit: int,
        lock_ms: int,
        max_attempts: int,
    ) -> list[ClaimedJob]:
        now = self.clock()
        wanted = list(dict.fromkeys(agent_ids))
        marks = ",".join("?" * len(wanted))
        with self._write() as db:
            # A lock that expired is an attempt that may have happened.
            expired = db.execute(
                "UPDATE jobs SET attempts = attempts + 1, error = 'claim lock expired',"
                " status = CASE WHEN attempts + 1 >= ? THEN 'dead' ELSE 'queued' END,"
                " claim_token = NULL, locked_until = NULL, not_before = ?, updated_at = ?"
                f" WHERE status = 'running' AND locked_until <= ? AND agent_id IN ({marks})",
                (max_attempts, now, now, now, *wanted),
            ).rowcount
            if expired:
                db.execute(_BUMP_JOBS_VERSION)
            busy = {
                key
                for (key,) in db.execute(
                    "SELECT conversation_key FROM jobs WHERE status = 'running'"
                    " AND conversation_key IS NOT NULL"
                )
            }
            candidates = []
            for agent_id in wanted:
                row = db.execute(
                    "SELECT rowid, id, status, not_before, conversation_key, channel, account_id,"
                    " contact, input, attempts, created_at FROM jobs"
                    " WHERE agent_id = ? AND status IN ('queued', 'running')"
                    " ORDER BY created_at, rowid LIMIT 1",
                    (agent_id,),
                ).fetchone()
                if row is not None and row[2] == "queued" and row[3] <= now:
                    candidates.append((row[10], row[0], agent_id, row))
            claimed: list[ClaimedJob] = []
            for _, _, agent_id, row in sorted(candidates):
                if len(claimed) == limit:
                    break
                key = row[4]
                if key is not None and key in busy:
                    continue  # its conversation has a turn running
                if key is not None:
                    busy.add(key)
                job = ClaimedJob(
                    id=row[1],
                    agent_id=agent_id,
                    input=row[8],
                    conversation=_conversation(row[5], row[6], row[7]),
                    attempts=row[9],
                    claim_token=secrets.token_hex(16),
                )
                db.execute(
                    "UPDATE jobs SET status = 'running', claim_token = ?, locked_until = ?,"
                    " worker_id = ?, updated_at = ? WHERE id = ?",
                    (job.claim_token, now + lock_ms, worker_id, now, job.id),
                )
                claimed.append(job)
        return claimed

    def renew_job(self, job_id: str, claim_token: str, lock_ms: int) -> int:
        now = self.clock()
        with self._write() as db:
            if _claimed(db, job_id, claim_token) != "running":
                raise Fenced(f"job {job_id!r} is no longer running under this claim")
            db.execute(
                "UPDATE jobs SET locked_until = ?, updated_at = ? WHERE id = ?",
                (now + lock_ms, now, job_id),
            )
        return now + lock_ms

    def release_job(self, job_id: str, claim_token: str) -> bool:
        now = self.clock()
        with self._write() as db:
            released = db.execute(
                "UPDATE jobs SET status = 'queued', claim_token = NULL, locked_until = NULL,"
                " worker_id = NULL, not_before = ?, updated_at = ?"
                " WHERE id = ? AND claim_token = ? AND status = 'running'",
                (now, now, job_id, claim_token),
            ).rowcount
            if released:
                db.execute(_BUMP_JOBS_VERSION)
        return released > 0

    def jobs_version(self) -> str:
        (version,) = self._read("SELECT version FROM change_counters WHERE name = 'jobs'")[0]
        return str(version)

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
        now = self.clock()
        with self._write() as db:
            status = _claimed(db, job_id, claim_token)
            if status == "done":
                (first_reply,) = db.execute(
                    "SELECT reply_id FROM jobs WHERE id = ?", (job_id,)
                ).fetchone()
                return cast(str | None, first_reply)  # a repeat
            if status != "running":
                raise Fenced(f"job {job_id!r} was marked {status} by this claim")
            key, channel, account_id, contact, input_text = db.execute(
                "SELECT conversation_key, channel, account_id, contact, input FROM jobs"
                " WHERE id = ?",
                (job_id,),
            ).fetchone()
            reply_id: str | None = None
            if key is not None:
                db.executemany(
                    "INSERT INTO turns (conversation_key, job_id, role, content, at, session_key)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (key, job_id, "user", input_text, now, session_key),
                        (key, job_id, "assistant", result, now, session_key),
                    ],
                )
                if channel == "whatsapp" and result:  # the reply, once: keyed by the job
                    reply_id = insert_outbound(
                        db,
                        now,
                        account_id,
                        contact,
                        result[:MAX_TEXT_CHARS],
                        idempotency_key=f"job:{job_id}",
                    )
            db.execute(
                "UPDATE jobs SET status = 'done', result = ?, input_tokens = ?,"
                " output_tokens = ?, steps = ?, reply_id = ?, locked_until = NULL,"
                " updated_at = ? WHERE id = ?",
                (result, usage.input_tokens, usage.output_tokens, steps, reply_id, now, job_id),
            )
        return reply_id

    def fail_job(
        self,
        job_id: str,
        claim_token: str,
        *,
        error: str,
        retry_at_ms: int | None,
        max_attempts: int,
    ) -> JobStatus:
        now = self.clock()
        with self._write() as db:
            status = _claimed(db, job_id, claim_token)
            if status != "running":
                raise Fenced(f"job {job_id!r} was already marked {status} by this claim")
            (attempts,) = db.execute(
                "SELECT attempts + 1 FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            new_status: JobStatus
            if retry_at_ms is None:
                new_status = "failed"
            else:
                new_status = "queued" if attempts < max_attempts else "dead"
            db.execute(
                "UPDATE jobs SET status = ?, attempts = ?, error = ?, not_before = ?,"
                " locked_until = NULL, updated_at = ? WHERE id = ?",
                (
                    new_status,
                    attempts,
                    error[:MAX_ERROR_CHARS],
                    retry_at_ms if retry_at_ms is not None else now,
                    now,
                    job_id,
                ),
            )
            if new_status == "queued":
                db.execute(_BUMP_JOBS_VERSION)
        return new_status

    def get_job(self, job_id: str) -> dict[str, Any]:
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise JobNotFound(job_id)
        return _job_row(rows[0])

    def list_jobs(
        self, agent_id: str | None = None, status: JobStatus | None = None
    ) -> list[dict[str, Any]]:
        rows = self._read(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE (? IS NULL OR agent_id = ?)"
            " AND (? IS NULL OR status = ?) ORDER BY created_at, rowid LIMIT 1000",
            (agent_id, agent_id, status, status),
        )
        return [_job_row(row) for row in rows]

    def _route_inbound(
        self,
        db: sqlite3.Connection,
        now: int,
        agent_id: str,
        account_id: str,
        message: InboundMessage,
    ) -> None:
        """Queue the job an inbound WhatsApp message asks of its agent (once per message)."""
        if not message.text:
            return  # nothing to answer; the message itself is recorded
        try:
            conversation = WhatsAppConversation(
                channel="whatsapp",
                account_id=account_id,
                contact=message.sender.removeprefix("+"),
            )
        except ValidationError:
            return  # not a phone number: nobody to reply to; the message is recorded
        insert_job(
            db,
            now,
            agent_id,
            message.text[:MAX_INPUT_CHARS],
            conversation,
            idempotency_key=f"whatsapp:{message.provider_id}",
        )

    def conversation_history(
        self, conversation: Conversation, session_key: str, limit: int
    ) -> list[Turn]:
        rows = self._read(
            "SELECT role, content, job_id, at FROM ("
            " SELECT rowid, role, content, job_id, at FROM turns"
            " WHERE conversation_key = ? AND session_key = ?"
            " ORDER BY at DESC, rowid DESC LIMIT ?) ORDER BY at, rowid",
            (conversation.key, session_key, limit),
        )
        return [Turn(role=r, content=c, job_id=j, at=a) for r, c, j, a in rows]

    def _end_jobs_of(self, db: sqlite3.Connection, agent_id: str, now: int) -> None:
        """Fail the removed agent's unfinished jobs, fencing a claim still running one."""
        db.execute(
            "UPDATE jobs SET status = 'failed', error = 'agent removed', claim_token = NULL,"
            " locked_until = NULL, updated_at = ?"
            " WHERE agent_id = ? AND status IN ('queued', 'running')",
            (now, agent_id),
        )


def _claimed(db: sqlite3.Connection, job_id: str, claim_token: str) -> JobStatus:
    """The job's status if `claim_token` is its current claim; raises Fenced otherwise
    (JobNotFound if there is no such job)."""
    row = db.execute("SELECT status, claim_token FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise JobNotFound(job_id)
    if row[1] != claim_token:
        raise Fenced(f"job {job_id!r}: this claim is not current")
    return cast(JobStatus, row[0])


def _stored(conversation: Conversation | None) -> tuple[str | None, str | None]:
    """The conversation's (account_id, contact) columns; a direct one's id is its contact."""
    if isinstance(conversation, WhatsAppConversation):
        return conversation.account_id, conversation.contact
    if isinstance(conversation, DirectConversation):
        return None, conversation.id
    return None, None


def _conversation(
    channel: str | None, account_id: str | None, contact: str | None
) -> Conversation | None:
    if channel == "whatsapp" and account_id is not None and contact is not None:
        return WhatsAppConversation(channel="whatsapp", account_id=account_id, contact=contact)
    if channel == "direct" and contact is not None:
        return DirectConversation(channel="direct", id=contact)
    return None


def _job_row(row: tuple[Any, ...]) -> dict[str, Any]:
    (
        job_id,
        agent_id,
        kind,
        channel,
        account_id,
        contact,
        input_text,
        status,
        attempts,
        not_before,
        locked_until,
        worker_id,
        result,
        error,
        input_tokens,
        output_tokens,
        steps,
        created_at,
        updated_at,
    ) = row
    conversation = _conversation(channel, account_id, contact)
    return {
        "id": job_id,
        "agentId": agent_id,
        "kind": kind,
        "conversation": conversation.model_dump(by_alias=True) if conversation else None,
        "input": input_text,
        "status": status,
        "attempts": attempts,
        "notBefore": not_before,
        "lockedUntil": locked_until,
        "workerId": worker_id,
        "result": result,
        "error": error,
        "usage": (
            {"inputTokens": input_tokens, "outputTokens": output_tokens}
            if input_tokens is not None
            else None
        ),
        "steps": steps,
        "createdAt": created_at,
        "updatedAt": updated_at,
    }
