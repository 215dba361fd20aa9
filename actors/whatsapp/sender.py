"""WhatsAppActor: sends one account's outbound queue while its LeaseActor holds the lease.

It has a thread of its own (a send blocks for up to the send timeout) and handles one
step per message, so the LeaseActor's `LeaseHeld` updates come in between sends:
- claim a small batch (the backend checks owner and epoch in the same transaction and
  locks the messages for WHATSAPP_CLAIM_LOCK_MS, longer than a send can take);
- before each send, check the local lease deadline; past it, give the batch back;
- send through the transport, then mark the message sent (with the wamid) or failed,
  both fenced by the claim token and the epoch;
- classified outcomes: `retry` backs off with jitter (a not-before time in the backend),
  pacing the recipient when the error was about that contact; `permanent` fails the
  message; `pause` stops the account's sending for WHATSAPP_PAUSE_RETRY_MS (the token or
  the settings must change) and /health says so;
- at most WHATSAPP_MAX_MPS sends per second.

A Cloud API send has no idempotency key: a kill between Meta's accept and the mark sends
that message again when its lock expires. Messages are marked one at a time, so a kill
duplicates at most the one in flight; the batch size bounds how many claimed messages
wait for their lock to expire after a kill.
"""

import collections
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import pykka

from actors.scheduler import Scheduler, Timers
from actors.supervision import SupervisedActor
from actors.whatsapp.transport import SendResult, Transport
from agent_runtime import metrics
from agent_runtime.backoff import Backoff
from agent_runtime.clock import monotonic_s, now_ms
from agent_runtime.errors import BackendError, Fenced
from agent_runtime.status import StatusBoard
from backend.port import Backend
from messages import TimerFired
from messages.whatsapp import (
    ClaimedMessage,
    LeaseHeld,
    SenderFenced,
    SendStep,
    WhatsAppStatus,
)

logger = logging.getLogger(__name__)

BATCH_SIZE = 10
"""Messages claimed at once: after a kill, at most this many wait for their claim lock
to expire before another owner sends them."""

LOCK_MARGIN_S = 1.0
"""A send starts only if it can end (send timeout) this long before its claim lock does."""

IDLE_POLL_S = 0.5
"""How often an empty queue is looked at again."""

BACKEND_RETRY_S = 1.0
"""After a failed claim or mark."""

RETRY_BACKOFF = Backoff(min_s=2.0, max_s=300.0, random_factor=0.5)
"""Before attempt n + 1 of a message whose send failed n times in a retryable way."""

THROTTLE_BACKOFF = Backoff(min_s=1.0, max_s=60.0, random_factor=0.5)
"""How long the account waits after throttling answer n (without a Retry-After)."""

STEP_TIMER = "step"
STATUS_NAME = "whatsapp"


@dataclass(frozen=True)
class SenderOptions:
    """The sender's tunables, from the settings."""

    claim_lock_ms: int
    send_timeout_s: float
    max_attempts: int
    pause_retry_s: float
    max_mps: int


