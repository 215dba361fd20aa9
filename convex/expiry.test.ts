/**
 * Time on the backend, with fake timers: presence goes stale 3 heartbeat intervals
 * after the last beat (in reads at once, in the stored documents when the scheduled
 * sweep runs), beats ahead of the clock are refused, and worker registrations expire
 * through their scheduled `expire` unless renewed. The vectors cannot move the clock.
 */
import { makeFunctionReference } from "convex/server";
import { afterEach, beforeEach, expect, test, vi } from "vitest";
import type { Doc } from "./functions/_generated/dataModel";
import { SWEEP_BATCH } from "./functions/lib/model";
import { advance, call, newBackend, pageRows, scheduledRuns, type Backend } from "./testing";

const serviceKey = "contract-secret";
const T0 = 1_700_000_000_000;
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

type Presence = { agentId: string; status: string; lastHeartbeatAt: number | null };

async function createAgent(heartbeatIntervalMs: number): Promise<string> {
  const agent = (await call(t, "mutation", "service/agents:create", {
    serviceKey,
    name: "a",
    heartbeatIntervalMs,
  })) as { id: string };
  return agent.id;
}

function beat(agentId: string, atMs: number): Promise<unknown> {
  const beats = [{ agentId, atMs }];
  return call(t, "mutation", "service/presence:recordHeartbeats", { serviceKey, beats });
}

async function listPresence(): Promise<Presence[]> {
  return pageRows<Presence>(call(t, "query", "service/presence:list", { serviceKey }));
}

/** Every agent's presence, page by page (more than one page of agents). */
async function everyPresence(): Promise<Presence[]> {
  const rows: Presence[] = [];
  for (let cursor: string | null = null; ; ) {
    const args = { serviceKey, cursor };
    const answer = (await call(t, "query", "service/presence:list", args)) as {
      page: Presence[];
      continueCursor: string;
      isDone: boolean;
    };
    rows.push(...answer.page);
    if (answer.isDone) return rows;
    cursor = answer.continueCursor;
  }
}

function storedPresence(): Promise<Doc<"presence">[]> {
  return t.run((ctx) => ctx.db.query("presence").collect());
}

function version(): Promise<unknown> {
  return call(t, "query", "service/agents:version", { serviceKey });
}

test("an agent goes offline 3 intervals after its last beat: in reads, then in storage", async () => {
  const a = await createAgent(1000);
  expect(await beat(a, T0)).toEqual({ refused: [] });
  expect(await listPresence()).toEqual([{ agentId: a, status: "online", lastHeartbeatAt: T0 }]);
  const [pending] = await scheduledRuns(t, "service/presence:sweep", "pending");
  expect(pending.scheduledTime).toBe(T0 + 3000);

  // The clock passes staleAt before the sweep runs: reads already say offline.
  vi.setSystemTime(T0 + 2999);
  expect((await listPresence())[0].status).toBe("online");
  vi.setSystemTime(T0 + 3000);
  expect(await listPresence()).toEqual([{ agentId: a, status: "offline", lastHeartbeatAt: T0 }]);
  const rows = await call(t, "action", "service/actions:listAgents", { serviceKey });
  expect((rows as Presence[])[0].status).toBe("offline");
  expect((await storedPresence())[0].status).toBe("online");

  // The sweep sets the document offline, keeps lastHeartbeatAt, and schedules nothing.
  await t.finishAllScheduledFunctions(vi.runAllTimers);
  const [row] = await storedPresence();
  expect(row).toMatchObject({ status: "offline", lastHeartbeatAt: T0 });
  expect(await scheduledRuns(t, "service/presence:sweep", "pending")).toEqual([]);
  expect(await scheduledRuns(t, "service/presence:sweep", "success")).toHaveLength(1);
  expect(await t.run((ctx) => ctx.db.query("sweeps").collect())).toEqual([]);
});

test("a beat keeps the agent online; the sweep reschedules itself at the next staleAt", async () => {
  const a = await createAgent(1000);
  await beat(a, T0);
  await advance(t, 2000);
  await beat(a, T0 + 2000);
  // The pending sweep (T0 + 3000) is early enough: it is kept, runs, and finds nothing stale.
  await advance(t, 1000);
  expect((await storedPresence())[0].status).toBe("online");
  const [next] = await scheduledRuns(t, "service/presence:sweep", "pending");
  expect(next.scheduledTime).toBe(T0 + 5000);
  await advance(t, 2000);
  expect((await storedPresence())[0].status).toBe("offline");
  expect(await scheduledRuns(t, "service/presence:sweep", "pending")).toEqual([]);
});

