/**
 * Scheduled functions (`_scheduled_functions`): the presence sweep and the worker
 * expiries each keep the id of their pending run, and replace it with these.
 */
import type { Id } from "../_generated/dataModel";
import type { MutationCtx } from "../_generated/server";

/** The state of a scheduled run (`pending`, `inProgress`, `success`, ...), or null if gone. */
async function stateOf(ctx: MutationCtx, jobId: Id<"_scheduled_functions">) {
  return (await ctx.db.system.get(jobId))?.state.kind ?? null;
}

/**
 * Whether this run is still going to happen or happening: `pending` or `inProgress`
 * (a scheduled mutation is never seen `inProgress` on Convex, but convex-test shows it).
 */
export async function isScheduled(
  ctx: MutationCtx,
  jobId: Id<"_scheduled_functions">,
): Promise<boolean> {
  const state = await stateOf(ctx, jobId);
  return state === "pending" || state === "inProgress";
}

/**
 * Cancel this run if it has not started. Canceling a run that has finished is not
 * needed (and may throw on Convex), so it is left alone.
 */
export async function cancelIfPending(
  ctx: MutationCtx,
  jobId: Id<"_scheduled_functions">,
): Promise<void> {
  if ((await stateOf(ctx, jobId)) === "pending") await ctx.scheduler.cancel(jobId);
}
