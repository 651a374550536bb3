// End-to-end tests (node environment): the TypeScript client, the built page in Chromium, and
// the packed packages in a fresh app, against the real live-ai binary. Run with `npm run test:e2e`.
import { defineConfig } from "vitest/config";

export default defineConfig({
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
