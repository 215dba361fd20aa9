"""The one retry policy for backend calls (tenacity): only what is safe to retry.

A call is retried on `BackendUnavailable` only, with exponential backoff and full jitter:
- always when the request surely did not run (it was never sent, or was refused with 429);
- otherwise (timeout after sending, 5xx, unreadable answer) only if the call is
  idempotent by design, since the first attempt may have taken effect.
Coded application errors, rejected keys and function errors are never retried.
"""

from collections.abc import Callable
from typing import TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from agent_runtime.errors import BackendUnavailable

T = TypeVar("T")

RETRY_ATTEMPTS = 4
"""Attempts in all, the first included."""

RETRY_MULTIPLIER_S = 0.2
RETRY_MAX_WAIT_S = 2.0
"""Waits are random in [0, min(RETRY_MAX_WAIT_S, RETRY_MULTIPLIER_S * 2**n)]."""


class Unavailable(BackendUnavailable):
    """A `BackendUnavailable` that knows whether the request may have run."""

    def __init__(self, message: str, *, may_have_run: bool) -> None:
        super().__init__(message)
        self.may_have_run = may_have_run


def call_with_retries(attempt: Callable[[], T], *, idempotent: bool) -> T:
    """Run `attempt()`, retrying `Unavailable` failures that are safe to retry.

    Raises the last error when retries run out or are not safe.
    """

    def safe(error: BaseException) -> bool:
        return isinstance(error, Unavailable) and (idempotent or not error.may_have_run)

    retrying = Retrying(
        retry=retry_if_exception(safe),
        wait=wait_random_exponential(multiplier=RETRY_MULTIPLIER_S, max=RETRY_MAX_WAIT_S),
        stop=stop_after_attempt(RETRY_ATTEMPTS),
        reraise=True,
    )
    return retrying(attempt)
