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

/** Shortest and longest time between an agent's wake-ups (`wakeupIntervalMs`): 1 s to a day. */
export const MIN_WAKEUP_INTERVAL_MS = 1_000;
export const MAX_WAKEUP_INTERVAL_MS = 86_400_000;

/** Longest agent `instructions` (its system prompt), in characters (Unicode code points). */
export const MAX_INSTRUCTIONS_LENGTH = 16_384;

/** Longest label (`name`, `sessionKey`, `workerId`, `instanceId`), in characters. */
export const MAX_LABEL_LENGTH = 200;

/** Shortest and longest registration, lease and claim lock lifetime (`ttlMs`, `lockMs`). */
export const MIN_TTL_MS = 1_000;
export const MAX_TTL_MS = 600_000;

/** Most messages one claim takes (`limit`) and most attempts per message (`maxAttempts`). */
export const MAX_COUNT = 100;

/** Longest WhatsApp message text, in characters (Unicode code points). */
export const MAX_TEXT_LENGTH = 4096;

/**
 * Most inbound messages, and most statuses, in one `recordWebhook` call: 100 messages of
 * the longest text (16 KiB in UTF-8), each also queued as a job, write about 3.2 MiB,
 * well under Convex's 8 MiB per transaction. A larger delivery takes several calls.
 */
export const MAX_WEBHOOK_ITEMS = 100;

/**
 * Longest job `input` and `result`, and agent `wakeupPrompt` (a wake-up job's input), in
 * characters (Unicode code points).
 */
export const MAX_JOB_TEXT_LENGTH = 32768;

/** Most agent ids in one job claim (`agentIds`). */
export const MAX_CLAIM_AGENTS = 1000;

/**
 * Most beats in one `recordHeartbeats` and agent ids in one `markOffline`: each costs one
 * index range, one small presence document read and at most one write, so a full batch
 * stays far below Convex's 4,096 ranges, 16,384 documents read and 8,192 written.
 */
export const MAX_PRESENCE_BATCH = 1000;

/** Most rows on one page of a list (`numItems`, and its default); see ./pages.ts. */
export const MAX_PAGE_ITEMS = 1000;

/** Most turns one `service/jobs:history` returns (`limit`). */
export const MAX_HISTORY_TURNS = 200;

/** Statuses of a job (`queued` -> `running` -> `done`, `failed` or `dead`). */
export const JOB_STATUSES = ["queued", "running", "done", "failed", "dead"] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];

/** Kinds of job: a `wakeup` job is queued only if its agent has none queued or running. */
export const JOB_KINDS = ["task", "wakeup"] as const;
export type JobKind = (typeof JOB_KINDS)[number];

/** Channels a job's conversation can be on. */
export const CHANNELS = ["whatsapp", "direct"] as const;

/** Statuses of an outbound WhatsApp message (`queued` -> `sending` -> `sent` -> ...). */
export const OUTBOUND_STATUSES = [
  "queued",
  "sending",
  "sent",
  "delivered",
  "read",
  "failed",
] as const;
export type OutboundStatus = (typeof OUTBOUND_STATUSES)[number];

/** Statuses a webhook reports for a sent message. */
export const DELIVERY_STATUSES = ["sent", "delivered", "read", "failed"] as const;
export type DeliveryStatus = (typeof DELIVERY_STATUSES)[number];

/** C0 and C1 control characters (and DEL): a newline, a tab or an ESC would forge log lines. */
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
const CONTROL_GLOBAL = new RegExp(CONTROL.source, "g");

/** A WhatsApp contact (`contact`: digits, no "+") of account `accountId`: replies go to it. */
export type WhatsAppConversation = { channel: "whatsapp"; accountId: string; contact: string };

/** A conversation named by the caller (`id`, a label), with no outbound channel. */
export type DirectConversation = { channel: "direct"; id: string };

/** The conversation a job continues. */
export type Conversation = WhatsAppConversation | DirectConversation;

/** What an agent's jobs run with (null: unset); the wake-up pair is set or unset together. */
export type AgentSettings = {
  instructions: string | null;
  model: string | null;
  wakeupPrompt: string | null;
  wakeupIntervalMs: number | null;
};

