/**
 * Compatibility actions (`service/actions:*` in ../../../contract/README.md). Each
 * checks the service key and its arguments, then runs the shared code in
 * ../lib/model.ts through the internal query and mutation below.
 */
import { v } from "convex/values";
import { internal } from "../_generated/api";
import { action, internalMutation, internalQuery } from "../_generated/server";
import { epochMs, serviceArgs, string } from "../lib/args";
import { contractError } from "../lib/errors";
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
 * `{agentId, atMs}`. Returns null; `INVALID_ARGUMENT` if the beat is refused (more
 * than 60 s ahead of the backend's clock; nothing is written).
 */
export const updateAgentHeartbeat = action({
  args: v.any(),
  handler: async (ctx, args): Promise<null> => {
    const a = serviceArgs(args, ["agentId", "atMs"]);
    const beat = { agentId: string("agentId", a.agentId), atMs: epochMs("atMs", a.atMs) };
    const { refused } = await ctx.runMutation(internal.service.actions.recordBeats, {
      beats: [beat],
    });
    if (refused.length > 0) {
      throw contractError(
        "INVALID_ARGUMENT",
        `atMs ${beat.atMs} is more than ${model.MAX_AHEAD_MS} ms ahead of the backend's clock`,
      );
    }
    return null;
  },
});

/** Internal: configuration and presence of every agent (for `listAgents`). */
export const agentRows = internalQuery({
  args: {},
  handler: (ctx): Promise<model.AgentRow[]> => model.listAgentRows(ctx),
});

/**
 * Internal: record already-validated heartbeats (for `updateAgentHeartbeat`); returns
 * the refused ones as `service/presence:recordHeartbeats` does.
 */
export const recordBeats = internalMutation({
  args: { beats: v.array(v.object({ agentId: v.string(), atMs: v.number() })) },
  handler: (ctx, { beats }): Promise<{ refused: string[] }> =>
    model.recordHeartbeats(ctx, beats),
});
