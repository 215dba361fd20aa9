"""The values the actors exchange: frozen pydantic v2 models, one module per subject."""

from messages.agent import AgentList, AgentRecord, AgentRejection, UpdateAgent, parse_agent_rows
from messages.heartbeat import AgentsStopped, Heartbeat
from messages.status import HeartbeatStatus, RunningAgent, SyncStatus
from messages.supervision import ChildFailed
from messages.sync import AgentsChanged, GetRunningAgents, RequestSync, RunSync
from messages.timers import TimerFired

__all__ = [
    "AgentList",
    "AgentRecord",
    "AgentRejection",
    "AgentsChanged",
    "AgentsStopped",
    "ChildFailed",
    "GetRunningAgents",
    "Heartbeat",
    "HeartbeatStatus",
    "RequestSync",
    "RunSync",
    "RunningAgent",
    "SyncStatus",
    "TimerFired",
    "UpdateAgent",
    "parse_agent_rows",
]
