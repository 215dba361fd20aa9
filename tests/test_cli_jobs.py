"""`agent-runtime jobs enqueue/show/list` as subprocesses: on both backends for the round
trip and the unknown ids, on a real SQLite file for the rest (a job finished in-process
by the backend, as a worker would)."""

import json
import subprocess
from pathlib import Path

import pytest

from backend.local import LocalBackend
from messages.jobs import MAX_INPUT_CHARS, Usage
from tests.runtime_process import COMMAND, base_env, cli

JOB_KEYS = {
    "id",
    "agentId",
    "kind",
    "conversation",
    "input",
    "status",
    "attempts",
    "notBefore",
    "lockedUntil",
    "workerId",
    "result",
    "error",
    "usage",
    "steps",
    "createdAt",
    "updatedAt",
}
"""A job row's keys (contract/README.md, "Jobs"), as `show --json` and `list --json` give them."""


@pytest.fixture
def local_env(tmp_path: Path) -> dict[str, str]:
    return base_env(tmp_path / "local.db")


def _agent(env: dict[str, str], name: str = "scout") -> str:
    added = cli(env, "agents", "add", name)
    assert added.returncode == 0, added.stderr
    return added.stdout.strip()


def _enqueue(env: dict[str, str], agent_id: str, *args: str) -> str:
    queued = cli(env, "jobs", "enqueue", agent_id, *args)
    assert queued.returncode == 0, queued.stderr
    (job_id,) = queued.stdout.split()  # only the id
    return job_id


def _show(env: dict[str, str], job_id: str) -> dict[str, str]:
    """`jobs show` as `{field: value}`, one `field: value` line each."""
    shown = cli(env, "jobs", "show", job_id)
    assert shown.returncode == 0, shown.stderr
    fields = {}
    for line in shown.stdout.splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


def test_enqueue_show_and_list_round_trip(env: dict[str, str]) -> None:
    agent_id = _agent(env)
    first = _enqueue(env, agent_id, "--input", "what time is it?")
    second = _enqueue(env, agent_id, "--input", "and now?", "--conversation", "chat-1")

    job = json.loads(cli(env, "jobs", "show", second, "--json").stdout)
    assert set(job) == JOB_KEYS
    assert {k: job[k] for k in ("id", "agentId", "kind", "input", "status", "attempts")} == {
        "id": second,
        "agentId": agent_id,
        "kind": "task",
        "input": "and now?",
        "status": "queued",
        "attempts": 0,
    }
    assert job["conversation"] == {"channel": "direct", "id": "chat-1"}
    assert (job["result"], job["error"], job["usage"], job["steps"]) == (None, None, None, None)

    fields = _show(env, second)
    assert list(fields) == [
        "id",
        "agent",
        "kind",
        "conversation",
        "status",
        "attempts",
        "steps",
        "usage",
        "worker",
        "created",
        "updated",
        "not before",
        "locked until",
        "input",
        "result",
        "error",
    ]
    assert fields["conversation"] == "direct:chat-1"
    assert (fields["status"], fields["attempts"], fields["usage"]) == ("queued", "0", "-")
    assert _show(env, first)["conversation"] == "-"

    listed = json.loads(cli(env, "jobs", "list", "--json").stdout)
    assert [j["id"] for j in listed] == [first, second]  # oldest first
    assert all(set(j) == JOB_KEYS for j in listed)
    table = cli(env, "jobs", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "AGENT", "KIND", "STATUS", "ATTEMPTS", "CREATED", "INPUT"]
    assert table[1].split()[:5] == [first, agent_id, "task", "queued", "0"]
    assert table[1].endswith("what time is it?")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["jobs", "enqueue", "nope", "--input", "hi"],
            "agent-runtime: no agent with id 'nope'; `agent-runtime agents list` shows the ids",
        ),
        (
            ["jobs", "show", "nope"],
            "agent-runtime: no job with id 'nope'; `agent-runtime jobs list` shows the ids",
        ),
    ],
)
def test_unknown_ids_exit_1_naming_them(
    env: dict[str, str], args: list[str], expected: str
) -> None:
    result = cli(env, *args)
    assert result.returncode == 1
    assert result.stderr.strip() == expected


