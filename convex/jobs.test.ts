/**
 * Jobs, with fake timers: claim locks that expire (each counts as an attempt, dead at
 * `maxAttempts`), a job backing off (`notBefore`) that holds back its agent's later jobs;
 * the jobs counter and expired locks, and the counter moving by time (a retry falling
 * due, a lock expiring unrenewed: their scheduled runs); wake-up jobs that ended, a
 * release after the lock expired; and what the vectors leave to the Convex functions:
 * argument edge cases, the choices the contract leaves open (empty or long replies,
 * webhook messages that make no job, idempotency keys across agents), cut errors, what is
 * stored. The vectors cannot move the clock.
 */
import { makeFunctionReference } from "convex/server";
import { ConvexError } from "convex/values";
import { afterEach, beforeEach, expect, test, vi } from "vitest";
import { MAX_TEXT_LENGTH } from "./functions/lib/args";
import { AGENT_REMOVED } from "./functions/lib/jobs";
import { LOCK_EXPIRED, MAX_ERROR_LENGTH } from "./functions/lib/whatsapp";
import { advance, call, newBackend, pageRows, scheduledRuns, type Backend } from "./testing";

const serviceKey = "contract-secret";
const T0 = 1_700_000_000_000;
const J = "service/jobs:";
const CONV = { channel: "whatsapp", accountId: "acct", contact: "15550000001" };
const USAGE = { inputTokens: 1, outputTokens: 2 };
const SESSION = "s1";
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

type Claimed = { id: string; agentId: string; input: string; attempts: number; claimToken: string };
type Job = {
  id: string;
  status: string;
  attempts: number;
  notBefore: number;
  lockedUntil: number | null;
  error: string | null;
};
type OutboxRow = { id: string; to: string; text: string };
type Release = { released: boolean };

function mutation(name: string, args: Record<string, unknown>): Promise<unknown> {
  return call(t, "mutation", J + name, { serviceKey, ...args });
}

function query(name: string, args: Record<string, unknown>): Promise<unknown> {
  return call(t, "query", J + name, { serviceKey, ...args });
}

async function createAgent(name = "a"): Promise<string> {
  const agent = (await call(t, "mutation", "service/agents:create", {
    serviceKey,
    name,
    heartbeatIntervalMs: 5000,
  })) as { id: string };
  return agent.id;
}

async function enqueue(agentId: string, input: string, extra: Record<string, unknown> = {}) {
  const { id } = (await mutation("enqueue", { agentId, input, ...extra })) as { id: string };
  return id;
}

function claim(
  agentIds: string[],
  options: { limit?: number; lockMs?: number; maxAttempts?: number } = {},
): Promise<Claimed[]> {
  const { limit = 10, lockMs = 60_000, maxAttempts = 3 } = options;
  const args = { agentIds, workerId: "w1", limit, lockMs, maxAttempts };
  return mutation("claim", args) as Promise<Claimed[]>;
}

function complete(id: string, claimToken: string, result: string, sessionKey = SESSION) {
  const args = { id, claimToken, sessionKey, result, usage: USAGE, steps: 1 };
  return mutation("complete", args) as Promise<{ status: string; replyId: string | null }>;
}

function history(conversation: object, sessionKey = SESSION, limit = 10): Promise<unknown[]> {
  return query("history", { conversation, sessionKey, limit }) as Promise<unknown[]>;
}

function get(id: string): Promise<Job> {
  return query("get", { id }) as Promise<Job>;
}

function jobsVersion(): Promise<string> {
  return query("version", {}) as Promise<string>;
}

function outbox(): Promise<OutboxRow[]> {
  const args = { serviceKey, accountId: "acct" };
  return pageRows<OutboxRow>(call(t, "query", "service/whatsapp:listOutbox", args));
}

async function errorOf(promise: Promise<unknown>): Promise<{ code: string; message: string }> {
  const error = await promise.then(
    (value) => expect.fail(`expected a rejection, got ${JSON.stringify(value)}`),
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ConvexError);
  return (error as ConvexError<{ code: string; message: string }>).data;
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  return (await errorOf(promise)).code;
}

