/**
 * Shared by the tests: a fresh convex-test backend, a call by kind and path, and, for
 * tests with fake timers, the scheduled runs and a clock that moves.
 */
import { convexTest } from "convex-test";
import { makeFunctionReference } from "convex/server";
import { vi } from "vitest";
import schema from "./functions/schema";

const modules = import.meta.glob("./functions/**/*.*s");

export type Kind = "query" | "mutation" | "action";
export type Backend = ReturnType<typeof newBackend>;

/** A fresh, empty backend running ./functions (reads AGENT_SECRET at call time). */
export function newBackend() {
  return convexTest(schema, modules);
}

/** Call the function at `path` ("dir/file:export") of this kind with `args`. */
export function call(
  t: Backend,
  kind: Kind,
  path: string,
  args: Record<string, unknown>,
): Promise<unknown> {
  switch (kind) {
    case "query":
      return t.query(makeFunctionReference<"query">(path), args);
    case "mutation":
      return t.mutation(makeFunctionReference<"mutation">(path), args);
    case "action":
      return t.action(makeFunctionReference<"action">(path), args);
  }
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
