/**
 * Compatibility actions (`service/actions:*` in ../../../contract/README.md). Each
 * checks the service key and its arguments, then runs the shared code in
 * ../lib/model.ts through the internal query and mutation below.
 */
import { v } from "convex/values";
import { internal } from "../_generated/api";
import { action, internalMutation, internalQuery } from "../_generated/server";
import { epochMs, serviceArgs, string } from "../lib/args";
import * as model from "../lib/model";

/** Configuration and presence in one row per agent, oldest first. */
export const listAgents = action({
  args: v.any(),
  handler: async (ctx, args): Promise<model.AgentRow[]> => {
    serviceArgs(args, []);
    return await ctx.runQuery(internal.service.actions.agentRows, {});
  },
});

/**
 * One heartbeat: as `service/presence:recordHeartbeats` with the single beat
 * `{agentId, atMs}`. Returns null.
 */
export const updateAgentHeartbeat = action({
  args: v.any(),
  handler: async (ctx, args): Promise<null> => {
    const a = serviceArgs(args, ["agentId", "atMs"]);
    const beat = { agentId: string("agentId", a.agentId), atMs: epochMs("atMs", a.atMs) };
    await ctx.runMutation(internal.service.actions.recordBeats, { beats: [beat] });
    return null;
  },
});

/** Internal: configuration and presence of every agent (for `listAgents`). */
export const agentRows = internalQuery({
  args: {},
  handler: (ctx): Promise<model.AgentRow[]> => model.listAgentRows(ctx),
});

/** Internal: record already-validated heartbeats (for `updateAgentHeartbeat`). */
export const recordBeats = internalMutation({
  args: { beats: v.array(v.object({ agentId: v.string(), atMs: v.number() })) },
  handler: async (ctx, { beats }): Promise<null> => {
    await model.recordHeartbeats(ctx, beats);
    return null;
  },
});