test("an expired claim lock counts as an attempt, and makes the job dead at maxAttempts", async () => {
  const a = await createAgent();
  const j1 = await enqueue(a, "one");
  const j2 = await enqueue(a, "two");
  const options = { lockMs: 1000, maxAttempts: 3 };
  const [first] = await claim([a], options);
  expect(first).toMatchObject({ id: j1, attempts: 0 });
  expect(await get(j1)).toMatchObject({ status: "running", lockedUntil: T0 + 1000 });
  vi.setSystemTime(T0 + 999);
  expect(await claim([a], options)).toEqual([]);
  vi.setSystemTime(T0 + 1000);
  const [second] = await claim([a], options);
  expect(second).toMatchObject({ id: j1, attempts: 1 });
  expect(second.claimToken).not.toBe(first.claimToken);
  expect(await get(j1)).toMatchObject({ status: "running", error: LOCK_EXPIRED });
  // The first claim's token is stale now.
  expect(await codeOf(complete(j1, first.claimToken, "late"))).toBe("FENCED");
  vi.setSystemTime(T0 + 2000);
  expect(await claim([a], options)).toMatchObject([{ id: j1, attempts: 2 }]);
  // The third expiry reaches maxAttempts: dead, and the agent's next job is claimed.
  vi.setSystemTime(T0 + 3000);
  expect(await claim([a], options)).toMatchObject([{ id: j2, attempts: 0 }]);
  expect(await get(j1)).toMatchObject({
    status: "dead",
    attempts: 3,
    error: LOCK_EXPIRED,
    lockedUntil: null,
  });
  const failed = { id: j1, claimToken: second.claimToken, error: "e", maxAttempts: 3 };
  expect(await codeOf(mutation("fail", failed))).toBe("FENCED");
});

test("a lock that expired but was not reclaimed still counts for renew and complete", async () => {
  const a = await createAgent();
  const j1 = await enqueue(a, "one");
  const [{ claimToken }] = await claim([a], { lockMs: 1000 });
  vi.setSystemTime(T0 + 5000);
  expect(await mutation("renew", { id: j1, claimToken, lockMs: 2000 })).toEqual({
    lockedUntil: T0 + 7000,
  });
  vi.setSystemTime(T0 + 6000);
  expect(await claim([a])).toEqual([]);
  vi.setSystemTime(T0 + 9000);
  expect(await complete(j1, claimToken, "done")).toEqual({ status: "done", replyId: null });
  expect(await get(j1)).toMatchObject({ status: "done", attempts: 0, lockedUntil: null });
});

test("a job backing off holds back its agent's later jobs, not other agents' jobs", async () => {
  const a = await createAgent("a");
  const b = await createAgent("b");
  const j1 = await enqueue(a, "one");
  const j2 = await enqueue(a, "two");
  const [{ claimToken }] = await claim([a]);
  const failed = { id: j1, claimToken, error: "busy", retryAt: T0 + 5000, maxAttempts: 3 };
  expect(await mutation("fail", failed)).toEqual({ status: "queued" });
  expect(await get(j1)).toMatchObject({ status: "queued", notBefore: T0 + 5000, attempts: 1 });
  const k1 = await enqueue(b, "for b");
  expect((await claim([a, b])).map((c) => c.id)).toEqual([k1]);
  vi.setSystemTime(T0 + 4999);
  expect(await claim([a])).toEqual([]);
  vi.setSystemTime(T0 + 5000);
  const [again] = await claim([a]);
  expect(again).toMatchObject({ id: j1, attempts: 1 });
  await complete(j1, again.claimToken, "ok");
  expect(await claim([a])).toMatchObject([{ id: j2, attempts: 0 }]);
});

