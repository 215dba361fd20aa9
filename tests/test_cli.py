"""The `agent-runtime` command line, as a subprocess, on a real SQLite file."""

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent_runtime.clock import now_ms
from backend.local import LocalBackend
from messages import Heartbeat
from tests.runtime_process import base_env, cli

JOB_SETTINGS = ("instructions", "model", "wakeupPrompt", "wakeupIntervalMs")
"""The agent fields its jobs run with, as `agents list --json` gives them."""


@pytest.fixture
def local_env(tmp_path: Path) -> dict[str, str]:
    return base_env(tmp_path / "local.db")


def test_console_script_prints_its_version(local_env: dict[str, str]) -> None:
    script = Path(sys.executable).parent / "agent-runtime"
    result = subprocess.run(
        [script, "--version"], env=local_env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert result.stdout.startswith("agent-runtime 0.")


def test_add_update_list_remove_round_trip(env: dict[str, str]) -> None:
    added = cli(
        env, "agents", "add", "scout", "--heartbeat-interval", "5000", "--session-key", "k1"
    )
    assert added.returncode == 0, added.stderr
    agent_id = added.stdout.strip()
    assert cli(env, "agents", "update", agent_id, "--name", "ranger").returncode == 0
    (record,) = json.loads(cli(env, "agents", "list", "--json").stdout)
    assert set(record) == {
        "id",
        "name",
        "sessionKey",
        "heartbeatIntervalMs",
        *JOB_SETTINGS,
        "status",
        "lastHeartbeatAt",
        "updatedAt",
    }
    assert (record["id"], record["name"], record["sessionKey"]) == (agent_id, "ranger", "k1")
    assert (record["heartbeatIntervalMs"], record["status"]) == (5000, "offline")
    assert {k: record[k] for k in JOB_SETTINGS} == dict.fromkeys(JOB_SETTINGS)
    table = cli(env, "agents", "list").stdout.splitlines()
    assert table[0].split() == [
        "ID",
        "NAME",
        "STATUS",
        "INTERVAL_MS",
        "LAST_HEARTBEAT",
        "SESSION_KEY",
        "MODEL",
        "WAKEUP_MS",
    ]
    assert table[1].split() == [agent_id, "ranger", "offline", "5000", "-", "k1", "-", "-"]
    assert cli(env, "agents", "remove", agent_id).returncode == 0
    assert json.loads(cli(env, "agents", "list", "--json").stdout) == []


def test_job_settings_are_set_listed_changed_and_cleared(env: dict[str, str]) -> None:
    added = cli(
        env,
        "agents",
        "add",
        "scout",
        "--instructions",
        "Be brief.\nAnswer in French.",
        "--model",
        "gpt-4o-mini",
        "--wakeup-prompt",
        "check your inbox",
        "--wakeup-interval",
        "60000",
    )
    assert added.returncode == 0, added.stderr
    agent_id = added.stdout.strip()
    assert _job_settings(env) == {
        "instructions": "Be brief.\nAnswer in French.",
        "model": "gpt-4o-mini",
        "wakeupPrompt": "check your inbox",
        "wakeupIntervalMs": 60000,
    }
    table = cli(env, "agents", "list").stdout
    assert table.splitlines()[1].split()[-2:] == ["gpt-4o-mini", "60000"]
    assert "Be brief" not in table  # instructions only in --json
    assert "check your inbox" not in table

    changed = cli(env, "agents", "update", agent_id, "--wakeup-interval", "120000")
    assert changed.returncode == 0, changed.stderr
    assert _job_settings(env)["wakeupIntervalMs"] == 120000
    assert _job_settings(env)["wakeupPrompt"] == "check your inbox"

    cleared = cli(
        env,
        "agents",
        "update",
        agent_id,
        "--instructions",
        "",
        "--model",
        "",
        "--wakeup-prompt",
        "",
        "--wakeup-interval",
        "0",
    )
    assert cleared.returncode == 0, cleared.stderr
    assert _job_settings(env) == dict.fromkeys(JOB_SETTINGS)
    assert cli(env, "agents", "list").stdout.splitlines()[1].split()[-2:] == ["-", "-"]


@pytest.mark.parametrize(
    "args",
    [
        ["add", "x", "--wakeup-prompt", "check"],
        ["add", "x", "--wakeup-interval", "60000"],
        ["update", "ID", "--wakeup-prompt", "check"],
    ],
)
def test_a_wakeup_prompt_without_an_interval_exits_2(env: dict[str, str], args: list[str]) -> None:
    agent_id = cli(env, "agents", "add", "plain").stdout.strip()
    result = cli(env, "agents", *[agent_id if a == "ID" else a for a in args])
    assert result.returncode == 2
    assert result.stderr.startswith("agent-runtime: ")
    assert "wakeupPrompt and wakeupIntervalMs go together" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert _job_settings(env) == dict.fromkeys(JOB_SETTINGS)


def test_default_interval_and_session_key(env: dict[str, str]) -> None:
    agent_id = cli(env, "agents", "add", "plain").stdout.strip()
    (record,) = json.loads(cli(env, "agents", "list", "--json").stdout)
    assert record["heartbeatIntervalMs"] == 30000
    assert record["sessionKey"] == f"agent:{agent_id}"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["agents", "add", "x", "--heartbeat-interval", "0"], "'0' is not a heartbeat interval"),
        (["agents", "add", "x", "--heartbeat-interval", "soon"], "'soon' is not a heartbeat"),
        (["agents", "add", "x", "--heartbeat-interval", "86400001"], "from 1 to 86400000"),
        (["agents", "add", ""], "expected a non-empty value"),
        (
            ["agents", "add", "x", "--wakeup-prompt", "p", "--wakeup-interval", "999"],
            "'999' is not a wake-up interval: expected whole milliseconds from 1000 to 86400000",
        ),
        (
            ["agents", "update", "someid", "--wakeup-interval", "5"],
            "'5' is not a wake-up interval: expected 0 (clears it) or whole milliseconds from 1000",
        ),
        (["agents", "add", "x", "--wakeup-interval", "0"], "'0' is not a wake-up interval"),
        (["agents", "add", "x", "--model", "a\nb"], "model: 'a\\nb' is invalid"),
        (
            ["agents", "update", "someid"],
            "give at least one of --name, --heartbeat-interval, --session-key, --instructions,"
            " --model, --wakeup-prompt, --wakeup-interval",
        ),
        (["agents", "frobnicate"], "invalid choice: 'frobnicate'"),
        (["run", "--role", "chef"], "invalid choice: 'chef'"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    local_env: dict[str, str], args: list[str], expected: str
) -> None:
    result = cli(local_env, *args)
    assert result.returncode == 2
    assert expected in result.stderr


