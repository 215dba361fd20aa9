"""Messages between a supervised actor and its supervisor."""

from messages._base import Message


class ChildFailed(Message):
    """A supervised actor crashed; its supervisor decides whether and when to restart it."""

    child_id: str
    error: str
