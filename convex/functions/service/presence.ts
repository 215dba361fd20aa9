/**
 * Agent presence: `service/presence:*` in ../../../contract/README.md. Presence
 * writes never touch `agents` and never move `service/agents:version`. An agent counts
 * as online only until its `staleAt`; the internal `sweep` sets stale documents offline.
 */
import { v } from "convex/values";
import { internalMutation, mutation, query } from "../_generated/server";
import { beats, offlineAgentIds, serviceArgs } from "../lib/args";
import * as model from "../lib/model";
import { PAGE_ARGS, pageOptions, type Page } from "../lib/pages";

/**
 * A page (`cursor?`, `numItems?`: see ../lib/pages.ts) of `{agentId, status,
 * lastHeartbeatAt}`, one per agent, in the order of `service/agents:list` (the same
 * cursors): `{page, continueCursor, isDone}`; `status` is online only if stored online and
 * not stale.
 */
export const list = query({
  args: v.any(),
  handler: async (ctx, args): Promise<Page<model.Presence>> => {
    const a = serviceArgs(args, PAGE_ARGS);
    return await model.listPresence(ctx, pageOptions(a));
  },
});

/**
 * For each of `beats: [{agentId, atMs}]` (at most 1000), set the agent online with
 * `lastHeartbeatAt = max(old, atMs)`. Unknown agents are ignored. Returns
 * `{refused: [agentId]}`: the beats more than 60 s ahead of the backend's clock,
 * which are not written.
 */
export const recordHeartbeats = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<{ refused: string[] }> => {
    const a = serviceArgs(args, ["beats"]);
    return await model.recordHeartbeats(ctx, beats("beats", a.beats));
  },
});

/**
 * Set the agents `agentIds: [string]` (at most 1000) offline. Unknown agents are ignored.
 * Returns null.
 */
export const markOffline = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<null> => {
    const a = serviceArgs(args, ["agentIds"]);
    await model.markOffline(ctx, offlineAgentIds("agentIds", a.agentIds));
    return null;
  },
});

/**
 * Internal, scheduled: set stale online presence documents offline, in bounded batches,
 * and schedule the next run (none while no agent is online). See `model.sweepStalePresence`.
 */
export const sweep = internalMutation({
  args: {},
  handler: async (ctx): Promise<null> => {
    await model.sweepStalePresence(ctx);
    return null;
  },
});
