/** The service key check: fail closed without a secret, and the constant-time compare. */
import { ConvexError } from "convex/values";
import { afterEach, describe, expect, test, vi } from "vitest";
import { constantTimeEqual } from "./functions/lib/serviceKey";
import { call, newBackend, type Kind } from "./testing";

declare const process: { env: Record<string, string | undefined> };

/** Every service function, with arguments that would otherwise be valid. */
const CALLS: [Kind, string, Record<string, unknown>][] = [
  ["query", "service/agents:list", {}],
  ["query", "service/agents:version", {}],
  ["mutation", "service/agents:create", { name: "a", heartbeatIntervalMs: 5000 }],
  ["mutation", "service/agents:update", { agentId: "x", name: "b" }],
  ["mutation", "service/agents:remove", { agentId: "x" }],
  ["query", "service/presence:list", {}],
  ["mutation", "service/presence:recordHeartbeats", { beats: [] }],
  ["mutation", "service/presence:markOffline", { agentIds: [] }],
  ["mutation", "service/workers:heartbeat", { workerId: "w", instanceId: "i", ttlMs: 5000 }],
  ["mutation", "service/workers:remove", { workerId: "w", instanceId: "i" }],
  ["query", "service/workers:list", {}],
  ["action", "service/actions:listAgents", {}],
  ["action", "service/actions:updateAgentHeartbeat", { agentId: "x", atMs: 1 }],
  ["mutation", "service/whatsapp:acquireLease", { accountId: "a", ownerId: "o", ttlMs: 5000 }],
  ["mutation", "service/whatsapp:releaseLease", { accountId: "a", ownerId: "o", epoch: 1 }],
  ["query", "service/whatsapp:getLease", { accountId: "a" }],
  ["mutation", "service/whatsapp:enqueue", { accountId: "a", to: "15550000001", text: "hi" }],
  [
    "mutation",
    "service/whatsapp:claimOutbound",
    { accountId: "a", ownerId: "o", epoch: 1, limit: 1, lockMs: 5000, maxAttempts: 1 },
  ],
  ["mutation", "service/whatsapp:markSent", { id: "x", claimToken: "t", epoch: 1, wamid: "w" }],
  [
    "mutation",
    "service/whatsapp:markFailed",
    { id: "x", claimToken: "t", epoch: 1, error: "e", maxAttempts: 1 },
  ],
  ["mutation", "service/whatsapp:release", { id: "x", claimToken: "t" }],
  ["mutation", "service/whatsapp:recordWebhook", { accountId: "a", messages: [], statuses: [] }],
  ["query", "service/whatsapp:listOutbox", { accountId: "a" }],
  ["query", "service/whatsapp:listInbox", { accountId: "a" }],
  ["mutation", "service/jobs:enqueue", { agentId: "x", input: "hi" }],
  [
    "mutation",
    "service/jobs:claim",
    { agentIds: ["x"], workerId: "w", limit: 1, lockMs: 5000, maxAttempts: 1 },
  ],
  ["mutation", "service/jobs:renew", { id: "x", claimToken: "t", lockMs: 5000 }],
  [
    "mutation",
    "service/jobs:complete",
    {
      id: "x",
      claimToken: "t",
      sessionKey: "s",
      result: "r",
      usage: { inputTokens: 1, outputTokens: 1 },
      steps: 1,
    },
  ],
  ["mutation", "service/jobs:fail", { id: "x", claimToken: "t", error: "e", maxAttempts: 1 }],
  ["mutation", "service/jobs:release", { id: "x", claimToken: "t" }],
  ["query", "service/jobs:version", {}],
  ["query", "service/jobs:get", { id: "x" }],
  ["query", "service/jobs:list", {}],
  [
    "query",
    "service/jobs:history",
    { conversation: { channel: "direct", id: "c" }, sessionKey: "s", limit: 1 },
  ],
];

type CodedError = ConvexError<{ code: string; message: string }>;

/** The error `promise` rejects with; fails the test if it resolves. */
function errorOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    (value) => expect.fail(`expected a rejection, got ${JSON.stringify(value)}`),
    (error: unknown) => error,
  );
}

afterEach(() => {
  vi.unstubAllEnvs();
});

describe("a deployment without AGENT_SECRET refuses every call", () => {
  for (const secret of [undefined, ""]) {
    for (const [kind, path, args] of CALLS) {
      test(`${path} (AGENT_SECRET ${secret === undefined ? "unset" : "empty"})`, async () => {
        vi.stubEnv("AGENT_SECRET", secret);
        expect(process.env.AGENT_SECRET).toBe(secret);
        const t = newBackend();
        for (const serviceKey of ["contract-secret", "", undefined]) {
          const error = await errorOf(call(t, kind, path, { ...args, serviceKey }));
          expect(error).toBeInstanceOf(ConvexError);
          expect((error as CodedError).data.code).toBe("UNAUTHORIZED");
        }
      });
    }
  }
});

test("control: with the secret set, the right key gets past the check", async () => {
  vi.stubEnv("AGENT_SECRET", "contract-secret");
  const t = newBackend();
  for (const [kind, path, args] of CALLS) {
    const outcome = await call(t, kind, path, { ...args, serviceKey: "contract-secret" }).catch(
      (error: unknown) => error,
    );
    const code = outcome instanceof ConvexError ? (outcome as CodedError).data.code : undefined;
    expect(code, path).not.toBe("UNAUTHORIZED");
  }
});

test("error messages never contain the key or the secret", async () => {
  vi.stubEnv("AGENT_SECRET", "s3cret-value");
  const t = newBackend();
  const error = (await errorOf(
    call(t, "query", "service/agents:list", { serviceKey: "wrong-key-value" }),
  )) as CodedError;
  expect(error.data.code).toBe("UNAUTHORIZED");
  expect(JSON.stringify(error.data)).not.toMatch(/s3cret-value|wrong-key-value/);
  expect(error.message).not.toMatch(/s3cret-value|wrong-key-value/);
});

describe("constantTimeEqual", () => {
  test("equal strings", () => {
    expect(constantTimeEqual("", "")).toBe(true);
    expect(constantTimeEqual("contract-secret", "contract-secret")).toBe(true);
    expect(constantTimeEqual("clé-🔑", "clé-🔑")).toBe(true);
  });
  test("different strings of the same length", () => {
    expect(constantTimeEqual("contract-secret", "contract-secreT")).toBe(false);
    expect(constantTimeEqual("contract-secret", "Contract-secret")).toBe(false);
    expect(constantTimeEqual("abc", "abd")).toBe(false);
  });
  test("prefixes and different lengths", () => {
    expect(constantTimeEqual("secret", "secret-longer")).toBe(false);
    expect(constantTimeEqual("secret-longer", "secret")).toBe(false);
    expect(constantTimeEqual("", "x")).toBe(false);
    expect(constantTimeEqual("x", "")).toBe(false);
    // A NUL byte past the shorter string must not match "nothing".
    expect(constantTimeEqual("a", "a\u0000")).toBe(false);
  });
  test("compares UTF-8 bytes, not UTF-16 code units or normalized text", () => {
    expect(constantTimeEqual("é", "e\u0301")).toBe(false);
    expect(constantTimeEqual("\u00ff", "\u01ff")).toBe(false);
    expect(constantTimeEqual("🔑", "🔒")).toBe(false);
  });
});
