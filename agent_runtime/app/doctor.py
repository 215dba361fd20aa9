"""`agent-runtime doctor`: is this configuration right for this role? One line per check.

Each line starts with `ok` or `FAIL`; a failure says what to do. Exit status 1 if any
check failed. It reaches the backend the settings name, with the same adapter as `run`.
"""

import socket
from collections.abc import Callable
from dataclasses import dataclass

from agent_runtime.app.backends import open_backend
from agent_runtime.app.config import Settings
from agent_runtime.app.roles import ROLES
from agent_runtime.clock import monotonic_s, now_ms
from agent_runtime.errors import BackendError, BackendUnavailable, ConfigError, ServiceKeyRejected
from agent_runtime.tools import default_registry, load_modules
from backend.port import Backend
from messages import AgentList, parse_agent_rows


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def diagnose(settings: Settings) -> list[Check]:
    """Run every check for the settings' role and backend; never raises."""
    checks = [_configuration(settings), _port(settings)]
    try:
        backend = open_backend(settings)
    except BackendError as error:
        return [*checks, Check("backend", False, f"{error}; fix: check LOCAL_DB_PATH")]
    try:
        checks += _backend_checks(settings, backend)
    finally:
        backend.close()
    return checks


def run(settings: Settings, write: Callable[[str], None] = print) -> int:
    """Print the report; 0 if every check passed, else 1."""
    checks = diagnose(settings)
    for check in checks:
        write(check.line())
    return 0 if all(c.ok for c in checks) else 1


def _configuration(settings: Settings) -> Check:
    kind = (
        f"Convex at {settings.convex_url}"
        if settings.convex_url
        else (f"embedded SQLite at {settings.local_db_path}")
    )
    detail = f"role={settings.role} app_env={settings.app_env} backend={kind}"
    if settings.app_env == "production" and settings.convex_url is None:
        return Check(
            "configuration",
            False,
            f"{detail}; fix: production needs CONVEX_URL and AGENT_SECRET (the embedded"
            " backend is a local file, lost on redeploy)",
        )
    if not ROLES[settings.role].agents:
        detail += f" (this role runs {ROLES[settings.role].summary})"
    return Check("configuration", True, detail)


def _port(settings: Settings) -> Check:
    try:
        with socket.create_server((settings.host, settings.port)):
            pass
    except OSError as error:
        return Check(
            "http",
            False,
            f"cannot listen on {settings.host}:{settings.port} ({error.strerror});"
            " fix: set PORT to a free port, or stop what uses it",
        )
    return Check("http", True, f"{settings.host}:{settings.port} is free for /health")


def _backend_checks(settings: Settings, backend: Backend) -> list[Check]:
    convex = settings.convex_url is not None
    started_s = monotonic_s()
    try:
        version = backend.agents_version()
    except ServiceKeyRejected:
        return [
            Check("backend", True, f"{settings.convex_url} answered"),
            Check(
                "service key",
                False,
                "the deployment refused AGENT_SECRET; fix: set AGENT_SECRET to the value of"
                " `npx convex env get AGENT_SECRET --prod` (and set one there if it has none)",
            ),
        ]
    except BackendUnavailable as error:
        fix = "check CONVEX_URL and the network" if convex else "check LOCAL_DB_PATH"
        return [Check("backend", False, f"{error}; fix: {fix}")]
    except BackendError as error:
        fix = (
            "deploy the reference functions (cd convex && npx convex deploy)"
            if convex
            else "check that LOCAL_DB_PATH is a readable, writable SQLite file"
        )
        return [Check("backend", False, f"{error}; fix: {fix}")]
    elapsed_ms = (monotonic_s() - started_s) * 1000
    checks = [Check("backend", True, f"answered in {elapsed_ms:.0f} ms (agents version {version})")]
    if convex:
        checks.append(Check("service key", True, "accepted by the deployment"))
    try:
        listed = parse_agent_rows(backend.list_agents_with_presence())
        workers = backend.list_workers()
    except BackendError as error:
        return [*checks, Check("agents", False, f"cannot list agents: {error}")]
    online = sum(1 for agent in listed.agents if agent.status == "online")
    # Presence expires: "online" is what live workers beat for in the last 3 intervals.
    detail = f"{len(listed.agents)} valid, {online} online"
    if listed.rejected:
        labels = ", ".join(r.label for r in listed.rejected[:5])
        detail += f", {len(listed.rejected)} skipped as invalid ({labels}); see `agents list`"
    checks.append(Check("agents", True, detail))
    live = ", ".join(workers[:5]) + (f" and {len(workers) - 5} more" if len(workers) > 5 else "")
    checks.append(
        Check(
            "workers",
            True,
            f"{len(workers)} live core worker(s){': ' + live if workers else ''}"
            + ("" if workers or not listed.agents else "; agents stay offline until one runs"),
        )
    )
    if ROLES[settings.role].agents:
        checks.append(_jobs_check(settings, backend))
    if settings.receives_whatsapp and settings.whatsapp_agent_id is not None:
        checks.append(_routing_check(settings.whatsapp_agent_id, listed))
    if settings.sends_whatsapp:
        checks.append(_whatsapp_check(settings, backend))
    return checks


def _jobs_check(settings: Settings, backend: Backend) -> Check:
    """What `run` would refuse (the model provider, TOOLS_MODULES), and the dead jobs."""
    try:
        settings.check_model()
        load_modules(settings.tools_modules)
    except (ConfigError, ValueError) as error:
        return Check("jobs", False, f"{error}; fix: `run` would exit 2 with this")
    try:
        dead = len(backend.list_jobs(status="dead"))
    except BackendError as error:
        return Check("jobs", False, f"cannot list jobs: {error}")
    model = f" (model {settings.model})" if settings.provider == "openai" else ""
    return Check(
        "jobs",
        True,
        f"{settings.provider} provider{model}, {len(default_registry().names())} tool(s),"
        f" up to {settings.job_concurrency} at once; {dead if dead < 1000 else '1000+'} dead"
        + ("; see `jobs list --status dead`" if dead else ""),
    )


def _routing_check(agent_id: str, listed: AgentList) -> Check:
    """WHATSAPP_AGENT_ID names an agent: else inbound messages are stored, answered by none."""
    if any(agent.id == agent_id for agent in listed.agents):
        return Check("whatsapp routing", True, f"inbound messages go to agent {agent_id}")
    return Check(
        "whatsapp routing",
        False,
        f"WHATSAPP_AGENT_ID={agent_id!r} names no agent: inbound messages are stored and"
        " answered by no one; fix: set it to an id from `agents list`",
    )


def _whatsapp_check(settings: Settings, backend: Backend) -> Check:
    """The lease of WHATSAPP_ACCOUNT_ID as the backend holds it (the WhatsApp functions
    answer); Meta itself is not called."""
    account = settings.whatsapp_account_id
    try:
        lease = backend.get_lease(account)
    except BackendError as error:
        fix = (
            "deploy the current reference functions"
            if settings.convex_url
            else "check LOCAL_DB_PATH"
        )
        return Check("whatsapp", False, f"cannot read the lease of {account}: {error}; fix: {fix}")
    transport = settings.whatsapp_transport
    if lease is None:
        return Check("whatsapp", True, f"{account}: no lease yet ({transport} transport)")
    state = "live" if lease.expires_at > now_ms() else "expired"
    return Check(
        "whatsapp",
        True,
        f"{account}: lease {state}, owner {lease.owner_id}, epoch {lease.epoch}"
        f" ({transport} transport)",
    )
