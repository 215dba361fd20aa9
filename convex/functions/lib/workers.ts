/**
 * Worker registrations (`service/workers:*` in ../../../contract/README.md), shared by
 * the public functions and the scheduled expiry. A registration is live while its
 * `expiresAt` is later than the backend's clock; each one has a scheduled
 * `service/workers:expire` run at `expiresAt`, replaced at every renewal. Callers check
 * the service key and the arguments first.
 */
import { internal } from "../_generated/api";
import type { Doc } from "../_generated/dataModel";
import type { MutationCtx, QueryCtx } from "../_generated/server";
import { bumpCounter } from "./counters";
import { contractError } from "./errors";
import { cancelIfPending } from "./scheduled";

/** What `service/workers:heartbeat` returns. */
export type Heartbeat = { workers: string[]; expiresAt: number };

/** The registration of `workerId`, live or expired (there is at most one). */
function registrationOf(ctx: QueryCtx, workerId: string): Promise<Doc<"workers"> | null> {
  return ctx.db
    .query("workers")
    .withIndex("by_workerId", (q) => q.eq("workerId", workerId))
    .unique();
}

/**
 * The ids of the registrations live at `now`, sorted (plain string order). In a
 * query, `now` is fixed when the query starts and the clock moving does not re-run a
 * subscribed query; the expiry deleting the document does.
 */
export async function liveWorkers(ctx: QueryCtx, now: number): Promise<string[]> {
  const live = await ctx.db
    .query("workers")
    .withIndex("by_expiresAt", (q) => q.gt("expiresAt", now))
    .collect();
  return live.map((row) => row.workerId).sort();
}

/**
 * Register or renew `workerId` for `ttlMs` from now. No live registration (none or an
 * expired one): register this instance and move the change counter. A live one of this
 * instance: renew it (the counter does not move). A live one of another instance:
 * `CONFLICT`, nothing changes. Either way the pending expiry is replaced by one at the
 * new `expiresAt`. Returns the live worker ids (sorted) and the new `expiresAt`.
 */
export async function heartbeatWorker(
  ctx: MutationCtx,
  fields: { workerId: string; instanceId: string; ttlMs: number },
): Promise<Heartbeat> {
  const { workerId, instanceId, ttlMs } = fields;
  const now = Date.now();
  const current = await registrationOf(ctx, workerId);
  const live = current !== null && current.expiresAt > now;
  if (live && current.instanceId !== instanceId) {
    throw contractError(
      "CONFLICT",
      `worker ${JSON.stringify(workerId)} is registered by another instance`,
    );
  }
  const expiresAt = now + ttlMs;
  const expiryJobId = await ctx.scheduler.runAt(expiresAt, internal.service.workers.expire, {
    workerId,
  });
  if (current) {
    await cancelIfPending(ctx, current.expiryJobId);
    await ctx.db.patch(current._id, { instanceId, expiresAt, expiryJobId });
  } else {
    await ctx.db.insert("workers", { workerId, instanceId, expiresAt, expiryJobId });
  }
  if (!live) await bumpCounter(ctx, "agents");
  return { workers: await liveWorkers(ctx, now), expiresAt };
}

/**
 * Delete the registration of `workerId` if it carries `instanceId` (live, or expired
 * and not yet deleted by its expiry), cancel its expiry, and move the change counter.
 * Returns whether it deleted one.
 */
export async function removeWorker(
  ctx: MutationCtx,
  workerId: string,
  instanceId: string,
): Promise<{ removed: boolean }> {
  const current = await registrationOf(ctx, workerId);
  if (!current || current.instanceId !== instanceId) return { removed: false };
  await cancelIfPending(ctx, current.expiryJobId);
  await ctx.db.delete(current._id);
  await bumpCounter(ctx, "agents");
  return { removed: true };
}

/**
 * The scheduled expiry of `workerId`: delete its registration if it is expired at this
 * time (a renewal cancels the run, so this is only a guard), and move the change counter.
 */
export async function expireWorker(ctx: MutationCtx, workerId: string): Promise<void> {
  const current = await registrationOf(ctx, workerId);
  if (current && current.expiresAt <= Date.now()) {
    await ctx.db.delete(current._id);
    await bumpCounter(ctx, "agents");
  }
}
