"""Reactive agent sync on Convex: a subscription to `service/agents:version`.

The official client's *async* subscription iterator, driven by an asyncio loop in a
dedicated thread, on its own `ConvexClient`: the only use of that client this project
allows (its blocking calls hold the GIL; awaiting the async iterator does not). Each
value (the first one included, so a reconnect catches up) calls `on_change`. If the
subscription fails it is restarted with backoff; the timed sync carries on meanwhile.
"""

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from pydantic import SecretStr

from agent_runtime.backoff import Backoff

logger = logging.getLogger(__name__)

VERSION_QUERY = "service/agents:version"

WATCH_BACKOFF = Backoff(min_s=1.0, max_s=30.0)
"""Between failed subscriptions; reset once a subscription delivered a value."""


class AgentsWatcher:
    """Calls `on_change()` from its own thread whenever the agents' version changes.

    `start()` returns at once; `stop()` cancels the subscription and waits up to
    `timeout_s` for the thread (a daemon, so it can never hold the process up).
    """

    def __init__(self, url: str, secret: SecretStr, on_change: Callable[[], None]) -> None:
        self._url = url
        self._secret = secret
        self._on_change = on_change
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="ConvexWatcher", daemon=True)
        self.updates = 0
        """Values received so far."""

    def start(self) -> None:
        """Start watching in the background."""
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop watching; waits up to `timeout_s` for the thread. Safe at any point,
        including during a backoff wait between subscriptions."""
        self._stopping.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            updates_before = self.updates
            try:
                asyncio.run(self._main())
            except Exception as error:  # the client raises bare Exceptions
                failures = 0 if self.updates > updates_before else failures
                delay_s = WATCH_BACKOFF.delay_s(failures)
                failures += 1
                logger.warning(
                    "agent subscription failed, retrying in %.1f s (timed sync continues): %s",
                    delay_s,
                    self._redact(error),
                )
                self._stopping.wait(delay_s)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        try:
            if not self._stopping.is_set():
                await self._watch()
        except asyncio.CancelledError:
            return
        finally:
            self._loop = self._task = None

    async def _watch(self) -> None:
        from convex import ConvexClient  # noqa: PLC0415 - installs a global tracing subscriber

        # Dropping the client (when this returns or is cancelled) closes the connection;
        # `unsubscribe()` after a cancel would subscribe again first.
        client = ConvexClient(self._url)
        subscription: Any = client.subscribe(
            VERSION_QUERY, {"serviceKey": self._secret.get_secret_value()}
        )
        async for _version in subscription:
            self.updates += 1
            self._on_change()
        raise ConnectionError("the subscription ended")

    def _redact(self, error: BaseException) -> str:
        # Client errors may echo arguments; the service key must never reach a log line.
        text = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        return text.replace(self._secret.get_secret_value(), "***")[:300]