test("one claim takes only the oldest of two agents' jobs in one conversation", async () => {
  const a = await createAgent("a");
  const b = await createAgent("b");
  const c = await createAgent("c");
  const j1 = await enqueue(a, "one", { conversation: CONV });
  await enqueue(b, "two", { conversation: CONV });
  const j3 = await enqueue(c, "three");
  expect((await claim([b, a, c])).map((x) => x.id)).toEqual([j1, j3]);
  expect(await claim([b])).toEqual([]);
});

test("an expired lock in a conversation is reset only by a claim for its own agent", async () => {
  const a = await createAgent("a");
  const b = await createAgent("b");
  const j1 = await enqueue(a, "one", { conversation: CONV });
  const j2 = await enqueue(b, "two", { conversation: CONV });
  await claim([a], { lockMs: 1000 });
  vi.setSystemTime(T0 + 1000);
  // j1 is still running (its lock expired, but only a claim for agent a resets it).
  expect(await claim([b])).toEqual([]);
  expect(await claim([b, a], { lockMs: 1000 })).toMatchObject([{ id: j1, attempts: 1 }]);
  vi.setSystemTime(T0 + 2000);
  // maxAttempts 2: j1 dies, which frees the conversation for b in the same claim.
  expect(await claim([a, b], { maxAttempts: 2 })).toMatchObject([{ id: j2, attempts: 0 }]);
  expect(await get(j1)).toMatchObject({ status: "dead", attempts: 2 });
});

test("repeated and duplicate agent ids claim once; 1000 ids are accepted, 1001 are not", async () => {
  const a = await createAgent();
  const j1 = await enqueue(a, "one");
  const many = [a, ...Array.from({ length: 999 }, (_, i) => `unknown-${i}`)];
  expect(await claim([a, a, "x"])).toMatchObject([{ id: j1 }]);
  expect(await claim(many)).toEqual([]);
  expect(await codeOf(claim([...many, "one more"]))).toBe("INVALID_ARGUMENT");
});

test("an idempotency key is one job across all agents", async () => {
  const a = await createAgent("a");
  const b = await createAgent("b");
  const j1 = await enqueue(a, "one", { idempotencyKey: "k" });
  expect(await enqueue(b, "other", { idempotencyKey: "k" })).toBe(j1);
  expect(await pageRows(query("list", { agentId: b }))).toEqual([]);
});

test("an empty result queues no reply; a long one is cut to a WhatsApp message", async () => {
  const a = await createAgent();
  const j1 = await enqueue(a, "one", { conversation: CONV });
  const [c1] = await claim([a]);
  expect(await complete(j1, c1.claimToken, "")).toEqual({ status: "done", replyId: null });
  expect(await outbox()).toEqual([]);
  expect(await history(CONV)).toMatchObject([
    { role: "user", content: "one", jobId: j1, at: T0 },
    { role: "assistant", content: "", jobId: j1, at: T0 },
  ]);
  const j2 = await enqueue(a, "two", { conversation: CONV });
  const [c2] = await claim([a]);
  const long = "\u{1F600}".repeat(MAX_TEXT_LENGTH + 1);
  const { replyId } = await complete(j2, c2.claimToken, long);
  const [reply] = await outbox();
  expect(reply).toMatchObject({ id: replyId, to: "15550000001" });
  expect(reply.text).toBe("\u{1F600}".repeat(MAX_TEXT_LENGTH));
  expect(await get(j2)).toMatchObject({ result: long });
});

test("the reply's idempotency key is job:<id>", async () => {
  const a = await createAgent();
  const j1 = await enqueue(a, "one", { conversation: CONV });
  const [{ claimToken }] = await claim([a]);
  const { replyId } = await complete(j1, claimToken, "reply");
  const rows = await t.run((ctx) => ctx.db.query("whatsappOutbound").collect());
  expect(rows).toMatchObject([{ _id: replyId, idempotencyKey: `job:${j1}` }]);
});

