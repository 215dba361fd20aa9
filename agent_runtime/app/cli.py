"""The `agent-runtime` command: `run` the worker, `doctor`, administer `agents`, queue and
look at `jobs`, look at and use the `whatsapp` account (its lease, outbox and inbox;
`send`).

Exit status: 0 ok; 1 runtime failure (backend unreachable, agent or job not found, fatal
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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar, get_args

from pydantic import ValidationError

from agent_runtime import __version__
from agent_runtime.app import doctor
from agent_runtime.app.backends import open_backend
from agent_runtime.app.config import Settings, load_settings
from agent_runtime.app.roles import ROLE_NAMES
from agent_runtime.clock import now_ms
from agent_runtime.errors import BackendError, BackendUnavailable, ConfigError, InvalidArgument
from backend.port import Backend
from messages import AgentRecord, parse_agent_rows
from messages.agent import (
    MAX_HEARTBEAT_INTERVAL_MS,
    MAX_INSTRUCTIONS_CHARS,
    MAX_PROMPT_CHARS,
    MIN_WAKEUP_INTERVAL_MS,
)
from messages.jobs import CONVERSATION, MAX_INPUT_CHARS, DirectConversation, JobStatus
from messages.text import cut, escape_controls, label_problem, shown
from messages.whatsapp import MAX_TEXT_CHARS, PHONE_NUMBER_PATTERN, OutboundStatus

DEFAULT_HEARTBEAT_INTERVAL_MS = 30_000

JOB_INPUT_SHOWN_CHARS = 40
"""How much of a job's input `jobs list` shows (`jobs show` shows all of it)."""

JOB_SETTINGS = ("instructions", "model", "wakeup_prompt", "wakeup_interval_ms")
"""What an agent's jobs run with: `agents add` and `agents update` options, named as the
backend port's arguments."""

UPDATABLE = ("name", "heartbeat_interval_ms", "session_key", *JOB_SETTINGS)
"""The `agents update` options, named as `Backend.update_agent`'s arguments."""

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

T = TypeVar("T")


def _milliseconds(what: str, minimum: int, *, zero_clears: bool = False) -> Callable[[str], int]:
    """An argparse type: whole milliseconds from `minimum` to 24 h, or 0 with
    `zero_clears` (an update that clears the field)."""
    expected = f"whole milliseconds from {minimum} to {MAX_HEARTBEAT_INTERVAL_MS} (24 h)"
    if zero_clears:
        expected = f"0 (clears it) or {expected}"

    def parse(text: str) -> int:
        value = int(text) if text.strip().isdecimal() else -1
        if not (minimum <= value <= MAX_HEARTBEAT_INTERVAL_MS or (zero_clears and value == 0)):
            raise argparse.ArgumentTypeError(f"{shown(text)} is not {what}: expected {expected}")
        return value

    return parse


interval_ms = _milliseconds("a heartbeat interval", 1)
"""argparse type: a heartbeat interval, 1 ms to 24 h."""
wakeup_interval_ms = _milliseconds("a wake-up interval", MIN_WAKEUP_INTERVAL_MS)
"""argparse type: a wake-up interval, 1 s to 24 h."""
wakeup_interval_or_zero = _milliseconds(
    "a wake-up interval", MIN_WAKEUP_INTERVAL_MS, zero_clears=True
)
"""argparse type: a wake-up interval, or 0 to clear it (`agents update`)."""


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


