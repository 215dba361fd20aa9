"""The `agent-runtime` command: `run` the worker, or administer `agents`.

Exit status: 0 ok; 1 runtime failure (backend unreachable, agent not found, fatal
crash); 2 bad arguments or configuration, with one line on stderr saying which value is
wrong and what is expected. A closed standard output (`agents list | head -1`) ends
the command quietly.
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NoReturn

from agent_runtime import __version__
from agent_runtime.app import doctor
from agent_runtime.app.backends import open_backend
from agent_runtime.app.config import load_settings
from agent_runtime.app.roles import ROLE_NAMES
from agent_runtime.errors import BackendError, ConfigError, InvalidArgument
from backend.port import Backend
from messages import AgentRecord, parse_agent_rows
from messages.agent import MAX_HEARTBEAT_INTERVAL_MS
from messages.text import escape_controls, label_problem, shown

DEFAULT_HEARTBEAT_INTERVAL_MS = 30_000

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def interval_ms(text: str) -> int:
    """argparse type: a heartbeat interval in whole milliseconds, 1 to 24 h."""
    if not text.strip().isdigit() or not 0 < int(text) <= MAX_HEARTBEAT_INTERVAL_MS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a heartbeat interval: expected whole milliseconds from 1 to"
            f" {MAX_HEARTBEAT_INTERVAL_MS} (24 h)"
        )
    return int(text)


def non_empty(text: str) -> str:
    """argparse type: a non-empty string."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{shown(text)} is invalid: expected a non-empty value")
    return text


def label(text: str) -> str:
    """argparse type: an agent's name or session key, as `label_problem` accepts it, and
    not blank."""
    problem = label_problem(non_empty(text))
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, `PROG: MESSAGE`, exit status 2.

    argparse prints the usage first, making two lines; and it quotes some arguments raw
    (`unrecognized arguments: ...`), so control characters are escaped here.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {escape_controls(message)}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full command line, with every subcommand."""
    parser = _Parser(prog="agent-runtime", description="Keep an AI-agent fleet online.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the worker until SIGTERM")
    run.add_argument("--role", choices=ROLE_NAMES, help="overrides AGENT_ROLE")

    commands.add_parser(
        "doctor", help="check the configuration for this role and reach the backend"
    )

    agents = commands.add_parser("agents", help="list, add, update or remove agents")
    actions = agents.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="show every agent")
    listing.add_argument("--json", action="store_true", help="a JSON array of agent records")
    add = actions.add_parser("add", help="create an agent; prints only its id")
    add.add_argument("name", type=label, metavar="NAME")
    add.add_argument(
        "--heartbeat-interval",
        type=interval_ms,
        default=DEFAULT_HEARTBEAT_INTERVAL_MS,
        metavar="MS",
        help=f"default {DEFAULT_HEARTBEAT_INTERVAL_MS}",
    )
    add.add_argument("--session-key", type=label, metavar="KEY", help="default agent:ID")
    update = actions.add_parser("update", help="change an agent's fields")
    update.add_argument("id", type=non_empty)
    update.add_argument("--name", type=label)
    update.add_argument("--heartbeat-interval", type=interval_ms, metavar="MS")
    update.add_argument("--session-key", type=label, metavar="KEY")
    remove = actions.add_parser("remove", help="delete an agent")
    remove.add_argument("id", type=non_empty)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `agent-runtime` console script; returns the exit status.

    If standard output is closed early (a pipe into `head`), the command stops without
    a traceback and returns 1; the shell reports the reader's status for the pipeline.
    """
    try:
        status = _command(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except BrokenPipeError:
        # As the Python docs recommend: later flushes (at exit) must not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    return status


def _command(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(AGENT_ROLE=getattr(args, "role", None))
    except ConfigError as error:
        print(f"agent-runtime: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "run":
        from agent_runtime.app.process import run  # noqa: PLC0415 - keep `agents` commands light

        return run(settings)
    if args.command == "doctor":
        return doctor.run(settings)
    if args.action == "update" and not (args.name or args.heartbeat_interval or args.session_key):
        parser.error(
            "agents update: give at least one of --name, --heartbeat-interval, --session-key"
        )

    try:
        backend = open_backend(settings)
        try:
            return _agents(args, backend)
        finally:
            backend.close()
    except InvalidArgument as error:
        print(f"agent-runtime: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BackendError as error:
        print(f"agent-runtime: {error}", file=sys.stderr)
        return EXIT_FAILURE


def _agents(args: argparse.Namespace, backend: Backend) -> int:
    if args.action == "list":
        listed = parse_agent_rows(backend.list_agents_with_presence())
        for rejected in listed.rejected:
            print(
                f"agent-runtime: skipping invalid agent {rejected.label}: {rejected.problem}",
                file=sys.stderr,
            )
        if args.json:
            print(json.dumps([a.model_dump(by_alias=True) for a in listed.agents], indent=2))
        else:
            _print_table(listed.agents)
    elif args.action == "add":
        record = backend.create_agent(args.name, args.heartbeat_interval, args.session_key)
        print(record.id)
    elif args.action == "update":
        backend.update_agent(
            args.id,
            name=args.name,
            heartbeat_interval_ms=args.heartbeat_interval,
            session_key=args.session_key,
        )
    elif args.action == "remove":
        backend.remove_agent(args.id)
    return EXIT_OK


def _print_table(agents: Sequence[AgentRecord]) -> None:
    rows = [("ID", "NAME", "STATUS", "INTERVAL_MS", "LAST_HEARTBEAT", "SESSION_KEY")]
    for a in agents:
        last = (
            datetime.fromtimestamp(a.last_heartbeat_at / 1000, tz=UTC).isoformat(timespec="seconds")
            if a.last_heartbeat_at is not None
            else "-"
        )
        rows.append((a.id, a.name, a.status, str(a.heartbeat_interval_ms), last, a.session_key))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
