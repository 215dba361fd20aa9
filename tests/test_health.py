"""/health reads the status board: ok or degraded, per-agent rows, no secrets."""

import socket
from pathlib import Path

import pytest

from agent_runtime.app.config import Settings
from agent_runtime.app.http import HttpServer, health
from agent_runtime.status import StatusBoard
from messages import AgentRecord, HeartbeatStatus, RunningAgent, SyncStatus

RECORD = AgentRecord(
    id="a1", name="scout", session_key="k", heartbeat_interval_ms=5000, updated_at=1
)


def settings(role: str = "core") -> Settings:
    return Settings(AGENT_ROLE=role, WORKER_ID="w1", LOCAL_DB_PATH=Path("x.db"))


def sync_status(**changes: object) -> SyncStatus:
    fields: dict[str, object] = {
        "running": True,
        "last_sync_at": 10,
        "last_error": None,
        "added_count": 1,
        "removed_count": 0,
        "updated_count": 0,
        "agents": (RunningAgent(record=RECORD, restarts=2),),
    }
    fields.update(changes)
    return SyncStatus(**fields)  # type: ignore[arg-type]


def beats(**changes: object) -> HeartbeatStatus:
    fields: dict[str, object] = {
        "last_written_at": {"a1": 99},
        "last_flush_at": 100,
        "last_error": None,
        "pending": 0,
    }
    fields.update(changes)
    return HeartbeatStatus(**fields)  # type: ignore[arg-type]


def test_healthy_core_worker() -> None:
    board = StatusBoard()
    board.publish("agentSync", sync_status())
    board.publish("heartbeats", beats())
    board.count_restart("agent")
    board.count_restart("agent")
    doc = health(settings(), board, started_s=0.0)
    assert doc["status"] == "ok"
    assert (doc["role"], doc["workerId"]) == ("core", "w1")
    assert doc["agentSync"] == {
        "running": True,
        "lastSyncAt": 10,
        "lastError": None,
        "addedCount": 1,
        "removedCount": 0,
        "updatedCount": 0,
    }
    assert doc["agents"] == [
        {
            "id": "a1",
            "name": "scout",
            "sessionKey": "k",
            "heartbeatIntervalMs": 5000,
            "lastHeartbeatAt": 99,
            "restarts": 2,
        }
    ]
    assert doc["heartbeats"] == {"lastFlushAt": 100, "lastError": None, "pending": 0}
    assert doc["supervisor"] == {"restarts": 2, "byActor": {"agent": 2}}


@pytest.mark.parametrize(
    ("sync", "heartbeats"),
    [
        (sync_status(last_error="database is locked"), beats()),
        (sync_status(running=False), beats()),
        (sync_status(), beats(last_error="heartbeat write failed")),
        (None, None),
    ],
    ids=["sync-failed", "sync-stopped", "writes-failing", "nothing-published"],
)
def test_degraded_when_agents_cannot_be_kept_online(
    sync: SyncStatus | None, heartbeats: HeartbeatStatus | None
) -> None:
    board = StatusBoard()
    if sync is not None:
        board.publish("agentSync", sync)
    if heartbeats is not None:
        board.publish("heartbeats", heartbeats)
    assert health(settings(), board, started_s=0.0)["status"] == "degraded"


def test_role_without_agents_is_ok_with_an_idle_sync_section() -> None:
    doc = health(settings("whatsapp"), StatusBoard(), started_s=0.0)
    assert doc["status"] == "ok"
    assert doc["agentSync"]["running"] is False
    assert doc["agents"] == []


def test_http_server_answers_kept_alive_connections_without_nagle_delay() -> None:
    # asyncio sets TCP_NODELAY only on proto=IPPROTO_TCP sockets; without it on the
    # listening socket, every keep-alive answer waited ~40 ms for a delayed ACK.
    server = HttpServer(
        Settings(AGENT_ROLE="core", WORKER_ID="w", HOST="127.0.0.1", PORT=0), StatusBoard(), 0.0
    )
    try:
        assert server._socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        server._socket.close()
