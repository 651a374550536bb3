// The packages as hosts get them: `npm pack` the three packages and install only those
// tarballs (with react, react-dom and the host's own tools, from the registry or npm's cache)
// into fresh apps in a temporary directory:
// - a Vite + React app: a quiz with useAIBlockStreaming and QuizBlock, built for production and
//   served by the real live-ai, answered in Chromium; and a page built with React's
//   development build under StrictMode, whose mount effect starts a quiz: the server counts one
//   generation, not two;
// - a Next.js App Router app whose server component renders the blocks (so "use client" must
//   have survived the packages' build), server-rendered by `next start` and streaming from
//   live-ai on another origin (CORS) in Chromium;
// - a TypeScript consumer checked with `tsc --noEmit` (strict, NodeNext resolution, the
//   packages' own .d.ts files checked too) against the shipped declarations.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { launchBrowser, watchErrors, type Browser } from "./browser";
import { freePort, startLiveAi, type LiveAiServer } from "./live-ai-server";

const run = promisify(execFile);
const FRONTEND = fileURLToPath(new URL("..", import.meta.url));
const PACKAGES = ["client", "react", "blocks"] as const;
/** The Next.js the App Router app is built with (16 runs on Node 20.9+). */
const NEXT_VERSION = "16.4.6";
const BIG_OUTPUT = { maxBuffer: 16 * 1024 * 1024 };
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

/** A lesson that asks as soon as it opens, under StrictMode (which mounts it twice in development). */
const STRICT_JSX = `import { StrictMode, useEffect } from "react";
import { createRoot } from "react-dom/client";
import { StreamClientProvider, useAIBlockStreaming } from "@live-ai/react";
import { QuizBlock } from "@live-ai/blocks";

function OpensWithAQuiz() {
  const quiz = useAIBlockStreaming("quiz");
  useEffect(() => {
    window.mountEffects = (window.mountEffects ?? 0) + 1;
    quiz.start({ topic: "strict mode", count: 1 }).then(
      (result) => (document.body.dataset.outcome = "questions:" + result.questions.length),
      (error) => (document.body.dataset.outcome = "error:" + error.code),
    );
  }, []);
  return <QuizBlock stream={quiz} />;
}

createRoot(document.getElementById("root")).render(
  <StrictMode>
    <StreamClientProvider>
      <OpensWithAQuiz />
    </StreamClientProvider>
  </StrictMode>,
);
`;

const html = (entry: string) => `<!doctype html>
<html lang="en">
  <head><meta charset="UTF-8" /><title>A lesson</title></head>
  <body><div id="root"></div><script type="module" src="/src/${entry}"></script></body>
</html>
`;

/** The Next.js app: a server component renders the blocks; the API's origin comes from the server's environment. */
const NEXT_LAYOUT = `export default function RootLayout({ children }: { children: React.ReactNode }) {
  return (
    <html lang="en">
      <body>{children}</body>
    </html>
  );
}
`;
const NEXT_PAGE = `import { StreamClientProvider } from "@live-ai/react";
import { ExplainELI10Block } from "@live-ai/blocks";
import "@live-ai/blocks/styles.css";

export const dynamic = "force-dynamic";

export default function Page() {
  return (
    <main>
      <h1>A lesson</h1>
      <StreamClientProvider baseUrl={process.env.LIVE_AI_URL ?? ""}>
        <ExplainELI10Block initialTopic="volcanoes" />
      </StreamClientProvider>
    </main>
  );
}
`;
// Types are checked by the separate tsc run below, not a second time by next build.
const NEXT_CONFIG = `export default { typescript: { ignoreBuildErrors: true } };\n`;

