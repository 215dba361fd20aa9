"""The embedded backend on a fake clock: presence and worker registrations expire by the
backend's clock, the change signal sees joins, leaves and deaths, and the schema refuses
a NULL agent id (old files are migrated)."""

import sqlite3
import threading
from pathlib import Path

import pytest

from agent_runtime.errors import InvalidAgent, WorkerIdTaken
from backend.local import MAX_CLOCK_AHEAD_MS, SCHEMA_VERSION, LocalBackend
from messages import Heartbeat
from messages.whatsapp import StatusUpdate
from tests.conftest import T0, FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(tmp_path: Path, clock: FakeClock) -> LocalBackend:
    return LocalBackend(tmp_path / "local.db", clock=clock)


def status_of(backend: LocalBackend, agent_id: str) -> str:
    rows = backend.list_presence()
    return next(str(p["status"]) for p in rows if p["agentId"] == agent_id)


def stored_status(path: Path, agent_id: str) -> str:
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT status FROM presence WHERE agent_id = ?", (agent_id,)).fetchone()
    return str(row[0])


def test_presence_expires_after_three_intervals_in_reads_and_in_the_table(
    backend: LocalBackend, clock: FakeClock
) -> None:
    a = backend.create_agent("a", 1000)
    b = backend.create_agent("b", 60_000)
    assert backend.record_heartbeats([Heartbeat(agent_id=a.id, at_ms=T0)]) == []
    clock.now = T0 + 2999
    assert status_of(backend, a.id) == "online"
    clock.now = T0 + 3000
    assert status_of(backend, a.id) == "offline"  # read: expired, though not yet written
    assert stored_status(backend.path, a.id) == "online"
    backend.record_heartbeats([Heartbeat(agent_id=b.id, at_ms=clock.now)])  # any presence write
    assert stored_status(backend.path, a.id) == "offline"
    assert stored_status(backend.path, b.id) == "online"
    rows = {r["id"]: r for r in backend.list_agents_with_presence()}
    assert (rows[a.id]["status"], rows[a.id]["lastHeartbeatAt"]) == ("offline", T0)
    assert rows[b.id]["status"] == "online"


def test_a_beat_too_far_ahead_is_refused_and_never_pins_presence(
    backend: LocalBackend, clock: FakeClock
) -> None:
    a = backend.create_agent("a", 1000)
    ahead = Heartbeat(agent_id=a.id, at_ms=T0 + MAX_CLOCK_AHEAD_MS + 1)
    near = Heartbeat(agent_id=a.id, at_ms=T0 + MAX_CLOCK_AHEAD_MS)
    unknown = Heartbeat(agent_id="no-such-agent", at_ms=T0 + 10 * MAX_CLOCK_AHEAD_MS)
    assert backend.record_heartbeats([ahead, unknown]) == [a.id]
    assert backend.list_presence()[0]["lastHeartbeatAt"] is None
    assert backend.record_heartbeats([near]) == []  # the limit itself is accepted
    assert backend.list_presence()[0]["lastHeartbeatAt"] == T0 + MAX_CLOCK_AHEAD_MS


def test_workers_register_renew_and_expire_by_the_backends_clock(
    backend: LocalBackend, clock: FakeClock
) -> None:
    v0 = backend.agents_version()
    assert backend.register_worker("w2", "i2", ttl_ms=1000) == ["w2"]
    v1 = backend.agents_version()
    assert v1 != v0  # a join
    assert backend.register_worker("w1", "i1", ttl_ms=5000) == ["w1", "w2"]
    v2 = backend.agents_version()
    clock.now = T0 + 900
    assert backend.register_worker("w2", "i2", ttl_ms=1000) == ["w1", "w2"]  # a renewal
    assert backend.agents_version() == v2
    clock.now = T0 + 1899
    assert backend.list_workers() == ["w1", "w2"]
    clock.now = T0 + 1900  # w2's last renewal + its TTL: dead, with no write by anyone
    assert backend.list_workers() == ["w1"]
    assert backend.agents_version() != v2
    assert backend.deregister_worker("w1", "i1")
    assert backend.list_workers() == []


def test_another_instance_can_neither_renew_nor_remove_a_live_registration(
    backend: LocalBackend, clock: FakeClock
) -> None:
    backend.register_worker("w", "first", ttl_ms=1000)
    with pytest.raises(WorkerIdTaken, match="'w' is registered by another live process"):
        backend.register_worker("w", "second", ttl_ms=1000)
    assert not backend.deregister_worker("w", "second")
    assert backend.list_workers() == ["w"]
    clock.now = T0 + 1000  # expired: the id is free for the second instance
    assert backend.register_worker("w", "second", ttl_ms=1000) == ["w"]
    assert not backend.deregister_worker("w", "first")  # the old one cannot remove it
    assert backend.list_workers() == ["w"]


def test_the_schema_refuses_a_null_agent_id(backend: LocalBackend) -> None:
    with (
        sqlite3.connect(backend.path) as db,
        pytest.raises(sqlite3.IntegrityError, match="NOT NULL"),
    ):
        db.execute(
            "INSERT INTO agents (id, name, session_key, heartbeat_interval_ms, created_at,"
            " updated_at) VALUES (NULL, 'n', 'k', 1000, 0, 0)"
        )