def test_a_finished_job_shows_its_result_usage_and_steps(local_env: dict[str, str]) -> None:
    agent_id = _agent(local_env)
    done = _enqueue(local_env, agent_id, "--input", "hello")
    failed = _enqueue(local_env, agent_id, "--input", "fail me")
    backend = LocalBackend(Path(local_env["LOCAL_DB_PATH"]))
    try:
        (claimed,) = backend.claim_jobs([agent_id], "w1", limit=1, lock_ms=60_000, max_attempts=3)
        backend.complete_job(
            claimed.id,
            claimed.claim_token,
            session_key=f"agent:{agent_id}",
            result="line one\nline two",
            usage=Usage(input_tokens=12, output_tokens=34),
            steps=2,
        )
        (claimed,) = backend.claim_jobs([agent_id], "w1", limit=1, lock_ms=60_000, max_attempts=3)
        backend.fail_job(
            claimed.id, claimed.claim_token, error="model refused", retry_at_ms=None, max_attempts=3
        )
    finally:
        backend.close()

    job = json.loads(cli(local_env, "jobs", "show", done, "--json").stdout)
    assert (job["status"], job["result"], job["steps"]) == ("done", "line one\nline two", 2)
    assert job["usage"] == {"inputTokens": 12, "outputTokens": 34}
    fields = _show(local_env, done)
    assert fields["status"] == "done"
    assert fields["result"] == r"line one\nline two"  # one line: control characters escaped
    assert (fields["usage"], fields["steps"], fields["worker"]) == (
        "12 tokens in, 34 out",
        "2",
        "w1",
    )
    assert _show(local_env, failed)["error"] == "model refused"

    def ids(*args: str) -> list[str]:
        return [j["id"] for j in json.loads(cli(local_env, "jobs", "list", "--json", *args).stdout)]

    assert ids("--status", "done") == [done]
    assert ids("--status", "failed") == [failed]
    assert ids("--status", "queued") == []
    other = _enqueue(local_env, _agent(local_env, "ranger"), "--input", "x")
    assert ids("--agent", agent_id) == [done, failed]
    assert ids("--agent", "nobody") == []
    assert ids() == [done, failed, other]


def test_list_cuts_long_inputs_and_keeps_each_row_on_one_line(local_env: dict[str, str]) -> None:
    agent_id = _agent(local_env)
    _enqueue(local_env, agent_id, "--input", "\x1b[31m" + "x" * 100)  # 105 characters
    (row,) = cli(local_env, "jobs", "list").stdout.splitlines()[1:]
    assert row.endswith(r"\x1b[31m" + "x" * 35 + "...(105 chars)")  # the first 40


def test_input_dash_reads_standard_input(local_env: dict[str, str]) -> None:
    agent_id = _agent(local_env)
    queued = subprocess.run(
        [*COMMAND, "jobs", "enqueue", agent_id, "--input", "-"],
        env=local_env,
        input="first line\nsecond line\n",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert queued.returncode == 0, queued.stderr
    job = json.loads(cli(local_env, "jobs", "show", queued.stdout.strip(), "--json").stdout)
    assert job["input"] == "first line\nsecond line"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--input", ""], "agent-runtime: input: expected 1 to 32768 characters, got 0"),
        (
            ["--input", "x" * (MAX_INPUT_CHARS + 1)],
            "agent-runtime: input: expected 1 to 32768 characters, got 32769",
        ),
        (
            ["--input", "hi", "--conversation", "a\tb"],
            "agent-runtime jobs enqueue: argument --conversation: 'a\\tb' is invalid (control"
            " character '\\t' at index 1): expected 1 to 200 characters and no control characters",
        ),
        (
            ["--input", "hi", "--conversation", ""],
            "agent-runtime jobs enqueue: argument --conversation: '' is invalid: expected a"
            " non-empty value",
        ),
        ([], "agent-runtime jobs enqueue: the following arguments are required: --input"),
    ],
)
def test_bad_enqueue_arguments_exit_2_with_one_line(
    local_env: dict[str, str], args: list[str], expected: str
) -> None:
    agent_id = _agent(local_env)
    result = cli(local_env, "jobs", "enqueue", agent_id, *args)
    assert result.returncode == 2
    assert result.stderr.strip() == expected
    assert json.loads(cli(local_env, "jobs", "list", "--json").stdout) == []


def test_list_refuses_an_unknown_status(local_env: dict[str, str]) -> None:
    result = cli(local_env, "jobs", "list", "--status", "finished")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "agent-runtime jobs list: argument --status: invalid choice: 'finished'"
        " (choose from 'queued', 'running', 'done', 'failed', 'dead')"
    )
