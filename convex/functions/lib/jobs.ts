/**
 * Jobs (`service/jobs:*` in ../../../contract/README.md): each agent's queue of turns to
 * run, and the history of each conversation. Callers check the service key and the
 * arguments first.
 *
 * Order: an agent's next job is its oldest (by creation) that is `queued` or `running`;
 * it is claimable when it is queued with `notBefore <= now` and no running job (of any
 * agent) has its conversation. So an agent runs one job at a time, in queue order (a job
 * backing off holds back the later ones), and a conversation one at a time.
 *
 * Fencing: each claim sets a new random `claimToken` and `lockedUntil`; `renew`,
 * `complete`, `fail` and `release` need that token while the job is `running` (an
 * expired lock that no claim has reset yet still counts), so a worker that lost its
 * claim can never finish the job. Removing the agent fails the job and removes its token.
 *
 * The `jobs` counter (`service/jobs:version`) moves whenever a job becomes claimable:
 * by an event (it is queued, failed back to the queue, released, or put back by a claim
 * after its lock expired) or by time (a queued job's future `notBefore` comes, or a
 * running job's lock expires). Not when a job is claimed or finished. Time is signalled
 * by one scheduled function per retry, claim and renewal (`service/jobs:signalDue`,
 * `service/jobs:signalLockExpired`), never cancelled: a run whose job has moved on since
 * finds it changed and does nothing, so there is no sweep and nothing to clean up.
 */
import type { PaginationOptions } from "convex/server";
import { internal } from "../_generated/api";
import type { Doc, Id } from "../_generated/dataModel";
import type { MutationCtx, QueryCtx } from "../_generated/server";
import {
  MAX_TEXT_LENGTH,
  phoneDigits,
  type Conversation,
  type JobKind,
  type JobStatus,
  type Usage,
  type WebhookMessage,
} from "./args";
import { bumpCounter } from "./counters";
import { contractError } from "./errors";
import { findAgent, requireAgent } from "./model";
import { emptyPage, mapPage, type Page } from "./pages";
import * as whatsapp from "./whatsapp";

/** The `error` of the jobs a removed agent left queued or running. */
export const AGENT_REMOVED = "agent removed";

/** A job, as `service/jobs:get` and `service/jobs:list` return it. */
export type Job = {
  id: Id<"jobs">;
  agentId: Id<"agents">;
  kind: JobKind;
  conversation: Conversation | null;
  input: string;
  status: JobStatus;
  attempts: number;
  notBefore: number;
  lockedUntil: number | null;
  workerId: string | null;
  result: string | null;
  error: string | null;
  usage: Usage | null;
  steps: number | null;
  createdAt: number;
  updatedAt: number;
};

/** A claimed job, as `service/jobs:claim` returns it. */
export type ClaimedJob = {
  id: Id<"jobs">;
  agentId: Id<"agents">;
  input: string;
  conversation: Conversation | null;
  attempts: number;
  claimToken: string;
};

/** What `service/jobs:complete` returns: the reply queued on WhatsApp, if any. */
export type Completed = { status: "done"; replyId: Id<"whatsappOutbound"> | null };

/** One turn of a conversation's history, as `service/jobs:history` returns it. */
export type Turn = { role: "user" | "assistant"; content: string; jobId: Id<"jobs">; at: number };

/**
 * The key of a conversation in `jobs` and `turns`: `whatsapp:<accountId>:<contact>`
 * (unambiguous, since the contact is digits only) or `direct:<id>`.
 */
export function conversationKey(conversation: Conversation): string {
  return conversation.channel === "whatsapp"
    ? `whatsapp:${conversation.accountId}:${conversation.contact}`
    : `direct:${conversation.id}`;
}

function toJob(row: Doc<"jobs">): Job {
  return {
    id: row._id,
    agentId: row.agentId,
    kind: row.kind ?? "task",
    conversation: row.conversation ?? null,
    input: row.input,
    status: row.status,
    attempts: row.attempts,
    notBefore: row.notBefore,
    lockedUntil: row.lockedUntil ?? null,
    workerId: row.workerId ?? null,
    result: row.result ?? null,
    error: row.error ?? null,
    usage: row.usage ?? null,
    steps: row.steps ?? null,
    createdAt: row.createdAt,
    updatedAt: row.updatedAt,
  };
}

