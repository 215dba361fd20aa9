/** Shared by the tests: a fresh convex-test backend and a call by kind and path. */
import { convexTest } from "convex-test";
import { makeFunctionReference } from "convex/server";
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
