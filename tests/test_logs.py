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
