/**
 * WhatsApp (`service/whatsapp:*` in ../../../contract/README.md): the sender lease of
 * each account, the outbound queue, and webhook deliveries. Callers check the service
 * key and the arguments first.
 *
 * Fencing: the lease's `epoch` moves by one each time another owner takes it. A claim
 * records the epoch it was made under and a new random `claimToken`; `markSent` and
 * `markFailed` need both to be still current, so an owner that lost the lease (paused,
 * partitioned) can never finish a message its successor may be sending.
 */
import type { PaginationOptions } from "convex/server";
import type { Doc, Id } from "../_generated/dataModel";
import type { MutationCtx, QueryCtx } from "../_generated/server";
import type { DeliveryStatus, OutboundStatus, WebhookMessage, WebhookStatus } from "./args";
import { contractError } from "./errors";
import { mapPage, type Page } from "./pages";

/** `lastError` of a message whose claim lock expired before it was marked. */
export const LOCK_EXPIRED = "claim lock expired";

/** `lastError` of a message failed by a webhook status without an error. */
export const FAILED_WITHOUT_ERROR = "failed (the webhook gave no error)";

/** Longest stored `lastError`, in characters (Unicode code points); longer ones are cut. */
export const MAX_ERROR_LENGTH = 500;

/**
 * Most messages one `claimOutbound` considers per kind (due queued ones; expired locks),
 * and running jobs one job claim considers per agent: a bound that keeps a call within
 * Convex's read limits.
 */
export const SCAN_LIMIT = 1000;

/** A lease, as `getLease` returns it. */
export type Lease = { accountId: string; ownerId: string; epoch: number; expiresAt: number };

/** What `acquireLease` returns: the lease after the call, and whether the caller holds it. */
export type LeaseAnswer = Lease & { held: boolean };

/** A claimed message, as `claimOutbound` returns it. */
export type Claimed = {
  id: Id<"whatsappOutbound">;
  to: string;
  text: string;
  attempts: number;
  claimToken: string;
};

/** An outbound message, as `listOutbox` returns it. */
export type OutboxRow = {
  id: Id<"whatsappOutbound">;
  to: string;
  text: string;
  status: OutboundStatus;
  attempts: number;
  wamid: string | null;
  lastError: string | null;
  createdAt: number;
  updatedAt: number;
};

/** An inbound message, as `listInbox` returns it. */
export type InboxRow = { providerId: string; from: string; text: string; receivedAt: number };

/** What `recordWebhook` returns: new messages, new statuses, and items seen before. */
export type WebhookCounts = { messages: number; statuses: number; duplicates: number };

/** A patch that removes the claim (`patch` deletes fields set to undefined). */
const NO_CLAIM = { claimToken: undefined, claimEpoch: undefined, lockedUntil: undefined };

/** Order of the delivery statuses: a status only ever moves forward. */
const PROGRESS: Partial<Record<OutboundStatus, number>> = { sent: 1, delivered: 2, read: 3 };

function toLease(row: Doc<"whatsappLeases">): Lease {
  const { accountId, ownerId, epoch, expiresAt } = row;
  return { accountId, ownerId, epoch, expiresAt };
}

/** `text` cut to `max` characters (Unicode code points). */
export function cut(text: string, max: number): string {
  return text.length <= max ? text : [...text].slice(0, max).join("");
}

/** `error` cut to `MAX_ERROR_LENGTH` code points (stored errors of messages and jobs). */
export function clip(error: string): string {
  return cut(error, MAX_ERROR_LENGTH);
}

function fenced(message: string): never {
  throw contractError("FENCED", message);
}

/** The lease of `accountId`, live or expired (there is at most one), or null. */
function leaseOf(ctx: QueryCtx, accountId: string): Promise<Doc<"whatsappLeases"> | null> {
  return ctx.db
    .query("whatsappLeases")
    .withIndex("by_accountId", (q) => q.eq("accountId", accountId))
    .unique();
}

