"""Backoff: Akka's BackoffSupervisor delay (exponential, capped, with jitter, reset once
the child has run for a while), for restarts, retried syncs and reconnecting feeds."""

import random
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MIN_BACKOFF_S = 0.5
DEFAULT_MAX_BACKOFF_S = 30.0
DEFAULT_RANDOM_FACTOR = 0.2
"""Up to +20% jitter, so children that crashed together do not restart together."""


@dataclass(frozen=True)
class Backoff:
    """Delay before restart number `attempt` (0-based): min * 2**attempt, capped at max,
    times a random factor in [1, 1 + random_factor]."""

    min_s: float = DEFAULT_MIN_BACKOFF_S
    max_s: float = DEFAULT_MAX_BACKOFF_S
    random_factor: float = DEFAULT_RANDOM_FACTOR

    def delay_s(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The delay for `attempt` consecutive failures so far (0 = first restart)."""
        base: float = min(self.max_s, self.min_s * 2.0 ** min(attempt, 62))
        return base * (1 + self.random_factor * rand())

    @property
    def reset_after_s(self) -> float:
        """A child that ran this long before crashing starts again from attempt 0."""
        return self.max_s


DEFAULT_BACKOFF = Backoff()
