"""Stop signals: SIGTERM, SIGINT and SIGHUP become one stop request that the main thread
waits for, and that is honoured however early it comes.

Two measured faults shaped this:
- A process-directed signal may be delivered to any thread. CPython runs the Python
  handler only in the main thread, and only once the main thread runs bytecode: a main
  thread blocked in `threading.Event.wait()` slept on through a SIGINT that another
  thread took (the SIGINT test flaked until another signal arrived). `wait()` here
  blocks in `select()` on the signal wakeup fd, which every delivery writes to.
- Imports take about half a second before `run` starts; a SIGTERM in that window killed
  the process with status -15. `install()` is called by the `run` entry point before the
  heavy imports, and a stop requested before the runtime starts is kept.
"""

import contextlib
import select
import signal
import socket
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopSignals:
    """One stop request for the process, from a signal or from `request_stop()`."""

    def __init__(self) -> None:
        self._requested = threading.Event()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self.reason: str | None = None
        """What asked for the stop: a signal's name, or the reason given."""

    def install(self) -> None:
        """Handle the stop signals from now on. Call from the main thread."""
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._request(signal.Signals(signum).name)

    def request_stop(self, reason: str) -> None:
        """Ask for the stop from any thread (a fatal supervisor escalation)."""
        self._request(reason)
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
            self._writer.send(b"\0")

    def _request(self, reason: str) -> None:
        if not self._requested.is_set():
            self.reason = reason
            self._requested.set()

    @property
    def requested(self) -> bool:
        """True once a stop was asked for."""
        return self._requested.is_set()

    def wait(self) -> str:
        """Block until a stop is asked for; return what asked. Main thread only."""
        while not self._requested.is_set():
            # A delivery to any thread writes the wakeup fd; the handler then runs here,
            # in the main thread, before the next check.
            select.select([self._reader], [], [])
            with contextlib.suppress(BlockingIOError):
                self._reader.recv(4096)
        assert self.reason is not None
        return self.reason


STOP = StopSignals()
"""The process's stop request; `install()`ed by the `run` entry point."""
