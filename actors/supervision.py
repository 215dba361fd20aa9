"""Supervision, which pykka does not have: crash reports, backoff, intensity limits.

- `SupervisedActor` reports its own crash to its supervisor as `ChildFailed`, whether
  the crash happened in a message handler (pykka calls `on_failure`) or in `on_start`
  (pykka bypasses `on_failure` there, so `on_start` is wrapped).
- `Backoff` (in `agent_runtime.backoff`) is the delay between restarts.
- `RestartIntensity` is OTP's limit: more than `max_restarts` within `period_s` means
  restarting is not helping, and the supervisor escalates.
"""

import logging
import threading
from collections import deque
from types import TracebackType
from typing import Any

import pykka

from messages import ChildFailed

logger = logging.getLogger(__name__)

DEFAULT_MAX_RESTARTS = 5
DEFAULT_RESTART_PERIOD_S = 60.0


class RestartIntensity:
    """Counts restarts in a sliding window; `allow()` is False once the limit is passed."""

    def __init__(
        self, max_restarts: int = DEFAULT_MAX_RESTARTS, period_s: float = DEFAULT_RESTART_PERIOD_S
    ) -> None:
        self.max_restarts = max_restarts
        self.period_s = period_s
        self._times: deque[float] = deque()

    def allow(self, now_s: float) -> bool:
        """Record a restart at `now_s`; False if that makes more than `max_restarts`
        within the last `period_s` seconds."""
        self._times.append(now_s)
        while self._times and self._times[0] <= now_s - self.period_s:
            self._times.popleft()
        return len(self._times) <= self.max_restarts


class Supervised(pykka.Actor):
    """Mixin for an actor that reports its crashes to its supervisor.

    Subclasses put their start-up in `started()` (not `on_start`) and their cleanup in
    `cleanup(crashed)`, which runs on a normal stop, after a crash, and after a failed
    start.
    """

    def __init__(
        self, *, supervisor: pykka.ActorRef[Any] | None, child_id: str, **runtime: Any
    ) -> None:
        super().__init__(**runtime)
        self.supervisor = supervisor
        self.child_id = child_id

    def started(self) -> None:
        """Start-up work, run in the actor's thread before any message."""

    def cleanup(self, crashed: bool) -> None:
        """Release what the actor owns; `crashed` tells a crash from a normal stop."""

    def on_start(self) -> None:
        try:
            self.started()
        except Exception as error:
            try:
                self.cleanup(crashed=True)
            finally:
                self._report(error)
            raise

    def on_stop(self) -> None:
        self.cleanup(crashed=False)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.cleanup(crashed=True)
        finally:
            self._report(exception_value)

    def _report(self, error: BaseException | None) -> None:
        if self.supervisor is None:
            return
        try:
            self.supervisor.tell(ChildFailed(child_id=self.child_id, error=repr(error)))
        except pykka.ActorDeadError:
            logger.warning("%s crashed and its supervisor is gone", self.child_id)


class SupervisedActor(Supervised, pykka.ThreadingActor):
    """A supervised actor with a thread of its own, named after its class.

    Its thread is a daemon: a stuck actor cannot keep the process alive past the
    shutdown deadline.
    """

    use_daemon_thread = True

    def on_start(self) -> None:
        threading.current_thread().name = type(self).__name__
        super().on_start()
