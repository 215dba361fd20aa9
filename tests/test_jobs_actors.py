"""Jobs as actors: the Runtime with its JobDispatcher and AgentActors on real SQLite,
with a scripted model whose calls the test holds and releases."""

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from pytest_mock import MockerFixture

from actors.jobs.dispatcher import STATUS_NAME as JOBS
from actors.jobs.models import ChatMessage, EchoProvider, ModelError, ModelReply, ToolCall
from actors.jobs.runner import JobOptions
from actors.runtime import JobsOptions, Runtime, RuntimeOptions
from agent_runtime.errors import BackendUnavailable
from agent_runtime.status import StatusBoard
from agent_runtime.tools import ToolRegistry
from backend.local import LocalBackend
from messages import HeartbeatStatus
from messages.jobs import DirectConversation, JobsStatus, Usage
from tests.conftest import stays_false, wait_for

FAST_OPTIONS = JobOptions(lock_ms=60_000, max_attempts=3, history_turns=20, max_steps=8)


class ScriptedModel:
    """The echo model, except that an input `hold:NAME` waits until `release(NAME)` (and
    then, for `hold:NAME:then-tool`, calls the tool `side_effect`), and `fail:retryable` /
    `fail:permanent` raise. Records every call's messages, and how
    many calls were in progress at most."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gates: dict[str, threading.Event] = {}
        self.calls: list[list[ChatMessage]] = []
        self.started: list[str] = []
        self.in_progress = 0
        self.most_in_progress = 0
        self._echo = EchoProvider()

    def gate(self, name: str) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(name, threading.Event())

    def release(self, name: str) -> None:
        self.gate(name).set()

    def complete(
        self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]], model: str | None
    ) -> ModelReply:
        said = next(m.content or "" for m in reversed(messages) if m.role == "user")
        with self._lock:
            self.calls.append(list(messages))
            self.in_progress += 1
            self.most_in_progress = max(self.most_in_progress, self.in_progress)
        try:
            if said.startswith("hold:") and messages[-1].role == "user":
                name = said.removeprefix("hold:")
                with self._lock:
                    self.started.append(name)
                if not self.gate(name).wait(20):
                    raise AssertionError(f"{name} was never released")
                if name.endswith(":then-tool"):
                    call = ToolCall("call_1", "side_effect", "{}")
                    return ModelReply(None, (call,), Usage(input_tokens=1, output_tokens=1))
            if said == "fail:retryable":
                raise ModelError("rate limited", retryable=True)
            if said == "fail:permanent":
                raise ModelError("bad request", retryable=False)
            return self._echo.complete(messages, tools, model)
        finally:
            with self._lock:
                self.in_progress -= 1

    def close(self) -> None:
        for gate in list(self._gates.values()):
            gate.set()


class ToolLoop:
    """A model that never stops calling a tool."""

    def complete(
        self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]], model: str | None
    ) -> ModelReply:
        call = ToolCall(f"call_{len(messages)}", "current_time", "{}")
        return ModelReply(None, (call,), Usage(input_tokens=1, output_tokens=1), "tool_calls")

    def close(self) -> None:
        pass


@pytest.fixture
def model() -> Iterator[ScriptedModel]:
    scripted = ScriptedModel()
    yield scripted
    scripted.close()


def start(
    backend: LocalBackend,
    board: StatusBoard,
    provider: Any,
    *,
    concurrency: int = 8,
    options: JobOptions = FAST_OPTIONS,
    tools: ToolRegistry | None = None,
) -> Any:
    registry = tools if tools is not None else ToolRegistry()
    if tools is None:
        from agent_runtime.tools import current_time  # noqa: PLC0415 - the built-in

        registry.register(current_time)
    return Runtime.start(
        options=RuntimeOptions(
            runs_agents=True,
            sync_interval_s=60.0,
            worker_id="w1",
            worker_heartbeat_s=0.1,
            worker_ttl_ms=1000,
            jobs=JobsOptions(
                concurrency=concurrency, options=options, provider=provider, tools=registry
            ),
        ),
        backend=backend,
        status_board=board,
        on_fatal=lambda reason: None,
    )


def jobs_status(board: StatusBoard) -> JobsStatus:
    status = board.get(JOBS)
    assert isinstance(status, JobsStatus)
    return status


def status_of(backend: LocalBackend, job_id: str) -> str:
    return str(backend.get_job(job_id)["status"])


def all_done(backend: LocalBackend, *job_ids: str) -> bool:
    return all(status_of(backend, j) == "done" for j in job_ids)


def test_an_agent_runs_its_jobs_in_order_agents_in_parallel_within_the_bound(
    local_backend: LocalBackend, board: StatusBoard, model: ScriptedModel
) -> None:
    a, b, c = (local_backend.create_agent(n, 5000).id for n in ("a", "b", "c"))
    jobs = [
        local_backend.enqueue_job(a, "hold:a1"),
        local_backend.enqueue_job(a, "hold:a2"),
        local_backend.enqueue_job(b, "hold:b1"),
        local_backend.enqueue_job(c, "hold:c1"),
    ]
    start(local_backend, board, model, concurrency=2)
    wait_for(lambda: set(model.started) == {"a1", "b1"}, what="a1 and b1 running")
    # a2 waits for a1 (its agent's order), c1 for a free slot (the bound of 2).
    assert stays_false(lambda: len(model.started) > 2, window_s=0.5)
    model.release("b1")
    wait_for(lambda: "c1" in model.started, what="c1 in b1's slot")
    assert "a2" not in model.started
    model.release("a1")
    wait_for(lambda: "a2" in model.started, what="a2 after a1")
    model.release("a2")
    model.release("c1")
    wait_for(lambda: all_done(local_backend, *jobs), what="every job done")
    assert model.most_in_progress == 2
    assert model.started in (["a1", "b1", "c1", "a2"], ["b1", "a1", "c1", "a2"])
    wait_for(lambda: jobs_status(board).completed == 4, what="4 runs counted")


def test_a_claim_is_renewed_while_its_run_goes_on(
    local_backend: LocalBackend, board: StatusBoard, model: ScriptedModel
) -> None:
    agent = local_backend.create_agent("slow", 5000).id
    job_id = local_backend.enqueue_job(agent, "hold:long")
    start(local_backend, board, model, options=JobOptions(2000, 3, 20, 8))
    wait_for(lambda: model.started == ["long"], what="the run")
    first_lock = local_backend.get_job(job_id)["lockedUntil"]
    wait_for(
        lambda: local_backend.get_job(job_id)["lockedUntil"] > first_lock + 1000,
        what="the lock renewed past the first one",
    )
    model.release("long")
    wait_for(lambda: status_of(local_backend, job_id) == "done", what="done")
    assert local_backend.get_job(job_id)["attempts"] == 0


def test_a_run_whose_claim_lapsed_never_completes_the_job(
    local_backend: LocalBackend, board: StatusBoard, model: ScriptedModel, mocker: MockerFixture
) -> None:
    side_effects: list[str] = []
    tools = ToolRegistry()

    def side_effect() -> str:
        """Records that it ran."""
        side_effects.append("ran")
        return "ok"

    tools.register(side_effect)
    agent = local_backend.create_agent("stale", 5000).id
    job_id = local_backend.enqueue_job(agent, "hold:stale:then-tool")
    renewals = mocker.patch.object(
        local_backend, "renew_job", side_effect=BackendUnavailable("the backend stalls")
    )
    start(local_backend, board, model, options=JobOptions(2000, 3, 20, 8), tools=tools)
    wait_for(lambda: model.started == ["stale:then-tool"], what="the run")
    wait_for(lambda: renewals.call_count > 0, what="a failed renewal")
    # The lock expires; another worker claims the job and completes it.
    taken = wait_for(
        lambda: local_backend.claim_jobs([agent], "w2", limit=1, lock_ms=60_000, max_attempts=3),
        what="the expired lock claimed by w2",
    )
    local_backend.complete_job(
        job_id,
        taken[0].claim_token,
        session_key="s",
        result="from w2",
        usage=Usage(input_tokens=0, output_tokens=0),
        steps=1,
    )
    model.release("stale:then-tool")
    wait_for(lambda: jobs_status(board).abandoned == 1, what="the stale run abandoned")
    row = local_backend.get_job(job_id)
    assert (row["result"], row["workerId"]) == ("from w2", "w2")
    assert jobs_status(board).completed == 0
    assert side_effects == []  # it stopped before its next step, the tool call
    assert len(model.calls) == 1


def test_removing_the_agent_mid_run_fences_the_claim_and_nothing_completes(
    local_backend: LocalBackend, board: StatusBoard, model: ScriptedModel
) -> None:
    agent = local_backend.create_agent("lost", 5000).id
    job_id = local_backend.enqueue_job(agent, "hold:lost")
    start(local_backend, board, model, options=JobOptions(4000, 3, 20, 8))
    wait_for(lambda: model.started == ["lost"], what="the run")
    local_backend.remove_agent(agent)  # fails the job and fences the claim
    model.release("lost")
    wait_for(lambda: jobs_status(board).abandoned == 1, what="abandoned")
    row = local_backend.get_job(job_id)
    assert (row["status"], row["error"], row["result"]) == ("failed", "agent removed", None)
    assert jobs_status(board).completed == 0


def test_tool_errors_go_back_to_the_model_and_the_job_completes(
    local_backend: LocalBackend, board: StatusBoard, model: ScriptedModel
) -> None:
    tools = ToolRegistry()

    def explode(reason: str) -> str:
        """Always fails."""
        raise ValueError(reason)

    tools.register(explode)
    agent = local_backend.create_agent("tools", 5000).id
    unknown = local_backend.enqueue_job(agent, "/tool nowhere")
    raising = local_backend.enqueue_job(agent, '/tool explode {"reason": "boom"}')
    malformed = local_backend.enqueue_job(agent, '/tool explode {"reason": 7}')
    start(local_backend, board, model, tools=tools)
    wait_for(lambda: all_done(local_backend, unknown, raising, malformed), what="all done")
    assert "unknown tool 'nowhere'" in local_backend.get_job(unknown)["result"]
    assert "ValueError: boom" in local_backend.get_job(raising)["result"]
    assert "invalid arguments for explode" in local_backend.get_job(malformed)["result"]
    assert local_backend.get_job(raising)["steps"] == 2


def test_a_model_that_never_answers_fails_the_job_after_max_steps(
    local_backend: LocalBackend, board: StatusBoard
) -> None:
    agent = local_backend.create_agent("loop", 5000).id
    job_id = local_backend.enqueue_job(agent, "what time is it?")
    start(local_backend, board, ToolLoop(), options=JobOptions(60_000, 3, 20, 3))
    wait_for(lambda: status_of(local_backend, job_id) == "failed", what="failed")
    row = local_backend.get_job(job_id)
    assert row["error"] == "no final answer within JOB_MAX_STEPS=3 model calls"
    wait_for(lambda: jobs_status(board).failed == 1, what="the failure counted")


def test_model_errors_retry_with_backoff_or_fail_for_good(
    local_backend: LocalBackend, board: StatusBoard, model: ScriptedModel
) -> None:
    retried = local_backend.enqueue_job(local_backend.create_agent("r", 5000).id, "fail:retryable")
    failed = local_backend.enqueue_job(local_backend.create_agent("f", 5000).id, "fail:permanent")
    start(local_backend, board, model)
    wait_for(lambda: status_of(local_backend, failed) == "failed", what="failed for good")
    wait_for(lambda: local_backend.get_job(retried)["attempts"] == 1, what="one attempt")
    row = local_backend.get_job(retried)
    assert row["status"] == "queued"
    assert row["error"] == "model: rate limited"
    assert row["notBefore"] >= row["updatedAt"] + 5000  # backoff, not at once
    assert local_backend.get_job(failed)["error"] == "model: bad request"


def test_heartbeats_keep_their_schedule_while_a_long_job_runs(
    local_backend: LocalBackend, board: StatusBoard, model: ScriptedModel
) -> None:
    agent = local_backend.create_agent("busy", 200).id
    local_backend.enqueue_job(agent, "hold:long")
    start(local_backend, board, model)
    wait_for(lambda: model.started == ["long"], what="the run")
    seen: set[int] = set()

    def beats_written() -> int:
        beats = board.get("heartbeats")
        if isinstance(beats, HeartbeatStatus) and agent in beats.last_written_at:
            seen.add(beats.last_written_at[agent])
        return len(seen)

    wait_for(lambda: beats_written() >= 5, timeout_s=3, what="5 beats during the job")
    assert model.started == ["long"]
    assert model.in_progress == 1
    model.release("long")


def test_a_conversations_next_job_sees_the_turns_before_it_in_the_session(
    local_backend: LocalBackend, board: StatusBoard, model: ScriptedModel
) -> None:
    agent = local_backend.create_agent("chat", 5000, instructions="Be brief.").id
    chat = DirectConversation(channel="direct", id="ticket-1")
    first = local_backend.enqueue_job(agent, "my name is Ada", chat)
    second = local_backend.enqueue_job(agent, "what is my name?", chat)
    start(local_backend, board, model)
    wait_for(lambda: all_done(local_backend, first, second), what="both done")
    seen = [(m.role, m.content) for m in model.calls[-1]]
    assert seen == [
        ("system", "Be brief."),
        ("user", "my name is Ada"),
        ("assistant", "echo: my name is Ada"),
        ("user", "what is my name?"),
    ]


def test_stopping_the_worker_gives_a_running_job_back_without_an_attempt(
    local_backend: LocalBackend, board: StatusBoard, model: ScriptedModel
) -> None:
    agent = local_backend.create_agent("moving", 5000).id
    job_id = local_backend.enqueue_job(agent, "hold:cut")
    runtime = start(local_backend, board, model)
    wait_for(lambda: model.started == ["cut"], what="the run")
    runtime.stop()
    row = local_backend.get_job(job_id)
    assert (row["status"], row["attempts"], row["workerId"]) == ("queued", 0, None)


def test_an_agent_with_a_wakeup_prompt_gets_its_wakeup_turns(
    local_backend: LocalBackend, board: StatusBoard, model: ScriptedModel
) -> None:
    agent = local_backend.create_agent(
        "waker", 5000, wakeup_prompt="check your queue", wakeup_interval_ms=1000
    ).id
    start(local_backend, board, model)
    done = wait_for(
        lambda: [j for j in local_backend.list_jobs(agent, "done") if j["kind"] == "wakeup"],
        timeout_s=4,
        what="a wake-up job done",
    )
    assert done[0]["result"] == "echo: check your queue"


def test_job_concurrency_0_claims_nothing(
    local_backend: LocalBackend, board: StatusBoard, model: ScriptedModel
) -> None:
    agent = local_backend.create_agent("paused", 1000).id
    job_id = local_backend.enqueue_job(agent, "hello")
    start(local_backend, board, model, concurrency=0)
    wait_for(lambda: isinstance(board.get(JOBS), JobsStatus), what="the dispatcher up")
    assert jobs_status(board).concurrency == 0
    assert stays_false(lambda: status_of(local_backend, job_id) != "queued", window_s=1.0)
    assert model.calls == []