/** The lease of `accountId` (expired or not), or null if it never had one. */
export async function getLease(ctx: QueryCtx, accountId: string): Promise<Lease | null> {
  const row = await leaseOf(ctx, accountId);
  return row && toLease(row);
}

/**
 * Take, renew or be refused the lease of `accountId` for `ttlMs` from now. No lease, or
 * another owner's expired one: this owner takes it at `epoch + 1` (1 for the first). This
 * owner's lease (live or expired): renewed at the same epoch. Another owner's live
 * lease: nothing changes, and the answer is that lease with `held: false`.
 */
export async function acquireLease(
  ctx: MutationCtx,
  fields: { accountId: string; ownerId: string; ttlMs: number },
): Promise<LeaseAnswer> {
  const { accountId, ownerId, ttlMs } = fields;
  const now = Date.now();
  const current = await leaseOf(ctx, accountId);
  if (current && current.ownerId !== ownerId && current.expiresAt > now) {
    return { ...toLease(current), held: false };
  }
  const expiresAt = now + ttlMs;
  if (!current) {
    await ctx.db.insert("whatsappLeases", { accountId, ownerId, epoch: 1, expiresAt });
    return { accountId, ownerId, epoch: 1, expiresAt, held: true };
  }
  const epoch = current.ownerId === ownerId ? current.epoch : current.epoch + 1;
  await ctx.db.patch(current._id, { ownerId, epoch, expiresAt });
  return { accountId, ownerId, epoch, expiresAt, held: true };
}

/**
 * Expire the lease of `accountId` now if it carries `ownerId` and `epoch` (an expired one
 * too: releasing is idempotent), keeping the epoch so that the next owner gets
 * `epoch + 1`. Returns whether it matched.
 */
export async function releaseLease(
  ctx: MutationCtx,
  fields: { accountId: string; ownerId: string; epoch: number },
): Promise<{ released: boolean }> {
  const { accountId, ownerId, epoch } = fields;
  const current = await leaseOf(ctx, accountId);
  if (!current || current.ownerId !== ownerId || current.epoch !== epoch) {
    return { released: false };
  }
  const expiresAt = Math.min(current.expiresAt, Date.now());
  if (expiresAt !== current.expiresAt) await ctx.db.patch(current._id, { expiresAt });
  return { released: true };
}

/**
 * Queue a message to `to` (digits, no "+"), claimable at once. With an `idempotencyKey`
 * already used on this account, nothing is queued and the earlier message's id is
 * returned (whatever its text).
 */
export async function enqueue(
  ctx: MutationCtx,
  fields: { accountId: string; to: string; text: string; idempotencyKey?: string },
): Promise<{ id: Id<"whatsappOutbound"> }> {
  const { accountId, to, text, idempotencyKey } = fields;
  if (idempotencyKey !== undefined) {
    const earlier = await ctx.db
      .query("whatsappOutbound")
      .withIndex("by_accountId_idempotencyKey", (q) =>
        q.eq("accountId", accountId).eq("idempotencyKey", idempotencyKey),
      )
      .first();
    if (earlier) return { id: earlier._id };
  }
  const now = Date.now();
  const id = await ctx.db.insert("whatsappOutbound", {
    accountId,
    to,
    text,
    status: "queued",
    attempts: 0,
    notBefore: now,
    ...(idempotencyKey === undefined ? {} : { idempotencyKey }),
    createdAt: now,
    updatedAt: now,
  });
  return { id };
}

/**
 * Claim up to `limit` messages of `accountId` for `lockMs`, oldest first (by creation):
 * queued ones with `notBefore <= now`, and sending ones whose lock expired. An expired
 * lock counts as an attempt (`lastError` "claim lock expired"); a message whose attempts
 * reach `maxAttempts` that way is failed instead of claimed. Each claimed message gets
 * a new random `claimToken`, the claim's `epoch` and `lockedUntil = now + lockMs`.
 * `FENCED`, nothing changed, unless `ownerId` holds the live lease at `epoch`.
 */