class WhatsAppActor(SupervisedActor):
    """Sends `account_id`'s queue as `owner_id` at the epoch of `held`."""

    def __init__(
        self,
        *,
        supervisor: pykka.ActorRef[Any],
        backend: Backend,
        scheduler: Scheduler,
        status_board: StatusBoard,
        transport: Transport,
        account_id: str,
        owner_id: str,
        held: LeaseHeld,
        options: SenderOptions,
        sender_id: str = "sender",
    ) -> None:
        super().__init__(supervisor=supervisor, child_id=sender_id)
        self._backend = backend
        self._board = status_board
        self._transport = transport
        self._account_id = account_id
        self._owner_id = owner_id
        self._held = held
        self._options = options
        self.timers = Timers(scheduler, self.actor_ref)
        self._batch: collections.deque[ClaimedMessage] = collections.deque()
        self._claimed_s = 0.0
        """When the batch was claimed: its locks run out `claim_lock_ms` later."""
        self._unrecorded: collections.deque[tuple[ClaimedMessage, SendResult, float]] = (
            collections.deque()
        )
        """Outcomes the backend has not taken yet, with the end of their claim lock."""
        self._next_send_s = 0.0
        self._paused_until_s: float | None = None
        self._paced_until_ms: dict[str, int] = {}
        self._throttled = 0
        """Throttling answers in a row, for the account's backoff."""
        self._fenced = False
        # Counts since the process started, across senders (lease handovers, restarts).
        previous = status_board.get(STATUS_NAME)
        self._sent = previous.sent if isinstance(previous, WhatsAppStatus) else 0
        self._failed = previous.failed if isinstance(previous, WhatsAppStatus) else 0
        self._last_error: str | None = None

    def started(self) -> None:
        logger.info("sending for %s at epoch %d", self._account_id, self._held.epoch)
        self._publish()
        self.actor_ref.tell(SendStep())

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, SendStep):
            self._step()
        elif isinstance(message, TimerFired):
            if self.timers.accept(message):
                self._step()
        elif isinstance(message, LeaseHeld):
            self._held = message
        else:
            super().on_receive(message)

    def _later(self, delay_s: float) -> None:
        self.timers.start_single(STEP_TIMER, delay_s)

    def _step(self) -> None:
        """One claim or one send, then the next step is scheduled (or not, if fenced)."""
        if self._fenced:
            return
        now_s = monotonic_s()
        if self._paused_until_s is not None:
            if now_s < self._paused_until_s:
                self._later(self._paused_until_s - now_s)
                return
            self._paused_until_s = None
            logger.info("sending for %s resumes after the pause", self._account_id)
            self._publish()
        if now_s >= self._held.deadline_s:
            self._give_back()  # past the deadline: another owner may hold the lease soon
            self._later(IDLE_POLL_S)  # a LeaseHeld moves the deadline, or we get stopped
            return
        if self._unrecorded and not self._record_unrecorded():
            self._later(BACKEND_RETRY_S)  # nothing more is sent until the backend knows
            return
        if not self._batch and not self._claim():
            return
        if now_s < self._next_send_s:
            self._later(self._next_send_s - now_s)
            return
        self._send(self._batch.popleft())
        self.actor_ref.tell(SendStep())

    def _claim(self) -> bool:
        """Claim a batch; False (with the next step scheduled) if there is nothing."""
        try:
            claimed = self._backend.claim_outbound(
                self._account_id,
                self._owner_id,
                self._held.epoch,
                limit=BATCH_SIZE,
                lock_ms=self._options.claim_lock_ms,
                max_attempts=self._options.max_attempts,
            )
        except Fenced as error:
            self._fence(str(error))
            return False
        except BackendError as error:
            self._problem(f"claim failed, retrying: {error}")
            self._later(BACKEND_RETRY_S)
            return False
        self._batch.extend(claimed)
        self._claimed_s = monotonic_s()
        if not claimed:
            self._later(IDLE_POLL_S)
        return bool(claimed)

    def _send(self, message: ClaimedMessage) -> None:
        now_s = monotonic_s()
        if now_s >= self._held.deadline_s:  # a claim or a pause may have taken long
            self._release(message)
            return
        if now_s + self._options.send_timeout_s + LOCK_MARGIN_S >= self._lock_end_s:
            # Slow sends ate the batch's locks: a send now could outlive its lock and be
            # claimed by another owner meanwhile. Give the rest back and claim afresh.
            self._release(message)
            self._give_back()
            return
        paced_until_ms = self._paced_until_ms.get(message.to, 0)
        if paced_until_ms > now_ms():  # that contact asked us to slow down
            self._release(message, not_before_ms=paced_until_ms)
            return
        self._next_send_s = max(monotonic_s(), self._next_send_s) + 1 / self._options.max_mps
        result = self._transport.send_text(message.to, message.text)
        metrics.WHATSAPP_SENDS.labels(outcome=result.kind).inc()
        if result.may_have_sent:
            metrics.WHATSAPP_UNCERTAIN_SENDS.inc()
        try:
            self._record(message, result)
        except Fenced as error:
            if result.kind == "sent":
                metrics.WHATSAPP_UNCERTAIN_SENDS.inc()
                logger.error(
                    "message %s sent but not recorded (fenced): it may be sent twice", message.id
                )
            self._fence(str(error))
        except BackendError as error:
            # Kept and recorded again before anything else is sent (a mark is idempotent
            # for its claim): dropping it would send the message again at lock expiry.
            self._problem(f"recording message {message.id} failed, will retry: {error}")
            self._unrecorded.append((message, result, self._lock_end_s))

    def _record_unrecorded(self) -> bool:
        """Record the outcomes whose first recording failed; True once none is left.
        One whose claim lock ran out is dropped (counted: it may be sent again)."""
        while self._unrecorded:
            message, result, lock_end_s = self._unrecorded[0]
            if monotonic_s() >= lock_end_s:
                metrics.WHATSAPP_UNCERTAIN_SENDS.inc()
                logger.error("message %s: its outcome was never recorded", message.id)
            else:
                try:
                    self._record(message, result)
                except Fenced as error:
                    self._fence(str(error))
                    return False
                except BackendError:
                    return False
            self._unrecorded.popleft()
        return True

    def _record(self, message: ClaimedMessage, result: SendResult) -> None:
        epoch = self._held.epoch
        if result.kind == "sent":
            assert result.wamid is not None
            self._backend.mark_sent(message.id, message.claim_token, epoch, result.wamid)
            self._sent += 1
            self._throttled = 0
            self._problem(None)
        elif result.kind == "pause":
            self._pause(result.reason, message, self._options.pause_retry_s)
        elif result.per_account:
            # Throttled: the whole account waits, and no message is charged an attempt.
            delay_s = min(
                result.retry_after_s or THROTTLE_BACKOFF.delay_s(self._throttled),
                THROTTLE_BACKOFF.max_s,
            )
            self._throttled += 1
            self._pause(result.reason, message, delay_s)
        else:
            retry_at_ms: int | None = None
            if result.kind == "retry":
                delay_s = min(
                    result.retry_after_s or RETRY_BACKOFF.delay_s(message.attempts),
                    RETRY_BACKOFF.max_s,  # a Retry-After of a day would strand the message
                )
                retry_at_ms = now_ms() + int(delay_s * 1000)
                if result.per_recipient:
                    self._pace(message.to, retry_at_ms)
            status = self._backend.mark_failed(
                message.id,
                message.claim_token,
                epoch,
                error=result.reason,
                retry_at_ms=retry_at_ms,
                max_attempts=self._options.max_attempts,
            )
            if status == "failed":
                self._failed += 1
            self._problem(f"message {message.id}: {result.reason} ({status})")
        self._publish()

    def _pause(self, reason: str, message: ClaimedMessage, pause_s: float) -> None:
        """The account cannot send now (token, permissions, policy, throttling): stop for
        `pause_s`, giving the message and the batch back uncharged."""
        self._paused_until_s = monotonic_s() + pause_s
        self._problem(f"sending paused for {pause_s:.1f} s: {reason}")
        self._release(message)
        self._give_back()

    def _pace(self, contact: str, until_ms: int) -> None:
        """Hold messages to `contact` until `until_ms`; forget contacts whose pace ended."""
        now = now_ms()
        self._paced_until_ms = {c: t for c, t in self._paced_until_ms.items() if t > now}
        self._paced_until_ms[contact] = until_ms

    @property
    def _lock_end_s(self) -> float:
        return self._claimed_s + self._options.claim_lock_ms / 1000

    def _release(self, message: ClaimedMessage, not_before_ms: int | None = None) -> None:
        with contextlib.suppress(BackendError):  # else its lock expires: tried again later
            self._backend.release_outbound(message.id, message.claim_token, not_before_ms)

    def _give_back(self) -> None:
        """Return the claimed, unsent messages to the queue (no attempt counted)."""
        while self._batch:
            self._release(self._batch.popleft())

    def _fence(self, reason: str) -> None:
        self._fenced = True
        self._problem(f"fenced: {reason}")
        self._give_back()
        self._publish()
        with contextlib.suppress(pykka.ActorDeadError):
            assert self.supervisor is not None
            self.supervisor.tell(SenderFenced(sender_id=self.child_id, reason=reason))

    def _problem(self, problem: str | None) -> None:
        if problem is not None and problem != self._last_error:
            logger.warning("%s", problem)
        self._last_error = problem

    def _publish(self) -> None:
        paused_ms = None
        if self._paused_until_s is not None:
            paused_ms = now_ms() + int((self._paused_until_s - monotonic_s()) * 1000)
        self._board.publish(
            STATUS_NAME,
            WhatsAppStatus(
                sending=not self._fenced,
                paused=self._paused_until_s is not None,
                paused_until=paused_ms,
                sent=self._sent,
                failed=self._failed,
                last_error=self._last_error,
            ),
        )

    def cleanup(self, crashed: bool) -> None:
        self.timers.cancel_all()
        self._give_back()
        self._fenced = True
        self._publish()
        logger.info("sender for %s stopped", self._account_id)