test("webhook messages with an empty text or a sender that is no phone number make no job", async () => {
  const a = await createAgent();
  const message = (providerId: string, from: string, text: string) => ({
    providerId,
    from,
    text,
    timestamp: T0,
  });
  const messages = [
    message("in.1", "15550000001", ""),
    message("in.2", "not-a-number", "hi"),
    message("in.3", "+15550000002", "hello"),
  ];
  const args = { serviceKey, accountId: "acct", messages, statuses: [], agentId: a };
  expect(await call(t, "mutation", "service/whatsapp:recordWebhook", args)).toEqual({
    messages: 3,
    statuses: 0,
    duplicates: 0,
  });
  expect(await pageRows(query("list", {}))).toMatchObject([
    {
      input: "hello",
      conversation: { channel: "whatsapp", accountId: "acct", contact: "15550000002" },
    },
  ]);
  const jobs = await t.run((ctx) => ctx.db.query("jobs").collect());
  expect(jobs).toMatchObject([{ idempotencyKey: "whatsapp:in.3" }]);
});

test("a repeat of fail is FENCED: only complete answers a repeat as the first call did", async () => {
  const a = await createAgent();
  const j1 = await enqueue(a, "one");
  const [{ claimToken }] = await claim([a]);
  const failed = { id: j1, claimToken, error: "e", retryAt: T0 + 1000, maxAttempts: 3 };
  expect(await mutation("fail", failed)).toEqual({ status: "queued" });
  expect(await codeOf(mutation("fail", failed))).toBe("FENCED");
  expect(await get(j1)).toMatchObject({ status: "queued", attempts: 1 });
});

test("fail stores at most 500 characters of error", async () => {
  const a = await createAgent();
  const j1 = await enqueue(a, "one");
  const [{ claimToken }] = await claim([a]);
  const error = `${"\u{1F600}".repeat(MAX_ERROR_LENGTH)}tail`;
  expect(await mutation("fail", { id: j1, claimToken, error, maxAttempts: 3 })).toEqual({
    status: "failed",
  });
  expect((await get(j1)).error).toBe("\u{1F600}".repeat(MAX_ERROR_LENGTH));
});

test("inputs and results count characters; edge cases are INVALID_ARGUMENT and change nothing", async () => {
  const a = await createAgent();
  const big = "\u{1F600}".repeat(32768);
  const j1 = await enqueue(a, big);
  const [{ claimToken }] = await claim([a]);
  const done = { id: j1, claimToken, sessionKey: SESSION, usage: USAGE, steps: 1 };
  const cases: [string, Record<string, unknown>][] = [
    ["enqueue", { agentId: a, input: `${big}x` }],
    ["enqueue", { agentId: a, input: "x", conversation: null }],
    ["enqueue", { agentId: a, input: "x", conversation: { ...CONV, accountId: "a\nb" } }],
    ["enqueue", { agentId: a, input: "x", conversation: { ...CONV, contact: 15550000001 } }],
    ["enqueue", { agentId: a, input: "x", idempotencyKey: "k".repeat(201) }],
    ["enqueue", { agentId: a, input: "x", conversation: { ...CONV, extra: 1 } }],
    ["claim", { agentIds: [a], workerId: "w\n", limit: 1, lockMs: 5000, maxAttempts: 1 }],
    ["claim", { agentIds: [a], workerId: "w", limit: 1.5, lockMs: 5000, maxAttempts: 1 }],
    ["complete", { ...done, result: `${big}x` }],
    ["complete", { ...done, result: "r", usage: { ...USAGE, extra: 1 } }],
    ["complete", { ...done, result: "r", usage: null }],
    ["complete", { ...done, result: "r", steps: "1" }],
    ["fail", { id: j1, claimToken, error: "e", maxAttempts: 3, retryAt: null }],
    ["fail", { id: j1, claimToken, error: "e", maxAttempts: 3, retryAt: 1.5 }],
    ["renew", { id: j1, claimToken, lockMs: 600_001 }],
    ["renew", { id: j1, claimToken: "", lockMs: 5000 }],
    ["complete", { ...done, claimToken: "", result: "r" }],
  ];
  for (const [name, args] of cases) {
    expect(await codeOf(mutation(name, args)), `${name} ${JSON.stringify(args)}`).toBe(
      "INVALID_ARGUMENT",
    );
  }
  expect(await codeOf(history(CONV, SESSION, 1.5))).toBe("INVALID_ARGUMENT");
  expect(await codeOf(query("list", { agentId: a, status: null }))).toBe("INVALID_ARGUMENT");
  expect(await get(j1)).toMatchObject({ status: "running", attempts: 0 });
  expect(await pageRows(query("list", {}))).toHaveLength(1);
  expect(await complete(j1, claimToken, big)).toMatchObject({ status: "done" });
});

