/**
 * Reads and writes of agents, presence and the presence sweep, shared by the public
 * service functions and the internal functions the actions and the scheduler call.
 * Callers check the service key and the arguments first.
 */
import type { PaginationOptions } from "convex/server";
import { internal } from "../_generated/api";
import type { Doc, Id } from "../_generated/dataModel";
import type { MutationCtx, QueryCtx } from "../_generated/server";
import { requireWakeupPair, type AgentSettings, type Beat } from "./args";
import { bumpCounter } from "./counters";
import { contractError } from "./errors";
import { mapPage, type Page } from "./pages";
import { cancelIfPending, isScheduled } from "./scheduled";

/** An online agent goes stale after this many heartbeat intervals without a beat. */
export const STALE_AFTER_INTERVALS = 3;

/** A beat whose `atMs` is more than this ahead of the backend's clock is refused. */
export const MAX_AHEAD_MS = 60_000;

/** At most this many presence documents are set offline by one sweep run. */
export const SWEEP_BATCH = 500;

/**
 * A sweep is never scheduled sooner than this after now, unless a full batch leaves
 * more stale documents behind: expiries that close together are handled by one run.
 */
export const SWEEP_MIN_DELAY_MS = 1_000;

/** An agent's configuration, as `service/agents:list` returns it (null: unset). */
export type AgentConfig = {
  id: Id<"agents">;
  name: string;
  sessionKey: string;
  heartbeatIntervalMs: number;
  updatedAt: number;
} & AgentSettings;

/** An agent's presence, as `service/presence:list` returns it. */
export type Presence = {
  agentId: Id<"agents">;
  status: "online" | "offline";
  lastHeartbeatAt: number | null;
};

/** Configuration and presence in one row (`service/actions:listAgents`). */
export type AgentRow = AgentConfig & Omit<Presence, "agentId">;

/**
 * The fields `updateAgent` may change (undefined: unchanged); a setting set to null is
 * cleared.
 */
export type AgentChanges = Partial<
  Pick<AgentConfig, "name" | "sessionKey" | "heartbeatIntervalMs"> & AgentSettings
>;

function settingsOf(agent: Doc<"agents">): AgentSettings {
  return {
    instructions: agent.instructions ?? null,
    model: agent.model ?? null,
    wakeupPrompt: agent.wakeupPrompt ?? null,
    wakeupIntervalMs: agent.wakeupIntervalMs ?? null,
  };
}

function toConfig(agent: Doc<"agents">): AgentConfig {
  const { _id, name, sessionKey, heartbeatIntervalMs, updatedAt } = agent;
  return { id: _id, name, sessionKey, heartbeatIntervalMs, updatedAt, ...settingsOf(agent) };
}

/**
 * `values` as stored: an unset (null) setting is an absent field. `insert` leaves out a
 * field set to undefined, and `patch` deletes it.
 */
function asStored<T extends object>(values: T): { [K in keyof T]: Exclude<T[K], null> } {
  const entries = Object.entries(values).map(([key, value]) => [key, value ?? undefined]);
  return Object.fromEntries(entries) as { [K in keyof T]: Exclude<T[K], null> };
}

/**
 * Whether a stored presence document counts as online at `now`: stored online and not
 * yet stale. A document without `staleAt` (written before the field existed) is stale.
 */
function isOnline(row: Doc<"presence">, now: number): boolean {
  return row.status === "online" && (row.staleAt ?? 0) > now;
}

/** The presence an agent reports at `now` (offline if never seen or stale). */
function toPresence(
  agentId: Id<"agents">,
  row: Doc<"presence"> | undefined,
  now: number,
): Presence {
  return {
    agentId,
    status: row && isOnline(row, now) ? "online" : "offline",
    lastHeartbeatAt: row?.lastHeartbeatAt ?? null,
  };
}

