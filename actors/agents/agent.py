"""AgentActor: one agent, with its session and its heartbeat timer, on the agents' Dispatcher."""

import logging
import threading
from typing import Any

import pykka

from actors.dispatcher import Dispatcher, PooledActor
from actors.jobs.runner import AgentJobs, JobRun
from actors.scheduler import Scheduler, Timers
from actors.supervision import Supervised
from agent_runtime import logs, metrics
from agent_runtime.clock import monotonic_s, now_ms
from messages import AgentRecord, Heartbeat, TimerFired, UpdateAgent
from messages.jobs import AgentGone, AgentReady, RunJob, WakeUp

logger = logging.getLogger(__name__)

HEARTBEAT_TIMER = "heartbeat"
WAKEUP_TIMER = "wakeup"


class AgentSession:
    """The agent's session, keyed by its session key; jobs for the agent run in it."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.opened_at_ms = now_ms()
        logger.debug("session %s opened", key)

    def close(self) -> None:
        """End the session; the agent has no session until a new one is opened."""
        logger.debug("session %s closed", self.key)


def thread_name(record: AgentRecord) -> str:
    """The name of the agent's thread, as it appears in logs and thread dumps."""
    return f"agent-{record.name}-{record.id[:8]}"


class AgentActor(Supervised, PooledActor):
    """Keeps one agent online: beats every `heartbeatIntervalMs` to the HeartbeatWriter.
    Runs its jobs in its session: the JobDispatcher hands it each claimed job (`RunJob`),
    and it starts the run on the job pool with its record and session, so its own
    thread never blocks on a model call and its beats keep their schedule. With a
    `wakeupPrompt`, it asks for its wake-up job every `wakeupIntervalMs` (the first one
    an interval after it starts here).

    Runs on the agents' Dispatcher (thousands of agents, a few threads); while a thread
    runs it, the thread is named after the agent.

    Its supervisor (the SyncActor) starts it with the delay of its first heartbeat,
    sends `UpdateAgent` when the backend's record changes, and stops it when the agent
    is removed. Every log line from its thread carries the agent's id, name and session.
    """

    def __init__(
        self,
        record: AgentRecord,
        *,
        supervisor: pykka.ActorRef[Any],
        dispatcher: Dispatcher,
        scheduler: Scheduler,
        heartbeat_writer: pykka.ActorRef[Any],
        first_heartbeat_delay_s: float,
        jobs: AgentJobs | None = None,
    ) -> None:
        super().__init__(supervisor=supervisor, child_id=record.id, dispatcher=dispatcher)
        self.record = record
        self._heartbeat_writer = heartbeat_writer
        self._jobs = jobs
        self._first_heartbeat_delay_s = first_heartbeat_delay_s
        self._session: AgentSession | None = None
        self.timers = Timers(scheduler, self.actor_ref)
        self._last_beat_s: float | None = None

    def enter(self) -> None:
        threading.current_thread().name = thread_name(self.record)
        logs.bind_agent(self.record.id, self.record.name, self.record.session_key)

    def leave(self) -> None:
        logs.unbind_agent()

    def started(self) -> None:
        self._session = AgentSession(self.record.session_key)
        self.timers.start_periodic(
            HEARTBEAT_TIMER,
            self.record.heartbeat_interval_ms / 1000,
            initial_delay_s=self._first_heartbeat_delay_s,
        )
        logger.info(
            "agent started: heartbeat every %d ms, first in %.2f s",
            self.record.heartbeat_interval_ms,
            self._first_heartbeat_delay_s,
        )
        if self._jobs is not None:
            self._jobs.dispatcher.tell(AgentReady(agent_id=self.record.id, ref=self.actor_ref))
            self._schedule_wakeup()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, TimerFired):
            if self.timers.accept(message):
                if message.key == HEARTBEAT_TIMER:
                    self._beat(message)
                elif message.key == WAKEUP_TIMER:
                    self._wake_up()
        elif isinstance(message, RunJob):
            self._run(message)
        elif isinstance(message, UpdateAgent):
            self._update(message.record)
        else:
            super().on_receive(message)

    def _run(self, message: RunJob) -> None:
        assert self._jobs is not None  # only agents registered with the dispatcher get jobs
        logger.debug("job %s handed over", message.job.id)
        self._jobs.runner.submit(
            JobRun(job=message.job, control=message.control, agent=self.record),
            self._jobs.tell,
        )

    def _schedule_wakeup(self) -> None:
        if self.record.wakeup_interval_ms is None:
            self.timers.cancel(WAKEUP_TIMER)
            return
        interval_s = self.record.wakeup_interval_ms / 1000
        self.timers.start_periodic(WAKEUP_TIMER, interval_s, initial_delay_s=interval_s)

    def _wake_up(self) -> None:
        if self._jobs is not None and self.record.wakeup_prompt is not None:
            self._jobs.tell(WakeUp(agent_id=self.record.id, prompt=self.record.wakeup_prompt))

    def _beat(self, tick: TimerFired) -> None:
        now_s = monotonic_s()
        metrics.HEARTBEAT_LATENESS.observe(max(0.0, now_s - tick.due_s))
        self._last_beat_s = now_s
        self._heartbeat_writer.tell(
            Heartbeat(
                agent_id=self.record.id,
                at_ms=now_ms(),
                interval_ms=self.record.heartbeat_interval_ms,
            )
        )
        logger.debug("heartbeat")

    def _update(self, new: AgentRecord) -> None:
        old, self.record = self.record, new
        if new.session_key != old.session_key and self._session is not None:
            self._session.close()
        if new.name != old.name or new.session_key != old.session_key:
            self.enter()
        if new.session_key != old.session_key:
            self._session = AgentSession(new.session_key)
            logger.info("session replaced: %s -> %s", old.session_key, new.session_key)
        if new.heartbeat_interval_ms != old.heartbeat_interval_ms:
            interval_s = new.heartbeat_interval_ms / 1000
            # Keep the rhythm: the next beat is one new interval after the last one.
            since_last_s = (
                monotonic_s() - self._last_beat_s if self._last_beat_s is not None else 0.0
            )
            self.timers.start_periodic(
                HEARTBEAT_TIMER, interval_s, initial_delay_s=max(0.0, interval_s - since_last_s)
            )
            logger.info(
                "heartbeat rescheduled: every %d ms (was %d ms)",
                new.heartbeat_interval_ms,
                old.heartbeat_interval_ms,
            )
        if self._jobs is not None and new.wakeup_interval_ms != old.wakeup_interval_ms:
            self._schedule_wakeup()
        logger.debug("record updated")

    def cleanup(self, crashed: bool) -> None:
        self.timers.cancel_all()
        if self._jobs is not None:
            self._jobs.tell(AgentGone(agent_id=self.record.id, ref=self.actor_ref))
        if self._session is not None:
            self._session.close()
            self._session = None
        logger.info("agent %s", "crashed" if crashed else "stopped")
