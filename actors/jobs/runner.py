"""Running one job: the agent's turn (model calls with tool use) on a thread of the job
pool, never on the agents' pooled Dispatcher threads.

Model and tool calls block for seconds; an AgentActor only hands its job to the
`JobRunner` (with its record and session) and stays free for its heartbeats. The run:
the agent's instructions, the conversation's previous turns in this session (from the
backend, so another worker can continue it), the input; then the model is asked, its
tool calls are run and answered, until a final answer or `max_steps` model calls. The
answer completes the job (the backend queues a WhatsApp reply in the same transaction).

A run is fenced by its claim: the `JobControl` holds the lock deadline (the JobDispatcher
extends it at each renewal) and is cancelled when the claim is lost or given back. The run
checks it before every model call, every tool call and the completion, and stops there:
a run whose claim is gone never completes, fails or retries the job (the backend refuses
a stale claim token too).
"""

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pykka

from actors.jobs.models import ChatMessage, ModelError, ModelProvider, ModelReply
from agent_runtime import logs, metrics
from agent_runtime.backoff import Backoff
from agent_runtime.clock import monotonic_s, now_ms
from agent_runtime.errors import BackendError, Fenced
from agent_runtime.tools import ToolRegistry
from backend.port import Backend
from messages import AgentRecord
from messages.jobs import MAX_INPUT_CHARS, ClaimedJob, JobEnded, JobOutcome, Usage
from messages.text import cut, escape_controls

logger = logging.getLogger(__name__)

RETRY_BACKOFF = Backoff(min_s=5.0, max_s=300.0)
"""Before attempt N+1 of a job that failed in a way that may clear (the model API down,
rate limited, a malformed answer): 5 s, 10 s, 20 s ... up to 5 minutes, plus jitter."""

LOCK_MARGIN_FRACTION = 0.1
MIN_LOCK_MARGIN_S = 1.0
"""A run stops trusting its claim this long before the lock expires by its own clock
(max of 10% of the lock and 1 s), so clock drift and a slow call cannot make two
workers run the job at once."""

FINISH_RETRY_S = 1.0
"""Between tries to record a finished job while the backend is unavailable (within the
lock deadline: past it, the job is left to be claimed again)."""

MAX_ERROR_CHARS = 300

T = TypeVar("T")


class JobAbandoned(Exception):
    """The run's claim is gone (lost, given back, or about to expire): stop here."""


class JobControl:
    """A run's claim as the run sees it: a lock deadline (monotonic seconds) and a
    cancellation. Set by the JobDispatcher (renewals, a lost claim, a stop), read by the
    job's thread; thread-safe."""

    def __init__(self, lock_deadline_s: float) -> None:
        self._lock = threading.Lock()
        self._deadline_s = lock_deadline_s
        self._reason: str | None = None
        self._cancelled = threading.Event()

    @staticmethod
    def deadline_for(lock_started_s: float, lock_ms: int) -> float:
        """The deadline of a lock of `lock_ms` taken or renewed by a call that started at
        `lock_started_s` (monotonic), less the safety margin."""
        lock_s = lock_ms / 1000
        return lock_started_s + lock_s - max(LOCK_MARGIN_FRACTION * lock_s, MIN_LOCK_MARGIN_S)

    def extend(self, deadline_s: float) -> None:
        """The claim was renewed: trust it until `deadline_s`."""
        with self._lock:
            self._deadline_s = max(self._deadline_s, deadline_s)

    def cancel(self, reason: str) -> None:
        """Stop the run at its next step (the first reason is kept)."""
        with self._lock:
            if self._reason is None:
                self._reason = reason
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        """True once `cancel` was called."""
        return self._cancelled.is_set()

    def check(self) -> None:
        """Raise JobAbandoned if the run must stop: cancelled, or past its deadline."""
        with self._lock:
            reason = self._reason
            past = monotonic_s() >= self._deadline_s
        if reason is not None:
            raise JobAbandoned(reason)
        if past:
            raise JobAbandoned("the claim's lock deadline passed without a renewal")

    def wait(self, seconds: float) -> None:
        """Wait `seconds`, or less if the run is cancelled meanwhile."""
        self._cancelled.wait(seconds)


@dataclass(frozen=True)
class JobOptions:
    """How jobs run (JOB_* and MODEL settings)."""

    lock_ms: int
    max_attempts: int
    history_turns: int
    max_steps: int


@dataclass(frozen=True)
class JobRun:
    """One job to run, with the agent as its actor had it when the job was handed over."""

    job: ClaimedJob
    control: JobControl
    agent: AgentRecord