function fenced(message: string): never {
  throw contractError("FENCED", message);
}

/** The job `id`, or null (also for ids that are not job ids). */
async function findJob(ctx: QueryCtx, id: string): Promise<Doc<"jobs"> | null> {
  const normalized = ctx.db.normalizeId("jobs", id);
  return normalized && (await ctx.db.get(normalized));
}

/** The job `id`, or `NOT_FOUND` (also for ids that are not job ids). */
async function requireJob(ctx: QueryCtx, id: string): Promise<Doc<"jobs">> {
  const row = await findJob(ctx, id);
  if (!row) throw contractError("NOT_FOUND", `no job with id ${JSON.stringify(id)}`);
  return row;
}

/** `FENCED` unless `row` is `running` with `claimToken` (its lock may have expired). */
function requireClaim(row: Doc<"jobs">, claimToken: string): void {
  if (row.status !== "running" || row.claimToken !== claimToken) {
    fenced("the claim token is not current: the job was finished, failed or claimed again");
  }
}

/**
 * A job queued with `notBefore` later than `now` becomes claimable by time alone: schedule
 * `service/jobs:signalDue` at `notBefore` (nothing for a job that is due already: the
 * mutation queuing it moved the counter).
 */
async function signalWhenDue(
  ctx: MutationCtx,
  id: Id<"jobs">,
  notBefore: number,
  now: number,
): Promise<void> {
  if (notBefore > now) {
    await ctx.scheduler.runAt(notBefore, internal.service.jobs.signalDue, { id, notBefore });
  }
}

/**
 * A claim's lock that nobody renews expires by time alone: schedule
 * `service/jobs:signalLockExpired` at `lockedUntil`, for this claim and this lock.
 */
async function signalWhenLockExpires(
  ctx: MutationCtx,
  id: Id<"jobs">,
  claimToken: string,
  lockedUntil: number,
): Promise<void> {
  await ctx.scheduler.runAt(lockedUntil, internal.service.jobs.signalLockExpired, {
    id,
    claimToken,
    lockedUntil,
  });
}

/**
 * Queue a job of agent `agentId` (`NOT_FOUND` for an unknown agent), claimable at once,
 * and move the `jobs` counter. With an `idempotencyKey` already used (by any agent),
 * nothing is queued and the earlier job's id is returned (whatever its input and
 * conversation); so is the pending one's for a `wakeup` job while the agent has one
 * queued or running.
 */
export async function enqueue(
  ctx: MutationCtx,
  fields: {
    agentId: string;
    kind: JobKind;
    input: string;
    conversation?: Conversation;
    idempotencyKey?: string;
  },
): Promise<{ id: Id<"jobs"> }> {
  const agent = await requireAgent(ctx, fields.agentId);
  return await insertJob(ctx, { ...fields, agentId: agent._id });
}

/** `enqueue` for an agent known to exist. */
async function insertJob(
  ctx: MutationCtx,
  fields: {
    agentId: Id<"agents">;
    kind: JobKind;
    input: string;
    conversation?: Conversation;
    idempotencyKey?: string;
  },
): Promise<{ id: Id<"jobs"> }> {
  const { agentId, kind, input, conversation, idempotencyKey } = fields;
  if (idempotencyKey !== undefined) {
    const earlier = await ctx.db
      .query("jobs")
      .withIndex("by_idempotencyKey", (q) => q.eq("idempotencyKey", idempotencyKey))
      .first();
    if (earlier) return { id: earlier._id };
  }
  if (kind === "wakeup") {
    const pending = await pendingWakeup(ctx, agentId);
    if (pending) return { id: pending._id };
  }
  const now = Date.now();
  const id = await ctx.db.insert("jobs", {
    agentId,
    kind,
    ...(conversation === undefined
      ? {}
      : { conversation, conversationKey: conversationKey(conversation) }),
    input,
    status: "queued",
    attempts: 0,
    notBefore: now,
    ...(idempotencyKey === undefined ? {} : { idempotencyKey }),
    createdAt: now,
    updatedAt: now,
  });
  await bumpCounter(ctx, "jobs");
  return { id };
}

