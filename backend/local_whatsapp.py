"""The embedded backend's WhatsApp tables: each account's lease, the outbound queue and
what webhooks delivered. Semantics in contract/README.md ("WhatsApp"); `LocalBackend`
mixes this in, so every call is one SQLite transaction on its connection.

Fencing lives in the transactions: a claim checks the lease in the same transaction, and
marking a message needs its current claim token and the lease's epoch to be the claim's.
"""

import secrets
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, cast

from pydantic import ValidationError

from agent_runtime.errors import Fenced, InvalidArgument, MessageNotFound
from messages.agent import describe_validation_error
from messages.whatsapp import (
    MAX_TEXT_CHARS,
    ClaimedMessage,
    InboundMessage,
    Lease,
    OutboundStatus,
    OutboundText,
    StatusUpdate,
    WebhookRecorded,
)

MAX_ERROR_CHARS = 500
"""How much of a send error is kept as `lastError`."""

WHATSAPP_SCHEMA = """
CREATE TABLE IF NOT EXISTS whatsapp_leases (
    account_id TEXT NOT NULL PRIMARY KEY,
    owner_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS whatsapp_outbound (
    id TEXT NOT NULL PRIMARY KEY,
    account_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    text TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before INTEGER NOT NULL,
    claim_token TEXT,
    claim_epoch INTEGER,
    locked_until INTEGER,
    wamid TEXT,
    last_error TEXT,
    idempotency_key TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS whatsapp_outbound_sendable
    ON whatsapp_outbound (account_id, status, not_before);
CREATE UNIQUE INDEX IF NOT EXISTS whatsapp_outbound_key
    ON whatsapp_outbound (account_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS whatsapp_outbound_wamid ON whatsapp_outbound (wamid);
CREATE TABLE IF NOT EXISTS whatsapp_inbound (
    provider_id TEXT NOT NULL PRIMARY KEY,
    account_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    text TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS whatsapp_statuses (
    provider_id TEXT NOT NULL,
    status TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    error TEXT,
    account_id TEXT,
    PRIMARY KEY (provider_id, status)
);
"""
"""Inbound messages and statuses are kept (the dedupe needs at least 8 days: Meta
retries a failed delivery for up to 7)."""

MIGRATE_STATUSES_TO_V3 = """
ALTER TABLE whatsapp_statuses ADD COLUMN error TEXT;
ALTER TABLE whatsapp_statuses ADD COLUMN account_id TEXT;
"""
"""Schema version 3: a status keeps its error and account, for a `markSent` that comes
after it."""

_PROGRESS = {"sent": 1, "delivered": 2, "read": 3}
_SENT = frozenset(_PROGRESS)

NO_ERROR_GIVEN = "failed (the webhook gave no error)"
"""Delivery statuses move forward only; `failed` can come at any point."""

_OUTBOX_COLUMNS = "id, recipient, text, status, attempts, wamid, last_error, created_at, updated_at"


def insert_outbound(
    db: sqlite3.Connection,
    now: int,
    account_id: str,
    to: str,
    text: str,
    *,
    idempotency_key: str | None,
) -> str:
    """Queue a (validated) message inside the caller's transaction; the first message's
    id for a known key."""
    if idempotency_key is not None:
        known = db.execute(
            "SELECT id FROM whatsapp_outbound WHERE account_id = ? AND idempotency_key = ?",
            (account_id, idempotency_key),
        ).fetchone()
        if known is not None:
            return str(known[0])
    message_id = secrets.token_hex(8)
    db.execute(
        "INSERT INTO whatsapp_outbound (id, account_id, recipient, text, status,"
        " not_before, idempotency_key, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
        (message_id, account_id, to, text, now, idempotency_key, now, now),
    )
    return message_id


