"""The Convex adapter against a fake deployment on 127.0.0.1: mapping, errors, retries,
lists read page by page and batches written in chunks, and the service key kept out of
every log line, error and repr."""

import http.server
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from agent_runtime.clock import now_ms
from agent_runtime.errors import (
    AgentNotFound,
    BackendUnavailable,
    Fenced,
    FunctionError,
    InvalidAgent,
    InvalidArgument,
    JobNotFound,
    MessageNotFound,
    ServiceKeyRejected,
    WorkerIdTaken,
)
from backend.convex import CLIENT_VERSION, PRESENCE_CHUNK, ConvexBackend
from messages import Heartbeat
from messages.jobs import DirectConversation, Usage, WhatsAppConversation
from messages.whatsapp import InboundMessage, StatusUpdate
from tests.conftest import SECRET
from tests.fake_convex import FakeConvex
from tests.runtime_process import base_env, cli


def adapter(fake: FakeConvex, secret: str = SECRET, read_timeout_s: float = 2.0) -> ConvexBackend:
    return ConvexBackend(
        fake.url, SecretStr(secret), connect_timeout_s=1.0, read_timeout_s=read_timeout_s
    )


@pytest.fixture
def convex(convex_deployment: FakeConvex) -> Iterator[ConvexBackend]:
    backend = adapter(convex_deployment)
    yield backend
    backend.close()


def calls_to(fake: FakeConvex, path: str) -> list[Any]:
    return [r for r in fake.requests if r.path == path]


def test_every_port_call_round_trips(convex: ConvexBackend) -> None:
    version = convex.agents_version()
    record = convex.create_agent("scout", 5000)
    assert (record.name, record.heartbeat_interval_ms, record.session_key) == (
        "scout",
        5000,
        f"agent:{record.id}",
    )
    assert convex.agents_version() != version
    beat_at = now_ms()
    ahead = Heartbeat(agent_id=record.id, at_ms=beat_at + 120_000)
    assert convex.record_heartbeats([ahead]) == [record.id]  # refused: 2 min in the future
    assert convex.record_heartbeats([Heartbeat(agent_id=record.id, at_ms=beat_at)]) == []
    assert convex.list_presence() == [
        {"agentId": record.id, "status": "online", "lastHeartbeatAt": beat_at}
    ]
    updated = convex.update_agent(record.id, heartbeat_interval_ms=1000, session_key="s2")
    assert (updated.heartbeat_interval_ms, updated.session_key) == (1000, "s2")
    (row,) = convex.list_agents()
    assert row["id"] == record.id
    assert row["heartbeatIntervalMs"] == 1000
    convex.mark_offline([record.id])
    assert convex.list_presence()[0]["status"] == "offline"
    convex.remove_agent(record.id)
    assert convex.list_agents() == []
    before = convex.agents_version()
    assert convex.register_worker("w2", "i2", 60_000) == ["w2"]
    assert convex.register_worker("w1", "i1", 60_000) == ["w1", "w2"]
    assert convex.list_workers() == ["w1", "w2"]
    assert convex.agents_version() != before
    with pytest.raises(WorkerIdTaken, match="'w1'"):
        convex.register_worker("w1", "another-process", 60_000)
    assert not convex.deregister_worker("w1", "another-process")
    assert convex.deregister_worker("w1", "i1")
    assert convex.list_workers() == ["w2"]


def test_every_request_carries_the_service_key(
    convex: ConvexBackend, convex_deployment: FakeConvex
) -> None:
    convex.list_agents()
    convex.create_agent("a", 1000)
    assert all(r.args.get("serviceKey") == SECRET for r in convex_deployment.requests)


def test_coded_errors_map_to_typed_errors_without_retry(
    convex: ConvexBackend, convex_deployment: FakeConvex
) -> None:
    with pytest.raises(AgentNotFound, match="'nope'"):
        convex.update_agent("nope", name="x")
    with pytest.raises(AgentNotFound):
        convex.remove_agent("nope")
    with pytest.raises(InvalidAgent):
        convex.create_agent("x", 0)
    assert len(calls_to(convex_deployment, "service/agents:update")) == 1
    assert len(calls_to(convex_deployment, "service/agents:create")) == 1


