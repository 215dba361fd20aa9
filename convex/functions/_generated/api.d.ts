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
import type * as lib_counters from "../lib/counters.js";
import type * as lib_errors from "../lib/errors.js";
import type * as lib_jobs from "../lib/jobs.js";
import type * as lib_model from "../lib/model.js";
import type * as lib_pages from "../lib/pages.js";
import type * as lib_scheduled from "../lib/scheduled.js";
import type * as lib_serviceKey from "../lib/serviceKey.js";
import type * as lib_whatsapp from "../lib/whatsapp.js";
import type * as lib_workers from "../lib/workers.js";
import type * as service_actions from "../service/actions.js";
import type * as service_agents from "../service/agents.js";
import type * as service_jobs from "../service/jobs.js";
import type * as service_presence from "../service/presence.js";
import type * as service_whatsapp from "../service/whatsapp.js";
import type * as service_workers from "../service/workers.js";

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
  "lib/counters": typeof lib_counters;
  "lib/errors": typeof lib_errors;
  "lib/jobs": typeof lib_jobs;
  "lib/model": typeof lib_model;
  "lib/pages": typeof lib_pages;
  "lib/scheduled": typeof lib_scheduled;
  "lib/serviceKey": typeof lib_serviceKey;
  "lib/whatsapp": typeof lib_whatsapp;
  "lib/workers": typeof lib_workers;
  "service/actions": typeof service_actions;
  "service/agents": typeof service_agents;
  "service/jobs": typeof service_jobs;
  "service/presence": typeof service_presence;
  "service/whatsapp": typeof service_whatsapp;
  "service/workers": typeof service_workers;
}>;
export declare const api: FilterApi<
  typeof fullApi,
  FunctionReference<any, "public">
>;
export declare const internal: FilterApi<
  typeof fullApi,
  FunctionReference<any, "internal">
>;
