/**
 * WhatsApp, with fake timers: lease expiry and takeover at epoch + 1, claim locks that
 * expire (each counts as an attempt), `notBefore`; and what the vectors leave to the
 * Convex functions: argument edge cases, repeats, statuses that arrive before `markSent`,
 * cut errors, and the order of the inbox. The vectors cannot move the clock.
 */
import { ConvexError } from "convex/values";
import { afterEach, beforeEach, expect, test, vi } from "vitest";
import { LOCK_EXPIRED, MAX_ERROR_LENGTH } from "./functions/lib/whatsapp";
import { call, newBackend, pageRows, type Backend } from "./testing";

const serviceKey = "contract-secret";
const T0 = 1_700_000_000_000;
const W = "service/whatsapp:";
let t: Backend;

beforeEach(() => {
  vi.useFakeTimers();
  vi.setSystemTime(T0);
  vi.stubEnv("AGENT_SECRET", serviceKey);
  t = newBackend();
});
afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllEnvs();
});

type Lease = { accountId: string; ownerId: string; epoch: number; expiresAt: number };
type Claimed = { id: string; to: string; text: string; attempts: number; claimToken: string };
type OutboxRow = {
  id: string;
  status: string;
  attempts: number;
  wamid: string | null;
  lastError: string | null;
};

function mutation(name: string, args: Record<string, unknown>): Promise<unknown> {
  return call(t, "mutation", W + name, { serviceKey, ...args });
}

function query(name: string, args: Record<string, unknown>): Promise<unknown> {
  return call(t, "query", W + name, { serviceKey, ...args });
}

function acquire(ownerId: string, ttlMs: number, accountId = "acct") {
  return mutation("acquireLease", { accountId, ownerId, ttlMs }) as Promise<
    Lease & { held: boolean }
  >;
}

async function enqueue(text: string, accountId = "acct"): Promise<string> {
  const { id } = (await mutation("enqueue", { accountId, to: "15550000001", text })) as {
    id: string;
  };
  return id;
}

function claim(
  ownerId: string,
  epoch: number,
  options: { limit?: number; lockMs?: number; maxAttempts?: number } = {},
): Promise<Claimed[]> {
  const { limit = 10, lockMs = 60_000, maxAttempts = 3 } = options;
  const args = { accountId: "acct", ownerId, epoch, limit, lockMs, maxAttempts };
  return mutation("claimOutbound", args) as Promise<Claimed[]>;
}

function markSent(id: string, claimToken: string, epoch: number, wamid: string) {
  return mutation("markSent", { id, claimToken, epoch, wamid });
}

function outbox(accountId = "acct"): Promise<OutboxRow[]> {
  return pageRows<OutboxRow>(query("listOutbox", { accountId }));
}

function webhook(messages: unknown[], statuses: unknown[], accountId = "acct") {
  return mutation("recordWebhook", { accountId, messages, statuses });
}

async function codeOf(promise: Promise<unknown>): Promise<unknown> {
  const error = await promise.then(
    (value) => expect.fail(`expected a rejection, got ${JSON.stringify(value)}`),
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ConvexError);
  return (error as ConvexError<{ code: string }>).data.code;
}

