/**
 * The change counters (`counters` table), one document per name: `agents` behind
 * `service/agents:version`, `jobs` behind `service/jobs:version`. A counter moves by one
 * at each change it signals, in the mutation that makes the change.
 */
import type { MutationCtx, QueryCtx } from "../_generated/server";

/**
 * `agents`: agent creates, updates and removes, and worker joins, leaves and expiries
 * (its name predates the workers). `jobs`: a job becoming claimable, by an event or by
 * time (lib/jobs.ts).
 */
export type Counter = "agents" | "jobs";

function counterDoc(ctx: QueryCtx, name: Counter) {
  return ctx.db
    .query("counters")
    .withIndex("by_name", (q) => q.eq("name", name))
    .unique();
}

/** The counter's value as a string ("0" before the first change). */
export async function readCounter(ctx: QueryCtx, name: Counter): Promise<string> {
  return String((await counterDoc(ctx, name))?.value ?? 0);
}

/** Move the counter by one. */
export async function bumpCounter(ctx: MutationCtx, name: Counter): Promise<void> {
  const counter = await counterDoc(ctx, name);
  if (counter) await ctx.db.patch(counter._id, { value: counter.value + 1 });
  else await ctx.db.insert("counters", { name, value: 1 });
}
