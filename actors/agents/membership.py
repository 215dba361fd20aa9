"""Membership: registers this core worker in the backend, renews it, deregisters on stop.

A registration lives WORKER_TTL_MS past its last renewal by the backend's clock; renewals
come every WORKER_HEARTBEAT_MS (at most a third of the TTL, so one late renewal is not a
death). The worker's id comes from the settings; the instance id is new per process
start (and kept across restarts of this actor), so another process with the same
WORKER_ID can neither renew nor remove this registration, and this worker waits (running
no agents) while another live process holds its id, trying again at every renewal.

Every live worker computes agent ownership from the backend's live set (the SyncActor
reads it at each sync); a join, a leave or an expiry moves the backend's change signal,
so the fleet rebalances within one poll.
"""

import contextlib
import logging
from typing import Any

import pykka

from actors.scheduler import Scheduler, Timers
from actors.supervision import SupervisedActor
from agent_runtime.clock import now_ms
from agent_runtime.errors import BackendError, WorkerIdTaken
from agent_runtime.status import StatusBoard
from backend.port import Backend
from messages import Deregister, MembershipStatus, RegistrationChanged, TimerFired

logger = logging.getLogger(__name__)

RENEW_TIMER = "renew"
STATUS_NAME = "membership"


class Membership(SupervisedActor):
    """Keeps this worker registered; tells the SyncActor when it is (or is not)."""

    def __init__(
        self,
        *,
        supervisor: pykka.ActorRef[Any] | None,
        backend: Backend,
        scheduler: Scheduler,
        status_board: StatusBoard,
        sync: pykka.ActorRef[Any],
        worker_id: str,
        instance_id: str,
        heartbeat_s: float,
        ttl_ms: int,
    ) -> None:
        super().__init__(supervisor=supervisor, child_id="membership")
        self._backend = backend
        self._board = status_board
        self._sync = sync
        self.worker_id = worker_id
        self._instance_id = instance_id
        self._heartbeat_s = heartbeat_s
        self._ttl_ms = ttl_ms
        self.timers = Timers(scheduler, self.actor_ref)
        self._registered = False
        self._live: tuple[str, ...] = ()
        self._last_renewed_at: int | None = None
        self._last_error: str | None = None

    def started(self) -> None:
        self.timers.start_periodic(RENEW_TIMER, self._heartbeat_s)
        self._renew()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, TimerFired):
            if self.timers.accept(message):
                self._renew()
        elif isinstance(message, Deregister):
            self._deregister()
        else:
            super().on_receive(message)

    def _renew(self) -> None:
        try:
            live = self._backend.register_worker(self.worker_id, self._instance_id, self._ttl_ms)
        except WorkerIdTaken as error:
            self._fail(str(error))
            self._set_registered(False)
        except BackendError as error:
            # Keep running: one failed renewal is not a death (the TTL covers 3 of them).
            self._fail(f"worker renewal failed, will retry: {error}")
        else:
            if self._last_error is not None:
                logger.info("worker registration renewed again")
            self._last_error = None
            self._last_renewed_at = now_ms()
            if tuple(live) != self._live:
                logger.info("live workers: %s", ", ".join(live))
            self._live = tuple(live)
            self._set_registered(True)
        self._publish()

    def _fail(self, problem: str) -> None:
        if problem != self._last_error:
            logger.error("%s", problem)
        self._last_error = problem

    def _set_registered(self, registered: bool) -> None:
        if registered == self._registered:
            return
        self._registered = registered
        if registered:
            logger.info("registered as worker %s", self.worker_id)
        else:
            logger.warning("not registered as worker %s: running no agents", self.worker_id)
        # A dead SyncActor is being restarted with this actor (one_for_all).
        with contextlib.suppress(pykka.ActorDeadError):
            self._sync.tell(RegistrationChanged(registered=registered))

    def _publish(self) -> None:
        self._board.publish(
            STATUS_NAME,
            MembershipStatus(
                worker_id=self.worker_id,
                registered=self._registered,
                last_renewed_at=self._last_renewed_at,
                last_error=self._last_error,
            ),
        )

    def _deregister(self) -> None:
        # First step of a graceful stop: the others see the leave and take the agents.
        # Only here, not on every stop: a restart of this actor keeps the registration.
        self.timers.cancel(RENEW_TIMER)
        if not self._registered:
            return
        try:
            self._backend.deregister_worker(self.worker_id, self._instance_id)
        except BackendError as error:
            logger.warning("could not deregister (it expires in %d ms): %s", self._ttl_ms, error)
        else:
            logger.info("deregistered worker %s", self.worker_id)
        self._registered = False
        self._publish()

    def cleanup(self, crashed: bool) -> None:
        self.timers.cancel_all()