export async function claimOutbound(
  ctx: MutationCtx,
  fields: {
    accountId: string;
    ownerId: string;
    epoch: number;
    limit: number;
    lockMs: number;
    maxAttempts: number;
  },
): Promise<Claimed[]> {
  const { accountId, ownerId, epoch, limit, lockMs, maxAttempts } = fields;
  const now = Date.now();
  const lease = await leaseOf(ctx, accountId);
  if (!lease || lease.ownerId !== ownerId || lease.epoch !== epoch || lease.expiresAt <= now) {
    fenced(`${JSON.stringify(ownerId)} does not hold the lease of this account at epoch ${epoch}`);
  }
  const due = await ctx.db
    .query("whatsappOutbound")
    .withIndex("by_accountId_status_notBefore", (q) =>
      q.eq("accountId", accountId).eq("status", "queued").lte("notBefore", now),
    )
    .take(SCAN_LIMIT);
  const expired = await ctx.db
    .query("whatsappOutbound")
    .withIndex("by_accountId_status_lockedUntil", (q) =>
      q.eq("accountId", accountId).eq("status", "sending").lte("lockedUntil", now),
    )
    .take(SCAN_LIMIT);
  const candidates = [...due, ...expired].sort((a, b) => a._creationTime - b._creationTime);
  const claimed: Claimed[] = [];
  for (const row of candidates) {
    if (claimed.length === limit) break;
    let { attempts, lastError } = row;
    if (row.status === "sending") {
      attempts += 1;
      lastError = LOCK_EXPIRED;
      if (attempts >= maxAttempts) {
        await ctx.db.patch(row._id, {
          status: "failed",
          attempts,
          lastError,
          ...NO_CLAIM,
          updatedAt: now,
        });
        continue;
      }
    }
    const claimToken = crypto.randomUUID();
    await ctx.db.patch(row._id, {
      status: "sending",
      attempts,
      lastError,
      claimToken,
      claimEpoch: epoch,
      lockedUntil: now + lockMs,
      updatedAt: now,
    });
    claimed.push({ id: row._id, to: row.to, text: row.text, attempts, claimToken });
  }
  return claimed;
}

/** The outbound message `id`, or `NOT_FOUND` (also for ids that are not message ids). */
async function requireMessage(ctx: QueryCtx, id: string): Promise<Doc<"whatsappOutbound">> {
  const normalized = ctx.db.normalizeId("whatsappOutbound", id);
  const row = normalized && (await ctx.db.get(normalized));
  if (!row) throw contractError("NOT_FOUND", `no outbound message with id ${JSON.stringify(id)}`);
  return row;
}

/**
 * `FENCED` unless `row` is claimed (`sending`) with `claimToken` at `epoch`, and the
 * account's lease is still at that epoch (live or expired: only another owner taking it
 * moves the epoch).
 */
async function requireClaim(
  ctx: QueryCtx,
  row: Doc<"whatsappOutbound">,
  claimToken: string,
  epoch: number,
): Promise<void> {
  if (row.status !== "sending" || row.claimToken !== claimToken) {
    fenced("the claim token is not current: the message was released, finished or claimed again");
  }
  if (row.claimEpoch !== epoch) fenced(`the message was claimed at epoch ${row.claimEpoch}`);
  const lease = await leaseOf(ctx, row.accountId);
  if (!lease || lease.epoch !== epoch) {
    fenced(`the lease has passed from epoch ${epoch} to epoch ${lease?.epoch}`);
  }
}

/**
 * Move an outbound message by a delivery status: forward only (`sent` < `delivered` <
 * `read`), or to `failed` with `error` as `lastError`; a failed message stays failed.
 */
async function applyStatus(
  ctx: MutationCtx,
  row: Doc<"whatsappOutbound">,
  status: DeliveryStatus,
  error: string | undefined,
  now: number,
): Promise<void> {
  if (row.status === "failed") return;
  if (status === "failed") {
    const lastError = clip(error ?? FAILED_WITHOUT_ERROR);
    await ctx.db.patch(row._id, { status, lastError, updatedAt: now });
  } else if ((PROGRESS[status] ?? 0) > (PROGRESS[row.status] ?? 0)) {
    await ctx.db.patch(row._id, { status, updatedAt: now });
  }
}

