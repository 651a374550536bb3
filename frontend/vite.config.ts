// Build, dev server and unit-test (Vitest, jsdom) configuration of the demo page and the
// packages' unit tests. The page imports the @live-ai packages by name, from their built dist/.
import { fileURLToPath } from "node:url";
import react from "@vitejs/plugin-react";
import { defineConfig } from "vitest/config";

export default defineConfig({
  plugins: [react()],
  server: {
    proxy: { "/api": { target: "http://127.0.0.1:8000", ws: true } },
  },
  // Mermaid's chunks are large but loaded only when a diagram is drawn.
  build: { outDir: "dist", emptyOutDir: true, chunkSizeWarningLimit: 1500 },
  test: {
    // Unit tests run the packages' sources (the page's build uses their dist/, like any host).
    alias: ["client", "react", "blocks"].map((name) => ({
      find: new RegExp(`^@live-ai/${name}$`),
      replacement: fileURLToPath(new URL(`./packages/${name}/src/index.ts`, import.meta.url)),
    })),
    environment: "jsdom",
    include: ["src/**/*.test.{ts,tsx}", "packages/*/src/**/*.test.{ts,tsx}"],
    restoreMocks: true,
    reporters: ["default", "./summary-reporter.ts"],
  },
});
