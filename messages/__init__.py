"""The values the actors exchange: frozen pydantic v2 models, one module per subject."""

from messages.agent import AgentList, AgentRecord, AgentRejection, UpdateAgent, parse_agent_rows
from messages.heartbeat import AgentsStopped, Heartbeat
from messages.status import HeartbeatStatus, RunningAgent, SyncStatus
from messages.supervision import ChildFailed
from messages.sync import FeedStatus, GetRunningAgents, RequestSync, RunSync, SignalChanged
from messages.timers import TimerFired
from messages.workers import Deregister, MembershipStatus, RegistrationChanged

__all__ = [
    "AgentList",
    "AgentRecord",
    "AgentRejection",
    "AgentsStopped",
    "ChildFailed",
    "Deregister",
    "FeedStatus",
    "GetRunningAgents",
    "Heartbeat",
    "HeartbeatStatus",
    "MembershipStatus",
    "RegistrationChanged",
    "RequestSync",
    "RunSync",
    "RunningAgent",
    "SignalChanged",
    "SyncStatus",
    "TimerFired",
    "UpdateAgent",
    "parse_agent_rows",
]