/**
 * Finish a claimed message as sent with WhatsApp's `wamid`. `FENCED` for a claim token or
 * epoch that is not current (see `requireClaim`). A repeat with the same token after
 * success answers null again and changes nothing. Statuses a webhook already recorded
 * for `wamid` (a webhook can arrive before `markSent`) are applied at once.
 */
export async function markSent(
  ctx: MutationCtx,
  fields: { id: string; claimToken: string; epoch: number; wamid: string },
): Promise<null> {
  const { id, claimToken, epoch, wamid } = fields;
  const row = await requireMessage(ctx, id);
  // Only markSent sets `wamid`, and a new claim replaces the token: this is a repeat.
  if (row.wamid !== undefined && row.claimToken === claimToken) return null;
  await requireClaim(ctx, row, claimToken, epoch);
  const now = Date.now();
  await ctx.db.patch(row._id, { status: "sent", wamid, lockedUntil: undefined, updatedAt: now });
  const early = await ctx.db
    .query("whatsappStatuses")
    .withIndex("by_providerId_status", (q) => q.eq("providerId", wamid))
    .collect();
  for (const status of early) {
    if (status.accountId !== row.accountId) continue;
    await applyStatus(ctx, (await ctx.db.get(row._id))!, status.status, status.error, now);
  }
  return null;
}

/**
 * Count a failed attempt of a claimed message and store `error` (cut to 500 characters)
 * as `lastError`: queued again with `notBefore = retryAt` when `retryAt` is given and
 * `attempts < maxAttempts`, else failed. Returns the new status. `FENCED` for a claim
 * token or epoch that is not current; a repeat with the same token answers the status
 * the first call set, and changes nothing.
 */
export async function markFailed(
  ctx: MutationCtx,
  fields: {
    id: string;
    claimToken: string;
    epoch: number;
    error: string;
    retryAt?: number;
    maxAttempts: number;
  },
): Promise<{ status: "queued" | "failed" }> {
  const { id, claimToken, epoch, error, retryAt, maxAttempts } = fields;
  const row = await requireMessage(ctx, id);
  // After markFailed the token stays until the next claim replaces it (release and a
  // failure by an expired lock remove it; markSent sets a wamid): this is a repeat.
  if (
    row.claimToken === claimToken &&
    row.wamid === undefined &&
    (row.status === "queued" || row.status === "failed")
  ) {
    return { status: row.status };
  }
  await requireClaim(ctx, row, claimToken, epoch);
  const attempts = row.attempts + 1;
  const retry = retryAt !== undefined && attempts < maxAttempts;
  await ctx.db.patch(row._id, {
    status: retry ? "queued" : "failed",
    attempts,
    lastError: clip(error),
    notBefore: retry ? retryAt : row.notBefore,
    lockedUntil: undefined,
    updatedAt: Date.now(),
  });
  return { status: retry ? "queued" : "failed" };
}

/**
 * Put a claimed message back in the queue (`notBefore`, default now) without counting an
 * attempt, if `claimToken` is still current (no lease needed). Returns whether it did.
 */
export async function release(
  ctx: MutationCtx,
  fields: { id: string; claimToken: string; notBefore?: number },
): Promise<{ released: boolean }> {
  const { id, claimToken, notBefore } = fields;
  const row = await requireMessage(ctx, id);
  if (row.status !== "sending" || row.claimToken !== claimToken) return { released: false };
  const now = Date.now();
  await ctx.db.patch(row._id, {
    status: "queued",
    notBefore: notBefore ?? now,
    ...NO_CLAIM,
    updatedAt: now,
  });
  return { released: true };
}

