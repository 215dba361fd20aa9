"""Drive `agent-runtime` as a real subprocess: the worker, and the CLI beside it."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import wait_for

COMMAND = [sys.executable, "-m", "agent_runtime"]
LISTENING = re.compile(r"http=http://[^:]+:(\d+)")


def base_env(db_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a test process: a private database, a free port, JSON logs."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("AGENT_", "LOG_", "APP_", "WHATSAPP_", "WORKER_", "JOB_", "MODEL", "OPENAI_", "TOOLS_")
        )
    }
    env.update(
        LOCAL_DB_PATH=str(db_path),
        PORT="0",
        HOST="127.0.0.1",
        AGENT_SYNC_INTERVAL="60000",
        LOG_FORMAT="json",
        LOG_LEVEL="DEBUG",
        ENABLE_WHATSAPP="false",  # role all: the agent tests run the agents only
        MODEL_PROVIDER="echo",  # offline, on Convex too
    )
    env.update(extra)
    return env


def cli(env: dict[str, str], *args: str, timeout_s: float = 20) -> subprocess.CompletedProcess[str]:
    """Run one `agent-runtime` command to completion."""
    return subprocess.run(
        [*COMMAND, *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


class RuntimeProcess:
    """`agent-runtime run` in the background, its stderr collected line by line."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [*COMMAND, "run", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = int(wait_for(self._port, timeout_s=15, what="the HTTP port in the log"))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self._lines.append(line.rstrip("\n"))

    def _port(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"runtime exited early:\n{self.text()}")
        for line in self.lines():
            match = LISTENING.search(line)
            if match:
                return match.group(1)
        return None

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def text(self) -> str:
        return "\n".join(self.lines())

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records so far (LOG_FORMAT=json)."""
        out = []
        for line in self.lines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def beat_times_s(self, agent_id: str) -> list[float]:
        """When this agent's actor logged a heartbeat (needs DEBUG for the agent)."""
        return [
            _seconds(r["time"])
            for r in self.records()
            if r.get("message") == "heartbeat" and r.get("agent", {}).get("id") == agent_id
        ]

    def health(self) -> dict[str, Any]:
        response = httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=5)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def agents(self) -> list[dict[str, Any]]:
        """GET /agents: the agents this worker runs."""
        response = self.get("/agents")
        response.raise_for_status()
        listed: list[dict[str, Any]] = response.json()
        return listed

    def agent(self, agent_id: str) -> dict[str, Any] | None:
        """GET /agents/{id}: the agent if it runs here, else None (404)."""
        response = self.get(f"/agents/{agent_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def _seconds(asctime: str) -> float:
    return datetime.strptime(asctime, "%Y-%m-%d %H:%M:%S,%f").timestamp()