/** The agent's `wakeup` job that is queued or running, if any (there is at most one). */
async function pendingWakeup(ctx: QueryCtx, agentId: Id<"agents">): Promise<Doc<"jobs"> | null> {
  for (const status of ["queued", "running"] as const) {
    const row = await ctx.db
      .query("jobs")
      .withIndex("by_agentId_kind_status", (q) =>
        q.eq("agentId", agentId).eq("kind", "wakeup").eq("status", status),
      )
      .first();
    if (row) return row;
  }
  return null;
}

/**
 * What `service/whatsapp:recordWebhook` does with each inbound message of `accountId`
 * recorded for the first time, when its deliveries are routed to agent `agentId`:
 * queue a job for that agent with the message's text, the conversation `{whatsapp,
 * accountId, contact: from}` and the idempotency key `whatsapp:<providerId>`.
 * Undefined (no jobs) without an agent id or for an unknown agent: the messages are
 * still recorded, since a refusal would make Meta retry for days. A message with an
 * empty text (a job's input has at least 1 character), or whose `from` is not a phone
 * number (7 to 15 digits) to reply to, queues no job.
 */
export async function inboundRouting(
  ctx: MutationCtx,
  agentId: string | undefined,
  accountId: string,
): Promise<((message: WebhookMessage) => Promise<void>) | undefined> {
  const agent = agentId === undefined ? null : await findAgent(ctx, agentId);
  if (!agent) return undefined;
  return async ({ providerId, from, text }) => {
    const contact = phoneDigits(from);
    if (text.length === 0 || contact === null) return;
    await insertJob(ctx, {
      agentId: agent._id,
      kind: "task",
      input: text,
      conversation: { channel: "whatsapp", accountId, contact },
      idempotencyKey: `whatsapp:${providerId}`,
    });
  };
}

/** Whether some job of this conversation is `running` (its lock may have expired). */
async function conversationBusy(ctx: QueryCtx, key: string): Promise<boolean> {
  const running = await ctx.db
    .query("jobs")
    .withIndex("by_conversationKey_status", (q) =>
      q.eq("conversationKey", key).eq("status", "running"),
    )
    .first();
  return running !== null;
}

/**
 * A running job whose lock expired: count an attempt (`error` "claim lock expired"),
 * remove the claim, and queue it again (moving the `jobs` counter), or make it `dead` at
 * `maxAttempts`.
 */
async function expireLock(
  ctx: MutationCtx,
  row: Doc<"jobs">,
  maxAttempts: number,
  now: number,
): Promise<void> {
  const attempts = row.attempts + 1;
  const status = attempts >= maxAttempts ? "dead" : "queued";
  await ctx.db.patch(row._id, {
    status,
    attempts,
    error: whatsapp.LOCK_EXPIRED,
    claimToken: undefined,
    lockedUntil: undefined,
    updatedAt: now,
  });
  if (status === "queued") await bumpCounter(ctx, "jobs");
}

/**
 * Agent `agentId`'s next job if it is claimable at `now` (before the conversation check),
 * else null. First, its running jobs whose lock expired are reset (see `expireLock`).
 * Then its oldest job (by creation) that is queued or running is the next one: claimable
 * when it is queued with `notBefore <= now`.
 */
async function nextJob(
  ctx: MutationCtx,
  agentId: Id<"agents">,
  maxAttempts: number,
  now: number,
): Promise<Doc<"jobs"> | null> {
  const byStatus = (status: JobStatus) =>
    ctx.db
      .query("jobs")
      .withIndex("by_agentId_status", (q) => q.eq("agentId", agentId).eq("status", status));
  // An agent has at most one running job; the bound only keeps a call within Convex's limits.
  let running: Doc<"jobs"> | null = null;
  for (const row of await byStatus("running").take(whatsapp.SCAN_LIMIT)) {
    if ((row.lockedUntil ?? 0) <= now) await expireLock(ctx, row, maxAttempts, now);
    else running ??= row;
  }
  const queued = await byStatus("queued").first();
  if (!queued || (running && running._creationTime < queued._creationTime)) return null;
  return queued.notBefore <= now ? queued : null;
}

