"""Pooled actors: many pykka actors sharing a few threads (Akka's dispatcher).

A `ThreadingActor` costs an OS thread: at 10,000 agents that is seconds of thread
start-up and hundreds of MB of stacks on a 2-core worker. A `PooledActor` is a pykka
actor with a custom runtime instead: its mailbox, on the first message, puts the actor
on its `Dispatcher`'s ready queue, and one of the dispatcher's threads handles up to
THROUGHPUT messages, then hands the actor back. An actor's messages are still handled
one at a time and in order, with pykka's semantics (replies, `on_failure` for failed
`tell`s, `on_start`/`on_stop`); while a thread runs an actor it carries the actor's
name (`PooledActor.enter()`), so logs and thread dumps name the actor.

A pooled actor must not block: work that waits (network, model calls) goes elsewhere
and comes back as a message, or it holds up every actor on the dispatcher.
"""

import collections
import logging
import queue
import sys
import threading
from typing import Any

import pykka
from pykka import ActorRegistry
from pykka._envelope import Envelope

from agent_runtime.clock import monotonic_s

logger = logging.getLogger(__name__)

THROUGHPUT = 10
"""Messages one actor may handle before its thread moves on to the next ready actor."""


class Dispatcher:
    """A fixed pool of daemon threads named `{name}-N` running ready PooledActors."""

    def __init__(self, name: str, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"dispatcher {name!r}: needs at least 1 thread, got {threads}")
        self.name = name
        self._ready: queue.SimpleQueue[PooledActor | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, actor: "PooledActor") -> None:
        """Queue `actor` to run its mailbox on one of the threads."""
        self._ready.put(actor)

    def shutdown(self, timeout_s: float = 2.0) -> None:
        """Let the threads finish what they are running, then end them, waiting up to
        `timeout_s` in all. Actors still alive get no more turns: stop them first."""
        for _ in self._threads:
            self._ready.put(None)
        deadline_s = monotonic_s() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline_s - monotonic_s()))

    def _work(self) -> None:
        own_name = threading.current_thread().name
        while (actor := self._ready.get()) is not None:
            try:
                actor._run_turn()
            finally:
                threading.current_thread().name = own_name


class _Mailbox:
    """pykka's ActorInbox for a PooledActor. The first message into an idle mailbox
    submits the actor to its dispatcher; the actor stays submitted until it is empty."""

    __slots__ = ("_actor", "_lock", "_messages", "_scheduled")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: collections.deque[Envelope[Any]] = collections.deque()
        self._scheduled = False
        self._actor: PooledActor | None = None

    def bind(self, actor: "PooledActor") -> None:
        self._actor = actor

    def put(self, envelope: Envelope[Any], /) -> None:
        with self._lock:
            self._messages.append(envelope)
            if self._scheduled:
                return
            self._scheduled = True
        assert self._actor is not None
        self._actor.dispatcher.submit(self._actor)

    def get(self) -> Envelope[Any]:
        with self._lock:
            return self._messages.popleft()

    def empty(self) -> bool:
        with self._lock:
            return not self._messages

    def take(self) -> Envelope[Any] | None:
        """The next message, or None if there is none."""
        with self._lock:
            return self._messages.popleft() if self._messages else None

    def schedule_start(self) -> None:
        """Mark the actor as submitted for its start-up turn."""
        with self._lock:
            self._scheduled = True

    def release(self) -> bool:
        """End a turn: True if more messages wait (the actor must be submitted again)."""
        with self._lock:
            if self._messages:
                return True
            self._scheduled = False
            return False


class PooledActor(pykka.Actor):
    """A pykka actor that runs on a `Dispatcher` instead of its own thread.

    Pass the dispatcher to `__init__`. Override `enter()` and `leave()` to label the
    thread (and the log context) while it runs this actor.
    """

    actor_inbox: _Mailbox

    def __init__(self, dispatcher: Dispatcher) -> None:
        super().__init__()
        self.dispatcher = dispatcher
        self.actor_inbox.bind(self)
        self._setup_done = False

    @staticmethod
    def _create_actor_inbox() -> _Mailbox:
        return _Mailbox()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return pykka.ThreadingFuture()

    def _start_actor_loop(self) -> None:
        self.actor_inbox.schedule_start()
        self.dispatcher.submit(self)

    def enter(self) -> None:
        """Called in the dispatcher's thread before each turn of this actor."""
        threading.current_thread().name = type(self).__name__

    def leave(self) -> None:
        """Called in the dispatcher's thread after each turn of this actor."""

    def _run_turn(self) -> None:
        self.enter()
        try:
            self._handle_turn()
        finally:
            self.leave()

    def _handle_turn(self) -> None:
        if not self._setup_done:
            self._setup_done = True
            self._actor_loop_setup()
        for _ in range(THROUGHPUT):
            if self.actor_stopped.is_set():
                break
            envelope = self.actor_inbox.take()
            if envelope is None:
                break
            self._handle_envelope(envelope)
        if self.actor_stopped.is_set():
            self._actor_loop_teardown()
            return
        if self.actor_inbox.release():
            self.dispatcher.submit(self)

    def _handle_envelope(self, envelope: Envelope[Any]) -> None:
        # pykka's own receive-loop body (ThreadingActor), for one message.
        try:
            response = self._handle_receive(envelope.message)
            if envelope.reply_to is not None:
                envelope.reply_to.set(response)
        except Exception:
            if envelope.reply_to is not None:
                logger.info("Exception returned from %s to caller:", self, exc_info=True)
                envelope.reply_to.set_exception()
            else:
                self._handle_failure(*sys.exc_info())
                try:
                    self.on_failure(*sys.exc_info())
                except Exception:
                    self._handle_failure(*sys.exc_info())
        except BaseException:
            logger.debug("%r in %s. Stopping all actors.", sys.exc_info()[1], self)
            self._stop()
            ActorRegistry.stop_all()
