"""Messages to the SyncActor."""

from typing import Literal

from messages._base import Message


class RequestSync(Message):
    """Ask for a sync soon. Requests that arrive while one is queued are coalesced."""

    reason: str


class SignalChanged(Message):
    """Change feed -> Runtime: a change signal moved (`agents`: sync now; `jobs`: claim
    now)."""

    signal: Literal["agents", "jobs"]


class FeedStatus(Message):
    """Runtime -> SyncActor and JobDispatcher: the change feed is `subscribed` (changes
    are pushed: stop polling) or `down` (poll at the fallback interval), and why it last
    went down."""

    state: Literal["subscribed", "down"]
    last_error: str | None


class RunSync(Message):
    """SyncActor -> itself: run the one queued sync now."""


class GetRunningAgents(Message):
    """Ask the SyncActor for the ids of the agents it runs (reply: tuple[str, ...])."""