test("a bad conversation's message names the field", async () => {
  const a = await createAgent();
  const conversation = { ...CONV, contact: "12" };
  const error = await errorOf(mutation("enqueue", { agentId: a, input: "x", conversation }));
  expect(error.code).toBe("INVALID_ARGUMENT");
  expect(error.message).toMatch(/^conversation\.contact must be /);
});

test("unknown job ids are NOT_FOUND; an unknown agent lists no jobs", async () => {
  const a = await createAgent();
  const j1 = await enqueue(a, "one");
  await t.run((ctx) => ctx.db.delete(ctx.db.normalizeId("jobs", j1)!));
  for (const id of [j1, "not-an-id"]) {
    expect(await codeOf(get(id))).toBe("NOT_FOUND");
    expect(await codeOf(mutation("renew", { id, claimToken: "t", lockMs: 5000 }))).toBe(
      "NOT_FOUND",
    );
    expect(await codeOf(complete(id, "t", "r"))).toBe("NOT_FOUND");
    const failed = { id, claimToken: "t", error: "e", maxAttempts: 3 };
    expect(await codeOf(mutation("fail", failed))).toBe("NOT_FOUND");
  }
  expect(await pageRows(query("list", { agentId: "not-an-id" }))).toEqual([]);
});

test("claim tokens are fresh random UUIDs", async () => {
  const agents = [];
  for (let i = 0; i < 5; i++) {
    const agent = await createAgent(`a${i}`);
    await enqueue(agent, "x");
    agents.push(agent);
  }
  const tokens = (await claim(agents)).map((c) => c.claimToken);
  expect(new Set(tokens).size).toBe(5);
  for (const token of tokens) expect(token).toMatch(/^[0-9a-f-]{36}$/);
});

test("a claim moves the jobs version when it puts an expired lock back, not when the job dies", async () => {
  const a = await createAgent();
  const j1 = await enqueue(a, "one");
  await claim([a], { lockMs: 1000, maxAttempts: 2 });
  const v1 = await jobsVersion();
  vi.setSystemTime(T0 + 1000);
  // Put back (attempt 1 of 2) and claimed again in the same call.
  expect(await claim([a], { lockMs: 1000, maxAttempts: 2 })).toMatchObject([{ id: j1 }]);
  const v2 = await jobsVersion();
  expect(v2).not.toBe(v1);
  vi.setSystemTime(T0 + 2000);
  expect(await claim([a], { lockMs: 1000, maxAttempts: 2 })).toEqual([]);
  expect(await get(j1)).toMatchObject({ status: "dead", attempts: 2 });
  expect(await jobsVersion()).toBe(v2);
});

test("the jobs version moves when a retry's notBefore comes, and not before", async () => {
  const a = await createAgent();
  const j1 = await enqueue(a, "one");
  const [{ claimToken }] = await claim([a]);
  const v1 = await jobsVersion();
  await mutation("fail", { id: j1, claimToken, error: "e", retryAt: T0 + 5000, maxAttempts: 3 });
  const v2 = await jobsVersion();
  expect(v2).not.toBe(v1);
  const [due] = await scheduledRuns(t, `${J}signalDue`, "pending");
  expect(due.scheduledTime).toBe(T0 + 5000);
  await advance(t, 4999);
  expect(await jobsVersion()).toBe(v2);
  await advance(t, 1);
  const v3 = await jobsVersion();
  expect(v3).not.toBe(v2);
  // Only signalled: the job is as the fail left it, and claiming it moves nothing.
  expect(await get(j1)).toMatchObject({ status: "queued", attempts: 1, notBefore: T0 + 5000 });
  expect(await claim([a])).toMatchObject([{ id: j1, attempts: 1 }]);
  expect(await jobsVersion()).toBe(v3);
});

