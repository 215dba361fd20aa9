"""Runtime: the root supervisor. Wires the role's actors and owns the shutdown order.

Children are started in order (HeartbeatWriter, JobDispatcher, SyncActor, Membership,
LeaseActor, as the role has them) and stopped in reverse, after the Membership has deregistered this
worker (so the other workers take its agents while it stops them), all within one stop
deadline; the LeaseActor's stop drains its sender and releases the lease. A crashed
child is restarted with backoff together with its siblings (OTP's one_for_all: the
SyncActor and its agents hold the writer's ref, and a restart of all is cheap: the
writer flushes on stop, the new SyncActor re-spawns the agents in its first sync, the new
LeaseActor renews the same owner's lease). Past the restart intensity limit the Runtime
gives up and calls `on_fatal`, and the process exits non-zero so the platform restarts it.
"""

import contextlib
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from actors.agents.heartbeat_writer import HeartbeatWriter
from actors.agents.membership import Membership
from actors.agents.sync import SyncActor
from actors.dispatcher import Dispatcher
from actors.jobs.dispatcher import CLAIM_INTERVAL_S, JobDispatcher
from actors.jobs.models import ModelProvider
from actors.jobs.runner import AgentJobs, JobOptions, JobRunner
from actors.scheduler import Scheduler, Timers
from actors.supervision import DEFAULT_MAX_RESTARTS, DEFAULT_RESTART_PERIOD_S, RestartIntensity
from actors.whatsapp.lease import LeaseActor
from actors.whatsapp.sender import SenderOptions, WhatsAppActor
from actors.whatsapp.transport import Transport
from agent_runtime.backoff import DEFAULT_BACKOFF, Backoff
from agent_runtime.clock import monotonic_s
from agent_runtime.status import StatusBoard
from agent_runtime.tools import ToolRegistry
from backend.port import Backend, ChangeSignal, FeedState, Watch
from messages import ChildFailed, Deregister, FeedStatus, RequestSync, SignalChanged, TimerFired
from messages.whatsapp import LeaseHeld

logger = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT_S = 3.4
"""For the whole of `on_stop`'s children (deregistering, stopping every agent, the last
presence writes); what has not finished by then is abandoned and logged."""

THREAD_STOP_TIMEOUT_S = 0.5
"""For the dispatcher's and the Scheduler's threads, once every actor has stopped."""

AGENT_DISPATCHER_THREADS = 4
"""Threads shared by every AgentActor; agents only tick and tell, so a few suffice."""

RESTART_TIMER = "restart"


@dataclass(frozen=True)
class WhatsAppOptions:
    """What the LeaseActor and its sender need."""

    account_id: str
    lease_ttl_ms: int
    sender: SenderOptions
    transport: Transport


@dataclass(frozen=True)
class JobsOptions:
    """How the agents' jobs run: at most `concurrency` at once (0: none claimed)."""

    concurrency: int
    options: JobOptions
    provider: ModelProvider
    tools: ToolRegistry


