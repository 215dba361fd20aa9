"""Keyed timers on the one Scheduler thread: replace, cancel, stale ticks, fixed rate."""

import queue
from typing import Any

import pykka
import pytest

from actors.scheduler import Scheduler, Timers
from agent_runtime.clock import monotonic_s
from messages import TimerFired
from tests.conftest import stays_false, wait_for


class TimerOwner(pykka.ThreadingActor):
    """Owns timers as told, and reports each tick it accepts or drops to `events`."""

    def __init__(self, scheduler: Scheduler, events: "queue.Queue[tuple[str, str, float]]") -> None:
        super().__init__()
        self.scheduler = scheduler
        self.events = events
        self.timers: Timers | None = None

    def on_start(self) -> None:
        self.timers = Timers(self.scheduler, self.actor_ref)

    def on_receive(self, message: Any) -> Any:
        assert self.timers is not None
        if isinstance(message, TimerFired):
            verdict = "accepted" if self.timers.accept(message) else "dropped"
            self.events.put((verdict, message.key, monotonic_s()))
            return None
        verb, *args = message
        if verb == "replace_after_delivery":
            return self._replace_after_delivery(*args)
        return getattr(self.timers, verb)(*args)

    def _replace_after_delivery(self, key: str, replace: bool) -> None:
        """Arm a 0 s timer, wait until its tick sits in this mailbox, then replace or
        cancel the timer before the tick is handled."""
        assert self.timers is not None
        self.timers.start_single(key, 0.0)
        wait_for(lambda: self.scheduler.armed_count(self.actor_ref) == 0, what="delivery")
        if replace:
            self.timers.start_single(key, 60.0)
        else:
            self.timers.cancel(key)


class Recorder:
    """Collects the owner's reports."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, str, float]] = queue.Queue()
        self.seen: list[tuple[str, str, float]] = []

    def _drain(self) -> None:
        while True:
            try:
                self.seen.append(self.events.get_nowait())
            except queue.Empty:
                return

    def times(self, key: str, verdict: str = "accepted") -> list[float]:
        self._drain()
        return [t for v, k, t in self.seen if k == key and v == verdict]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def owner(scheduler: Scheduler, recorder: Recorder) -> pykka.ActorRef[TimerOwner]:
    return TimerOwner.start(scheduler, recorder.events)


def test_single_timer_fires_once_after_its_delay(owner: Any, recorder: Recorder) -> None:
    started = monotonic_s()
    owner.ask(("start_single", "once", 0.05))
    wait_for(lambda: recorder.times("once"), what="the tick")
    assert recorder.times("once")[0] - started >= 0.05
    assert stays_false(lambda: len(recorder.times("once")) > 1, 0.15)
    assert owner.ask(("is_active", "once")) is False


def test_starting_a_timer_with_the_same_key_replaces_it(
    owner: Any, recorder: Recorder, scheduler: Scheduler
) -> None:
    owner.ask(("start_single", "k", 0.05))
    owner.ask(("start_single", "k", 0.3))  # replaces the 50 ms one
    assert scheduler.armed_count(owner) == 1
    assert stays_false(lambda: recorder.times("k"), 0.2)
    wait_for(lambda: recorder.times("k"), what="the replacing tick")
    assert len(recorder.times("k")) == 1


def test_cancelled_timer_never_fires(owner: Any, recorder: Recorder, scheduler: Scheduler) -> None:
    owner.ask(("start_periodic", "p", 0.02))
    wait_for(lambda: recorder.times("p"), what="a first tick")
    owner.ask(("cancel", "p"))
    count = len(recorder.times("p"))
    assert stays_false(lambda: len(recorder.times("p")) > count, 0.15)
    assert scheduler.armed_count(owner) == 0


@pytest.mark.parametrize("replace", [True, False], ids=["replaced", "cancelled"])
def test_tick_already_in_the_mailbox_is_dropped(
    owner: Any, recorder: Recorder, replace: bool
) -> None:
    owner.ask(("replace_after_delivery", "k", replace))
    wait_for(lambda: recorder.times("k", "dropped"), what="the stale tick to be handled")
    assert recorder.times("k") == []
    assert owner.ask(("is_active", "k")) is replace


def test_periodic_timer_keeps_a_fixed_rate(owner: Any, recorder: Recorder) -> None:
    owner.ask(("start_periodic", "p", 0.05, 0.0))
    wait_for(lambda: len(recorder.times("p")) >= 8, what="8 ticks")
    times = recorder.times("p")[:8]
    assert times[-1] - times[0] == pytest.approx(7 * 0.05, abs=0.03)


def test_all_timers_of_an_actor_die_with_it(owner: Any, scheduler: Scheduler) -> None:
    owner.ask(("start_periodic", "p", 0.02))
    owner.ask(("start_single", "s", 0.05))
    owner.ask(("cancel_all",))
    assert scheduler.armed_count(owner) == 0
    owner.ask(("start_periodic", "q", 0.02))
    owner.stop()
    wait_for(lambda: scheduler.armed_count(owner) == 0, what="the dead owner's timer to go")


def test_periodic_interval_must_be_positive(owner: Any) -> None:
    with pytest.raises(ValueError, match="interval must be > 0"):
        owner.ask(("start_periodic", "p", 0.0))
