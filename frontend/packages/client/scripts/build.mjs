// Builds @live-ai/client into dist/: generates the contract modules from the YAML, compiles
// the TypeScript (ES modules + .d.ts), and copies the generated validators, which are plain
// JavaScript that tsc does not emit.
import { spawnSync } from "node:child_process";
import { copyFile, mkdir } from "node:fs/promises";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { generateContract } from "./generate-contract.mjs";

const packageDir = fileURLToPath(new URL("..", import.meta.url));

await generateContract();
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
const compiled = spawnSync(process.execPath, [tsc, "-p", "tsconfig.build.json"], { cwd: packageDir, stdio: "inherit" });
if (compiled.status !== 0) process.exit(compiled.status ?? 1);
await mkdir(`${packageDir}dist/generated`, { recursive: true });
for (const file of ["contract-validators.js", "contract-validators.d.ts"]) {
  await copyFile(`${packageDir}src/generated/${file}`, `${packageDir}dist/generated/${file}`);
}