test("an expired lease is taken over at epoch + 1, which fences the old owner", async () => {
  expect(await acquire("A", 1000)).toEqual({
    accountId: "acct",
    ownerId: "A",
    epoch: 1,
    expiresAt: T0 + 1000,
    held: true,
  });
  const m1 = await enqueue("one");
  const [{ claimToken }] = await claim("A", 1);
  vi.setSystemTime(T0 + 999);
  expect(await acquire("B", 1000)).toMatchObject({ ownerId: "A", epoch: 1, held: false });
  // Expired at expiresAt: A can no longer claim, B takes the lease.
  vi.setSystemTime(T0 + 1000);
  expect(await codeOf(claim("A", 1))).toBe("FENCED");
  expect(await acquire("B", 2000)).toEqual({
    accountId: "acct",
    ownerId: "B",
    epoch: 2,
    expiresAt: T0 + 3000,
    held: true,
  });
  // A paused owner that wakes up can neither finish nor renew.
  expect(await codeOf(markSent(m1, claimToken, 1, "wamid.1"))).toBe("FENCED");
  expect(await acquire("A", 1000)).toMatchObject({ ownerId: "B", epoch: 2, held: false });
  expect(await mutation("releaseLease", { accountId: "acct", ownerId: "A", epoch: 1 })).toEqual({
    released: false,
  });
  // B claims A's message once its lock expires (60 s): an attempt is counted.
  vi.setSystemTime(T0 + 60_000);
  await acquire("B", 2000);
  expect(await claim("B", 2)).toMatchObject([{ id: m1, attempts: 1 }]);
});

test("the same owner renews its own expired lease at the same epoch", async () => {
  await acquire("A", 1000);
  vi.setSystemTime(T0 + 5000);
  expect(await query("getLease", { accountId: "acct" })).toEqual({
    accountId: "acct",
    ownerId: "A",
    epoch: 1,
    expiresAt: T0 + 1000,
  });
  expect(await acquire("A", 1000)).toMatchObject({ epoch: 1, expiresAt: T0 + 6000, held: true });
  // Releasing twice is fine; the second release does not move expiresAt.
  const release = () => mutation("releaseLease", { accountId: "acct", ownerId: "A", epoch: 1 });
  expect(await release()).toEqual({ released: true });
  vi.setSystemTime(T0 + 5500);
  expect(await release()).toEqual({ released: true });
  expect(await query("getLease", { accountId: "acct" })).toMatchObject({ expiresAt: T0 + 5000 });
});

test("an expired lease fences claims; only the epoch decides markSent", async () => {
  await acquire("A", 1000);
  const m1 = await enqueue("one");
  const [{ claimToken }] = await claim("A", 1);
  vi.setSystemTime(T0 + 1000);
  expect(await codeOf(claim("A", 1))).toBe("FENCED");
  // Nobody took the lease: the message can still be finished.
  expect(await markSent(m1, claimToken, 1, "wamid.1")).toBeNull();
  expect((await outbox())[0]).toMatchObject({ status: "sent", wamid: "wamid.1" });
});

test("an expired claim lock counts as an attempt, and fails at maxAttempts", async () => {
  await acquire("A", 600_000);
  const m1 = await enqueue("one");
  const options = { lockMs: 1000, maxAttempts: 3 };
  const [first] = await claim("A", 1, options);
  expect(first).toMatchObject({ id: m1, attempts: 0 });
  vi.setSystemTime(T0 + 999);
  expect(await claim("A", 1, options)).toEqual([]);
  vi.setSystemTime(T0 + 1000);
  const [second] = await claim("A", 1, options);
  expect(second).toMatchObject({ id: m1, attempts: 1 });
  expect(second.claimToken).not.toBe(first.claimToken);
  expect((await outbox())[0]).toMatchObject({ status: "sending", lastError: LOCK_EXPIRED });
  // The first claim's token is stale now.
  expect(await codeOf(markSent(m1, first.claimToken, 1, "wamid.1"))).toBe("FENCED");
  vi.setSystemTime(T0 + 2000);
  expect(await claim("A", 1, options)).toMatchObject([{ id: m1, attempts: 2 }]);
  // The third expiry reaches maxAttempts: failed, not claimed.
  vi.setSystemTime(T0 + 3000);
  const third = await enqueue("two");
  expect(await claim("A", 1, { ...options, limit: 1 })).toMatchObject([{ id: third }]);
  expect((await outbox())[0]).toMatchObject({
    id: m1,
    status: "failed",
    attempts: 3,
    lastError: LOCK_EXPIRED,
  });
  const args = { id: m1, claimToken: second.claimToken, epoch: 1, error: "e", maxAttempts: 3 };
  expect(await codeOf(mutation("markFailed", args))).toBe("FENCED");
  expect(await mutation("release", { id: m1, claimToken: second.claimToken })).toEqual({
    released: false,
  });
});

