"""Backoff delays and the restart intensity limit."""

import pytest

from actors.supervision import RestartIntensity
from agent_runtime.backoff import Backoff


def test_backoff_doubles_from_min_and_caps_at_max() -> None:
    backoff = Backoff(min_s=0.5, max_s=4.0, random_factor=0.2)
    no_jitter = [backoff.delay_s(n, rand=lambda: 0.0) for n in range(6)]
    assert no_jitter == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_backoff_jitter_adds_up_to_random_factor() -> None:
    backoff = Backoff(min_s=1.0, max_s=10.0, random_factor=0.2)
    assert backoff.delay_s(0, rand=lambda: 1.0) == pytest.approx(1.2)
    assert backoff.delay_s(3, rand=lambda: 0.5) == pytest.approx(8.8)
    delays = {backoff.delay_s(0) for _ in range(50)}
    assert len(delays) > 1
    assert all(1.0 <= d <= 1.2 for d in delays)


def test_backoff_survives_huge_attempt_counts() -> None:
    assert Backoff(min_s=0.5, max_s=30.0).delay_s(10_000, rand=lambda: 0.0) == 30.0


def test_intensity_allows_max_restarts_within_period_then_refuses() -> None:
    intensity = RestartIntensity(max_restarts=3, period_s=10.0)
    assert [intensity.allow(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert intensity.allow(3.0) is False


def test_intensity_forgets_restarts_older_than_period() -> None:
    intensity = RestartIntensity(max_restarts=2, period_s=10.0)
    assert intensity.allow(0.0)
    assert intensity.allow(5.0)
    assert intensity.allow(10.5)  # the restart at 0.0 has left the window
    assert not intensity.allow(11.0)
