"""/health summarises the status board (ok or degraded, no secrets); /agents lists agents."""

import json
import socket
from pathlib import Path

import httpx
import pytest

from agent_runtime.app.config import Settings
from agent_runtime.app.http import HttpServer, health
from agent_runtime.clock import now_ms
from agent_runtime.status import StatusBoard
from messages import AgentRecord, HeartbeatStatus, MembershipStatus, RunningAgent, SyncStatus
from messages.whatsapp import LeaseStatus, WhatsAppStatus

RECORD = AgentRecord(
    id="a1", name="scout", session_key="k", heartbeat_interval_ms=5000, updated_at=1
)


def settings(role: str = "core") -> Settings:
    return Settings(
        AGENT_ROLE=role,
        WORKER_ID="w1",
        LOCAL_DB_PATH=Path("x.db"),
        WHATSAPP_APP_SECRET="app-secret",
        WHATSAPP_VERIFY_TOKEN="verify-token",
    )


def record(agent_id: str) -> AgentRecord:
    return RECORD.model_copy(update={"id": agent_id, "name": f"n-{agent_id}"})


def sync_status(**changes: object) -> SyncStatus:
    fields: dict[str, object] = {
        "running": True,
        "last_sync_at": 10,
        "last_error": None,
        "added_count": 3,
        "removed_count": 0,
        "updated_count": 0,
        "worker_id": "w1",
        "registered": True,
        "live_workers": ("w1", "w2"),
        "restarting": 1,
        "agents": (
            RunningAgent(record=RECORD, restarts=2, restarting=False),
            RunningAgent(record=record("a2"), restarts=0, restarting=False),
            RunningAgent(record=record("a3"), restarts=1, restarting=True),
        ),
    }
    fields.update(changes)
    return SyncStatus(**fields)  # type: ignore[arg-type]


def beats(**changes: object) -> HeartbeatStatus:
    fields: dict[str, object] = {
        # a1 beat just now; a2 beat longer ago than 3 intervals (15 s): stale.
        "last_written_at": {"a1": now_ms() - 1000, "a2": now_ms() - 16_000},
        "last_flush_at": 100,
        "last_error": None,
        "pending": 0,
        "pending_offline": 0,
        "online": 1,
    }
    fields.update(changes)
    return HeartbeatStatus(**fields)  # type: ignore[arg-type]


def member(**changes: object) -> MembershipStatus:
    fields: dict[str, object] = {
        "worker_id": "w1",
        "registered": True,
        "last_renewed_at": 50,
        "last_error": None,
    }
    fields.update(changes)
    return MembershipStatus(**fields)  # type: ignore[arg-type]


def healthy_board() -> StatusBoard:
    board = StatusBoard()
    board.publish("agentSync", sync_status())
    board.publish("heartbeats", beats())
    board.publish("membership", member())
    return board


def test_healthy_core_worker_is_summarised() -> None:
    board = healthy_board()
    board.count_restart("agent")
    board.count_restart("agent")
    doc = health(settings(), board, started_s=0.0)
    assert doc["status"] == "ok"
    assert (doc["role"], doc["workerId"]) == ("core", "w1")
    assert doc["agentSync"] == {
        "running": True,
        "lastSyncAt": 10,
        "lastError": None,
        "addedCount": 3,
        "removedCount": 0,
        "updatedCount": 0,
        "feed": "polling",
        "feedError": None,
    }
    assert doc["agents"] == {"running": 2, "online": 1, "restarting": 1}
    assert doc["workers"] == {
        "live": ["w1", "w2"],
        "ownedAgents": 3,
        "registered": True,
        "lastRenewedAt": 50,
        "lastError": None,
    }
    assert doc["heartbeats"] == {
        "lastFlushAt": 100,
        "lastError": None,
        "pending": 0,
        "pendingOffline": 0,
    }
    assert doc["supervisor"] == {"restarts": 2, "byActor": {"agent": 2}}


def test_health_does_not_grow_with_the_agents() -> None:
    many = tuple(
        RunningAgent(record=record(f"a{i}"), restarts=0, restarting=False) for i in range(2000)
    )
    board = healthy_board()
    board.publish("agentSync", sync_status(agents=many))
    small = len(json.dumps(health(settings(), healthy_board(), started_s=0.0)))
    large = len(json.dumps(health(settings(), board, started_s=0.0)))
    assert large - small < 20