test("claims take the oldest first, retried and lock-expired ones included", async () => {
  await acquire("A", 600_000);
  const m1 = await enqueue("one");
  const m2 = await enqueue("two");
  const m3 = await enqueue("three");
  const [c1, c2] = await claim("A", 1, { limit: 2, lockMs: 1000 });
  const failed = { id: m2, claimToken: c2.claimToken, epoch: 1, error: "e", maxAttempts: 3 };
  expect(await mutation("markFailed", { ...failed, retryAt: T0 + 500 })).toEqual({
    status: "queued",
  });
  // m2 waits for its retryAt; m1's lock holds until T0 + 1000.
  expect((await claim("A", 1)).map((c) => c.id)).toEqual([m3]);
  vi.setSystemTime(T0 + 500);
  expect(await claim("A", 1, { limit: 1 })).toMatchObject([{ id: m2, attempts: 1 }]);
  // m1's expired lock and a newer queued message are both due: m1 is older.
  vi.setSystemTime(T0 + 1000);
  const m4 = await enqueue("four");
  expect(await claim("A", 1, { limit: 1 })).toMatchObject([{ id: m1, attempts: 1 }]);
  expect(await claim("A", 1)).toMatchObject([{ id: m4, attempts: 0 }]);
  expect(c1.id).toBe(m1);
});

test("release puts a message back at notBefore without counting an attempt", async () => {
  await acquire("A", 600_000);
  const m1 = await enqueue("one");
  const [{ claimToken }] = await claim("A", 1);
  const args = { id: m1, claimToken, notBefore: T0 + 5000 };
  expect(await mutation("release", args)).toEqual({ released: true });
  expect(await claim("A", 1)).toEqual([]);
  vi.setSystemTime(T0 + 5000);
  expect(await claim("A", 1)).toMatchObject([{ id: m1, attempts: 0 }]);
});

test("claim tokens are fresh random UUIDs", async () => {
  await acquire("A", 600_000);
  for (let i = 0; i < 5; i++) await enqueue(`m${i}`);
  const tokens = (await claim("A", 1)).map((c) => c.claimToken);
  expect(new Set(tokens).size).toBe(5);
  for (const token of tokens) expect(token).toMatch(/^[0-9a-f-]{36}$/);
});

test("statuses recorded before markSent are applied when it sets the wamid", async () => {
  await acquire("A", 600_000);
  const m1 = await enqueue("one");
  const [{ claimToken }] = await claim("A", 1);
  const early = [{ providerId: "wamid.1", status: "delivered", timestamp: T0 }];
  expect(await webhook([], early)).toEqual({ messages: 0, statuses: 1, duplicates: 0 });
  expect((await outbox())[0].status).toBe("sending");
  await markSent(m1, claimToken, 1, "wamid.1");
  expect((await outbox())[0]).toMatchObject({ status: "delivered", wamid: "wamid.1" });
  // Another account's statuses never touch this account's messages.
  const read = [{ providerId: "wamid.1", status: "read", timestamp: T0 }];
  expect(await webhook([], read, "other")).toEqual({ messages: 0, statuses: 1, duplicates: 0 });
  expect((await outbox())[0].status).toBe("delivered");
});

