// Build, dev server and unit-test (Vitest, jsdom) configuration of the demo frontend.
import { fileURLToPath } from "node:url";
import react from "@vitejs/plugin-react";
import { defineConfig } from "vitest/config";
import { yamlContract } from "./contract-plugin.ts";

const repoRoot = fileURLToPath(new URL("..", import.meta.url));

export default defineConfig({
  plugins: [react(), yamlContract()],
  server: {
    // The contract lives outside frontend/; the dev server must be allowed to read it.
    fs: { allow: [repoRoot] },
    proxy: { "/api": { target: "http://127.0.0.1:8000", ws: true } },
  },
  // Mermaid's chunks are large but loaded only when a diagram is drawn.
  build: { outDir: "dist", emptyOutDir: true, chunkSizeWarningLimit: 1500 },
  test: {
    environment: "jsdom",
    include: ["src/**/*.test.{ts,tsx}"],
    restoreMocks: true,
    reporters: ["default", "./summary-reporter.ts"],
  },
});
