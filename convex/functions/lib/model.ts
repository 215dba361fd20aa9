/**
 * Reads and writes of agents, presence and the change counter, shared by the public
 * service functions and the internal functions the actions call. Callers check the
 * service key and the arguments first.
 */
import type { Doc, Id } from "../_generated/dataModel";
import type { MutationCtx, QueryCtx } from "../_generated/server";
import type { Beat } from "./args";
import { contractError } from "./errors";

/** An agent's configuration, as `service/agents:list` returns it. */
export type AgentConfig = {
  id: Id<"agents">;
  name: string;
  sessionKey: string;
  heartbeatIntervalMs: number;
  updatedAt: number;
};

/** An agent's presence, as `service/presence:list` returns it. */
export type Presence = {
  agentId: Id<"agents">;
  status: "online" | "offline";
  lastHeartbeatAt: number | null;
};

/** Configuration and presence in one row (`service/actions:listAgents`). */
export type AgentRow = AgentConfig & Omit<Presence, "agentId">;

/** The fields `updateAgent` may change. */
export type AgentChanges = Partial<
  Pick<AgentConfig, "name" | "sessionKey" | "heartbeatIntervalMs">
>;

const AGENTS_COUNTER = "agents";

function toConfig(agent: Doc<"agents">): AgentConfig {
  const { _id, name, sessionKey, heartbeatIntervalMs, updatedAt } = agent;
  return { id: _id, name, sessionKey, heartbeatIntervalMs, updatedAt };
}

function toPresence(agentId: Id<"agents">, row: Doc<"presence"> | undefined): Presence {
  return {
    agentId,
    status: row?.status ?? "offline",
    lastHeartbeatAt: row?.lastHeartbeatAt ?? null,
  };
}

/** Every agent document, oldest first (by creation time). */
function allAgents(ctx: QueryCtx): Promise<Doc<"agents">[]> {
  return ctx.db.query("agents").collect();
}

/** Every presence document, by agent id. */
async function presenceByAgent(ctx: QueryCtx): Promise<Map<Id<"agents">, Doc<"presence">>> {
  const rows = await ctx.db.query("presence").collect();
  return new Map(rows.map((row) => [row.agentId, row]));
}

function presenceOf(ctx: QueryCtx, agentId: Id<"agents">): Promise<Doc<"presence"> | null> {
  return ctx.db
    .query("presence")
    .withIndex("by_agentId", (q) => q.eq("agentId", agentId))
    .first();
}

/** Every agent's configuration, oldest first. Reads no presence. */
export async function listAgents(ctx: QueryCtx): Promise<AgentConfig[]> {
  return (await allAgents(ctx)).map(toConfig);
}

/** Every agent's presence, in the order of `listAgents` (offline if never seen). */
export async function listPresence(ctx: QueryCtx): Promise<Presence[]> {
  const [agents, presence] = await Promise.all([allAgents(ctx), presenceByAgent(ctx)]);
  return agents.map((agent) => toPresence(agent._id, presence.get(agent._id)));
}

/** Configuration and presence of every agent, one row each, oldest first. */
export async function listAgentRows(ctx: QueryCtx): Promise<AgentRow[]> {
  const [agents, presence] = await Promise.all([allAgents(ctx), presenceByAgent(ctx)]);
  return agents.map((agent) => {
    const { status, lastHeartbeatAt } = toPresence(agent._id, presence.get(agent._id));
    return { ...toConfig(agent), status, lastHeartbeatAt };
  });
}

/** The agents change counter as a string ("0" before the first change). */
export async function agentsVersion(ctx: QueryCtx): Promise<string> {
  const counter = await ctx.db
    .query("counters")
    .withIndex("by_name", (q) => q.eq("name", AGENTS_COUNTER))
    .unique();
  return String(counter?.value ?? 0);
}

/** Move the agents change counter; called by every configuration change. */
async function bumpAgentsVersion(ctx: MutationCtx): Promise<void> {
  const counter = await ctx.db
    .query("counters")
    .withIndex("by_name", (q) => q.eq("name", AGENTS_COUNTER))
    .unique();
  if (counter) await ctx.db.patch(counter._id, { value: counter.value + 1 });
  else await ctx.db.insert("counters", { name: AGENTS_COUNTER, value: 1 });
}

