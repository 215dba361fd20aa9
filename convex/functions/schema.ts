import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";

/**
 * Configuration (`agents`) and presence (`presence`) live in separate tables, so a
 * heartbeat never writes an `agents` document and never invalidates queries that
 * read only configuration. `counters` holds the change counters behind
 * `service/agents:version` and `service/jobs:version` (see ../lib/counters.ts). `sweeps`
 * holds at most one document: the pending presence sweep (see ../lib/model.ts).
 * `workers` holds the worker registrations. The `whatsapp*` tables hold the sender lease
 * of each WhatsApp account, the outbound queue, and what webhooks delivered (see
 * ../lib/whatsapp.ts). `jobs` holds the agents' job queue, and `turns` the history of
 * each conversation (see ../lib/jobs.ts).
 */
export default defineSchema({
  agents: defineTable({
    name: v.string(),
    sessionKey: v.string(),
    heartbeatIntervalMs: v.number(),
    /** Epoch ms of the last create or update. */
    updatedAt: v.number(),
    /** The `create` call's key: a retried create returns this agent. */
    idempotencyKey: v.optional(v.string()),
    /** The agent's system prompt; absent when unset. */
    instructions: v.optional(v.string()),
    /** The model of its jobs; absent when unset (the worker's default). */
    model: v.optional(v.string()),
    /** The input of its wake-up jobs; set exactly when `wakeupIntervalMs` is. */
    wakeupPrompt: v.optional(v.string()),
    /** Ms between its wake-ups; set exactly when `wakeupPrompt` is. */
    wakeupIntervalMs: v.optional(v.number()),
  }).index("by_idempotencyKey", ["idempotencyKey"]),
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
    /**
     * A copy of the agent's `heartbeatIntervalMs`, so that a beat reads no agent
     * document (see ../lib/model.ts, `recordHeartbeats`). Absent on documents written
     * before this field existed, until the agent's next beat.
     */
    heartbeatIntervalMs: v.optional(v.number()),
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
  whatsappLeases: defineTable({
    accountId: v.string(),
    ownerId: v.string(),
    /** Moves by one each time another owner takes the lease; never goes back. */
    epoch: v.number(),
    /** Epoch ms: the lease is held while `expiresAt` is later than the clock. */
    expiresAt: v.number(),
  }).index("by_accountId", ["accountId"]),
  whatsappOutbound: defineTable({
    accountId: v.string(),
    /** Digits only (no "+"). */
    to: v.string(),
    text: v.string(),
    status: v.union(
      v.literal("queued"),
      v.literal("sending"),
      v.literal("sent"),
      v.literal("delivered"),
      v.literal("read"),
      v.literal("failed"),
    ),
    /** Failed sends, and claim locks that expired. */
    attempts: v.number(),
    /** Epoch ms: a queued message is not claimed before. */
    notBefore: v.number(),
    /**
     * The latest claim's token: current while `sending`; kept after `markSent` and
     * `markFailed` so that a repeat is recognized; removed by `release`.
     */
    claimToken: v.optional(v.string()),
    /** The lease epoch of the latest claim. */
    claimEpoch: v.optional(v.number()),
    /** Epoch ms: while `sending`, the claim's lock lasts until then. */
    lockedUntil: v.optional(v.number()),
    /** WhatsApp's message id, from `markSent`. */
    wamid: v.optional(v.string()),
    lastError: v.optional(v.string()),
    idempotencyKey: v.optional(v.string()),
    createdAt: v.number(),
    updatedAt: v.number(),
  })
    .index("by_accountId", ["accountId"])
    .index("by_accountId_status", ["accountId", "status"])
    .index("by_accountId_status_notBefore", ["accountId", "status", "notBefore"])
    .index("by_accountId_status_lockedUntil", ["accountId", "status", "lockedUntil"])
    .index("by_accountId_idempotencyKey", ["accountId", "idempotencyKey"])
    .index("by_wamid", ["wamid"]),
  whatsappInbound: defineTable({
    accountId: v.string(),
    /** WhatsApp's message id: recorded once (the dedupe key). */
    providerId: v.string(),
    from: v.string(),
    text: v.string(),
    /** Epoch ms: the webhook's timestamp of the message. */
    receivedAt: v.number(),
    /** Epoch ms: when the backend recorded it. */
    recordedAt: v.number(),
  })
    .index("by_providerId", ["providerId"])
    .index("by_accountId_receivedAt", ["accountId", "receivedAt"]),
  whatsappStatuses: defineTable({
    accountId: v.string(),
    /** The wamid of an outbound message. */
    providerId: v.string(),
    /** Recorded once per (providerId, status) (the dedupe key). */
    status: v.union(
      v.literal("sent"),
      v.literal("delivered"),
      v.literal("read"),
      v.literal("failed"),
    ),
    /** Epoch ms: the webhook's timestamp of the status. */
    timestamp: v.number(),
    error: v.optional(v.string()),
    /** Epoch ms: when the backend recorded it. */
    recordedAt: v.number(),
  }).index("by_providerId_status", ["providerId", "status"]),
  jobs: defineTable({
    agentId: v.id("agents"),
    /** `task`, or `wakeup` (at most one queued or running per agent); absent: `task`. */
    kind: v.optional(v.union(v.literal("task"), v.literal("wakeup"))),
    /** The conversation the job continues, if any. */
    conversation: v.optional(
      v.union(
        v.object({ channel: v.literal("whatsapp"), accountId: v.string(), contact: v.string() }),
        v.object({ channel: v.literal("direct"), id: v.string() }),
      ),
    ),
    /** The conversation's key (see `conversationKey`), for a job with a conversation. */
    conversationKey: v.optional(v.string()),
    input: v.string(),
    status: v.union(
      v.literal("queued"),
      v.literal("running"),
      v.literal("done"),
      v.literal("failed"),
      v.literal("dead"),
    ),
    /** Failed runs, and claim locks that expired. */
    attempts: v.number(),
    /** Epoch ms: a queued job is not claimed before (it holds back its agent's later jobs). */
    notBefore: v.number(),
    /** Epoch ms: while `running`, the claim's lock lasts until then. */
    lockedUntil: v.optional(v.number()),
    /**
     * The latest claim's token: current while `running`; kept after `complete` (so that
     * a repeat is recognized) and `fail`; removed when its lock expires.
     */
    claimToken: v.optional(v.string()),
    /** The worker of the latest claim. */
    workerId: v.optional(v.string()),
    result: v.optional(v.string()),
    /** The latest failure (`fail`, or an expired lock), cut to 500 characters. */
    error: v.optional(v.string()),
    usage: v.optional(v.object({ inputTokens: v.number(), outputTokens: v.number() })),
    steps: v.optional(v.number()),
    /** The outbound WhatsApp message `complete` queued as the reply. */
    replyId: v.optional(v.id("whatsappOutbound")),
    idempotencyKey: v.optional(v.string()),
    createdAt: v.number(),
    updatedAt: v.number(),
  })
    .index("by_agentId", ["agentId"])
    .index("by_status", ["status"])
    .index("by_agentId_status", ["agentId", "status"])
    .index("by_agentId_kind_status", ["agentId", "kind", "status"])
    .index("by_conversationKey_status", ["conversationKey", "status"])
    .index("by_idempotencyKey", ["idempotencyKey"]),
  turns: defineTable({
    /** The conversation's key, as on the job. */
    conversationKey: v.string(),
    /** The agent session the job ran in; absent on turns stored before sessions. */
    sessionKey: v.optional(v.string()),
    jobId: v.id("jobs"),
    role: v.union(v.literal("user"), v.literal("assistant")),
    content: v.string(),
    /** Epoch ms: when the job that added the turn completed. */
    at: v.number(),
  }).index("by_conversationKey_sessionKey", ["conversationKey", "sessionKey"]),
});
