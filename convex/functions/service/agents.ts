/**
 * Agent configuration: `service/agents:*` in ../../../contract/README.md.
 * Every function checks `serviceKey` first (`UNAUTHORIZED`), then its arguments
 * (`INVALID_ARGUMENT`).
 */
import { v } from "convex/values";
import { mutation, query } from "../_generated/server";
import { heartbeatIntervalMs, label, optional, serviceArgs, string } from "../lib/args";
import * as model from "../lib/model";

/**
 * Every agent's configuration `{id, name, sessionKey, heartbeatIntervalMs, updatedAt}`,
 * oldest first. Reads no presence, so heartbeats never invalidate it.
 */
export const list = query({
  args: v.any(),
  handler: async (ctx, args): Promise<model.AgentConfig[]> => {
    serviceArgs(args, []);
    return await model.listAgents(ctx);
  },
});

/**
 * A string that changes when an agent is created, updated or removed, and when a
 * worker joins, leaves or expires; never on heartbeats, `markOffline` or the sweep.
 */
export const version = query({
  args: v.any(),
  handler: async (ctx, args): Promise<string> => {
    serviceArgs(args, []);
    return await model.agentsVersion(ctx);
  },
});

/**
 * Create an agent from `name`, `heartbeatIntervalMs` and optional `sessionKey`
 * (default `agent:<id>`); its presence starts offline. Returns its configuration. A
 * repeated `idempotencyKey` returns the agent the first call created, and creates none.
 */
export const create = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<model.AgentConfig> => {
    const a = serviceArgs(args, ["name", "heartbeatIntervalMs", "sessionKey", "idempotencyKey"]);
    return await model.createAgent(ctx, {
      name: label("name", a.name),
      heartbeatIntervalMs: heartbeatIntervalMs("heartbeatIntervalMs", a.heartbeatIntervalMs),
      sessionKey: optional(label, "sessionKey", a.sessionKey),
      idempotencyKey: optional(label, "idempotencyKey", a.idempotencyKey),
    });
  },
});

/**
 * Change the given fields (`name?`, `heartbeatIntervalMs?`, `sessionKey?`) of agent
 * `agentId` and set `updatedAt`. Returns the configuration after the change;
 * `NOT_FOUND` for an unknown id.
 */
export const update = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<model.AgentConfig> => {
    const a = serviceArgs(args, ["agentId", "name", "heartbeatIntervalMs", "sessionKey"]);
    const agentId = string("agentId", a.agentId);
    const changes: model.AgentChanges = {
      name: optional(label, "name", a.name),
      heartbeatIntervalMs: optional(
        heartbeatIntervalMs,
        "heartbeatIntervalMs",
        a.heartbeatIntervalMs,
      ),
      sessionKey: optional(label, "sessionKey", a.sessionKey),
    };
    return await model.updateAgent(ctx, agentId, changes);
  },
});

/** Remove agent `agentId` and its presence; `NOT_FOUND` for an unknown id. Returns null. */
export const remove = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<null> => {
    const a = serviceArgs(args, ["agentId"]);
    await model.removeAgent(ctx, string("agentId", a.agentId));
    return null;
  },
});