@pytest.mark.parametrize("action", [["update", "nope", "--name", "x"], ["remove", "nope"]])
def test_unknown_agent_id_exits_1_naming_it(env: dict[str, str], action: list[str]) -> None:
    result = cli(env, "agents", *action)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "agent-runtime: no agent with id 'nope'; `agent-runtime agents list` shows the ids"
    )


def test_unusable_database_path_exits_1_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = cli(base_env(blocker / "local.db"), "agents", "list")
    assert result.returncode == 1
    assert "cannot open the local database" in result.stderr
    assert str(blocker / "local.db") in result.stderr


def test_invalid_rows_are_reported_on_stderr_and_the_rest_listed(
    local_env: dict[str, str],
) -> None:
    env = local_env
    good = cli(env, "agents", "add", "good").stdout.strip()
    db = sqlite3.connect(env["LOCAL_DB_PATH"])
    db.execute(
        "INSERT INTO agents (id, name, session_key, heartbeat_interval_ms, created_at, updated_at)"
        " VALUES ('bad', 'broken', 'k', 'soon', 0, 0)"
    )
    db.commit()
    db.close()
    result = cli(env, "agents", "list", "--json")
    assert result.returncode == 0
    assert [a["id"] for a in json.loads(result.stdout)] == [good]
    assert (
        "skipping invalid agent bad: heartbeatIntervalMs: expected a whole number" in result.stderr
    )


