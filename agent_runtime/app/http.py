"""The HTTP surface: GET /health (JSON) and GET /metrics (Prometheus), served by uvicorn
in its own thread. Handlers only read the status board; they never wait on an actor."""

import asyncio
import logging
import socket
import threading
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from actors.agents.heartbeat_writer import STATUS_NAME as HEARTBEATS
from actors.agents.sync import STATUS_NAME as AGENT_SYNC
from agent_runtime.app.config import Settings
from agent_runtime.app.roles import ROLES
from agent_runtime.clock import monotonic_s
from agent_runtime.status import StatusBoard
from messages import HeartbeatStatus, SyncStatus

logger = logging.getLogger(__name__)


NO_SYNC = SyncStatus(
    running=False,
    last_sync_at=None,
    last_error=None,
    added_count=0,
    removed_count=0,
    updated_count=0,
    agents=(),
)
NO_HEARTBEATS = HeartbeatStatus(last_written_at={}, last_flush_at=None, last_error=None, pending=0)


def health(settings: Settings, board: StatusBoard, started_s: float) -> dict[str, Any]:
    """The /health document. Times are epoch milliseconds or null; no secrets."""
    sync = board.get(AGENT_SYNC)
    sync = sync if isinstance(sync, SyncStatus) else NO_SYNC
    beats = board.get(HEARTBEATS)
    beats = beats if isinstance(beats, HeartbeatStatus) else NO_HEARTBEATS
    degraded = ROLES[settings.role].agents and (
        not sync.running or sync.last_error is not None or beats.last_error is not None
    )
    restarts = board.restarts()
    return {
        "status": "degraded" if degraded else "ok",
        "role": settings.role,
        "workerId": settings.worker_id,
        "uptimeS": round(monotonic_s() - started_s, 3),
        "agentSync": sync.model_dump(by_alias=True, exclude={"agents"}),
        "heartbeats": beats.model_dump(by_alias=True, exclude={"last_written_at"}),
        "agents": [
            {
                "id": a.record.id,
                "name": a.record.name,
                "sessionKey": a.record.session_key,
                "heartbeatIntervalMs": a.record.heartbeat_interval_ms,
                "lastHeartbeatAt": beats.last_written_at.get(a.record.id),
                "restarts": a.restarts,
            }
            for a in sync.agents
        ],
        "supervisor": {"restarts": sum(restarts.values()), "byActor": restarts},
    }


def build_app(settings: Settings, board: StatusBoard, started_s: float) -> Starlette:
    """The ASGI app: /health and /metrics."""

    async def get_health(_: Request) -> JSONResponse:
        return JSONResponse(health(settings, board, started_s))

    async def get_metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/health", get_health), Route("/metrics", get_metrics)])


class HttpServer:
    """uvicorn on HOST:PORT in a thread named "HTTP". PORT=0 picks a free port; `port`
    tells which. `start()` returns once the socket is bound (and raises OSError if it
    cannot be)."""

    def __init__(self, settings: Settings, board: StatusBoard, started_s: float) -> None:
        self._socket = socket.create_server(
            (settings.host, settings.port), family=_family(settings.host), reuse_port=False
        )
        # asyncio sets TCP_NODELAY only on sockets made with proto=IPPROTO_TCP, which
        # create_server's are not; accepted sockets inherit it from here. Without it, Nagle
        # and the client's delayed ACK held every keep-alive answer ~40 ms (measured).
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            build_app(settings, board, started_s),
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
