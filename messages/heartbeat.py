"""Messages to the HeartbeatWriter."""

from typing import Annotated

from pydantic import Field

from messages._base import Message
from messages.agent import EpochMs


class Heartbeat(Message):
    """AgentActor -> HeartbeatWriter: this agent is alive at `at_ms` (epoch ms)."""

    agent_id: Annotated[str, Field(strict=True)]
    at_ms: EpochMs
    interval_ms: int | None = None
    """The agent's heartbeat interval: the writer writes the beat within half of it (and
    within FLUSH_INTERVAL_S), so presence, which expires after 3 intervals, stays fresh
    for short intervals too. None: within FLUSH_INTERVAL_S."""


class AgentsStopped(Message):
    """SyncActor -> HeartbeatWriter: these agents stopped here; write their last beats,
    forget them, and mark the `offline` ones offline (the others moved to another
    worker, or this worker lost its registration)."""

    agent_ids: tuple[str, ...]
    offline: tuple[str, ...]
