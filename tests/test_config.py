"""Settings from the environment: defaults, one-line errors, the production guard."""

import os
import socket

import pytest

from agent_runtime.app.config import Settings, load_settings
from agent_runtime.errors import ConfigError

VARIABLES = (
    "AGENT_ROLE",
    "AGENT_SYNC_INTERVAL",
    "LOCAL_DB_PATH",
    "HOST",
    "PORT",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "APP_ENV",
    "WORKER_ID",
    "AGENT_DEBUG",
    "CONVEX_URL",
    "AGENT_SECRET",
    "AGENT_SYNC_MODE",
    "CONVEX_CONNECT_TIMEOUT_MS",
    "CONVEX_READ_TIMEOUT_MS",
    "ENABLE_WHATSAPP",
    "WHATSAPP_ACCOUNT_ID",
    "WHATSAPP_TRANSPORT",
    "WHATSAPP_ACCESS_TOKEN",
    "WHATSAPP_PHONE_NUMBER_ID",
    "WHATSAPP_APP_SECRET",
    "WHATSAPP_VERIFY_TOKEN",
    "WHATSAPP_CLAIM_LOCK_MS",
    "WHATSAPP_SEND_TIMEOUT_MS",
    "WHATSAPP_AGENT_ID",
    "JOB_CONCURRENCY",
    "JOB_LOCK_MS",
    "JOB_MAX_ATTEMPTS",
    "JOB_HISTORY_TURNS",
    "JOB_MAX_STEPS",
    "MODEL_PROVIDER",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "MODEL",
    "MODEL_TIMEOUT_MS",
    "TOOLS_MODULES",
    "AGENT_FALLBACK_POLL_MS",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults() -> None:
    s = load_settings()
    assert (s.role, s.agent_sync_interval_ms, s.port, s.log_level, s.log_format, s.app_env) == (
        "all",
        60000,
        8080,
        "INFO",
        "text",
        "development",
    )
    assert str(s.local_db_path) == ".agent-runtime/local.db"
    assert s.agent_debug == frozenset()
    host, pid, suffix = s.worker_id.rsplit("-", 2)
    assert host
    assert pid.isdigit()
    assert len(suffix) == 6


def test_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_ROLE", "CORE")
    monkeypatch.setenv("AGENT_SYNC_INTERVAL", "1000")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("AGENT_DEBUG", "a1, b2,,")
    monkeypatch.setenv("WORKER_ID", "w1")
    s = load_settings()
    assert (s.role, s.agent_sync_interval_ms, s.log_level, s.worker_id) == (
        "core",
        1000,
        "DEBUG",
        "w1",
    )
    assert s.agent_debug == frozenset({"a1", "b2"})


def test_cli_override_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_ROLE", "whatsapp-egress")
    assert load_settings(AGENT_ROLE="core").role == "core"
    assert load_settings(AGENT_ROLE=None).role == "whatsapp-egress"


@pytest.mark.parametrize(
    ("role", "env", "missing"),
    [
        ("whatsapp", {}, "WHATSAPP_APP_SECRET is required for the webhook"),
        ("whatsapp-ingress", {"WHATSAPP_APP_SECRET": "s"}, "WHATSAPP_VERIFY_TOKEN is required"),
        ("whatsapp-egress", {"WHATSAPP_TRANSPORT": "cloud"}, "WHATSAPP_ACCESS_TOKEN is required"),
        (
            "whatsapp-egress",
            {"WHATSAPP_TRANSPORT": "cloud", "WHATSAPP_ACCESS_TOKEN": "t"},
            "WHATSAPP_PHONE_NUMBER_ID is required",
        ),
        ("whatsapp-egress", {"APP_ENV": "production"}, "WHATSAPP_TRANSPORT='console' is refused"),
        (
            "whatsapp-egress",
            {"WHATSAPP_CLAIM_LOCK_MS": "5000", "WHATSAPP_SEND_TIMEOUT_MS": "5000"},
            "expected more than WHATSAPP_SEND_TIMEOUT_MS",
        ),
    ],
)
def test_each_whatsapp_role_requires_its_settings(
    monkeypatch: pytest.MonkeyPatch, role: str, env: dict[str, str], missing: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=missing):
        load_settings(AGENT_ROLE=role)


def test_whatsapp_secrets_are_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHATSAPP_ACCESS_TOKEN", " ")
    monkeypatch.setenv("WHATSAPP_APP_SECRET", "app-secret-xyz")
    settings = load_settings(AGENT_ROLE="whatsapp", WHATSAPP_VERIFY_TOKEN="verify-xyz")
    assert settings.sends_whatsapp
    assert settings.receives_whatsapp
    assert "app-secret-xyz" not in repr(settings)
    assert "verify-xyz" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "AGENT_SYNC_INTERVAL",
            "abc",
            "AGENT_SYNC_INTERVAL='abc' is invalid: expected whole milliseconds >= 1000",
        ),
        ("AGENT_SYNC_INTERVAL", "60000.5", "AGENT_SYNC_INTERVAL='60000.5' is invalid"),
        ("AGENT_SYNC_INTERVAL", "0", "AGENT_SYNC_INTERVAL='0' is invalid"),
        ("PORT", "70000", "PORT='70000' is invalid: expected a TCP port from 0 to 65535"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL='loud' is invalid"),
        ("APP_ENV", "staging", "APP_ENV='staging' is invalid: expected development or production"),
        ("WORKER_ID", "a\tb", "WORKER_ID='a\\tb' is invalid: expected a name of 1 to 200"),
        (
            "WORKER_TTL_MS",
            "10000",
            "WORKER_TTL_MS='10000' is invalid: expected at least 3 x WORKER_HEARTBEAT_MS = 15000",
        ),
    ],
)
def test_bad_value_is_one_line_naming_variable_value_and_expectation(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value) == message or str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_production_refuses_role_all_but_accepts_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    with pytest.raises(ConfigError, match="AGENT_ROLE='all' is refused"):
        load_settings()
    assert load_settings(AGENT_ROLE="core").app_env == "production"


