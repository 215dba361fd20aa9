/**
 * Agent presence: `service/presence:*` in ../../../contract/README.md. Presence
 * writes never touch `agents` and never move `service/agents:version`.
 */
import { v } from "convex/values";
import { mutation, query } from "../_generated/server";
import { beats, serviceArgs, stringArray } from "../lib/args";
import * as model from "../lib/model";

/**
 * `{agentId, status, lastHeartbeatAt}` for every agent, in the order of
 * `service/agents:list`.
 */
export const list = query({
  args: v.any(),
  handler: async (ctx, args): Promise<model.Presence[]> => {
    serviceArgs(args, []);
    return await model.listPresence(ctx);
  },
});

/**
 * For each of `beats: [{agentId, atMs}]`, set the agent online with
 * `lastHeartbeatAt = max(old, atMs)`. Unknown agents are ignored. Returns null.
 */
export const recordHeartbeats = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<null> => {
    const a = serviceArgs(args, ["beats"]);
    await model.recordHeartbeats(ctx, beats("beats", a.beats));
    return null;
  },
});

/** Set the agents `agentIds: [string]` offline. Unknown agents are ignored. Returns null. */
export const markOffline = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<null> => {
    const a = serviceArgs(args, ["agentIds"]);
    await model.markOffline(ctx, stringArray("agentIds", a.agentIds));
    return null;
  },
});
