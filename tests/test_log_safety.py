"""A bad value reaches a person (an error, a rejection, a log line) cut and escaped: one
short line, however long the value and whatever control characters it holds."""

import sqlite3
from pathlib import Path

import pytest

from agent_runtime.app.config import load_settings
from agent_runtime.errors import ConfigError
from backend.local import LocalBackend
from messages import AgentRecord
from messages.agent import parse_agent_row, parse_agent_rows
from tests.conftest import agent_row, wait_for
from tests.runtime_process import RuntimeProcess, base_env, cli

MB = 1_048_576


def is_one_short_line(text: str, max_chars: int = 300) -> bool:
    return len(text) <= max_chars and text.isprintable()


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"name": "\n" + "n" * MB}, rf"name: '\n{'n' * 79}'...({MB + 1} chars) is invalid"),
        ({"heartbeatIntervalMs": "9" * MB}, f"got '{'9' * 80}'...({MB} chars)"),
        ({"status": "\x1b[2J" * MB}, r"(got '\x1b[2J\x1b[2J"),
        ({"id": ["x" * MB]}, "id: input should be a valid string (got ['xxx"),
    ],
)
def test_a_rejection_quotes_at_most_80_characters_of_the_value(
    overrides: dict[str, object], problem: str
) -> None:
    rejected = parse_agent_row(agent_row(**overrides), 0)
    assert not isinstance(rejected, AgentRecord)
    assert problem in rejected.problem
    assert is_one_short_line(rejected.problem)


def test_a_rejection_label_is_cut_and_escaped() -> None:
    no_id = agent_row(name="n\x1b" * MB, heartbeatIntervalMs=0)
    del no_id["id"]
    odd_id = agent_row(id="id\n" + "i" * MB, heartbeatIntervalMs=0)
    labels = [r.label for r in parse_agent_rows([no_id, odd_id]).rejected]
    assert labels[0].startswith(r"name='n\x1bn\x1b")
    assert labels[0].endswith(f"...({2 * MB} chars)")
    assert labels[1].startswith(r"'id\niii")
    assert all(is_one_short_line(label) for label in labels)


def test_a_bad_setting_is_quoted_cut_and_escaped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("AGENT_SYNC_INTERVAL", "1" * MB + "\x1b[2J\n")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith(
        f"AGENT_SYNC_INTERVAL='{'1' * 80}'...({MB + 5} chars) is invalid: expected whole"
    )
    assert is_one_short_line(message)
    monkeypatch.setenv("AGENT_SYNC_INTERVAL", "10\x1b[2J\n")
    with pytest.raises(ConfigError, match=r"^AGENT_SYNC_INTERVAL='10\\x1b\[2J\\n' is invalid"):
        load_settings()


@pytest.fixture
def stored_bad_row(tmp_path: Path) -> Path:
    """A database holding one good agent and one stored before names were checked: a
    1 MB name that starts with a newline."""
    db = tmp_path / "local.db"
    backend = LocalBackend(db)
    backend.create_agent("good", 60_000)
    backend.close()
    with sqlite3.connect(db) as connection:
        connection.execute(
            "INSERT INTO agents (id, name, session_key, heartbeat_interval_ms, created_at,"
            " updated_at) VALUES ('bad', ?, 'k', 60000, 0, 0)",
            ("\nlevel=ERROR" + "n" * MB,),
        )
    connection.close()
    return db


def test_the_cli_reports_a_stored_bad_name_in_one_short_line(stored_bad_row: Path) -> None:
    result = cli(base_env(stored_bad_row), "agents", "list")
    assert result.returncode == 0
    (line,) = result.stderr.splitlines()
    assert line.startswith(r"agent-runtime: skipping invalid agent bad: name: '\nlevel=ERROR")
    assert is_one_short_line(line)
    assert "good" in result.stdout


def test_the_sync_logs_a_stored_bad_name_in_one_short_line(stored_bad_row: Path) -> None:
    runtime = RuntimeProcess(base_env(stored_bad_row, LOG_FORMAT="text"))
    try:
        line = wait_for(
            lambda: next((x for x in runtime.lines() if "skipping invalid agent" in x), None),
            timeout_s=15,
            what="the sync's rejection line",
        )
    finally:
        runtime.stop()
    assert r"skipping invalid agent bad: name: '\nlevel=ERROR" in line
    assert is_one_short_line(line, max_chars=400)
    assert not any(x.startswith("level=ERROR") for x in runtime.lines())