/** A TypeScript consumer of every package, with what must not compile marked as such. */
const CONSUMER_TS = `import { AIBlockError, BlockStream, StreamClient, type BlockResults, type StreamState } from "@live-ai/client";
import { useAIBlockStreaming, type AIBlockStreaming } from "@live-ai/react";
import { DEFAULT_ERROR_MESSAGES, ErrorMessagesProvider, QuizBlock, renderMarkdown, type ErrorMessages } from "@live-ai/blocks";
import { createElement } from "react";

const client = new StreamClient({ baseUrl: "https://ai.example.org", getToken: async ({ refresh }) => (refresh ? "fresh" : "cached") });
client.resetCredentials();
const quiz = new BlockStream<"quiz">(client, { onFinish: (result) => result.questions.map((q) => q.answer_index) }, "quiz");

export async function ask(): Promise<number> {
  try {
    const result: BlockResults["quiz"] = await quiz.start("quiz", { topic: "volcanoes", count: 2, difficulty: "easy" });
    return result.questions.length;
  } catch (error) {
    if (error instanceof AIBlockError && (error.code === "cancelled" || error.code === "detached" || error.code === "stream_not_found")) return 0;
    throw error;
  }
}

export function wrong(): void {
  // @ts-expect-error a quiz needs a topic
  void quiz.start("quiz", { count: 2 });
  // @ts-expect-error there is no such block
  void quiz.start("essay", { topic: "x" });
}

export function useDiagram(): AIBlockStreaming<"diagram"> {
  const diagram = useAIBlockStreaming("diagram", { resume: true });
  const source: string | undefined = diagram.result?.source;
  const busy: boolean = diagram.isLoading;
  if (busy && source === undefined) diagram.reset();
  void diagram.resume(diagram.streamId);
  return diagram;
}

const state: StreamState["status"] = "detached";
const german: ErrorMessages = { stream_not_found: { text: "Abgelaufen.", action: "Nochmal" }, ...DEFAULT_ERROR_MESSAGES };
export const page = createElement(ErrorMessagesProvider, { messages: german }, createElement(QuizBlock, { initialTopic: state }));
export const html: string = renderMarkdown("**bold**");
`;
const CONSUMER_TSCONFIG = {
  compilerOptions: {
    strict: true,
    noEmit: true,
    module: "nodenext",
    moduleResolution: "nodenext",
    target: "es2022",
    jsx: "react-jsx",
    // The shipped .d.ts files are checked too, not only the consumer.
    skipLibCheck: false,
    types: [],
  },
  files: ["consumer.mts"],
};

let appDir: string;
let nextDir: string;
let server: LiveAiServer | undefined;
let browser: Browser | undefined;
let next: ChildProcess | undefined;
let nextUrl: string;
const tarballs: Record<string, string> = {};

/** Installs `dependencies` (the tarballs, and what else the app names) into `dir`. */
async function installApp(dir: string, dependencies: Record<string, string>, extra: Record<string, unknown> = {}): Promise<void> {
  for (const name of PACKAGES) dependencies[`@live-ai/${name}`] = `file:${tarballs[`@live-ai/${name}`]}`;
  await writeFile(join(dir, "package.json"), JSON.stringify({ name: "host-app", private: true, dependencies, ...extra }, null, 2));
  await run("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund"], { cwd: dir, ...BIG_OUTPUT });
}

