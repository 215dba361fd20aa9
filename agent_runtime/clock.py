"""The one clock: monotonic seconds for scheduling, epoch milliseconds for records."""

import time

monotonic_s = time.monotonic
"""Seconds on a clock that never goes back; for deadlines and durations."""


def now_ms() -> int:
    """Wall-clock time in milliseconds since the epoch; for records and /health."""
    return time.time_ns() // 1_000_000