class LocalWhatsApp:
    """The WhatsApp half of `LocalBackend` (which provides `_write`, `_read`, `clock`,
    and `_route_inbound`: the jobs an inbound message queues for its agent)."""

    clock: Callable[[], int]
    _route_inbound: Callable[[sqlite3.Connection, int, str, str, InboundMessage], None]
    _write: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _read: Callable[..., list[tuple[Any, ...]]]

    # --- the lease -----------------------------------------------------------------------

    def acquire_lease(self, account_id: str, owner_id: str, ttl_ms: int) -> Lease:
        now = self.clock()
        with self._write() as db:
            row = db.execute(
                "SELECT owner_id, epoch, expires_at FROM whatsapp_leases WHERE account_id = ?",
                (account_id,),
            ).fetchone()
            if row is not None and row[0] != owner_id and row[2] > now:
                return _lease(account_id, *row, held=False)
            epoch = 1 if row is None else row[1] + (row[0] != owner_id)
            db.execute(
                "INSERT OR REPLACE INTO whatsapp_leases VALUES (?, ?, ?, ?)",
                (account_id, owner_id, epoch, now + ttl_ms),
            )
        return _lease(account_id, owner_id, epoch, now + ttl_ms, held=True)

    def release_lease(self, account_id: str, owner_id: str, epoch: int) -> bool:
        now = self.clock()
        with self._write() as db:
            released = db.execute(
                "UPDATE whatsapp_leases SET expires_at = min(expires_at, ?)"
                " WHERE account_id = ? AND owner_id = ? AND epoch = ?",
                (now, account_id, owner_id, epoch),
            ).rowcount
        return released > 0

    def get_lease(self, account_id: str) -> Lease | None:
        rows = self._read(
            "SELECT owner_id, epoch, expires_at FROM whatsapp_leases WHERE account_id = ?",
            (account_id,),
        )
        return _lease(account_id, *rows[0], held=False) if rows else None

    # --- the outbound queue ------------------------------------------------------------

    def enqueue_outbound(
        self, account_id: str, to: str, text: str, idempotency_key: str | None = None
    ) -> str:
        try:
            checked = OutboundText(to=to, text=text)
        except ValidationError as error:
            raise InvalidArgument(describe_validation_error(error)) from None
        now = self.clock()
        with self._write() as db:
            return insert_outbound(
                db,
                now,
                account_id,
                checked.to.removeprefix("+"),
                checked.text,
                idempotency_key=idempotency_key,
            )

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
        now = self.clock()
        with self._write() as db:
            lease = db.execute(
                "SELECT owner_id, epoch, expires_at FROM whatsapp_leases WHERE account_id = ?",
                (account_id,),
            ).fetchone()
            if lease is None or lease[0] != owner_id or lease[1] != epoch or lease[2] <= now:
                raise Fenced(f"account {account_id!r}: lease epoch {epoch} is not held")
            # An expired lock is an attempt that may have happened.
            db.execute(
                "UPDATE whatsapp_outbound SET attempts = attempts + 1,"
                " last_error = 'claim lock expired', claim_token = NULL,"
                " status = CASE WHEN attempts + 1 >= ? THEN 'failed' ELSE 'queued' END,"
                " not_before = ?, updated_at = ?"
                " WHERE account_id = ? AND status = 'sending' AND locked_until <= ?",
                (max_attempts, now, now, account_id, now),
            )
            rows = db.execute(
                "SELECT id, recipient, text, attempts FROM whatsapp_outbound"
                " WHERE account_id = ? AND status = 'queued' AND not_before <= ?"
                " ORDER BY created_at, rowid LIMIT ?",
                (account_id, now, limit),
            ).fetchall()
            claimed = [
                ClaimedMessage(
                    id=row[0],
                    to=row[1],
                    text=row[2],
                    attempts=row[3],
                    claim_token=secrets.token_hex(16),
                )
                for row in rows
            ]
            db.executemany(
                "UPDATE whatsapp_outbound SET status = 'sending', claim_token = ?,"
                " claim_epoch = ?, locked_until = ?, updated_at = ? WHERE id = ?",
                [(m.claim_token, epoch, now + lock_ms, now, m.id) for m in claimed],
            )
        return claimed

    def mark_sent(self, message_id: str, claim_token: str, epoch: int, wamid: str) -> None:
        now = self.clock()
        with self._write() as db:
            status = self._claimed(db, message_id, claim_token, epoch)
            if status in _SENT:
                return  # a repeat
            if status != "sending":
                raise Fenced(f"message {message_id!r} was marked {status} by this claim")
            _check_lease(db, message_id, epoch)
            db.execute(
                "UPDATE whatsapp_outbound SET status = 'sent', wamid = ?, locked_until = NULL,"
                " updated_at = ? WHERE id = ?",
                (wamid, now, message_id),
            )
            # A status webhook can come before this mark: apply what it said.
            earlier = db.execute(
                "SELECT s.status, s.timestamp, s.error FROM whatsapp_statuses AS s"
                " JOIN whatsapp_outbound AS m ON m.id = ?"
                " WHERE s.provider_id = ? AND s.account_id = m.account_id"
                " ORDER BY s.recorded_at, s.rowid",
                (message_id, wamid),
            ).fetchall()
            for update_status, at_ms, error in earlier:
                update = StatusUpdate(
                    provider_id=wamid, status=update_status, timestamp=at_ms, error=error
                )
                _apply_status(db, update, message_id, now)

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
        now = self.clock()
        with self._write() as db:
            status = self._claimed(db, message_id, claim_token, epoch)
            if status in _SENT:
                raise Fenced(f"message {message_id!r} was marked sent by this claim")
            if status != "sending":
                return status  # a repeat: answer as the first call did
            _check_lease(db, message_id, epoch)
            (attempts,) = db.execute(
                "SELECT attempts + 1 FROM whatsapp_outbound WHERE id = ?", (message_id,)
            ).fetchone()
            retry = retry_at_ms is not None and attempts < max_attempts
            new_status: OutboundStatus = "queued" if retry else "failed"
            db.execute(
                "UPDATE whatsapp_outbound SET status = ?, attempts = ?, last_error = ?,"
                " not_before = ?, locked_until = NULL, updated_at = ? WHERE id = ?",
                (
                    new_status,
                    attempts,
                    error[:MAX_ERROR_CHARS],
                    retry_at_ms if retry else now,
                    now,
                    message_id,
                ),
            )
        return new_status

    def release_outbound(
        self, message_id: str, claim_token: str, not_before_ms: int | None = None
    ) -> bool:
        now = self.clock()
        with self._write() as db:
            if not db.execute(
                "SELECT 1 FROM whatsapp_outbound WHERE id = ?", (message_id,)
            ).fetchone():
                raise MessageNotFound(message_id)
            released = db.execute(
                "UPDATE whatsapp_outbound SET status = 'queued', claim_token = NULL,"
                " locked_until = NULL, not_before = ?, updated_at = ?"
                " WHERE id = ? AND claim_token = ? AND status = 'sending'",
                (not_before_ms if not_before_ms is not None else now, now, message_id, claim_token),
            ).rowcount
        return released > 0

    @staticmethod
    def _claimed(
        db: sqlite3.Connection, message_id: str, claim_token: str, epoch: int
    ) -> OutboundStatus:
        """The message's status if `claim_token` is its current claim, made at `epoch`;
        raises Fenced otherwise (MessageNotFound if there is no such message). A repeat
        of a mark answers as the first one did even after the lease moved on; a first
        mark also needs `_check_lease`."""
        row = db.execute(
            "SELECT status, claim_token, claim_epoch FROM whatsapp_outbound WHERE id = ?",
            (message_id,),
        ).fetchone()
        if row is None:
            raise MessageNotFound(message_id)
        status, token, claim_epoch = row
        if token != claim_token or claim_epoch != epoch:
            raise Fenced(f"message {message_id!r}: this claim is not current")
        return cast(OutboundStatus, status)

    # --- webhooks and listings -----------------------------------------------------------

    def record_webhook(
        self,
        account_id: str,
        messages: Sequence[InboundMessage],
        statuses: Sequence[StatusUpdate],
        agent_id: str | None = None,
    ) -> WebhookRecorded:
        now = self.clock()
        recorded = applied = 0
        with self._write() as db:
            routed = (
                agent_id is not None
                and db.execute("SELECT 1 FROM agents WHERE id = ?", (agent_id,)).fetchone()
            )
            for message in messages:
                new = db.execute(
                    "INSERT OR IGNORE INTO whatsapp_inbound VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        message.provider_id,
                        account_id,
                        message.sender,
                        message.text[:MAX_TEXT_CHARS],
                        message.timestamp,
                        now,
                    ),
                ).rowcount
                recorded += new
                if new and routed:
                    assert agent_id is not None
                    self._route_inbound(db, now, agent_id, account_id, message)
            for update in statuses:
                new = db.execute(
                    "INSERT OR IGNORE INTO whatsapp_statuses VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        update.provider_id,
                        update.status,
                        update.timestamp,
                        now,
                        update.error,
                        account_id,
                    ),
                ).rowcount
                applied += new
                target = db.execute(
                    "SELECT id FROM whatsapp_outbound WHERE wamid = ? AND account_id = ?",
                    (update.provider_id, account_id),
                ).fetchone()
                if new and target is not None:
                    _apply_status(db, update, target[0], now)
        duplicates = len(messages) + len(statuses) - recorded - applied
        return WebhookRecorded(messages=recorded, statuses=applied, duplicates=duplicates)

    def list_outbox(
        self, account_id: str, status: OutboundStatus | None = None
    ) -> list[dict[str, Any]]:
        rows = self._read(
            f"SELECT {_OUTBOX_COLUMNS} FROM whatsapp_outbound WHERE account_id = ?"
            " AND (? IS NULL OR status = ?) ORDER BY created_at, rowid LIMIT 1000",
            (account_id, status, status),
        )
        keys = ("id", "to", "text", "status", "attempts", "wamid", "lastError")
        return [
            {**dict(zip(keys, row, strict=False)), "createdAt": row[7], "updatedAt": row[8]}
            for row in rows
        ]

    def list_inbox(self, account_id: str) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT provider_id, sender, text, received_at FROM whatsapp_inbound"
            " WHERE account_id = ? ORDER BY received_at, rowid LIMIT 1000",
            (account_id,),
        )
        return [
            {"providerId": p, "from": sender, "text": text, "receivedAt": at}
            for p, sender, text, at in rows
        ]