def direct_conversation(text: str) -> DirectConversation:
    """argparse type: a conversation named by a label, with no channel to reply on."""
    return DirectConversation(channel="direct", id=label(text))


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
        dest="heartbeat_interval_ms",
        type=interval_ms,
        default=DEFAULT_HEARTBEAT_INTERVAL_MS,
        metavar="MS",
        help=f"default {DEFAULT_HEARTBEAT_INTERVAL_MS}",
    )
    add.add_argument("--session-key", type=label, metavar="KEY", help="default agent:ID")
    _add_job_settings(add, clearing=False)
    update = actions.add_parser(
        "update", help="change an agent's fields; '' (or 0 for --wakeup-interval) clears one"
    )
    update.add_argument("id", type=non_empty)
    update.add_argument("--name", type=label)
    update.add_argument(
        "--heartbeat-interval", dest="heartbeat_interval_ms", type=interval_ms, metavar="MS"
    )
    update.add_argument("--session-key", type=label, metavar="KEY")
    _add_job_settings(update, clearing=True)
    remove = actions.add_parser("remove", help="delete an agent (its pending jobs fail)")
    remove.add_argument("id", type=non_empty)

    jobs = commands.add_parser("jobs", help="queue a job for an agent; show or list jobs")
    job_actions = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    enqueue = job_actions.add_parser("enqueue", help="queue a job; prints only its id")
    enqueue.add_argument("agent_id", type=non_empty, metavar="AGENT_ID")
    enqueue.add_argument(
        "--input",
        required=True,
        metavar="TEXT",
        help=f"what the agent is asked, 1 to {MAX_INPUT_CHARS} characters;"
        " - reads it from standard input (without its final newline)",
    )
    enqueue.add_argument(
        "--conversation",
        type=direct_conversation,
        metavar="ID",
        help="a conversation of your naming: the job continues its earlier turns",
    )
    show = job_actions.add_parser(
        "show", help="one job: status, attempts, result, error, usage, steps, times"
    )
    show.add_argument("id", type=non_empty)
    show.add_argument("--json", action="store_true", help="the job as the backend's row")
    job_list = job_actions.add_parser("list", help="jobs, oldest first (at most 1000)")
    job_list.add_argument("--agent", type=non_empty, metavar="ID")
    job_list.add_argument("--status", choices=get_args(JobStatus))
    job_list.add_argument("--json", action="store_true")

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


def _add_job_settings(parser: argparse.ArgumentParser, *, clearing: bool) -> None:
    """The options of `JOB_SETTINGS`; with `clearing` (update), '' or 0 clears a field."""
    clears = "; '' clears it" if clearing else ""
    parser.add_argument(
        "--instructions",
        metavar="TEXT",
        help=f"the system prompt of its jobs, up to {MAX_INSTRUCTIONS_CHARS} characters{clears}",
    )
    parser.add_argument(
        "--model", metavar="NAME", help=f"the model its jobs call (default: MODEL){clears}"
    )
    parser.add_argument(
        "--wakeup-prompt",
        metavar="TEXT",
        help=f"the input of a job queued every --wakeup-interval (the two go together), up to"
        f" {MAX_PROMPT_CHARS} characters{clears}",
    )
    parser.add_argument(
        "--wakeup-interval",
        dest="wakeup_interval_ms",
        type=wakeup_interval_or_zero if clearing else wakeup_interval_ms,
        metavar="MS",
        help=f"{MIN_WAKEUP_INTERVAL_MS} to {MAX_HEARTBEAT_INTERVAL_MS}"
        + ("; 0 clears it" if clearing else ""),
    )


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
    if (
        args.command == "agents"
        and args.action == "update"
        and all(getattr(args, field) is None for field in UPDATABLE)
    ):
        parser.error(
            "agents update: give at least one of --name, --heartbeat-interval, --session-key,"
            " --instructions, --model, --wakeup-prompt, --wakeup-interval"
        )

    return _administer(args, settings)


def _administer(args: argparse.Namespace, settings: Settings) -> int:
    """An `agents`, `jobs` or `whatsapp` command on the backend the settings name."""
    try:
        backend = open_backend(settings)
        try:
            if args.command == "whatsapp":
                return _whatsapp(args, backend, settings.whatsapp_account_id)
            if args.command == "jobs":
                return _jobs(args, backend)
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
        record = _once(
            lambda key: backend.create_agent(
                args.name,
                args.heartbeat_interval_ms,
                args.session_key,
                idempotency_key=key,
                **{field: getattr(args, field) for field in JOB_SETTINGS},
            ),
            "the agent may have been created: `agent-runtime agents list` shows whether",
        )
        print(record.id)
    elif args.action == "update":
        backend.update_agent(args.id, **{field: getattr(args, field) for field in UPDATABLE})
    elif args.action == "remove":
        backend.remove_agent(args.id)
    return EXIT_OK


