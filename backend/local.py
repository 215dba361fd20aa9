"""The embedded backend: SQLite (stdlib), WAL mode, safe for several processes on one file.

Configuration (`agents`) and presence (`presence`) are separate tables, and only changes
to `agents` bump the change counter that `agents_version()` reads, so heartbeats never
look like configuration changes.
"""

import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent_runtime.clock import now_ms
from agent_runtime.errors import AgentNotFound, BackendError, InvalidAgent
from backend.port import Backend
from messages import AgentRecord, Heartbeat
from messages.agent import describe_validation_error

BUSY_TIMEOUT_S = 5.0
"""How long a write waits for another process's write lock before failing."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    session_key TEXT NOT NULL,
    heartbeat_interval_ms INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS presence (
    agent_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    last_heartbeat_at INTEGER
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

_LIST_AGENTS = """
SELECT id, name, session_key, heartbeat_interval_ms, updated_at
FROM agents ORDER BY created_at, rowid
"""

_LIST_PRESENCE = """
SELECT a.id, p.status, p.last_heartbeat_at
FROM agents AS a LEFT JOIN presence AS p ON p.agent_id = a.id
ORDER BY a.created_at, a.rowid
"""

_RECORD_HEARTBEAT = """
INSERT INTO presence (agent_id, status, last_heartbeat_at)
SELECT :agent_id, 'online', :at_ms WHERE EXISTS (SELECT 1 FROM agents WHERE id = :agent_id)
ON CONFLICT (agent_id) DO UPDATE SET
    status = 'online',
    last_heartbeat_at = max(coalesce(last_heartbeat_at, 0), excluded.last_heartbeat_at)
"""


class LocalBackend(Backend):
    """SQLite at `path` (created with its parent folder if missing).

    One connection per process, used under a lock; WAL lets other processes read while
    one writes, and writers wait up to BUSY_TIMEOUT_S for each other.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._lock:
                self._db.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
        except (OSError, sqlite3.Error) as error:
            raise BackendError(f"cannot open the local database {str(path)!r}: {error}") from None

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

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
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
        return [
            {
                "id": agent_id,
                "name": name,
                "sessionKey": session_key,
                "heartbeatIntervalMs": interval,
                "updatedAt": updated_at,
            }
            for agent_id, name, session_key, interval, updated_at in self._read(_LIST_AGENTS)
        ]

    def list_presence(self) -> list[dict[str, Any]]:
        return [
            {"agentId": agent_id, "status": status or "offline", "lastHeartbeatAt": last}
            for agent_id, status, last in self._read(_LIST_PRESENCE)
        ]

    def agents_version(self) -> str:
        rows = self._read("SELECT version FROM change_counters WHERE name = 'agents'")
        return str(rows[0][0]) if rows else "0"

    def record_heartbeats(self, beats: Sequence[Heartbeat]) -> None:
        if not beats:
            return
        with self._write() as db:
            db.executemany(
                _RECORD_HEARTBEAT, [{"agent_id": b.agent_id, "at_ms": b.at_ms} for b in beats]
            )

    def mark_offline(self, agent_ids: Sequence[str]) -> None:
        if not agent_ids:
            return
        with self._write() as db:
            db.executemany(
                "UPDATE presence SET status = 'offline' WHERE agent_id = ?",
                [(agent_id,) for agent_id in agent_ids],
            )

    def create_agent(
        self, name: str, heartbeat_interval_ms: int, session_key: str | None = None
    ) -> AgentRecord:
        agent_id = secrets.token_hex(8)
        record = _validated(
            id=agent_id,
            name=name,
            session_key=session_key if session_key is not None else f"agent:{agent_id}",
            heartbeat_interval_ms=heartbeat_interval_ms,
            updated_at=now_ms(),
        )
        with self._write() as db:
            db.execute(
                "INSERT INTO agents (id, name, session_key, heartbeat_interval_ms, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.name,
                    record.session_key,
                    record.heartbeat_interval_ms,
                    record.updated_at,
                    record.updated_at,
                ),
            )
        return record

    def update_agent(
        self,
        agent_id: str,
        *,
        name: str | None = None,
        heartbeat_interval_ms: int | None = None,
        session_key: str | None = None,
    ) -> AgentRecord:
        with self._write() as db:
            row = db.execute(
                "SELECT name, session_key, heartbeat_interval_ms FROM agents WHERE id = ?",
                (agent_id,),
            ).fetchone()
            if row is None:
                raise AgentNotFound(agent_id)
            record = _validated(
                id=agent_id,
                name=row[0] if name is None else name,
                session_key=row[1] if session_key is None else session_key,
                heartbeat_interval_ms=row[2]
                if heartbeat_interval_ms is None
                else (heartbeat_interval_ms),
                updated_at=now_ms(),
            )
            db.execute(
                "UPDATE agents SET name = ?, session_key = ?, heartbeat_interval_ms = ?,"
                " updated_at = ? WHERE id = ?",
                (
                    record.name,
                    record.session_key,
                    record.heartbeat_interval_ms,
                    record.updated_at,
                    agent_id,
                ),
            )
        return record

    def remove_agent(self, agent_id: str) -> None:
        with self._write() as db:
            if db.execute("DELETE FROM agents WHERE id = ?", (agent_id,)).rowcount == 0:
                raise AgentNotFound(agent_id)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _validated(**fields: Any) -> AgentRecord:
    try:
        return AgentRecord(**fields)
    except ValidationError as error:
        raise InvalidAgent(describe_validation_error(error)) from None
