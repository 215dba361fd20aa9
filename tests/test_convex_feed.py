"""The change feed (backend.convex_watch.ChangeFeed): real child processes, against the fake
deployment's WebSocket sync protocol and against a TCP peer that never answers."""

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from agent_runtime.backoff import Backoff
from agent_runtime.clock import monotonic_s
from backend.convex_watch import CHILD_ENV_PASSED, DEFAULT_LIVENESS_TIMEOUT_S, ChangeFeed
from messages.text import CONTROL_CHARACTER
from tests.conftest import wait_for
from tests.fake_convex import FakeConvex, ServiceError

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc; the feed's loss check is Linux's"
)

AGENTS, JOBS = "service/agents:version", "service/jobs:version"
QUERIES = [AGENTS, JOBS]
KEY = "feed-key-7c41d2e9"
"""The service key: searched for in logs, argv and environments."""

STOP_TIMEOUT_S = 1.0
STOP_SLACK_S = 0.2
"""stop(timeout_s) may overrun by a thread switch or two, not by a wait."""


class Deployment:
    """A fake deployment serving one version counter per query, which the test bumps."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions = dict.fromkeys(QUERIES, 0)
        self.refusal = "wrong service key"
        self.fake = FakeConvex(self._call)

    def _call(self, kind: str, path: str, args: dict[str, Any]) -> Any:
        if args.get("serviceKey") != KEY:
            raise ServiceError("UNAUTHORIZED", self.refusal)
        with self._lock:
            return self._versions[path]

    def bump(self, query: str) -> None:
        """Change `query`'s value; returns once the fake pushed it to subscribers."""
        with self._lock:
            self._versions[query] += 1
        self.fake.notify_changed()


class Recorder:
    """The feed's callbacks, recorded with the time they were called."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.changes: list[tuple[float, str]] = []
        self.states: list[tuple[float, str, str | None]] = []

    def on_change(self, query: str) -> None:
        with self._lock:
            self.changes.append((monotonic_s(), query))

    def on_state(self, state: str, error: str | None) -> None:
        with self._lock:
            self.states.append((monotonic_s(), state, error))

    def count(self, query: str) -> int:
        with self._lock:
            return sum(1 for _, q in self.changes if q == query)

    def change_after(self, since_s: float, query: str) -> float | None:
        """When `query` was first reported after `since_s`."""
        with self._lock:
            return next((t for t, q in self.changes if q == query and t >= since_s), None)

    def went(self, state: str, since_s: float = 0.0) -> tuple[float, str | None] | None:
        """(when, error) of the first move to `state` after `since_s`."""
        with self._lock:
            return next(((t, e) for t, s, e in self.states if s == state and t >= since_s), None)


@pytest.fixture
def deployment() -> Iterator[Deployment]:
    deployment = Deployment()
    with deployment.fake:
        yield deployment


class SilentPeer:
    """A TCP server on 127.0.0.1 that accepts connections and never reads or answers."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="silent-peer", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:  # shut down
                return
            self.accepted.append(connection)

    def close(self) -> None:
        self._server.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self._server.close()
        self._thread.join(5)
        for connection in self.accepted:
            connection.close()


@pytest.fixture
def silent_peer() -> Iterator[SilentPeer]:
    peer = SilentPeer()
    yield peer
    peer.close()


StartFeed = Callable[..., tuple[ChangeFeed, Recorder]]


@pytest.fixture
def start_feed() -> Iterator[StartFeed]:
    """Start a feed on both queries; every feed is stopped (and must stop in time) after."""
    started: list[ChangeFeed] = []

    def start(url: str, *, key: str = KEY, **options: Any) -> tuple[ChangeFeed, Recorder]:
        recorder = Recorder()
        feed = ChangeFeed(
            url, SecretStr(key), QUERIES, recorder.on_change, recorder.on_state, **options
        )
        started.append(feed)
        feed.start()
        return feed, recorder

    yield start
    for feed in started:
        stop_in_time(feed)


def stop_in_time(feed: ChangeFeed) -> None:
    """Stop `feed`, checking that stop() kept to its timeout and the child is gone."""
    pid = feed.child_pid
    started_s = monotonic_s()
    feed.stop(timeout_s=STOP_TIMEOUT_S)
    assert monotonic_s() - started_s < STOP_TIMEOUT_S + STOP_SLACK_S
    if pid is not None:
        wait_for(lambda: not is_running(pid), what=f"the feed process {pid} to end")


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def subscribed(feed: ChangeFeed, recorder: Recorder, since_s: float = 0.0) -> float:
    """Wait until the feed went subscribed after `since_s`; when it did."""
    when, _error = wait_for(lambda: recorder.went("subscribed", since_s), what="subscribed")
    assert feed.state == "subscribed"
    return when


