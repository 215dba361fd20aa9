"""PooledActors: many pykka actors on a few threads, with pykka's semantics."""

import threading
from typing import Any

import pykka
import pytest

from actors.dispatcher import Dispatcher, PooledActor
from tests.conftest import wait_for


class Counter(PooledActor):
    """Appends what it is told to a shared log; answers asks; can be told to fail."""

    def __init__(self, dispatcher: Dispatcher, name: str, log: list[tuple[str, Any, str]]) -> None:
        super().__init__(dispatcher)
        self.name = name
        self.log = log
        self.events: list[str] = []

    def enter(self) -> None:
        threading.current_thread().name = f"counter-{self.name}"

    def on_start(self) -> None:
        self.events.append("start")

    def on_stop(self) -> None:
        self.events.append("stop")

    def on_failure(self, *exc_info: Any) -> None:
        self.log.append((self.name, "failed", threading.current_thread().name))

    def on_receive(self, message: Any) -> Any:
        if message == "fail":
            raise RuntimeError("told to fail")
        if message == "events":
            return list(self.events)
        self.log.append((self.name, message, threading.current_thread().name))
        return message


def test_many_actors_share_the_pool_threads_and_keep_message_order(dispatcher: Dispatcher) -> None:
    log: list[tuple[str, Any, str]] = []
    refs = [Counter.start(dispatcher, f"c{i}", log) for i in range(50)]
    for n in range(30):
        for ref in refs:
            ref.tell(n)
    wait_for(lambda: len(log) == 50 * 30, what="every message handled")
    for i in range(50):
        assert [m for name, m, _ in log if name == f"c{i}"] == list(range(30))
    threads_used = {t for _, _, t in log}
    assert threads_used <= {f"counter-c{i}" for i in range(50)}
    pool_threads = [
        t for t in threading.enumerate() if t.name.startswith(("test-agents-", "counter-"))
    ]
    assert len(pool_threads) == 2


def test_ask_replies_and_on_start_runs_first(dispatcher: Dispatcher) -> None:
    ref = Counter.start(dispatcher, "a", [])
    assert ref.ask("hello") == "hello"
    assert ref.ask("events") == ["start"]


def test_failed_tell_calls_on_failure_and_stops_the_actor(dispatcher: Dispatcher) -> None:
    log: list[tuple[str, Any, str]] = []
    ref = Counter.start(dispatcher, "f", log)
    ref.tell("fail")
    wait_for(lambda: not ref.is_alive(), what="the actor to stop")
    assert log == [("f", "failed", "counter-f")]
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("more")


def test_failed_ask_returns_the_error_and_the_actor_lives_on(dispatcher: Dispatcher) -> None:
    ref = Counter.start(dispatcher, "g", [])
    with pytest.raises(RuntimeError, match="told to fail"):
        ref.ask("fail")
    assert ref.ask("still here") == "still here"


def test_stop_runs_on_stop_and_fails_later_asks(dispatcher: Dispatcher) -> None:
    ref = Counter.start(dispatcher, "s", [])
    proxy_events = ref.ask("events")
    assert ref.stop(timeout=5) is True
    assert proxy_events == ["start"]
    assert not ref.is_alive()
    assert ref.stop(timeout=5) is False


def test_a_thread_running_one_actor_does_not_block_another(dispatcher: Dispatcher) -> None:
    release = threading.Event()

    class Blocker(PooledActor):
        def on_receive(self, message: Any) -> Any:
            release.wait(5)
            return "released"

    blocked = Blocker.start(dispatcher).ask("wait", block=False)
    assert Counter.start(dispatcher, "free", []).ask("ping", timeout=2) == "ping"
    release.set()
    assert blocked.get(timeout=5) == "released"


def test_dispatcher_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="needs at least 1 thread"):
        Dispatcher("empty", 0)


def test_on_start_that_raises_stops_the_actor_and_spares_the_pool(
    dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    class BadStart(PooledActor):
        def on_start(self) -> None:
            raise RuntimeError("cannot start")

        def on_receive(self, message: Any) -> Any:
            return message

    ref = BadStart.start(dispatcher)
    queued = ref.ask("queued before the failed start", block=False)
    with pytest.raises(pykka.ActorDeadError):
        queued.get(timeout=5)
    wait_for(lambda: not ref.is_alive(), what="the actor to stop")
    assert "cannot start" in caplog.text
    # Both pool threads are still there and serve the next actor.
    assert Counter.start(dispatcher, "after", []).ask("ping", timeout=2) == "ping"
    assert len([t for t in threading.enumerate() if t.name.startswith("test-agents-")]) == 2


def test_messages_queued_behind_a_stop_fail_instead_of_hanging(dispatcher: Dispatcher) -> None:
    release = threading.Event()
    handled: list[Any] = []

    class Slow(PooledActor):
        def on_receive(self, message: Any) -> Any:
            if message == "block":
                release.wait(5)
            handled.append(message)
            return message

    ref = Slow.start(dispatcher)
    ref.tell("block")
    before = ref.ask("before the stop", block=False)
    stopped = ref.stop(block=False)
    late = [ref.ask(n, block=False) for n in range(3 * 10)]  # more than one turn's THROUGHPUT
    release.set()
    assert before.get(timeout=5) == "before the stop"
    assert stopped.get(timeout=5) is True
    for future in late:
        with pytest.raises(pykka.ActorDeadError, match="stopped before handling"):
            future.get(timeout=5)
    assert handled == ["block", "before the stop"]