/**
 * Claim up to `limit` jobs of the agents `agentIds` for worker `workerId`, oldest first:
 * each agent's next job (see `nextJob`; unknown agent ids, and ids that are no agent's,
 * claim nothing), unless a running job has its conversation. Each claimed job becomes
 * `running` with a new random `claimToken`, `lockedUntil = now + lockMs` and `workerId`,
 * and gets a `signalLockExpired` run at `lockedUntil`. Expired locks of those agents count
 * an attempt first, and make a job `dead` at `maxAttempts`.
 */
export async function claim(
  ctx: MutationCtx,
  fields: {
    agentIds: string[];
    workerId: string;
    limit: number;
    lockMs: number;
    maxAttempts: number;
  },
): Promise<ClaimedJob[]> {
  const { agentIds, workerId, limit, lockMs, maxAttempts } = fields;
  const now = Date.now();
  const agents = new Set<Id<"agents">>();
  for (const agentId of agentIds) {
    const agent = await findAgent(ctx, agentId);
    if (agent) agents.add(agent._id);
  }
  const candidates: Doc<"jobs">[] = [];
  for (const agentId of agents) {
    const next = await nextJob(ctx, agentId, maxAttempts, now);
    if (next) candidates.push(next);
  }
  candidates.sort((a, b) => a._creationTime - b._creationTime);
  const claimed: ClaimedJob[] = [];
  for (const row of candidates) {
    if (claimed.length === limit) break;
    // A job claimed earlier in this loop is running already: it holds its conversation.
    if (row.conversationKey !== undefined && (await conversationBusy(ctx, row.conversationKey))) {
      continue;
    }
    const claimToken = crypto.randomUUID();
    const lockedUntil = now + lockMs;
    await ctx.db.patch(row._id, {
      status: "running",
      claimToken,
      lockedUntil,
      workerId,
      updatedAt: now,
    });
    await signalWhenLockExpires(ctx, row._id, claimToken, lockedUntil);
    claimed.push({
      id: row._id,
      agentId: row.agentId,
      input: row.input,
      conversation: row.conversation ?? null,
      attempts: row.attempts,
      claimToken,
    });
  }
  return claimed;
}

/**
 * Extend the lock of running job `id` to `now + lockMs`, with a `signalLockExpired` run at
 * the new `lockedUntil` (the run at the old one then finds the lock moved and does
 * nothing). Returns `{lockedUntil}`; `FENCED` unless `claimToken` is current,
 * `NOT_FOUND` for an unknown id.
 */
export async function renew(
  ctx: MutationCtx,
  fields: { id: string; claimToken: string; lockMs: number },
): Promise<{ lockedUntil: number }> {
  const { id, claimToken, lockMs } = fields;
  const row = await requireJob(ctx, id);
  requireClaim(row, claimToken);
  const now = Date.now();
  const lockedUntil = now + lockMs;
  await ctx.db.patch(row._id, { lockedUntil, updatedAt: now });
  // A renewal that leaves the lock where it was already has its run.
  if (lockedUntil !== row.lockedUntil) {
    await signalWhenLockExpires(ctx, row._id, claimToken, lockedUntil);
  }
  return { lockedUntil };
}

/**
 * Finish running job `id` as `done` with `result`, `usage` and `steps`, and in the same
 * transaction, for a job with a conversation: append its input (a `user` turn) and its
 * result (an `assistant` turn) to the history of agent session `sessionKey`, both at the
 * time of completion; and, for a WhatsApp conversation, queue the result as a message to
 * the contact with the idempotency key `job:<id>` (its id is `replyId`). An empty result
 * queues no message (`replyId` null; WhatsApp has no empty messages), and a result longer
 * than a WhatsApp message (4096 characters) is cut to that length in the reply (the job
 * and the history keep all of it).
 * `FENCED` unless `claimToken` is current; a repeat with the same token answers as the
 * first call did and changes nothing.
 */
