/**
 * Jobs: `service/jobs:*` in ../../../contract/README.md. Every function checks
 * `serviceKey` first (`UNAUTHORIZED`), then its arguments (`INVALID_ARGUMENT`). Each
 * agent runs its jobs one at a time in queue order, and each conversation one job at a
 * time; a stale claim token is `FENCED` (see ../lib/jobs.ts). `version` signals jobs that
 * became claimable, by an event or by time: the internal `signalDue` and
 * `signalLockExpired` run when a retry falls due and when a lock expires.
 */
import { v } from "convex/values";
import { internalMutation, mutation, query } from "../_generated/server";
import {
  claimAgentIds,
  conversation,
  count,
  epochMs,
  historyLimit,
  JOB_KINDS,
  JOB_STATUSES,
  jobInput,
  jobResult,
  label,
  oneOf,
  optional,
  serviceArgs,
  string,
  ttlMs,
  usage,
  wholeNumber,
} from "../lib/args";
import { readCounter } from "../lib/counters";
import * as jobs from "../lib/jobs";
import { PAGE_ARGS, pageOptions, type Page } from "../lib/pages";

/**
 * Queue a job of `kind?` (`task`, the default, or `wakeup`) for agent `agentId`: `input`
 * (1 to 32768 characters), optionally in a `conversation?` (`{channel: "whatsapp",
 * accountId, contact}` or `{channel: "direct", id}`). Returns `{id}`; the same id again
 * for a repeated `idempotencyKey?`, and the pending one's for a `wakeup` job while the
 * agent has one queued or running; `NOT_FOUND` for an unknown agent.
 */
export const enqueue = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<{ id: string }> => {
    const a = serviceArgs(args, ["agentId", "kind", "input", "conversation", "idempotencyKey"]);
    return await jobs.enqueue(ctx, {
      agentId: string("agentId", a.agentId),
      kind: optional((field, value) => oneOf(field, value, JOB_KINDS), "kind", a.kind) ?? "task",
      input: jobInput("input", a.input),
      conversation: optional(conversation, "conversation", a.conversation),
      idempotencyKey: optional(label, "idempotencyKey", a.idempotencyKey),
    });
  },
});

/**
 * Claim up to `limit` (1 to 100) jobs of the agents `agentIds` (1 to 1000) for worker
 * `workerId`, each locked for `lockMs` (1000 to 600000): each agent's next job, oldest
 * first, unless its conversation has a running job; expired locks count an attempt
 * first, and make a job dead at `maxAttempts` (1 to 100). Returns
 * `[{id, agentId, input, conversation, attempts, claimToken}]`.
 */
export const claim = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<jobs.ClaimedJob[]> => {
    const a = serviceArgs(args, ["agentIds", "workerId", "limit", "lockMs", "maxAttempts"]);
    return await jobs.claim(ctx, {
      agentIds: claimAgentIds("agentIds", a.agentIds),
      workerId: label("workerId", a.workerId),
      limit: count("limit", a.limit),
      lockMs: ttlMs("lockMs", a.lockMs),
      maxAttempts: count("maxAttempts", a.maxAttempts),
    });
  },
});

/**
 * Extend the lock of running job `id` to `lockMs` (1000 to 600000) from now. Returns
 * `{lockedUntil}`; `FENCED` unless `claimToken` is current, `NOT_FOUND` for an unknown id.
 */
export const renew = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<{ lockedUntil: number }> => {
    const a = serviceArgs(args, ["id", "claimToken", "lockMs"]);
    return await jobs.renew(ctx, {
      id: string("id", a.id),
      claimToken: label("claimToken", a.claimToken),
      lockMs: ttlMs("lockMs", a.lockMs),
    });
  },
});

/**
 * Finish running job `id` with `result` (0 to 32768 characters), `usage`
 * `{inputTokens, outputTokens}` and `steps` (whole numbers >= 0); a conversation gets the
 * turn in its history of agent session `sessionKey` (a label), and a WhatsApp one the
 * reply queued once. Returns `{status: "done", replyId}`; `FENCED` unless `claimToken` is
 * current, `NOT_FOUND` for an unknown id. A repeat answers as the first call did.
 */
export const complete = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<jobs.Completed> => {
    const a = serviceArgs(args, ["id", "claimToken", "sessionKey", "result", "usage", "steps"]);
    return await jobs.complete(ctx, {
      id: string("id", a.id),
      claimToken: label("claimToken", a.claimToken),
      sessionKey: label("sessionKey", a.sessionKey),
      result: jobResult("result", a.result),
      usage: usage("usage", a.usage),
      steps: wholeNumber("steps", a.steps),
    });
  },
});

