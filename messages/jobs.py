"""Job values: what an agent is asked to do, as claimed, and the conversation it
continues. Semantics in contract/README.md ("Jobs")."""

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from messages._base import Message
from messages.agent import EpochMs
from messages.text import Label
from messages.whatsapp import PHONE_NUMBER_PATTERN

MAX_INPUT_CHARS = 32_768
"""The longest job input (and result) the backend stores."""

JobStatus = Literal["queued", "running", "done", "failed", "dead"]

JobKind = Literal["task", "wakeup"]
"""A wake-up job (an agent's periodic turn) is queued only when its agent has none
pending; a task always is."""


class WhatsAppConversation(Message):
    """A WhatsApp contact of an account: the job's result is sent back to it."""

    channel: Literal["whatsapp"]
    account_id: Label
    contact: Annotated[str, Field(pattern=PHONE_NUMBER_PATTERN)]

    @property
    def key(self) -> str:
        """The conversation's key in the backend."""
        return f"whatsapp:{self.account_id}:{self.contact}"


class DirectConversation(Message):
    """A conversation named by its caller (the CLI's `--conversation ID`): it keeps its
    turns, and nothing is sent anywhere."""

    channel: Literal["direct"]
    id: Label

    @property
    def key(self) -> str:
        """The conversation's key in the backend."""
        return f"direct:{self.id}"


Conversation = Annotated[WhatsAppConversation | DirectConversation, Field(discriminator="channel")]
"""Where a job's turns belong."""


class Usage(Message):
    """Model tokens a job used."""

    input_tokens: Annotated[int, Field(ge=0)]
    output_tokens: Annotated[int, Field(ge=0)]


class ClaimedJob(Message):
    """A job claimed for running, under `claim_token`."""

    id: Annotated[str, Field(min_length=1)]
    agent_id: Annotated[str, Field(min_length=1)]
    input: Annotated[str, Field(min_length=1, max_length=MAX_INPUT_CHARS)]
    conversation: Conversation | None
    attempts: Annotated[int, Field(ge=0)]
    claim_token: Annotated[str, Field(min_length=1)]


class Turn(Message):
    """One entry of a conversation's history."""

    role: Literal["user", "assistant"]
    content: str
    job_id: str
    at: EpochMs


CONVERSATION: TypeAdapter[WhatsAppConversation | DirectConversation] = TypeAdapter(Conversation)
"""Validates a conversation given as a mapping (`CONVERSATION.validate_python(value)`)."""


# --- between the JobDispatcher, the AgentActors and the job threads --------------------


class AgentReady(Message):
    """AgentActor -> JobDispatcher: this agent runs here now; hand its jobs to `ref`."""

    agent_id: str
    ref: Any
    """The AgentActor's `pykka.ActorRef`."""


class AgentGone(Message):
    """AgentActor -> JobDispatcher: this agent's actor stopped (moved, removed, crashed
    or the worker stops); its running job, if any, is abandoned and its claim given back."""

    agent_id: str
    ref: Any
    """The stopped actor's ref: a newer actor of the same agent is not forgotten."""


class RunJob(Message):
    """JobDispatcher -> AgentActor: run this claimed job in your session."""

    job: ClaimedJob
    control: Any
    """The job's `actors.jobs.runner.JobControl`: the dispatcher extends its lock deadline
    as it renews the claim, and cancels it when the claim is lost."""


JobOutcome = Literal["done", "retry", "failed", "dead", "abandoned"]
"""How a run ended: `retry` is queued again (with backoff), `abandoned` left the job to
whoever holds its claim now (it completed nothing)."""


class JobEnded(Message):
    """Job thread -> AgentActor and JobDispatcher: the run is over."""

    job_id: str
    agent_id: str
    outcome: JobOutcome
    error: str | None = None
    retry_at_ms: int | None = None
    """When a `retry` job can run again."""


class RunClaim(Message):
    """JobDispatcher -> itself: run the one queued claim round (requests coalesce)."""


class WakeUp(Message):
    """AgentActor -> JobDispatcher: queue this agent's wake-up job (if none is pending)."""

    agent_id: str
    prompt: str


class JobsStatus(Message):
    """The JobDispatcher's view, for /health."""

    concurrency: int
    running: int
    completed: int
    retried: int
    failed: int
    dead: int
    abandoned: int
    last_error: str | None
