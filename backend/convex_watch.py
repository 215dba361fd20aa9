"""The Convex change feed: the official client's subscriptions, run in a child process.

Why a child: `convex.ConvexClient.subscribe()` holds the GIL until its WebSocket is open.
Against a deployment that accepts TCP and never answers, that froze every thread of the
process (no /health, SIGTERM ignored for 15 s). In a child process it can only freeze the
child, which the parent then kills.

Why a subprocess of our own module (`python -P -m backend.convex_feed_child`) rather than
multiprocessing's spawn: the child's environment is built here, whole (spawn passes the
parent's, with every secret in it; setting it per child would mean mutating `os.environ`
in a threaded process); the service key goes through the child's stdin, never its argv or
environment; nothing of the parent's `__main__` is re-imported; and the pipe carries
JSON lines (`backend.convex_feed_child` lists them) that the parent reads with a deadline
alongside the child's stderr, instead of unpickling what the child sends.

The parent's side is one daemon thread per feed that starts the child, reads its lines,
calls `on_change(query)` for each new value (the first one of each query included: a
restart catches up) and watches it. The child writes a line at least every third of
`liveness_timeout_s`; a child silent for `liveness_timeout_s` (stuck in a handshake,
stopped), or alive but not subscribed within SUBSCRIBE_TIMEOUTS of them (its connection
hangs), is killed with SIGKILL. A child that exits, is killed, or reports an error is
started again after a backoff (`FEED_BACKOFF`), from its shortest delay again once a child
stayed subscribed for the backoff's reset period. The child dies with the parent: it exits
at EOF on its stdin and, on Linux, the kernel kills it when the thread that started it
(the feed's, which outlives its child) ends.

The service key appears in no argv, no environment, no log line and no error text.
"""

import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import SecretStr

from agent_runtime.backoff import Backoff
from agent_runtime.clock import monotonic_s
from backend.port import FeedState
from messages.text import cut, escape_controls

logger = logging.getLogger(__name__)

# FeedState (backend.port): `subscribed` once every query delivered a value in the
# current child, whose connection is up; `down` otherwise (starting, failed, waiting to
# restart, stopped).

SUBSCRIBE_TIMEOUTS = 3
"""A child not subscribed within this many liveness periods is replaced: it is alive but
its connection hangs (a handshake or a subscription that never completes)."""

DEFAULT_LIVENESS_TIMEOUT_S = 3.0
"""A child that writes no line for this long is killed and started again. It writes one
at least every third of it, so a healthy idle child is never taken for a stuck one."""

FEED_BACKOFF = Backoff(min_s=0.5, max_s=30.0)
"""Between two children; from the shortest delay again once a child stayed subscribed
for `reset_after_s`."""

KILL_WAIT_S = 1.0
"""How long the feed's thread waits for a killed child to be reaped."""

MAX_LINE_BYTES = 64 * 1024
"""A longer line from the child is a broken child: it is killed."""

MAX_ERROR_CHARS = 300

CHILD_MODULE = "backend.convex_feed_child"

CHILD_ENV_PASSED = ("SSL_CERT_FILE", "SSL_CERT_DIR")
"""The only variables of the parent's environment a child gets (besides PATH), if set:
where to find CA certificates (the client uses OpenSSL)."""

_SOURCE_ROOT = Path(__file__).resolve().parent.parent


