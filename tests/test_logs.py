"""Agent context on every line from an agent's thread; per-agent debug; JSON lines."""

import json
import logging
import threading
from collections.abc import Iterator

import pytest

from agent_runtime import logs


class Captured:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def getvalue(self) -> str:
        return self.capsys.readouterr().err


@pytest.fixture
def stream(capsys: pytest.CaptureFixture[str]) -> Iterator[Captured]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    yield Captured(capsys)
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def in_thread(name: str, agent: tuple[str, str, str] | None, fn: object) -> None:
    def run() -> None:
        if agent:
            logs.bind_agent(*agent)
        fn()  # type: ignore[operator]

    t = threading.Thread(target=run, name=name)
    t.start()
    t.join()


def test_text_lines_from_an_agent_thread_carry_its_context(stream: Captured) -> None:
    logs.configure("INFO", "text")
    in_thread(
        "agent-scout-a1", ("a1", "scout", "agent:a1"), lambda: logging.getLogger("lib").info("hi")
    )
    in_thread("Other", None, lambda: logging.getLogger("lib").info("plain"))
    first, second = stream.getvalue().splitlines()
    assert "[agent-scout-a1] lib: hi agent=a1 name=scout session=agent:a1" in first
    assert second.endswith("[Other] lib: plain")


def test_json_lines_are_objects_with_agent_fields(stream: Captured) -> None:
    logs.configure("INFO", "json")
    in_thread("agent-scout-a1", ("a1", "scout", "k"), lambda: logging.getLogger("x").warning("w"))
    record = json.loads(stream.getvalue())
    assert record["message"] == "w"
    assert record["level"] == "WARNING"
    assert record["thread"] == "agent-scout-a1"
    assert record["agent"] == {"id": "a1", "name": "scout", "sessionKey": "k"}
    assert "time" in record


def test_agent_debug_logs_debug_for_listed_agents_only(stream: Captured) -> None:
    logs.configure("INFO", "text", debug_agent_ids={"a1"})
    log = logging.getLogger("actors.agents.agent")
    in_thread("t1", ("a1", "one", "k1"), lambda: log.debug("beat one"))
    in_thread("t2", ("a2", "two", "k2"), lambda: log.debug("beat two"))
    in_thread("t3", None, lambda: log.debug("no agent"))
    text = stream.getvalue()
    assert "beat one" in text
    assert "beat two" not in text
    assert "no agent" not in text


def test_traceback_stays_after_the_tagged_first_line(stream: Captured) -> None:
    logs.configure("INFO", "text")

    def fail() -> None:
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("x").exception("crashed")

    in_thread("t", ("a1", "n", "k"), fail)
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("crashed agent=a1 name=n session=k")
    assert lines[-1] == "ValueError: bad"


def test_a_text_record_is_one_line_whatever_it_carries(stream: Captured) -> None:
    logs.configure("INFO", "text")
    agent = ("a1", "evil\nname", "k\x1b[2J")
    log = logging.getLogger("x")
    in_thread("agent-evil\nname", agent, lambda: log.warning("got %s", "two\nlines\x1b[31m"))
    in_thread("t", None, lambda: log.warning("%(a)s, %(b)r", {"a": "tab\there", "b": "nul\x00"}))
    in_thread("t", None, lambda: log.warning("pre-formatted \r\n\x85"))
    tagged, mapping, formatted = stream.getvalue().splitlines()
    assert "[agent-evil\\nname] x: got two\\nlines\\x1b[31m agent=a1" in tagged
    assert tagged.endswith("name=evil\\nname session=k\\x1b[2J")
    assert mapping.endswith("x: tab\\there, 'nul\\x00'")
    assert formatted.endswith("x: pre-formatted \\r\\n\\x85")


def test_json_record_is_one_line_by_its_own_escapes(stream: Captured) -> None:
    logs.configure("INFO", "json")
    in_thread("t", ("a1", "n\x1b", "k"), lambda: logging.getLogger("x").warning("a\nb %s", "\x85"))
    (line,) = stream.getvalue().splitlines()
    assert line.isprintable()
    record = json.loads(line)
    assert record["message"] == "a\nb \x85"
    assert record["agent"] == {"id": "a1", "name": "n\x1b", "sessionKey": "k"}


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_huge_argument_is_cut(stream: Captured, log_format: str) -> None:
    logs.configure("INFO", log_format)
    log = logging.getLogger("x")
    agent = ("a1", "n" * 5000, "k")
    in_thread("t", agent, lambda: log.warning("row %s: %r; %d", "x" * 1_048_576, ["y" * 5000], 7))
    (row,) = stream.getvalue().splitlines()
    assert len(row) < 3500
    assert "x" * 1000 + "...(1048576 chars): ['" + "y" * 998 + "...(5004 chars); 7" in row
    assert "n" * 1000 + "...(5000 chars)" in row


def test_the_traceback_follows_an_escaped_first_line(stream: Captured) -> None:
    logs.configure("INFO", "text")

    def fail() -> None:
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("x").exception("crashed on %s", "a\nb")

    in_thread("t", ("a1", "n", "k"), fail)
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("crashed on a\\nb agent=a1 name=n session=k")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: bad"


def test_a_call_that_does_not_fit_its_format_is_reported_not_raised(stream: Captured) -> None:
    logs.configure("INFO", "text")
    logging.getLogger("x").warning("%d items", "many")  # must not raise in the caller
    assert "--- Logging error ---" in stream.getvalue()