beforeAll(async () => {
  const started = Date.now();
  appDir = await mkdtemp(join(tmpdir(), "live-ai-host-app-"));
  nextDir = await mkdtemp(join(tmpdir(), "live-ai-next-app-"));
  const packs = join(appDir, "packs");
  await mkdir(packs);
  const { stdout } = await run(
    "npm",
    ["pack", "--json", "--pack-destination", packs, ...PACKAGES.flatMap((name) => ["--workspace", `packages/${name}`])],
    { cwd: FRONTEND, ...BIG_OUTPUT },
  );
  // The prepack builds print their own lines before npm's JSON report.
  const report = stdout.slice(stdout.search(/^\[\s*\{/m));
  for (const packed of JSON.parse(report) as Array<{ name: string; filename: string }>) {
    tarballs[packed.name] = join(packs, packed.filename);
  }
  const react = { react: await workspaceVersion("react"), "react-dom": await workspaceVersion("react-dom") };

  // The Vite app: a production build, and the StrictMode page with React's development build.
  await installApp(appDir, { ...react, vite: await workspaceVersion("vite") }, { type: "module" });
  await writeFile(join(appDir, "index.html"), html("main.jsx"));
  await mkdir(join(appDir, "src"));
  await writeFile(join(appDir, "src/main.jsx"), MAIN_JSX);
  await run(join(appDir, "node_modules/.bin/vite"), ["build"], { cwd: appDir, ...BIG_OUTPUT });
  const strictDir = join(appDir, "strict");
  await mkdir(join(strictDir, "src"), { recursive: true });
  await writeFile(join(strictDir, "index.html"), html("strict.jsx"));
  await writeFile(join(strictDir, "src/strict.jsx"), STRICT_JSX);
  await run(
    join(appDir, "node_modules/.bin/vite"),
    ["build", "--mode", "development", "--minify", "false", "--base", "/strict/", "--outDir", join(appDir, "dist/strict"), "--emptyOutDir"],
    { cwd: strictDir, env: { ...process.env, NODE_ENV: "development" }, ...BIG_OUTPUT },
  );

  // The Next.js app and the TypeScript consumer.
  await installApp(nextDir, {
    ...react,
    next: NEXT_VERSION,
    typescript: await workspaceVersion("typescript"),
    "@types/react": await workspaceVersion("@types/react"),
    "@types/node": await workspaceVersion("@types/node"),
  });
  await mkdir(join(nextDir, "app"));
  await writeFile(join(nextDir, "app/layout.tsx"), NEXT_LAYOUT);
  await writeFile(join(nextDir, "app/page.tsx"), NEXT_PAGE);
  await writeFile(join(nextDir, "next.config.mjs"), NEXT_CONFIG);
  await writeFile(join(nextDir, "consumer.mts"), CONSUMER_TS);
  await writeFile(join(nextDir, "tsconfig.consumer.json"), JSON.stringify(CONSUMER_TSCONFIG, null, 2));
  await run(join(nextDir, "node_modules/.bin/next"), ["build"], { cwd: nextDir, env: { ...process.env, NEXT_TELEMETRY_DISABLED: "1" }, ...BIG_OUTPUT });
  process.stdout.write(`packaging: packed, installed and built both apps in ${Math.round((Date.now() - started) / 1000)} s\n`);

  // One live-ai serves the Vite app and answers the Next app's page from its own origin.
  const nextPort = await freePort();
  nextUrl = `http://127.0.0.1:${nextPort}`;
  server = await startLiveAi({
    STATIC_DIR: join(appDir, "dist"),
    DEMO_TOKENS_PER_SECOND: "400",
    DEMO_FIRST_TOKEN_MS: "50",
    CORS_ALLOWED_ORIGINS: nextUrl,
  });
  next = await startNext(nextPort, server.url);
  browser = await launchBrowser();
}, 600_000);

afterAll(async () => {
  await browser?.close();
  await stopNext();
  await server?.stop();
  if (appDir) await rm(appDir, { recursive: true, force: true });
  if (nextDir) await rm(nextDir, { recursive: true, force: true });
});

/** `next start` on `port`, resolved once it says it is ready. */
async function startNext(port: number, liveAiUrl: string): Promise<ChildProcess> {
  const child = spawn(join(nextDir, "node_modules/.bin/next"), ["start", "-p", String(port), "-H", "127.0.0.1"], {
    cwd: nextDir,
    env: { ...process.env, LIVE_AI_URL: liveAiUrl, NEXT_TELEMETRY_DISABLED: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const killOnExit = () => child.kill("SIGKILL");
  process.once("exit", killOnExit);
  child.once("exit", () => process.removeListener("exit", killOnExit));
  let output = "";
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`next start did not get ready:\n${output}`)), 30_000);
    const onData = (data: Buffer) => {
      output += data.toString();
      if (/Ready in/.test(output)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.once("exit", (code) => reject(new Error(`next start exited with ${code}:\n${output}`)));
  });
  return child;
}

async function stopNext(): Promise<void> {
  if (!next || next.exitCode !== null || next.signalCode !== null) return;
  const exited = new Promise((resolve) => next!.once("exit", resolve));
  next.kill("SIGTERM");
  await exited;
}

/** The sum of a Prometheus counter's samples whose labels include `labels`. */
async function counter(name: string, labels: Record<string, string>): Promise<number> {
  const text = await (await fetch(`${server!.url}/metrics`)).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    const match = new RegExp(`^${name}(?:\\{([^}]*)\\})? (\\S+)$`).exec(line);
    if (!match) continue;
    const has = Object.entries(labels).every(([key, value]) => (match[1] ?? "").includes(`${key}="${value}"`));
    if (has) sum += Number(match[2]);
  }
  return sum;
}

describe("the packed packages, installed by hosts", () => {
  it("install with what each declares: the blocks and the hooks take the client (and the hooks) as peers, one copy of each", async () => {
    expect(Object.keys(tarballs).sort()).toEqual(["@live-ai/blocks", "@live-ai/client", "@live-ai/react"]);
    const manifest = async (name: string) =>
      JSON.parse(await readFile(join(appDir, "node_modules", name, "package.json"), "utf8")) as {
        dependencies?: Record<string, string>;
        peerDependencies?: Record<string, string>;
        exports: Record<string, unknown>;
      };
    const client = await manifest("@live-ai/client");
    const react = await manifest("@live-ai/react");
    const blocks = await manifest("@live-ai/blocks");
    expect(Object.keys(client.dependencies ?? {})).toEqual(["eventsource-parser"]);
    expect(react.dependencies).toBeUndefined();
    expect(Object.keys(react.peerDependencies ?? {}).sort()).toEqual(["@live-ai/client", "react"]);
    expect(Object.keys(blocks.dependencies ?? {}).sort()).toEqual(["dompurify", "marked", "mermaid"]);
    expect(Object.keys(blocks.peerDependencies ?? {}).sort()).toEqual(["@live-ai/client", "@live-ai/react", "react", "react-dom"]);
    for (const { exports } of [client, react, blocks]) expect(exports["."]).toMatchObject({ types: "./dist/index.d.ts", default: "./dist/index.js" });
    // No nested copies: the blocks read the very client the host configured.
    for (const dir of [appDir, nextDir]) {
      expect(existsSync(join(dir, "node_modules/@live-ai/blocks/node_modules"))).toBe(false);
      expect(existsSync(join(dir, "node_modules/@live-ai/react/node_modules"))).toBe(false);
    }
    for (const absent of ["yaml", "ajv", "json-schema-to-typescript"]) expect(existsSync(join(appDir, "node_modules", absent))).toBe(false);
    for (const name of PACKAGES) expect(existsSync(join(appDir, "node_modules/@live-ai", name, "dist/index.d.ts"))).toBe(true);
    expect(existsSync(join(appDir, "node_modules/@live-ai/client/dist/generated/contract-validators.js"))).toBe(true);
    // React state lives behind "use client" in the built files, where Next.js looks for it.
    for (const file of ["react/dist/hooks.js", "react/dist/provider.js", "blocks/dist/QuizBlock.js", "blocks/dist/BlockFrame.js"]) {
      expect((await readFile(join(appDir, "node_modules/@live-ai", file), "utf8")).startsWith('"use client";')).toBe(true);
    }
  });

  it("type-check a strict TypeScript consumer against the shipped .d.ts files (tsc --noEmit, NodeNext)", async () => {
    const result = await run(join(nextDir, "node_modules/.bin/tsc"), ["-p", "tsconfig.consumer.json"], { cwd: nextDir, ...BIG_OUTPUT }).then(
      () => "",
      (error: { stdout?: string }) => error.stdout ?? String(error),
    );
    expect(result).toBe("");
  });

  it("Vite + React: streams a quiz from the real live-ai, and the learner can answer its questions", async () => {
    const page = await browser!.context.newPage();
    const errors = watchErrors(page);
    await page.goto(server!.url);
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
    await page.close();
  });

  it("Vite + React under StrictMode (development build): a mount effect's start is one generation on the server", async () => {
    const quizzes = () => counter("live_ai_stream_outcomes_total", { block: "quiz" });
    const before = await quizzes();
    const page = await browser!.context.newPage();
    const errors = watchErrors(page);
    const starts: string[] = [];
    page.on("request", (request) => {
      if (request.method() === "POST" && request.url().endsWith("/api/streams")) starts.push(request.url());
    });
    await page.goto(`${server!.url}/strict/`);
    await page.waitForFunction(() => document.body.dataset.outcome !== undefined, null, { timeout: 30_000 });
    // React's development build: StrictMode did run the mount effect twice.
    expect(await page.evaluate(() => (window as { mountEffects?: number }).mountEffects)).toBe(2);
    expect(await page.evaluate(() => document.body.dataset.outcome)).toBe("questions:1");
    await expect.poll(quizzes, { timeout: 10_000 }).toBeGreaterThan(before);
    // Every generation the server ran has ended; exactly one of them was this page's.
    expect(await counter("live_ai_active_streams", {})).toBe(0);
    expect((await quizzes()) - before).toBe(1);
    expect(starts).toHaveLength(1);
    expect(errors).toEqual([]);
    await page.close();
  });

  it("Next.js App Router: the server renders the blocks, and the page streams an answer from live-ai on another origin", async () => {
    // Server-rendered: the block is in the HTML before any script runs.
    const served = await (await fetch(nextUrl)).text();
    expect(served).toContain('class="block block-explain-eli10"');
    expect(served).toContain("Explain like I am 10");
    const page = await browser!.context.newPage();
    const errors = watchErrors(page);
    await page.goto(nextUrl);
    const block = page.locator("section.block-explain-eli10");
    // Hydrated: the button answers.
    await page.getByRole("button", { name: "Explain" }).click();
    await page.waitForFunction(() => document.querySelector("section.block-explain-eli10")?.getAttribute("data-status") === "complete", null, { timeout: 30_000 });
    expect(((await block.locator(".output").textContent()) ?? "").length).toBeGreaterThan(100);
    expect(await block.locator(".demo-label").textContent()).toBe("demo model");
    expect(errors).toEqual([]);
    await page.close();
  });
});
