"""An agent's name and session key are labels: 1 to 200 characters, no control characters.

One rule (`messages.agent.label_problem`) for the record, hence both backends, and the CLI.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_runtime.errors import InvalidAgent
from backend.local import LocalBackend
from messages import AgentRecord
from messages.agent import parse_agent_row
from messages.text import MAX_LABEL_CHARS, label_problem
from tests.conftest import agent_row
from tests.runtime_process import base_env, cli

BAD_LABELS = [
    pytest.param("", "(empty)", id="empty"),
    pytest.param("x" * (MAX_LABEL_CHARS + 1), "(too long)", id="201 chars"),
    pytest.param("scout\nlevel=ERROR", r"control character '\n' at index 5", id="newline"),
    pytest.param("\x1b[31mred", r"control character '\x1b' at index 0", id="escape"),
    pytest.param("nul\x00", r"control character '\x00' at index 3", id="nul"),
    pytest.param("del\x7f", r"control character '\x7f' at index 3", id="delete"),
    pytest.param("c1\x85", r"control character '\x85' at index 2", id="next line"),
    pytest.param("c1\x9f", r"control character '\x9f' at index 2", id="last C1"),
]

RULE = "expected 1 to 200 characters and no control characters"


@pytest.mark.parametrize(
    "text", ["x", "x" * MAX_LABEL_CHARS, "Zoë 🚀 agent", "a b\u00a0c", "agent:a1"]
)
def test_a_label_is_one_to_200_printable_characters(text: str) -> None:
    assert label_problem(text) is None
    assert AgentRecord.model_validate(agent_row(name=text, sessionKey=text)).name == text


@pytest.mark.parametrize(("text", "problem"), BAD_LABELS)
@pytest.mark.parametrize("field", ["name", "sessionKey"])
def test_a_bad_label_is_rejected_saying_why(field: str, text: str, problem: str) -> None:
    message = label_problem(text)
    assert message is not None
    assert problem in message
    assert message.endswith(RULE)
    rejected = parse_agent_row(agent_row(**{field: text}), 0)
    assert not isinstance(rejected, AgentRecord)
    assert rejected.problem == f"{field}: {message}"


def test_a_label_must_be_a_string() -> None:
    rejected = parse_agent_row(agent_row(name=7, sessionKey=b"k"), 0)
    assert not isinstance(rejected, AgentRecord)
    assert rejected.problem == (
        "name: input should be a valid string (got 7);"
        " sessionKey: input should be a valid string (got b'k')"
    )


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LocalBackend]:
    opened = LocalBackend(tmp_path / "local.db")
    yield opened
    opened.close()


@pytest.mark.parametrize(("text", "problem"), BAD_LABELS)
def test_the_embedded_backend_refuses_to_create_a_bad_label(
    backend: LocalBackend, text: str, problem: str
) -> None:
    with pytest.raises(InvalidAgent, match=r"^name: ") as raised:
        backend.create_agent(text, 5000)
    assert problem in str(raised.value)
    with pytest.raises(InvalidAgent, match=r"^session_key: "):
        backend.create_agent("scout", 5000, session_key=text)
    assert backend.list_agents_with_presence() == []


def test_the_embedded_backend_refuses_to_update_to_a_bad_label(backend: LocalBackend) -> None:
    agent = backend.create_agent("scout", 5000)
    with pytest.raises(InvalidAgent, match=r"^name: 'a\\nb' is invalid"):
        backend.update_agent(agent.id, name="a\nb")
    too_long = r"^session_key: 'x{80}'\.{3}\(1000 chars\) is invalid \(too long\)"
    with pytest.raises(InvalidAgent, match=too_long):
        backend.update_agent(agent.id, session_key="x" * 1000)
    (row,) = backend.list_agents_with_presence()
    assert (row["name"], row["sessionKey"]) == ("scout", agent.session_key)


@pytest.mark.parametrize(
    ("args", "argument"),
    [
        (["add", "VALUE"], "NAME"),
        (["add", "scout", "--session-key", "VALUE"], "--session-key"),
        (["update", "some-id", "--name", "VALUE"], "--name"),
        (["update", "some-id", "--session-key", "VALUE"], "--session-key"),
    ],
)
@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("scout\nlevel=ERROR", r"'scout\nlevel=ERROR' is invalid (control character '\n'"),
        ("\x1b[2J", r"'\x1b[2J' is invalid (control character '\x1b' at index 0)"),
        ("y" * 100_000, f"'{'y' * 80}'...(100000 chars) is invalid (too long)"),
    ],
)
def test_the_cli_refuses_a_bad_label_in_one_line(
    tmp_path: Path, args: list[str], argument: str, value: str, shown: str
) -> None:
    argv = [value if a == "VALUE" else a for a in args]
    result = cli(base_env(tmp_path / "local.db"), "agents", *argv)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"agent-runtime agents {args[0]}: argument {argument}: {shown}")
    assert line.endswith(RULE)
    assert len(line) < 300
    assert result.stdout == ""
