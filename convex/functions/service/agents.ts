/**
 * Agent configuration: `service/agents:*` in ../../../contract/README.md.
 * Every function checks `serviceKey` first (`UNAUTHORIZED`), then its arguments
 * (`INVALID_ARGUMENT`).
 */
import { v } from "convex/values";
import { mutation, query } from "../_generated/server";
import {
  changedSetting,
  heartbeatIntervalMs,
  initialSetting,
  instructions,
  label,
  optional,
  serviceArgs,
  string,
  wakeupIntervalMs,
  wakeupPrompt,
} from "../lib/args";
import { readCounter } from "../lib/counters";
import * as jobs from "../lib/jobs";
import * as model from "../lib/model";
import { PAGE_ARGS, pageOptions, type Page } from "../lib/pages";
import * as workers from "../lib/workers";

/** The settings of an agent's jobs, as both `create` and `update` take them. */
const SETTINGS = ["instructions", "model", "wakeupPrompt", "wakeupIntervalMs"];

/**
 * A page (`cursor?`, `numItems?`: see ../lib/pages.ts) of the agents' configurations
 * `{id, name, sessionKey, heartbeatIntervalMs, instructions, model, wakeupPrompt,
 * wakeupIntervalMs, updatedAt}` (null for an unset setting), oldest first:
 * `{page, continueCursor, isDone}`. Reads no presence, so heartbeats never invalidate it.
 */
export const list = query({
  args: v.any(),
  handler: async (ctx, args): Promise<Page<model.AgentConfig>> => {
    const a = serviceArgs(args, PAGE_ARGS);
    return await model.listAgents(ctx, pageOptions(a));
  },
});

/**
 * What an agent sync reads: a page of agents as `list` returns it (same arguments), with
 * `workers` as `service/workers:list` returns them (the live worker ids, sorted) on every
 * page: `{page, workers, continueCursor, isDone}`. A fleet that fits in one page is read
 * in one call.
 */
export const snapshot = query({
  args: v.any(),
  handler: async (ctx, args): Promise<Page<model.AgentConfig> & { workers: string[] }> => {
    const a = serviceArgs(args, PAGE_ARGS);
    const page = await model.listAgents(ctx, pageOptions(a));
    return { ...page, workers: await workers.liveWorkers(ctx, Date.now()) };
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
    return await readCounter(ctx, "agents");
  },
});

/**
 * Create an agent from `name`, `heartbeatIntervalMs` and optional `sessionKey`
 * (default `agent:<id>`), `instructions`, `model`, `wakeupPrompt` and `wakeupIntervalMs`
 * (left out, null, "" or 0: unset; the wake-up pair both or neither); its presence starts
 * offline. Returns its configuration. A repeated `idempotencyKey` returns the agent the
 * first call created, and creates none.
 */
export const create = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<model.AgentConfig> => {
    const a = serviceArgs(args, [
      "name",
      "heartbeatIntervalMs",
      "sessionKey",
      "idempotencyKey",
      ...SETTINGS,
    ]);
    return await model.createAgent(ctx, {
      name: label("name", a.name),
      heartbeatIntervalMs: heartbeatIntervalMs("heartbeatIntervalMs", a.heartbeatIntervalMs),
      sessionKey: optional(label, "sessionKey", a.sessionKey),
      idempotencyKey: optional(label, "idempotencyKey", a.idempotencyKey),
      instructions: initialSetting(instructions, "instructions", a.instructions, ""),
      model: initialSetting(label, "model", a.model, ""),
      wakeupPrompt: initialSetting(wakeupPrompt, "wakeupPrompt", a.wakeupPrompt, ""),
      wakeupIntervalMs: initialSetting(wakeupIntervalMs, "wakeupIntervalMs", a.wakeupIntervalMs, 0),
    });
  },
});

/**
 * Change the given fields (`name?`, `heartbeatIntervalMs?`, `sessionKey?`,
 * `instructions?`, `model?`, `wakeupPrompt?`, `wakeupIntervalMs?`; "" or 0 clears a
 * setting) of agent `agentId` and set `updatedAt`. Returns the configuration after the
 * change; `NOT_FOUND` for an unknown id, `INVALID_ARGUMENT` unless the wake-up pair is
 * then both set or both unset.
 */
export const update = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<model.AgentConfig> => {
    const a = serviceArgs(args, [
      "agentId",
      "name",
      "heartbeatIntervalMs",
      "sessionKey",
      ...SETTINGS,
    ]);
    const agentId = string("agentId", a.agentId);
    const changes: model.AgentChanges = {
      name: optional(label, "name", a.name),
      heartbeatIntervalMs: optional(
        heartbeatIntervalMs,
        "heartbeatIntervalMs",
        a.heartbeatIntervalMs,
      ),
      sessionKey: optional(label, "sessionKey", a.sessionKey),
      instructions: changedSetting(instructions, "instructions", a.instructions, ""),
      model: changedSetting(label, "model", a.model, ""),
      wakeupPrompt: changedSetting(wakeupPrompt, "wakeupPrompt", a.wakeupPrompt, ""),
      wakeupIntervalMs: changedSetting(wakeupIntervalMs, "wakeupIntervalMs", a.wakeupIntervalMs, 0),
    };
    return await model.updateAgent(ctx, agentId, changes);
  },
});

/**
 * Remove agent `agentId` and its presence; in the same transaction its queued and
 * running jobs fail (`error` "agent removed", claim token removed, so a worker still
 * running one is fenced). `NOT_FOUND` for an unknown id. Returns null.
 */
export const remove = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<null> => {
    const a = serviceArgs(args, ["agentId"]);
    const agentId = await model.removeAgent(ctx, string("agentId", a.agentId));
    await jobs.failJobsOfRemovedAgent(ctx, agentId);
    return null;
  },
});
