"""Pages of a list for the `LocalService` functions, as the reference functions return them
(convex/functions/lib/pages.ts): `cursor?` and `numItems?` in, `{page, continueCursor, isDone}`
out, a page ending at `numItems` rows or once its rows reach `MAX_PAGE_BYTES`.

The cursor here is the offset of the page's first row: a row removed between two pages shifts
the rest by one (Convex's cursors are positions in an index, and do not), which no test relies on.
"""

import json
from collections.abc import Sequence
from typing import Any

from tests.fake_convex import ServiceError, charge
from tests.service_args import whole

PAGE_ARGS = {"cursor", "numItems"}
MAX_PAGE_ITEMS = 1000
MAX_PAGE_BYTES = 1 << 20
"""As convex/functions/lib/pages.ts (its `maximumBytesRead`; the rows' JSON is counted here)."""


def page_of(
    rows: Sequence[dict[str, Any]], args: dict[str, Any], *, reads_per_row: int = 1
) -> dict[str, Any]:
    """The page of `rows` (the whole list, in order) that `args` asks for, charged as
    `reads_per_row` documents read per row on it."""
    cursor = args.get("cursor")
    if cursor is not None and (not isinstance(cursor, str) or not cursor.isdigit()):
        raise ServiceError("INVALID_ARGUMENT", f"cursor: null or a page's cursor, got {cursor!r}")
    num_items = whole(args, "numItems", 1, MAX_PAGE_ITEMS) if "numItems" in args else MAX_PAGE_ITEMS
    start = int(cursor or 0)
    end, size = start, 0
    while end < len(rows) and end - start < num_items and size < MAX_PAGE_BYTES:
        size += len(json.dumps(rows[end]))
        end += 1
    charge(read=(end - start) * reads_per_row)
    return {"page": list(rows[start:end]), "continueCursor": str(end), "isDone": end == len(rows)}
