"""The process: logging, signals, backend, HTTP server and the actor tree, in order,
and the way back down on SIGTERM/SIGINT/SIGHUP or a fatal supervisor escalation."""

import logging
import signal

import pykka
import pykka.debug
from starlette.routing import BaseRoute

from actors.agents.heartbeat_writer import STATUS_NAME as HEARTBEATS
from actors.jobs.models import EchoProvider, ModelProvider, OpenAIProvider
from actors.jobs.runner import JobOptions
from actors.runtime import JobsOptions, Runtime, RuntimeOptions, WhatsAppOptions
from actors.whatsapp.sender import SenderOptions
from actors.whatsapp.transport import CloudTransport, ConsoleTransport, Transport
from agent_runtime import __version__, logs
from agent_runtime.app.backends import open_backend
from agent_runtime.app.config import Settings
from agent_runtime.app.http import HttpServer
from agent_runtime.app.roles import ROLES
from agent_runtime.app.signals import STOP
from agent_runtime.app.webhooks import webhook_routes
from agent_runtime.clock import monotonic_s
from agent_runtime.errors import BackendError, ConfigError
from agent_runtime.status import StatusBoard
from agent_runtime.tools import default_registry, load_modules
from backend.port import Backend
from messages import HeartbeatStatus

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 4.5
"""From the signal to exit. Railway may SIGKILL at once, Heroku after 30 s; the promise
is exit within 5 s. What has not stopped by then is abandoned (actor threads are daemons)."""

HTTP_STOP_RESERVE_S = 0.5
"""The part of SHUTDOWN_TIMEOUT_S kept for stopping the HTTP server, last."""

ACTORS_STOP_TIMEOUT_S = 3.2
"""The Runtime's deadline for its children (deregister, stop agents, last writes); the
rest of SHUTDOWN_TIMEOUT_S - HTTP_STOP_RESERVE_S is for its threads."""

EXIT_FATAL = 1
EXIT_CONFIG = 2


def run(settings: Settings) -> int:
    """Run the runtime until SIGTERM, SIGINT or SIGHUP (exit status 0) or until a core
    actor keeps crashing (exit status 1). Blocks the calling thread, which must be the
    main thread."""
    logs.configure(settings.log_level, settings.log_format, settings.agent_debug)
    started_s = monotonic_s()
    STOP.install()  # again: harmless, and needed when `run` is called without the entry
    signal.signal(signal.SIGUSR1, pykka.debug.log_thread_tracebacks)
    exit_code = 0

    def on_fatal(reason: str) -> None:
        nonlocal exit_code
        exit_code = EXIT_FATAL
        logger.critical("fatal: %s", reason)
        STOP.request_stop(reason)

    jobs = None
    if ROLES[settings.role].agents:
        try:
            jobs = _jobs(settings)
        except ConfigError as error:
            logger.critical("%s", error)
            return EXIT_CONFIG
    try:
        backend = open_backend(settings)
    except BackendError as error:
        logger.critical("%s", error)
        return EXIT_FATAL
    board = StatusBoard()
    try:
        http = HttpServer(settings, board, started_s, _routes(settings, backend))
    except OSError as error:
        logger.critical("cannot listen on %s:%d: %s", settings.host, settings.port, error)
        backend.close()
        return EXIT_FATAL
    http.start()
    whatsapp = _whatsapp(settings)
    runtime = Runtime.start(
        options=RuntimeOptions(
            runs_agents=ROLES[settings.role].agents,
            sync_interval_s=settings.agent_sync_interval_ms / 1000,
            worker_id=settings.worker_id,
            worker_heartbeat_s=settings.worker_heartbeat_ms / 1000,
            worker_ttl_ms=settings.worker_ttl_ms,
            whatsapp=whatsapp,
            jobs=jobs,
            fallback_poll_s=settings.agent_fallback_poll_ms / 1000,
            stop_timeout_s=ACTORS_STOP_TIMEOUT_S,
        ),
        backend=backend,
        status_board=board,
        on_fatal=on_fatal,
    )
    logger.info(
        "agent-runtime %s started: role=%s worker=%s http=http://%s:%d backend=%s jobs=%s",
        __version__,
        settings.role,
        settings.worker_id,
        settings.host,
        http.port,
        backend,
        f"{jobs.concurrency} at once via {jobs.provider!r}" if jobs is not None else "none",
    )
    reason = STOP.wait()
    if exit_code == 0:
        logger.info("%s received: shutting down", reason)

    shutdown_started_s = monotonic_s()
    deadline_s = shutdown_started_s + SHUTDOWN_TIMEOUT_S
    try:
        runtime.stop(timeout=SHUTDOWN_TIMEOUT_S - HTTP_STOP_RESERVE_S)
    except pykka.Timeout:
        logger.error("actors did not stop in time; exiting anyway")
    unwritten = _unwritten(board)
    if unwritten:
        logger.error("stopping before the backend took %s; presence expires on its own", unwritten)
    http.stop(max(0.1, deadline_s - monotonic_s()))
    if whatsapp is not None:
        whatsapp.transport.close()
    backend.close(timeout_s=max(0.0, deadline_s - monotonic_s()))
    logger.info("stopped in %.2f s", monotonic_s() - shutdown_started_s)
    return exit_code


