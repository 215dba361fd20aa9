/**
 * Runs every scenario in ../contract/*.json against the functions in ./functions,
 * with convex-test, following the vector format of ../contract/README.md.
 */
import { ConvexError } from "convex/values";
import { afterEach, describe, expect, test, vi } from "vitest";
import { call, newBackend, type Kind } from "./testing";

const SECRET = "contract-secret";
const CODES = ["UNAUTHORIZED", "NOT_FOUND", "INVALID_ARGUMENT", "CONFLICT", "FENCED"];
const KINDS: Kind[] = ["query", "mutation", "action"];

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Step = {
  kind: Kind;
  path: string;
  args: Record<string, Json>;
  expect?: Json;
  error?: string;
};
type Scenario = { name: string; steps: Step[] };
type Saved = Map<string, unknown>;

const scenarios = import.meta.glob<Scenario>("../contract/*.json", {
  eager: true,
  import: "default",
});

const SAVED_NAME = /^\$(\w+)$/;
const INTERPOLATION = /\$\{(\w+)\}/g;

/** A mistake in a vector file itself (not a backend mismatch). */
class VectorError extends Error {}

function savedValue(saved: Saved, name: string): unknown {
  if (!saved.has(name)) throw new VectorError(`"$${name}" is used before it is saved`);
  return saved.get(name);
}

function interpolate(text: string, saved: Saved): string {
  return text.replace(INTERPOLATION, (_, name: string) => String(savedValue(saved, name)));
}

/** Substitute `$secret`, `$NAME` and `${NAME}` in `args`, and leave out `"$omit"` keys. */
function substitute(value: Json, saved: Saved): unknown {
  if (typeof value === "string") {
    if (value === "$secret") return SECRET;
    if (value === "$omit") throw new VectorError(`"$omit" is only allowed as an object value`);
    const name = SAVED_NAME.exec(value)?.[1];
    return name !== undefined ? savedValue(saved, name) : interpolate(value, saved);
  }
  if (Array.isArray(value)) return value.map((item) => substitute(item, saved));
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(
      Object.entries(value)
        .filter(([, item]) => item !== "$omit")
        .map(([key, item]) => [key, substitute(item, saved)]),
    );
  }
  return value;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** Structural equality of two results (numbers by value). */
function same(a: unknown, b: unknown): boolean {
  if (Array.isArray(a) || Array.isArray(b)) {
    return (
      Array.isArray(a) &&
      Array.isArray(b) &&
      a.length === b.length &&
      a.every((x, i) => same(x, b[i]))
    );
  }
  if (isObject(a) || isObject(b)) {
    if (!isObject(a) || !isObject(b)) return false;
    const keys = Object.keys(a);
    return keys.length === Object.keys(b).length && keys.every((k) => k in b && same(a[k], b[k]));
  }
  return a === b;
}

/** Apply every `$save:NAME` in `expected` first, so a step may use what it saves. */
function collectSaves(expected: Json, actual: unknown, saved: Saved): void {
  if (typeof expected === "string" && expected.startsWith("$save:")) {
    saved.set(expected.slice("$save:".length), actual);
  } else if (Array.isArray(expected) && Array.isArray(actual)) {
    expected.forEach((item, i) => collectSaves(item, actual[i], saved));
  } else if (isObject(expected) && isObject(actual)) {
    for (const [key, item] of Object.entries(expected)) collectSaves(item, actual[key], saved);
  }
}

function show(value: unknown): string {
  return value === undefined ? "(nothing)" : JSON.stringify(value);
}

/** Every place where `actual` does not match `expected`, as "at PATH: ..." lines. */
function mismatches(expected: Json, actual: unknown, saved: Saved, path = "result"): string[] {
  const differ = (what: string) => [`at ${path}: expected ${what}, got ${show(actual)}`];
  if (typeof expected === "string") {
    if (expected === "$any" || expected.startsWith("$save:")) return [];
    if (expected === "$number") return typeof actual === "number" ? [] : differ("a number");
    if (expected === "$string") return typeof actual === "string" ? [] : differ("a string");
    if (expected.startsWith("$not:")) {
      const name = expected.slice("$not:".length);
      const other = savedValue(saved, name);
      return same(actual, other) ? differ(`anything but $${name} = ${show(other)}`) : [];
    }
    const name = SAVED_NAME.exec(expected)?.[1];
    if (name !== undefined) {
      const value = savedValue(saved, name);
      return same(actual, value) ? [] : differ(`$${name} = ${show(value)}`);
    }
    const text = interpolate(expected, saved);
    return actual === text ? [] : differ(show(text));
  }
  if (Array.isArray(expected)) {
    if (!Array.isArray(actual)) return differ(`an array of ${expected.length}`);
    if (actual.length !== expected.length) return differ(`an array of ${expected.length}`);
    return expected.flatMap((item, i) => mismatches(item, actual[i], saved, `${path}[${i}]`));
  }
  if (isObject(expected)) {
    if (!isObject(actual)) return differ("an object");
    const missing = Object.keys(expected).filter((k) => !(k in actual));
    const extra = Object.keys(actual).filter((k) => !(k in expected));
    return [
      ...missing.map((k) => `at ${path}.${k}: expected ${show(expected[k])}, got (missing)`),
      ...extra.map((k) => `at ${path}.${k}: unexpected key, got ${show(actual[k])}`),
      ...Object.keys(expected)
        .filter((k) => k in actual)
        .flatMap((k) => mismatches(expected[k], actual[k], saved, `${path}.${k}`)),
    ];
  }
  return actual === expected ? [] : differ(show(expected));
}

