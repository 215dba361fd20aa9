"""The change feed's child process: the official Convex client's subscriptions, reported
as lines on a pipe. Started by `backend.convex_watch.ChangeFeed` as
`python -P -m backend.convex_feed_child`; not meant to be run by hand.

Input (stdin): one JSON line `{"url", "queries", "serviceKey", "aliveIntervalS",
"parentPid"}`, then nothing; stdin reaching EOF (the parent closed it, or died) ends the
process. On Linux the process also asks the kernel to kill it when its parent dies, which
works even while the client holds this process's GIL.

Output (the stdout it was started with), one JSON object per line:
  {"alive": true, "subscribed": bool}  every aliveIntervalS, and at once on subscribing;
                                       "subscribed" once every query delivered a value
  {"query": path}                      each new value of each query, the first one
                                       included (the client repeats unchanged values)
  {"error": text}                      the subscription failed; the process then exits 1
The values themselves are not sent: the parent re-reads what changed. The client's own
prints (a function's console.log lines) go to stderr, so they cannot mix with these lines.

Losing the connection ends the process (`{"error": ...}`, exit 1), so that the parent
sees the feed down and starts a fresh child: the client would reconnect by itself, but
without telling. The connection is watched as this process's established TCP sockets
(Linux: /proc/self/fd and TCP_INFO; the client opens no other TCP socket here); where
that cannot be read, a lost connection goes unreported and the client's own reconnect
(which delivers every query's value again) carries the feed.

No text written here contains the service key.
"""

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import stat
import sys
import threading
import time
from typing import Any, NoReturn

CONNECTION_CHECK_INTERVAL_S = 0.1
"""How often the connection is checked once subscribed: the delay to report its loss."""

MAX_ERROR_CHARS = 300

_PR_SET_PDEATHSIG = 1
_TCP_ESTABLISHED = 1


class _Output:
    """The protocol pipe; written from the event loop and the liveness thread."""

    def __init__(self, fd: int, secret: str = "") -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self.secret = secret

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        with self._lock:
            try:
                while data:
                    data = data[os.write(self._fd, data) :]
            except OSError:  # the parent is gone
                os._exit(0)

    def fail(self, error: str) -> NoReturn:
        if self.secret:
            error = error.replace(self.secret, "***")
        self.send({"error": error[:MAX_ERROR_CHARS]})
        os._exit(1)


class _Progress:
    """Which queries delivered a value, and the connection they came on."""

    def __init__(self, queries: list[str]) -> None:
        self.lock = threading.Lock()
        self.waiting = set(queries)
        self.subscribed = False
        self.connection: frozenset[int] | None = None
        """The established TCP sockets (inodes) when subscribed; None if unknown."""


def main() -> None:
    out = _Output(os.dup(1))
    os.dup2(2, 1)  # the client prints to stdout: keep its prints off the protocol pipe
    try:
        config = json.loads(sys.stdin.buffer.readline())
        url, queries, key = config["url"], list(config["queries"]), config["serviceKey"]
        alive_interval_s, parent_pid = float(config["aliveIntervalS"]), int(config["parentPid"])
    except (ValueError, KeyError, TypeError) as error:
        out.fail(f"unreadable configuration on stdin: {type(error).__name__}")
    out.secret = key
    _die_with_parent(parent_pid)
    progress = _Progress(queries)
    threading.Thread(target=_exit_at_eof, name="stdin", daemon=True).start()
    threading.Thread(
        target=_report_liveness, args=(out, progress, alive_interval_s), daemon=True
    ).start()
    try:
        asyncio.run(_watch(out, progress, url, key, queries))
    except Exception as error:  # the client raises bare Exceptions
        out.fail(_describe(error))
    out.fail("the subscriptions ended")


async def _watch(out: _Output, progress: _Progress, url: str, key: str, queries: list[str]) -> None:
    from convex import ConvexClient  # noqa: PLC0415 - an import error reaches the parent

    client = ConvexClient(url)
    # subscribe() holds this process's GIL until the WebSocket is open: the liveness
    # lines stop meanwhile, which is how the parent tells a stuck handshake.
    subscriptions = [(path, client.subscribe(path, {"serviceKey": key})) for path in queries]

    async def follow(path: str, subscription: Any) -> None:
        last: list[Any] = []  # empty until the first value
        try:
            async for value in subscription:
                # The client repeats every query's value when any query of the set changes.
                if last != [value]:
                    last[:] = [value]
                    out.send({"query": path})
                _received(out, progress, path)
        except Exception as error:  # the client raises bare Exceptions
            out.fail(f"{path}: {_describe(error)}")
        out.fail(f"{path}: the subscription ended")

    await asyncio.gather(*(follow(path, sub) for path, sub in subscriptions))


def _received(out: _Output, progress: _Progress, path: str) -> None:
    with progress.lock:
        progress.waiting.discard(path)
        if progress.waiting or progress.subscribed:
            return
        progress.subscribed = True
        progress.connection = _established_tcp_sockets()
    out.send({"alive": True, "subscribed": True})


def _report_liveness(out: _Output, progress: _Progress, interval_s: float) -> None:
    next_alive_s = 0.0
    while True:
        now_s = time.monotonic()
        with progress.lock:
            subscribed, connection = progress.subscribed, progress.connection
        if connection is not None:
            current = _established_tcp_sockets()
            if current is not None and not current & connection:
                out.fail("lost the connection to the deployment")
        if now_s >= next_alive_s:
            out.send({"alive": True, "subscribed": subscribed})
            next_alive_s = now_s + interval_s
        time.sleep(min(interval_s, CONNECTION_CHECK_INTERVAL_S))


def _established_tcp_sockets() -> frozenset[int] | None:
    """The inodes of this process's established TCP sockets; None where unknowable."""
    tcp_info = getattr(socket, "TCP_INFO", None)
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    if tcp_info is None:
        return None
    found = set()
    for name in names:
        with contextlib.suppress(OSError, ValueError):
            fd = int(name)
            info = os.fstat(fd)
            if not stat.S_ISSOCK(info.st_mode):
                continue
            # A duplicate, so that the client's descriptor is never closed here.
            with socket.socket(fileno=os.dup(fd)) as sock:
                if sock.family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                if sock.type != socket.SOCK_STREAM:
                    continue
                if sock.getsockopt(socket.IPPROTO_TCP, tcp_info, 1)[0] == _TCP_ESTABLISHED:
                    found.add(info.st_ino)
    return frozenset(found)


def _describe(error: BaseException) -> str:
    """One line: a ConvexError's code and message, else the error's first line."""
    data = getattr(error, "data", None)
    if isinstance(data, dict) and "code" in data:
        return f"{data['code']}: {data.get('message', '')}".splitlines()[0]
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _exit_at_eof() -> None:
    while sys.stdin.buffer.read(4096):
        pass
    os._exit(0)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel kill this process when its parent dies (a GIL held by the
    client cannot stop that, unlike the stdin EOF check)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the request
        os._exit(0)


if __name__ == "__main__":
    main()
