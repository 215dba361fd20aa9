"""The one config object: every setting comes from the environment (or `.env`).

`load_settings()` turns any invalid value into a `ConfigError` whose one-line message
names the variable, the value and what is expected; the CLI exits 2 on it.
"""

import os
import secrets
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agent_runtime.app.roles import ROLE_NAMES, ROLES, Role
from agent_runtime.errors import ConfigError
from messages.text import CONTROL_CHARACTER, LABEL_RULE, Label, shown

DEFAULT_AGENT_SYNC_INTERVAL_MS = 60_000
MIN_AGENT_SYNC_INTERVAL_MS = 1_000
DEFAULT_LOCAL_DB_PATH = Path(".agent-runtime/local.db")
DEFAULT_PORT = 8080
DEFAULT_CONVEX_CONNECT_TIMEOUT_MS = 5_000
DEFAULT_CONVEX_READ_TIMEOUT_MS = 10_000
MAX_CONVEX_TIMEOUT_MS = 120_000
DEFAULT_WORKER_HEARTBEAT_MS = 5_000
MIN_WORKER_HEARTBEAT_MS = 500
DEFAULT_WORKER_TTL_MS = 15_000
MAX_WORKER_TTL_MS = 600_000
DEFAULT_WHATSAPP_GRAPH_URL = "https://graph.facebook.com"
DEFAULT_WHATSAPP_API_VERSION = "v23.0"
DEFAULT_WHATSAPP_LEASE_TTL_MS = 15_000
MIN_WHATSAPP_LEASE_TTL_MS = 5_000
DEFAULT_WHATSAPP_CLAIM_LOCK_MS = 60_000
DEFAULT_WHATSAPP_SEND_TIMEOUT_MS = 10_000
DEFAULT_WHATSAPP_MAX_ATTEMPTS = 5
DEFAULT_WHATSAPP_PAUSE_RETRY_MS = 300_000
DEFAULT_WHATSAPP_MAX_MPS = 80
DEFAULT_AGENT_FALLBACK_POLL_MS = 5_000
DEFAULT_JOB_CONCURRENCY = 8
MAX_JOB_CONCURRENCY = 256
DEFAULT_JOB_LOCK_MS = 60_000
DEFAULT_JOB_MAX_ATTEMPTS = 3
DEFAULT_JOB_HISTORY_TURNS = 20
DEFAULT_JOB_MAX_STEPS = 8
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_MODEL_TIMEOUT_MS = 60_000
WORKER_TTL_HEARTBEATS = 3
"""A registration must outlive this many renewals, so one late renewal is not a death."""