def test_a_file_of_the_first_schema_is_migrated_keeping_its_agents(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the schema before NOT NULL, as shipped
        db.executescript(
            """
            CREATE TABLE agents (id TEXT PRIMARY KEY, name TEXT NOT NULL,
                session_key TEXT NOT NULL, heartbeat_interval_ms INTEGER NOT NULL,
                created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
            CREATE TABLE presence (agent_id TEXT PRIMARY KEY, status TEXT NOT NULL,
                last_heartbeat_at INTEGER);
            CREATE TABLE change_counters (name TEXT PRIMARY KEY, version INTEGER NOT NULL);
            INSERT INTO change_counters VALUES ('agents', 7);
            INSERT INTO agents VALUES ('keep', 'kept', 'agent:keep', 1000, 1, 1);
            INSERT INTO agents VALUES (NULL, 'no id', 'k', 1000, 2, 2);
            """
        )
    backend = LocalBackend(path)
    assert [a["id"] for a in backend.list_agents()] == ["keep"]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    created = backend.create_agent("new", 1000, idempotency_key="k")  # schema 4's column
    assert backend.create_agent("new", 1000, idempotency_key="k").id == created.id
    version = backend.agents_version()
    backend.remove_agent("keep")  # the triggers are back: the version moves
    assert backend.agents_version() != version
    backend.close()
    LocalBackend(path).close()  # opening a current file again changes nothing


def test_close_does_not_wait_for_a_call_stuck_on_another_process_lock(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "locked.db")
    assert backend._lock.acquire()  # a call in another thread, blocked on a write lock
    try:
        closer = threading.Thread(target=backend.close, kwargs={"timeout_s": 0.1})
        closer.start()
        closer.join(timeout=5)
        assert not closer.is_alive()  # gave up after 0.1 s instead of waiting
    finally:
        backend._lock.release()


def test_a_failed_status_before_the_mark_keeps_its_error(backend: LocalBackend) -> None:
    backend.acquire_lease("acct", "A", ttl_ms=60_000)
    message_id = backend.enqueue_outbound("acct", "15550001", "hi")
    (claimed,) = backend.claim_outbound("acct", "A", 1, limit=1, lock_ms=60_000, max_attempts=3)
    failed = StatusUpdate(provider_id="wamid.1", status="failed", timestamp=1, error="131026: x")
    backend.record_webhook("acct", [], [failed])  # Meta's webhook beat our mark
    backend.mark_sent(message_id, claimed.claim_token, 1, "wamid.1")
    (row,) = backend.list_outbox("acct")
    assert (row["status"], row["lastError"]) == ("failed", "131026: x")


def test_a_file_of_schema_2_gains_the_status_columns(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    LocalBackend(path).close()
    with sqlite3.connect(path) as db:  # as schema 2 made it
        db.executescript(
            """
            DROP TABLE whatsapp_statuses;
            CREATE TABLE whatsapp_statuses (provider_id TEXT NOT NULL, status TEXT NOT NULL,
                timestamp INTEGER NOT NULL, recorded_at INTEGER NOT NULL,
                PRIMARY KEY (provider_id, status));
            INSERT INTO whatsapp_statuses VALUES ('wamid.0', 'read', 1, 1);
            PRAGMA user_version = 2;
            """
        )
    backend = LocalBackend(path)
    update = StatusUpdate(provider_id="wamid.9", status="failed", timestamp=2, error="e")
    assert backend.record_webhook("acct", [], [update]).statuses == 1
    backend.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT count(*) FROM whatsapp_statuses").fetchone()[0] == 2


def test_a_file_of_schema_4_gains_agent_settings_job_kinds_and_sessions(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    backend = LocalBackend(path)
    agent_id = backend.create_agent("old", 1000).id
    backend.close()
    with sqlite3.connect(path) as db:  # as schema 4 made it, with a conversation's job
        db.executescript(
            f"""
            ALTER TABLE agents DROP COLUMN instructions;
            ALTER TABLE agents DROP COLUMN model;
            ALTER TABLE agents DROP COLUMN wakeup_prompt;
            ALTER TABLE agents DROP COLUMN wakeup_interval_ms;
            ALTER TABLE jobs DROP COLUMN kind;
            ALTER TABLE jobs DROP COLUMN channel;
            ALTER TABLE turns DROP COLUMN session_key;
            INSERT INTO jobs (id, agent_id, conversation_key, account_id, contact, input,
                status, not_before, created_at, updated_at)
                VALUES ('j1', '{agent_id}', 'whatsapp:acct:15550001', 'acct', '15550001',
                'hi', 'queued', 0, 0, 0);
            PRAGMA user_version = 4;
            """
        )
    backend = LocalBackend(path)
    (row,) = backend.list_agents()
    assert (row["instructions"], row["wakeupIntervalMs"]) == (None, None)
    job = backend.get_job("j1")
    assert (job["kind"], job["conversation"]["channel"]) == ("task", "whatsapp")
    backend.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_agent_settings_are_stored_checked_in_pairs_and_cleared_by_empty_values(
    backend: LocalBackend,
) -> None:
    created = backend.create_agent(
        "scout",
        5000,
        instructions="Be brief.",
        model="gpt-4o-mini",
        wakeup_prompt="check the queue",
        wakeup_interval_ms=60_000,
    )
    (row,) = backend.list_agents()
    assert (row["instructions"], row["model"], row["wakeupPrompt"], row["wakeupIntervalMs"]) == (
        "Be brief.",
        "gpt-4o-mini",
        "check the queue",
        60_000,
    )
    with pytest.raises(InvalidAgent, match="wakeupPrompt and wakeupIntervalMs go together"):
        backend.update_agent(created.id, wakeup_prompt="")
    with pytest.raises(InvalidAgent, match="wakeup_interval_ms"):
        backend.update_agent(created.id, wakeup_interval_ms=10)
    cleared = backend.update_agent(created.id, model="", wakeup_prompt="", wakeup_interval_ms=0)
    assert (cleared.model, cleared.wakeup_prompt, cleared.wakeup_interval_ms) == (None, None, None)
    assert cleared.instructions == "Be brief."
    assert backend.list_agents()[0]["model"] is None
