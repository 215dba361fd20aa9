/**
 * WhatsApp: `service/whatsapp:*` in ../../../contract/README.md. Every function checks
 * `serviceKey` first (`UNAUTHORIZED`), then its arguments (`INVALID_ARGUMENT`). One owner
 * at a time holds an account's lease and sends its outbound messages; a stale lease
 * epoch or claim token is `FENCED` (see ../lib/whatsapp.ts).
 */
import { v } from "convex/values";
import { mutation, query } from "../_generated/server";
import {
  count,
  epoch,
  epochMs,
  label,
  oneOf,
  optional,
  OUTBOUND_STATUSES,
  phoneNumber,
  serviceArgs,
  string,
  text,
  ttlMs,
  webhookMessages,
  webhookStatuses,
} from "../lib/args";
import * as jobs from "../lib/jobs";
import { PAGE_ARGS, pageOptions, type Page } from "../lib/pages";
import * as whatsapp from "../lib/whatsapp";

/**
 * Take, renew or be refused the lease of `accountId` for `ownerId`, for `ttlMs` (1000 to
 * 600000) from now. Returns the lease after the call `{accountId, ownerId, epoch,
 * expiresAt, held}`; `held: false` with another owner's live lease, which is unchanged.
 */
export const acquireLease = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<whatsapp.LeaseAnswer> => {
    const a = serviceArgs(args, ["accountId", "ownerId", "ttlMs"]);
    return await whatsapp.acquireLease(ctx, {
      accountId: label("accountId", a.accountId),
      ownerId: label("ownerId", a.ownerId),
      ttlMs: ttlMs("ttlMs", a.ttlMs),
    });
  },
});

/**
 * Expire the lease of `accountId` now if it carries `ownerId` and `epoch`; the epoch is
 * kept. Returns `{released: boolean}`.
 */
export const releaseLease = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<{ released: boolean }> => {
    const a = serviceArgs(args, ["accountId", "ownerId", "epoch"]);
    return await whatsapp.releaseLease(ctx, {
      accountId: label("accountId", a.accountId),
      ownerId: label("ownerId", a.ownerId),
      epoch: epoch("epoch", a.epoch),
    });
  },
});

/**
 * The lease of `accountId` `{accountId, ownerId, epoch, expiresAt}`, also when it has
 * expired (compare `expiresAt` with the clock); null if it never had one.
 */
export const getLease = query({
  args: v.any(),
  handler: async (ctx, args): Promise<whatsapp.Lease | null> => {
    const a = serviceArgs(args, ["accountId"]);
    return await whatsapp.getLease(ctx, label("accountId", a.accountId));
  },
});

/**
 * Queue `text` (1 to 4096 characters) to `to` (7 to 15 digits, an optional leading "+")
 * on `accountId`. Returns `{id}`; the same id again for a repeated `idempotencyKey?`.
 */
export const enqueue = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<{ id: string }> => {
    const a = serviceArgs(args, ["accountId", "to", "text", "idempotencyKey"]);
    return await whatsapp.enqueue(ctx, {
      accountId: label("accountId", a.accountId),
      to: phoneNumber("to", a.to),
      text: text("text", a.text),
      idempotencyKey: optional(label, "idempotencyKey", a.idempotencyKey),
    });
  },
});

/**
 * Claim up to `limit` (1 to 100) due messages of `accountId` for `lockMs` (1000 to
 * 600000), oldest first; an expired lock counts as an attempt, and fails the message at
 * `maxAttempts` (1 to 100). Returns `[{id, to, text, attempts, claimToken}]`; `FENCED`
 * unless `ownerId` holds the live lease at `epoch`.
 */
export const claimOutbound = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<whatsapp.Claimed[]> => {
    const a = serviceArgs(args, [
      "accountId",
      "ownerId",
      "epoch",
      "limit",
      "lockMs",
      "maxAttempts",
    ]);
    return await whatsapp.claimOutbound(ctx, {
      accountId: label("accountId", a.accountId),
      ownerId: label("ownerId", a.ownerId),
      epoch: epoch("epoch", a.epoch),
      limit: count("limit", a.limit),
      lockMs: ttlMs("lockMs", a.lockMs),
      maxAttempts: count("maxAttempts", a.maxAttempts),
    });
  },
});

/**
 * Mark claimed message `id` sent as `wamid`. Returns null; `FENCED` for a stale
 * `claimToken` or `epoch`, `NOT_FOUND` for an unknown id. A repeat answers null again.
 */
