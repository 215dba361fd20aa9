"""The agent record, validated at the backend boundary, and the messages about agents."""

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, model_validator

from messages._base import Message
from messages.text import CONTROL_CHARACTER, SHOWN_VALUE_CHARS, Label, shown

MAX_HEARTBEAT_INTERVAL_MS = 24 * 60 * 60 * 1000
"""An interval over 24 hours is a data error, not a schedule."""

PRESENCE_TTL_INTERVALS = 3
"""An agent is online while its last heartbeat is younger than this many of its intervals
(on both backends, in /health and /agents): a dead worker cannot mark its agents offline,
so presence expires."""

MAX_INSTRUCTIONS_CHARS = 16_384
"""The longest system prompt an agent record may carry."""

MAX_PROMPT_CHARS = 32_768
"""The longest wake-up prompt (a job's input: `messages.jobs.MAX_INPUT_CHARS`)."""

MIN_WAKEUP_INTERVAL_MS = 1_000

CONFIG_FIELDS = frozenset(
    {
        "id",
        "name",
        "session_key",
        "heartbeat_interval_ms",
        "instructions",
        "model",
        "wakeup_prompt",
        "wakeup_interval_ms",
        "updated_at",
    }
)
"""The fields a sync compares; presence (status, last_heartbeat_at) changes on every beat."""


def _whole_number(value: Any) -> Any:
    # JSON backends (Convex) send numbers as floats; strings and bools are data errors.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a whole number, got {shown(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"expected a whole number, got {shown(value)}")
        return int(value)
    return value


WholeNumber = Annotated[int, BeforeValidator(_whole_number)]
EpochMs = Annotated[int, BeforeValidator(_whole_number), Field(ge=0)]
HeartbeatIntervalMs = Annotated[
    int, BeforeValidator(_whole_number), Field(gt=0, le=MAX_HEARTBEAT_INTERVAL_MS)
]
WakeupIntervalMs = Annotated[
    int,
    BeforeValidator(_whole_number),
    Field(ge=MIN_WAKEUP_INTERVAL_MS, le=MAX_HEARTBEAT_INTERVAL_MS),
]


class AgentRecord(Message):
    """One agent as the backend describes it.

    Configuration (name, session key, interval; what its jobs run with: instructions,
    model, and the wake-up turn) is set by the operator; presence (status, last
    heartbeat) is written by the runtime.
    """

    id: Annotated[str, Field(min_length=1, strict=True)]
    name: Label
    session_key: Label
    heartbeat_interval_ms: HeartbeatIntervalMs
    instructions: Annotated[str, Field(min_length=1, max_length=MAX_INSTRUCTIONS_CHARS)] | None = (
        None
    )
    """The system prompt of its jobs."""
    model: Label | None = None
    """The model its jobs call (None: the worker's MODEL)."""
    wakeup_prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)] | None = None
    """The input of the job it is given every `wakeup_interval_ms`."""
    wakeup_interval_ms: WakeupIntervalMs | None = None
    status: Literal["online", "offline"] = "offline"
    last_heartbeat_at: EpochMs | None = None
    updated_at: EpochMs

    @model_validator(mode="after")
    def _wakeup_pair(self) -> "AgentRecord":
        if (self.wakeup_prompt is None) != (self.wakeup_interval_ms is None):
            raise ValueError("wakeupPrompt and wakeupIntervalMs go together")
        return self

    def same_config(self, other: "AgentRecord") -> bool:
        """True when nothing but presence differs between the two records."""
        return all(getattr(self, f) == getattr(other, f) for f in CONFIG_FIELDS)


class AgentRejection(Message):
    """A backend row that is not a valid agent, and why."""

    label: str
    """How to name the row in a log line: its id if it has one, else its name or position
    (quoted by `shown` unless it is short and printable)."""
    agent_id: str | None
    problem: str


class AgentList(Message):
    """The result of validating the backend's agent list row by row."""

    agents: tuple[AgentRecord, ...]
    rejected: tuple[AgentRejection, ...]


def describe_validation_error(error: ValidationError) -> str:
    """The errors in one line, `field: what is wrong` joined by `; `; a bad value is
    quoted by `shown` (cut to SHOWN_VALUE_CHARS, control characters escaped)."""
    parts = []
    for item in error.errors(include_url=False):
        field = ".".join(str(p) for p in item["loc"]) or "record"
        if item["type"] == "missing":
            parts.append(f"{field}: missing")
        elif item["type"] == "value_error":
            parts.append(f"{field}: {item['msg'].removeprefix('Value error, ')}")
        else:
            parts.append(f"{field}: {item['msg'].lower()} (got {shown(item['input'])})")
    return "; ".join(parts)


def parse_agent_row(row: Any, position: int) -> AgentRecord | AgentRejection:
    """Validate one backend row (the `position`-th of its list); never raises for bad data.

    A rejection is labelled by the row's id, else its name, else its position, and says
    in one line what is wrong.
    """
    try:
        return AgentRecord.model_validate(row)
    except ValidationError as error:
        raw_id = row.get("id") if isinstance(row, Mapping) else None
        agent_id = raw_id if isinstance(raw_id, str) and raw_id else None
        name = row.get("name") if isinstance(row, Mapping) else None
        if agent_id:
            plain = len(agent_id) <= SHOWN_VALUE_CHARS and not CONTROL_CHARACTER.search(agent_id)
            label = agent_id if plain else shown(agent_id)
        else:
            label = f"name={shown(name)}" if name else f"row #{position}"
        return AgentRejection(
            label=label, agent_id=agent_id, problem=describe_validation_error(error)
        )


def parse_agent_rows(rows: Iterable[Any]) -> AgentList:
    """Validate each row on its own: a bad row is rejected, the rest are kept."""
    agents: list[AgentRecord] = []
    rejected: list[AgentRejection] = []
    for position, row in enumerate(rows):
        result = parse_agent_row(row, position)
        if isinstance(result, AgentRecord):
            agents.append(result)
        else:
            rejected.append(result)
    return AgentList(agents=tuple(agents), rejected=tuple(rejected))


class UpdateAgent(Message):
    """SyncActor -> AgentActor: the backend now describes this agent differently."""

    record: AgentRecord
