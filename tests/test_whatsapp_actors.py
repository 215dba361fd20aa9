"""LeaseActor and WhatsAppActor as actors, on a real SQLite backend and a scripted
transport: one sender per account, renewals that survive a failure, a local deadline that
fences a stuck owner, classified outcomes, the rate limit."""

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.scheduler import Scheduler
from actors.whatsapp.lease import LeaseActor
from actors.whatsapp.sender import SenderOptions, WhatsAppActor
from actors.whatsapp.transport import SendResult
from agent_runtime.clock import monotonic_s
from agent_runtime.errors import BackendUnavailable
from agent_runtime.status import StatusBoard
from backend.local import LocalBackend
from messages.whatsapp import LeaseHeld, LeaseStatus, WhatsAppStatus
from tests.conftest import stays_false, wait_for

ACCOUNT = "acct"
OPTIONS = SenderOptions(
    claim_lock_ms=60_000, send_timeout_s=1.0, max_attempts=3, pause_retry_s=0.5, max_mps=1000
)


class ScriptedTransport:
    """Records every send (time, to, text); answers with `answer(to, text)`."""

    def __init__(self, answer: Callable[[str, str], SendResult] | None = None) -> None:
        self.sends: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()
        self._answer = answer or (lambda to, text: SendResult.sent(f"wamid.{text}"))

    def send_text(self, to: str, text: str) -> SendResult:
        with self._lock:
            self.sends.append((monotonic_s(), to, text))
        return self._answer(to, text)

    def texts(self) -> list[str]:
        with self._lock:
            return [text for _, _, text in self.sends]

    def close(self) -> None:
        pass


class Worker:
    """One process's WhatsApp actors: a LeaseActor for `owner` and its sender."""

    def __init__(
        self,
        backend: Any,
        scheduler: Scheduler,
        owner: str,
        transport: ScriptedTransport,
        *,
        ttl_ms: int = 6000,
        options: SenderOptions = OPTIONS,
    ) -> None:
        self.board = StatusBoard()
        self.transport = transport

        def start_sender(
            lease: pykka.ActorRef[Any], held: LeaseHeld, sender_id: str
        ) -> pykka.ActorRef[Any]:
            return WhatsAppActor.start(
                supervisor=lease,
                backend=backend,
                scheduler=scheduler,
                status_board=self.board,
                transport=transport,
                account_id=ACCOUNT,
                owner_id=owner,
                held=held,
                options=options,
                sender_id=sender_id,
            )

        self.lease = LeaseActor.start(
            supervisor=None,
            backend=backend,
            scheduler=scheduler,
            status_board=self.board,
            account_id=ACCOUNT,
            owner_id=owner,
            ttl_ms=ttl_ms,
            start_sender=start_sender,
        )

    def holds(self) -> bool:
        status = self.board.get("lease")
        return isinstance(status, LeaseStatus) and status.held

    def sender_status(self) -> WhatsAppStatus | None:
        status = self.board.get("whatsapp")
        return status if isinstance(status, WhatsAppStatus) else None


@pytest.fixture
def db(tmp_path: Path) -> Iterator[LocalBackend]:
    backend = LocalBackend(tmp_path / "wa.db")
    yield backend
    backend.close()


def queue(backend: LocalBackend, count: int, to: str = "15550001") -> list[str]:
    return [backend.enqueue_outbound(ACCOUNT, to, f"m{i}") for i in range(count)]


def statuses(backend: LocalBackend) -> dict[str, str]:
    return {row["text"]: row["status"] for row in backend.list_outbox(ACCOUNT)}


def test_one_of_two_workers_sends_every_message_once(
    db: LocalBackend, scheduler: Scheduler, tmp_path: Path
) -> None:
    queue(db, 50)
    a = Worker(db, scheduler, "A", ScriptedTransport())
    wait_for(a.holds, what="A holds the lease")
    other = LocalBackend(tmp_path / "wa.db")  # another process's connection
    b = Worker(other, scheduler, "B", ScriptedTransport())
    wait_for(lambda: set(statuses(db).values()) == {"sent"}, what="all 50 sent")
    assert sorted(a.transport.texts()) == sorted(f"m{i}" for i in range(50))
    assert stays_false(b.holds, 0.5)
    assert b.transport.texts() == []
    a.lease.stop()  # graceful: the sender drains, the lease is released
    wait_for(b.holds, timeout_s=4, what="B takes over after the release")
    queue(db, 5)
    wait_for(lambda: len(b.transport.texts()) == 5, what="B sends the next messages")
    b.lease.stop()
    other.close()