def _jobs(args: argparse.Namespace, backend: Backend) -> int:
    if args.action == "enqueue":
        text = sys.stdin.read().removesuffix("\n") if args.input == "-" else args.input
        print(
            _once(
                lambda key: backend.enqueue_job(
                    args.agent_id, text, args.conversation, idempotency_key=key
                ),
                "the job may have been queued: `agent-runtime jobs list --agent"
                f" {args.agent_id}` shows whether",
            )
        )
    elif args.action == "show":
        job = backend.get_job(args.id)
        if args.json:
            print(json.dumps(job, indent=2))
        else:
            _print_job(job)
    else:
        rows = backend.list_jobs(args.agent, args.status)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            columns = ("id", "agent", "kind", "status", "attempts", "created", "input")
            _print_rows(
                columns,
                [
                    [
                        _cell(row["id"]),
                        _cell(row["agentId"]),
                        _cell(row["kind"]),
                        _cell(row["status"]),
                        _cell(row["attempts"]),
                        _time(row["createdAt"]),
                        _cell(cut(row["input"], JOB_INPUT_SHOWN_CHARS)),
                    ]
                    for row in rows
                ],
            )
    return EXIT_OK


def _once(create: Callable[[str], T], hint: str) -> T:
    """`create(idempotency_key)` with a key of its own, so the adapter's retries after a
    lost answer cannot create a second one; if the backend stays unreachable, the error
    ends with `hint`: how to see whether it was created all the same."""
    try:
        return create(f"cli-{secrets.token_hex(8)}")
    except BackendUnavailable as error:
        raise BackendUnavailable(f"{error}; {hint}") from None


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
    """A value as a table shows it: `-` for None, a whole float (JSON numbers from
    Convex) as an integer, control characters escaped."""
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return escape_controls(str(value))


def _time(epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return "-"
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat(timespec="seconds")


def _conversation(value: Any) -> str | None:
    """A job row's conversation as its key (`direct:ID`, `whatsapp:ACCOUNT:CONTACT`), or
    as JSON if it is not a valid conversation."""
    if value is None:
        return None
    try:
        return CONVERSATION.validate_python(value).key
    except ValidationError:
        return json.dumps(value)


def _print_job(job: dict[str, Any]) -> None:
    """The job, one `field: value` line each; texts on one line, control characters
    escaped (`--json` has them as they are)."""
    usage = job["usage"]
    fields = {
        "id": _cell(job["id"]),
        "agent": _cell(job["agentId"]),
        "kind": _cell(job["kind"]),
        "conversation": _cell(_conversation(job["conversation"])),
        "status": _cell(job["status"]),
        "attempts": _cell(job["attempts"]),
        "steps": _cell(job["steps"]),
        "usage": (
            f"{_cell(usage['inputTokens'])} tokens in, {_cell(usage['outputTokens'])} out"
            if usage is not None
            else "-"
        ),
        "worker": _cell(job["workerId"]),
        "created": _time(job["createdAt"]),
        "updated": _time(job["updatedAt"]),
        "not before": _time(job["notBefore"]),
        "locked until": _time(job["lockedUntil"]),
        "input": _cell(job["input"]),
        "result": _cell(job["result"]),
        "error": _cell(job["error"]),
    }
    width = max(len(name) for name in fields) + 1
    for name, value in fields.items():
        print(f"{name + ':':<{width}}  {value}")


def _print_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    table = [[h.upper() for h in header], *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _print_table(agents: Sequence[AgentRecord]) -> None:
    header = (
        "id",
        "name",
        "status",
        "interval_ms",
        "last_heartbeat",
        "session_key",
        "model",
        "wakeup_ms",
    )
    rows = [
        [
            a.id,
            a.name,
            a.status,
            str(a.heartbeat_interval_ms),
            _time(a.last_heartbeat_at),
            a.session_key,
            _cell(a.model),
            _cell(a.wakeup_interval_ms),
        ]
        for a in agents
    ]
    _print_rows(header, rows)
