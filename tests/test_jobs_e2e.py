"""Jobs end to end: `agent-runtime run` subprocesses on one SQLite file, the echo model,
tools from TOOLS_MODULES, a kill -9 in the middle of a job, and WhatsApp in and out."""

import json
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from agent_runtime.app.webhooks import SIGNATURE_HEADER, WEBHOOK_PATH
from backend.local import LocalBackend
from messages.jobs import DirectConversation
from tests.conftest import wait_for
from tests.runtime_process import COMMAND, RuntimeProcess, base_env
from tests.test_webhooks import delivery, sign, text_message

FAST_FLEET = {
    "WORKER_HEARTBEAT_MS": "500",
    "WORKER_TTL_MS": "1500",
    "JOB_LOCK_MS": "4000",
    "TOOLS_MODULES": "tests.job_tools",
}


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "local.db")


def worker_env(tmp_path: Path, worker_id: str, **extra: str) -> dict[str, str]:
    settings = {
        "AGENT_ROLE": "core",
        "WORKER_ID": worker_id,
        "RUNS_FILE": str(tmp_path / "runs.txt"),
        "GATE_DIR": str(tmp_path),
        **FAST_FLEET,
    }
    return base_env(tmp_path / "local.db", **(settings | extra))


def runs(tmp_path: Path) -> list[str]:
    path = tmp_path / "runs.txt"
    return path.read_text().splitlines() if path.exists() else []


def done(backend: LocalBackend, job_id: str) -> dict[str, object] | None:
    row = backend.get_job(job_id)
    return row if row["status"] == "done" else None


def test_a_queued_job_is_run_with_its_tool_call_and_completed(
    tmp_path: Path, backend: LocalBackend
) -> None:
    agent = backend.create_agent("scout", 1000).id
    worker = RuntimeProcess(worker_env(tmp_path, "w1"))
    try:
        job_id = backend.enqueue_job(agent, '/tool record_run {"agent": "scout", "seq": 1}')
        row = wait_for(lambda: done(backend, job_id), what="the job done")
        assert row["result"] == "tool record_run returned: recorded 1"
        assert (row["steps"], row["workerId"], row["attempts"]) == (2, "w1", 0)
        assert runs(tmp_path) == ["w1 scout 1"]
        health = wait_for(
            lambda: (jobs := worker.health()["jobs"])["completed"] == 1 and jobs,
            what="the run counted in /health",
        )
        assert (health["completed"], health["running"], health["lastError"]) == (1, 0, None)
        metrics = worker.get("/metrics").text
        assert 'agent_runtime_tool_calls_total{ok="true",tool="record_run"} 1.0' in metrics
    finally:
        worker.stop()


def test_a_job_whose_worker_was_killed_completes_once_on_another_worker(
    tmp_path: Path, backend: LocalBackend
) -> None:
    agent = backend.create_agent("scout", 1000).id
    chat = DirectConversation(channel="direct", id="ticket-9")
    first = RuntimeProcess(worker_env(tmp_path, "wa"))
    second = None
    try:
        job_id = backend.enqueue_job(agent, '/tool wait_for_gate {"name": "g1"}', chat)
        wait_for(lambda: "wa gate g1" in runs(tmp_path), what="the job running on wa")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(5)
        (tmp_path / "g1").touch()  # the job can finish now, wherever it runs
        second = RuntimeProcess(worker_env(tmp_path, "wb"))
        row = wait_for(lambda: done(backend, job_id), timeout_s=15, what="done on wb")
        assert (row["workerId"], row["attempts"]) == ("wb", 1)  # the expired lock counted
        assert runs(tmp_path) == ["wa gate g1", "wb gate g1"]
        turns = backend.conversation_history(chat, f"agent:{agent}", 20)
        assert [t.role for t in turns] == ["user", "assistant"]  # completed once
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_conversations_second_job_is_run_with_the_first_turn(
    tmp_path: Path, backend: LocalBackend
) -> None:
    agent = backend.create_agent("scout", 1000).id
    chat = DirectConversation(channel="direct", id="ticket-1")
    worker = RuntimeProcess(worker_env(tmp_path, "w1"))
    try:
        first = backend.enqueue_job(agent, "my name is Ada", chat)
        second = backend.enqueue_job(agent, "what is my name", chat)
        row = wait_for(lambda: done(backend, second), what="the second job done")
        assert done(backend, first) is not None
        # The echo model counts the words it was given: 4 (first input) + 5 (its answer,
        # "echo: my name is Ada") + 4, against 4 for the input alone.
        assert row["usage"] == {"inputTokens": 13, "outputTokens": 5}
    finally:
        worker.stop()


def test_an_inbound_whatsapp_message_is_answered_once_in_role_all(
    tmp_path: Path, backend: LocalBackend
) -> None:
    agent = backend.create_agent("frontdesk", 1000).id
    env = worker_env(
        tmp_path,
        "w1",
        AGENT_ROLE="all",
        ENABLE_WHATSAPP="true",
        WHATSAPP_TRANSPORT="console",
        WHATSAPP_ACCOUNT_ID="acct",
        WHATSAPP_APP_SECRET="app-secret-e2e",
        WHATSAPP_VERIFY_TOKEN="verify-e2e",
        WHATSAPP_AGENT_ID=agent,
    )
    worker = RuntimeProcess(env)
    try:
        body = json.dumps(delivery([text_message("wamid.IN-1", "hello there")])).encode()
        headers = {SIGNATURE_HEADER: sign(body, "app-secret-e2e")}
        url = f"http://127.0.0.1:{worker.port}{WEBHOOK_PATH}"
        for _ in range(2):  # Meta delivers the same message again
            assert httpx.post(url, content=body, headers=headers, timeout=5).status_code == 200

        def sent() -> list[dict[str, object]]:
            return [m for m in backend.list_outbox("acct") if m["status"] == "sent"]

        (reply,) = wait_for(sent, what="the reply sent")
        assert (reply["to"], reply["text"]) == ("16505551234", "echo: hello there")
        assert len(backend.list_jobs(agent)) == 1
        assert len(backend.list_outbox("acct")) == 1
    finally:
        worker.stop()


def test_a_tools_module_that_cannot_be_imported_stops_run_with_one_line(tmp_path: Path) -> None:
    env = worker_env(tmp_path, "w1", TOOLS_MODULES="tests.no_such_tools")
    result = subprocess.run(
        [*COMMAND, "run"], env=env, capture_output=True, text=True, timeout=20, check=False
    )
    assert result.returncode == 2
    (line,) = [json.loads(x) for x in result.stderr.splitlines() if "TOOLS_MODULES" in x]
    assert "cannot import tools module 'tests.no_such_tools'" in line["message"]
