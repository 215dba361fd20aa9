"""Messages to the SyncActor."""

from messages._base import Message


class RequestSync(Message):
    """Ask for a sync soon. Requests that arrive while one is queued are coalesced."""

    reason: str


class AgentsChanged(Message):
    """Change feed -> Runtime: the backend says agents changed; sync now."""


class RunSync(Message):
    """SyncActor -> itself: run the one queued sync now."""


class GetRunningAgents(Message):
    """Ask the SyncActor for the ids of the agents it runs (reply: tuple[str, ...])."""
