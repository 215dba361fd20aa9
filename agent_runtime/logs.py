"""Logging: text or JSON lines, agent context on every line from an agent's thread.

An AgentActor binds its id, name and session key to its own thread (`bind_agent`); a
filter copies them onto every record logged from that thread, whoever logs it (the
actor, pykka, a library). Agents listed in AGENT_DEBUG log at DEBUG while the rest of
the process keeps LOG_LEVEL.
"""

import logging
import sys
import threading
from collections.abc import Iterable

from pythonjsonlogger.json import JsonFormatter

_context = threading.local()

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"


def bind_agent(agent_id: str, name: str, session_key: str) -> None:
    """Tag every later log line from the calling thread with this agent."""
    _context.agent = {"id": agent_id, "name": name, "sessionKey": session_key}


def unbind_agent() -> None:
    """Stop tagging the calling thread's log lines."""
    _context.agent = None


class AgentContextFilter(logging.Filter):
    """Adds `record.agent` from the thread's binding and applies per-agent debug."""

    def __init__(self, level: int, debug_agent_ids: Iterable[str]) -> None:
        super().__init__()
        self.level = level
        self.debug_agent_ids = frozenset(debug_agent_ids)

    def filter(self, record: logging.LogRecord) -> bool:
        agent = getattr(_context, "agent", None)
        if agent is not None:
            record.agent = agent
        if record.levelno >= self.level:
            return True
        return agent is not None and agent["id"] in self.debug_agent_ids


class TextFormatter(logging.Formatter):
    """One line per record; agent lines end with `agent=ID name=NAME session=KEY`."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        agent = getattr(record, "agent", None)
        if agent is None:
            return line
        suffix = f" agent={agent['id']} name={agent['name']} session={agent['sessionKey']}"
        head, sep, rest = line.partition("\n")  # keep tracebacks after the tagged first line
        return head + suffix + sep + rest


def configure(level: str, log_format: str, debug_agent_ids: Iterable[str] = ()) -> None:
    """Send every log record to stderr, as text or as one JSON object per line.

    Replaces any handler already on the root logger, so it is safe to call twice.
    """
    threshold = logging.getLevelName(level)
    debug_ids = frozenset(debug_agent_ids)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(AgentContextFilter(threshold, debug_ids))
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{threadName}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "threadName": "thread"},
            )
        )
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug_ids else threshold)
    # httpx logs every request at INFO: with Convex that is several lines a second of
    # routine calls. Failures reach the log through the runtime's own messages.
    logging.getLogger("httpx").setLevel(max(threshold, logging.WARNING))