class ChangeFeed:
    """Calls `on_change(query)` from its own thread whenever one of `queries` changes.

    `queries` are Convex query paths taking only `{"serviceKey"}`, such as
    `"service/agents:version"`. `on_change` gets the path of each new value of a query,
    the first value in each child included, so a restart catches up. `on_state(state,
    last_error)` is called whenever either changes (see `FeedState`; a feed starts
    `down` with no error, without a call); `last_error` is why the feed last went down,
    kept once it is subscribed again. Both callbacks run on the feed's thread, one at a
    time, and must not block long: that thread watches the child meanwhile. An exception
    from either is logged on one line and ignored.

    `start()` returns at once. `stop(timeout_s)` kills the child and waits at most
    `timeout_s` for the thread (a daemon: it never holds the process up).
    """

    def __init__(
        self,
        url: str,
        secret: SecretStr,
        queries: Sequence[str],
        on_change: Callable[[str], None],
        on_state: Callable[[FeedState, str | None], None] | None = None,
        *,
        name: str = "change feed",
        liveness_timeout_s: float = DEFAULT_LIVENESS_TIMEOUT_S,
        backoff: Backoff = FEED_BACKOFF,
    ) -> None:
        if not queries:
            raise ValueError("a change feed needs at least one query path")
        self._url = url
        self._secret = secret
        self._queries = tuple(queries)
        self._on_change = on_change
        self._on_state = on_state
        self._name = name
        self._liveness_timeout_s = liveness_timeout_s
        self._backoff = backoff
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._state: FeedState = "down"
        self._last_error: str | None = None
        self._subscribed_at_s: float | None = None
        self._thread = threading.Thread(target=self._run, name="ChangeFeed", daemon=True)
        self.children_started = 0
        """Child processes started so far (restarts are this minus one)."""

    @property
    def state(self) -> FeedState:
        """The current state (see `FeedState`)."""
        return self._state

    @property
    def last_error(self) -> str | None:
        """Why the feed last went down, one line, or None if it never did."""
        return self._last_error

    @property
    def child_pid(self) -> int | None:
        """The current child's process id, None between children."""
        child = self._child
        return child.pid if child is not None else None

    def start(self) -> None:
        """Start the feed's thread, which starts the first child."""
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop the feed: kill the child (SIGKILL) and wait at most `timeout_s` for the
        feed's thread; the state is then `down` (without an `on_state` call). Safe at any
        point, before `start()` and more than once included. No `on_change` or `on_state`
        call starts after this returns."""
        self._stopping.set()
        with self._lock:
            child = self._child
            self._state = "down"
        if child is not None:
            _kill(child)
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    # --- the feed's thread -----------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._subscribed_at_s = None
            error = self._run_child()
            if self._stopping.is_set():
                break
            subscribed_at_s = self._subscribed_at_s
            if (
                subscribed_at_s is not None
                and monotonic_s() - subscribed_at_s >= self._backoff.reset_after_s
            ):
                failures = 0
            delay_s = self._backoff.delay_s(failures)
            failures += 1
            self._set_state("down", error)
            logger.warning(
                "%s subscription failed, restarting it in %.1f s: %s", self._name, delay_s, error
            )
            self._stopping.wait(delay_s)

    def _run_child(self) -> str:
        """Run one child until it fails; return why, one line, redacted."""
        try:
            child = self._spawn()
        except OSError as error:
            return self._shown(f"cannot start the feed process: {error}")
        try:
            return self._follow(child)
        finally:
            with self._lock:
                self._child = None
            _kill(child)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(KILL_WAIT_S)
            for pipe in (child.stdin, child.stdout, child.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()

    def _spawn(self) -> "subprocess.Popen[bytes]":
        env = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": str(_SOURCE_ROOT)}
        env.update({key: os.environ[key] for key in CHILD_ENV_PASSED if key in os.environ})
        child = subprocess.Popen(
            [sys.executable, "-P", "-m", CHILD_MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C is the parent's to handle
        )
        with self._lock:
            self._child = child
        self.children_started += 1
        if self._stopping.is_set():  # stop() came before the child was visible to it
            _kill(child)
        config = {
            "url": self._url,
            "queries": list(self._queries),
            "serviceKey": self._secret.get_secret_value(),
            "aliveIntervalS": self._liveness_timeout_s / 3,
            "parentPid": os.getpid(),
        }
        assert child.stdin is not None
        # The pipe is empty: the line fits in its buffer, so this never blocks. The pipe
        # stays open: the child exits at its EOF.
        with contextlib.suppress(OSError):
            child.stdin.write((json.dumps(config) + "\n").encode())
            child.stdin.flush()
        return child

    def _follow(self, child: "subprocess.Popen[bytes]") -> str:
        """Read the child's lines until it ends or breaks the rules; return why, one line."""
        assert child.stdout is not None
        assert child.stderr is not None
        out, err = child.stdout.fileno(), child.stderr.fileno()
        pending = {out: b"", err: b""}
        reported: str | None = None  # the child's own {"error": ...}
        stderr_tail = ""
        with selectors.DefaultSelector() as selector:
            for fd in (out, err):
                os.set_blocking(fd, False)
                selector.register(fd, selectors.EVENT_READ)
            deadline_s = monotonic_s() + self._liveness_timeout_s
            subscribe_by_s = monotonic_s() + SUBSCRIBE_TIMEOUTS * self._liveness_timeout_s
            while out in selector.get_map():  # until its stdout closes: it exits, or is gone
                wake_s = min(
                    deadline_s, subscribe_by_s if self._subscribed_at_s is None else deadline_s
                )
                for key, _events in selector.select(max(0.0, wake_s - monotonic_s())):
                    try:
                        data = os.read(key.fd, 65536)
                    except BlockingIOError:
                        continue
                    if not data:
                        selector.unregister(key.fd)
                        continue
                    *lines, pending[key.fd] = (pending[key.fd] + data).split(b"\n")
                    if len(pending[key.fd]) > MAX_LINE_BYTES:
                        _kill(child)
                        return "the feed process wrote an overlong line"
                    if key.fd == err:
                        stderr_tail = self._log_stderr(lines) or stderr_tail
                        continue
                    for line in lines:
                        message = _parse(line, self._queries)
                        if message is None:
                            _kill(child)
                            return "the feed process wrote an unreadable line"
                        reported = self._handle(message) or reported
                    # After the callbacks: only the child's silence counts.
                    deadline_s = monotonic_s() + self._liveness_timeout_s
                overdue = self._overdue(deadline_s, subscribe_by_s)
                if overdue is not None:
                    _kill(child)
                    return overdue
        if self._stopping.is_set():
            return "stopped"
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(KILL_WAIT_S)
        if reported is not None:
            return reported
        return self._shown(f"the feed process {_exit_text(child.returncode)}{stderr_tail}")

    def _overdue(self, deadline_s: float, subscribe_by_s: float) -> str | None:
        """Why the child must be replaced now, if it must: silent past its liveness
        deadline (even if its stderr is busy), or alive but not subscribed in time."""
        now_s = monotonic_s()
        if now_s >= deadline_s:
            return f"no line from the feed process for {self._liveness_timeout_s:g} s"
        if self._subscribed_at_s is None and now_s >= subscribe_by_s:
            timeout_s = SUBSCRIBE_TIMEOUTS * self._liveness_timeout_s
            return f"the feed process did not subscribe within {timeout_s:g} s"
        return None

    def _handle(self, message: dict[str, object]) -> str | None:
        """Act on one line of the child; return the error it reported, if it did."""
        query = message.get("query")
        if isinstance(query, str):
            if not self._stopping.is_set():
                self._call(self._on_change, query)
        elif "error" in message:
            error = self._shown(str(message["error"]))
            self._set_state("down", error)
            return error
        elif message.get("subscribed") is True and self._state != "subscribed":
            self._subscribed_at_s = monotonic_s()
            self._set_state("subscribed", self._last_error)
        elif message.get("subscribed") is False and self._state == "subscribed":
            self._set_state("down", "the feed process is no longer subscribed")
        return None

    def _log_stderr(self, lines: list[bytes]) -> str:
        shown = ""
        for line in lines:
            text = self._shown(line.decode(errors="replace").strip())
            if text:
                logger.debug("%s process: %s", self._name, text)
                shown = text
        return f" ({shown})" if shown else ""

    def _set_state(self, state: FeedState, error: str | None) -> None:
        with self._lock:
            if (state, error) == (self._state, self._last_error) or self._stopping.is_set():
                return
            was = self._state
            self._state, self._last_error = state, error
        if state != was and state == "subscribed":
            logger.info("%s subscribed to %s", self._name, ", ".join(self._queries))
        if self._on_state is not None:
            self._call(self._on_state, state, error)

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception as error:
            # One line: the callback's owner logs its own traces.
            logger.error("%s: a callback failed: %s", self._name, self._shown(repr(error)))

    def _shown(self, text: str) -> str:
        # Child and client texts may echo the arguments: the key must never be shown.
        secret = self._secret.get_secret_value()
        if secret:
            text = text.replace(secret, "***")
        return escape_controls(cut(text, MAX_ERROR_CHARS))


def _parse(line: bytes, queries: Sequence[str]) -> dict[str, object] | None:
    """One line of the child as a message, or None if it is not one it may write."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    query = message.get("query")
    if query is not None and query not in queries:
        return None
    return message


def _kill(child: "subprocess.Popen[bytes]") -> None:
    """SIGKILL, which also ends a stopped child; a no-op once it has been reaped."""
    with contextlib.suppress(OSError):
        child.send_signal(signal.SIGKILL)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "closed its output"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"