test("every new status counts, moved or not; failed is final and keeps a cut error", async () => {
  await acquire("A", 600_000);
  const m1 = await enqueue("one");
  const [{ claimToken }] = await claim("A", 1);
  await markSent(m1, claimToken, 1, "wamid.1");
  const status = (s: string, error?: string) => ({
    providerId: "wamid.1",
    status: s,
    timestamp: T0,
    ...(error === undefined ? {} : { error }),
  });
  expect(await webhook([], [status("read"), status("sent")])).toEqual({
    messages: 0,
    statuses: 2,
    duplicates: 0,
  });
  expect((await outbox())[0].status).toBe("read");
  const long = `${"\u{1F600}".repeat(MAX_ERROR_LENGTH)}tail`;
  await webhook([], [status("failed", long), status("delivered")]);
  const [row] = await outbox();
  expect(row.status).toBe("failed");
  expect([...row.lastError!]).toHaveLength(MAX_ERROR_LENGTH);
  expect(row.lastError).toBe("\u{1F600}".repeat(MAX_ERROR_LENGTH));
  const unknown = { providerId: "wamid.none", status: "read", timestamp: T0 };
  expect(await webhook([], [unknown])).toEqual({ messages: 0, statuses: 1, duplicates: 0 });
});

test("markFailed stores at most 500 characters of error", async () => {
  await acquire("A", 600_000);
  const m1 = await enqueue("one");
  const [{ claimToken }] = await claim("A", 1);
  const args = { id: m1, claimToken, epoch: 1, error: "e".repeat(600), maxAttempts: 3 };
  expect(await mutation("markFailed", args)).toEqual({ status: "failed" });
  expect((await outbox())[0].lastError).toBe("e".repeat(MAX_ERROR_LENGTH));
});

test("the inbox is in webhook timestamp order; provider ids dedupe across accounts", async () => {
  const message = (providerId: string, timestamp: number) => ({
    providerId,
    from: "15551230001",
    text: "",
    timestamp,
  });
  await webhook([message("in.2", T0 + 2), message("in.1", T0 + 1)], []);
  expect(await webhook([message("in.1", T0 + 1)], [], "other")).toEqual({
    messages: 0,
    statuses: 0,
    duplicates: 1,
  });
  const inbox = await pageRows<{ providerId: string }>(query("listInbox", { accountId: "acct" }));
  expect(inbox.map((m) => m.providerId)).toEqual(["in.1", "in.2"]);
  expect(await pageRows(query("listInbox", { accountId: "other" }))).toEqual([]);
});

test("unknown message ids are NOT_FOUND", async () => {
  const id = await enqueue("one");
  await t.run((ctx) => ctx.db.delete(ctx.db.normalizeId("whatsappOutbound", id)!));
  for (const missing of [id, "not-an-id"]) {
    const base = { id: missing, claimToken: "t", epoch: 1 };
    expect(await codeOf(mutation("markSent", { ...base, wamid: "w" }))).toBe("NOT_FOUND");
    const failed = { ...base, error: "e", maxAttempts: 3 };
    expect(await codeOf(mutation("markFailed", failed))).toBe("NOT_FOUND");
    expect(await codeOf(mutation("release", { id: missing, claimToken: "t" }))).toBe("NOT_FOUND");
  }
});