def test_dotenv_file_is_read(tmp_path: object) -> None:
    with open(".env", "w") as f:
        f.write("AGENT_SYNC_INTERVAL=5000\n")
    assert Settings().agent_sync_interval_ms == 5000


@pytest.mark.parametrize(
    "url",
    [
        "http://x.convex.cloud",  # the secret would travel in clear
        "https://u:p@x.convex.cloud",
        "https://x.convex.cloud/api",
        "https://x.convex.cloud?a=1",
        "ftp://x.convex.cloud",
        "x.convex.cloud",
    ],
)
def test_convex_url_must_be_an_https_origin(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("CONVEX_URL", url)
    monkeypatch.setenv("AGENT_SECRET", "k")
    with pytest.raises(ConfigError, match=r"CONVEX_URL=.* is invalid: expected an https origin"):
        load_settings()


@pytest.mark.parametrize(
    "url", [" https://x.convex.cloud/ ", "http://127.0.0.1:3210", "http://localhost:8000"]
)
def test_convex_url_accepted_forms(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("CONVEX_URL", url)
    monkeypatch.setenv("AGENT_SECRET", "k")
    assert load_settings().convex_url == url.strip()


def test_agent_secret_is_required_with_convex_and_never_echoed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONVEX_URL", "https://x.convex.cloud")
    with pytest.raises(ConfigError, match="AGENT_SECRET is required when CONVEX_URL is set"):
        load_settings()
    monkeypatch.setenv("AGENT_SECRET", "pasted-secret\n")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "surrounding spaces or newlines" in str(raised.value)
    assert "pasted-secret" not in str(raised.value)
    monkeypatch.setenv("AGENT_SECRET", "good-secret")
    settings = load_settings()
    assert "good-secret" not in repr(settings)
    assert settings.agent_secret is not None
    assert settings.agent_secret.get_secret_value() == "good-secret"


def test_sync_mode_subscribes_on_convex_by_default_and_subscribe_needs_convex(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().subscribes is False
    assert load_settings().agent_fallback_poll_ms == 5000
    monkeypatch.setenv("AGENT_SYNC_MODE", "subscribe")
    with pytest.raises(ConfigError, match="AGENT_SYNC_MODE='subscribe' needs CONVEX_URL"):
        load_settings()
    monkeypatch.setenv("CONVEX_URL", "https://x.convex.cloud")
    monkeypatch.setenv("AGENT_SECRET", "k")
    assert load_settings().subscribes is True
    monkeypatch.delenv("AGENT_SYNC_MODE")
    assert load_settings().subscribes is True
    monkeypatch.setenv("AGENT_SYNC_MODE", "poll")
    assert load_settings().subscribes is False


def test_an_empty_worker_id_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_ID", "")
    worker_id = load_settings().worker_id
    assert worker_id.startswith(f"{socket.gethostname()}-{os.getpid()}-")


@pytest.mark.parametrize(
    "variable", ["WHATSAPP_ACCESS_TOKEN", "WHATSAPP_APP_SECRET", "WHATSAPP_VERIFY_TOKEN"]
)
def test_a_whatsapp_secret_with_a_newline_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "tok-en-123\n")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert f"{variable} is invalid" in str(raised.value)
    assert "tok-en-123" not in str(raised.value)


def test_job_settings_default_to_the_issue_and_read_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = load_settings()
    assert (
        s.job_concurrency,
        s.job_lock_ms,
        s.job_max_attempts,
        s.job_history_turns,
        s.job_max_steps,
        s.provider,
        s.tools_modules,
    ) == (8, 60_000, 3, 20, 8, "echo", ())
    monkeypatch.setenv("JOB_CONCURRENCY", "0")
    monkeypatch.setenv("TOOLS_MODULES", " tests.job_tools, ,tests.example_tools ")
    monkeypatch.setenv("MODEL_PROVIDER", "OpenAI")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9000/v1")
    s = load_settings()
    assert (s.job_concurrency, s.provider) == (0, "openai")
    assert s.tools_modules == ("tests.job_tools", "tests.example_tools")
    s.check_model()  # a local server may need no key


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("JOB_CONCURRENCY", "-1", "JOB_CONCURRENCY='-1' is invalid: expected jobs run at once"),
        ("JOB_LOCK_MS", "60s", "JOB_LOCK_MS='60s' is invalid: expected whole milliseconds"),
        ("JOB_MAX_STEPS", "0", "JOB_MAX_STEPS='0' is invalid: expected from 1 to 100"),
        ("MODEL_PROVIDER", "gpt", "MODEL_PROVIDER='gpt' is invalid: expected echo or openai"),
        ("OPENAI_BASE_URL", "api.openai.com", "OPENAI_BASE_URL='api.openai.com' is invalid"),
    ],
)
def test_bad_job_settings_are_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value).startswith(message)


def test_openai_on_convex_needs_its_key_only_to_run_jobs_and_never_echoes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONVEX_URL", "https://happy-otter-123.convex.cloud")
    monkeypatch.setenv("AGENT_SECRET", "s")
    s = load_settings()  # the CLI's commands need no model
    assert s.provider == "openai"
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is required"):
        s.check_model()
    monkeypatch.setenv("OPENAI_API_KEY", " sk-secret-value")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "sk-secret-value" not in str(raised.value)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    s = load_settings()
    s.check_model()
    assert "sk-secret-value" not in repr(s)
