"""The `agent-runtime` command: `run` the worker, `doctor`, administer `agents`, look at
and use the `whatsapp` account (its lease, outbox and inbox; `send`).

Exit status: 0 ok; 1 runtime failure (backend unreachable, agent not found, fatal
crash); 2 bad arguments or configuration, with one line on stderr saying which value is
wrong and what is expected. A closed standard output (`agents list | head -1`) ends
the command quietly.
"""

import argparse
import json
import os
import re
import secrets
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NoReturn, get_args

from agent_runtime import __version__
from agent_runtime.app import doctor
from agent_runtime.app.backends import open_backend
from agent_runtime.app.config import Settings, load_settings
from agent_runtime.app.roles import ROLE_NAMES
from agent_runtime.clock import now_ms
from agent_runtime.errors import BackendError, BackendUnavailable, ConfigError, InvalidArgument
from backend.port import Backend
from messages import AgentRecord, parse_agent_rows
from messages.agent import MAX_HEARTBEAT_INTERVAL_MS
from messages.text import escape_controls, label_problem, shown
from messages.whatsapp import MAX_TEXT_CHARS, PHONE_NUMBER_PATTERN, OutboundStatus

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


def phone_number(text: str) -> str:
    """argparse type: an international number, 7 to 15 digits with an optional `+`."""
    if not re.fullmatch(PHONE_NUMBER_PATTERN, text):
        raise argparse.ArgumentTypeError(
            f"{shown(text)} is not a phone number: expected 7 to 15 digits, such as +15551234567"
        )
    return text


def message_text(text: str) -> str:
    """argparse type: a WhatsApp text, 1 to 4096 characters."""
    if not 0 < len(text) <= MAX_TEXT_CHARS:
        raise argparse.ArgumentTypeError(
            f"a text of {len(text)} characters: expected 1 to {MAX_TEXT_CHARS}"
        )
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

    whatsapp = commands.add_parser(
        "whatsapp", help="the lease, outbox and inbox of WHATSAPP_ACCOUNT_ID; send a message"
    )
    wa = whatsapp.add_subparsers(dest="action", required=True, metavar="ACTION")
    lease = wa.add_parser("lease", help="who holds the sending lease: owner, epoch, expiry")
    lease.add_argument("--json", action="store_true")
    send = wa.add_parser("send", help="queue a text message; prints only its id")
    send.add_argument("--to", type=phone_number, required=True, metavar="NUMBER")
    send.add_argument("--text", type=message_text, required=True, metavar="TEXT")
    outbox = wa.add_parser("outbox", help="outbound messages, oldest first")
    outbox.add_argument("--status", choices=get_args(OutboundStatus))
    outbox.add_argument("--json", action="store_true")
    inbox = wa.add_parser("inbox", help="stored inbound messages, oldest first")
    inbox.add_argument("--json", action="store_true")
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

    return _administer(args, settings)


def _administer(args: argparse.Namespace, settings: Settings) -> int:
    """An `agents` or `whatsapp` command on the backend the settings name."""
    try:
        backend = open_backend(settings)
        try:
            if args.command == "whatsapp":
                return _whatsapp(args, backend, settings.whatsapp_account_id)
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
        # One key per command: the adapter's retries after a lost answer cannot create a
        # second agent.
        key = f"cli-{secrets.token_hex(8)}"
        try:
            record = backend.create_agent(
                args.name, args.heartbeat_interval, args.session_key, idempotency_key=key
            )
        except BackendUnavailable as error:
            raise BackendUnavailable(
                f"{error}; the agent may have been created: `agent-runtime agents list` shows"
                " whether"
            ) from None
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


def _whatsapp(args: argparse.Namespace, backend: Backend, account_id: str) -> int:
    if args.action == "send":
        print(backend.enqueue_outbound(account_id, args.to, args.text))
        return EXIT_OK
    if args.action == "lease":
        lease = backend.get_lease(account_id)
        row = lease.model_dump(by_alias=True, exclude={"held"}) if lease is not None else None
        if args.json:
            print(json.dumps(row))
        elif row is None:
            print(f"no lease for {account_id} yet")
        else:
            live = "live" if row["expiresAt"] > now_ms() else "expired"
            print(
                f"{account_id}: owner {row['ownerId']}, epoch {row['epoch']},"
                f" expires {_time(row['expiresAt'])} ({live})"
            )
        return EXIT_OK
    columns: tuple[str, ...]
    if args.action == "outbox":
        rows = backend.list_outbox(account_id, args.status)
        columns = ("id", "to", "status", "attempts", "wamid", "lastError")
    else:
        rows = backend.list_inbox(account_id)
        columns = ("providerId", "from", "receivedAt", "text")
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_rows(columns, [[_cell(row[c]) for c in columns] for row in rows])
    return EXIT_OK


def _cell(value: object) -> str:
    return "-" if value is None else escape_controls(str(value))


def _time(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat(timespec="seconds")


def _print_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    table = [[h.upper() for h in header], *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _print_table(agents: Sequence[AgentRecord]) -> None:
    header = ("id", "name", "status", "interval_ms", "last_heartbeat", "session_key")
    rows = [
        [
            a.id,
            a.name,
            a.status,
            str(a.heartbeat_interval_ms),
            _time(a.last_heartbeat_at) if a.last_heartbeat_at is not None else "-",
            a.session_key,
        ]
        for a in agents
    ]
    _print_rows(header, rows)
