"""The HTTP surface: GET /health (a JSON summary), GET /agents and /agents/{id} (this
worker's running agents), GET /metrics (Prometheus), served by uvicorn in its own thread.
Handlers only read the status board; they never wait on an actor."""

import asyncio
import logging
import socket
import threading
from collections.abc import Sequence
from typing import Any, TypeVar

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from actors.agents.heartbeat_writer import STATUS_NAME as HEARTBEATS
from actors.agents.membership import STATUS_NAME as MEMBERSHIP
from actors.agents.sync import STATUS_NAME as AGENT_SYNC
from actors.jobs.dispatcher import STATUS_NAME as JOBS
from actors.whatsapp.lease import STATUS_NAME as LEASE
from actors.whatsapp.sender import STATUS_NAME as SENDER
from agent_runtime.app.config import Settings
from agent_runtime.app.roles import ROLES
from agent_runtime.clock import monotonic_s, now_ms
from agent_runtime.status import StatusBoard
from messages import HeartbeatStatus, MembershipStatus, RunningAgent, SyncStatus
from messages.agent import PRESENCE_TTL_INTERVALS
from messages.jobs import JobsStatus
from messages.whatsapp import LeaseStatus, WhatsAppStatus

logger = logging.getLogger(__name__)

T = TypeVar("T")


NO_HEARTBEATS = HeartbeatStatus(
    last_written_at={}, last_flush_at=None, last_error=None, pending=0, pending_offline=0, online=0
)


IDLE_SYNC = {
    "running": False,
    "lastSyncAt": None,
    "lastError": None,
    "addedCount": 0,
    "removedCount": 0,
    "updatedCount": 0,
    "feed": "down",
    "feedError": None,
}
"""agentSync on a role that runs agents, before the SyncActor first publishes."""

NO_SENDER = WhatsAppStatus(
    sending=False, paused=False, paused_until=None, sent=0, failed=0, last_error=None
)


def _snapshot(board: StatusBoard, name: str, kind: type[T]) -> T | None:
    snapshot = board.get(name)
    return snapshot if isinstance(snapshot, kind) else None


def agent_status(agent: RunningAgent, beats: HeartbeatStatus, now: int) -> str:
    """`restarting` (crashed, restart pending), `online` (last accepted heartbeat younger
    than 3 intervals) or `offline`."""
    if agent.restarting:
        return "restarting"
    last = beats.last_written_at.get(agent.record.id)
    fresh_ms = PRESENCE_TTL_INTERVALS * agent.record.heartbeat_interval_ms
    return "online" if last is not None and now - last < fresh_ms else "offline"


def agent_row(agent: RunningAgent, beats: HeartbeatStatus, now: int) -> dict[str, Any]:
    """One running agent as /agents shows it."""
    record = agent.record
    return {
        "id": record.id,
        "name": record.name,
        "sessionKey": record.session_key,
        "heartbeatIntervalMs": record.heartbeat_interval_ms,
        "lastHeartbeatAt": beats.last_written_at.get(record.id),
        "status": agent_status(agent, beats, now),
        "restarts": agent.restarts,
    }