export async function complete(
  ctx: MutationCtx,
  fields: {
    id: string;
    claimToken: string;
    sessionKey: string;
    result: string;
    usage: Usage;
    steps: number;
  },
): Promise<Completed> {
  const { id, claimToken, sessionKey, result, usage, steps } = fields;
  const row = await requireJob(ctx, id);
  // The token stays on a done job, and only a new claim (of a queued job) replaces it.
  if (row.status === "done" && row.claimToken === claimToken) {
    return { status: "done", replyId: row.replyId ?? null };
  }
  requireClaim(row, claimToken);
  const now = Date.now();
  let replyId: Id<"whatsappOutbound"> | undefined;
  if (row.conversation !== undefined && row.conversationKey !== undefined) {
    for (const [role, content] of [
      ["user", row.input],
      ["assistant", result],
    ] as const) {
      await ctx.db.insert("turns", {
        conversationKey: row.conversationKey,
        sessionKey,
        jobId: row._id,
        role,
        content,
        at: now,
      });
    }
    if (row.conversation.channel === "whatsapp" && result.length > 0) {
      const reply = await whatsapp.enqueue(ctx, {
        accountId: row.conversation.accountId,
        to: row.conversation.contact,
        text: whatsapp.cut(result, MAX_TEXT_LENGTH),
        idempotencyKey: `job:${row._id}`,
      });
      replyId = reply.id;
    }
  }
  await ctx.db.patch(row._id, {
    status: "done",
    result,
    usage,
    steps,
    lockedUntil: undefined,
    replyId,
    updatedAt: now,
  });
  return { status: "done", replyId: replyId ?? null };
}

/**
 * Count a failed attempt of running job `id` and store `error` (cut to 500 characters):
 * with `retryAt` and attempts left (`attempts < maxAttempts`) the job is `queued` again
 * with `notBefore = retryAt` (moving the `jobs` counter now, and with a `signalDue` run at
 * `retryAt` if that is later); with `retryAt` and no attempts left, `dead`; without
 * `retryAt`, `failed`. Returns the new status; `FENCED` unless `claimToken` is current.
 */
export async function fail(
  ctx: MutationCtx,
  fields: {
    id: string;
    claimToken: string;
    error: string;
    retryAt?: number;
    maxAttempts: number;
  },
): Promise<{ status: "queued" | "failed" | "dead" }> {
  const { id, claimToken, error, retryAt, maxAttempts } = fields;
  const row = await requireJob(ctx, id);
  requireClaim(row, claimToken);
  const now = Date.now();
  const attempts = row.attempts + 1;
  const status = retryAt === undefined ? "failed" : attempts < maxAttempts ? "queued" : "dead";
  await ctx.db.patch(row._id, {
    status,
    attempts,
    error: whatsapp.clip(error),
    notBefore: status === "queued" ? retryAt : row.notBefore,
    lockedUntil: undefined,
    updatedAt: now,
  });
  if (status === "queued" && retryAt !== undefined) {
    await bumpCounter(ctx, "jobs");
    await signalWhenDue(ctx, row._id, retryAt, now);
  }
  return { status };
}

/**
 * Give back the claim of job `id` without counting an attempt: if it is `running` with
 * `claimToken`, it is `queued` again at once (`notBefore = now`; claim token, lock and
 * worker removed) and the `jobs` counter moves. Returns whether it did; an unknown id
 * (or one that is no job id) is `{released: false}` too.
 */
export async function release(
  ctx: MutationCtx,
  fields: { id: string; claimToken: string },
): Promise<{ released: boolean }> {
  const { id, claimToken } = fields;
  const row = await findJob(ctx, id);
  if (!row || row.status !== "running" || row.claimToken !== claimToken) {
    return { released: false };
  }
  const now = Date.now();
  await ctx.db.patch(row._id, {
    status: "queued",
    notBefore: now,
    claimToken: undefined,
    lockedUntil: undefined,
    workerId: undefined,
    updatedAt: now,
  });
  await bumpCounter(ctx, "jobs");
  return { released: true };
}

/**
 * The scheduled run at a queued job's `notBefore`: move the `jobs` counter if job `id` is
 * still `queued` with that `notBefore` and it has come (not if the job was claimed,
 * finished, removed or queued again with another `notBefore` meanwhile). The job itself
 * is not changed.
 */
