"""Messages about this worker's membership of the fleet."""

from messages._base import Message


class RegistrationChanged(Message):
    """Membership -> SyncActor: this worker is (or no longer is) registered under its
    id. Unregistered, it runs no agents: another process may hold the id."""

    registered: bool


class MembershipStatus(Message):
    """The Membership actor's view, for /health."""

    worker_id: str
    registered: bool
    last_renewed_at: int | None
    last_error: str | None


class Deregister(Message):
    """Runtime -> Membership, at a graceful stop: leave the fleet now (ask; the reply
    comes once the backend call is done)."""
