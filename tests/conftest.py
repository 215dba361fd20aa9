"""Shared fixtures: real SQLite in tmp_path, a running Scheduler, condition waits."""

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pykka
import pytest

from actors.dispatcher import Dispatcher
from actors.scheduler import Scheduler
from agent_runtime.clock import monotonic_s
from agent_runtime.status import StatusBoard
from backend.local import LocalBackend
from tests.convex_service import LocalService
from tests.fake_convex import FakeConvex

T = TypeVar("T")

POLL_S = 0.01


def wait_for(
    predicate: Callable[[], T],
    timeout_s: float = 5.0,
    what: str = "condition",
    poll_s: float | None = None,
) -> T:
    """Return the first truthy value of `predicate()`, polling (every `poll_s`, default
    POLL_S) until `timeout_s` passes.

    Raises AssertionError naming `what` if the deadline passes first.
    """
    deadline = monotonic_s() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if monotonic_s() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        _pause(poll_s)


def stays_false(predicate: Callable[[], object], window_s: float) -> bool:
    """True if `predicate()` stays falsy for the whole `window_s` (for "never happens")."""
    deadline = monotonic_s() + window_s
    while monotonic_s() < deadline:
        if predicate():
            return False
        _pause()
    return not predicate()


def agent_row(**overrides: object) -> dict[str, object]:
    """A valid backend agent row (configuration and presence), with `overrides`."""
    fields: dict[str, object] = {
        "id": "a1",
        "name": "scout",
        "sessionKey": "agent:a1",
        "heartbeatIntervalMs": 5000,
        "instructions": None,
        "model": None,
        "wakeupPrompt": None,
        "wakeupIntervalMs": None,
        "status": "online",
        "lastHeartbeatAt": 1_700_000_000_000,
        "updatedAt": 1_700_000_000_000,
    }
    return fields | overrides


T0 = 1_700_000_000_000
"""An epoch-ms start time for fake clocks."""


class FakeClock:
    """Epoch milliseconds that move only when the test says so (`clock.now = ...`)."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


_NEVER_SET = threading.Event()


def _pause(poll_s: float | None = None) -> None:
    # The poll interval of a deadline-bounded wait; the condition decides, not the pause.
    _NEVER_SET.wait(POLL_S if poll_s is None else poll_s)


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=5)


@pytest.fixture
def scheduler() -> Iterator[Scheduler]:
    s = Scheduler()
    s.start()
    yield s
    s.stop()


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    d = Dispatcher("test-agents", 2)
    yield d
    pykka.ActorRegistry.stop_all(timeout=5)  # pooled actors stop on the pool's threads
    d.shutdown()


@pytest.fixture
def board() -> StatusBoard:
    return StatusBoard()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "local.db"


@pytest.fixture
def local_backend(db_path: Path) -> Iterator[LocalBackend]:
    b = LocalBackend(db_path)
    yield b
    b.close()


SECRET = "s3cret-for-tests"


@pytest.fixture(params=["local", "convex"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The environment of a subprocess runtime or CLI, on each backend in turn: the
    embedded SQLite file, then Convex (the fake deployment) in its default sync mode."""
    from tests.runtime_process import base_env  # noqa: PLC0415 - avoids an import cycle

    if request.param == "local":
        return base_env(tmp_path / "local.db")
    deployment = request.getfixturevalue("convex_deployment")
    return base_env(tmp_path / "unused.db", CONVEX_URL=deployment.url, AGENT_SECRET=SECRET)


@pytest.fixture
def convex_deployment(tmp_path: Path) -> Iterator[FakeConvex]:
    """A fake Convex deployment on 127.0.0.1 serving the embedded backend's logic with the
    reference functions' contract, its AGENT_SECRET being `SECRET`."""
    backend = LocalBackend(tmp_path / "deployment.db")
    with FakeConvex(LocalService(backend, SECRET).call) as fake:
        yield fake
    backend.close()