def test_doctor_on_the_embedded_backend(local_env: dict[str, str]) -> None:
    assert cli(local_env, "agents", "add", "checked").returncode == 0
    result = cli({**local_env, "PORT": "0"}, "doctor")
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["ok", "ok", "ok", "ok", "ok", "ok"]
    assert "backend=embedded SQLite at" in lines[0]
    assert lines[3].endswith("agents: 1 valid, 0 online")
    assert lines[4].endswith("workers: 0 live core worker(s); agents stay offline until one runs")
    assert lines[5].endswith("jobs: echo provider, 2 tool(s), up to 8 at once; 0 dead")
    production = cli(
        {**local_env, "PORT": "0", "APP_ENV": "production", "AGENT_ROLE": "core"}, "doctor"
    )
    assert production.returncode == 1
    assert "FAIL  configuration" in production.stdout
    assert "fix: production needs CONVEX_URL and AGENT_SECRET" in production.stdout


def test_doctor_checks_what_jobs_need(local_env: dict[str, str]) -> None:
    env = {
        **local_env,
        "PORT": "0",
        "TOOLS_MODULES": "tests.no_such_tools",
        "ENABLE_WHATSAPP": "true",
        "WHATSAPP_APP_SECRET": "s",
        "WHATSAPP_VERIFY_TOKEN": "t",
        "WHATSAPP_AGENT_ID": "nobody",
    }
    result = cli(env, "doctor")
    assert result.returncode == 1
    assert "FAIL  jobs: cannot import tools module 'tests.no_such_tools'" in result.stdout
    assert "FAIL  whatsapp routing: WHATSAPP_AGENT_ID='nobody' names no agent" in result.stdout


def test_a_dead_workers_agents_show_offline_in_agents_list_and_doctor(
    local_env: dict[str, str],
) -> None:
    backend = LocalBackend(Path(local_env["LOCAL_DB_PATH"]))
    try:
        stale = backend.create_agent("stale", 1000)
        fresh = backend.create_agent("fresh", 60_000)
        # A worker beat for both, then died without a word (kill -9): no offline mark.
        backend.record_heartbeats(
            [
                Heartbeat(agent_id=stale.id, at_ms=now_ms() - 3000),  # 3 intervals ago
                Heartbeat(agent_id=fresh.id, at_ms=now_ms() - 3000),
            ]
        )
        backend.register_worker("alive", "j", ttl_ms=60_000)
    finally:
        backend.close()
    two_minutes_ago = LocalBackend(
        Path(local_env["LOCAL_DB_PATH"]), clock=lambda: now_ms() - 120_000
    )
    two_minutes_ago.register_worker("dead", "i", ttl_ms=60_000)  # expired a minute ago
    two_minutes_ago.close()
    listed = {
        a["name"]: a["status"]
        for a in json.loads(cli(local_env, "agents", "list", "--json").stdout)
    }
    assert listed == {"stale": "offline", "fresh": "online"}
    doctor = cli({**local_env, "PORT": "0"}, "doctor").stdout
    assert "agents: 2 valid, 1 online" in doctor
    assert "workers: 1 live core worker(s): alive" in doctor


def test_doctor_reads_the_whatsapp_lease_on_a_sending_role(local_env: dict[str, str]) -> None:
    env = {**local_env, "PORT": "0", "AGENT_ROLE": "whatsapp-egress", "WHATSAPP_ACCOUNT_ID": "acct"}
    result = cli(env, "doctor")
    assert result.returncode == 0, result.stdout
    assert "ok    whatsapp: acct: no lease yet (console transport)" in result.stdout


def _job_settings(env: dict[str, str]) -> dict[str, object]:
    """The one agent's JOB_SETTINGS, as `agents list --json` gives them."""
    (record,) = json.loads(cli(env, "agents", "list", "--json").stdout)
    return {k: record[k] for k in JOB_SETTINGS}
