"""A Starlette app served for real on 127.0.0.1, for the fake APIs of the tests (the Graph
API, an OpenAI-compatible endpoint): uvicorn in a daemon thread on a free port, with
TCP_NODELAY (without it every kept-alive answer waited ~40 ms for the client's delayed
ACK, as in docs/performance.md, "The Convex adapter"), and a stop that is quick and ends
the handlers' deliberate waits (`pause`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


Stopping = Callable[[], "asyncio.Event | None"]
"""Gives the server's stopping event, once its lifespan startup made it."""


class _Server(uvicorn.Server):
    """uvicorn's server, whose main loop ends as soon as the stopping event is set
    (uvicorn itself checks `should_exit` every 0.1 s, which every test would wait)."""

    def __init__(self, config: uvicorn.Config, stopping: Stopping) -> None:
        super().__init__(config)
        self._stopping = stopping

    async def main_loop(self) -> None:
        stopping = self._stopping()  # set by the lifespan startup, which ran already
        while not await self.on_tick(0):  # refreshes the Date header, checks should_exit
            if stopping is None:
                await asyncio.sleep(0.1)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1.0)
            if stopping.is_set():
                return


def bound_socket() -> socket.socket:
    """A listening TCP socket on a free port of 127.0.0.1, with TCP_NODELAY (accepted
    sockets inherit it; asyncio would not set it on a socket made with proto=0)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def serve(
    config: uvicorn.Config, sock: socket.socket, name: str, stopping: Stopping
) -> tuple[uvicorn.Server, threading.Thread]:
    """Run uvicorn on `sock` in a daemon thread named `name`; return once it serves.

    Raises RuntimeError (the server stopped) if it dies or does not start within
    START_TIMEOUT_S."""
    server = _Server(config, stopping)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    started = threading.Event()
    for _ in range(int(START_TIMEOUT_S / 0.01)):
        if server.started:
            return server, thread
        if not thread.is_alive():
            raise RuntimeError(f"{name}: the server thread died during startup")
        started.wait(0.01)
    shut_down(server, thread, None, None)
    raise RuntimeError(f"{name} did not start within {START_TIMEOUT_S} s")


def shut_down(
    server: uvicorn.Server,
    thread: threading.Thread,
    loop: asyncio.AbstractEventLoop | None,
    stopping: asyncio.Event | None,
) -> None:
    """Stop a server `serve` started (ending the handlers' waits on `stopping`) and join
    its thread, forcing the exit if a graceful one takes STOP_TIMEOUT_S."""
    if loop is not None and stopping is not None and not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(stopping.set)
    server.should_exit = True
    thread.join(STOP_TIMEOUT_S)
    if thread.is_alive():
        server.force_exit = True
        thread.join(STOP_TIMEOUT_S)


class BackgroundServer:
    """Serves `routes` (with `exception_handlers`) once `start()` returned; `port` says
    where. `stop()` is idempotent."""

    def __init__(
        self,
        name: str,
        routes: Sequence[BaseRoute],
        exception_handlers: Mapping[Any, Any] | None = None,
    ) -> None:
        self.name = name
        self.port = 0
        self._routes = list(routes)
        self._handlers = dict(exception_handlers or {})
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    async def pause(self, delay_s: float) -> None:
        """Wait `delay_s` in a handler (a slow API), or less if the server stops."""
        if delay_s > 0 and self._stopping is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay_s)

    def start(self) -> None:
        """Serve on a free port of 127.0.0.1; return once it accepts connections."""
        if self._server is not None:
            raise RuntimeError(f"{self.name} already started")
        sock = bound_socket()
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app(),
            lifespan="on",
            loop="asyncio",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=3,
        )
        self._server, self._thread = serve(
            config, sock, f"{self.name}-{self.port}", lambda: self._stopping
        )

    def stop(self) -> None:
        """Stop serving (ending any `pause`) and join the thread."""
        if self._server is not None and self._thread is not None:
            shut_down(self._server, self._thread, self._loop, self._stopping)
        self._server = self._thread = None

    def _app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            yield

        return Starlette(routes=self._routes, lifespan=lifespan, exception_handlers=self._handlers)


class ServedFake:
    """`start`, `stop` and `with` for a fake API served by the BackgroundServer `_server`:
    `url` is its origin followed by URL_PATH once started."""

    URL_PATH = ""
    url: str
    _server: BackgroundServer

    def start(self) -> Self:
        """Serve on a free port of 127.0.0.1; return once it accepts connections."""
        self._server.start()
        self.url = f"http://127.0.0.1:{self._server.port}{self.URL_PATH}"
        return self

    def stop(self) -> None:
        """Stop serving (ending any delayed answer) and join the thread. Idempotent."""
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