/**
 * The backend's clock for a presence read. In a query, `Date.now()` is fixed when the
 * query starts, and Convex does not re-run a cached or subscribed query because the
 * clock moves (reading it only shortens how long a result stays cached): each call
 * gets the status as of its own start, and a subscriber sees an agent go offline when
 * a document it read changes, i.e. when the sweep writes the stale document offline
 * (within about a second of `staleAt`).
 */
function readClock(): number {
  return Date.now();
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

/** A page of the agents, oldest first (by creation time). */
function agentsPage(ctx: QueryCtx, options: PaginationOptions) {
  return ctx.db.query("agents").paginate(options);
}

/** A page of the agents' configurations, oldest first. Reads no presence. */
export async function listAgents(
  ctx: QueryCtx,
  options: PaginationOptions,
): Promise<Page<AgentConfig>> {
  return mapPage(await agentsPage(ctx, options), toConfig);
}

/**
 * The presence of a page of agents, in the order of `listAgents` (offline if never
 * seen): one presence read per agent on the page.
 */
export async function listPresence(
  ctx: QueryCtx,
  options: PaginationOptions,
): Promise<Page<Presence>> {
  const now = readClock();
  return mapPage(await agentsPage(ctx, options), async (agent) =>
    toPresence(agent._id, (await presenceOf(ctx, agent._id)) ?? undefined, now),
  );
}

/** Configuration and presence of every agent, one row each, oldest first. */
export async function listAgentRows(ctx: QueryCtx): Promise<AgentRow[]> {
  const [agents, presence] = await Promise.all([allAgents(ctx), presenceByAgent(ctx)]);
  const now = readClock();
  return agents.map((agent) => {
    const { status, lastHeartbeatAt } = toPresence(agent._id, presence.get(agent._id), now);
    return { ...toConfig(agent), status, lastHeartbeatAt };
  });
}

/** The agent with this id, or null (also for strings that are not agent ids). */
export async function findAgent(ctx: QueryCtx, agentId: string): Promise<Doc<"agents"> | null> {
  const id = ctx.db.normalizeId("agents", agentId);
  return id && (await ctx.db.get(id));
}

/** The agent with this id, or `NOT_FOUND` (also for ids that are not agent ids). */
export async function requireAgent(ctx: QueryCtx, agentId: string): Promise<Doc<"agents">> {
  const agent = await findAgent(ctx, agentId);
  if (!agent) throw contractError("NOT_FOUND", `no agent with id ${JSON.stringify(agentId)}`);
  return agent;
}

/**
 * Create an agent (`sessionKey` defaults to `agent:<id>`) with offline presence,
 * and move the `agents` counter. Returns its configuration. `INVALID_ARGUMENT` unless
 * `wakeupPrompt` and `wakeupIntervalMs` are both set or both unset.
 */
export async function createAgent(
  ctx: MutationCtx,
  fields: {
    name: string;
    heartbeatIntervalMs: number;
    sessionKey?: string;
    idempotencyKey?: string;
  } & AgentSettings,
): Promise<AgentConfig> {
  const { name, heartbeatIntervalMs, sessionKey, idempotencyKey, ...settings } = fields;
  requireWakeupPair(settings);
  if (idempotencyKey !== undefined) {
    const known = await ctx.db
      .query("agents")
      .withIndex("by_idempotencyKey", (q) => q.eq("idempotencyKey", idempotencyKey))
      .first();
    if (known) return toConfig(known); // a retried create: the first one's agent
  }
  const id = await ctx.db.insert("agents", {
    name,
    heartbeatIntervalMs,
    sessionKey: sessionKey ?? "",
    updatedAt: Date.now(),
    idempotencyKey,
    ...asStored(settings),
  });
  if (sessionKey === undefined) await ctx.db.patch(id, { sessionKey: `agent:${id}` });
  await ctx.db.insert("presence", {
    agentId: id,
    status: "offline",
    lastHeartbeatAt: null,
    heartbeatIntervalMs,
  });
  await bumpCounter(ctx, "agents");
  return toConfig((await ctx.db.get(id))!);
}

/**
 * Change some of an agent's fields, set `updatedAt`, and move the `agents` counter.
 * Returns the configuration after the change; `NOT_FOUND` for an unknown id,
 * `INVALID_ARGUMENT` unless `wakeupPrompt` and `wakeupIntervalMs` are both set or both
 * unset after the change.
 *
 * A new `heartbeatIntervalMs` is copied to the agent's presence document, but does not
 * recompute its stored `staleAt`: the next beat does (until then the old interval
 * decides when it goes stale).
 */
export async function updateAgent(
  ctx: MutationCtx,
  agentId: string,
  changes: AgentChanges,
): Promise<AgentConfig> {
  const agent = await requireAgent(ctx, agentId);
  // Leave out unchanged fields: `patch` would delete a field set to undefined.
  const changed: AgentChanges = Object.fromEntries(
    Object.entries(changes).filter(([, value]) => value !== undefined),
  );
  requireWakeupPair({ ...settingsOf(agent), ...changed });
  await ctx.db.patch(agent._id, { ...asStored(changed), updatedAt: Date.now() });
  const { heartbeatIntervalMs } = changed;
  const presence = heartbeatIntervalMs === undefined ? null : await presenceOf(ctx, agent._id);
  if (presence) await ctx.db.patch(presence._id, { heartbeatIntervalMs });
  await bumpCounter(ctx, "agents");
  return toConfig((await ctx.db.get(agent._id))!);
}

/**
 * Delete an agent and its presence, and move the `agents` counter; `NOT_FOUND` for an
 * unknown id. Returns the agent's id.
 */
export async function removeAgent(ctx: MutationCtx, agentId: string): Promise<Id<"agents">> {
  const agent = await requireAgent(ctx, agentId);
  const presence = await ctx.db
    .query("presence")
    .withIndex("by_agentId", (q) => q.eq("agentId", agent._id))
    .collect();
  for (const row of presence) await ctx.db.delete(row._id);
  await ctx.db.delete(agent._id);
  await bumpCounter(ctx, "agents");
  return agent._id;
}

/**
 * Set each beat's agent online with `lastHeartbeatAt = max(old, atMs)` and `staleAt =
 * lastHeartbeatAt + 3 x heartbeatIntervalMs`, and make sure a sweep is pending by the
 * earliest new `staleAt`. A beat more than 60 s ahead of the clock is not written and
 * its agent id is returned in `refused` (once per refused beat, in the order of the
 * beats). Unknown agent ids are ignored (never refused); presence is written only when
 * it changes; `agents` is never written.
 *
 * A beat reads its agent's presence document only, which carries a copy of the agent's
 * `heartbeatIntervalMs`: an agent document can be ~200 KiB (instructions, wake-up
 * prompt), a presence document is ~100 bytes. The agent is read only for a presence
 * document written before the copy existed (the beat then adds it), or none.
 */
export async function recordHeartbeats(
  ctx: MutationCtx,
  beats: Beat[],
): Promise<{ refused: string[] }> {
  const now = Date.now();
  const refused: string[] = [];
  let earliestStaleAt = Infinity;
  for (const { agentId, atMs } of beats) {
    const id = ctx.db.normalizeId("agents", agentId);
    if (!id) continue;
    const row = await presenceOf(ctx, id);
    const intervalMs = row?.heartbeatIntervalMs ?? (await ctx.db.get(id))?.heartbeatIntervalMs;
    if (intervalMs === undefined) continue; // no such agent
    if (atMs > now + MAX_AHEAD_MS) {
      refused.push(agentId);
      continue;
    }
    const last = Math.max(row?.lastHeartbeatAt ?? atMs, atMs);
    const fresh = {
      status: "online" as const,
      lastHeartbeatAt: last,
      staleAt: last + STALE_AFTER_INTERVALS * intervalMs,
      heartbeatIntervalMs: intervalMs,
    };
    earliestStaleAt = Math.min(earliestStaleAt, fresh.staleAt);
    if (!row) {
      await ctx.db.insert("presence", { agentId: id, ...fresh });
    } else if (
      row.status !== fresh.status ||
      row.lastHeartbeatAt !== fresh.lastHeartbeatAt ||
      row.staleAt !== fresh.staleAt ||
      row.heartbeatIntervalMs !== fresh.heartbeatIntervalMs
    ) {
      await ctx.db.patch(row._id, fresh);
    }
  }
  if (earliestStaleAt < Infinity) await ensureSweepBy(ctx, earliestStaleAt, now);
  return { refused };
}

/** Set these agents offline (keeping `lastHeartbeatAt`); unknown agent ids are ignored. */
export async function markOffline(ctx: MutationCtx, agentIds: string[]): Promise<void> {
  for (const agentId of agentIds) {
    const id = ctx.db.normalizeId("agents", agentId);
    const row = id && (await presenceOf(ctx, id));
    if (row && row.status !== "offline") await ctx.db.patch(row._id, { status: "offline" });
  }
}

/** When a sweep for documents going stale at `staleAt` should run, seen at `now`. */
function sweepTime(staleAt: number, now: number): number {
  return Math.max(staleAt, now + SWEEP_MIN_DELAY_MS);
}

/** The pending sweep's singleton document, if any. */
function pendingSweep(ctx: MutationCtx): Promise<Doc<"sweeps"> | null> {
  return ctx.db.query("sweeps").first();
}

/**
 * Schedule the sweep at `runAt` (or nothing, for null) and record it as the pending run
 * in place of `pending`, which is canceled if it is not due yet. (A due one is the run
 * that is rescheduling itself, or one that has finished.)
 */
async function replaceSweep(
  ctx: MutationCtx,
  runAt: number | null,
  pending: Doc<"sweeps"> | null,
  now: number,
): Promise<void> {
  if (pending && pending.runAt > now) await cancelIfPending(ctx, pending.jobId);
  if (runAt === null) {
    if (pending) await ctx.db.delete(pending._id);
    return;
  }
  const jobId = await ctx.scheduler.runAt(runAt, internal.service.presence.sweep, {});
  if (pending) await ctx.db.patch(pending._id, { jobId, runAt });
  else await ctx.db.insert("sweeps", { jobId, runAt });
}

/**
 * Make sure a sweep is pending at or before the time a document going stale at
 * `staleAt` should be swept: keep the pending run if it is scheduled early enough,
 * else replace it (there is only ever one).
 */
async function ensureSweepBy(ctx: MutationCtx, staleAt: number, now: number): Promise<void> {
  const runAt = sweepTime(staleAt, now);
  const pending = await pendingSweep(ctx);
  if (pending && pending.runAt <= runAt && (await isScheduled(ctx, pending.jobId))) return;
  await replaceSweep(ctx, runAt, pending, now);
}

/**
 * One sweep run (the scheduled `service/presence:sweep`): set up to `SWEEP_BATCH` stale
 * online presence documents offline (keeping `lastHeartbeatAt`), then schedule the next
 * run: at once if a full batch may have left more behind, else at the earliest
 * `staleAt` still pending among online documents (never sooner than
 * `SWEEP_MIN_DELAY_MS` from now), and none when no document is online.
 */
export async function sweepStalePresence(ctx: MutationCtx): Promise<void> {
  const now = Date.now();
  // Online documents without `staleAt` sort first in the index, so they are swept too.
  const stale = await ctx.db
    .query("presence")
    .withIndex("by_status_staleAt", (q) => q.eq("status", "online").lte("staleAt", now))
    .take(SWEEP_BATCH);
  for (const row of stale) await ctx.db.patch(row._id, { status: "offline" });
  const pending = await pendingSweep(ctx);
  if (stale.length === SWEEP_BATCH) {
    await replaceSweep(ctx, now, pending, now);
    return;
  }
  const next = await ctx.db
    .query("presence")
    .withIndex("by_status_staleAt", (q) => q.eq("status", "online"))
    .first();
  const runAt = next ? sweepTime(next.staleAt ?? now, now) : null;
  await replaceSweep(ctx, runAt, pending, now);
}
