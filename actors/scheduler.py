"""The Scheduler: one timer thread for the whole process, and each actor's `Timers`.

pykka has no timers. Following Akka's TimerScheduler, an actor owns its timers by key
(`Timers`), and the one Scheduler thread fires them all from a heap of deadlines:

- starting a timer with a key already in use replaces the old timer;
- a tick from a replaced or cancelled timer is ignored (each start gets a new
  generation, and the owner drops ticks whose generation is not current);
- all of an actor's timers die with it (`Timers.cancel_all()` in on_stop/on_failure,
  and the Scheduler drops timers whose owner is dead).

Periodic timers run at a fixed rate: a tick that is late does not push later ticks
back, and ticks missed entirely (process stalled) are skipped, not fired in a burst.
"""

import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

import pykka

from agent_runtime.clock import monotonic_s
from messages import TimerFired

logger = logging.getLogger(__name__)


class _Entry:
    """One armed timer in the heap. `cancelled` is the only field written by others."""

    __slots__ = ("cancelled", "due_s", "generation", "interval_s", "key", "seq", "target")

    def __init__(
        self,
        due_s: float,
        seq: int,
        target: pykka.ActorRef[Any],
        *,
        key: str,
        generation: int,
        interval_s: float | None,
    ) -> None:
        self.due_s = due_s
        self.seq = seq
        self.target = target
        self.key = key
        self.generation = generation
        self.interval_s = interval_s
        self.cancelled = False

    def __lt__(self, other: "_Entry") -> bool:
        return (self.due_s, self.seq) < (other.due_s, other.seq)


class Scheduler:
    """Fires every timer in the process from one thread named "Scheduler".

    `start()` starts the thread; `stop()` stops it and drops every timer. Delivering a
    tick is a `tell`, so a slow actor never delays another actor's ticks.
    """

    def __init__(self, clock: Callable[[], float] = monotonic_s) -> None:
        self._clock = clock
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._wakeup = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the timer thread. Timers armed before this fire once it runs."""
        with self._wakeup:
            self._running = True
        self._thread = threading.Thread(target=self._run, name="Scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the thread and forget every timer; blocks up to `timeout_s`."""
        with self._wakeup:
            self._running = False
            self._heap.clear()
            self._wakeup.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def arm(
        self,
        target: pykka.ActorRef[Any],
        key: str,
        generation: int,
        delay_s: float,
        interval_s: float | None = None,
    ) -> _Entry:
        """Send `TimerFired(key, generation)` to `target` after `delay_s`, then every
        `interval_s` if given. Returns the entry; set `entry.cancelled` to disarm it.

        Use `Timers`, not this, from an actor.
        """
        entry = _Entry(
            self._clock() + max(0.0, delay_s),
            next(self._seq),
            target,
            key=key,
            generation=generation,
            interval_s=interval_s,
        )
        with self._wakeup:
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:
                self._wakeup.notify()
        return entry

    def armed_count(self, target: pykka.ActorRef[Any] | None = None) -> int:
        """How many live (not cancelled) timers are armed, for `target` or in all."""
        with self._wakeup:
            return sum(
                1 for e in self._heap if not e.cancelled and (target is None or e.target is target)
            )

    def _run(self) -> None:
        while True:
            with self._wakeup:
                if not self._running:
                    return
                now = self._clock()
                due = self._pop_due(now)
                if not due:
                    timeout = self._heap[0].due_s - now if self._heap else None
                    self._wakeup.wait(timeout)
                    continue
            for entry in due:  # deliver outside the lock: arm() never waits on a tell
                self._deliver(entry)

    def _pop_due(self, now: float) -> list[_Entry]:
        due = []
        while self._heap and self._heap[0].due_s <= now:
            entry = heapq.heappop(self._heap)
            if entry.cancelled:
                continue
            due.append(entry)
        return due

    def _deliver(self, entry: _Entry) -> None:
        tick = TimerFired(key=entry.key, generation=entry.generation, due_s=entry.due_s)
        try:
            entry.target.tell(tick)
        except pykka.ActorDeadError:
            return  # the owner died: its timers die with it
        if entry.interval_s is None or entry.cancelled:
            return
        now = self._clock()
        missed = int((now - entry.due_s) // entry.interval_s)
        entry.due_s += entry.interval_s * (missed + 1)
        entry.seq = next(self._seq)
        with self._wakeup:
            if self._running:
                heapq.heappush(self._heap, entry)


class Timers:
    """One actor's keyed timers. Use only from the owning actor's thread.

    Create it in the actor's `on_start` with the actor's own ref. In `on_receive`,
    pass every `TimerFired` to `accept()` first and ignore the tick if it returns False.
    """

    def __init__(self, scheduler: Scheduler, owner: pykka.ActorRef[Any]) -> None:
        self._scheduler = scheduler
        self._owner = owner
        self._armed: dict[str, _Entry] = {}
        self._generations = itertools.count(1)

    def start_single(self, key: str, delay_s: float) -> None:
        """Fire once after `delay_s`, replacing any timer with this key."""
        self._start(key, delay_s, None)

    def start_periodic(
        self, key: str, interval_s: float, initial_delay_s: float | None = None
    ) -> None:
        """Fire every `interval_s`, first after `initial_delay_s` (default: one interval),
        replacing any timer with this key."""
        if interval_s <= 0:
            raise ValueError(f"timer {key!r}: interval must be > 0 s, got {interval_s}")
        self._start(key, interval_s if initial_delay_s is None else initial_delay_s, interval_s)

    def _start(self, key: str, delay_s: float, interval_s: float | None) -> None:
        self.cancel(key)
        self._armed[key] = self._scheduler.arm(
            self._owner, key, next(self._generations), delay_s, interval_s
        )

    def cancel(self, key: str) -> None:
        """Disarm the timer with this key, if any; a tick already sent is ignored."""
        entry = self._armed.pop(key, None)
        if entry is not None:
            entry.cancelled = True

    def cancel_all(self) -> None:
        """Disarm every timer of this actor."""
        for key in list(self._armed):
            self.cancel(key)

    def is_active(self, key: str) -> bool:
        """True while a timer with this key is armed."""
        return key in self._armed

    def accept(self, tick: TimerFired) -> bool:
        """True if `tick` comes from the current timer for its key; False for a tick
        from a replaced or cancelled timer (drop it). A single timer is done once
        accepted."""
        entry = self._armed.get(tick.key)
        if entry is None or entry.generation != tick.generation:
            return False
        if entry.interval_s is None:
            del self._armed[tick.key]
        return True
