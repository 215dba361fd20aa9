"""The values the actors exchange: frozen pydantic v2 models, one module per subject."""

from messages.agent import AgentList, AgentRecord, AgentRejection, UpdateAgent, parse_agent_rows
from messages.heartbeat import AgentsStopped, Heartbeat
from messages.status import HeartbeatStatus, RunningAgent, SyncStatus
from messages.supervision import ChildFailed
from messages.sync import AgentsChanged, GetRunningAgents, RequestSync, RunSync
from messages.timers import TimerFired
from messages.workers import Deregister, MembershipStatus, RegistrationChanged

__all__ = [
    "AgentList",
    "AgentRecord",
    "AgentRejection",
    "AgentsChanged",
    "AgentsStopped",
    "ChildFailed",
    "Deregister",
    "GetRunningAgents",
    "Heartbeat",
    "HeartbeatStatus",
    "MembershipStatus",
    "RegistrationChanged",
    "RequestSync",
    "RunSync",
    "RunningAgent",
    "SyncStatus",
    "TimerFired",
    "UpdateAgent",
    "parse_agent_rows",
]
