"""The status board: actors publish immutable snapshots, /health reads them.

Actors never share mutable state; a snapshot is a frozen model replaced whole, so the
HTTP thread can read it at any time without asking (and waiting on) an actor that may
be busy with a slow backend call.
"""

import threading

from pydantic import BaseModel

from agent_runtime import metrics


class StatusBoard:
    """A name -> latest snapshot map; publishing replaces, reading never blocks for long."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshots: dict[str, BaseModel] = {}
        self._restarts: dict[str, int] = {}

    def publish(self, name: str, snapshot: BaseModel) -> None:
        """Make `snapshot` the current state of `name`."""
        with self._lock:
            self._snapshots[name] = snapshot

    def get(self, name: str) -> BaseModel | None:
        """The latest snapshot published under `name`, or None."""
        with self._lock:
            return self._snapshots.get(name)

    def count_restart(self, actor: str) -> None:
        """Record one supervisor restart of `actor`: in /health and in /metrics."""
        metrics.RESTARTS.labels(actor=actor).inc()
        with self._lock:
            self._restarts[actor] = self._restarts.get(actor, 0) + 1

    def restarts(self) -> dict[str, int]:
        """Restart counts by actor name since the process started."""
        with self._lock:
            return dict(self._restarts)
