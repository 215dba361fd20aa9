"""Jobs on the embedded backend, on a fake clock: one job at a time per agent and per
conversation in queue order, lock expiry counted as an attempt, claims fenced by their
token, the reply and the turns written with the completion, inbound messages routed."""

from pathlib import Path

import pytest

from agent_runtime.errors import AgentNotFound, Fenced, InvalidArgument
from backend.local import LocalBackend
from messages.jobs import DirectConversation, Usage, WhatsAppConversation
from messages.whatsapp import InboundMessage
from tests.conftest import T0, FakeClock

USAGE = Usage(input_tokens=3, output_tokens=5)
CHAT = WhatsAppConversation(channel="whatsapp", account_id="acct", contact="15550001")
SESSION = "agent:session"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(tmp_path: Path, clock: FakeClock) -> LocalBackend:
    return LocalBackend(tmp_path / "jobs.db", clock=clock)


def claim(backend: LocalBackend, *agent_ids: str, limit: int = 10) -> list[str]:
    claimed = backend.claim_jobs(agent_ids, "w1", limit=limit, lock_ms=1000, max_attempts=2)
    return [job.input for job in claimed]


def complete(
    backend: LocalBackend, job_id: str, token: str, result: str, steps: int = 1
) -> str | None:
    return backend.complete_job(
        job_id, token, session_key=SESSION, result=result, usage=USAGE, steps=steps
    )


def test_one_job_at_a_time_per_agent_in_queue_order(backend: LocalBackend) -> None:
    a = backend.create_agent("a", 5000).id
    b = backend.create_agent("b", 5000).id
    for text in ("a1", "a2"):
        backend.enqueue_job(a, text)
    backend.enqueue_job(b, "b1")
    assert claim(backend, a, b) == ["a1", "b1"]
    assert claim(backend, a, b) == []  # a2 waits for a1
    (a1,) = [j for j in backend.list_jobs(a) if j["input"] == "a1"]
    assert (a1["status"], a1["workerId"]) == ("running", "w1")


def test_a_job_backing_off_holds_back_the_later_ones(
    backend: LocalBackend, clock: FakeClock
) -> None:
    a = backend.create_agent("a", 5000).id
    first = backend.enqueue_job(a, "first")
    backend.enqueue_job(a, "second")
    (job,) = backend.claim_jobs([a], "w1", limit=5, lock_ms=1000, max_attempts=3)
    assert job.id == first
    status = backend.fail_job(
        first, job.claim_token, error="429", retry_at_ms=T0 + 500, max_attempts=3
    )
    assert status == "queued"
    assert claim(backend, a) == []  # not "second": order holds
    clock.now = T0 + 500
    assert claim(backend, a) == ["first"]


def test_an_expired_lock_counts_an_attempt_and_the_last_one_is_dead(
    backend: LocalBackend, clock: FakeClock
) -> None:
    a = backend.create_agent("a", 5000).id
    job_id = backend.enqueue_job(a, "x")
    (first,) = backend.claim_jobs([a], "w1", limit=1, lock_ms=1000, max_attempts=2)
    clock.now = T0 + 1000  # the worker died: its lock expired
    (second,) = backend.claim_jobs([a], "w2", limit=1, lock_ms=1000, max_attempts=2)
    assert second.attempts == 1
    with pytest.raises(Fenced):  # the first worker can never finish it now
        complete(backend, job_id, first.claim_token, "late")
    clock.now = T0 + 2000
    assert backend.claim_jobs([a], "w3", limit=1, lock_ms=1000, max_attempts=2) == []
    job = backend.get_job(job_id)
    assert (job["status"], job["attempts"], job["error"]) == ("dead", 2, "claim lock expired")