test("a retry that is due already, or a fail that does not queue, schedules no signal", async () => {
  const a = await createAgent();
  const j1 = await enqueue(a, "one");
  let [{ claimToken }] = await claim([a]);
  await mutation("fail", { id: j1, claimToken, error: "e", retryAt: T0, maxAttempts: 3 });
  [{ claimToken }] = await claim([a]);
  await mutation("fail", { id: j1, claimToken, error: "e", retryAt: T0 + 5000, maxAttempts: 2 });
  expect(await get(j1)).toMatchObject({ status: "dead" });
  expect(await scheduledRuns(t, `${J}signalDue`)).toEqual([]);
});

test("the jobs version moves when a claim's lock expires unrenewed; the job stays running", async () => {
  const a = await createAgent();
  const j1 = await enqueue(a, "one");
  await claim([a], { lockMs: 1000 });
  const v1 = await jobsVersion();
  await advance(t, 999);
  expect(await jobsVersion()).toBe(v1);
  await advance(t, 1);
  const v2 = await jobsVersion();
  expect(v2).not.toBe(v1);
  expect(await get(j1)).toMatchObject({ status: "running", attempts: 0, lockedUntil: T0 + 1000 });
  // The claim the signal asks for puts it back (one more move) and takes it again.
  expect(await claim([a], { lockMs: 1000 })).toMatchObject([{ id: j1, attempts: 1 }]);
  expect(await jobsVersion()).not.toBe(v2);
});

test("after a renewal the jobs version does not move at the old lockedUntil, only at the new", async () => {
  const a = await createAgent();
  const j1 = await enqueue(a, "one");
  const [{ claimToken }] = await claim([a], { lockMs: 1000 });
  await advance(t, 500);
  expect(await mutation("renew", { id: j1, claimToken, lockMs: 1000 })).toEqual({
    lockedUntil: T0 + 1500,
  });
  const v1 = await jobsVersion();
  await advance(t, 500);
  // The claim's run came at T0 + 1000 and found the lock moved on.
  expect(await scheduledRuns(t, `${J}signalLockExpired`, "success")).toHaveLength(1);
  expect(await jobsVersion()).toBe(v1);
  await advance(t, 499);
  expect(await jobsVersion()).toBe(v1);
  await advance(t, 1);
  expect(await jobsVersion()).not.toBe(v1);
  expect(await scheduledRuns(t, `${J}signalLockExpired`, "success")).toHaveLength(2);
});

test("a job finished or given back before its lock expired moves no version at the lock's end", async () => {
  const a = await createAgent();
  const j1 = await enqueue(a, "one");
  const j2 = await enqueue(a, "two");
  const j3 = await enqueue(a, "three");
  let [{ claimToken }] = await claim([a], { lockMs: 1000 });
  await complete(j1, claimToken, "done");
  [{ claimToken }] = await claim([a], { lockMs: 1000 });
  await mutation("fail", { id: j2, claimToken, error: "refused", maxAttempts: 3 });
  [{ claimToken }] = await claim([a], { lockMs: 1000 });
  await mutation("release", { id: j3, claimToken });
  const v1 = await jobsVersion();
  expect(await scheduledRuns(t, `${J}signalLockExpired`, "pending")).toHaveLength(3);
  await t.finishAllScheduledFunctions(vi.runAllTimers);
  expect(await scheduledRuns(t, `${J}signalLockExpired`, "success")).toHaveLength(3);
  expect(await jobsVersion()).toBe(v1);
});