export async function signalDue(
  ctx: MutationCtx,
  fields: { id: Id<"jobs">; notBefore: number },
): Promise<void> {
  const { id, notBefore } = fields;
  const row = await ctx.db.get(id);
  if (row?.status === "queued" && row.notBefore === notBefore && notBefore <= Date.now()) {
    await bumpCounter(ctx, "jobs");
  }
}

/**
 * The scheduled run at a claim's `lockedUntil`: move the `jobs` counter if job `id` is
 * still `running` under `claimToken` with that `lockedUntil` and it has passed (not if
 * the job was finished, released or claimed again, nor if a renewal moved the lock on:
 * the renewal scheduled its own run). The job stays `running`: the next `claim` for its
 * agent counts the attempt and queues it again; the counter only tells workers to claim.
 */
export async function signalLockExpired(
  ctx: MutationCtx,
  fields: { id: Id<"jobs">; claimToken: string; lockedUntil: number },
): Promise<void> {
  const { id, claimToken, lockedUntil } = fields;
  const row = await ctx.db.get(id);
  if (
    row?.status === "running" &&
    row.claimToken === claimToken &&
    row.lockedUntil === lockedUntil &&
    lockedUntil <= Date.now()
  ) {
    await bumpCounter(ctx, "jobs");
  }
}

/**
 * What removing agent `agentId` does to its jobs, in the same transaction: each one that
 * is `queued` or `running` becomes `failed` with `error` "agent removed", its claim token
 * and lock removed (a worker still running it is fenced).
 */
export async function failJobsOfRemovedAgent(
  ctx: MutationCtx,
  agentId: Id<"agents">,
): Promise<void> {
  const now = Date.now();
  for (const status of ["queued", "running"] as const) {
    const rows = await ctx.db
      .query("jobs")
      .withIndex("by_agentId_status", (q) => q.eq("agentId", agentId).eq("status", status))
      .collect();
    for (const row of rows) {
      await ctx.db.patch(row._id, {
        status: "failed",
        error: AGENT_REMOVED,
        claimToken: undefined,
        lockedUntil: undefined,
        updatedAt: now,
      });
    }
  }
}

/** The job `id`; `NOT_FOUND` for an unknown id. */
export async function get(ctx: QueryCtx, id: string): Promise<Job> {
  return toJob(await requireJob(ctx, id));
}

/**
 * A page of the jobs of agent `agentId` (all agents if not given; none for an id that is
 * no agent id) with this `status` (any if not given), oldest first.
 */
export async function list(
  ctx: QueryCtx,
  filter: { agentId?: string; status?: JobStatus },
  options: PaginationOptions,
): Promise<Page<Job>> {
  const { status } = filter;
  const table = ctx.db.query("jobs");
  let rows;
  if (filter.agentId === undefined) {
    rows =
      status === undefined ? table : table.withIndex("by_status", (q) => q.eq("status", status));
  } else {
    const agentId = ctx.db.normalizeId("agents", filter.agentId);
    if (agentId === null) return emptyPage();
    rows =
      status === undefined
        ? table.withIndex("by_agentId", (q) => q.eq("agentId", agentId))
        : table.withIndex("by_agentId_status", (q) =>
            q.eq("agentId", agentId).eq("status", status),
          );
  }
  return mapPage(await rows.paginate(options), toJob);
}

/**
 * The last `limit` turns of `conversation` in agent session `sessionKey`, oldest first
 * (in the order they were added).
 */
export async function history(
  ctx: QueryCtx,
  fields: { conversation: Conversation; sessionKey: string; limit: number },
): Promise<Turn[]> {
  const { conversation, sessionKey, limit } = fields;
  const rows = await ctx.db
    .query("turns")
    .withIndex("by_conversationKey_sessionKey", (q) =>
      q.eq("conversationKey", conversationKey(conversation)).eq("sessionKey", sessionKey),
    )
    .order("desc")
    .take(limit);
  return rows.reverse().map(({ role, content, jobId, at }) => ({ role, content, jobId, at }));
}
