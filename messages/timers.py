"""Timer ticks, delivered by the Scheduler to the actor that owns the timer."""

from messages._base import Message


class TimerFired(Message):
    """A timer came due.

    The owner's `Timers` drops a tick whose `generation` is no longer current
    (the timer was replaced or cancelled after the tick was sent).
    """

    key: str
    generation: int
    due_s: float
    """Monotonic time the tick was due; `now - due_s` is how late it was handled."""