def default_worker_id() -> str:
    """host-pid-random: unique per process, readable in logs and /health."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Settings(BaseSettings):
    """Runtime settings. Environment variable names are the field aliases."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, populate_by_name=True
    )

    role: Annotated[
        Role, Field(alias="AGENT_ROLE", description="one of " + ", ".join(ROLE_NAMES))
    ] = "all"
    agent_sync_interval_ms: Annotated[
        int,
        Field(
            alias="AGENT_SYNC_INTERVAL",
            ge=MIN_AGENT_SYNC_INTERVAL_MS,
            strict=False,
            description=f"whole milliseconds >= {MIN_AGENT_SYNC_INTERVAL_MS}",
        ),
    ] = DEFAULT_AGENT_SYNC_INTERVAL_MS
    local_db_path: Annotated[
        Path, Field(alias="LOCAL_DB_PATH", description="a file path for the SQLite database")
    ] = DEFAULT_LOCAL_DB_PATH
    host: Annotated[str, Field(alias="HOST", min_length=1, description="an address to bind")] = (
        "0.0.0.0"  # noqa: S104 - platforms route to the container's public interface
    )
    port: Annotated[
        int, Field(alias="PORT", ge=0, le=65535, description="a TCP port from 0 to 65535")
    ] = DEFAULT_PORT
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        Field(alias="LOG_LEVEL", description="DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    ] = "INFO"
    log_format: Annotated[
        Literal["text", "json"], Field(alias="LOG_FORMAT", description="text or json")
    ] = "text"
    app_env: Annotated[
        Literal["development", "production"],
        Field(alias="APP_ENV", description="development or production"),
    ] = "development"
    worker_id: Annotated[Label, Field(alias="WORKER_ID", description=f"a name of {LABEL_RULE}")] = (
        Field(default_factory=default_worker_id)
    )
    worker_heartbeat_ms: Annotated[
        int,
        Field(
            alias="WORKER_HEARTBEAT_MS",
            ge=MIN_WORKER_HEARTBEAT_MS,
            le=MAX_WORKER_TTL_MS // WORKER_TTL_HEARTBEATS,
            description=(
                f"whole milliseconds from {MIN_WORKER_HEARTBEAT_MS}"
                f" to {MAX_WORKER_TTL_MS // WORKER_TTL_HEARTBEATS}"
            ),
        ),
    ] = DEFAULT_WORKER_HEARTBEAT_MS
    worker_ttl_ms: Annotated[
        int,
        Field(
            alias="WORKER_TTL_MS",
            gt=0,
            le=MAX_WORKER_TTL_MS,
            description=(
                f"whole milliseconds up to {MAX_WORKER_TTL_MS}, at least"
                f" {WORKER_TTL_HEARTBEATS} x WORKER_HEARTBEAT_MS"
            ),
        ),
    ] = DEFAULT_WORKER_TTL_MS
    convex_url: Annotated[
        str | None,
        Field(
            alias="CONVEX_URL",
            # https, or http to this machine only (the secret travels in every request);
            # a bare origin: no credentials, path, query or fragment.
            pattern=r"^(https://[A-Za-z0-9.-]+|http://(localhost|127\.0\.0\.1|\[::1\]))(:\d+)?/?$",
            description=(
                "an https origin such as https://happy-otter-123.convex.cloud"
                " (http only for localhost or 127.0.0.1)"
            ),
        ),
    ] = None
    agent_secret: Annotated[
        SecretStr | None,
        Field(
            alias="AGENT_SECRET",
            min_length=1,
            description="the deployment's AGENT_SECRET, without surrounding spaces or newlines",
        ),
    ] = None
    convex_connect_timeout_ms: Annotated[
        int,
        Field(
            alias="CONVEX_CONNECT_TIMEOUT_MS",
            gt=0,
            le=MAX_CONVEX_TIMEOUT_MS,
            description=f"whole milliseconds from 1 to {MAX_CONVEX_TIMEOUT_MS}",
        ),
    ] = DEFAULT_CONVEX_CONNECT_TIMEOUT_MS
    convex_read_timeout_ms: Annotated[
        int,
        Field(
            alias="CONVEX_READ_TIMEOUT_MS",
            gt=0,
            le=MAX_CONVEX_TIMEOUT_MS,
            description=f"whole milliseconds from 1 to {MAX_CONVEX_TIMEOUT_MS}",
        ),
    ] = DEFAULT_CONVEX_READ_TIMEOUT_MS
    agent_sync_mode: Annotated[
        Literal["poll", "subscribe"] | None,
        Field(
            alias="AGENT_SYNC_MODE",
            description=(
                "poll or subscribe (subscribe needs CONVEX_URL; the default on Convex is"
                " subscribe, on the embedded backend poll)"
            ),
        ),
    ] = None
    agent_fallback_poll_ms: Annotated[
        int,
        Field(
            alias="AGENT_FALLBACK_POLL_MS",
            ge=250,
            le=600_000,
            description="whole milliseconds from 250 to 600000",
        ),
    ] = DEFAULT_AGENT_FALLBACK_POLL_MS
    enable_whatsapp: Annotated[
        bool, Field(alias="ENABLE_WHATSAPP", description="true or false (role all only)")
    ] = True
    whatsapp_account_id: Annotated[
        Label, Field(alias="WHATSAPP_ACCOUNT_ID", description=f"an account name of {LABEL_RULE}")
    ] = "default"
    whatsapp_transport: Annotated[
        Literal["cloud", "console"],
        Field(alias="WHATSAPP_TRANSPORT", description="cloud or console"),
    ] = "console"
    whatsapp_graph_url: Annotated[
        str,
        Field(
            alias="WHATSAPP_GRAPH_URL",
            pattern=r"^https?://[A-Za-z0-9.:\[\]-]+/?$",
            description="an origin such as https://graph.facebook.com",
        ),
    ] = DEFAULT_WHATSAPP_GRAPH_URL
    whatsapp_api_version: Annotated[
        str,
        Field(alias="WHATSAPP_API_VERSION", pattern=r"^v\d+\.\d+$", description="such as v23.0"),
    ] = DEFAULT_WHATSAPP_API_VERSION
    whatsapp_phone_number_id: Annotated[
        str | None,
        Field(alias="WHATSAPP_PHONE_NUMBER_ID", pattern=r"^\d+$", description="digits"),
    ] = None
    whatsapp_access_token: Annotated[
        SecretStr | None,
        Field(
            alias="WHATSAPP_ACCESS_TOKEN",
            min_length=1,
            description="a Graph API token, without surrounding spaces or newlines",
        ),
    ] = None
    whatsapp_app_secret: Annotated[
        SecretStr | None,
        Field(
            alias="WHATSAPP_APP_SECRET",
            min_length=1,
            description="the Meta app secret, without surrounding spaces or newlines",
        ),
    ] = None
    whatsapp_verify_token: Annotated[
        SecretStr | None,
        Field(
            alias="WHATSAPP_VERIFY_TOKEN",
            min_length=1,
            description="the webhook verify token, without surrounding spaces or newlines",
        ),
    ] = None
    whatsapp_lease_ttl_ms: Annotated[
        int,
        Field(
            alias="WHATSAPP_LEASE_TTL_MS",
            ge=MIN_WHATSAPP_LEASE_TTL_MS,
            le=600_000,
            description=f"whole milliseconds from {MIN_WHATSAPP_LEASE_TTL_MS} to 600000",
        ),
    ] = DEFAULT_WHATSAPP_LEASE_TTL_MS
    whatsapp_claim_lock_ms: Annotated[
        int,
        Field(
            alias="WHATSAPP_CLAIM_LOCK_MS",
            ge=1000,
            le=600_000,
            description="whole milliseconds from 1000 to 600000, above WHATSAPP_SEND_TIMEOUT_MS",
        ),
    ] = DEFAULT_WHATSAPP_CLAIM_LOCK_MS
    whatsapp_send_timeout_ms: Annotated[
        int,
        Field(
            alias="WHATSAPP_SEND_TIMEOUT_MS",
            ge=100,
            le=120_000,
            description="whole milliseconds from 100 to 120000",
        ),
    ] = DEFAULT_WHATSAPP_SEND_TIMEOUT_MS
    whatsapp_max_attempts: Annotated[
        int,
        Field(alias="WHATSAPP_MAX_ATTEMPTS", ge=1, le=100, description="from 1 to 100"),
    ] = DEFAULT_WHATSAPP_MAX_ATTEMPTS
    whatsapp_pause_retry_ms: Annotated[
        int,
        Field(
            alias="WHATSAPP_PAUSE_RETRY_MS",
            ge=1000,
            le=86_400_000,
            description="whole milliseconds from 1000 to 86400000",
        ),
    ] = DEFAULT_WHATSAPP_PAUSE_RETRY_MS
    whatsapp_max_mps: Annotated[
        int,
        Field(
            alias="WHATSAPP_MAX_MPS", ge=1, le=1000, description="messages per second, 1 to 1000"
        ),
    ] = DEFAULT_WHATSAPP_MAX_MPS
    whatsapp_agent_id: Annotated[
        Label | None,
        Field(
            alias="WHATSAPP_AGENT_ID",
            description=f"the id of the agent inbound messages go to, {LABEL_RULE}",
        ),
    ] = None
    job_concurrency: Annotated[
        int,
        Field(
            alias="JOB_CONCURRENCY",
            ge=0,
            le=MAX_JOB_CONCURRENCY,
            description=f"jobs run at once by this process, 0 (none) to {MAX_JOB_CONCURRENCY}",
        ),
    ] = DEFAULT_JOB_CONCURRENCY
    job_lock_ms: Annotated[
        int,
        Field(
            alias="JOB_LOCK_MS",
            ge=4_000,
            le=600_000,
            description="whole milliseconds from 4000 to 600000",
        ),
    ] = DEFAULT_JOB_LOCK_MS
    job_max_attempts: Annotated[
        int, Field(alias="JOB_MAX_ATTEMPTS", ge=1, le=100, description="from 1 to 100")
    ] = DEFAULT_JOB_MAX_ATTEMPTS
    job_history_turns: Annotated[
        int, Field(alias="JOB_HISTORY_TURNS", ge=0, le=200, description="from 0 to 200")
    ] = DEFAULT_JOB_HISTORY_TURNS
    job_max_steps: Annotated[
        int, Field(alias="JOB_MAX_STEPS", ge=1, le=100, description="from 1 to 100")
    ] = DEFAULT_JOB_MAX_STEPS
    model_provider: Annotated[
        Literal["echo", "openai"] | None,
        Field(
            alias="MODEL_PROVIDER",
            description="echo or openai (default: echo on the embedded backend, openai on Convex)",
        ),
    ] = None
    openai_base_url: Annotated[
        str,
        Field(
            alias="OPENAI_BASE_URL",
            pattern=r"^https?://[A-Za-z0-9.:\[\]-]+(/[^\s?#]*)?$",
            description="the API's base URL, such as https://api.openai.com/v1",
        ),
    ] = DEFAULT_OPENAI_BASE_URL
    openai_api_key: Annotated[
        SecretStr | None,
        Field(
            alias="OPENAI_API_KEY",
            min_length=1,
            description="an API key, without surrounding spaces or newlines",
        ),
    ] = None
    model: Annotated[Label, Field(alias="MODEL", description=f"a model name of {LABEL_RULE}")] = (
        DEFAULT_MODEL
    )
    model_timeout_ms: Annotated[
        int,
        Field(
            alias="MODEL_TIMEOUT_MS",
            ge=1000,
            le=600_000,
            description="whole milliseconds from 1000 to 600000",
        ),
    ] = DEFAULT_MODEL_TIMEOUT_MS
    tools_modules: Annotated[
        tuple[str, ...],
        NoDecode,
        Field(alias="TOOLS_MODULES", description="comma-separated module paths"),
    ] = ()
    agent_debug: Annotated[
        frozenset[str],
        NoDecode,
        Field(alias="AGENT_DEBUG", description="comma-separated agent ids"),
    ] = frozenset()

    @field_validator(
        "agent_sync_interval_ms",
        "port",
        "convex_connect_timeout_ms",
        "convex_read_timeout_ms",
        "worker_heartbeat_ms",
        "worker_ttl_ms",
        "whatsapp_lease_ttl_ms",
        "whatsapp_claim_lock_ms",
        "whatsapp_send_timeout_ms",
        "whatsapp_max_attempts",
        "whatsapp_pause_retry_ms",
        "whatsapp_max_mps",
        "job_concurrency",
        "job_lock_ms",
        "job_max_attempts",
        "job_history_turns",
        "job_max_steps",
        "model_timeout_ms",
        "agent_fallback_poll_ms",
        mode="before",
    )
    @classmethod
    def _integer_text(cls, value: Any) -> Any:
        # pydantic would accept "1e3" or "60000.0"; an operator's env var should be digits.
        if isinstance(value, str) and not value.strip().isdigit():
            raise ValueError("not a whole number")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator(
        "log_format",
        "app_env",
        "role",
        "agent_sync_mode",
        "whatsapp_transport",
        "model_provider",
        mode="before",
    )
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("agent_debug", "tools_modules", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator(
        "convex_url",
        "agent_secret",
        "whatsapp_phone_number_id",
        "whatsapp_access_token",
        "whatsapp_app_secret",
        "whatsapp_verify_token",
        "whatsapp_agent_id",
        "model_provider",
        "openai_api_key",
        "agent_sync_mode",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("worker_id", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any) -> Any:
        return default_worker_id() if isinstance(value, str) and not value else value

    @field_validator("convex_url", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator(
        "agent_secret",
        "whatsapp_access_token",
        "whatsapp_app_secret",
        "whatsapp_verify_token",
        "openai_api_key",
        mode="after",
    )
    @classmethod
    def _no_surrounding_space(cls, value: SecretStr | None) -> SecretStr | None:
        # A pasted newline would look like a wrong key at the deployment, and in an HTTP
        # header it makes the client raise an error that quotes the header, secret and all.
        if value is None:
            return value
        text = value.get_secret_value()
        if text != text.strip() or CONTROL_CHARACTER.search(text):
            raise ValueError("surrounding whitespace or a control character")
        return value

    @model_validator(mode="after")
    def _production_shape(self) -> "Settings":
        if self.app_env == "production" and self.role == "all":
            raise ValueError(_ROLE_ALL_IN_PRODUCTION)
        if self.convex_url is not None and self.agent_secret is None:
            raise ValueError(_CONVEX_NEEDS_KEY)
        if self.worker_ttl_ms < WORKER_TTL_HEARTBEATS * self.worker_heartbeat_ms:
            raise ValueError(
                f"WORKER_TTL_MS='{self.worker_ttl_ms}' is invalid: expected at least"
                f" {WORKER_TTL_HEARTBEATS} x WORKER_HEARTBEAT_MS"
                f" = {WORKER_TTL_HEARTBEATS * self.worker_heartbeat_ms}"
            )
        self._whatsapp_shape()
        if self.agent_sync_mode == "subscribe" and self.convex_url is None:
            raise ValueError(
                "AGENT_SYNC_MODE='subscribe' needs CONVEX_URL: expected poll with the"
                " embedded backend (its change counter is polled locally)"
            )
        return self

    def _whatsapp_shape(self) -> None:
        if self.sends_whatsapp:
            if self.whatsapp_claim_lock_ms <= self.whatsapp_send_timeout_ms:
                raise ValueError(
                    f"WHATSAPP_CLAIM_LOCK_MS='{self.whatsapp_claim_lock_ms}' is invalid:"
                    " expected more than WHATSAPP_SEND_TIMEOUT_MS"
                    f" ({self.whatsapp_send_timeout_ms}), or a slow send could be claimed twice"
                )
            if self.whatsapp_transport == "console" and self.app_env == "production":
                raise ValueError(
                    "WHATSAPP_TRANSPORT='console' is refused when APP_ENV='production':"
                    " expected cloud (console sends nothing)"
                )
            if self.whatsapp_transport == "cloud":
                _require(self, "whatsapp_access_token", "WHATSAPP_ACCESS_TOKEN", "sending")
                _require(self, "whatsapp_phone_number_id", "WHATSAPP_PHONE_NUMBER_ID", "sending")
        if ROLES[self.role].whatsapp_ingress and self.role != "all":
            _require(self, "whatsapp_app_secret", "WHATSAPP_APP_SECRET", "the webhook")
            _require(self, "whatsapp_verify_token", "WHATSAPP_VERIFY_TOKEN", "the webhook")

    @property
    def sends_whatsapp(self) -> bool:
        """Whether this process runs the lease and the sender of WHATSAPP_ACCOUNT_ID."""
        spec = ROLES[self.role]
        return spec.whatsapp_sender and (self.role != "all" or self.enable_whatsapp)

    @property
    def receives_whatsapp(self) -> bool:
        """Whether this process serves the webhook: its roles always (their settings are
        required); role all when ENABLE_WHATSAPP and both webhook secrets are set."""
        spec = ROLES[self.role]
        if not spec.whatsapp_ingress:
            return False
        if self.role != "all":
            return True
        configured = self.whatsapp_app_secret is not None and self.whatsapp_verify_token is not None
        return self.enable_whatsapp and configured

    @property
    def provider(self) -> Literal["echo", "openai"]:
        """The model provider: MODEL_PROVIDER, else echo on the embedded backend (offline)
        and openai on Convex (a deployment serves real users)."""
        if self.model_provider is not None:
            return self.model_provider
        return "echo" if self.convex_url is None else "openai"

    def check_model(self) -> None:
        """For `run` on a role that runs jobs: the model provider can work.

        Raises:
            ConfigError: openai at api.openai.com without OPENAI_API_KEY.
        """
        if (
            self.provider == "openai"
            and self.openai_api_key is None
            and self.openai_base_url.rstrip("/") == DEFAULT_OPENAI_BASE_URL
        ):
            raise ConfigError(
                f"OPENAI_API_KEY is required for MODEL_PROVIDER='openai' with"
                f" OPENAI_BASE_URL='{DEFAULT_OPENAI_BASE_URL}' (the default on Convex):"
                " expected a key, or MODEL_PROVIDER=echo, or the URL of a server that needs none"
            )

    @property
    def subscribes(self) -> bool:
        """Whether changes are pushed (a Convex subscription, in a child process) rather
        than polled: on Convex unless AGENT_SYNC_MODE=poll. Polling the change signals
        costs a function call per poll; an idle subscription costs none."""
        return self.convex_url is not None and self.agent_sync_mode != "poll"


SECRET_VARIABLES = frozenset(
    {
        "AGENT_SECRET",
        "WHATSAPP_ACCESS_TOKEN",
        "WHATSAPP_APP_SECRET",
        "WHATSAPP_VERIFY_TOKEN",
        "OPENAI_API_KEY",
    }
)

_ROLE_ALL_IN_PRODUCTION = (
    f"AGENT_ROLE='all' is refused when APP_ENV='production': expected one of "
    f"{', '.join(r for r in ROLE_NAMES if r != 'all')} (run one role per process)"
)
_CONVEX_NEEDS_KEY = (
    "AGENT_SECRET is required when CONVEX_URL is set: expected the same value as the"
    " deployment's AGENT_SECRET (npx convex env set AGENT_SECRET ... --prod)"
)


def _require(settings: Settings, field: str, variable: str, purpose: str) -> None:
    if getattr(settings, field) is None:
        raise ValueError(
            f"{variable} is required for {purpose} with AGENT_ROLE='{settings.role}'"
            f" (WHATSAPP_TRANSPORT='{settings.whatsapp_transport}')"
        )


def _explain(error: ValidationError) -> str:
    fields = Settings.model_fields
    by_alias = {info.alias: info for info in fields.values() if info.alias}
    lines = []
    for item in error.errors(include_url=False):
        loc = item["loc"][0] if item["loc"] else None
        info = by_alias.get(str(loc)) or fields.get(str(loc))
        if info is None:  # a model-level check: the message is already for a person
            lines.append(str(item["ctx"]["error"]) if "ctx" in item else item["msg"])
            continue
        if info.alias in SECRET_VARIABLES:  # never echo a secret, even a bad one
            lines.append(f"{info.alias} is invalid: expected {info.description}")
            continue
        # Show the value as the operator wrote it, not as a validator normalised it; cut
        # and escaped, so a pasted file or a stray escape code still makes one short line.
        value = os.environ.get(str(info.alias), item["input"])
        lines.append(f"{info.alias}={shown(value)} is invalid: expected {info.description}")
    return "; ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment; `overrides` (e.g. from CLI flags) win.

    Raises:
        ConfigError: one line naming each bad variable, its value and what is expected.
    """
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        raise ConfigError(_explain(error)) from None