@pytest.mark.parametrize(
    ("sync", "heartbeats", "membership"),
    [
        (sync_status(last_error="database is locked"), beats(), member()),
        (sync_status(running=False), beats(), member()),
        (sync_status(), beats(last_error="heartbeat write failed"), member()),
        (sync_status(), beats(), member(registered=False)),
        (sync_status(), beats(), member(last_error="worker renewal failed")),
        (None, None, None),
    ],
    ids=[
        "sync-failed",
        "sync-stopped",
        "writes-failing",
        "not-registered",
        "renewal-failing",
        "nothing-published",
    ],
)
def test_degraded_when_agents_cannot_be_kept_online(
    sync: SyncStatus | None, heartbeats: HeartbeatStatus | None, membership: MembershipStatus | None
) -> None:
    board = StatusBoard()
    for name, snapshot in (
        ("agentSync", sync),
        ("heartbeats", heartbeats),
        ("membership", membership),
    ):
        if snapshot is not None:
            board.publish(name, snapshot)
    assert health(settings(), board, started_s=0.0)["status"] == "degraded"


def test_whatsapp_sender_shows_its_lease_and_is_degraded_while_paused() -> None:
    board = StatusBoard()
    lease = LeaseStatus(
        account_id="acct",
        held=True,
        owner_id="w1/abc",
        epoch=3,
        expires_at=10,
        last_renewed_at=5,
        last_error=None,
    )
    board.publish("lease", lease)
    sending = WhatsAppStatus(
        sending=True, paused=False, paused_until=None, sent=7, failed=1, last_error=None
    )
    board.publish("whatsapp", sending)
    doc = health(settings("whatsapp-egress"), board, started_s=0.0)
    assert doc["status"] == "ok"
    assert doc["lease"] == {
        "accountId": "acct",
        "held": True,
        "ownerId": "w1/abc",
        "epoch": 3,
        "expiresAt": 10,
        "lastRenewedAt": 5,
        "lastError": None,
    }
    assert doc["whatsapp"] == {
        "sending": True,
        "paused": False,
        "sent": 7,
        "failed": 1,
        "lastError": None,
    }
    board.publish("whatsapp", sending.model_copy(update={"paused": True, "last_error": "190"}))
    assert health(settings("whatsapp-egress"), board, started_s=0.0)["status"] == "degraded"
    assert "app-secret" not in json.dumps(doc)


def test_role_without_agents_is_ok_with_an_idle_summary() -> None:
    doc = health(settings("whatsapp-ingress"), StatusBoard(), started_s=0.0)
    assert doc["status"] == "ok"
    assert doc["agentSync"] is None
    assert doc["agents"] == {"running": 0, "online": 0, "restarting": 0}
    assert doc["workers"]["live"] == []


def test_agents_endpoints_list_this_workers_agents_and_404_the_others() -> None:
    server = HttpServer(
        Settings(AGENT_ROLE="core", WORKER_ID="w1", HOST="127.0.0.1", PORT=0), healthy_board(), 0.0
    )
    server.start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=5)
    try:
        check_agent_endpoints(client)
    finally:
        client.close()
        server.stop()


def check_agent_endpoints(client: httpx.Client) -> None:
    listed = client.get("/agents").json()
    assert [(a["id"], a["status"]) for a in listed] == [
        ("a1", "online"),
        ("a2", "offline"),
        ("a3", "restarting"),
    ]
    assert listed[0] == {
        "id": "a1",
        "name": "scout",
        "sessionKey": "k",
        "heartbeatIntervalMs": 5000,
        "lastHeartbeatAt": listed[0]["lastHeartbeatAt"],
        "status": "online",
        "restarts": 2,
    }
    assert client.get("/agents/a3").json()["restarts"] == 1
    missing = client.get("/agents/elsewhere")
    assert missing.status_code == 404
    assert "does not run on this worker" in missing.json()["error"]


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


def test_a_core_worker_reports_an_idle_sync_before_the_first_one() -> None:
    doc = health(settings("core"), StatusBoard(), started_s=0.0)
    assert doc["agentSync"] == {
        "running": False,
        "lastSyncAt": None,
        "lastError": None,
        "addedCount": 0,
        "removedCount": 0,
        "updatedCount": 0,
        "feed": "down",
        "feedError": None,
    }
    assert doc["status"] == "degraded"