export const markSent = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<null> => {
    const a = serviceArgs(args, ["id", "claimToken", "epoch", "wamid"]);
    return await whatsapp.markSent(ctx, {
      id: string("id", a.id),
      claimToken: label("claimToken", a.claimToken),
      epoch: epoch("epoch", a.epoch),
      wamid: label("wamid", a.wamid),
    });
  },
});

/**
 * Count a failed attempt of claimed message `id` with `error`: queued again at
 * `retryAt?` while attempts remain below `maxAttempts` (1 to 100), else failed. Returns
 * `{status}`; `FENCED` for a stale `claimToken` or `epoch`, `NOT_FOUND` for an unknown id.
 * A repeat answers as the first call did.
 */
export const markFailed = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<{ status: "queued" | "failed" }> => {
    const a = serviceArgs(args, ["id", "claimToken", "epoch", "error", "retryAt", "maxAttempts"]);
    return await whatsapp.markFailed(ctx, {
      id: string("id", a.id),
      claimToken: label("claimToken", a.claimToken),
      epoch: epoch("epoch", a.epoch),
      error: string("error", a.error),
      retryAt: optional(epochMs, "retryAt", a.retryAt),
      maxAttempts: count("maxAttempts", a.maxAttempts),
    });
  },
});

/**
 * Put claimed message `id` back in the queue (at `notBefore?`, default now) without
 * counting an attempt, if `claimToken` is current; needs no lease. Returns
 * `{released: boolean}`; `NOT_FOUND` for an unknown id.
 */
export const release = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<{ released: boolean }> => {
    const a = serviceArgs(args, ["id", "claimToken", "notBefore"]);
    return await whatsapp.release(ctx, {
      id: string("id", a.id),
      claimToken: label("claimToken", a.claimToken),
      notBefore: optional(epochMs, "notBefore", a.notBefore),
    });
  },
});

/**
 * Record a webhook delivery for `accountId`: `messages: [{providerId, from, text,
 * timestamp}]` and `statuses: [{providerId, status, timestamp, error?}]`, at most 1000
 * each, each recorded once. With `agentId?`, each message recorded for the first time
 * also queues a job for that agent in its WhatsApp conversation (none for an unknown
 * agent; see `jobs.inboundRouting`). Returns `{messages, statuses, duplicates}`: the new
 * ones of each kind, and the items seen before.
 */
export const recordWebhook = mutation({
  args: v.any(),
  handler: async (ctx, args): Promise<whatsapp.WebhookCounts> => {
    const a = serviceArgs(args, ["accountId", "messages", "statuses", "agentId"]);
    const accountId = label("accountId", a.accountId);
    const fields = {
      accountId,
      messages: webhookMessages("messages", a.messages),
      statuses: webhookStatuses("statuses", a.statuses),
    };
    const agentId = optional(string, "agentId", a.agentId);
    const onNewMessage = await jobs.inboundRouting(ctx, agentId, accountId);
    return await whatsapp.recordWebhook(ctx, fields, onNewMessage);
  },
});

/**
 * A page (`cursor?`, `numItems?`: see ../lib/pages.ts) of the outbound messages of
 * `accountId` (only those with `status?`, if given), oldest first: `{page,
 * continueCursor, isDone}`, each row `{id, to, text, status, attempts, wamid, lastError,
 * createdAt, updatedAt}`.
 */
export const listOutbox = query({
  args: v.any(),
  handler: async (ctx, args): Promise<Page<whatsapp.OutboxRow>> => {
    const a = serviceArgs(args, ["accountId", "status", ...PAGE_ARGS]);
    const filter = {
      accountId: label("accountId", a.accountId),
      status: optional((field, value) => oneOf(field, value, OUTBOUND_STATUSES), "status", a.status),
    };
    return await whatsapp.listOutbox(ctx, filter, pageOptions(a));
  },
});

/**
 * A page (`cursor?`, `numItems?`: see ../lib/pages.ts) of the inbound messages of
 * `accountId`, oldest first: `{page, continueCursor, isDone}`, each row `{providerId, from,
 * text, receivedAt}`.
 */
export const listInbox = query({
  args: v.any(),
  handler: async (ctx, args): Promise<Page<whatsapp.InboxRow>> => {
    const a = serviceArgs(args, ["accountId", ...PAGE_ARGS]);
    return await whatsapp.listInbox(ctx, label("accountId", a.accountId), pageOptions(a));
  },
});
