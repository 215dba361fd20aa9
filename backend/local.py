"""The embedded backend: SQLite (stdlib), WAL mode, safe for several processes on one file.

Configuration (`agents`) and presence (`presence`) are separate tables, and only changes
to `agents` bump the change counter that `agents_version()` reads, so heartbeats never
look like configuration changes. Worker registrations (`workers`) expire by this
machine's clock; the version includes the live set, computed when it is read, so a join,
a leave and an expiry all change it. Presence expires too: reads report an agent offline
once its last heartbeat is older than 3 x its interval, and every presence write sets
such agents offline in the table.
"""

import hashlib
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent_runtime.clock import now_ms
from agent_runtime.errors import AgentNotFound, BackendError, InvalidAgent, WorkerIdTaken
from backend.local_jobs import JOBS_SCHEMA, LocalJobs
from backend.local_whatsapp import MIGRATE_STATUSES_TO_V3, WHATSAPP_SCHEMA, LocalWhatsApp
from backend.port import CLOSE_TIMEOUT_S, Backend
from messages import AgentRecord, Heartbeat
from messages.agent import CONFIG_FIELDS, PRESENCE_TTL_INTERVALS, describe_validation_error

BUSY_TIMEOUT_S = 5.0
"""How long a write waits for another process's write lock before failing."""

MAX_CLOCK_AHEAD_MS = 60_000
"""A heartbeat stamped further ahead of this machine's clock is refused."""

SCHEMA_VERSION = 5
"""`PRAGMA user_version` of the current schema; version 1 (user_version 0) allowed a
NULL agent id and had no workers; version 2 kept no error with a delivery status;
version 3 had no idempotency key on agents; version 4 had no instructions, model or
wake-up turn on agents, no kinds or direct conversations on jobs, no session on turns."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    id TEXT NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    session_key TEXT NOT NULL,
    heartbeat_interval_ms INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE,
    instructions TEXT,
    model TEXT,
    wakeup_prompt TEXT,
    wakeup_interval_ms INTEGER
);
CREATE TABLE IF NOT EXISTS presence (
    agent_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    last_heartbeat_at INTEGER
);
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT NOT NULL PRIMARY KEY,
    instance_id TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS change_counters (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO change_counters (name, version) VALUES ('agents', 0);
CREATE TRIGGER IF NOT EXISTS agents_inserted AFTER INSERT ON agents BEGIN
    UPDATE change_counters SET version = version + 1 WHERE name = 'agents';
END;
CREATE TRIGGER IF NOT EXISTS agents_updated AFTER UPDATE ON agents BEGIN
    UPDATE change_counters SET version = version + 1 WHERE name = 'agents';
END;
CREATE TRIGGER IF NOT EXISTS agents_deleted AFTER DELETE ON agents BEGIN
    UPDATE change_counters SET version = version + 1 WHERE name = 'agents';
    DELETE FROM presence WHERE agent_id = old.id;
END;
"""

_MIGRATE_AGENTS_TO_V4 = """
ALTER TABLE agents ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS agents_idempotency_key ON agents (idempotency_key);
"""
"""Schema version 4: the key of the create call that made the agent (SQLite cannot add a
UNIQUE column; the index makes it unique)."""

_MIGRATE_AGENTS_TO_V5 = """
ALTER TABLE agents ADD COLUMN instructions TEXT;
ALTER TABLE agents ADD COLUMN model TEXT;
ALTER TABLE agents ADD COLUMN wakeup_prompt TEXT;
ALTER TABLE agents ADD COLUMN wakeup_interval_ms INTEGER;
"""
"""Schema version 5: what an agent's jobs run with, and its wake-up turn."""

_AGENT_FIELDS = tuple(f for f in AgentRecord.model_fields if f in CONFIG_FIELDS)
"""The stored configuration, in the record's field order (presence is apart)."""
_AGENT_COLUMNS = ", ".join(_AGENT_FIELDS)
_OPTIONAL_FIELDS = ("instructions", "model", "wakeup_prompt", "wakeup_interval_ms")

_MIGRATE_FROM_V1 = """
ALTER TABLE agents RENAME TO agents_v1;
CREATE TABLE agents (
    id TEXT NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    session_key TEXT NOT NULL,
    heartbeat_interval_ms INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
INSERT INTO agents SELECT id, name, session_key, heartbeat_interval_ms, created_at, updated_at
    FROM agents_v1 WHERE id IS NOT NULL;
DROP TABLE agents_v1;
"""
"""Rebuild `agents` with a NOT NULL id (SQLite lets a TEXT PRIMARY KEY be NULL, and
cannot add the constraint in place); rows without an id are dropped. The old triggers
go with the old table; SCHEMA creates them again."""

_LIST_AGENTS = f"SELECT {_AGENT_COLUMNS} FROM agents ORDER BY created_at, rowid"

_LIST_PRESENCE = f"""
SELECT a.id,
    CASE WHEN p.status = 'online'
        AND p.last_heartbeat_at + {PRESENCE_TTL_INTERVALS} * a.heartbeat_interval_ms > :now
    THEN 'online' ELSE 'offline' END,
    p.last_heartbeat_at
FROM agents AS a LEFT JOIN presence AS p ON p.agent_id = a.id
ORDER BY a.created_at, a.rowid
"""