@dataclass
class _Turn:
    """What a run has so far."""

    messages: list[ChatMessage]
    usage: Usage
    steps: int = 0


_Work = tuple[JobRun, Callable[[JobEnded], None]] | None


class JobRunner:
    """A bounded pool of job threads, the model provider and the tools. `submit` returns
    at once; the run calls `on_end` with its `JobEnded` from its thread.

    The threads are daemons (not a ThreadPoolExecutor's, which the interpreter joins at
    exit): a model or tool call stuck past the shutdown deadline cannot hold the
    process up."""

    def __init__(
        self,
        backend: Backend,
        provider: ModelProvider,
        tools: ToolRegistry,
        options: JobOptions,
        *,
        threads: int,
    ) -> None:
        self._backend = backend
        self._provider = provider
        self._tools = tools
        # TOOLS_MODULES are loaded before the runner exists: the tools are fixed from here.
        self._specs = tools.specs()
        self._tool_names = frozenset(tools.names())
        self.options = options
        self._work: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"job-{n}", daemon=True)
            for n in range(max(1, threads))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, run: JobRun, on_end: Callable[[JobEnded], None]) -> None:
        """Run the job on a pool thread; `on_end` is called once when it is over."""
        self._work.put((run, on_end))

    def shutdown(self) -> None:
        """Stop the threads once their current run is over and end the model calls in
        progress (their runs, cancelled by the JobDispatcher, stop there); does not wait."""
        for _ in self._threads:
            self._work.put(None)
        self._provider.close()

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            self._run(*work)

    # --- one run, on its pool thread ------------------------------------------------------

    def _run(self, run: JobRun, on_end: Callable[[JobEnded], None]) -> None:
        agent, job = run.agent, run.job
        thread = threading.current_thread()
        pool_name, thread.name = thread.name, f"job-{agent.name}-{agent.id[:8]}"
        logs.bind_agent(agent.id, agent.name, agent.session_key)
        started_s = monotonic_s()
        try:
            ended = self._outcome(run)
        except Exception:  # on_end must come, or the dispatcher's slot is never freed
            logger.exception("job %s: the run failed unexpectedly; its lock will expire", job.id)
            ended = self._ended(run, "abandoned", "the run failed unexpectedly")
        finally:
            logs.unbind_agent()
            thread.name = pool_name
        metrics.JOB_DURATION.labels(outcome=ended.outcome).observe(monotonic_s() - started_s)
        on_end(ended)

    def _outcome(self, run: JobRun) -> JobEnded:
        logger.info("job %s started (attempt %d)", run.job.id, run.job.attempts + 1)
        try:
            try:
                answered = self._turn(run)
            except ModelError as error:
                return self._fail(run, f"model: {error}", retryable=error.retryable)
            except BackendError as error:
                return self._fail(run, f"backend: {error}", retryable=True)
            except JobAbandoned:
                raise
            except Exception as error:  # a bug in a provider must not lose the job
                logger.exception("job %s: the turn failed unexpectedly", run.job.id)
                return self._fail(run, f"{type(error).__name__}: {error}", retryable=True)
            if answered is None:
                return self._fail(
                    run,
                    f"no final answer within JOB_MAX_STEPS={self.options.max_steps} model calls",
                    retryable=False,
                )
            return self._complete(run, *answered)
        except JobAbandoned as stopped:
            logger.warning("job %s abandoned: %s", run.job.id, stopped)
            return self._ended(run, "abandoned", str(stopped))

    def _turn(self, run: JobRun) -> tuple[_Turn, str] | None:
        """Ask the model, running its tool calls, until it answers; None if it has not
        answered within max_steps model calls."""
        turn = _Turn(messages=self._opening(run), usage=Usage(input_tokens=0, output_tokens=0))
        while turn.steps < self.options.max_steps:
            run.control.check()
            reply = self._ask(turn, self._specs, run.agent.model)
            if not reply.tool_calls:
                return turn, reply.content or ""
            turn.messages.append(ChatMessage.assistant(reply.content, reply.tool_calls))
            for call in reply.tool_calls:
                run.control.check()
                result = self._tools.call(call.name, call.arguments)
                known = call.name in self._tool_names
                metrics.TOOL_CALLS.labels(
                    tool=call.name if known else "unknown", ok=str(result.ok).lower()
                ).inc()
                logger.info("tool %s: %s", call.name, "ok" if result.ok else result.content)
                turn.messages.append(ChatMessage.tool(call.id, result.content))
        return None

    def _opening(self, run: JobRun) -> list[ChatMessage]:
        """The instructions, the conversation so far in this session, and the input."""
        agent, job = run.agent, run.job
        opening = [ChatMessage.system(agent.instructions)] if agent.instructions else []
        if job.conversation is not None and self.options.history_turns > 0:
            history = self._backend.conversation_history(
                job.conversation, agent.session_key, self.options.history_turns
            )
            opening += [
                ChatMessage.user(t.content)
                if t.role == "user"
                else ChatMessage.assistant(t.content)
                for t in history
            ]
        return [*opening, ChatMessage.user(job.input)]

    def _ask(
        self, turn: _Turn, specs: Sequence[dict[str, object]], model: str | None
    ) -> ModelReply:
        asked_s = monotonic_s()
        reply = self._provider.complete(turn.messages, specs, model)
        metrics.MODEL_LATENCY.observe(monotonic_s() - asked_s)
        metrics.MODEL_TOKENS.labels(direction="input").inc(reply.usage.input_tokens)
        metrics.MODEL_TOKENS.labels(direction="output").inc(reply.usage.output_tokens)
        turn.steps += 1
        turn.usage = Usage(
            input_tokens=turn.usage.input_tokens + reply.usage.input_tokens,
            output_tokens=turn.usage.output_tokens + reply.usage.output_tokens,
        )
        return reply

    # --- recording the end, fenced by the claim ---------------------------------------------

    def _complete(self, run: JobRun, turn: _Turn, result: str) -> JobEnded:
        job = run.job
        reply_id = self._record(
            run,
            lambda: self._backend.complete_job(
                job.id,
                job.claim_token,
                session_key=run.agent.session_key,
                result=result[:MAX_INPUT_CHARS],
                usage=turn.usage,
                steps=turn.steps,
            ),
        )
        logger.info(
            "job %s done in %d step(s), %d+%d tokens%s",
            job.id,
            turn.steps,
            turn.usage.input_tokens,
            turn.usage.output_tokens,
            f"; reply {reply_id} queued" if reply_id else "",
        )
        return self._ended(run, "done")

    def _fail(self, run: JobRun, error: str, *, retryable: bool) -> JobEnded:
        job = run.job
        error = cut(escape_controls(error), MAX_ERROR_CHARS)
        retry_at_ms = (
            now_ms() + int(RETRY_BACKOFF.delay_s(job.attempts) * 1000) if retryable else None
        )
        status = self._record(
            run,
            lambda: self._backend.fail_job(
                job.id,
                job.claim_token,
                error=error,
                retry_at_ms=retry_at_ms,
                max_attempts=self.options.max_attempts,
            ),
        )
        if status == "queued":
            logger.warning("job %s will be retried: %s", job.id, error)
            return self._ended(run, "retry", error, retry_at_ms)
        logger.error("job %s %s: %s", job.id, status, error)
        return self._ended(run, "dead" if status == "dead" else "failed", error)

    def _record(self, run: JobRun, call: Callable[[], T]) -> T:
        """Make the call that records the run's end while the claim holds, again while the
        backend is unavailable. Raises JobAbandoned once the claim is gone (the backend
        says so, or it was cancelled) or its deadline passed."""
        while True:
            run.control.check()
            try:
                return call()
            except Fenced:
                raise JobAbandoned("the claim was taken over") from None
            except BackendError as error:
                logger.warning(
                    "job %s: cannot record its end yet (trying again in %.0f s): %s",
                    run.job.id,
                    FINISH_RETRY_S,
                    error,
                )
                run.control.wait(FINISH_RETRY_S)

    @staticmethod
    def _ended(
        run: JobRun, outcome: JobOutcome, error: str | None = None, retry_at_ms: int | None = None
    ) -> JobEnded:
        return JobEnded(
            job_id=run.job.id,
            agent_id=run.job.agent_id,
            outcome=outcome,
            error=error,
            retry_at_ms=retry_at_ms,
        )


@dataclass(frozen=True)
class AgentJobs:
    """What an AgentActor needs for its jobs: the JobDispatcher (it registers there, and
    asks it for wake-up jobs) and the runner its jobs run on."""

    dispatcher: pykka.ActorRef[Any]
    runner: JobRunner

    def tell(self, message: Any) -> None:
        """Tell the JobDispatcher, unless it has stopped (the worker is stopping)."""
        with contextlib.suppress(pykka.ActorDeadError):
            self.dispatcher.tell(message)