/** The agent with this id, or `NOT_FOUND` (also for ids that are not agent ids). */
async function requireAgent(ctx: MutationCtx, agentId: string): Promise<Doc<"agents">> {
  const id = ctx.db.normalizeId("agents", agentId);
  const agent = id && (await ctx.db.get(id));
  if (!agent) throw contractError("NOT_FOUND", `no agent with id ${JSON.stringify(agentId)}`);
  return agent;
}

/**
 * Create an agent (`sessionKey` defaults to `agent:<id>`) with offline presence,
 * and move the change counter. Returns its configuration.
 */
export async function createAgent(
  ctx: MutationCtx,
  fields: { name: string; heartbeatIntervalMs: number; sessionKey?: string },
): Promise<AgentConfig> {
  const { name, heartbeatIntervalMs, sessionKey } = fields;
  const id = await ctx.db.insert("agents", {
    name,
    heartbeatIntervalMs,
    sessionKey: sessionKey ?? "",
    updatedAt: Date.now(),
  });
  if (sessionKey === undefined) await ctx.db.patch(id, { sessionKey: `agent:${id}` });
  await ctx.db.insert("presence", { agentId: id, status: "offline", lastHeartbeatAt: null });
  await bumpAgentsVersion(ctx);
  return toConfig((await ctx.db.get(id))!);
}

/**
 * Change some of an agent's fields, set `updatedAt`, and move the change counter.
 * Returns the configuration after the change; `NOT_FOUND` for an unknown id.
 */
export async function updateAgent(
  ctx: MutationCtx,
  agentId: string,
  changes: AgentChanges,
): Promise<AgentConfig> {
  const agent = await requireAgent(ctx, agentId);
  // Leave out unchanged fields: `patch` would delete a field set to undefined.
  const set = Object.fromEntries(
    Object.entries(changes).filter(([, value]) => value !== undefined),
  );
  await ctx.db.patch(agent._id, { ...set, updatedAt: Date.now() });
  await bumpAgentsVersion(ctx);
  return toConfig((await ctx.db.get(agent._id))!);
}

/** Delete an agent and its presence, and move the change counter; `NOT_FOUND` for an unknown id. */
export async function removeAgent(ctx: MutationCtx, agentId: string): Promise<void> {
  const agent = await requireAgent(ctx, agentId);
  const presence = await ctx.db
    .query("presence")
    .withIndex("by_agentId", (q) => q.eq("agentId", agent._id))
    .collect();
  for (const row of presence) await ctx.db.delete(row._id);
  await ctx.db.delete(agent._id);
  await bumpAgentsVersion(ctx);
}

/**
 * Set each beat's agent online with `lastHeartbeatAt = max(old, atMs)`. Unknown agent
 * ids are ignored; presence is written only when it changes; `agents` is never written.
 */
export async function recordHeartbeats(ctx: MutationCtx, beats: Beat[]): Promise<void> {
  for (const { agentId, atMs } of beats) {
    const id = ctx.db.normalizeId("agents", agentId);
    if (!id) continue;
    const row = await presenceOf(ctx, id);
    if (row) {
      const last = Math.max(row.lastHeartbeatAt ?? atMs, atMs);
      if (row.status !== "online" || row.lastHeartbeatAt !== last) {
        await ctx.db.patch(row._id, { status: "online", lastHeartbeatAt: last });
      }
    } else if (await ctx.db.get(id)) {
      await ctx.db.insert("presence", { agentId: id, status: "online", lastHeartbeatAt: atMs });
    }
  }
}

/** Set these agents offline (keeping `lastHeartbeatAt`); unknown agent ids are ignored. */
export async function markOffline(ctx: MutationCtx, agentIds: string[]): Promise<void> {
  for (const agentId of agentIds) {
    const id = ctx.db.normalizeId("agents", agentId);
    const row = id && (await presenceOf(ctx, id));
    if (row && row.status !== "offline") await ctx.db.patch(row._id, { status: "offline" });
  }
}