_EXPIRE_PRESENCE = f"""
UPDATE presence SET status = 'offline'
WHERE status = 'online' AND agent_id IN (
    SELECT a.id FROM agents AS a JOIN presence AS p ON p.agent_id = a.id
    WHERE p.status = 'online'
        AND p.last_heartbeat_at + {PRESENCE_TTL_INTERVALS} * a.heartbeat_interval_ms <= :now
)
"""

_LIVE_WORKERS = "SELECT worker_id FROM workers WHERE expires_at > ? ORDER BY worker_id"

_RECORD_HEARTBEAT = """
INSERT INTO presence (agent_id, status, last_heartbeat_at)
SELECT :agent_id, 'online', :at_ms WHERE EXISTS (SELECT 1 FROM agents WHERE id = :agent_id)
ON CONFLICT (agent_id) DO UPDATE SET
    status = 'online',
    last_heartbeat_at = max(coalesce(last_heartbeat_at, 0), excluded.last_heartbeat_at)
"""


class LocalBackend(LocalJobs, LocalWhatsApp, Backend):
    """SQLite at `path` (created with its parent folder if missing).

    One connection per process, used under a lock; WAL lets other processes read while
    one writes, and writers wait up to BUSY_TIMEOUT_S for each other. `clock` (epoch ms)
    is the backend's clock: expiry of workers and presence, and record times.
    """

    def __init__(self, path: Path, clock: Callable[[], int] = now_ms) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._lock:
                self._migrate()
        except (OSError, sqlite3.Error) as error:
            raise BackendError(f"cannot open the local database {str(path)!r}: {error}") from None

    def _migrate(self) -> None:
        db = self._db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        # Each step runs only where its table exists without its change; run twice (two
        # processes opening an old file at once) the rebuild copies whatever `agents`
        # holds, and a column already there is not added again.
        migration = ""
        if self._columns("agents") and version < 2:
            migration += _MIGRATE_FROM_V1
        if "error" not in self._columns("whatsapp_statuses", absent={"error"}):
            migration += MIGRATE_STATUSES_TO_V3
        if "idempotency_key" not in self._columns("agents", absent={"idempotency_key"}):
            migration += _MIGRATE_AGENTS_TO_V4
        if "instructions" not in self._columns("agents", absent={"instructions"}):
            migration += _MIGRATE_AGENTS_TO_V5
        migration += self._jobs_migration()
        try:
            db.executescript(
                f"BEGIN IMMEDIATE; {migration} {SCHEMA} {WHATSAPP_SCHEMA} {JOBS_SCHEMA}"
                f" PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            )
        except sqlite3.Error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _columns(self, table: str, absent: set[str] | None = None) -> set[str]:
        """The table's columns; `absent` when the table does not exist (nothing to do)."""
        rows = self._db.execute(f"PRAGMA table_info({table})").fetchall()
        return {row[1] for row in rows} if rows else set(absent or ())

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: committed on success, rolled back on any error."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as error:
                raise self._storage_error(error) from None

    def _read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as error:
                raise self._storage_error(error) from None

    def __repr__(self) -> str:
        return f"local:{self.path}"

    def _storage_error(self, error: sqlite3.Error) -> BackendError:
        return BackendError(f"local database {str(self.path)!r}: {error}")

    def list_agents(self) -> list[dict[str, Any]]:
        return [_agent_row(row) for row in self._read(_LIST_AGENTS)]

    def list_presence(self) -> list[dict[str, Any]]:
        return [
            {"agentId": agent_id, "status": status, "lastHeartbeatAt": last}
            for agent_id, status, last in self._read(_LIST_PRESENCE, {"now": self.clock()})
        ]

    def agents_version(self) -> str:
        with self._lock:
            try:
                (counter,) = self._db.execute(
                    "SELECT version FROM change_counters WHERE name = 'agents'"
                ).fetchone()
                live = self._db.execute(_LIVE_WORKERS, (self.clock(),)).fetchall()
            except sqlite3.Error as error:
                raise self._storage_error(error) from None
        members = hashlib.blake2b("\n".join(w for (w,) in live).encode(), digest_size=6)
        return f"{counter}.{members.hexdigest()}"

    def record_heartbeats(self, beats: Sequence[Heartbeat]) -> list[str]:
        if not beats:
            return []
        now = self.clock()
        ahead = [b for b in beats if b.at_ms > now + MAX_CLOCK_AHEAD_MS]
        accepted = [
            {"agent_id": b.agent_id, "at_ms": b.at_ms}
            for b in beats
            if b.at_ms <= now + MAX_CLOCK_AHEAD_MS
        ]
        with self._write() as db:
            db.executemany(_RECORD_HEARTBEAT, accepted)
            db.execute(_EXPIRE_PRESENCE, {"now": now})
            # Unknown agents are ignored, as for any beat; only known ones are refused.
            return [
                b.agent_id
                for b in ahead
                if db.execute("SELECT 1 FROM agents WHERE id = ?", (b.agent_id,)).fetchone()
            ]

    def mark_offline(self, agent_ids: Sequence[str]) -> None:
        if not agent_ids:
            return
        with self._write() as db:
            db.executemany(
                "UPDATE presence SET status = 'offline' WHERE agent_id = ?",
                [(agent_id,) for agent_id in agent_ids],
            )
            db.execute(_EXPIRE_PRESENCE, {"now": self.clock()})

    def register_worker(self, worker_id: str, instance_id: str, ttl_ms: int) -> list[str]:
        now = self.clock()
        with self._write() as db:
            holder = db.execute(
                "SELECT instance_id FROM workers WHERE worker_id = ? AND expires_at > ?",
                (worker_id, now),
            ).fetchone()
            if holder is not None and holder[0] != instance_id:
                raise WorkerIdTaken(worker_id)
            db.execute("DELETE FROM workers WHERE expires_at <= ?", (now,))
            db.execute(
                "INSERT OR REPLACE INTO workers (worker_id, instance_id, expires_at)"
                " VALUES (?, ?, ?)",
                (worker_id, instance_id, now + ttl_ms),
            )
            return [w for (w,) in db.execute(_LIVE_WORKERS, (now,))]

    def deregister_worker(self, worker_id: str, instance_id: str) -> bool:
        with self._write() as db:
            removed = db.execute(
                "DELETE FROM workers WHERE worker_id = ? AND instance_id = ?",
                (worker_id, instance_id),
            ).rowcount
        return removed > 0

    def list_workers(self) -> list[str]:
        return [w for (w,) in self._read(_LIVE_WORKERS, (self.clock(),))]

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
        agent_id = secrets.token_hex(8)
        record = _validated(
            id=agent_id,
            name=name,
            session_key=session_key if session_key is not None else f"agent:{agent_id}",
            heartbeat_interval_ms=heartbeat_interval_ms,
            instructions=instructions or None,
            model=model or None,
            wakeup_prompt=wakeup_prompt or None,
            wakeup_interval_ms=wakeup_interval_ms or None,
            updated_at=self.clock(),
        )
        with self._write() as db:
            if idempotency_key is not None:
                known = db.execute(
                    f"SELECT {_AGENT_COLUMNS} FROM agents WHERE idempotency_key = ?",
                    (idempotency_key,),
                ).fetchone()
                if known is not None:  # a retried create: the first one's agent
                    return _validated(**dict(zip(_AGENT_FIELDS, known, strict=True)))
            db.execute(
                f"INSERT INTO agents ({_AGENT_COLUMNS}, created_at, idempotency_key)"
                f" VALUES ({', '.join('?' * (len(_AGENT_FIELDS) + 2))})",
                (*_agent_values(record), record.updated_at, idempotency_key),
            )
        return record

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
        given = {
            "name": name,
            "heartbeat_interval_ms": heartbeat_interval_ms,
            "session_key": session_key,
            "instructions": instructions,
            "model": model,
            "wakeup_prompt": wakeup_prompt,
            "wakeup_interval_ms": wakeup_interval_ms,
        }
        changes = {
            field: (value or None) if field in _OPTIONAL_FIELDS else value  # "" / 0 clears
            for field, value in given.items()
            if value is not None
        }
        with self._write() as db:
            row = db.execute(
                f"SELECT {_AGENT_COLUMNS} FROM agents WHERE id = ?", (agent_id,)
            ).fetchone()
            if row is None:
                raise AgentNotFound(agent_id)
            current = dict(zip(_AGENT_FIELDS, row, strict=True))
            record = _validated(**{**current, **changes, "updated_at": self.clock()})
            db.execute(
                f"UPDATE agents SET ({_AGENT_COLUMNS})"
                f" = ({', '.join('?' * len(_AGENT_FIELDS))}) WHERE id = ?",
                (*_agent_values(record), agent_id),
            )
        return record

    def remove_agent(self, agent_id: str) -> None:
        with self._write() as db:
            if db.execute("DELETE FROM agents WHERE id = ?", (agent_id,)).rowcount == 0:
                raise AgentNotFound(agent_id)
            self._end_jobs_of(db, agent_id, self.clock())

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        # A call blocked on another process's write lock holds `_lock` for up to
        # BUSY_TIMEOUT_S: a stopping process does not wait for it.
        if not self._lock.acquire(timeout=timeout_s):
            return
        try:
            self._db.close()
        finally:
            self._lock.release()


def _agent_values(record: AgentRecord) -> tuple[Any, ...]:
    """The record's values in `_AGENT_FIELDS` order."""
    return tuple(getattr(record, field) for field in _AGENT_FIELDS)


def _agent_row(row: Sequence[Any]) -> dict[str, Any]:
    """A stored agent as the port's camelCase row."""
    return {
        str(AgentRecord.model_fields[field].alias): value
        for field, value in zip(_AGENT_FIELDS, row, strict=True)
    }


def _validated(**fields: Any) -> AgentRecord:
    try:
        return AgentRecord(**fields)
    except ValidationError as error:
        raise InvalidAgent(describe_validation_error(error)) from None
