/**
 * Argument checks for the service functions. Public functions accept any arguments
 * (`args: v.any()`), because a failing Convex validator would surface as an error
 * without a code; they check the service key first and then their arguments here,
 * failing with `INVALID_ARGUMENT` and a message naming the field and the value.
 */
import { contractError } from "./errors";
import { requireServiceKey } from "./serviceKey";

/** Longest heartbeat interval: one day. */
export const MAX_HEARTBEAT_INTERVAL_MS = 86_400_000;

/** One heartbeat: the agent was alive at `atMs` (epoch milliseconds). */
export type Beat = { agentId: string; atMs: number };

/** Render a value for an error message: JSON, shortened; never throws. */
function show(value: unknown): string {
  if (value === undefined) return "nothing";
  if (typeof value === "bigint") return `${value}n`;
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function invalid(field: string, expected: string, value: unknown): never {
  throw contractError("INVALID_ARGUMENT", `${field} must be ${expected}, got ${show(value)}`);
}

/**
 * Check the service key, then that `args` has no keys besides `serviceKey` and
 * `allowed`. Returns `args` for destructuring.
 */
export function serviceArgs(args: unknown, allowed: string[]): Record<string, unknown> {
  const record = (args ?? {}) as Record<string, unknown>;
  requireServiceKey(record.serviceKey);
  for (const key of Object.keys(record)) {
    if (key !== "serviceKey" && !allowed.includes(key)) {
      throw contractError("INVALID_ARGUMENT", `unknown argument ${show(key)}`);
    }
  }
  return record;
}

/** A non-empty string (`name`, `sessionKey`). */
export function nonEmptyString(field: string, value: unknown): string {
  if (typeof value !== "string" || value.length === 0) invalid(field, "a non-empty string", value);
  return value;
}

/** A string (an agent id). */
export function string(field: string, value: unknown): string {
  if (typeof value !== "string") invalid(field, "a string", value);
  return value;
}

/** A whole number from 1 to 86400000. */
export function heartbeatIntervalMs(field: string, value: unknown): number {
  if (
    typeof value !== "number" ||
    !Number.isInteger(value) ||
    value < 1 ||
    value > MAX_HEARTBEAT_INTERVAL_MS
  ) {
    invalid(field, `a whole number from 1 to ${MAX_HEARTBEAT_INTERVAL_MS}`, value);
  }
  return value;
}

/** A whole number >= 0 (epoch milliseconds). */
export function epochMs(field: string, value: unknown): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0) {
    invalid(field, "a whole number >= 0", value);
  }
  return value;
}

/** `undefined` (the argument was left out) or what `check` accepts. */
export function optional<T>(
  check: (field: string, value: unknown) => T,
  field: string,
  value: unknown,
): T | undefined {
  return value === undefined ? undefined : check(field, value);
}

/** An array of strings (`agentIds`). */
export function stringArray(field: string, value: unknown): string[] {
  if (!Array.isArray(value)) invalid(field, "an array of strings", value);
  return value.map((item, i) => string(`${field}[${i}]`, item));
}

/** An array of `{agentId: string, atMs: whole number >= 0}` (`beats`). */
export function beats(field: string, value: unknown): Beat[] {
  if (!Array.isArray(value)) invalid(field, "an array of {agentId, atMs}", value);
  return value.map((item, i) => {
    const at = `${field}[${i}]`;
    if (typeof item !== "object" || item === null || Array.isArray(item)) {
      invalid(at, "an object {agentId, atMs}", item);
    }
    const { agentId, atMs, ...rest } = item as Record<string, unknown>;
    const extra = Object.keys(rest);
    if (extra.length > 0) invalid(at, "an object {agentId, atMs}", item);
    return { agentId: string(`${at}.agentId`, agentId), atMs: epochMs(`${at}.atMs`, atMs) };
  });
}