test("the scheduled signals are only guards: a stale or early one moves nothing", async () => {
  const a = await createAgent();
  const j1 = await enqueue(a, "one");
  const [{ claimToken }] = await claim([a], { lockMs: 1000 });
  const v1 = await jobsVersion();
  const signalLockExpired = makeFunctionReference<"mutation">(`${J}signalLockExpired`);
  const signalDue = makeFunctionReference<"mutation">(`${J}signalDue`);
  vi.setSystemTime(T0 + 1000);
  await t.mutation(signalLockExpired, { id: j1, claimToken: "other", lockedUntil: T0 + 1000 });
  await t.mutation(signalLockExpired, { id: j1, claimToken, lockedUntil: T0 + 900 });
  await t.mutation(signalDue, { id: j1, notBefore: T0 });
  expect(await jobsVersion()).toBe(v1);
  vi.setSystemTime(T0 + 999);
  await t.mutation(signalLockExpired, { id: j1, claimToken, lockedUntil: T0 + 1000 });
  expect(await jobsVersion()).toBe(v1);
  await mutation("fail", { id: j1, claimToken, error: "e", retryAt: T0 + 5000, maxAttempts: 3 });
  const v2 = await jobsVersion();
  await t.mutation(signalDue, { id: j1, notBefore: T0 + 4000 });
  await t.mutation(signalDue, { id: j1, notBefore: T0 + 5000 }); // not due yet
  expect(await jobsVersion()).toBe(v2);
});

test("release puts a claim back at once, also after its lock expired, and clears the worker", async () => {
  const a = await createAgent();
  const j1 = await enqueue(a, "one");
  const j2 = await enqueue(a, "two");
  const [{ claimToken }] = await claim([a], { lockMs: 1000 });
  vi.setSystemTime(T0 + 5000);
  expect(await mutation("release", { id: j1, claimToken })).toEqual({ released: true });
  expect(await get(j1)).toMatchObject({
    status: "queued",
    attempts: 0,
    notBefore: T0 + 5000,
    lockedUntil: null,
    workerId: null,
    error: null,
  });
  const rows = await t.run((ctx) => ctx.db.query("jobs").collect());
  expect(rows[0].claimToken).toBeUndefined();
  // Still first in its agent's queue.
  expect(await claim([a])).toMatchObject([{ id: j1, attempts: 0 }]);
  expect(await get(j2)).toMatchObject({ status: "queued" });
});

test("release of an id that is no job's, or of a removed job, is false", async () => {
  const a = await createAgent();
  const j1 = await enqueue(a, "one");
  const [{ claimToken }] = await claim([a]);
  await t.run((ctx) => ctx.db.delete(ctx.db.normalizeId("jobs", j1)!));
  for (const id of [j1, "not-an-id", a]) {
    expect((await mutation("release", { id, claimToken })) as Release).toEqual({
      released: false,
    });
  }
});

test("a wake-up job that ended, however it ended, lets the next one be queued", async () => {
  const a = await createAgent();
  const w1 = await enqueue(a, "wake", { kind: "wakeup" });
  let [{ claimToken }] = await claim([a], { lockMs: 1000, maxAttempts: 1 });
  expect(await enqueue(a, "wake", { kind: "wakeup" })).toBe(w1);
  vi.setSystemTime(T0 + 1000);
  expect(await claim([a], { maxAttempts: 1 })).toEqual([]); // its lock expired: dead
  expect(await get(w1)).toMatchObject({ status: "dead" });
  const w2 = await enqueue(a, "wake", { kind: "wakeup" });
  expect(w2).not.toBe(w1);
  [{ claimToken }] = await claim([a]);
  await mutation("fail", { id: w2, claimToken, error: "refused", maxAttempts: 3 });
  const w3 = await enqueue(a, "wake", { kind: "wakeup" });
  expect(w3).not.toBe(w2);
  const stored = await t.run((ctx) => ctx.db.query("jobs").collect());
  expect(stored.map((row) => row.kind)).toEqual(["wakeup", "wakeup", "wakeup"]);
});

