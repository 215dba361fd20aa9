"""Messages to the HeartbeatWriter."""

from messages._base import Message


class Heartbeat(Message):
    """AgentActor -> HeartbeatWriter: this agent is alive at `at_ms` (epoch ms)."""

    agent_id: str
    at_ms: int


class AgentsStopped(Message):
    """SyncActor -> HeartbeatWriter: these agents stopped; mark them offline."""

    agent_ids: tuple[str, ...]


class FlushHeartbeats(Message):
    """Ask the HeartbeatWriter to write what is pending now (reply: None)."""
