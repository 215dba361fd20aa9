"""Argument checks shared by the LocalService functions: each failure is the
INVALID_ARGUMENT the reference functions give, with a one-line message naming the field."""

from typing import Any

from messages.text import label_problem
from tests.fake_convex import ServiceError


def string(args: dict[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str):
        raise ServiceError("INVALID_ARGUMENT", f"{name}: expected a string, got {value!r}")
    return value


def label(args: dict[str, Any], name: str) -> str:
    value = string(args, name)
    problem = label_problem(value)
    if problem is not None:
        raise ServiceError("INVALID_ARGUMENT", f"{name}: {problem}")
    return value


def whole(args: dict[str, Any], name: str, low: int, high: int | None = None) -> int:
    value = args.get(name)
    whole = isinstance(value, int | float) and not isinstance(value, bool)
    if not whole or value != int(value) or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ServiceError("INVALID_ARGUMENT", f"{name}: a whole number {bounds}, got {value!r}")
    return int(value)
