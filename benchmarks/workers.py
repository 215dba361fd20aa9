"""What the benchmarks share: workers run as `agent-runtime run` subprocesses, and
deadline-bounded waits. Imported by the benchmark scripts (this folder is on their path)."""

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from agent_runtime.clock import monotonic_s

T = TypeVar("T")

LISTENING = re.compile(r"http=http://[^:]+:(\d+)")
_idle = threading.Event()


class BenchmarkError(Exception):
    """A wait timed out or a worker misbehaved; the message says which."""


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str, poll_s: float) -> T:
    """The first truthy value of `predicate()`, read every `poll_s` until `timeout_s`."""
    deadline = monotonic_s() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if monotonic_s() > deadline:
            raise BenchmarkError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        _idle.wait(poll_s)


def seconds(value: float) -> float:
    return round(value, 3)


class Worker:
    """`agent-runtime run` in the background; its log goes to a file beside the database."""

    def __init__(self, name: str, env: dict[str, str], folder: Path) -> None:
        self.name = name
        self.log_path = folder / f"{name}.log"
        with self.log_path.open("w") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent_runtime", "run"],
                env={**env, "WORKER_ID": name},
                cwd=folder,  # no .env of the repository
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        self.client: httpx.Client | None = None
        try:
            port = int(wait_until(self._port, 30, f"{name}'s HTTP port in its log", 0.05))
        except BaseException:
            self.stop()
            raise
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def _port(self) -> str | None:
        if self.proc.poll() is not None:
            raise BenchmarkError(f"{self.name} exited early: {self.log_path.read_text()[-2000:]}")
        match = LISTENING.search(self.log_path.read_text())
        return match.group(1) if match else None

    def get(self, path: str) -> Any:
        """GET `path` from the worker's HTTP server; the JSON answer."""
        assert self.client is not None
        response = self.client.get(path)
        response.raise_for_status()
        return response.json()

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/health")
        return result

    def agents(self) -> list[dict[str, Any]]:
        """The agents the worker runs (GET /agents)."""
        listed: list[dict[str, Any]] = self.get("/agents")
        return listed

    def ids(self) -> set[str]:
        return {agent["id"] for agent in self.agents()}

    def cpu_s(self) -> float:
        """User + system CPU seconds the process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Kill it if it still runs (cleanup); reap it either way."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.client is not None:
            self.client.close()
