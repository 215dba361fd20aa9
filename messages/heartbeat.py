"""Messages to the HeartbeatWriter."""

from typing import Annotated

from pydantic import Field

from messages._base import Message
from messages.agent import EpochMs


class Heartbeat(Message):
    """AgentActor -> HeartbeatWriter: this agent is alive at `at_ms` (epoch ms)."""

    agent_id: Annotated[str, Field(strict=True)]
    at_ms: EpochMs


class AgentsStopped(Message):
    """SyncActor -> HeartbeatWriter: these agents stopped; mark them offline."""

    agent_ids: tuple[str, ...]
