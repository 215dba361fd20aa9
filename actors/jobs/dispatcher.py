"""JobDispatcher: claims the jobs of the agents this worker runs and hands each to its
AgentActor, which runs it in its session on the job pool (`actors.jobs.runner`).

Which agents: those whose AgentActor said `AgentReady` (the SyncActor starts exactly the
agents this worker owns) and has not said `AgentGone`. When: whenever the backend's jobs
signal moves (pushed by the change feed; without one, polled every
`Backend.signal_poll_s`; while the feed is down, every AGENT_FALLBACK_POLL_MS), when a run
ends (its agent may have a next job), when agents arrive, when a retry it scheduled falls
due, and every `claim_interval_s` as a safety net (a dead worker's expired locks, retries
of jobs another worker failed, where the signal does not cover them). Claims never
overlap (they run in this actor's thread).

How many: at most `concurrency` runs at once in the process (JOB_CONCURRENCY; 0 pauses
claiming), one per agent: an agent with a run in flight is left out of claims, and the
backend gives each agent (and each conversation) only its next job in queue order.

Claims are renewed every lock/4 while their runs go on; a claim found lost cancels its
run (`JobControl`), which stops at its next step and never completes the job. An agent
that stops here (moved to another worker, removed, crashed, or the worker stops) has its
run cancelled and its claim given back at once, so its next owner need not wait for the
lock to expire.
"""

import logging
from dataclasses import dataclass
from typing import Any

import pykka

from actors.jobs.runner import JobControl, JobOptions
from actors.scheduler import Scheduler, Timers
from actors.supervision import SupervisedActor
from agent_runtime import metrics
from agent_runtime.clock import monotonic_s, now_ms
from agent_runtime.errors import BackendError, Fenced
from agent_runtime.status import StatusBoard
from backend.port import Backend
from messages import FeedStatus, SignalChanged, TimerFired
from messages.jobs import (
    AgentGone,
    AgentReady,
    ClaimedJob,
    JobEnded,
    JobsStatus,
    RunClaim,
    RunJob,
    WakeUp,
)

logger = logging.getLogger(__name__)

CLAIM_INTERVAL_S = 2.0
"""The safety-net claim without a change feed (the embedded backend's signal does not
move when a retry falls due or a lock expires)."""

MAX_CLAIM_AGENTS = 1000
MAX_CLAIM_LIMIT = 100
"""The backend's bounds on one claim call (agent ids, jobs)."""

SIGNAL_TIMER = "signal"
CLAIM_TIMER = "claim"
RENEW_TIMER = "renew"
RETRY_TIMER = "retry"
STATUS_NAME = "jobs"


@dataclass
class _InFlight:
    job: ClaimedJob
    control: JobControl