class Flaky:
    """A backend whose lease calls fail while `failing` is set, or hang while `hang`."""

    def __init__(self, backend: LocalBackend) -> None:
        self._backend = backend
        self.failing = threading.Event()
        self.hang = threading.Event()
        self.release_hang = threading.Event()

    def acquire_lease(self, *args: Any) -> Any:
        if self.hang.is_set():
            self.release_hang.wait(30)
        if self.failing.is_set():
            raise BackendUnavailable("backend down (test)")
        return self._backend.acquire_lease(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


def test_a_failed_renewal_is_retried_not_taken_as_a_lost_lease(
    db: LocalBackend, scheduler: Scheduler
) -> None:
    flaky = Flaky(db)
    a = Worker(flaky, scheduler, "A", ScriptedTransport(), ttl_ms=6000)
    wait_for(a.holds, what="A holds the lease")
    flaky.failing.set()  # renewals fail for ~2 s, less than 2/3 of the 6 s TTL
    wait_for(
        lambda: (a.board.get("lease") or LeaseStatus.model_construct()).last_error, what="a failure"
    )  # type: ignore[union-attr]
    assert a.holds()
    flaky.failing.clear()
    wait_for(lambda: a.board.get("lease").last_error is None, timeout_s=5, what="renewed again")  # type: ignore[union-attr]
    assert a.holds()
    queue(db, 3)
    wait_for(lambda: len(a.transport.texts()) == 3, what="still sending")
    flaky.failing.set()  # now for good: given up after 2/3 of the TTL (4 s)
    wait_for(lambda: not a.holds(), timeout_s=8, what="the lease given up")
    a.lease.stop()


def test_a_stuck_owner_sends_nothing_past_its_local_deadline(
    db: LocalBackend, scheduler: Scheduler, tmp_path: Path
) -> None:
    unblock = threading.Event()

    def slow(to: str, text: str) -> SendResult:
        unblock.wait(0.25)  # a slow Graph API: a claimed batch takes 2.5 s to send
        return SendResult.sent(f"wamid.{text}")

    flaky = Flaky(db)
    short_locks = SenderOptions(
        claim_lock_ms=3000, send_timeout_s=0.5, max_attempts=3, pause_retry_s=1, max_mps=1000
    )
    a = Worker(flaky, scheduler, "A", ScriptedTransport(slow), ttl_ms=5000, options=short_locks)
    wait_for(a.holds, what="A holds the lease")
    queue(db, 60)
    flaky.hang.set()  # A's LeaseActor hangs in its next renewal, as if paused
    other = LocalBackend(tmp_path / "wa.db")
    b = Worker(other, scheduler, "B", ScriptedTransport(), ttl_ms=5000, options=short_locks)
    wait_for(b.holds, timeout_s=12, what="B takes over after A's lease expired")
    taken_s = monotonic_s()
    wait_for(lambda: set(statuses(db).values()) == {"sent"}, timeout_s=15, what="all sent")
    # A's sender kept running (only its LeaseActor is stuck) with claimed messages in
    # hand, but sent nothing past its local deadline, which comes before the expiry.
    assert a.transport.sends
    assert all(at < taken_s for at, _, _ in a.transport.sends)
    assert len(a.transport.texts()) + len(b.transport.texts()) == 60  # each exactly once
    flaky.release_hang.set()
    b.lease.stop()
    a.lease.stop()
    other.close()


def test_outcomes_retry_pace_fail_and_pause(db: LocalBackend, scheduler: Scheduler) -> None:
    calls: dict[str, int] = {}

    def answer(to: str, text: str) -> SendResult:
        calls[text] = calls.get(text, 0) + 1
        if text == "bad-number":
            return SendResult.permanent("131026: undeliverable")
        if text == "slow-contact" and calls[text] == 1:
            return SendResult.retry("131056: pair rate limit", 0.3, per_recipient=True)
        if text == "token" and calls[text] == 1:
            return SendResult.pause("190: access token expired")
        return SendResult.sent(f"wamid.{text}")

    db.enqueue_outbound(ACCOUNT, "15550001", "bad-number")
    db.enqueue_outbound(ACCOUNT, "15550002", "slow-contact")
    db.enqueue_outbound(ACCOUNT, "15550003", "fine")
    a = Worker(db, scheduler, "A", ScriptedTransport(answer))
    wait_for(
        lambda: statuses(db) == {"bad-number": "failed", "slow-contact": "sent", "fine": "sent"},
        what="each outcome applied",
    )
    failed = next(r for r in db.list_outbox(ACCOUNT) if r["text"] == "bad-number")
    assert (failed["attempts"], failed["lastError"]) == (1, "131026: undeliverable")
    db.enqueue_outbound(ACCOUNT, "15550004", "token")
    wait_for(
        lambda: (a.sender_status() or WhatsAppStatus.model_construct(paused=False)).paused,
        what="paused",
    )
    assert statuses(db)["token"] == "queued"  # given back, no attempt counted
    wait_for(lambda: statuses(db)["token"] == "sent", timeout_s=5, what="sent after the pause")
    token = next(r for r in db.list_outbox(ACCOUNT) if r["text"] == "token")
    assert token["attempts"] == 0
    a.lease.stop()


def test_sends_are_spaced_by_the_rate_limit(db: LocalBackend, scheduler: Scheduler) -> None:
    queue(db, 12)
    limited = SenderOptions(
        claim_lock_ms=60_000, send_timeout_s=1.0, max_attempts=3, pause_retry_s=1, max_mps=20
    )
    a = Worker(db, scheduler, "A", ScriptedTransport(), options=limited)
    wait_for(lambda: len(a.transport.texts()) == 12, what="all sent")
    times = [at for at, _, _ in a.transport.sends]
    assert (times[-1] - times[0]) / (len(times) - 1) >= 1 / 20 * 0.9
    a.lease.stop()


def test_a_crashed_sender_is_restarted_while_the_lease_is_held(
    db: LocalBackend, scheduler: Scheduler
) -> None:
    crashes = iter([True])

    def crash_once(to: str, text: str) -> SendResult:
        if next(crashes, False):
            raise RuntimeError("bug in the transport")
        return SendResult.sent(f"wamid.{text}")

    queue(db, 5)
    a = Worker(db, scheduler, "A", ScriptedTransport(crash_once), options=OPTIONS)
    # The crashed sender's claim lock (60 s) holds the message it was sending; the rest
    # were given back when it stopped, and the new sender sends them.
    wait_for(lambda: list(statuses(db).values()).count("sent") == 4, timeout_s=5, what="4 sent")
    assert a.board.restarts() == {"sender": 1}
    assert a.holds()
    a.lease.stop()


def test_a_fenced_sender_is_replaced_when_the_lease_is_still_ours(
    db: LocalBackend, scheduler: Scheduler
) -> None:
    a = Worker(db, scheduler, "A", ScriptedTransport())
    wait_for(a.holds, what="A holds the lease")
    lease = db.get_lease(ACCOUNT)
    assert lease is not None
    db.release_lease(ACCOUNT, "A", lease.epoch)  # expired behind its back; nobody took it
    queue(db, 3)
    # The sender's claim is refused (FENCED); the LeaseActor renews the same owner's lease
    # and starts a fresh sender, which sends them.
    wait_for(lambda: len(a.transport.texts()) == 3, timeout_s=5, what="sent after the fence")
    renewed = db.get_lease(ACCOUNT)
    assert renewed is not None
    assert renewed.epoch == lease.epoch
    a.lease.stop()


def test_a_stop_during_a_slow_send_leaves_the_lease_to_expire(
    db: LocalBackend, scheduler: Scheduler
) -> None:
    sending = threading.Event()
    finish = threading.Event()

    def slow(to: str, text: str) -> SendResult:
        sending.set()
        finish.wait(10)  # longer than the LeaseActor waits for the sender to drain
        return SendResult.sent(f"wamid.{text}")

    queue(db, 1)
    a = Worker(db, scheduler, "A", ScriptedTransport(slow))
    assert sending.wait(5)
    a.lease.stop()  # the send is still in flight: releasing would let B send it again
    lease = db.get_lease(ACCOUNT)
    assert lease is not None
    assert lease.owner_id == "A"
    assert lease.expires_at > db.clock()  # not released
    finish.set()


def test_throttling_holds_back_the_account_without_charging_attempts(
    db: LocalBackend, scheduler: Scheduler
) -> None:
    throttle = iter([True, True])

    def answer(to: str, text: str) -> SendResult:
        if next(throttle, False):
            return SendResult.retry("error 130429: rate limit", 0.2, per_account=True)
        return SendResult.sent(f"wamid.{text}")

    queue(db, 3)
    a = Worker(db, scheduler, "A", ScriptedTransport(answer))
    wait_for(lambda: set(statuses(db).values()) == {"sent"}, timeout_s=5, what="all sent")
    assert [row["attempts"] for row in db.list_outbox(ACCOUNT)] == [0, 0, 0]
    times = [at for at, _, _ in a.transport.sends]
    assert times[1] - times[0] >= 0.2  # the whole account waited Meta's Retry-After
    a.lease.stop()


def test_a_mark_that_fails_is_retried_and_the_message_never_sent_twice(
    db: LocalBackend, scheduler: Scheduler
) -> None:
    class MarksFailTwice:
        def __init__(self) -> None:
            self.failures = 2

        def mark_sent(self, *args: Any) -> None:
            if self.failures:
                self.failures -= 1
                raise BackendUnavailable("backend down (test)")
            db.mark_sent(*args)

        def __getattr__(self, name: str) -> Any:
            return getattr(db, name)

    queue(db, 3)
    a = Worker(MarksFailTwice(), scheduler, "A", ScriptedTransport())
    wait_for(lambda: set(statuses(db).values()) == {"sent"}, timeout_s=10, what="all marked sent")
    assert sorted(a.transport.texts()) == ["m0", "m1", "m2"]  # each sent once
    a.lease.stop()


def test_a_retry_after_of_a_day_is_capped(db: LocalBackend, scheduler: Scheduler) -> None:
    def answer(to: str, text: str) -> SendResult:
        return SendResult.retry("error 131000: try again tomorrow", retry_after_s=86_400)

    queue(db, 1)
    a = Worker(db, scheduler, "A", ScriptedTransport(answer))
    wait_for(lambda: db.list_outbox(ACCOUNT)[0]["attempts"] == 1, what="the failed attempt")
    a.lease.stop()
    with sqlite3.connect(db.path) as raw:
        (not_before,) = raw.execute("SELECT not_before FROM whatsapp_outbound").fetchone()
    assert not_before - db.clock() <= 300_000 + 1_000  # RETRY_BACKOFF.max_s, not a day
