"""HeartbeatWriter: coalesces every agent's heartbeats into batched backend writes.

Presence is written here and only here, in one thread, so a removed agent's last
heartbeat can never land after it was marked offline.
"""

import logging
from typing import Any

import pykka

from actors.scheduler import Scheduler, Timers
from actors.supervision import SupervisedActor
from agent_runtime import metrics
from agent_runtime.clock import monotonic_s, now_ms
from agent_runtime.errors import BackendError
from agent_runtime.status import StatusBoard
from backend.port import Backend
from messages import AgentsStopped, Heartbeat, HeartbeatStatus, TimerFired
from messages.agent import PRESENCE_TTL_INTERVALS

logger = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 1.0
"""A heartbeat waits at most this long before it is written."""

INTERVAL_FRACTION = 0.5
"""...and at most this fraction of the agent's interval: presence expires after 3
intervals, so a 1 s agent whose beats waited a whole second would come close."""

MIN_FLUSH_SPACING_S = 0.5
"""Writes are at least this far apart: at most 2 backend writes per second, whatever N."""

STATUS_INTERVAL_S = 1.0
"""How often the status (and its count of online agents) is published between flushes:
an agent goes offline by time passing, not by a write."""

FLUSH_TIMER = "flush"
STATUS_TIMER = "status"
STATUS_NAME = "heartbeats"