/** Tokens a job's turn used (`service/jobs:complete`). */
export type Usage = { inputTokens: number; outputTokens: number };

/** One heartbeat: the agent was alive at `atMs` (epoch milliseconds). */
export type Beat = { agentId: string; atMs: number };

/** One inbound WhatsApp message of a webhook delivery; `timestamp` in epoch ms. */
export type WebhookMessage = { providerId: string; from: string; text: string; timestamp: number };

/** One status of a webhook delivery: `providerId` is the wamid of an outbound message. */
export type WebhookStatus = {
  providerId: string;
  status: DeliveryStatus;
  timestamp: number;
  error?: string;
};

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

/** A check of one argument: its value, or `INVALID_ARGUMENT` naming `field`. */
type Check<T> = (field: string, value: unknown) => T;

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
 * A label (`name`, `sessionKey`, `model`, `workerId`, `instanceId`, `accountId`,
 * `ownerId`, `idempotencyKey`, `claimToken`, `wamid`, a webhook's `providerId` and `from`,
 * a direct conversation's `id`): a string of 1 to 200 characters (Unicode code points, not
 * UTF-16 units) with no control characters (U+0000 to U+001F, U+007F to U+009F).
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

/** A string (an agent id, an `error`). */
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

/** A whole number from 1000 to 86400000 (`wakeupIntervalMs`). */
export function wakeupIntervalMs(field: string, value: unknown): number {
  return wholeNumberIn(field, value, MIN_WAKEUP_INTERVAL_MS, MAX_WAKEUP_INTERVAL_MS);
}

/** A whole number from 1000 to 600000 (`ttlMs`, `lockMs`). */
export function ttlMs(field: string, value: unknown): number {
  return wholeNumberIn(field, value, MIN_TTL_MS, MAX_TTL_MS);
}

/** A whole number from 1 to 100 (`limit`, `maxAttempts`). */
export function count(field: string, value: unknown): number {
  return wholeNumberIn(field, value, 1, MAX_COUNT);
}

/** A whole number from 1 to 200 (the `limit` of `service/jobs:history`). */
export function historyLimit(field: string, value: unknown): number {
  return wholeNumberIn(field, value, 1, MAX_HISTORY_TURNS);
}

/** A whole number from 1 to 1000 (the `numItems` of a list page). */
export function pageSize(field: string, value: unknown): number {
  return wholeNumberIn(field, value, 1, MAX_PAGE_ITEMS);
}

/** A list cursor: null (the first page) or a string, as a page's `continueCursor`. */
export function pageCursor(field: string, value: unknown): string | null {
  if (value !== null && typeof value !== "string") {
    invalid(field, "null or the continueCursor of a page", value);
  }
  return value;
}

/** A whole number >= 1 (a lease `epoch`). */
export function epoch(field: string, value: unknown): number {
  return wholeNumberIn(field, value, 1, Number.MAX_SAFE_INTEGER);
}

/**
 * A phone number (`to`): 7 to 15 ASCII digits with an optional leading "+". Returns the
 * digits, without the "+".
 */
export function phoneNumber(field: string, value: unknown): string {
  const digits = phoneDigits(value);
  if (digits === null) {
    invalid(field, 'a string of 7 to 15 digits with an optional leading "+"', value);
  }
  return digits;
}

/** The digits of a phone number (see `phoneNumber`), or null if `value` is none. */
export function phoneDigits(value: unknown): string | null {
  if (typeof value !== "string" || !/^\+?[0-9]{7,15}$/.test(value)) return null;
  return value.startsWith("+") ? value.slice(1) : value;
}

/**
 * A message text of `min` to `max` (default 4096) characters (Unicode code points); any
 * characters, since a message may have several lines.
 */
export function text(field: string, value: unknown, min = 1, max = MAX_TEXT_LENGTH): string {
  if (
    typeof value !== "string" ||
    value.length < min ||
    (value.length > max && [...value].length > max)
  ) {
    invalid(field, `a string of ${min} to ${max} characters`, value);
  }
  return value;
}

