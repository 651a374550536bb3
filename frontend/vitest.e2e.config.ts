// End-to-end tests (node environment): the TypeScript client and the built page in Chromium
// against the real live-ai binary. Run with `npm run test:e2e`.
import { defineConfig } from "vitest/config";
import { yamlContract } from "./contract-plugin.ts";

export default defineConfig({
  plugins: [yamlContract()],
  test: {
    environment: "node",
    include: ["e2e/**/*.e2e.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Two cores: one server and one browser at a time keep timings honest.
    fileParallelism: false,
    reporters: ["default", "./summary-reporter.ts"],
  },
});