# --- changes ---------------------------------------------------------------------


def test_each_change_reaches_on_change_within_1_s(
    deployment: Deployment, start_feed: StartFeed
) -> None:
    feed, recorder = start_feed(deployment.fake.url)
    subscribed(feed, recorder)
    assert recorder.count(AGENTS) == 1  # the first values: what a restart catches up with
    assert recorder.count(JOBS) == 1
    for round_ in range(3):
        for query in QUERIES:
            changed_s = monotonic_s()
            deployment.bump(query)
            reported_s = wait_for(
                lambda q=query, t=changed_s: recorder.change_after(t, q), timeout_s=1.0, what=query
            )
            assert reported_s - changed_s < 1.0
            assert recorder.count(query) == round_ + 2
    # The client repeats every value of the set when one changes: the feed does not.
    assert recorder.count(AGENTS) == recorder.count(JOBS) == 4
    assert feed.children_started == 1


# --- failures: down, then subscribed again ---------------------------------------


def test_a_dropped_connection_is_down_then_subscribed_again(
    deployment: Deployment, start_feed: StartFeed
) -> None:
    feed, recorder = start_feed(deployment.fake.url)
    subscribed(feed, recorder)
    dropped_s = monotonic_s()
    assert deployment.fake.drop_sync() == 1
    _when, error = wait_for(lambda: recorder.went("down", dropped_s), what="down")
    assert error == "lost the connection to the deployment"
    subscribed(feed, recorder, dropped_s)
    assert feed.last_error == error  # kept, for /health
    assert feed.children_started == 2
    changed_s = monotonic_s()
    deployment.bump(AGENTS)  # and changes flow again
    wait_for(lambda: recorder.change_after(changed_s, AGENTS), timeout_s=1.0, what="the change")


def test_a_child_killed_with_sigkill_is_restarted(
    deployment: Deployment, start_feed: StartFeed
) -> None:
    feed, recorder = start_feed(deployment.fake.url)
    subscribed(feed, recorder)
    pid = feed.child_pid
    assert pid is not None
    killed_s = monotonic_s()
    os.kill(pid, signal.SIGKILL)
    down_s, error = wait_for(lambda: recorder.went("down", killed_s), what="down")
    assert down_s - killed_s < 0.5
    assert error == "the feed process was killed by SIGKILL"
    subscribed(feed, recorder, killed_s)
    assert feed.child_pid not in (None, pid)
    changed_s = monotonic_s()
    deployment.bump(JOBS)
    wait_for(lambda: recorder.change_after(changed_s, JOBS), timeout_s=1.0, what="the change")


def test_a_stopped_child_is_killed_after_the_liveness_period_and_restarted(
    deployment: Deployment, start_feed: StartFeed
) -> None:
    feed, recorder = start_feed(deployment.fake.url)
    subscribed(feed, recorder)
    pid = feed.child_pid
    assert pid is not None
    stopped_s = monotonic_s()
    os.kill(pid, signal.SIGSTOP)
    down_s, error = wait_for(
        lambda: recorder.went("down", stopped_s), timeout_s=DEFAULT_LIVENESS_TIMEOUT_S + 2
    )
    # Its last line came up to a third of the period before the stop.
    assert down_s - stopped_s >= (2 / 3) * DEFAULT_LIVENESS_TIMEOUT_S
    assert down_s - stopped_s < DEFAULT_LIVENESS_TIMEOUT_S + 0.5
    assert error == f"no line from the feed process for {DEFAULT_LIVENESS_TIMEOUT_S:g} s"
    wait_for(lambda: not is_running(pid), what="the stopped child to be killed")
    subscribed(feed, recorder, stopped_s)


def test_a_peer_that_never_answers_cannot_stall_the_parent(
    silent_peer: SilentPeer, start_feed: StartFeed
) -> None:
    window_s = 5.0
    gaps: list[float] = []

    def ticker() -> None:
        started_s = last_s = monotonic_s()
        while last_s - started_s < window_s:
            threading.Event().wait(0.01)
            now_s = monotonic_s()
            gaps.append(now_s - last_s)
            last_s = now_s

    feed, recorder = start_feed(silent_peer.url)
    thread = threading.Thread(target=ticker, name="ticker")
    thread.start()
    thread.join(window_s + 5)
    assert not thread.is_alive()
    assert len(gaps) > 250  # ~500 ticks of 10 ms
    assert max(gaps) < 0.1
    assert recorder.went("subscribed") is None
    assert feed.state == "down"
    # The stuck handshake (which holds the child's GIL) was detected and the child replaced.
    assert feed.children_started >= 2
    assert len(silent_peer.accepted) >= 2
    assert feed.last_error == f"no line from the feed process for {DEFAULT_LIVENESS_TIMEOUT_S:g} s"


