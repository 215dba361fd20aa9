/**
 * Worker registrations: `service/workers:*` in ../../../contract/README.md. Every
 * public function checks `serviceKey` first (`UNAUTHORIZED`), then its arguments
 * (`INVALID_ARGUMENT`). A worker joining, leaving or expiring moves
 * `service/agents:version`; a renewal does not.
 */
import { v } from "convex/values";
import { internalMutation, mutation, query } from "../_generated/server";
import { label, serviceArgs, ttlMs } from "../lib/args";
import * as workers from "../lib/workers";

/**
 * Register or renew worker `workerId` for instance `instanceId`, live for `ttlMs`
 * (1000 to 600000) from now. `CONFLICT` if another instance holds a live registration.
 * Returns `{workers: [live worker ids, sorted], expiresAt}`.
 */
export const heartbeat = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<workers.Heartbeat> => {
    const a = serviceArgs(args, ["workerId", "instanceId", "ttlMs"]);
    return await workers.heartbeatWorker(ctx, {
      workerId: label("workerId", a.workerId),
      instanceId: label("instanceId", a.instanceId),
      ttlMs: ttlMs("ttlMs", a.ttlMs),
    });
  },
});

/**
 * Remove the registration of `workerId` if it carries `instanceId`. Returns
 * `{removed: boolean}`.
 */
export const remove = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<{ removed: boolean }> => {
    const a = serviceArgs(args, ["workerId", "instanceId"]);
    return await workers.removeWorker(
      ctx,
      label("workerId", a.workerId),
      label("instanceId", a.instanceId),
    );
  },
});

/** The live worker ids, sorted. */
export const list = query({
  args: v.any(),
  handler: async (ctx, args): Promise<string[]> => {
    serviceArgs(args, []);
    return await workers.liveWorkers(ctx, Date.now());
  },
});

/** Internal, scheduled at a registration's `expiresAt`: delete it if still expired. */
export const expire = internalMutation({
  args: { workerId: v.string() },
  handler: async (ctx, { workerId }): Promise<null> => {
    await workers.expireWorker(ctx, workerId);
    return null;
  },
});