test("argument edge cases are INVALID_ARGUMENT and change nothing", async () => {
  await acquire("A", 600_000);
  const m1 = await enqueue("one");
  const claimArgs = { accountId: "acct", ownerId: "A", epoch: 1, limit: 1, lockMs: 5000 };
  const message = { providerId: "in.1", from: "15551230001", text: "hi", timestamp: T0 };
  const status = { providerId: "wamid.1", status: "read", timestamp: T0 };
  const sent = { id: m1, claimToken: "t", epoch: 1, wamid: "w" };
  const cases: [string, Record<string, unknown>][] = [
    ["acquireLease", { accountId: "", ownerId: "A", ttlMs: 5000 }],
    ["acquireLease", { accountId: "acct", ownerId: "A\nB", ttlMs: 5000 }],
    ["acquireLease", { accountId: "acct", ownerId: "A", ttlMs: 5000, epoch: 1 }],
    ["releaseLease", { accountId: "acct", ownerId: "A", epoch: 0 }],
    ["enqueue", { accountId: "acct", to: "15550000001", text: "x", idempotencyKey: "k\n" }],
    ["enqueue", { accountId: "acct", to: "15550000001", text: "x", idempotencyKey: null }],
    ["enqueue", { accountId: "acct", to: "\u0661\u0662\u0663\u0664\u0665\u0666\u0667", text: "x" }],
    ["enqueue", { accountId: "acct", to: "15550000001", text: "\u{1F600}".repeat(4097) }],
    ["claimOutbound", { ...claimArgs, epoch: 0, maxAttempts: 3 }],
    ["claimOutbound", { ...claimArgs, lockMs: 999, maxAttempts: 3 }],
    ["claimOutbound", { ...claimArgs, lockMs: 600_001, maxAttempts: 3 }],
    ["claimOutbound", { ...claimArgs, maxAttempts: 0 }],
    ["claimOutbound", { ...claimArgs, maxAttempts: 101 }],
    ["markSent", { ...sent, claimToken: "" }],
    ["markSent", { ...sent, wamid: "" }],
    ["markSent", { ...sent, wamid: "w".repeat(201) }],
    ["markSent", { ...sent, id: 7 }],
    ["markFailed", { id: m1, claimToken: "t", epoch: 1, error: "e", maxAttempts: 3, retryAt: -1 }],
    ["markFailed", { id: m1, claimToken: "t", epoch: 1, maxAttempts: 3 }],
    ["release", { id: m1, claimToken: "t", notBefore: 1.5 }],
    [
      "recordWebhook",
      { accountId: "acct", messages: [{ ...message, providerId: "" }], statuses: [] },
    ],
    [
      "recordWebhook",
      { accountId: "acct", messages: [{ ...message, timestamp: -1 }], statuses: [] },
    ],
    ["recordWebhook", { accountId: "acct", messages: [{ ...message, from: "" }], statuses: [] }],
    ["recordWebhook", { accountId: "acct", messages: [{ ...message, extra: 1 }], statuses: [] }],
    [
      "recordWebhook",
      { accountId: "acct", messages: [{ ...message, text: "x".repeat(4097) }], statuses: [] },
    ],
    ["recordWebhook", { accountId: "acct", messages: [], statuses: [{ ...status, error: null }] }],
    ["recordWebhook", { accountId: "acct", messages: Array(1001).fill(message), statuses: [] }],
    [
      "recordWebhook",
      { accountId: "acct", messages: [message], statuses: Array(1001).fill(status) },
    ],
  ];
  for (const [name, args] of cases) {
    expect(await codeOf(mutation(name, args)), `${name} ${JSON.stringify(args)}`).toBe(
      "INVALID_ARGUMENT",
    );
  }
  expect(await codeOf(query("listInbox", { accountId: "" }))).toBe("INVALID_ARGUMENT");
  expect(await codeOf(query("listOutbox", { accountId: "acct", status: null }))).toBe(
    "INVALID_ARGUMENT",
  );
  expect(await outbox()).toMatchObject([{ id: m1, status: "queued", attempts: 0 }]);
  expect(await pageRows(query("listInbox", { accountId: "acct" }))).toEqual([]);
  expect(await query("getLease", { accountId: "acct" })).toMatchObject({ ownerId: "A", epoch: 1 });
});

test("texts count characters, not UTF-16 units; 100 of the longest webhook messages fit", async () => {
  const emoji = "\u{1F600}".repeat(4096);
  const { id } = (await mutation("enqueue", {
    accountId: "acct",
    to: "+15550000001",
    text: emoji,
  })) as { id: string };
  expect(await outbox()).toMatchObject([{ id }]);
  const messages = Array.from({ length: 101 }, (_, i) => ({
    providerId: `in.${i}`,
    from: "15551230001",
    text: emoji,
    timestamp: T0,
  }));
  expect(await codeOf(webhook(messages, []))).toBe("INVALID_ARGUMENT");
  const fit = messages.slice(0, 100);
  expect(await webhook(fit, [])).toEqual({ messages: 100, statuses: 0, duplicates: 0 });
});
