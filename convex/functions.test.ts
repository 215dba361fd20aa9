/**
 * What the vectors cannot see through the public API: presence is deleted with its
 * agent, heartbeats never write `agents`, an unset setting is an absent field, a few
 * argument edge cases, and Convex's limits (enforced by ./testing.ts): lists of large
 * agents in pages, full presence batches.
 */
import { ConvexError } from "convex/values";
import { afterEach, beforeEach, expect, test, vi } from "vitest";
import { call, newBackend, type Backend } from "./testing";

const serviceKey = "contract-secret";
let t: Backend;

beforeEach(() => {
  vi.stubEnv("AGENT_SECRET", serviceKey);
  t = newBackend();
});
afterEach(() => {
  vi.unstubAllEnvs();
});

async function createAgent(name: string): Promise<string> {
  const agent = (await call(t, "mutation", "service/agents:create", {
    serviceKey,
    name,
    heartbeatIntervalMs: 5000,
  })) as { id: string };
  return agent.id;
}

async function codeOf(promise: Promise<unknown>): Promise<unknown> {
  const error = await promise.then(
    () => expect.fail("expected a rejection"),
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ConvexError);
  return (error as ConvexError<{ code: string }>).data.code;
}

test("remove deletes the agent's presence document", async () => {
  const a = await createAgent("a");
  await createAgent("b");
  await call(t, "mutation", "service/agents:remove", { serviceKey, agentId: a });
  const presence = await t.run((ctx) => ctx.db.query("presence").collect());
  expect(presence.map((row) => row.agentId)).not.toContain(a);
  expect(presence).toHaveLength(1);
});

test("heartbeats and markOffline never write the agents table", async () => {
  const a = await createAgent("a");
  const before = await t.run((ctx) => ctx.db.query("agents").collect());
  const beats = [{ agentId: a, atMs: 10 }];
  await call(t, "mutation", "service/presence:recordHeartbeats", { serviceKey, beats });
  await call(t, "mutation", "service/presence:markOffline", { serviceKey, agentIds: [a] });
  await call(t, "action", "service/actions:updateAgentHeartbeat", {
    serviceKey,
    agentId: a,
    atMs: 20,
  });
  expect(await t.run((ctx) => ctx.db.query("agents").collect())).toEqual(before);
});

test("a heartbeat for a removed agent (a well-formed id) is ignored", async () => {
  const a = await createAgent("a");
  await call(t, "mutation", "service/agents:remove", { serviceKey, agentId: a });
  const beats = [{ agentId: a, atMs: 10 }];
  await call(t, "mutation", "service/presence:recordHeartbeats", { serviceKey, beats });
  await call(t, "mutation", "service/presence:markOffline", { serviceKey, agentIds: [a] });
  expect(await t.run((ctx) => ctx.db.query("presence").collect())).toEqual([]);
  expect(
    await codeOf(
      call(t, "mutation", "service/agents:update", { serviceKey, agentId: a, name: "x" }),
    ),
  ).toBe("NOT_FOUND");
});

test("unknown arguments, null for optional fields and non-string ids are INVALID_ARGUMENT", async () => {
  const a = await createAgent("a");
  const cases: [string, Record<string, unknown>][] = [
    ["service/agents:create", { name: "x", heartbeatIntervalMs: 5000, colour: "red" }],
    ["service/agents:create", { name: "x", heartbeatIntervalMs: 5000, sessionKey: null }],
    ["service/agents:update", { agentId: a, name: null }],
    ["service/agents:update", { agentId: 7, name: "x" }],
    ["service/agents:update", { name: "x" }],
    ["service/agents:remove", { agentId: null }],
    ["service/presence:recordHeartbeats", { beats: [{ agentId: a, atMs: 1, extra: 1 }] }],
    ["service/presence:recordHeartbeats", { beats: [null] }],
    ["service/presence:markOffline", { agentIds: "all" }],
  ];
  for (const [path, args] of cases) {
    expect(await codeOf(call(t, "mutation", path, { serviceKey, ...args })), path).toBe(
      "INVALID_ARGUMENT",
    );
  }
  expect(await codeOf(call(t, "query", "service/agents:list", { serviceKey, x: 1 }))).toBe(
    "INVALID_ARGUMENT",
  );
});

test("a bad key wins over bad arguments", async () => {
  const args = { serviceKey: "wrong", name: 7, heartbeatIntervalMs: "x", colour: "red" };
  expect(await codeOf(call(t, "mutation", "service/agents:create", args))).toBe("UNAUTHORIZED");
});

