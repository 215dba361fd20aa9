/**
 * Pages of a list: every list function reads one page per call, so no call reads,
 * returns or holds more than a bounded part of a table, whatever its size (Convex's
 * limits: ../../../docs/convex.md, "Limits"). A caller loops: `cursor` left out (or
 * null) for the first page, then each answer's `continueCursor` until `isDone`.
 */
import type { PaginationOptions } from "convex/server";
import { MAX_PAGE_ITEMS, pageCursor, pageSize } from "./args";

/** The arguments every list function takes besides its own. */
export const PAGE_ARGS = ["cursor", "numItems"];

/**
 * A page ends once the documents it read reach this many bytes (Convex's
 * `maximumBytesRead`), so a page of large rows (an agent's instructions and wake-up
 * prompt can reach about 200 KiB) holds fewer of them: what one call reads and returns
 * stays near 1 MiB, far below the 8 MiB read and return limits.
 */
export const MAX_PAGE_BYTES = 1 << 20;

/** A page of rows, as every list function returns it. */
export type Page<T> = { page: T[]; continueCursor: string; isDone: boolean };

/**
 * The pagination options of a list call's arguments: `cursor` (left out or null: the
 * first page) and `numItems` (left out: `MAX_PAGE_ITEMS`), or `INVALID_ARGUMENT`.
 */
export function pageOptions(args: Record<string, unknown>): PaginationOptions {
  const { cursor, numItems } = args;
  return {
    cursor: cursor === undefined ? null : pageCursor("cursor", cursor),
    numItems: numItems === undefined ? MAX_PAGE_ITEMS : pageSize("numItems", numItems),
    maximumBytesRead: MAX_PAGE_BYTES,
  };
}

/** The one page of a list that is empty without a read (its `continueCursor` is never used). */
export function emptyPage<T>(): Page<T> {
  return { page: [], continueCursor: "", isDone: true };
}

/**
 * `page` with each row mapped by `row`, one row at a time: a row that reads (a presence
 * per agent) must not start 1000 reads at once, Convex's limit of concurrent IO
 * operations per function.
 */
export async function mapPage<D, T>(
  page: { page: D[]; continueCursor: string; isDone: boolean },
  row: (doc: D) => T | Promise<T>,
): Promise<Page<T>> {
  const rows: T[] = [];
  for (const doc of page.page) rows.push(await row(doc));
  return { page: rows, continueCursor: page.continueCursor, isDone: page.isDone };
}