def test_renew_keeps_the_claim_and_refuses_a_stale_one(
    backend: LocalBackend, clock: FakeClock
) -> None:
    a = backend.create_agent("a", 5000).id
    job_id = backend.enqueue_job(a, "x")
    (job,) = backend.claim_jobs([a], "w1", limit=1, lock_ms=1000, max_attempts=3)
    clock.now = T0 + 900
    assert backend.renew_job(job_id, job.claim_token, 1000) == T0 + 1900
    clock.now = T0 + 1500  # past the first lock, within the renewed one
    assert backend.claim_jobs([a], "w2", limit=1, lock_ms=1000, max_attempts=3) == []
    with pytest.raises(Fenced):
        backend.renew_job(job_id, "not-the-token", 1000)


def test_completing_a_conversation_turn_queues_the_reply_once_with_the_turns(
    backend: LocalBackend, clock: FakeClock
) -> None:
    a = backend.create_agent("a", 5000).id
    job_id = backend.enqueue_job(a, "hello?", CHAT)
    (job,) = backend.claim_jobs([a], "w1", limit=1, lock_ms=1000, max_attempts=3)
    reply = complete(backend, job_id, job.claim_token, "hi!", steps=2)
    again = complete(backend, job_id, job.claim_token, "hi!", steps=2)
    assert reply is not None
    assert again == reply
    (queued,) = backend.list_outbox("acct")
    assert (queued["id"], queued["to"], queued["text"]) == (reply, "15550001", "hi!")
    turns = backend.conversation_history(CHAT, SESSION, 20)
    assert [(t.role, t.content) for t in turns] == [("user", "hello?"), ("assistant", "hi!")]
    done = backend.get_job(job_id)
    assert (done["status"], done["usage"], done["steps"]) == (
        "done",
        {"inputTokens": 3, "outputTokens": 5},
        2,
    )
    with pytest.raises(Fenced):  # the other mark after one
        backend.fail_job(job_id, job.claim_token, error="x", retry_at_ms=None, max_attempts=3)


def test_a_conversation_runs_one_turn_at_a_time_even_across_agents(
    backend: LocalBackend,
) -> None:
    a = backend.create_agent("a", 5000).id
    b = backend.create_agent("b", 5000).id
    backend.enqueue_job(a, "first", CHAT)
    backend.enqueue_job(b, "second", CHAT)
    assert claim(backend, a, b) == ["first"]
    assert claim(backend, a, b) == []


def test_inbound_messages_queue_one_job_each_for_the_routed_agent(
    backend: LocalBackend,
) -> None:
    a = backend.create_agent("a", 5000).id
    inbound = [
        InboundMessage(provider_id="wamid.in1", sender="15550001", text="hi", timestamp=1),
        InboundMessage(provider_id="wamid.in2", sender="15550001", text="", timestamp=2),
    ]
    backend.record_webhook("acct", inbound, [], agent_id=a)
    backend.record_webhook("acct", inbound, [], agent_id=a)  # Meta's retry: no new job
    (job,) = backend.list_jobs(a)
    assert (job["input"], job["conversation"]) == (
        "hi",
        {"channel": "whatsapp", "accountId": "acct", "contact": "15550001"},
    )
    backend.record_webhook(
        "acct",
        [InboundMessage(provider_id="wamid.in3", sender="15550001", text="x", timestamp=3)],
        [],
        agent_id="no-such-agent",
    )
    assert len(backend.list_inbox("acct")) == 3  # recorded; no job for an unknown agent
    assert len(backend.list_jobs()) == 1


def test_enqueue_checks_the_agent_and_the_input(backend: LocalBackend) -> None:
    a = backend.create_agent("a", 5000).id
    with pytest.raises(AgentNotFound):
        backend.enqueue_job("nobody", "x")
    with pytest.raises(InvalidArgument, match="input"):
        backend.enqueue_job(a, "")
    first = backend.enqueue_job(a, "x", idempotency_key="k")
    assert backend.enqueue_job(a, "x", idempotency_key="k") == first


