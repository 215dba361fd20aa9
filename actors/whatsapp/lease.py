"""LeaseActor: holds the sending lease of one WhatsApp account, and runs the sender only
while it does.

The backend's clock decides expiry, and every change of owner increments the epoch that
fences every claim and mark. Locally:
- a standby tries to acquire every STANDBY_RETRY_S (with jitter);
- the holder renews every TTL/3; a failed renewal is retried every RENEW_RETRY_S until
  2/3 of the TTL has passed since the last success, and only then is the lease given up
  (one lost answer is not a lost lease);
- the sender gets a local deadline with every renewal, `start of the last successful
  renewal + TTL - margin` on the monotonic clock, and sends nothing past it: before the
  backend could hand the lease to another owner, even if this actor is stuck in a call;
- a refused renewal, a give-up or the deadline stops the sender at once;
- on a graceful stop the sender drains first (it gives back what it has not sent), then
  the lease is released, conditionally on owner and epoch, so a standby takes over at
  its next try instead of after the TTL.
"""

import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

import pykka

from actors.scheduler import Scheduler, Timers
from actors.supervision import SupervisedActor
from agent_runtime.backoff import Backoff
from agent_runtime.clock import monotonic_s, now_ms
from agent_runtime.errors import BackendError
from agent_runtime.status import StatusBoard
from backend.port import Backend
from messages import ChildFailed, TimerFired
from messages.whatsapp import Lease, LeaseHeld, LeaseStatus, SenderFenced

logger = logging.getLogger(__name__)

STANDBY_RETRY_S = 2.0
STANDBY_JITTER_S = 0.5
"""A standby tries every 2 s, +/- this, so standbys started together do not go in step."""

RENEW_RETRY_S = 1.0
RENEW_WINDOW = 2 / 3
"""Renewals are retried until this fraction of the TTL has passed since the last success."""

DEADLINE_MARGIN = 0.1
MIN_DEADLINE_MARGIN_S = 0.5
"""The local deadline is TTL - max(10% of the TTL, 0.5 s) after the last success began:
room for the rate of this clock against the backend's, and for the last send to end."""

SENDER_STOP_TIMEOUT_S = 2.0
"""How long a graceful stop waits for the sender to drain before releasing the lease."""

SENDER_BACKOFF = Backoff(min_s=0.5, max_s=30.0)
"""Before restarting a sender that crashed (while the lease is still held)."""

ACQUIRE_TIMER = "acquire"
SENDER_RESTART_TIMER = "sender-restart"
RENEW_TIMER = "renew"
DEADLINE_TIMER = "deadline"
STATUS_NAME = "lease"

SenderFactory = Callable[[pykka.ActorRef[Any], LeaseHeld, str], pykka.ActorRef[Any]]
"""Starts a sender under this LeaseActor (its supervisor) with the first LeaseHeld and
its sender id (the child id in its ChildFailed and SenderFenced reports)."""


