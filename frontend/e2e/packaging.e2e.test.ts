// The packages as a host gets them: `npm pack` the three packages, make a fresh Vite + React
// app in a temporary directory that installs only those tarballs (with react, react-dom and
// vite, from the registry or npm's cache), render a quiz with useAIBlockStreaming and
// QuizBlock, build it, serve the build from the real live-ai, and answer a question in Chromium.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { launchBrowser, type Browser } from "./browser";
import { startLiveAi, type LiveAiServer } from "./live-ai-server";

const run = promisify(execFile);
const FRONTEND = fileURLToPath(new URL("..", import.meta.url));
const PACKAGES = ["client", "react", "blocks"] as const;
const workspaceVersion = async (name: string) =>
  (JSON.parse(await readFile(join(FRONTEND, "node_modules", name, "package.json"), "utf8")) as { version: string }).version;

/** The host app: a lesson page with one quiz, written as a host would after reading the README. */
const MAIN_JSX = `import { createRoot } from "react-dom/client";
import { StreamClientProvider, useAIBlockStreaming } from "@live-ai/react";
import { QuizBlock } from "@live-ai/blocks";
import "@live-ai/blocks/styles.css";

function Lesson() {
  const quiz = useAIBlockStreaming("quiz", {
    onFinish: (result) => (document.body.dataset.questions = String(result.questions.length)),
  });
  return <QuizBlock stream={quiz} initialTopic="volcanoes" />;
}

createRoot(document.getElementById("root")).render(
  <StreamClientProvider>
    <Lesson />
  </StreamClientProvider>,
);
`;

const INDEX_HTML = `<!doctype html>
<html lang="en">
  <head><meta charset="UTF-8" /><title>A lesson</title></head>
  <body><div id="root"></div><script type="module" src="/src/main.jsx"></script></body>
</html>
`;

let appDir: string;
let server: LiveAiServer | undefined;
let browser: Browser | undefined;
const tarballs: Record<string, string> = {};

beforeAll(async () => {
  appDir = await mkdtemp(join(tmpdir(), "live-ai-host-app-"));
  const packs = join(appDir, "packs");
  await mkdir(packs);
  const { stdout } = await run(
    "npm",
    ["pack", "--json", "--pack-destination", packs, ...PACKAGES.flatMap((name) => ["--workspace", `packages/${name}`])],
    { cwd: FRONTEND, maxBuffer: 16 * 1024 * 1024 },
  );
  // The prepack builds print their own lines before npm's JSON report.
  const report = stdout.slice(stdout.search(/^\[\s*\{/m));
  for (const packed of JSON.parse(report) as Array<{ name: string; filename: string }>) {
    tarballs[packed.name] = join(packs, packed.filename);
  }
  const dependencies: Record<string, string> = {
    react: await workspaceVersion("react"),
    "react-dom": await workspaceVersion("react-dom"),
    vite: await workspaceVersion("vite"),
  };
  for (const name of PACKAGES) dependencies[`@live-ai/${name}`] = `file:${tarballs[`@live-ai/${name}`]}`;
  await writeFile(join(appDir, "package.json"), JSON.stringify({ name: "host-app", private: true, type: "module", dependencies }, null, 2));
  await writeFile(join(appDir, "index.html"), INDEX_HTML);
  await mkdir(join(appDir, "src"));
  await writeFile(join(appDir, "src/main.jsx"), MAIN_JSX);
  await run("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund"], { cwd: appDir, maxBuffer: 16 * 1024 * 1024 });
  await run(join(appDir, "node_modules/.bin/vite"), ["build"], { cwd: appDir, maxBuffer: 16 * 1024 * 1024 });
}, 300_000);

afterAll(async () => {
  await browser?.close();
  await server?.stop();
  if (appDir) await rm(appDir, { recursive: true, force: true });
});

describe("the packed packages in a fresh Vite + React app", () => {
  it("install with what each declares: no YAML or schema compiler at run time, Mermaid only with the blocks", async () => {
    expect(Object.keys(tarballs).sort()).toEqual(["@live-ai/blocks", "@live-ai/client", "@live-ai/react"]);
    const manifest = async (name: string) =>
      JSON.parse(await readFile(join(appDir, "node_modules", name, "package.json"), "utf8")) as {
        dependencies?: Record<string, string>;
        peerDependencies?: Record<string, string>;
        exports: Record<string, unknown>;
      };
    const client = await manifest("@live-ai/client");
    const react = await manifest("@live-ai/react");
    expect(Object.keys(client.dependencies ?? {})).toEqual(["eventsource-parser"]);
    expect(Object.keys(react.dependencies ?? {})).toEqual(["@live-ai/client"]);
    expect(Object.keys(react.peerDependencies ?? {})).toEqual(["react"]);
    for (const absent of ["yaml", "ajv", "json-schema-to-typescript"]) expect(existsSync(join(appDir, "node_modules", absent))).toBe(false);
    for (const name of PACKAGES) expect(existsSync(join(appDir, "node_modules/@live-ai", name, "dist/index.d.ts"))).toBe(true);
    expect(existsSync(join(appDir, "node_modules/@live-ai/client/dist/generated/contract-validators.js"))).toBe(true);
  });

  it("streams a quiz from the real live-ai, and the learner can answer its questions", async () => {
    server = await startLiveAi({ STATIC_DIR: join(appDir, "dist"), DEMO_TOKENS_PER_SECOND: "400", DEMO_FIRST_TOKEN_MS: "50" });
    browser = await launchBrowser();
    const page = await browser.context.newPage();
    const errors: string[] = [];
    page.on("pageerror", (error) => errors.push(error.message));
    await page.goto(server.url);
    await page.getByRole("button", { name: "Make quiz" }).click();
    const quiz = page.locator("section.block-quiz");
    await page.waitForFunction(() => document.querySelector("section.block-quiz")?.getAttribute("data-status") === "complete", null, { timeout: 30_000 });
    expect(await page.evaluate(() => document.body.dataset.questions)).toBe("3");
    const questions = quiz.locator(".quiz-question");
    expect(await questions.count()).toBe(3);
    for (let index = 0; index < 3; index++) {
      const question = questions.nth(index);
      await question.getByRole("radio").nth(index % 2).check();
      await question.getByRole("button", { name: "Check answer" }).click();
      expect(await question.locator(".feedback").textContent()).toMatch(/Correct!|Not quite/);
    }
    expect(errors).toEqual([]);
  });
});