test("update without changes still sets updatedAt and moves the version", async () => {
  const a = await createAgent("a");
  const v1 = await call(t, "query", "service/agents:version", { serviceKey });
  await call(t, "mutation", "service/agents:update", { serviceKey, agentId: a });
  expect(await call(t, "query", "service/agents:version", { serviceKey })).not.toBe(v1);
});

test("a failed mutation changes nothing, not even the version", async () => {
  await createAgent("a");
  const v1 = await call(t, "query", "service/agents:version", { serviceKey });
  const args = { serviceKey, name: "x", heartbeatIntervalMs: 0 };
  expect(await codeOf(call(t, "mutation", "service/agents:create", args))).toBe("INVALID_ARGUMENT");
  expect(await call(t, "query", "service/agents:version", { serviceKey })).toBe(v1);
});

test("a bad label's message names the field, is short and has no control characters", async () => {
  const a = await createAgent("a");
  const long = `${"x".repeat(5000)}\n`;
  const worker = { workerId: "w", ttlMs: 5000 };
  const cases: [string, Record<string, unknown>, string][] = [
    ["service/agents:create", { name: long, heartbeatIntervalMs: 5000 }, "name"],
    ["service/agents:update", { agentId: a, sessionKey: "\u009b31m\u0085" }, "sessionKey"],
    ["service/workers:heartbeat", { ...worker, instanceId: "\u001b[2J" }, "instanceId"],
  ];
  for (const [path, args, field] of cases) {
    const error = await call(t, "mutation", path, { serviceKey, ...args }).then(
      () => expect.fail("expected a rejection"),
      (e: unknown) => e as ConvexError<{ code: string; message: string }>,
    );
    expect(error.data.code).toBe("INVALID_ARGUMENT");
    expect(error.data.message).toMatch(new RegExp(`^${field} must be a string of 1 to 200 `));
    expect(error.data.message.length).toBeLessThan(200);
    expect(error.data.message).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
  }
});

test("an unset agent setting is an absent field; a cleared one is deleted", async () => {
  const settings = {
    instructions: "Be brief.",
    model: "m",
    wakeupPrompt: "Anything new?",
    wakeupIntervalMs: 60_000,
  };
  const created = (await call(t, "mutation", "service/agents:create", {
    serviceKey,
    name: "a",
    heartbeatIntervalMs: 5000,
    ...settings,
  })) as { id: string };
  const stored = () => t.run(async (ctx) => (await ctx.db.query("agents").first())!);
  expect(await stored()).toMatchObject(settings);
  const cleared = { instructions: "", model: "", wakeupPrompt: "", wakeupIntervalMs: 0 };
  await call(t, "mutation", "service/agents:update", {
    serviceKey,
    agentId: created.id,
    ...cleared,
  });
  await createAgent("plain");
  for (const agent of await t.run((ctx) => ctx.db.query("agents").collect())) {
    for (const field of Object.keys(settings)) expect(agent, field).not.toHaveProperty(field);
  }
});

test("a setting's message names the field and the range; the wake-up pair says both go together", async () => {
  const a = await createAgent("a");
  const cases: [Record<string, unknown>, RegExp][] = [
    [
      { instructions: "x".repeat(16_385) },
      /^instructions must be a string of 1 to 16384 characters/,
    ],
    [{ wakeupPrompt: 7 }, /^wakeupPrompt must be a string of 1 to 32768 characters, got 7$/],
    [{ wakeupIntervalMs: 999 }, /^wakeupIntervalMs must be a whole number from 1000 to 86400000/],
    [{ model: "gpt\n4" }, /^model must be a string of 1 to 200 characters without control/],
    [{ wakeupPrompt: "Anything new?" }, /^wakeupPrompt and wakeupIntervalMs go together/],
  ];
  for (const [args, message] of cases) {
    const error = await call(t, "mutation", "service/agents:update", {
      serviceKey,
      agentId: a,
      ...args,
    }).then(
      () => expect.fail("expected a rejection"),
      (e: unknown) => e as ConvexError<{ code: string; message: string }>,
    );
    expect(error.data.code).toBe("INVALID_ARGUMENT");
    expect(error.data.message).toMatch(message);
  }
});

/** Every row of a list, page by page; the pages' lengths go to `sizes`. */
async function everyRow(
  path: string,
  rowsOf: (answer: Record<string, unknown>) => unknown[],
  sizes: number[] = [],
): Promise<unknown[]> {
  const rows: unknown[] = [];
  for (let cursor: string | null = null; ; ) {
    const answer = (await call(t, "query", path, { serviceKey, cursor })) as Record<
      string,
      unknown
    >;
    rows.push(...rowsOf(answer));
    sizes.push(rowsOf(answer).length);
    if (answer.isDone) return rows;
    cursor = answer.continueCursor as string;
  }
}

