import { defineConfig } from "vitest/config";

// convex-test runs the functions in the edge runtime, like Convex's default runtime.
export default defineConfig({
  test: {
    environment: "edge-runtime",
    include: ["*.test.ts"],
    server: { deps: { inline: ["convex-test"] } },
  },
});
