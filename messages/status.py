"""Snapshots the actors publish for /health; the HTTP thread only ever reads them."""

from collections.abc import Mapping
from typing import Literal

from messages._base import Message
from messages.agent import AgentRecord


class RunningAgent(Message):
    """One agent this worker runs, with how often its actor was restarted."""

    record: AgentRecord
    restarts: int
    restarting: bool
    """Crashed, waiting for its restart."""


class SyncStatus(Message):
    """The SyncActor's view: last sync, cumulative diff counts and the agents it runs."""

    running: bool
    last_sync_at: int | None
    last_error: str | None
    added_count: int
    removed_count: int
    updated_count: int
    worker_id: str
    registered: bool
    """False while this worker is not registered (it then runs no agents)."""
    live_workers: tuple[str, ...]
    restarting: int
    """Agents that crashed and wait for their restart."""
    """The live workers the last sync divided the agents over, sorted, this one included."""
    agents: tuple[RunningAgent, ...]
    feed: Literal["subscribed", "polling", "down"] = "polling"
    """How agent changes reach this worker: pushed by the change feed, or by polling the
    change signal (no feed, or the feed is down), or not at all (the polls fail too)."""
    feed_error: str | None = None
    """Why the change feed last went down."""


class HeartbeatStatus(Message):
    """The HeartbeatWriter's view: what the backend last accepted for each agent."""

    last_written_at: Mapping[str, int]
    last_flush_at: int | None
    last_error: str | None
    pending: int
    pending_offline: int
    online: int
    """Agents whose last written beat is younger than 3 of their intervals."""