/**
 * Record a webhook delivery for `accountId`. Each inbound message is recorded once per
 * provider id, and each status once per (wamid, status); anything seen before (in an
 * earlier delivery or earlier in this one) counts as a duplicate. A new status moves the
 * outbound message of this account with that wamid (see `applyStatus`); a status for an
 * unknown wamid is recorded and changes nothing, until `markSent` sets that wamid.
 * Returns how many messages and statuses were new, and how many items were duplicates.
 * Nothing is ever deleted: dedupe needs at least 8 days (Meta retries for up to 7).
 * `onNewMessage`, if given, runs in the same transaction for each message recorded for
 * the first time (the jobs of `service/whatsapp:recordWebhook` with an `agentId`).
 */
export async function recordWebhook(
  ctx: MutationCtx,
  fields: { accountId: string; messages: WebhookMessage[]; statuses: WebhookStatus[] },
  onNewMessage?: (message: WebhookMessage) => Promise<void>,
): Promise<WebhookCounts> {
  const { accountId, messages, statuses } = fields;
  const now = Date.now();
  const counts: WebhookCounts = { messages: 0, statuses: 0, duplicates: 0 };
  for (const { providerId, from, text, timestamp } of messages) {
    const seen = await ctx.db
      .query("whatsappInbound")
      .withIndex("by_providerId", (q) => q.eq("providerId", providerId))
      .first();
    if (seen) {
      counts.duplicates += 1;
      continue;
    }
    await ctx.db.insert("whatsappInbound", {
      accountId,
      providerId,
      from,
      text,
      receivedAt: timestamp,
      recordedAt: now,
    });
    counts.messages += 1;
    if (onNewMessage) await onNewMessage({ providerId, from, text, timestamp });
  }
  for (const { providerId, status, timestamp, error } of statuses) {
    const seen = await ctx.db
      .query("whatsappStatuses")
      .withIndex("by_providerId_status", (q) => q.eq("providerId", providerId).eq("status", status))
      .first();
    if (seen) {
      counts.duplicates += 1;
      continue;
    }
    await ctx.db.insert("whatsappStatuses", {
      accountId,
      providerId,
      status,
      timestamp,
      ...(error === undefined ? {} : { error }),
      recordedAt: now,
    });
    counts.statuses += 1;
    const message = await ctx.db
      .query("whatsappOutbound")
      .withIndex("by_wamid", (q) => q.eq("wamid", providerId))
      .first();
    if (message && message.accountId === accountId) {
      await applyStatus(ctx, message, status, error, now);
    }
  }
  return counts;
}

function toOutboxRow(row: Doc<"whatsappOutbound">): OutboxRow {
  const { _id, to, text, status, attempts, wamid, lastError, createdAt, updatedAt } = row;
  return {
    id: _id,
    to,
    text,
    status,
    attempts,
    wamid: wamid ?? null,
    lastError: lastError ?? null,
    createdAt,
    updatedAt,
  };
}

/**
 * A page of the outbound messages of `accountId` (with this `status`, if given), oldest
 * first.
 */
export async function listOutbox(
  ctx: QueryCtx,
  filter: { accountId: string; status?: OutboundStatus },
  options: PaginationOptions,
): Promise<Page<OutboxRow>> {
  const { accountId, status } = filter;
  const table = ctx.db.query("whatsappOutbound");
  const rows =
    status === undefined
      ? table.withIndex("by_accountId", (q) => q.eq("accountId", accountId))
      : table.withIndex("by_accountId_status", (q) =>
          q.eq("accountId", accountId).eq("status", status),
        );
  return mapPage(await rows.paginate(options), toOutboxRow);
}

/**
 * A page of the inbound messages of `accountId`, oldest first: by the webhook's
 * timestamp, then in the order they were recorded.
 */
export async function listInbox(
  ctx: QueryCtx,
  accountId: string,
  options: PaginationOptions,
): Promise<Page<InboxRow>> {
  const rows = await ctx.db
    .query("whatsappInbound")
    .withIndex("by_accountId_receivedAt", (q) => q.eq("accountId", accountId))
    .paginate(options);
  return mapPage(rows, ({ providerId, from, text, receivedAt }) => ({
    providerId,
    from,
    text,
    receivedAt,
  }));
}