def _lease(account_id: str, owner_id: str, epoch: int, expires_at: int, *, held: bool) -> Lease:
    return Lease(
        account_id=account_id, owner_id=owner_id, epoch=epoch, expires_at=expires_at, held=held
    )


def _check_lease(db: sqlite3.Connection, message_id: str, epoch: int) -> None:
    """Raise Fenced if the account's lease moved past `epoch` (another owner took it)."""
    (lease_epoch,) = db.execute(
        "SELECT l.epoch FROM whatsapp_outbound AS m"
        " LEFT JOIN whatsapp_leases AS l ON l.account_id = m.account_id WHERE m.id = ?",
        (message_id,),
    ).fetchone()
    if lease_epoch != epoch:
        raise Fenced(f"message {message_id!r}: the lease moved from epoch {epoch} to {lease_epoch}")


def _apply_status(db: sqlite3.Connection, update: StatusUpdate, message_id: str, now: int) -> None:
    """Move the message forward (sent < delivered < read) or to failed; failed is final."""
    (current,) = db.execute(
        "SELECT status FROM whatsapp_outbound WHERE id = ?", (message_id,)
    ).fetchone()
    if current == "failed":
        return
    if update.status == "failed":
        db.execute(
            "UPDATE whatsapp_outbound SET status = 'failed', last_error = ?, updated_at = ?"
            " WHERE id = ?",
            ((update.error or NO_ERROR_GIVEN)[:MAX_ERROR_CHARS], now, message_id),
        )
    elif _PROGRESS[update.status] > _PROGRESS.get(current, 0):
        db.execute(
            "UPDATE whatsapp_outbound SET status = ?, updated_at = ? WHERE id = ?",
            (update.status, now, message_id),
        )