/** A job's `input`: 1 to 32768 characters. */
export function jobInput(field: string, value: unknown): string {
  return text(field, value, 1, MAX_JOB_TEXT_LENGTH);
}

/** A job's `result`: 0 to 32768 characters. */
export function jobResult(field: string, value: unknown): string {
  return text(field, value, 0, MAX_JOB_TEXT_LENGTH);
}

/** An agent's `instructions`: 1 to 16384 characters. */
export function instructions(field: string, value: unknown): string {
  return text(field, value, 1, MAX_INSTRUCTIONS_LENGTH);
}

/** An agent's `wakeupPrompt`: 1 to 32768 characters (it becomes a job's input). */
export function wakeupPrompt(field: string, value: unknown): string {
  return text(field, value, 1, MAX_JOB_TEXT_LENGTH);
}

/** One of `options` (a status). */
export function oneOf<T extends string>(field: string, value: unknown, options: readonly T[]): T {
  if (typeof value !== "string" || !(options as readonly string[]).includes(value)) {
    invalid(field, `one of ${options.join(", ")}`, value);
  }
  return value as T;
}

/** A whole number >= 0 (a count: `steps`, token counts). */
export function wholeNumber(field: string, value: unknown): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0) {
    invalid(field, "a whole number >= 0", value);
  }
  return value;
}

/** A whole number >= 0 (epoch milliseconds). */
export function epochMs(field: string, value: unknown): number {
  return wholeNumber(field, value);
}

/** `undefined` (the argument was left out) or what `check` accepts. */
export function optional<T>(check: Check<T>, field: string, value: unknown): T | undefined {
  return value === undefined ? undefined : check(field, value);
}

/**
 * An agent setting of `service/agents:update`: undefined (unchanged) when left out, null
 * (clear it) for `empty` ("" for a string setting, 0 for a number), else what `check`
 * accepts.
 */
export function changedSetting<T>(
  check: Check<T>,
  field: string,
  value: unknown,
  empty: "" | 0,
): T | null | undefined {
  if (value === undefined) return undefined;
  return value === empty ? null : check(field, value);
}

/**
 * An agent setting of `service/agents:create`: null (unset) when left out, null or
 * `empty`, else what `check` accepts.
 */
export function initialSetting<T>(
  check: Check<T>,
  field: string,
  value: unknown,
  empty: "" | 0,
): T | null {
  return changedSetting(check, field, value ?? empty, empty) ?? null;
}

/**
 * `INVALID_ARGUMENT` unless the agent settings `wakeupPrompt` and `wakeupIntervalMs` are
 * both set or both unset.
 */
export function requireWakeupPair(settings: AgentSettings): void {
  if ((settings.wakeupPrompt === null) !== (settings.wakeupIntervalMs === null)) {
    throw contractError(
      "INVALID_ARGUMENT",
      "wakeupPrompt and wakeupIntervalMs go together: set both, or clear both",
    );
  }
}

/**
 * An array of at most `max` items (default: no limit), each checked by `item` with its
 * field name (`beats[0]`).
 */
function arrayOf<T>(
  field: string,
  value: unknown,
  what: string,
  item: Check<T>,
  max = Infinity,
): T[] {
  if (!Array.isArray(value) || value.length > max) {
    const most = max === Infinity ? "" : ` (at most ${max})`;
    invalid(field, `an array of ${what}${most}`, value);
  }
  return value.map((element, i) => item(`${field}[${i}]`, element));
}

/**
 * An object with the keys `keys` (those ending in "?" may be left out) and no others;
 * each key's value is checked by the caller.
 */
