import { ConvexError } from "convex/values";

/** The error codes of the contract (../../../contract/README.md, "Errors"). */
export type ErrorCode =
  | "UNAUTHORIZED"
  | "NOT_FOUND"
  | "INVALID_ARGUMENT"
  | "CONFLICT"
  /** A stale lease epoch or claim token (WhatsApp): the caller is no longer the sender. */
  | "FENCED";

/**
 * Build the error every failing call throws: a `ConvexError` whose data is
 * `{code, message}`, which clients receive as `errorData`.
 */
export function contractError(code: ErrorCode, message: string) {
  return new ConvexError({ code, message });
}