/** Check what a vector file can get wrong by itself. */
function checkStep(step: Step): void {
  if (!KINDS.includes(step.kind)) throw new VectorError(`unknown kind ${show(step.kind)}`);
  if (typeof step.path !== "string" || !step.path.includes(":")) {
    throw new VectorError(`bad path ${show(step.path)}`);
  }
  if (!isObject(step.args)) throw new VectorError(`args must be an object`);
  if ("expect" in step === "error" in step) {
    throw new VectorError(`a step needs exactly one of "expect" and "error"`);
  }
  if ("error" in step && !CODES.includes(step.error!)) {
    throw new VectorError(`unknown error code ${show(step.error)}`);
  }
}

async function runScenario(file: string, scenario: Scenario): Promise<void> {
  const t = newBackend();
  const saved: Saved = new Map();
  for (const [index, step] of scenario.steps.entries()) {
    const where = `${file} step ${index} (${step.kind} ${step.path})`;
    let outcome: { ok: true; value: unknown } | { ok: false; error: unknown };
    try {
      checkStep(step);
      const args = substitute(step.args, saved) as Record<string, unknown>;
      outcome = await call(t, step.kind, step.path, args).then(
        (value) => ({ ok: true as const, value }),
        (error) => ({ ok: false as const, error }),
      );
    } catch (error) {
      throw new Error(`${where}: ${String(error)}`);
    }
    const failure = (lines: string[]) =>
      new Error([`${where}: ${scenario.name}`, ...lines.map((l) => `  ${l}`)].join("\n"));
    const errorText = (error: unknown) =>
      error instanceof ConvexError
        ? `ConvexError ${show(error.data)}`
        : `${(error as Error)?.name ?? "error"} (no code): ${(error as Error)?.message ?? error}`;

    if (step.error !== undefined) {
      if (outcome.ok) {
        throw failure([
          `expected error ${step.error}, but the call returned ${show(outcome.value)}`,
        ]);
      }
      const data = outcome.error instanceof ConvexError ? outcome.error.data : undefined;
      if (!isObject(data) || data.code !== step.error || typeof data.message !== "string") {
        throw failure([`expected error ${step.error}, got ${errorText(outcome.error)}`]);
      }
    } else {
      if (!outcome.ok) {
        throw failure([
          `expected ${show(step.expect)}`,
          `but the call failed: ${errorText(outcome.error)}`,
        ]);
      }
      try {
        collectSaves(step.expect!, outcome.value, saved);
        const lines = mismatches(step.expect!, outcome.value, saved);
        if (lines.length > 0) {
          throw failure([
            ...lines,
            `expected: ${show(step.expect)}`,
            `actual:   ${show(outcome.value)}`,
          ]);
        }
      } catch (error) {
        if (error instanceof VectorError) throw new Error(`${where}: ${error.message}`);
        throw error;
      }
    }
  }
}

afterEach(() => {
  vi.unstubAllEnvs();
});

describe("contract vectors", () => {
  const files = Object.keys(scenarios).sort();
  test("found the vector files", () => {
    expect(files.length).toBeGreaterThan(0);
  });
  for (const path of files) {
    const file = path.replace(/^\.\.\//, "");
    test(`${file}: ${scenarios[path].name}`, async () => {
      vi.stubEnv("AGENT_SECRET", SECRET);
      await runScenario(file, scenarios[path]);
    });
  }
});

describe("vector matcher", () => {
  const saved: Saved = new Map<string, unknown>([["id", "abc"]]);
  test("substitutes and omits", () => {
    expect(
      substitute({ k: "$secret", a: "$id", s: "agent:${id}", gone: "$omit", n: [1, "$id"] }, saved),
    ).toEqual({ k: SECRET, a: "abc", s: "agent:abc", n: [1, "abc"] });
  });
  test("accepts matches", () => {
    const expected = {
      id: "$id",
      s: "agent:${id}",
      n: "$number",
      t: "$string",
      x: "$any",
      o: "$not:id",
    };
    expect(
      mismatches(expected, { id: "abc", s: "agent:abc", n: 5000.0, t: "", x: null, o: "b" }, saved),
    ).toEqual([]);
    expect(mismatches([5000], [5000.0], saved)).toEqual([]);
  });
  test("rejects extra and missing keys, lengths, types and values", () => {
    expect(mismatches({ a: 1 }, { a: 1, b: 2 }, saved)).toHaveLength(1);
    expect(mismatches({ a: 1, b: 2 }, { a: 1 }, saved)).toHaveLength(1);
    expect(mismatches([1], [1, 2], saved)).toHaveLength(1);
    expect(mismatches([], {}, saved)).toHaveLength(1);
    expect(mismatches(null, 0, saved)).toHaveLength(1);
    expect(mismatches("5", 5, saved)).toHaveLength(1);
    expect(mismatches("$number", "5", saved)).toHaveLength(1);
    expect(mismatches("$not:id", "abc", saved)).toHaveLength(1);
    expect(mismatches("$id", "abd", saved)).toHaveLength(1);
    expect(() => mismatches("$unknown", "x", saved)).toThrow(VectorError);
  });
  test("saves before matching within one result", () => {
    const local: Saved = new Map();
    const expected = { s: "agent:${me}", id: "$save:me" };
    const actual = { s: "agent:7", id: "7" };
    collectSaves(expected, actual, local);
    expect(mismatches(expected, actual, local)).toEqual([]);
  });
});
