import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";

/**
 * Configuration (`agents`) and presence (`presence`) live in separate tables, so a
 * heartbeat never writes an `agents` document and never invalidates queries that
 * read only configuration. `counters` holds the change counter behind
 * `service/agents:version`, moved by every configuration change.
 */
export default defineSchema({
  agents: defineTable({
    name: v.string(),
    sessionKey: v.string(),
    heartbeatIntervalMs: v.number(),
    /** Epoch ms of the last create or update. */
    updatedAt: v.number(),
  }),
  presence: defineTable({
    agentId: v.id("agents"),
    status: v.union(v.literal("online"), v.literal("offline")),
    /** Epoch ms of the latest heartbeat; null before the first one. */
    lastHeartbeatAt: v.union(v.number(), v.null()),
  }).index("by_agentId", ["agentId"]),
  counters: defineTable({
    name: v.string(),
    value: v.number(),
  }).index("by_name", ["name"]),
});