def test_a_direct_conversation_keeps_its_turns_per_session_and_sends_nothing(
    backend: LocalBackend,
) -> None:
    a = backend.create_agent("a", 5000).id
    chat = DirectConversation(channel="direct", id="ticket-7")
    first = backend.enqueue_job(a, "one", chat)
    (job,) = backend.claim_jobs([a], "w1", limit=1, lock_ms=1000, max_attempts=3)
    assert job.conversation == chat
    assert complete(backend, first, job.claim_token, "echo: one") is None
    assert backend.list_outbox("acct") == []
    turns = backend.conversation_history(chat, SESSION, 20)
    assert [t.content for t in turns] == ["one", "echo: one"]
    assert backend.conversation_history(chat, "another-session", 20) == []
    assert backend.get_job(first)["conversation"] == {"channel": "direct", "id": "ticket-7"}


def test_at_most_one_wakeup_job_is_pending_per_agent(backend: LocalBackend) -> None:
    a = backend.create_agent("a", 5000).id
    first = backend.enqueue_job(a, "check your work", kind="wakeup")
    assert backend.enqueue_job(a, "check your work", kind="wakeup") == first
    (job,) = backend.claim_jobs([a], "w1", limit=1, lock_ms=1000, max_attempts=3)
    assert backend.enqueue_job(a, "check your work", kind="wakeup") == first  # running
    complete(backend, first, job.claim_token, "done")
    second = backend.enqueue_job(a, "check your work", kind="wakeup")
    assert second != first
    assert backend.get_job(second)["kind"] == "wakeup"
    assert backend.enqueue_job(a, "a task") != backend.enqueue_job(a, "a task")


def test_a_released_claim_is_queued_again_without_an_attempt_and_fenced(
    backend: LocalBackend,
) -> None:
    a = backend.create_agent("a", 5000).id
    job_id = backend.enqueue_job(a, "x")
    (job,) = backend.claim_jobs([a], "w1", limit=1, lock_ms=60_000, max_attempts=3)
    assert backend.release_job(job_id, "not-the-token") is False
    assert backend.release_job(job_id, job.claim_token) is True
    assert backend.release_job(job_id, job.claim_token) is False
    row = backend.get_job(job_id)
    assert (row["status"], row["attempts"], row["workerId"]) == ("queued", 0, None)
    with pytest.raises(Fenced):
        complete(backend, job_id, job.claim_token, "late")
    (again,) = backend.claim_jobs([a], "w2", limit=1, lock_ms=60_000, max_attempts=3)
    assert again.id == job_id


def test_the_jobs_version_moves_when_a_job_becomes_claimable_by_an_event(
    backend: LocalBackend, clock: FakeClock
) -> None:
    a = backend.create_agent("a", 5000).id
    versions = [backend.jobs_version()]

    def moved() -> bool:
        versions.append(backend.jobs_version())
        return versions[-1] != versions[-2]

    job_id = backend.enqueue_job(a, "x")
    assert moved()
    (job,) = backend.claim_jobs([a], "w1", limit=1, lock_ms=1000, max_attempts=3)
    assert not moved()  # a claim takes work; nothing new to claim
    backend.fail_job(job_id, job.claim_token, error="e", retry_at_ms=T0, max_attempts=3)
    assert moved()
    (job,) = backend.claim_jobs([a], "w1", limit=1, lock_ms=1000, max_attempts=3)
    assert backend.release_job(job_id, job.claim_token)
    assert moved()
    backend.claim_jobs([a], "w1", limit=1, lock_ms=1000, max_attempts=3)
    clock.now = T0 + 5000
    (job,) = backend.claim_jobs([a], "w2", limit=1, lock_ms=1000, max_attempts=3)
    assert moved()  # the expired lock put it back first
    complete(backend, job_id, job.claim_token, "done")
    assert not moved()


def test_removing_an_agent_fails_its_jobs_and_fences_the_running_claim(
    backend: LocalBackend,
) -> None:
    a = backend.create_agent("a", 5000).id
    running = backend.enqueue_job(a, "x")
    queued = backend.enqueue_job(a, "y")
    (job,) = backend.claim_jobs([a], "w1", limit=1, lock_ms=60_000, max_attempts=3)
    backend.remove_agent(a)
    for job_id in (running, queued):
        row = backend.get_job(job_id)
        assert (row["status"], row["error"]) == ("failed", "agent removed")
    with pytest.raises(Fenced):
        complete(backend, running, job.claim_token, "late")