def _jobs(settings: Settings) -> JobsOptions:
    """How this process runs its agents' jobs: the provider, the tools (the built-ins and
    TOOLS_MODULES').

    Raises:
        ConfigError: the provider cannot work, or a tools module cannot be imported.
    """
    settings.check_model()
    try:
        load_modules(settings.tools_modules)
    except ValueError as error:  # one line naming the module
        raise ConfigError(f"TOOLS_MODULES: {error}") from error
    provider: ModelProvider = EchoProvider()
    if settings.provider == "openai":
        provider = OpenAIProvider(
            settings.openai_base_url,
            settings.openai_api_key,
            settings.model,
            settings.model_timeout_ms / 1000,
        )
    return JobsOptions(
        concurrency=settings.job_concurrency,
        options=JobOptions(
            lock_ms=settings.job_lock_ms,
            max_attempts=settings.job_max_attempts,
            history_turns=settings.job_history_turns,
            max_steps=settings.job_max_steps,
        ),
        provider=provider,
        tools=default_registry(),
    )


def _whatsapp(settings: Settings) -> WhatsAppOptions | None:
    """The lease and sender options, on the roles that send (settings checked them)."""
    if not settings.sends_whatsapp:
        return None
    transport: Transport = ConsoleTransport()
    if settings.whatsapp_transport == "cloud":
        assert settings.whatsapp_access_token is not None
        assert settings.whatsapp_phone_number_id is not None
        transport = CloudTransport(
            settings.whatsapp_graph_url,
            settings.whatsapp_api_version,
            settings.whatsapp_phone_number_id,
            settings.whatsapp_access_token,
            timeout_s=settings.whatsapp_send_timeout_ms / 1000,
        )
    return WhatsAppOptions(
        account_id=settings.whatsapp_account_id,
        lease_ttl_ms=settings.whatsapp_lease_ttl_ms,
        sender=SenderOptions(
            claim_lock_ms=settings.whatsapp_claim_lock_ms,
            send_timeout_s=settings.whatsapp_send_timeout_ms / 1000,
            max_attempts=settings.whatsapp_max_attempts,
            pause_retry_s=settings.whatsapp_pause_retry_ms / 1000,
            max_mps=settings.whatsapp_max_mps,
        ),
        transport=transport,
    )


def _routes(settings: Settings, backend: Backend) -> list[BaseRoute]:
    """The webhook, on the roles that receive it (settings checked its secrets)."""
    if not settings.receives_whatsapp:
        return []
    assert settings.whatsapp_app_secret is not None
    assert settings.whatsapp_verify_token is not None
    return webhook_routes(
        settings.whatsapp_account_id,
        settings.whatsapp_app_secret,
        settings.whatsapp_verify_token,
        backend,
        agent_id=settings.whatsapp_agent_id,
    )


def _unwritten(board: StatusBoard) -> str | None:
    """What the HeartbeatWriter last said it had not written yet, if anything."""
    beats = board.get(HEARTBEATS)
    if not isinstance(beats, HeartbeatStatus) or not (beats.pending or beats.pending_offline):
        return None
    return f"{beats.pending} heartbeat(s) and {beats.pending_offline} offline mark(s)"