@dataclass(frozen=True)
class RuntimeOptions:
    """What the Runtime needs to know about its role and timing."""

    runs_agents: bool
    sync_interval_s: float
    worker_id: str
    worker_heartbeat_s: float
    worker_ttl_ms: int
    whatsapp: WhatsAppOptions | None = None
    """The lease and sender of one WhatsApp account, on the roles that send."""
    jobs: JobsOptions | None = None
    """The agents' jobs, on the roles that run agents (None: agents run no jobs)."""
    fallback_poll_s: float = 5.0
    """How often the change signals are polled while the backend's change feed is down
    (AGENT_FALLBACK_POLL_MS)."""
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S
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
        self._job_runner: JobRunner | None = None
        self._watch: Watch | None = None
        self._feed: FeedStatus | None = None
        """The change feed's last state, for children started after it was reported."""
        self._intensity = RestartIntensity(*options.intensity)
        self._consecutive_failures = 0
        self._last_start_s = 0.0
        self._restart_cause: str | None = None
        """The child whose crash the pending restart answers, if one is pending."""
        self._instance_id = secrets.token_hex(8)
        """This process's registration, kept across restarts of the Membership."""
        self.writer: pykka.ActorRef[HeartbeatWriter] | None = None
        self.jobs: pykka.ActorRef[JobDispatcher] | None = None
        self.sync: pykka.ActorRef[SyncActor] | None = None
        self.membership: pykka.ActorRef[Membership] | None = None
        self.lease: pykka.ActorRef[LeaseActor] | None = None

    def on_start(self) -> None:
        threading.current_thread().name = "Runtime"
        self._scheduler.start()
        if self._options.runs_agents:
            self._dispatcher = Dispatcher("agents", AGENT_DISPATCHER_THREADS)
            self._watch = self._backend.watch_changes(self._signal_changed, self._feed_state)
            if self._options.jobs is not None:
                jobs = self._options.jobs
                self._job_runner = JobRunner(
                    self._backend,
                    jobs.provider,
                    jobs.tools,
                    jobs.options,
                    threads=jobs.concurrency,
                )
        self._start_children()

    # Called from the change feed's thread: hand over to the Runtime's own thread.

    def _signal_changed(self, signal: ChangeSignal) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(SignalChanged(signal=signal))

    def _feed_state(self, state: FeedState, last_error: str | None) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(FeedStatus(state=state, last_error=last_error))

    def _start_children(self) -> None:
        self._last_start_s = monotonic_s()
        if self._dispatcher is not None:
            self._start_agents(self._dispatcher)
        if self._options.whatsapp is not None:
            self._start_whatsapp(self._options.whatsapp)

    def _start_agents(self, dispatcher: Dispatcher) -> None:
        self.writer = HeartbeatWriter.start(
            supervisor=self.actor_ref,
            backend=self._backend,
            scheduler=self._scheduler,
            status_board=self._board,
        )
        agent_jobs: AgentJobs | None = None
        if self._job_runner is not None:
            assert self._options.jobs is not None
            self.jobs = JobDispatcher.start(
                supervisor=self.actor_ref,
                backend=self._backend,
                scheduler=self._scheduler,
                status_board=self._board,
                worker_id=self._options.worker_id,
                options=self._options.jobs.options,
                concurrency=self._options.jobs.concurrency,
                # With a feed, the backend's own signal covers retries and expired locks.
                claim_interval_s=(
                    self._options.sync_interval_s if self._watch is not None else CLAIM_INTERVAL_S
                ),
                feed=self._watch is not None,
                fallback_poll_s=self._options.fallback_poll_s,
            )
            agent_jobs = AgentJobs(dispatcher=self.jobs, runner=self._job_runner)
        self.sync = SyncActor.start(
            supervisor=self.actor_ref,
            backend=self._backend,
            scheduler=self._scheduler,
            dispatcher=dispatcher,
            heartbeat_writer=self.writer,
            status_board=self._board,
            worker_id=self._options.worker_id,
            sync_interval_s=self._options.sync_interval_s,
            feed=self._watch is not None,
            fallback_poll_s=self._options.fallback_poll_s,
            backoff=self._options.backoff,
            jobs=agent_jobs,
        )
        if self._feed is not None:  # restarted children learn where the feed stands
            self._tell(self.sync, self._feed)
            self._tell(self.jobs, self._feed)
        self.membership = Membership.start(
            supervisor=self.actor_ref,
            backend=self._backend,
            scheduler=self._scheduler,
            status_board=self._board,
            sync=self.sync,
            worker_id=self._options.worker_id,
            instance_id=self._instance_id,
            heartbeat_s=self._options.worker_heartbeat_s,
            ttl_ms=self._options.worker_ttl_ms,
        )

    def _start_whatsapp(self, options: WhatsAppOptions) -> None:
        owner_id = f"{self._options.worker_id}/{self._instance_id}"  # unique per process

        def start_sender(
            lease: pykka.ActorRef[Any], held: LeaseHeld, sender_id: str
        ) -> pykka.ActorRef[Any]:
            return WhatsAppActor.start(
                supervisor=lease,
                backend=self._backend,
                scheduler=self._scheduler,
                status_board=self._board,
                transport=options.transport,
                account_id=options.account_id,
                owner_id=owner_id,
                held=held,
                options=options.sender,
                sender_id=sender_id,
            )

        self.lease = LeaseActor.start(
            supervisor=self.actor_ref,
            backend=self._backend,
            scheduler=self._scheduler,
            status_board=self._board,
            account_id=options.account_id,
            owner_id=owner_id,
            ttl_ms=options.lease_ttl_ms,
            start_sender=start_sender,
        )

    def _stop_children(self, deadline_s: float) -> None:
        """Stop the children in reverse start order, each within what is left until
        `deadline_s`; one that does not stop in time is abandoned (daemon threads)."""
        for name in ("lease", "membership", "sync", "jobs", "writer"):
            ref = getattr(self, name)
            setattr(self, name, None)
            if ref is None:
                continue
            try:
                ref.stop(timeout=max(0.0, deadline_s - monotonic_s()))
            except pykka.Timeout:
                logger.error("%s did not stop before the stop deadline; abandoned", ref)

    def _leave(self, deadline_s: float) -> None:
        if self.membership is None:
            return
        try:
            self.membership.ask(Deregister(), timeout=max(0.0, deadline_s - monotonic_s()))
        except pykka.Timeout:
            logger.error("deregistering did not finish before the stop deadline")
        except pykka.ActorDeadError:
            logger.warning("membership is gone; this worker's registration will expire")

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ChildFailed):
            self._child_failed(message)
        elif isinstance(message, SignalChanged):
            if message.signal == "agents":
                self._tell(self.sync, RequestSync(reason="subscription"))
            else:
                self._tell(self.jobs, message)
        elif isinstance(message, FeedStatus):
            self._feed = message
            self._tell(self.sync, message)
            self._tell(self.jobs, message)
        elif isinstance(message, TimerFired):
            if self._timers.accept(message) and message.key == RESTART_TIMER:
                self._restart()
        else:
            super().on_receive(message)

    @staticmethod
    def _tell(ref: pykka.ActorRef[Any] | None, message: Any) -> None:
        if ref is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(message)

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
            self._stop_children(monotonic_s() + self._options.stop_timeout_s)
            self._on_fatal(reason)
            return
        if now_s - self._last_start_s >= self._options.backoff.reset_after_s:
            self._consecutive_failures = 0
        delay_s = self._options.backoff.delay_s(self._consecutive_failures)
        self._consecutive_failures += 1
        logger.error(
            "%s crashed: %s; restarting in %.2f s", failure.child_id, failure.error, delay_s
        )
        self._stop_children(monotonic_s() + self._options.stop_timeout_s)  # one_for_all
        self._restart_cause = failure.child_id
        self._timers.start_single(RESTART_TIMER, delay_s)

    def on_stop(self) -> None:
        deadline_s = monotonic_s() + self._options.stop_timeout_s
        self._timers.cancel_all()
        self._leave(deadline_s)
        self._stop_children(deadline_s)
        self._stop_threads()

    def _stop_threads(self) -> None:
        # Each is stopped even if an earlier one fails: change feed, agents, then timers.
        with contextlib.ExitStack() as stops:
            stops.callback(self._scheduler.stop, THREAD_STOP_TIMEOUT_S)
            if self._job_runner is not None:
                stops.callback(self._job_runner.shutdown)
            if self._dispatcher is not None:
                stops.callback(self._dispatcher.shutdown, THREAD_STOP_TIMEOUT_S)
            if self._watch is not None:
                stops.callback(self._watch.stop, THREAD_STOP_TIMEOUT_S)

    def on_failure(self, *_exc_info: Any) -> None:
        try:
            self._stop_children(monotonic_s() + self._options.stop_timeout_s)
            self._stop_threads()
        finally:
            self._on_fatal("the runtime's root actor crashed")
