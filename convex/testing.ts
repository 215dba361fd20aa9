/**
 * Shared by the tests: a fresh convex-test backend, a call by kind and path, the rows of a
 * list's page, and, for tests with fake timers, the scheduled runs and a clock that moves.
 */
import { convexTest } from "convex-test";
import { makeFunctionReference } from "convex/server";
import { getConvexSize, type Value } from "convex/values";
import { expect, vi } from "vitest";
import schema from "./functions/schema";

const modules = import.meta.glob("./functions/**/*.*s");

export type Kind = "query" | "mutation" | "action";
export type Backend = ReturnType<typeof newBackend>;

const MiB = 1 << 20;

/**
 * Convex's transaction limits, the stricter where its limits page has said two values
 * (../docs/convex.md, "Limits"): a function that exceeds one fails, as on a deployment.
 */
const TRANSACTION_LIMITS = {
  bytesRead: 8 * MiB,
  bytesWritten: 8 * MiB,
  documentsRead: 16_384,
  documentsWritten: 8_192,
  databaseQueries: 4_096,
};

/** Most elements of an array, and bytes of an argument or a return value. */
const MAX_ARRAY_ELEMENTS = 8_192;
const MAX_VALUE_BYTES = 8 * MiB;

/**
 * A fresh, empty backend running ./functions (reads AGENT_SECRET at call time), with
 * Convex's transaction limits enforced.
 */
export function newBackend() {
  return convexTest({ schema, modules, transactionLimits: TRANSACTION_LIMITS });
}

/**
 * Call the function at `path` ("dir/file:export") of this kind with `args`. Fails, as a
 * deployment does, if the arguments or the result break Convex's value limits.
 */
export async function call(
  t: Backend,
  kind: Kind,
  path: string,
  args: Record<string, unknown>,
): Promise<unknown> {
  checkValue(`${path} arguments`, args);
  let result: unknown;
  switch (kind) {
    case "query":
      result = await t.query(makeFunctionReference<"query">(path), args);
      break;
    case "mutation":
      result = await t.mutation(makeFunctionReference<"mutation">(path), args);
      break;
    case "action":
      result = await t.action(makeFunctionReference<"action">(path), args);
      break;
  }
  checkValue(`${path} return value`, result);
  return result;
}

/** Throw if `value` has an array over 8192 elements or is over 8 MiB (convex-test checks neither). */
function checkValue(what: string, value: unknown): void {
  const longest = (v: unknown): number => {
    if (Array.isArray(v)) return Math.max(v.length, ...v.map(longest));
    if (v !== null && typeof v === "object") return Math.max(0, ...Object.values(v).map(longest));
    return 0;
  };
  if (longest(value) > MAX_ARRAY_ELEMENTS) {
    throw new Error(`${what}: an array is longer than ${MAX_ARRAY_ELEMENTS} elements`);
  }
  const size = value === undefined ? 0 : getConvexSize(value as Value);
  if (size > MAX_VALUE_BYTES) throw new Error(`${what}: ${size} bytes, over ${MAX_VALUE_BYTES}`);
}

/** The rows of a list call's answer: its one page (every list in the tests fits in one). */
export async function pageRows<T>(answer: Promise<unknown>): Promise<T[]> {
  const { page, isDone } = (await answer) as { page: T[]; isDone: boolean };
  expect(isDone).toBe(true);
  return page;
}

/** What the tests read of a scheduled run. */
export type ScheduledRun = {
  _id: string;
  name: string;
  scheduledTime: number;
  state: { kind: string };
};

/** The scheduled runs of `name` (e.g. "service/presence:sweep"), in this state if given. */
export async function scheduledRuns(
  t: Backend,
  name: string,
  state?: string,
): Promise<ScheduledRun[]> {
  const all: ScheduledRun[] = await t.run((ctx) =>
    ctx.db.system.query("_scheduled_functions").collect(),
  );
  return all.filter(
    (run) => run.name.startsWith(name) && (state === undefined || run.state.kind === state),
  );
}

/**
 * With fake timers: move the clock by `ms`, firing due timers, and let the scheduled runs
 * they start finish.
 */
export async function advance(t: Backend, ms: number): Promise<void> {
  vi.advanceTimersByTime(ms);
  await t.finishInProgressScheduledFunctions();
}