class JobDispatcher(SupervisedActor):
    """Claims jobs for the agents running here and hands them to their AgentActors."""

    def __init__(
        self,
        *,
        supervisor: pykka.ActorRef[Any] | None,
        backend: Backend,
        scheduler: Scheduler,
        status_board: StatusBoard,
        worker_id: str,
        options: JobOptions,
        concurrency: int,
        claim_interval_s: float = CLAIM_INTERVAL_S,
        feed: bool = False,
        fallback_poll_s: float = 5.0,
    ) -> None:
        super().__init__(supervisor=supervisor, child_id="jobs")
        self._backend = backend
        self._board = status_board
        self._worker_id = worker_id
        self._options = options
        self._concurrency = concurrency
        self._claim_interval_s = claim_interval_s
        self._feed = feed
        self._fallback_poll_s = fallback_poll_s
        self._poll_s: float | None = None
        self.timers = Timers(scheduler, self.actor_ref)
        self._agents: dict[str, pykka.ActorRef[Any]] = {}
        self._in_flight: dict[str, _InFlight] = {}  # by job id
        self._busy: set[str] = set()  # agents with a run in flight
        self._claim_queued = False
        self._claim_for: set[str] | None = set()
        """The agents the queued round claims for (None: every agent here)."""
        self._saturated = False
        """A round stopped with no slot left: more jobs may be claimable."""
        self._seen_signal: str | None = None
        self._rotation = 0
        self._retry_due_ms: int | None = None
        self._counts = {"done": 0, "retry": 0, "failed": 0, "dead": 0, "abandoned": 0}
        self._last_error: str | None = None

    def started(self) -> None:
        self._publish()
        if self._concurrency == 0:
            logger.warning("JOB_CONCURRENCY=0: claiming no jobs")
            return
        self.timers.start_periodic(CLAIM_TIMER, self._claim_interval_s)
        # A feed starts down: poll at the fallback interval until it is subscribed.
        self._poll_every(self._fallback_poll_s if self._feed else self._backend.signal_poll_s)
        self.timers.start_periodic(RENEW_TIMER, self._options.lock_ms / 4000)

    def _poll_every(self, interval_s: float | None) -> None:
        """Poll the jobs signal every `interval_s`, or not at all (None)."""
        if interval_s == self._poll_s or self._concurrency == 0:
            return
        self._poll_s = interval_s
        if interval_s is None:
            self.timers.cancel(SIGNAL_TIMER)
        else:
            self.timers.start_periodic(SIGNAL_TIMER, interval_s)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, TimerFired):
            if self.timers.accept(message):
                self._on_timer(message)
        elif isinstance(message, RunClaim):
            self._claim_queued = False
            self._claim()
        elif isinstance(message, JobEnded):
            self._ended(message)
        elif isinstance(message, AgentReady):
            self._agents[message.agent_id] = message.ref
            self._request_claim()
        elif isinstance(message, AgentGone):
            self._gone(message)
        elif isinstance(message, WakeUp):
            self._wake(message)
        elif isinstance(message, SignalChanged):
            self._request_claim()
        elif isinstance(message, FeedStatus):
            self._poll_every(None if message.state == "subscribed" else self._fallback_poll_s)
            if message.state == "down":  # a change may have been missed
                self._request_claim()
        else:
            super().on_receive(message)

    def _on_timer(self, tick: TimerFired) -> None:
        if tick.key == SIGNAL_TIMER:
            # Ticks queue up behind a slow claim; only a fresh one is worth a read.
            if self._poll_s is not None and monotonic_s() - tick.due_s <= self._poll_s:
                self._poll_signal()
        elif tick.key == RENEW_TIMER:
            self._renew()
        else:  # CLAIM_TIMER, RETRY_TIMER
            if tick.key == RETRY_TIMER:
                self._retry_due_ms = None
            self._request_claim()

    def _poll_signal(self) -> None:
        try:
            version = self._backend.jobs_version()
        except BackendError as error:
            logger.debug("jobs signal unavailable: %s", error)
            return
        if version != self._seen_signal:
            self._seen_signal = version
            self._request_claim()

    def _request_claim(self, agent_id: str | None = None) -> None:
        """Queue a claim round for every agent here, or (`agent_id`) for that one only
        (its next job, after its run ended); requests coalesce into one round."""
        if agent_id is None:
            self._claim_for = None
        elif self._claim_for is not None:
            self._claim_for.add(agent_id)
        if not self._claim_queued:
            self._claim_queued = True
            self.actor_ref.tell(RunClaim())

    # --- claiming -----------------------------------------------------------------------

    def _claim(self) -> None:
        scope, self._claim_for = self._claim_for, set()
        idle = [a for a in self._agents if a not in self._busy and (scope is None or a in scope)]
        free = self._concurrency - len(self._in_flight)
        if free <= 0 or not idle:
            self._saturated = self._saturated or free <= 0
            return
        if scope is None:
            self._saturated = False
        # Each round starts at another chunk, so no agent waits behind the first 1000.
        chunks = [idle[i : i + MAX_CLAIM_AGENTS] for i in range(0, len(idle), MAX_CLAIM_AGENTS)]
        self._rotation = (self._rotation + 1) % len(chunks)
        for chunk in chunks[self._rotation :] + chunks[: self._rotation]:
            started_s = monotonic_s()
            try:
                claimed = self._backend.claim_jobs(
                    chunk,
                    self._worker_id,
                    limit=min(free, MAX_CLAIM_LIMIT),
                    lock_ms=self._options.lock_ms,
                    max_attempts=self._options.max_attempts,
                )
            except BackendError as error:
                self._error(f"claiming jobs failed: {error}")
                return
            deadline_s = JobControl.deadline_for(started_s, self._options.lock_ms)
            for job in claimed:
                self._hand_over(job, JobControl(deadline_s))
            free -= len(claimed)
            if free <= 0:  # more may be claimable: the next run to end claims for all
                self._saturated = True
                return

    def _hand_over(self, job: ClaimedJob, control: JobControl) -> None:
        metrics.JOBS_CLAIMED.inc()
        ref = self._agents.get(job.agent_id)
        if ref is not None:
            self._in_flight[job.id] = _InFlight(job, control)
            self._busy.add(job.agent_id)
            try:
                ref.tell(RunJob(job=job, control=control))
                self._publish()
                return
            except pykka.ActorDeadError:  # stopped meanwhile; its AgentGone is on the way
                self._forget(job.id)
        self._give_back(job, "its agent no longer runs here")

    def _give_back(self, job: ClaimedJob, why: str) -> None:
        try:
            released = self._backend.release_job(job.id, job.claim_token)
        except BackendError as error:
            logger.warning(
                "job %s: could not give its claim back (%s); its lock will expire", job.id, error
            )
            return
        if released:
            logger.info("job %s given back: %s", job.id, why)

    # --- runs in flight -------------------------------------------------------------------

    def _ended(self, ended: JobEnded) -> None:
        if self._forget(ended.job_id) is None:
            return
        self._counts[ended.outcome] += 1
        if ended.outcome in ("failed", "dead") or (ended.outcome == "retry" and ended.error):
            self._last_error = f"job {ended.job_id}: {ended.error}"
        if ended.retry_at_ms is not None:
            self._retry_at(ended.retry_at_ms)
        self._publish()
        # Its agent's next job; every agent's if a round stopped for want of a slot (at
        # 10,000 agents a round is 10 claim calls: not one per finished job).
        self._request_claim(None if self._saturated else ended.agent_id)

    def _forget(self, job_id: str) -> _InFlight | None:
        flight = self._in_flight.pop(job_id, None)
        if flight is not None:
            self._busy.discard(flight.job.agent_id)
        return flight

    def _retry_at(self, due_ms: int) -> None:
        """Claim again when this retry falls due, if its agent is still here by then."""
        if self._retry_due_ms is not None and self._retry_due_ms <= due_ms:
            return
        self._retry_due_ms = due_ms
        self.timers.start_single(RETRY_TIMER, max(0.0, (due_ms - now_ms()) / 1000))

    def _renew(self) -> None:
        for flight in list(self._in_flight.values()):
            if flight.control.cancelled:
                continue
            started_s = monotonic_s()
            try:
                self._backend.renew_job(
                    flight.job.id, flight.job.claim_token, self._options.lock_ms
                )
            except Fenced:
                logger.warning("job %s: its claim was lost; the run stops", flight.job.id)
                flight.control.cancel("the claim was lost")
                continue
            except BackendError as error:
                self._error(f"renewing job {flight.job.id} failed: {error}")
                continue
            flight.control.extend(JobControl.deadline_for(started_s, self._options.lock_ms))

    def _gone(self, gone: AgentGone) -> None:
        if self._agents.get(gone.agent_id) is not gone.ref:
            return  # a newer actor of the agent registered already
        del self._agents[gone.agent_id]
        for flight in self._in_flight.values():
            if flight.job.agent_id == gone.agent_id and not flight.control.cancelled:
                flight.control.cancel("its agent stopped here")
                self._give_back(flight.job, "its agent stopped here")

    def _wake(self, wake: WakeUp) -> None:
        try:
            self._backend.enqueue_job(wake.agent_id, wake.prompt, kind="wakeup")
        except BackendError as error:
            self._error(f"queueing the wake-up of agent {wake.agent_id} failed: {error}")
            return
        self._request_claim()

    # --- status and stop -------------------------------------------------------------------

    def _error(self, text: str) -> None:
        if text != self._last_error:
            logger.error("%s", text)
        self._last_error = text
        self._publish()

    def _publish(self) -> None:
        self._board.publish(
            STATUS_NAME,
            JobsStatus(
                concurrency=self._concurrency,
                running=len(self._in_flight),
                completed=self._counts["done"],
                retried=self._counts["retry"],
                failed=self._counts["failed"],
                dead=self._counts["dead"],
                abandoned=self._counts["abandoned"],
                last_error=self._last_error,
            ),
        )

    def cleanup(self, crashed: bool) -> None:
        self.timers.cancel_all()
        for flight in self._in_flight.values():
            if not flight.control.cancelled:
                flight.control.cancel("the worker stops")
                self._give_back(flight.job, "the worker stops")
        self._in_flight.clear()
        self._busy.clear()
        self._publish()
