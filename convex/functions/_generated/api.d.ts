/* eslint-disable */
/**
 * Generated `api` utility.
 *
 * THIS CODE IS AUTOMATICALLY GENERATED.
 *
 * To regenerate, run `npx convex dev`.
 * @module
 */

import type {
  ApiFromModules,
  FilterApi,
  FunctionReference,
} from "convex/server";
import type * as lib_args from "../lib/args.js";
import type * as lib_errors from "../lib/errors.js";
import type * as lib_model from "../lib/model.js";
import type * as lib_serviceKey from "../lib/serviceKey.js";
import type * as service_actions from "../service/actions.js";
import type * as service_agents from "../service/agents.js";
import type * as service_presence from "../service/presence.js";

/**
 * A utility for referencing Convex functions in your app's API.
 *
 * Usage:
 * ```js
 * const myFunctionReference = api.myModule.myFunction;
 * ```
 */
declare const fullApi: ApiFromModules<{
  "lib/args": typeof lib_args;
  "lib/errors": typeof lib_errors;
  "lib/model": typeof lib_model;
  "lib/serviceKey": typeof lib_serviceKey;
  "service/actions": typeof service_actions;
  "service/agents": typeof service_agents;
  "service/presence": typeof service_presence;
}>;
export declare const api: FilterApi<
  typeof fullApi,
  FunctionReference<any, "public">
>;
export declare const internal: FilterApi<
  typeof fullApi,
  FunctionReference<any, "internal">
>;
