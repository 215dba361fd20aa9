"""Text that reaches a log line or an error message: labels (names and keys that appear
in every log line) and how a bad value is quoted (cut, control characters escaped)."""

import re
from typing import Annotated

from pydantic import AfterValidator, Field

MAX_LABEL_CHARS = 200
"""The longest agent name or session key: both appear in every log line of the agent,
in its thread's name and in /health, so a long one makes every one of them long."""

LABEL_RULE = f"1 to {MAX_LABEL_CHARS} characters and no control characters"
"""What a label must be, as error messages say it after `expected`."""

SHOWN_VALUE_CHARS = 80
"""How much of a bad value an error message quotes: enough to recognise it, while a
1 MB value still makes a short line."""

CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED_ESCAPES = {"\n": r"\n", "\r": r"\r", "\t": r"\t"}


def escape_controls(text: str) -> str:
    """`text` with each control character (U+0000-U+001F, U+007F-U+009F) written as its
    escape, `\\n` or `\\x1b`: printed, it stays on one line and sends no terminal codes."""
    return CONTROL_CHARACTER.sub(lambda m: _NAMED_ESCAPES.get(m[0], f"\\x{ord(m[0]):02x}"), text)


def cut(text: str, max_chars: int) -> str:
    """`text` if it has at most `max_chars` characters, else its first `max_chars`
    followed by the full length, as in `abc...(1048576 chars)`."""
    return text if len(text) <= max_chars else f"{text[:max_chars]}...({len(text)} chars)"


def shown(value: object, max_chars: int = SHOWN_VALUE_CHARS) -> str:
    """A bad value as an error message quotes it, on one short line.

    A string is quoted as by `repr` (control characters escaped), cut to its first
    `max_chars` characters with its full length after the quote: `'abc'...(1048576
    chars)`. Any other value is its `repr`, cut and escaped alike.
    """
    if not isinstance(value, str):
        return escape_controls(cut(repr(value), max_chars))
    if len(value) <= max_chars:
        return repr(value)
    return f"{value[:max_chars]!r}...({len(value)} chars)"


def label_problem(text: str) -> str | None:
    """What makes `text` unfit as an agent's name or session key, in one line that quotes
    it (cut and escaped) and says what is expected; None if it is fit.

    The rule: 1 to MAX_LABEL_CHARS characters, none a control character (U+0000-U+001F,
    U+007F-U+009F), so a label can never split or bloat a log line.
    """
    if not text:
        problem = "empty"
    elif len(text) > MAX_LABEL_CHARS:
        problem = "too long"
    elif control := CONTROL_CHARACTER.search(text):
        problem = f"control character {control[0]!r} at index {control.start()}"
    else:
        return None
    return f"{shown(text)} is invalid ({problem}): expected {LABEL_RULE}"


def _label(text: str) -> str:
    problem = label_problem(text)
    if problem is not None:
        raise ValueError(problem)
    return text


Label = Annotated[str, Field(strict=True), AfterValidator(_label)]
"""An agent's name or session key: a string (nothing is coerced) that `label_problem`
accepts."""