function objectWith(field: string, value: unknown, keys: string[]): Record<string, unknown> {
  const shape = `an object {${keys.join(", ")}}`;
  if (!isRecord(value)) invalid(field, shape, value);
  const names = keys.map((key) => key.replace(/\?$/, ""));
  if (Object.keys(value).some((key) => !names.includes(key))) invalid(field, shape, value);
  return value;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** An array of at most 1000 `{agentId: string, atMs: whole number >= 0}` (`beats`). */
export function beats(field: string, value: unknown): Beat[] {
  const beat = (at: string, item: unknown) => {
    const { agentId, atMs } = objectWith(at, item, ["agentId", "atMs"]);
    return { agentId: string(`${at}.agentId`, agentId), atMs: epochMs(`${at}.atMs`, atMs) };
  };
  return arrayOf(field, value, "{agentId, atMs}", beat, MAX_PRESENCE_BATCH);
}

/** An array of at most 1000 strings (`agentIds` of `markOffline`). */
export function offlineAgentIds(field: string, value: unknown): string[] {
  return arrayOf(field, value, "strings", string, MAX_PRESENCE_BATCH);
}

/** An array of 1 to 1000 strings (`agentIds` of a job claim). */
export function claimAgentIds(field: string, value: unknown): string[] {
  const ids = arrayOf(field, value, "strings", string, MAX_CLAIM_AGENTS);
  if (ids.length === 0) invalid(field, `an array of 1 to ${MAX_CLAIM_AGENTS} strings`, value);
  return ids;
}

/**
 * A job's conversation: `{channel: "whatsapp", accountId: label, contact: 7 to 15 digits,
 * an optional leading "+" dropped}` or `{channel: "direct", id: label}`.
 */
export function conversation(field: string, value: unknown): Conversation {
  if (!isRecord(value)) {
    invalid(
      field,
      'an object {channel: "whatsapp", accountId, contact} or {channel: "direct", id}',
      value,
    );
  }
  const channel = oneOf(`${field}.channel`, value.channel, CHANNELS);
  if (channel === "direct") {
    const c = objectWith(field, value, ["channel", "id"]);
    return { channel, id: label(`${field}.id`, c.id) };
  }
  const c = objectWith(field, value, ["channel", "accountId", "contact"]);
  return {
    channel,
    accountId: label(`${field}.accountId`, c.accountId),
    contact: phoneNumber(`${field}.contact`, c.contact),
  };
}

/** `{inputTokens, outputTokens}`, whole numbers >= 0 (a job's `usage`). */
export function usage(field: string, value: unknown): Usage {
  const u = objectWith(field, value, ["inputTokens", "outputTokens"]);
  return {
    inputTokens: wholeNumber(`${field}.inputTokens`, u.inputTokens),
    outputTokens: wholeNumber(`${field}.outputTokens`, u.outputTokens),
  };
}

/**
 * At most 100 inbound messages `{providerId: label, from: label, text: 0 to 4096
 * characters, timestamp: epoch ms}` (a webhook's `messages`).
 */
export function webhookMessages(field: string, value: unknown): WebhookMessage[] {
  const what = "{providerId, from, text, timestamp}";
  return arrayOf(
    field,
    value,
    what,
    (at, item) => {
      const m = objectWith(at, item, ["providerId", "from", "text", "timestamp"]);
      return {
        providerId: label(`${at}.providerId`, m.providerId),
        from: label(`${at}.from`, m.from),
        text: text(`${at}.text`, m.text, 0),
        timestamp: epochMs(`${at}.timestamp`, m.timestamp),
      };
    },
    MAX_WEBHOOK_ITEMS,
  );
}

/**
 * At most 100 statuses `{providerId: label, status: sent|delivered|read|failed,
 * timestamp: epoch ms, error?: string}` (a webhook's `statuses`).
 */
export function webhookStatuses(field: string, value: unknown): WebhookStatus[] {
  const what = "{providerId, status, timestamp, error?}";
  return arrayOf(
    field,
    value,
    what,
    (at, item) => {
      const s = objectWith(at, item, ["providerId", "status", "timestamp", "error?"]);
      const error = optional(string, `${at}.error`, s.error);
      return {
        providerId: label(`${at}.providerId`, s.providerId),
        status: oneOf(`${at}.status`, s.status, DELIVERY_STATUSES),
        timestamp: epochMs(`${at}.timestamp`, s.timestamp),
        ...(error === undefined ? {} : { error }),
      };
    },
    MAX_WEBHOOK_ITEMS,
  );
}