class HeartbeatWriter(SupervisedActor):
    """Buffers `Heartbeat`s (latest per agent) and writes them in one call per flush.

    A flush happens at most FLUSH_INTERVAL_S (and half the agent's interval) after a
    heartbeat arrives, and sooner
    (but never closer than MIN_FLUSH_SPACING_S to the previous one) when an agent beats
    for the first time, so new agents show online quickly. A failed write keeps the
    heartbeats and retries at the next flush. `AgentsStopped` writes what is pending,
    then marks those agents offline.
    """

    def __init__(
        self,
        *,
        supervisor: pykka.ActorRef[Any] | None,
        backend: Backend,
        scheduler: Scheduler,
        status_board: StatusBoard,
    ) -> None:
        super().__init__(supervisor=supervisor, child_id="heartbeat_writer")
        self._backend = backend
        self._board = status_board
        self.timers = Timers(scheduler, self.actor_ref)
        self._pending: dict[str, Heartbeat] = {}
        self._pending_offline: set[str] = set()
        self._marked_offline: set[str] = set()
        """Agents stopped and marked offline (removed, or the last worker stopping): a beat
        from one still stopping must not bring it back online. Agent ids are not reused."""
        self._last_written_at: dict[str, int] = {}
        self._intervals_ms: dict[str, int] = {}
        self._last_flush_s = float("-inf")
        self._flush_due_s: float | None = None
        self._last_flush_at: int | None = None
        self._last_error: str | None = None

    def started(self) -> None:
        self.timers.start_periodic(STATUS_TIMER, STATUS_INTERVAL_S)
        self._publish()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Heartbeat):
            self._add(message)
        elif isinstance(message, TimerFired):
            if not self.timers.accept(message):
                pass
            elif message.key == STATUS_TIMER:
                self._publish()
            else:
                self._flush_due_s = None
                self._flush()
        elif isinstance(message, AgentsStopped):
            self._stopped(message)
        else:
            super().on_receive(message)

    def _add(self, beat: Heartbeat) -> None:
        if beat.agent_id in self._marked_offline:
            return
        known = self._pending.get(beat.agent_id)
        if known is None or known.at_ms < beat.at_ms:
            self._pending[beat.agent_id] = beat
        first_beat = beat.agent_id not in self._last_written_at
        now_s = monotonic_s()
        wait_s = FLUSH_INTERVAL_S
        if beat.interval_ms is not None:
            self._intervals_ms[beat.agent_id] = beat.interval_ms
            wait_s = min(wait_s, beat.interval_ms / 1000 * INTERVAL_FRACTION)
        due_s = now_s if first_beat else now_s + wait_s
        self._arm_flush(max(due_s, self._last_flush_s + MIN_FLUSH_SPACING_S))

    def _arm_flush(self, due_s: float) -> None:
        if self._flush_due_s is not None and self._flush_due_s <= due_s:
            return  # an earlier flush is already armed
        self._flush_due_s = due_s
        self.timers.start_single(FLUSH_TIMER, due_s - monotonic_s())

    def _flush(self) -> None:
        """Write pending beats, then pending offline marks; keep whatever fails."""
        self._last_flush_s = monotonic_s()
        self._publish()  # what is in flight: if the write hangs, the stop can say so
        problems = [self._write_beats(), self._write_offline()]
        self._set_error(next((p for p in problems if p is not None), None))
        if self._pending or self._pending_offline:
            self._arm_flush(monotonic_s() + FLUSH_INTERVAL_S)
        self._publish()

    def _write_beats(self) -> str | None:
        if not self._pending:
            return None
        beats = list(self._pending.values())
        self._pending.clear()
        try:
            refused = self._backend.record_heartbeats(beats)
        except BackendError as error:
            metrics.PRESENCE_WRITE_FAILURES.labels(call="record_heartbeats").inc()
            for beat in beats:  # nothing newer can have arrived during the call
                self._pending[beat.agent_id] = beat
            return f"heartbeat write failed, will retry: {error}"
        metrics.HEARTBEAT_WRITES.inc()
        metrics.HEARTBEATS_WRITTEN.inc(len(beats) - len(refused))
        refused_ids = set(refused)
        for beat in beats:
            if beat.agent_id not in refused_ids:
                self._last_written_at[beat.agent_id] = beat.at_ms
        self._last_flush_at = now_ms()
        if refused:  # dropped, not retried: the same clock would be refused again
            return (
                f"{len(refused)} heartbeat(s) refused: this worker's clock is more than 60 s"
                " ahead of the backend's; fix the clock (NTP)"
            )
        return None

    def _write_offline(self) -> str | None:
        if not self._pending_offline:
            return None
        agent_ids = sorted(self._pending_offline)
        try:
            self._backend.mark_offline(agent_ids)
        except BackendError as error:
            metrics.PRESENCE_WRITE_FAILURES.labels(call="mark_offline").inc()
            return f"marking {len(agent_ids)} agent(s) offline failed, will retry: {error}"
        self._pending_offline.difference_update(agent_ids)
        return None

    def _stopped(self, stopped: AgentsStopped) -> None:
        self._pending_offline.update(stopped.offline)
        self._marked_offline.update(stopped.offline)
        self._flush()  # their last beats first, then the offline marks
        for agent_id in stopped.agent_ids:
            # If the beats could not be written, drop them: a later retry must not bring a
            # stopped agent back online.
            self._pending.pop(agent_id, None)
            self._last_written_at.pop(agent_id, None)
            self._intervals_ms.pop(agent_id, None)
        self._publish()

    def _set_error(self, problem: str | None) -> None:
        if problem is not None and problem != self._last_error:
            logger.warning("%s", problem)
        elif problem is None and self._last_error is not None:
            logger.info("presence writes recovered")
        self._last_error = problem

    def _publish(self) -> None:
        self._board.publish(
            STATUS_NAME,
            HeartbeatStatus.model_construct(
                last_written_at=dict(self._last_written_at),
                last_flush_at=self._last_flush_at,
                last_error=self._last_error,
                pending=len(self._pending),
                pending_offline=len(self._pending_offline),
                online=self._online(),
            ),
        )

    def _online(self) -> int:
        now = now_ms()
        intervals = self._intervals_ms
        return sum(
            1
            for agent_id, at_ms in self._last_written_at.items()
            if now - at_ms < PRESENCE_TTL_INTERVALS * intervals.get(agent_id, 0)
        )

    def cleanup(self, crashed: bool) -> None:
        self.timers.cancel_all()
        if not crashed:
            self._flush()  # last chance: the process is stopping
