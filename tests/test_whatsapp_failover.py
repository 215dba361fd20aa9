"""WhatsApp workers as real subprocesses on one SQLite file, each sending to its own fake
Graph API (so every send says which worker made it): one sender per account, failover on
kill -9 and on SIGTERM, and a paused (SIGSTOP) old owner fenced out."""

import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_runtime.clock import monotonic_s, now_ms
from backend.local import LocalBackend
from tests.conftest import stays_false, wait_for
from tests.fake_graph import FakeGraph
from tests.runtime_process import RuntimeProcess, base_env

ACCOUNT = "acct"
TTL_MS = 5000
SEND_DELAY_S = 0.02
"""Each fake Graph API answers after this long: 200 messages take ~4 s, so a kill lands
mid-stream."""


class Senders:
    """Workers of role `whatsapp` for ACCOUNT, and the fake Graph API of each."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.admin = LocalBackend(db)
        self.graphs: dict[str, FakeGraph] = {}
        self.workers: dict[str, RuntimeProcess] = {}

    def start(self, name: str) -> RuntimeProcess:
        graph = FakeGraph().start()
        graph.delay_s = SEND_DELAY_S
        self.graphs[name] = graph
        env = base_env(
            self.db,
            AGENT_ROLE="whatsapp-egress",
            LOG_LEVEL="INFO",
            WORKER_ID=name,
            WHATSAPP_ACCOUNT_ID=ACCOUNT,
            WHATSAPP_TRANSPORT="cloud",
            WHATSAPP_GRAPH_URL=graph.url,
            WHATSAPP_ACCESS_TOKEN="token",
            WHATSAPP_PHONE_NUMBER_ID="1234",
            WHATSAPP_LEASE_TTL_MS=str(TTL_MS),
            WHATSAPP_CLAIM_LOCK_MS="3000",
            WHATSAPP_SEND_TIMEOUT_MS="1000",
        )
        self.workers[name] = RuntimeProcess(env)
        return self.workers[name]

    def sent_by(self, name: str) -> list[str]:
        return [str(r.text) for r in self.graphs[name].sent]

    def all_sent(self) -> Counter[str]:
        return Counter(text for name in self.graphs for text in self.sent_by(name))

    def holder(self) -> str | None:
        """The worker whose live lease the backend holds (owner ids are WORKER_ID/...)."""
        lease = self.admin.get_lease(ACCOUNT)
        if lease is None or lease.expires_at <= now_ms():
            return None
        return lease.owner_id.split("/")[0]

    def stop(self) -> None:
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGCONT)
            worker.stop()
        for graph in self.graphs.values():
            graph.stop()
        self.admin.close()


@pytest.fixture
def senders(tmp_path: Path) -> Iterator[Senders]:
    created = Senders(tmp_path / "wa.db")
    try:
        yield created
    finally:
        created.stop()


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[LocalBackend]:
    backend = LocalBackend(tmp_path / "wa.db")
    yield backend
    backend.close()


def queue(admin: LocalBackend, count: int, prefix: str = "m") -> set[str]:
    texts = {f"{prefix}{i}" for i in range(count)}
    for text in sorted(texts):
        admin.enqueue_outbound(ACCOUNT, "15550001", text)
    return texts


def test_go_no_go_one_owner_sends_everything_once_and_keeps_the_lease(
    senders: Senders, admin: LocalBackend
) -> None:
    first = senders.start("w1")
    wait_for(lambda: senders.holder() == "w1", timeout_s=10, what="w1 holds the lease")
    senders.start("w2")
    texts = queue(admin, 200)
    wait_for(lambda: set(senders.all_sent()) == texts, timeout_s=30, what="200 sent")
    assert senders.all_sent() == Counter(dict.fromkeys(texts, 1))  # each exactly once
    assert senders.sent_by("w2") == []
    # The standby keeps trying and never takes over a healthy lease (renewed every TTL/3).
    assert stays_false(lambda: senders.holder() == "w2", 2 * TTL_MS / 1000)
    lease = admin.get_lease(ACCOUNT)
    assert lease is not None
    assert lease.epoch == 1
    assert first.health()["lease"]["held"]


def test_kill_9_the_owner_mid_stream_the_standby_sends_within_ttl_plus_3_s(
    senders: Senders, admin: LocalBackend
) -> None:
    senders.start("w1")
    wait_for(lambda: senders.holder() == "w1", timeout_s=10, what="w1 holds the lease")
    senders.start("w2")
    texts = queue(admin, 200)
    wait_for(lambda: len(senders.sent_by("w1")) >= 50, timeout_s=20, what="w1 mid-stream")
    senders.workers["w1"].proc.kill()
    killed_s = monotonic_s()
    wait_for(lambda: senders.sent_by("w2"), timeout_s=TTL_MS / 1000 + 5, what="w2 sending")
    assert monotonic_s() - killed_s <= TTL_MS / 1000 + 3
    wait_for(lambda: set(senders.all_sent()) == texts, timeout_s=30, what="nothing lost")
    duplicates = sum(count - 1 for count in senders.all_sent().values())
    assert duplicates <= 10  # at most the batch in flight at the kill (BATCH_SIZE)
    print(f"duplicates after kill -9 mid-stream: {duplicates}")  # reported, see the note


def test_sigterm_the_owner_the_standby_sends_within_3_s(
    senders: Senders, admin: LocalBackend
) -> None:
    owner = senders.start("w1")
    wait_for(lambda: senders.holder() == "w1", timeout_s=10, what="w1 holds the lease")
    senders.start("w2")
    owner.signal(signal.SIGTERM)
    stopped_s = monotonic_s()
    assert owner.proc.wait(timeout=5) == 0
    queue(admin, 5)
    wait_for(lambda: len(senders.sent_by("w2")) == 5, timeout_s=5, what="w2 sends")
    assert monotonic_s() - stopped_s <= 3 + 1  # + the time to queue and send five
    assert any("lease of acct released: True" in line for line in owner.lines())


def test_a_paused_old_owner_sends_nothing_after_the_takeover_and_steps_down(
    senders: Senders, admin: LocalBackend
) -> None:
    old = senders.start("w1")
    wait_for(lambda: senders.holder() == "w1", timeout_s=10, what="w1 holds the lease")
    senders.start("w2")
    queue(admin, 100, "before")
    wait_for(lambda: len(senders.sent_by("w1")) >= 20, timeout_s=20, what="w1 mid-stream")
    old.proc.send_signal(signal.SIGSTOP)  # paused, claimed messages in hand
    wait_for(lambda: senders.holder() == "w2", timeout_s=TTL_MS / 1000 + 5, what="takeover")
    queue(admin, 20, "after")
    sent_by_old = len(senders.sent_by("w1"))
    old.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: not old.health()["lease"]["held"], timeout_s=5, what="w1 steps down")
    wait_for(
        lambda: all(senders.all_sent()[f"after{i}"] for i in range(20)), timeout_s=20, what="after"
    )
    assert len(senders.sent_by("w1")) == sent_by_old  # not one send after the pause
    assert senders.sent_by("w1")
    assert not any(t.startswith("after") for t in senders.sent_by("w1"))