def health(settings: Settings, board: StatusBoard, started_s: float) -> dict[str, Any]:
    """The /health document: a summary whose size does not grow with the number of
    agents. Times are epoch milliseconds or null; no secrets."""
    sync = _snapshot(board, AGENT_SYNC, SyncStatus)
    beats = _snapshot(board, HEARTBEATS, HeartbeatStatus) or NO_HEARTBEATS
    member = _snapshot(board, MEMBERSHIP, MembershipStatus)
    lease = _snapshot(board, LEASE, LeaseStatus)
    sender = _snapshot(board, SENDER, WhatsAppStatus)
    owned = len(sync.agents) if sync is not None else 0
    restarting = sync.restarting if sync is not None else 0
    problems = [
        sync is None or not sync.running,
        sync is not None and sync.last_error is not None,
        beats.last_error is not None,
        member is None or not member.registered or member.last_error is not None,
    ]
    agent_problem = ROLES[settings.role].agents and any(problems)
    whatsapp_problem = settings.sends_whatsapp and (
        lease is None or lease.last_error is not None or (sender is not None and sender.paused)
    )
    restarts = board.restarts()
    document: dict[str, Any] = {
        "status": "degraded" if agent_problem or whatsapp_problem else "ok",
        "role": settings.role,
        "workerId": settings.worker_id,
        "uptimeS": round(monotonic_s() - started_s, 3),
        "agentSync": (
            sync.model_dump(
                by_alias=True,
                exclude={"agents", "worker_id", "registered", "live_workers", "restarting"},
            )
            if sync is not None
            else (IDLE_SYNC if ROLES[settings.role].agents else None)
        ),
        "heartbeats": beats.model_dump(by_alias=True, exclude={"last_written_at", "online"}),
        "supervisor": {"restarts": sum(restarts.values()), "byActor": restarts},
        # Counts published by the actors: the cost of /health does not grow with N.
        "agents": {"running": owned - restarting, "online": beats.online, "restarting": restarting},
        "workers": {
            "live": list(sync.live_workers) if sync is not None else [],
            "ownedAgents": owned,
            "registered": member is not None and member.registered,
            "lastRenewedAt": member.last_renewed_at if member is not None else None,
            "lastError": member.last_error if member is not None else None,
        },
    }
    if ROLES[settings.role].agents:
        jobs = _snapshot(board, JOBS, JobsStatus) or JobsStatus(
            concurrency=settings.job_concurrency,
            running=0,
            completed=0,
            retried=0,
            failed=0,
            dead=0,
            abandoned=0,
            last_error=None,
        )
        document["jobs"] = jobs.model_dump(by_alias=True)
    if settings.sends_whatsapp:
        document["lease"] = lease.model_dump(by_alias=True) if lease is not None else None
        document["whatsapp"] = (sender or NO_SENDER).model_dump(
            by_alias=True, exclude={"paused_until"}
        )
    return document


def build_app(
    settings: Settings, board: StatusBoard, started_s: float, routes: Sequence[BaseRoute] = ()
) -> Starlette:
    """The ASGI app: /health, /agents, /agents/{id}, /metrics, and the role's `routes`
    (the WhatsApp webhook on the roles that receive it)."""

    def running() -> tuple[tuple[RunningAgent, ...], HeartbeatStatus]:
        sync = _snapshot(board, AGENT_SYNC, SyncStatus)
        beats = _snapshot(board, HEARTBEATS, HeartbeatStatus) or NO_HEARTBEATS
        return (sync.agents if sync is not None else ()), beats

    async def get_health(_: Request) -> JSONResponse:
        return JSONResponse(health(settings, board, started_s))

    async def get_agents(_: Request) -> JSONResponse:
        agents, beats = running()
        now = now_ms()
        return JSONResponse([agent_row(a, beats, now) for a in agents])

    async def get_agent(request: Request) -> JSONResponse:
        agent_id = request.path_params["agent_id"]
        agents, beats = running()
        for agent in agents:
            if agent.record.id == agent_id:
                return JSONResponse(agent_row(agent, beats, now_ms()))
        return JSONResponse(
            {"error": f"agent {agent_id[:80]!r} does not run on this worker"}, status_code=404
        )

    async def get_metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/health", get_health),
            Route("/agents", get_agents),
            Route("/agents/{agent_id}", get_agent),
            Route("/metrics", get_metrics),
            *routes,
        ]
    )


class HttpServer:
    """uvicorn on HOST:PORT in a thread named "HTTP". PORT=0 picks a free port; `port`
    tells which. `start()` returns once the socket is bound (and raises OSError if it
    cannot be)."""

    def __init__(
        self,
        settings: Settings,
        board: StatusBoard,
        started_s: float,
        routes: Sequence[BaseRoute] = (),
    ) -> None:
        self._socket = socket.create_server(
            (settings.host, settings.port), family=_family(settings.host), reuse_port=False
        )
        # asyncio sets TCP_NODELAY only on sockets made with proto=IPPROTO_TCP, which
        # create_server's are not; accepted sockets inherit it from here. Without it, Nagle
        # and the client's delayed ACK held every keep-alive answer ~40 ms (measured).
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            build_app(settings, board, started_s, routes),
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="HTTP", daemon=True)

    def _serve(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def start(self) -> None:
        """Serve requests from now on, in the background."""
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop serving; waits up to `timeout_s` for the server thread."""
        self._server.should_exit = True
        self._thread.join(timeout_s)
        self._socket.close()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