class LeaseActor(SupervisedActor):
    """Acquires, renews and releases `account_id`'s lease for `owner_id`; starts the
    sender (`start_sender`) when it holds the lease and stops it when it does not."""

    def __init__(
        self,
        *,
        supervisor: pykka.ActorRef[Any] | None,
        backend: Backend,
        scheduler: Scheduler,
        status_board: StatusBoard,
        account_id: str,
        owner_id: str,
        ttl_ms: int,
        start_sender: SenderFactory,
    ) -> None:
        super().__init__(supervisor=supervisor, child_id="lease")
        self._backend = backend
        self._board = status_board
        self._account_id = account_id
        self._owner_id = owner_id
        self._ttl_ms = ttl_ms
        self._start_sender = start_sender
        self.timers = Timers(scheduler, self.actor_ref)
        self._lease: Lease | None = None
        """The lease as this actor holds it; None while it does not."""
        self._last_success_s = 0.0
        self._last_renewed_at: int | None = None
        self._last_error: str | None = None
        self._seen: Lease | None = None
        self._held_until: LeaseHeld | None = None
        """What the sender was last told: the epoch and the local deadline."""
        self._sender: pykka.ActorRef[Any] | None = None
        self._senders_started = 0
        self._sender_started_s = 0.0
        self._sender_crashes = 0

    @property
    def _ttl_s(self) -> float:
        return self._ttl_ms / 1000

    def started(self) -> None:
        self._publish()
        self._try()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, TimerFired):
            if not self.timers.accept(message):
                return
            if message.key == DEADLINE_TIMER:
                self._lose("the local deadline passed without a renewal")
            elif message.key == SENDER_RESTART_TIMER:
                self._restart_sender()
            else:
                self._try()
        elif isinstance(message, SenderFenced):
            if message.sender_id != self._sender_id:
                return  # an old sender's report: it was stopped already
            # A fenced sender sends nothing more: replace it if the lease is still ours
            # (e.g. it expired unnoticed and nobody took it: renewed at the same epoch).
            logger.warning("sender fenced (%s): checking the lease", message.reason)
            self._stop_sender(block=False)
            self._try()
        elif isinstance(message, ChildFailed):
            if message.child_id == self._sender_id:
                self._sender_failed(message)
        else:
            super().on_receive(message)

    def _try(self) -> None:
        """Acquire, or renew, once; schedule what comes next."""
        started_s = monotonic_s()
        try:
            lease = self._backend.acquire_lease(self._account_id, self._owner_id, self._ttl_ms)
        except BackendError as error:
            self._failed(str(error))
        else:
            self._last_error = None
            self._seen = lease
            if lease.held:
                self._held(lease, started_s)
            else:
                if self._lease is not None:
                    self._lose(f"refused: {lease.owner_id} holds epoch {lease.epoch}")
                self._standby()
        self._publish()

    def _held(self, lease: Lease, started_s: float) -> None:
        if self._lease is None or self._lease.epoch != lease.epoch:
            logger.info("lease of %s acquired at epoch %d", self._account_id, lease.epoch)
        self._lease = lease
        self._last_success_s = started_s
        self._last_renewed_at = now_ms()
        margin_s = max(DEADLINE_MARGIN * self._ttl_s, MIN_DEADLINE_MARGIN_S)
        held = LeaseHeld(epoch=lease.epoch, deadline_s=started_s + self._ttl_s - margin_s)
        self.timers.start_single(RENEW_TIMER, self._ttl_s / 3)
        self.timers.start_single(DEADLINE_TIMER, held.deadline_s - monotonic_s())
        self.timers.cancel(ACQUIRE_TIMER)
        new_epoch = self._held_until is not None and self._held_until.epoch != held.epoch
        self._held_until = held
        if new_epoch:
            self._stop_sender(block=False)  # its claims belong to the old epoch
        if self._sender is None:
            if not self.timers.is_active(SENDER_RESTART_TIMER):
                self._start_new_sender(held)
        else:
            with contextlib.suppress(pykka.ActorDeadError):  # its restart comes
                self._sender.tell(held)

    def _sender_failed(self, failure: ChildFailed) -> None:
        """The sender crashed: what it had claimed comes back when its locks expire; a
        new sender starts after a backoff if the lease is still held."""
        self._sender = None
        if monotonic_s() - self._sender_started_s >= SENDER_BACKOFF.reset_after_s:
            self._sender_crashes = 0  # it had run well for a while: start the backoff over
        delay_s = SENDER_BACKOFF.delay_s(self._sender_crashes)
        self._sender_crashes += 1
        self._board.count_restart("sender")
        logger.error("sender crashed: %s; restarting in %.1f s", failure.error, delay_s)
        self.timers.start_single(SENDER_RESTART_TIMER, delay_s)

    def _restart_sender(self) -> None:
        held = self._held_until
        if self._lease is None or held is None or self._sender is not None:
            return  # lost meanwhile: the next acquisition starts one
        self._start_new_sender(held)

    def _start_new_sender(self, held: LeaseHeld) -> None:
        self._senders_started += 1
        self._sender_started_s = monotonic_s()
        self._sender = self._start_sender(self.actor_ref, held, self._sender_id)

    @property
    def _sender_id(self) -> str:
        """The current sender's child id; reports from earlier senders are ignored."""
        return f"sender-{self._senders_started}"

    def _failed(self, problem: str) -> None:
        if problem != self._last_error:
            logger.warning("lease call failed: %s", problem)
        self._last_error = problem
        if self._lease is None:
            self._standby()
        elif monotonic_s() - self._last_success_s >= RENEW_WINDOW * self._ttl_s:
            self._lose(f"renewals failed for {RENEW_WINDOW:.0%} of the TTL: {problem}")
            self._standby()
        else:
            self.timers.start_single(RENEW_TIMER, RENEW_RETRY_S)

    def _standby(self) -> None:
        delay_s = STANDBY_RETRY_S + random.uniform(-STANDBY_JITTER_S, STANDBY_JITTER_S)
        self.timers.start_single(ACQUIRE_TIMER, delay_s)

    def _lose(self, reason: str) -> None:
        """Stop sending at once; the lease is someone else's, or may soon be."""
        if self._lease is None:
            return
        logger.warning(
            "lease of %s lost at epoch %d: %s", self._account_id, self._lease.epoch, reason
        )
        self._lease = None
        self._held_until = None
        self.timers.cancel(RENEW_TIMER)
        self.timers.cancel(DEADLINE_TIMER)
        self.timers.cancel(SENDER_RESTART_TIMER)
        self._stop_sender(block=False)
        self._standby()
        self._publish()

    def _stop_sender(self, *, block: bool) -> bool:
        """Stop the sender; with `block`, wait for it to drain and say whether it did."""
        sender, self._sender = self._sender, None
        if sender is None:
            return True
        try:
            # The sender checks its deadline before every send; not waiting here keeps
            # this actor's timers on time while a send in flight ends.
            stopped = sender.stop(block=False)
            if block:
                stopped.get(timeout=SENDER_STOP_TIMEOUT_S)
        except pykka.Timeout:
            logger.error("the sender did not drain within %.1f s", SENDER_STOP_TIMEOUT_S)
            return False
        return True

    def _publish(self) -> None:
        seen = self._seen
        self._board.publish(
            STATUS_NAME,
            LeaseStatus(
                account_id=self._account_id,
                held=self._lease is not None,
                owner_id=seen.owner_id if seen is not None else None,
                epoch=seen.epoch if seen is not None else None,
                expires_at=seen.expires_at if seen is not None else None,
                last_renewed_at=self._last_renewed_at,
                last_error=self._last_error,
            ),
        )

    def cleanup(self, crashed: bool) -> None:
        self.timers.cancel_all()
        drained = self._stop_sender(block=not crashed)
        lease, self._lease = self._lease, None
        if lease is None or crashed:
            return  # a crashed holder's lease expires; its restart may renew it first
        if not drained:
            # A send may still be in flight: releasing now would let a successor claim
            # and send that message too. The lease expires instead.
            logger.warning(
                "lease of %s left to expire: the sender had not drained", self._account_id
            )
            return
        try:
            released = self._backend.release_lease(self._account_id, self._owner_id, lease.epoch)
        except BackendError as error:
            logger.warning("could not release the lease (it expires on its own): %s", error)
        else:
            logger.info("lease of %s released: %s", self._account_id, released)
        self._publish()
