import { contractError } from "./errors";

/** The part of `process` the Convex runtime provides (no @types/node needed). */
declare const process: { env: Record<string, string | undefined> };

const utf8 = new TextEncoder();

/**
 * Compare two strings in time that depends only on their lengths, never on where
 * they differ: their UTF-8 bytes are XORed over the longer length and the
 * differences accumulated, with no early exit. (Node's `crypto.timingSafeEqual`
 * is not available in the default Convex runtime.)
 */
export function constantTimeEqual(a: string, b: string): boolean {
  const x = utf8.encode(a);
  const y = utf8.encode(b);
  const length = Math.max(x.length, y.length);
  let diff = x.length ^ y.length;
  for (let i = 0; i < length; i++) {
    diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  }
  return diff === 0;
}

/**
 * Check a call's `serviceKey` against the deployment's `AGENT_SECRET`.
 *
 * Throws `UNAUTHORIZED` when the deployment has no secret (or an empty one: fail
 * closed), or when the key is missing, not a string, or wrong. Every service
 * function calls this first, before looking at any other argument. Messages never
 * contain the key or the secret.
 */
export function requireServiceKey(serviceKey: unknown): void {
  const secret = process.env.AGENT_SECRET;
  if (!secret) {
    throw contractError(
      "UNAUTHORIZED",
      "this deployment has no AGENT_SECRET set, so every call is refused",
    );
  }
  if (typeof serviceKey !== "string" || !constantTimeEqual(serviceKey, secret)) {
    throw contractError("UNAUTHORIZED", "missing or wrong serviceKey");
  }
}
