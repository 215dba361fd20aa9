"""Logging: text or JSON lines, agent context on every line from an agent's thread.

An AgentActor binds its id, name and session key to its own thread (`bind_agent`); a
filter copies them onto every record logged from that thread, whoever logs it (the
actor, pykka, a library). Agents listed in AGENT_DEBUG log at DEBUG while the rest of
the process keeps LOG_LEVEL.

A record is one line of bounded length, whatever it carries: a second filter cuts any
argument longer than MAX_LOGGED_VALUE_CHARS and, for text lines, escapes control
characters in the message, the agent tag and the thread name (JSON escapes them itself).
Only a traceback or stack spans lines, after the first.
"""

import contextlib
import logging
import sys
import threading
from collections.abc import Iterable, Mapping

from pythonjsonlogger.json import JsonFormatter

from messages.text import cut, escape_controls

_context = threading.local()

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"

MAX_LOGGED_VALUE_CHARS = 1000
"""A longer argument of a log call is cut (`...(N chars)` marks it): a 1 MB value,
a backend body or a rejected row, must not make 1 MB log lines. A message logged without
arguments is the caller's own text (pykka's thread dump) and is kept whole."""


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


class OneLineFilter(logging.Filter):
    """Bounds each record; with `escape` (text lines) also keeps it on one line, which
    JSON lines are by their encoding.

    Replaces the record's message by its %-formatted text with each argument longer than
    MAX_LOGGED_VALUE_CHARS cut, and cuts the agent tag and the thread name alike; with
    `escape`, writes the control characters of all three as escapes (`\\n`, `\\x1b`).
    A call whose arguments do not fit its format is left as it is, for the handler to
    report as logging always does.
    """

    def __init__(self, escape: bool) -> None:
        super().__init__()
        self.escape = escape

    def filter(self, record: logging.LogRecord) -> bool:
        # A dict message is JSON fields, not text. A call that does not fit its format
        # raises here: the formatter meets the same error and reports it, never the caller.
        if not isinstance(record.msg, Mapping):
            with contextlib.suppress(Exception):
                record.msg, record.args = self._shown(_cut_message(record)), None
        agent = getattr(record, "agent", None)
        if agent is not None:
            record.agent = {key: self._shown(_cut(value)) for key, value in agent.items()}
        if isinstance(record.threadName, str):
            record.threadName = self._shown(_cut(record.threadName))
        return True

    def _shown(self, text: str) -> str:
        return escape_controls(text) if self.escape else text


def _cut_message(record: logging.LogRecord) -> str:
    if not record.args:
        return str(record.msg)
    args: tuple[object, ...] | dict[object, object]
    if isinstance(record.args, Mapping):
        args = {key: _cut_value(value) for key, value in record.args.items()}
    else:
        args = tuple(_cut_value(value) for value in record.args)
    return str(record.msg) % args


def _cut_value(value: object) -> object:
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, int | float) or value is None:
        return value  # short, and `%d` needs a number
    return _Cut(value)


class _Cut:
    """An argument as `%s` and `%r` would show it, cut."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return _cut(self.value)

    def __repr__(self) -> str:
        return cut(repr(self.value), MAX_LOGGED_VALUE_CHARS)


def _cut(value: object) -> str:
    return cut(str(value), MAX_LOGGED_VALUE_CHARS)


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
    handler.addFilter(OneLineFilter(escape=log_format != "json"))
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