# --- stop ------------------------------------------------------------------------


def test_stop_before_start_and_twice_returns_at_once(deployment: Deployment) -> None:
    feed = ChangeFeed(deployment.fake.url, SecretStr(KEY), QUERIES, lambda _query: None)
    stop_in_time(feed)
    feed.start()
    stop_in_time(feed)
    stop_in_time(feed)


@pytest.mark.parametrize(
    "situation", ["starting", "subscribed", "backing off", "stuck in the handshake", "stopped"]
)
def test_stop_returns_within_its_timeout(
    situation: str, deployment: Deployment, silent_peer: SilentPeer, start_feed: StartFeed
) -> None:
    url = silent_peer.url if situation == "stuck in the handshake" else deployment.fake.url
    key = "not-the-key" if situation == "backing off" else KEY
    feed, recorder = start_feed(url, key=key, backoff=Backoff(min_s=60.0, max_s=60.0))
    if situation in ("subscribed", "stopped"):
        subscribed(feed, recorder)
    elif situation == "backing off":
        wait_for(lambda: recorder.went("down"), what="the refusal")
        wait_for(lambda: feed.child_pid is None, what="the wait before a restart")
    elif situation == "stuck in the handshake":
        wait_for(lambda: silent_peer.accepted, what="the child's handshake")
    if situation == "stopped":
        pid = feed.child_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
    changes = len(recorder.changes)
    stop_in_time(feed)
    assert feed.child_pid is None
    deployment.bump(AGENTS)
    assert len(recorder.changes) == changes


# --- the child dies with its parent ----------------------------------------------

PARENT_SOURCE = """
import sys, threading
from pydantic import SecretStr
from backend.convex_watch import ChangeFeed

feed = ChangeFeed(sys.argv[1], SecretStr(sys.argv[2]), ["service/agents:version"], print)
feed.start()
while feed.child_pid is None:
    threading.Event().wait(0.01)
print(feed.child_pid, flush=True)
threading.Event().wait()
"""


@pytest.mark.parametrize("situation", ["subscribed", "stuck in the handshake"])
def test_the_child_dies_with_its_parent(
    situation: str, deployment: Deployment, silent_peer: SilentPeer
) -> None:
    url = silent_peer.url if situation == "stuck in the handshake" else deployment.fake.url
    # The key on this argv is the test's own parent's, not the feed child's.
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SOURCE, url, KEY], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        if situation == "subscribed":
            wait_for(lambda: deployment.fake.sync_connections, what="the subscription")
        else:  # its GIL held by the handshake, the child cannot even see its stdin close
            wait_for(lambda: silent_peer.accepted, what="the child's handshake")
        assert is_running(child_pid)
        parent.kill()
        parent.wait(5)
        wait_for(lambda: not is_running(child_pid), what="the orphaned child to end")
    finally:
        parent.kill()
        parent.wait(5)


# --- the service key -------------------------------------------------------------


def test_the_key_reaches_the_child_on_stdin_only(
    deployment: Deployment, start_feed: StartFeed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_SECRET", "another-secret-3b9")
    monkeypatch.setenv("SSL_CERT_DIR", "/etc/ssl/certs")
    feed, recorder = start_feed(deployment.fake.url)
    subscribed(feed, recorder)
    pid = feed.child_pid
    assert pid is not None
    argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert KEY.encode() not in argv
    assert KEY.encode() not in environ
    names = {entry.split(b"=", 1)[0].decode() for entry in environ.split(b"\0") if entry}
    assert names <= {"PATH", "PYTHONPATH", *CHILD_ENV_PASSED}
    assert "SSL_CERT_DIR" in names
    assert b"another-secret-3b9" not in environ


def test_errors_are_logged_on_one_line_without_the_key(
    deployment: Deployment, start_feed: StartFeed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="backend.convex_watch")
    # A deployment that echoes the key it refused, with a terminal code and a line break.
    wrong = KEY[::-1]
    deployment.refusal = f"refused {wrong} \x1b[31mred\nsecond line"
    feed, recorder = start_feed(deployment.fake.url, key=wrong)
    _when, error = wait_for(lambda: recorder.went("down"), what="the refusal")
    assert error is not None
    assert re.fullmatch(
        r"service/(agents|jobs):version: UNAUTHORIZED: refused \*\*\* \\x1b\[31mred", error
    )
    wait_for(lambda: "subscription failed" in caplog.text, what="the warning")
    assert wrong not in caplog.text
    for record in caplog.records:
        assert not CONTROL_CHARACTER.search(record.getMessage()), record.getMessage()
    assert feed.state == "down"