/**
 * Count a failed attempt of running job `id` with `error`: queued again at `retryAt?`
 * while attempts remain below `maxAttempts` (1 to 100), dead when none remain, failed
 * without `retryAt`. Returns `{status}`; `FENCED` unless `claimToken` is current,
 * `NOT_FOUND` for an unknown id.
 */
export const fail = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<{ status: "queued" | "failed" | "dead" }> => {
    const a = serviceArgs(args, ["id", "claimToken", "error", "retryAt", "maxAttempts"]);
    return await jobs.fail(ctx, {
      id: string("id", a.id),
      claimToken: label("claimToken", a.claimToken),
      error: string("error", a.error),
      retryAt: optional(epochMs, "retryAt", a.retryAt),
      maxAttempts: count("maxAttempts", a.maxAttempts),
    });
  },
});

/**
 * Give back the claim of running job `id` without counting an attempt: queued again at
 * once if `claimToken` is current. Returns `{released: boolean}` (false, too, for an
 * unknown id).
 */
export const release = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<{ released: boolean }> => {
    const a = serviceArgs(args, ["id", "claimToken"]);
    return await jobs.release(ctx, {
      id: string("id", a.id),
      claimToken: label("claimToken", a.claimToken),
    });
  },
});

/**
 * A string that changes whenever a job becomes claimable: queued, failed back to the
 * queue, released, or put back by a claim after its lock expired, and when a queued
 * job's `notBefore` or a running job's lock expiry comes; never when a job is claimed or
 * finished.
 */
export const version = query({
  args: v.any(),
  handler: async (ctx, args): Promise<string> => {
    serviceArgs(args, []);
    return await readCounter(ctx, "jobs");
  },
});

/**
 * The job `id`: `{id, agentId, kind, conversation, input, status, attempts, notBefore,
 * lockedUntil, workerId, result, error, usage, steps, createdAt, updatedAt}` (null for
 * what is unset); `NOT_FOUND` for an unknown id.
 */
export const get = query({
  args: v.any(),
  handler: async (ctx, args): Promise<jobs.Job> => {
    const a = serviceArgs(args, ["id"]);
    return await jobs.get(ctx, string("id", a.id));
  },
});

/**
 * A page (`cursor?`, `numItems?`: see ../lib/pages.ts) of the jobs of agent `agentId?` (of
 * every agent if not given) with `status?` (any if not given), oldest first:
 * `{page, continueCursor, isDone}`.
 */
export const list = query({
  args: v.any(),
  handler: async (ctx, args): Promise<Page<jobs.Job>> => {
    const a = serviceArgs(args, ["agentId", "status", ...PAGE_ARGS]);
    const filter = {
      agentId: optional(string, "agentId", a.agentId),
      status: optional((field, value) => oneOf(field, value, JOB_STATUSES), "status", a.status),
    };
    return await jobs.list(ctx, filter, pageOptions(a));
  },
});

/**
 * The last `limit` (1 to 200) turns of `conversation` in agent session `sessionKey` (a
 * label), oldest first: `[{role: "user" | "assistant", content, jobId, at}]`.
 */
export const history = query({
  args: v.any(),
  handler: async (ctx, args): Promise<jobs.Turn[]> => {
    const a = serviceArgs(args, ["conversation", "sessionKey", "limit"]);
    return await jobs.history(ctx, {
      conversation: conversation("conversation", a.conversation),
      sessionKey: label("sessionKey", a.sessionKey),
      limit: historyLimit("limit", a.limit),
    });
  },
});

/**
 * Internal, scheduled at the `notBefore` of a job queued to wait (a retry): move the
 * jobs counter if the job is still queued with that `notBefore`. Changes no job.
 */
export const signalDue = internalMutation({
  args: { id: v.id("jobs"), notBefore: v.number() },
  handler: async (ctx, args): Promise<null> => {
    await jobs.signalDue(ctx, args);
    return null;
  },
});

/**
 * Internal, scheduled at the `lockedUntil` of each claim and renewal: move the jobs
 * counter if the job is still running under `claimToken` with that lock, now expired.
 * Changes no job: the next claim puts it back.
 */
export const signalLockExpired = internalMutation({
  args: { id: v.id("jobs"), claimToken: v.string(), lockedUntil: v.number() },
  handler: async (ctx, args): Promise<null> => {
    await jobs.signalLockExpired(ctx, args);
    return null;
  },
});
