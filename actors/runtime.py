"""Runtime: the root supervisor. Wires the role's actors and owns the shutdown order.

Children are started in order (HeartbeatWriter, then SyncActor) and stopped in reverse.
A crashed child is restarted with backoff together with its sibling (OTP's one_for_all:
the SyncActor and its agents hold the writer's ref, and a restart of both is cheap: the
writer flushes on stop, the new SyncActor re-spawns the agents in its first sync). Past
the restart intensity limit the Runtime gives up and calls `on_fatal`, and the process
exits non-zero so the platform restarts it.
"""

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from actors.agents.heartbeat_writer import HeartbeatWriter
from actors.agents.sync import SyncActor
from actors.dispatcher import Dispatcher
from actors.scheduler import Scheduler, Timers
from actors.supervision import DEFAULT_MAX_RESTARTS, DEFAULT_RESTART_PERIOD_S, RestartIntensity
from agent_runtime.backoff import DEFAULT_BACKOFF, Backoff
from agent_runtime.clock import monotonic_s
from agent_runtime.status import StatusBoard
from backend.port import Backend, Watch
from messages import AgentsChanged, ChildFailed, RequestSync, TimerFired

logger = logging.getLogger(__name__)

CHILD_STOP_TIMEOUT_S = 2.5
"""Per child; the SyncActor's stop includes stopping every agent (sync.STOP_TIMEOUT_S)."""

THREAD_STOP_TIMEOUT_S = 0.5
"""For the dispatcher's and the Scheduler's threads, once every actor has stopped."""

AGENT_DISPATCHER_THREADS = 4
"""Threads shared by every AgentActor; agents only tick and tell, so a few suffice."""

RESTART_TIMER = "restart"


@dataclass(frozen=True)
class RuntimeOptions:
    """What the Runtime needs to know about its role and timing."""

    runs_agents: bool
    sync_interval_s: float
    backoff: Backoff = DEFAULT_BACKOFF
    intensity: tuple[int, float] = (DEFAULT_MAX_RESTARTS, DEFAULT_RESTART_PERIOD_S)
    """(max restarts, within seconds) for core actors before the process gives up."""


class Runtime(pykka.ThreadingActor):
    """Root of the actor tree. Start it with `Runtime.start(...)`; stop it with
    `ref.stop()`, which stops every child in reverse start order, then the Scheduler."""

    use_daemon_thread = True

    def __init__(
        self,
        *,
        options: RuntimeOptions,
        backend: Backend,
        status_board: StatusBoard,
        on_fatal: Callable[[str], None],
    ) -> None:
        super().__init__()
        self._options = options
        self._backend = backend
        self._board = status_board
        self._on_fatal = on_fatal
        self._scheduler = Scheduler()
        self._timers = Timers(self._scheduler, self.actor_ref)
        self._dispatcher: Dispatcher | None = None
        self._watch: Watch | None = None
        self._intensity = RestartIntensity(*options.intensity)
        self._consecutive_failures = 0
        self._last_start_s = 0.0
        self._restart_cause: str | None = None
        """The child whose crash the pending restart answers, if one is pending."""
        self.writer: pykka.ActorRef[HeartbeatWriter] | None = None
        self.sync: pykka.ActorRef[SyncActor] | None = None

    def on_start(self) -> None:
        threading.current_thread().name = "Runtime"
        self._scheduler.start()
        if self._options.runs_agents:
            self._dispatcher = Dispatcher("agents", AGENT_DISPATCHER_THREADS)
            self._watch = self._backend.watch_agents(self._agents_changed)
        self._start_children()

    def _agents_changed(self) -> None:
        # Called from the change feed's thread: hand over to the Runtime's own thread.
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(AgentsChanged())

    def _start_children(self) -> None:
        self._last_start_s = monotonic_s()
        if self._dispatcher is None:
            return
        self.writer = HeartbeatWriter.start(
            supervisor=self.actor_ref,
            backend=self._backend,
            scheduler=self._scheduler,
            status_board=self._board,
        )
        self.sync = SyncActor.start(
            supervisor=self.actor_ref,
            backend=self._backend,
            scheduler=self._scheduler,
            dispatcher=self._dispatcher,
            heartbeat_writer=self.writer,
            status_board=self._board,
            sync_interval_s=self._options.sync_interval_s,
            poll_change_signal=self._watch is None,
            backoff=self._options.backoff,
        )

    def _stop_children(self) -> None:
        for name in ("sync", "writer"):  # reverse start order
            ref = getattr(self, name)
            setattr(self, name, None)
            if ref is None:
                continue
            try:
                ref.stop(timeout=CHILD_STOP_TIMEOUT_S)
            except pykka.Timeout:
                logger.error("%s did not stop within %.1f s", ref, CHILD_STOP_TIMEOUT_S)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ChildFailed):
            self._child_failed(message)
        elif isinstance(message, AgentsChanged):
            if self.sync is not None:
                with contextlib.suppress(pykka.ActorDeadError):
                    self.sync.tell(RequestSync(reason="subscription"))
        elif isinstance(message, TimerFired):
            if self._timers.accept(message) and message.key == RESTART_TIMER:
                self._restart()
        else:
            super().on_receive(message)

    def _restart(self) -> None:
        assert self._restart_cause is not None
        self._board.count_restart(self._restart_cause)  # counted when it really happens
        self._restart_cause = None
        self._start_children()

    def _child_failed(self, failure: ChildFailed) -> None:
        if self._restart_cause is not None:
            return  # the other child's failure already scheduled the restart
        now_s = monotonic_s()
        if not self._intensity.allow(now_s):
            max_restarts, period_s = self._options.intensity
            reason = (
                f"{failure.child_id} crashed more than {max_restarts} times in {period_s:.0f} s"
                f" (last: {failure.error}); giving up"
            )
            logger.critical("%s", reason)
            self._stop_children()
            self._on_fatal(reason)
            return
        if now_s - self._last_start_s >= self._options.backoff.reset_after_s:
            self._consecutive_failures = 0
        delay_s = self._options.backoff.delay_s(self._consecutive_failures)
        self._consecutive_failures += 1
        logger.error(
            "%s crashed: %s; restarting in %.2f s", failure.child_id, failure.error, delay_s
        )
        self._stop_children()  # one_for_all
        self._restart_cause = failure.child_id
        self._timers.start_single(RESTART_TIMER, delay_s)

    def on_stop(self) -> None:
        self._timers.cancel_all()
        self._stop_children()
        self._stop_threads()

    def _stop_threads(self) -> None:
        # Each is stopped even if an earlier one fails: change feed, agents, then timers.
        with contextlib.ExitStack() as stops:
            stops.callback(self._scheduler.stop, THREAD_STOP_TIMEOUT_S)
            if self._dispatcher is not None:
                stops.callback(self._dispatcher.shutdown, THREAD_STOP_TIMEOUT_S)
            if self._watch is not None:
                stops.callback(self._watch.stop, THREAD_STOP_TIMEOUT_S)

    def on_failure(self, *_exc_info: Any) -> None:
        try:
            self._stop_children()
            self._stop_threads()
        finally:
            self._on_fatal("the runtime's root actor crashed")