test("a job stored before kinds existed reads as a task and never counts as a pending wake-up", async () => {
  const a = await createAgent();
  const now = Date.now();
  await t.run(async (ctx) => {
    await ctx.db.insert("jobs", {
      agentId: ctx.db.normalizeId("agents", a)!,
      input: "old",
      status: "queued",
      attempts: 0,
      notBefore: now,
      createdAt: now,
      updatedAt: now,
    });
  });
  expect(await pageRows(query("list", {}))).toMatchObject([{ kind: "task", input: "old" }]);
  const w1 = await enqueue(a, "wake", { kind: "wakeup" });
  expect(await pageRows(query("list", {}))).toHaveLength(2);
  expect(await enqueue(a, "wake", { kind: "wakeup" })).toBe(w1);
});

test("a direct conversation queues no reply; turns are stored with their session", async () => {
  const a = await createAgent();
  const conversation = { channel: "direct", id: "cli-1" };
  const j1 = await enqueue(a, "one", { conversation });
  const [{ claimToken }] = await claim([a]);
  expect(await complete(j1, claimToken, "reply", "s-a")).toEqual({
    status: "done",
    replyId: null,
  });
  expect(await t.run((ctx) => ctx.db.query("whatsappOutbound").collect())).toEqual([]);
  const turns = await t.run((ctx) => ctx.db.query("turns").collect());
  expect(turns).toMatchObject([
    { conversationKey: "direct:cli-1", sessionKey: "s-a", role: "user" },
    { conversationKey: "direct:cli-1", sessionKey: "s-a", role: "assistant" },
  ]);
  expect(await history(conversation, "s-a")).toHaveLength(2);
  expect(await history(conversation, SESSION)).toEqual([]);
});

test("turns stored before sessions belong to no session's history", async () => {
  const a = await createAgent();
  const j1 = await enqueue(a, "one", { conversation: CONV });
  await t.run(async (ctx) => {
    const jobId = ctx.db.normalizeId("jobs", j1)!;
    const conversationKey = "whatsapp:acct:15550000001";
    await ctx.db.insert("turns", { conversationKey, jobId, role: "user", content: "x", at: 1 });
  });
  expect(await history(CONV)).toEqual([]);
});

test("removing an agent removes the claim tokens of its running jobs", async () => {
  const a = await createAgent();
  await enqueue(a, "one");
  await claim([a]);
  await call(t, "mutation", "service/agents:remove", { serviceKey, agentId: a });
  const rows = await t.run((ctx) => ctx.db.query("jobs").collect());
  expect(rows).toMatchObject([{ status: "failed", error: AGENT_REMOVED }]);
  expect(rows[0].claimToken).toBeUndefined();
  expect(rows[0].lockedUntil).toBeUndefined();
});

test("bad kinds, conversations and session keys name the field", async () => {
  const a = await createAgent();
  const cases: [Promise<unknown>, RegExp][] = [
    [
      mutation("enqueue", { agentId: a, input: "x", kind: "urgent" }),
      /^kind must be one of task, wakeup, got "urgent"$/,
    ],
    [
      mutation("enqueue", { agentId: a, input: "x", conversation: "cli" }),
      /^conversation must be an object /,
    ],
    [
      mutation("enqueue", { agentId: a, input: "x", conversation: { ...CONV, channel: "sms" } }),
      /^conversation\.channel must be one of whatsapp, direct, got "sms"$/,
    ],
    [
      mutation("enqueue", {
        agentId: a,
        input: "x",
        conversation: { channel: "direct", id: "a\nb" },
      }),
      /^conversation\.id must be a string of 1 to 200 characters/,
    ],
    [
      mutation("enqueue", {
        agentId: a,
        input: "x",
        conversation: { channel: "direct", id: "x", contact: "1" },
      }),
      /^conversation must be an object \{channel, id\}, got /,
    ],
    [
      query("history", { conversation: CONV, limit: 1 }),
      /^sessionKey must be a string of 1 to 200 /,
    ],
  ];
  for (const [promise, message] of cases) {
    const error = await errorOf(promise);
    expect(error.code).toBe("INVALID_ARGUMENT");
    expect(error.message).toMatch(message);
  }
});