test("no sweep is scheduled while no agent is online", async () => {
  const a = await createAgent(1000);
  expect(await scheduledRuns(t, "service/presence:sweep", "pending")).toEqual([]);
  await call(t, "mutation", "service/presence:markOffline", { serviceKey, agentIds: [a] });
  await beat("no-such-agent", T0);
  expect(await scheduledRuns(t, "service/presence:sweep")).toEqual([]);
  // A beat that is already stale is swept no sooner than a second from now.
  await beat(a, 10);
  const [pending] = await scheduledRuns(t, "service/presence:sweep", "pending");
  expect(pending.scheduledTime).toBe(T0 + 1000);
  await t.finishAllScheduledFunctions(vi.runAllTimers);
  expect((await storedPresence())[0].status).toBe("offline");
  expect(await scheduledRuns(t, "service/presence:sweep", "pending")).toEqual([]);
});

test("one sweep is pending, replaced only by an earlier one", async () => {
  const slow = await createAgent(10_000);
  const fast = await createAgent(1000);
  await beat(slow, T0);
  const [first] = await scheduledRuns(t, "service/presence:sweep", "pending");
  expect(first.scheduledTime).toBe(T0 + 30_000);
  await beat(fast, T0);
  expect(await scheduledRuns(t, "service/presence:sweep", "canceled")).toHaveLength(1);
  const [second] = await scheduledRuns(t, "service/presence:sweep", "pending");
  expect(second.scheduledTime).toBe(T0 + 3000);
  await beat(slow, T0);
  expect((await scheduledRuns(t, "service/presence:sweep", "pending")).map((j) => j._id)).toEqual([
    second._id,
  ]);
  // The fast agent expires first; the slow one stays online until its own staleAt.
  await advance(t, 3000);
  const statuses = (await storedPresence()).map((row) => row.status);
  expect(statuses).toEqual(["online", "offline"]);
  const [third] = await scheduledRuns(t, "service/presence:sweep", "pending");
  expect(third.scheduledTime).toBe(T0 + 30_000);
});

test("more stale documents than a batch are swept in several runs", async () => {
  const count = 2 * SWEEP_BATCH + 1;
  await t.run(async (ctx) => {
    for (let i = 0; i < count; i++) {
      const agentId = await ctx.db.insert("agents", {
        name: `a${i}`,
        sessionKey: `s${i}`,
        heartbeatIntervalMs: 1000,
        updatedAt: T0,
      });
      // The last one predates `staleAt`: it counts as stale too.
      const staleAt = i === count - 1 ? undefined : T0 - 1;
      await ctx.db.insert("presence", { agentId, status: "online", lastHeartbeatAt: 1, staleAt });
    }
  });
  const read = await everyPresence();
  expect(read).toHaveLength(count);
  expect(read.every((p) => p.status === "offline")).toBe(true);
  await t.mutation(makeFunctionReference<"mutation">("service/presence:sweep"), {});
  await t.finishAllScheduledFunctions(vi.runAllTimers);
  expect((await storedPresence()).filter((row) => row.status === "online")).toEqual([]);
  // The first run by hand, then one more full batch, then the rest.
  expect(await scheduledRuns(t, "service/presence:sweep", "success")).toHaveLength(2);
  expect(await scheduledRuns(t, "service/presence:sweep", "pending")).toEqual([]);
});

test("a beat more than 60 s ahead is refused and does not move lastHeartbeatAt", async () => {
  const a = await createAgent(1000);
  await beat(a, T0);
  expect(await beat(a, T0 + 60_001)).toEqual({ refused: [a] });
  expect((await listPresence())[0].lastHeartbeatAt).toBe(T0);
  const args = { serviceKey, agentId: a, atMs: T0 + 60_001 };
  await expect(call(t, "action", "service/actions:updateAgentHeartbeat", args)).rejects.toThrow(
    /ahead/,
  );
  expect((await listPresence())[0].lastHeartbeatAt).toBe(T0);
  // Exactly 60 s ahead is accepted.
  expect(await beat(a, T0 + 60_000)).toEqual({ refused: [] });
  expect((await listPresence())[0]).toMatchObject({
    status: "online",
    lastHeartbeatAt: T0 + 60_000,
  });
});