def test_wrong_key_is_rejected_once_and_never_shown(
    convex_deployment: FakeConvex, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = adapter(convex_deployment, secret="not-the-secret-xyz")
    with pytest.raises(ServiceKeyRejected) as raised:
        wrong.list_agents()
    assert len(convex_deployment.requests) == 1
    assert "AGENT_SECRET" in str(raised.value)
    for text in (str(raised.value), repr(raised.value), repr(wrong), caplog.text):
        assert "not-the-secret-xyz" not in text
        assert SECRET not in text
    wrong.close()


@pytest.mark.parametrize("fault", ["500", "503", "429", "malformed", "reset"])
def test_queries_retry_server_and_transport_failures(
    convex: ConvexBackend, convex_deployment: FakeConvex, fault: str
) -> None:
    convex_deployment.fail_next(fault, count=2)
    assert convex.list_agents() == []
    assert [r.fault for r in calls_to(convex_deployment, "service/agents:list")] == [
        fault,
        fault,
        None,
    ]


def test_idempotent_mutation_retries_a_timeout(
    convex_deployment: FakeConvex,
) -> None:
    convex = adapter(convex_deployment, read_timeout_s=0.3)
    convex_deployment.hang_s = 2.0
    convex_deployment.fail_next("timeout", path="service/presence:recordHeartbeats")
    convex.record_heartbeats([Heartbeat(agent_id="a", at_ms=1)])
    faults = [r.fault for r in calls_to(convex_deployment, "service/presence:recordHeartbeats")]
    assert faults == ["timeout", None]
    convex.close()


@pytest.mark.parametrize("fault", ["500", "malformed", "reset"])
def test_non_idempotent_mutation_is_not_retried_when_it_may_have_run(
    convex: ConvexBackend, convex_deployment: FakeConvex, fault: str
) -> None:
    convex_deployment.fail_next(fault, path="service/agents:create")
    with pytest.raises(BackendUnavailable):
        convex.create_agent("once", 1000)
    assert len(calls_to(convex_deployment, "service/agents:create")) == 1


def test_non_idempotent_mutation_is_retried_when_refused_before_running(
    convex: ConvexBackend, convex_deployment: FakeConvex
) -> None:
    convex_deployment.fail_next("429", path="service/agents:create")
    convex.create_agent("once", 1000)
    assert [r.fault for r in calls_to(convex_deployment, "service/agents:create")] == ["429", None]
    assert len(convex.list_agents()) == 1


def test_retries_give_up_after_the_last_attempt(
    convex: ConvexBackend, convex_deployment: FakeConvex
) -> None:
    convex_deployment.fail_next("503", count=10)
    with pytest.raises(BackendUnavailable, match="server error 503"):
        convex.list_agents()
    assert len(convex_deployment.requests) == 4


def test_change_signal_is_read_once_its_next_poll_is_the_retry(
    convex: ConvexBackend, convex_deployment: FakeConvex
) -> None:
    convex_deployment.fail_next("503", count=10)
    with pytest.raises(BackendUnavailable, match="server error 503"):
        convex.agents_version()
    assert len(convex_deployment.requests) == 1


def test_auth_rejection_by_the_platform_is_not_retried(
    convex: ConvexBackend, convex_deployment: FakeConvex
) -> None:
    convex_deployment.fail_next("unauthorized", count=3)
    with pytest.raises(ServiceKeyRejected):
        convex.list_agents()
    assert len(convex_deployment.requests) == 1


def test_unknown_function_is_a_function_error_not_retried(
    convex: ConvexBackend, convex_deployment: FakeConvex
) -> None:
    with pytest.raises(FunctionError, match="service/agents:nope"):
        convex._call("query", "service/agents:nope", {}, idempotent=True)
    assert len(convex_deployment.requests) == 1


def test_unreachable_deployment_is_unavailable() -> None:
    backend = ConvexBackend(
        "http://127.0.0.1:9", SecretStr(SECRET), connect_timeout_s=0.2, read_timeout_s=0.2
    )
    with pytest.raises(BackendUnavailable, match="cannot connect"):
        backend.list_agents()
    backend.close()


def test_server_text_echoing_the_key_is_redacted(tmp_path: Any) -> None:
    def echo(kind: str, path: str, args: dict[str, Any]) -> Any:
        raise RuntimeError(f"bad call with {args}")  # an uncoded error that echoes its args

    with FakeConvex(echo) as fake:
        backend = adapter(fake)
        with pytest.raises(FunctionError) as raised:
            backend.list_agents()
        assert "bad call with" in str(raised.value)
        assert SECRET not in str(raised.value)
        assert "***" in str(raised.value)
        backend.close()


class _NotUtf8(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b"\xff\xfe not utf-8"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_undecodable_answer_is_unavailable_not_a_crash() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotUtf8)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    backend = ConvexBackend(f"http://127.0.0.1:{server.server_address[1]}", SecretStr(SECRET))
    try:
        with pytest.raises(BackendUnavailable, match="unreadable answer"):
            backend.list_agents()
    finally:
        backend.close()
        server.shutdown()


def test_client_header_version_is_semver() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", CLIENT_VERSION)


def test_every_whatsapp_call_round_trips_and_fencing_maps_to_typed_errors(
    convex: ConvexBackend,
) -> None:
    lease = convex.acquire_lease("acct", "owner-a", 60_000)
    assert (lease.owner_id, lease.epoch, lease.held) == ("owner-a", 1, True)
    assert not convex.acquire_lease("acct", "owner-b", 60_000).held
    first = convex.enqueue_outbound("acct", "+15550001", "hello", idempotency_key="k1")
    assert convex.enqueue_outbound("acct", "+15550001", "hello", idempotency_key="k1") == first
    second = convex.enqueue_outbound("acct", "15550002", "again")
    with pytest.raises(InvalidArgument, match="to"):
        convex.enqueue_outbound("acct", "not a number", "x")
    one, two = convex.claim_outbound("acct", "owner-a", 1, limit=10, lock_ms=60_000, max_attempts=3)
    assert (one.id, one.to, two.id) == (first, "15550001", second)
    convex.mark_sent(one.id, one.claim_token, 1, "wamid.1")
    convex.mark_sent(one.id, one.claim_token, 1, "wamid.1")  # a repeat answers as before
    assert (
        convex.mark_failed(
            two.id, two.claim_token, 1, error="131000", retry_at_ms=0, max_attempts=3
        )
        == "queued"
    )
    with pytest.raises(Fenced):
        convex.mark_sent(two.id, "not-the-token", 1, "wamid.2")
    with pytest.raises(MessageNotFound):
        convex.release_outbound("no-such-message", "t")
    recorded = convex.record_webhook(
        "acct",
        [InboundMessage(provider_id="in.1", sender="15550001", text="hi", timestamp=5)],
        [StatusUpdate(provider_id="wamid.1", status="delivered", timestamp=6)],
    )
    assert (recorded.messages, recorded.statuses, recorded.duplicates) == (1, 1, 0)
    outbox = {row["id"]: row for row in convex.list_outbox("acct")}
    assert (outbox[first]["status"], outbox[first]["wamid"]) == ("delivered", "wamid.1")
    assert outbox[second]["lastError"] == "131000"
    assert [m["providerId"] for m in convex.list_inbox("acct")] == ["in.1"]
    assert convex.release_lease("acct", "owner-a", 1)
    taken = convex.acquire_lease("acct", "owner-b", 60_000)
    assert (taken.owner_id, taken.epoch) == ("owner-b", 2)
    with pytest.raises(Fenced):
        convex.claim_outbound("acct", "owner-a", 1, limit=1, lock_ms=60_000, max_attempts=3)
    stored = convex.get_lease("acct")
    assert stored is not None
    assert (stored.owner_id, stored.epoch) == ("owner-b", 2)


def test_every_job_call_round_trips_and_maps_its_errors(convex: ConvexBackend) -> None:
    agent = convex.create_agent("worker-bee", 5000)
    chat = WhatsAppConversation(channel="whatsapp", account_id="acct", contact="+15550001")
    version = convex.jobs_version()
    job_id = convex.enqueue_job(agent.id, "hello?", chat, idempotency_key="k1")
    assert convex.jobs_version() != version
    assert convex.enqueue_job(agent.id, "hello?", chat, idempotency_key="k1") == job_id
    with pytest.raises(AgentNotFound):
        convex.enqueue_job("no-such-agent", "x")
    (job,) = convex.claim_jobs([agent.id], "w1", limit=5, lock_ms=60_000, max_attempts=3)
    assert (job.id, job.input, job.conversation) == (
        job_id,
        "hello?",
        chat.model_copy(update={"contact": "15550001"}),
    )
    assert convex.renew_job(job_id, job.claim_token, 60_000) > 0
    with pytest.raises(Fenced):
        convex.renew_job(job_id, "stale-token", 60_000)
    usage = Usage(input_tokens=1, output_tokens=2)
    reply = convex.complete_job(
        job_id, job.claim_token, session_key="s1", result="hi!", usage=usage, steps=1
    )
    assert reply is not None
    assert [m["id"] for m in convex.list_outbox("acct")] == [reply]
    stored_chat = chat.model_copy(update={"contact": "15550001"})
    turns = convex.conversation_history(stored_chat, "s1", 10)
    assert [t.role for t in turns] == ["user", "assistant"]
    assert convex.conversation_history(stored_chat, "s2", 10) == []
    assert convex.get_job(job_id)["status"] == "done"
    assert [j["id"] for j in convex.list_jobs(agent.id, "done")] == [job_id]
    with pytest.raises(JobNotFound):
        convex.get_job("no-such-job")
    second = convex.enqueue_job(agent.id, "again")
    (claimed,) = convex.claim_jobs([agent.id], "w1", limit=5, lock_ms=60_000, max_attempts=3)
    assert convex.release_job(second, claimed.claim_token)
    assert not convex.release_job(second, claimed.claim_token)
    (claimed,) = convex.claim_jobs([agent.id], "w1", limit=5, lock_ms=60_000, max_attempts=3)
    assert (
        convex.fail_job(second, claimed.claim_token, error="boom", retry_at_ms=None, max_attempts=3)
        == "failed"
    )
    wakeup = convex.enqueue_job(agent.id, "anything new?", kind="wakeup")
    assert convex.enqueue_job(agent.id, "anything new?", kind="wakeup") == wakeup
    assert convex.get_job(wakeup)["kind"] == "wakeup"
    direct = DirectConversation(channel="direct", id="cli-1")
    third = convex.enqueue_job(agent.id, "direct", direct)
    assert convex.get_job(third)["conversation"] == {"channel": "direct", "id": "cli-1"}


def test_agent_settings_round_trip_and_clear(convex: ConvexBackend) -> None:
    record = convex.create_agent(
        "scout",
        5000,
        instructions="Be brief.",
        model="gpt-4o-mini",
        wakeup_prompt="Anything new?",
        wakeup_interval_ms=60_000,
    )
    assert (record.instructions, record.model, record.wakeup_interval_ms) == (
        "Be brief.",
        "gpt-4o-mini",
        60_000,
    )
    (row,) = convex.list_agents()
    assert (row["wakeupPrompt"], row["wakeupIntervalMs"]) == ("Anything new?", 60_000)
    with pytest.raises(InvalidAgent, match="go together"):
        convex.update_agent(record.id, wakeup_prompt="")
    kept = convex.update_agent(record.id, name="scout-2")  # None leaves the settings as they are
    assert (kept.instructions, kept.wakeup_prompt) == ("Be brief.", "Anything new?")
    cleared = convex.update_agent(
        record.id, instructions="", model="", wakeup_prompt="", wakeup_interval_ms=0
    )
    assert (cleared.instructions, cleared.model, cleared.wakeup_prompt) == (None, None, None)
    assert cleared.wakeup_interval_ms is None
    with pytest.raises(InvalidAgent, match="1000"):
        convex.create_agent("x", 5000, wakeup_prompt="p", wakeup_interval_ms=999)


def test_a_release_is_retried_after_a_lost_answer_the_jobs_version_is_read_once(
    convex: ConvexBackend, convex_deployment: FakeConvex
) -> None:
    agent = convex.create_agent("a", 5000)
    job_id = convex.enqueue_job(agent.id, "one")
    (job,) = convex.claim_jobs([agent.id], "w1", limit=1, lock_ms=60_000, max_attempts=3)
    convex_deployment.fail_next("503", path="service/jobs:release")  # may have run
    assert convex.release_job(job_id, job.claim_token)
    assert len(calls_to(convex_deployment, "service/jobs:release")) == 2
    convex_deployment.fail_next("503", count=10, path="service/jobs:version")
    with pytest.raises(BackendUnavailable, match="server error 503"):
        convex.jobs_version()
    assert len(calls_to(convex_deployment, "service/jobs:version")) == 1


def test_an_enqueue_without_a_key_is_not_retried_after_a_lost_answer(
    convex: ConvexBackend, convex_deployment: FakeConvex
) -> None:
    agent = convex.create_agent("a", 5000)
    convex_deployment.fail_next("503", path="service/jobs:enqueue")
    with pytest.raises(BackendUnavailable):
        convex.enqueue_job(agent.id, "once", kind="wakeup")
    assert len(calls_to(convex_deployment, "service/jobs:enqueue")) == 1
    convex_deployment.fail_next("503", path="service/jobs:enqueue")
    job_id = convex.enqueue_job(agent.id, "keyed", idempotency_key="k")
    assert len(calls_to(convex_deployment, "service/jobs:enqueue")) == 3
    assert convex.enqueue_job(agent.id, "keyed", idempotency_key="k") == job_id


def test_a_delivery_over_the_functions_limit_is_recorded_in_chunks(
    convex: ConvexBackend, convex_deployment: FakeConvex
) -> None:
    messages = [
        InboundMessage(provider_id=f"in.{i}", sender="15550001", text=f"m{i}", timestamp=i)
        for i in range(2500)
    ]
    recorded = convex.record_webhook("acct", messages, [])
    assert (recorded.messages, recorded.duplicates) == (2500, 0)
    assert len(calls_to(convex_deployment, "service/whatsapp:recordWebhook")) == 2500 / 100
    assert len(convex.list_inbox("acct")) == 1000  # the listing is bounded; all are stored
    assert len(calls_to(convex_deployment, "service/whatsapp:listInbox")) == 1  # one page
    assert convex.record_webhook("acct", messages, []).duplicates == 2500
    assert convex_deployment.refusals == []


def test_lists_are_read_page_by_page_pages_cut_by_bytes(
    convex: ConvexBackend, convex_deployment: FakeConvex
) -> None:
    # About 16 KB each: a 1 MiB page holds about 64 of them.
    ids = [convex.create_agent(f"a{n}", 5000, instructions="x" * 16_384).id for n in range(150)]
    convex.register_worker("w1", "i1", 60_000)
    assert [row["id"] for row in convex.list_agents()] == ids
    agents, workers = convex.agents_and_workers()
    assert ([row["id"] for row in agents], workers) == (ids, ["w1"])
    assert [row["agentId"] for row in convex.list_presence()] == ids
    for path in ("service/agents:list", "service/agents:snapshot"):
        cursors = [r.args.get("cursor") for r in calls_to(convex_deployment, path)]
        assert len(cursors) == 3, path
        assert cursors[0] is None, path
        assert all(isinstance(cursor, str) for cursor in cursors[1:]), path
    assert convex_deployment.refusals == []


def test_presence_writes_go_in_chunks_under_the_functions_maximum(
    convex: ConvexBackend, convex_deployment: FakeConvex
) -> None:
    record = convex.create_agent("known", 5000)
    # Unknown ids are ignored: a chunk of them costs what a chunk of agents does.
    ids = [record.id] + [f"unknown-{n}" for n in range(2 * PRESENCE_CHUNK + 199)]
    assert convex.record_heartbeats([Heartbeat(agent_id=i, at_ms=now_ms()) for i in ids]) == []
    convex.mark_offline(ids)
    beats = [
        len(r.args["beats"])
        for r in calls_to(convex_deployment, "service/presence:recordHeartbeats")
    ]
    marks = [
        len(r.args["agentIds"]) for r in calls_to(convex_deployment, "service/presence:markOffline")
    ]
    assert beats == marks == [PRESENCE_CHUNK, PRESENCE_CHUNK, 200]
    assert convex.list_presence()[0]["status"] == "offline"
    assert convex_deployment.refusals == []
    # The functions take at most 1000: a caller that does not chunk learns it at once.
    body = {
        "path": "service/presence:markOffline",
        "args": {"serviceKey": SECRET, "agentIds": ids[:1001]},
        "format": "json",
    }
    answer = httpx.post(f"{convex_deployment.url}/api/mutation", json=body, timeout=5).json()
    assert answer["errorData"]["code"] == "INVALID_ARGUMENT"


def test_a_create_with_a_key_is_retried_after_a_lost_answer_and_creates_one_agent(
    convex: ConvexBackend, convex_deployment: FakeConvex
) -> None:
    convex_deployment.fail_next("503", path="service/agents:create")  # may have run
    record = convex.create_agent("once", 5000, idempotency_key="cli-1")
    assert len(calls_to(convex_deployment, "service/agents:create")) == 2  # retried
    assert convex.create_agent("once", 5000, idempotency_key="cli-1").id == record.id
    assert [row["id"] for row in convex.list_agents()] == [record.id]
    convex_deployment.fail_next("503", path="service/agents:create")
    with pytest.raises(BackendUnavailable):  # without a key a retry could create two
        convex.create_agent("keyless", 5000)
    assert len(convex.list_agents()) == 1


def test_agents_add_says_the_agent_may_exist_when_it_cannot_know(
    tmp_path: Path, convex_deployment: FakeConvex
) -> None:
    env = base_env(tmp_path / "unused.db", CONVEX_URL=convex_deployment.url, AGENT_SECRET=SECRET)
    convex_deployment.fail_next("503", count=10, path="service/agents:create")
    result = cli(env, "agents", "add", "maybe")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "the agent may have been created: `agent-runtime agents list` shows whether" in line
