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

/** Longest label (`name`, `sessionKey`, `workerId`, `instanceId`), in characters. */
export const MAX_LABEL_LENGTH = 200;

/** Shortest and longest worker registration lifetime (`ttlMs`). */
export const MIN_TTL_MS = 1_000;
export const MAX_TTL_MS = 600_000;

/** C0 and C1 control characters (and DEL): a newline, a tab or an ESC would forge log lines. */
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
const CONTROL_GLOBAL = new RegExp(CONTROL.source, "g");

/** One heartbeat: the agent was alive at `atMs` (epoch milliseconds). */
export type Beat = { agentId: string; atMs: number };

/**
 * Render a value for an error message: JSON (which escapes C0 controls; C1 controls and
 * DEL are escaped here too), shortened to 80 characters; never throws.
 */
function show(value: unknown): string {
  if (value === undefined) return "nothing";
  if (typeof value === "bigint") return `${value}n`;
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  const escape = (c: string) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`;
  text = text.replace(CONTROL_GLOBAL, escape);
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

/**
 * A label (`name`, `sessionKey`, `workerId`, `instanceId`): a string of 1 to 200
 * characters (Unicode code points, not UTF-16 units) with no control characters
 * (U+0000 to U+001F, U+007F to U+009F).
 */
export function label(field: string, value: unknown): string {
  if (
    typeof value !== "string" ||
    value.length === 0 ||
    // Each code point is 1 or 2 UTF-16 units: count them only when it can matter.
    (value.length > MAX_LABEL_LENGTH && [...value].length > MAX_LABEL_LENGTH) ||
    CONTROL.test(value)
  ) {
    const expected = `a string of 1 to ${MAX_LABEL_LENGTH} characters without control characters`;
    invalid(field, expected, value);
  }
  return value;
}

/** A string (an agent id). */
export function string(field: string, value: unknown): string {
  if (typeof value !== "string") invalid(field, "a string", value);
  return value;
}

/** A whole number from `min` to `max`. */
function wholeNumberIn(field: string, value: unknown, min: number, max: number): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    invalid(field, `a whole number from ${min} to ${max}`, value);
  }
  return value;
}

/** A whole number from 1 to 86400000 (`heartbeatIntervalMs`). */
export function heartbeatIntervalMs(field: string, value: unknown): number {
  return wholeNumberIn(field, value, 1, MAX_HEARTBEAT_INTERVAL_MS);
}

/** A whole number from 1000 to 600000 (`ttlMs`). */
export function ttlMs(field: string, value: unknown): number {
  return wholeNumberIn(field, value, MIN_TTL_MS, MAX_TTL_MS);
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
