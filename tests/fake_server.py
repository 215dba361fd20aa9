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
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


class _Server(uvicorn.Server):
    """uvicorn's server, whose main loop ends as soon as `stop()` sets the stopping event
    (uvicorn itself checks `should_exit` every 0.1 s, which every test would wait)."""

    def __init__(self, config: uvicorn.Config, owner: BackgroundServer) -> None:
        super().__init__(config)
        self._owner = owner

    async def main_loop(self) -> None:
        stopping = self._owner._stopping  # set by the lifespan startup, which ran already
        while not await self.on_tick(0):  # refreshes the Date header, checks should_exit
            if stopping is None:
                await asyncio.sleep(0.1)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1.0)
            if stopping.is_set():
                return


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
        self._server: _Server | None = None
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
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted ones inherit it
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
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
        server = _Server(config, self)
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"{self.name}-{self.port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        started = threading.Event()
        for _ in range(int(START_TIMEOUT_S / 0.01)):
            if server.started:
                return
            if not thread.is_alive():
                self.stop()
                raise RuntimeError(f"{self.name}: the server thread died during startup")
            started.wait(0.01)
        self.stop()
        raise RuntimeError(f"{self.name} did not start within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        """Stop serving (ending any `pause`) and join the thread."""
        server, thread, loop, stopping = self._server, self._thread, self._loop, self._stopping
        if server is not None and thread is not None:
            if loop is not None and stopping is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(stopping.set)
            server.should_exit = True
            thread.join(STOP_TIMEOUT_S)
        self._server = self._thread = None

    def _app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            yield

        return Starlette(routes=self._routes, lifespan=lifespan, exception_handlers=self._handlers)