test("a new heartbeatIntervalMs counts from the next beat", async () => {
  const a = await createAgent(1000);
  await beat(a, T0);
  await call(t, "mutation", "service/agents:update", {
    serviceKey,
    agentId: a,
    heartbeatIntervalMs: 60_000,
  });
  vi.setSystemTime(T0 + 3000);
  expect((await listPresence())[0].status).toBe("offline");
  await beat(a, T0);
  expect((await listPresence())[0].status).toBe("online");
});

function heartbeat(workerId: string, instanceId: string, ttlMs: number) {
  return call(t, "mutation", "service/workers:heartbeat", {
    serviceKey,
    workerId,
    instanceId,
    ttlMs,
  }) as Promise<{ workers: string[]; expiresAt: number }>;
}

function listWorkers(): Promise<unknown> {
  return call(t, "query", "service/workers:list", { serviceKey });
}

function storedWorkers(): Promise<Doc<"workers">[]> {
  return t.run((ctx) => ctx.db.query("workers").collect());
}

test("a registration expires after ttlMs through its scheduled expire", async () => {
  expect(await heartbeat("w1", "i1", 1000)).toEqual({ workers: ["w1"], expiresAt: T0 + 1000 });
  const v1 = await version();
  await advance(t, 999);
  expect(await listWorkers()).toEqual(["w1"]);
  await advance(t, 1);
  expect(await listWorkers()).toEqual([]);
  expect(await storedWorkers()).toEqual([]);
  expect(await version()).not.toBe(v1);
  expect(await scheduledRuns(t, "service/workers:expire", "success")).toHaveLength(1);
});

test("a renewal postpones the expiry and keeps the version", async () => {
  await heartbeat("w1", "i1", 1000);
  const v1 = await version();
  await advance(t, 500);
  expect(await heartbeat("w1", "i1", 1000)).toEqual({ workers: ["w1"], expiresAt: T0 + 1500 });
  expect(await version()).toBe(v1);
  expect(await scheduledRuns(t, "service/workers:expire", "canceled")).toHaveLength(1);
  await advance(t, 600);
  expect(await listWorkers()).toEqual(["w1"]);
  expect(await storedWorkers()).toHaveLength(1);
  expect(await version()).toBe(v1);
  await advance(t, 400);
  expect(await listWorkers()).toEqual([]);
  expect(await version()).not.toBe(v1);
});

test("remove with another instanceId removes nothing; the right one cancels the expiry", async () => {
  await heartbeat("w1", "i1", 1000);
  const v1 = await version();
  const remove = (instanceId: string) =>
    call(t, "mutation", "service/workers:remove", { serviceKey, workerId: "w1", instanceId });
  expect(await remove("i2")).toEqual({ removed: false });
  expect(await listWorkers()).toEqual(["w1"]);
  expect(await version()).toBe(v1);
  expect(await scheduledRuns(t, "service/workers:expire", "pending")).toHaveLength(1);
  expect(await remove("i1")).toEqual({ removed: true });
  expect(await listWorkers()).toEqual([]);
  expect(await version()).not.toBe(v1);
  expect(await scheduledRuns(t, "service/workers:expire", "pending")).toEqual([]);
  expect(await scheduledRuns(t, "service/workers:expire", "canceled")).toHaveLength(1);
});

test("an expired registration is taken over by another instance, moving the version", async () => {
  await heartbeat("w1", "i1", 1000);
  await expect(heartbeat("w1", "i2", 1000)).rejects.toThrow(/another instance/);
  const v1 = await version();
  // Past expiresAt, before the expiry has run: no longer live.
  vi.setSystemTime(T0 + 1000);
  expect(await listWorkers()).toEqual([]);
  expect(await heartbeat("w1", "i2", 2000)).toEqual({ workers: ["w1"], expiresAt: T0 + 3000 });
  expect(await version()).not.toBe(v1);
  const [row] = await storedWorkers();
  expect(row).toMatchObject({ workerId: "w1", instanceId: "i2", expiresAt: T0 + 3000 });
  // The old expiry was canceled: the new registration outlives T0 + 1000.
  await advance(t, 1000);
  expect(await listWorkers()).toEqual(["w1"]);
  await t.finishAllScheduledFunctions(vi.runAllTimers);
  expect(await listWorkers()).toEqual([]);
});

test("expire is only a guard: it deletes nothing that is still live", async () => {
  await heartbeat("w1", "i1", 5000);
  const v1 = await version();
  const expire = makeFunctionReference<"mutation">("service/workers:expire");
  await t.mutation(expire, { workerId: "w1" });
  expect(await listWorkers()).toEqual(["w1"]);
  expect(await version()).toBe(v1);
});
