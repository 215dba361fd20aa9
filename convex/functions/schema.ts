import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";

/**
 * Configuration (`agents`) and presence (`presence`) live in separate tables, so a
 * heartbeat never writes an `agents` document and never invalidates queries that
 * read only configuration. `counters` holds the change counter behind
 * `service/agents:version`, moved by every configuration change and by every worker
 * that joins, leaves or expires. `sweeps` holds at most one document: the pending
 * presence sweep (see ../lib/model.ts). `workers` holds the worker registrations.
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
    /**
     * Epoch ms at which an online agent goes stale: `lastHeartbeatAt + 3 x
     * heartbeatIntervalMs`, as of the latest beat. Absent before the first beat (and
     * on documents written before this field existed, which count as stale).
     */
    staleAt: v.optional(v.number()),
  })
    .index("by_agentId", ["agentId"])
    .index("by_status_staleAt", ["status", "staleAt"]),
  counters: defineTable({
    name: v.string(),
    value: v.number(),
  }).index("by_name", ["name"]),
  sweeps: defineTable({
    /** The pending `service/presence:sweep` run. */
    jobId: v.id("_scheduled_functions"),
    /** Epoch ms it is scheduled at. */
    runAt: v.number(),
  }),
  workers: defineTable({
    workerId: v.string(),
    /** Unique per worker process start: only this instance may renew or remove. */
    instanceId: v.string(),
    /** Epoch ms: the registration is live while `expiresAt` is later than the clock. */
    expiresAt: v.number(),
    /** The pending `service/workers:expire` run for this registration. */
    expiryJobId: v.id("_scheduled_functions"),
  })
    .index("by_workerId", ["workerId"])
    .index("by_expiresAt", ["expiresAt"]),
});