test("large agents are listed in pages cut by bytes, every call within the limits", async () => {
  // About 190 KiB each: the longest instructions and wake-up prompt, 4 UTF-8 bytes a character.
  const large = {
    instructions: "\u{1F600}".repeat(16_384),
    wakeupPrompt: "\u{1F600}".repeat(32_768),
    wakeupIntervalMs: 60_000,
  };
  const ids: string[] = [];
  for (let i = 0; i < 12; i++) {
    const args = { serviceKey, name: `a${i}`, heartbeatIntervalMs: 5000, ...large };
    ids.push(((await call(t, "mutation", "service/agents:create", args)) as { id: string }).id);
  }
  const sizes: number[] = [];
  const agents = await everyRow("service/agents:list", (a) => a.page as unknown[], sizes);
  expect(agents.map((row) => (row as { id: string }).id)).toEqual(ids);
  expect(sizes.length).toBeGreaterThan(2);
  expect(Math.max(...sizes)).toBeLessThan(8);
  const snapshot = await everyRow("service/agents:snapshot", (a) => a.page as unknown[]);
  expect(snapshot).toEqual(agents);
  const presence = await everyRow("service/presence:list", (a) => a.page as unknown[]);
  expect(presence.map((row) => (row as { agentId: string }).agentId)).toEqual(ids);
});

test("a page's numItems is 1 to 1000 and its cursor a string or null", async () => {
  await createAgent("a");
  await createAgent("b");
  for (const bad of [{ numItems: 0 }, { numItems: 1001 }, { numItems: 1.5 }, { cursor: 5 }]) {
    expect(await codeOf(call(t, "query", "service/agents:list", { serviceKey, ...bad }))).toBe(
      "INVALID_ARGUMENT",
    );
  }
  const first = (await call(t, "query", "service/agents:list", { serviceKey, numItems: 1 })) as {
    page: unknown[];
    continueCursor: string;
    isDone: boolean;
  };
  expect([first.page.length, first.isDone]).toEqual([1, false]);
});

test("a presence call takes at most 1000 agents, and a full one stays within the limits", async () => {
  const ids = await t.run(async (ctx) => {
    const inserted = [];
    for (let i = 0; i < 1001; i++) {
      const agentId = await ctx.db.insert("agents", {
        name: `a${i}`,
        sessionKey: `s${i}`,
        heartbeatIntervalMs: 5000,
        updatedAt: 0,
      });
      const presence = { agentId, status: "offline" as const, lastHeartbeatAt: null };
      await ctx.db.insert("presence", { ...presence, heartbeatIntervalMs: 5000 });
      inserted.push(agentId as string);
    }
    return inserted;
  });
  const beats = ids.map((agentId) => ({ agentId, atMs: Date.now() }));
  const record = (b: typeof beats) =>
    call(t, "mutation", "service/presence:recordHeartbeats", { serviceKey, beats: b });
  const offline = (agentIds: string[]) =>
    call(t, "mutation", "service/presence:markOffline", { serviceKey, agentIds });
  expect(await codeOf(record(beats))).toBe("INVALID_ARGUMENT");
  expect(await codeOf(offline(ids))).toBe("INVALID_ARGUMENT");
  expect(await record(beats.slice(0, 1000))).toEqual({ refused: [] });
  expect(await offline(ids.slice(0, 1000))).toBeNull();
}, 30_000); // convex-test scans a table for each index read: a full batch takes seconds

test("presence carries the agent's interval: an older document gets it at the next beat", async () => {
  const a = await createAgent("a");
  const stored = () => t.run(async (ctx) => (await ctx.db.query("presence").first())!);
  expect((await stored()).heartbeatIntervalMs).toBe(5000);
  await call(t, "mutation", "service/agents:update", {
    serviceKey,
    agentId: a,
    heartbeatIntervalMs: 7000,
  });
  expect((await stored()).heartbeatIntervalMs).toBe(7000);
  const { _id } = await stored();
  await t.run((ctx) => ctx.db.patch(_id, { heartbeatIntervalMs: undefined }));
  const beats = [{ agentId: a, atMs: 10 }];
  await call(t, "mutation", "service/presence:recordHeartbeats", { serviceKey, beats });
  expect(await stored()).toMatchObject({ heartbeatIntervalMs: 7000, staleAt: 10 + 3 * 7000 });
});
