// Browser benchmark of the demo page: all four blocks streaming at once from the demo model
// at DEMO_TOKENS_PER_SECOND=2000, in Debian's Chromium. Reports React renders per second per
// block (commits of the demo component that owns the block's hook, counted with `?bench`) and
// the longest main-thread task
// (PerformanceObserver "longtask"). Targets: ≤ 60 renders/s per block, no task over 50 ms.
//
// Usage (from the repository root, after `npm ci` and `npm run build` in frontend/, and `cargo build`):
//   node bench/browser-bench.mjs [rounds]
// Env: LIVE_AI_BIN (default backend/target/debug/live-ai), CHROMIUM_BIN (default
// /usr/bin/chromium), DEMO_TOKENS_PER_SECOND (default 2000). Builds frontend/dist if missing.
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const frontend = join(root, "frontend");
// playwright-core is a dev dependency of the frontend, not of the repository root.
const { chromium } = createRequire(join(frontend, "package.json"))("playwright-core");

const rounds = Number(process.argv[2] ?? 10);
const tokensPerSecond = process.env.DEMO_TOKENS_PER_SECOND ?? "2000";
const liveAi = process.env.LIVE_AI_BIN ?? join(root, "backend/target/debug/live-ai");
const chromiumBin = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
const allBlocks = ["ask-question", "explain-eli10", "quiz", "diagram"];
// BENCH_BLOCKS=quiz,diagram runs only those blocks (to find which one a long task belongs to).
const blockNames = allBlocks.filter((name) => !process.env.BENCH_BLOCKS || process.env.BENCH_BLOCKS.split(",").includes(name));

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function startServer(port) {
  const child = spawn(liveAi, [], {
    env: {
      ...process.env,
      HOST: "127.0.0.1",
      PORT: String(port),
      AI_PROVIDER: "demo",
      AI_STREAMING_ENABLED: "true",
      STATIC_DIR: join(frontend, "dist"),
      DEMO_TOKENS_PER_SECOND: tokensPerSecond,
      DEMO_FIRST_TOKEN_MS: "50",
      RUST_LOG: "warn,live_ai=info",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  return new Promise((resolve, reject) => {
    let output = "";
    const timer = setTimeout(() => reject(new Error(`live-ai did not start:\n${output}`)), 20_000);
    const onData = (data) => {
      output += data;
      if (output.includes(`listening on http://127.0.0.1:${port}`)) {
        clearTimeout(timer);
        resolve(child);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.once("exit", (code) => reject(new Error(`live-ai exited (${code}):\n${output}`)));
  });
}

/** In the page: long tasks and each block's status transitions, timestamped. */
function instrument() {
  window.__longTasks = [];
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) window.__longTasks.push({ start: entry.startTime, duration: entry.duration });
  }).observe({ type: "longtask", buffered: true });
  window.__transitions = [];
  const watch = () => {
    for (const section of document.querySelectorAll("section.block")) {
      new MutationObserver(() =>
        window.__transitions.push({
          block: section.className.replace(/.*block-/, ""),
          status: section.getAttribute("data-status"),
          at: performance.now(),
        }),
      ).observe(section, { attributes: true, attributeFilter: ["data-status"] });
    }
  };
  document.addEventListener("DOMContentLoaded", () => setTimeout(watch, 0));
}

async function main() {
  if (!existsSync(liveAi)) throw new Error(`no live-ai binary at ${liveAi} (cargo build --manifest-path backend/Cargo.toml)`);
  if (!existsSync(join(frontend, "dist/index.html"))) execFileSync("npm", ["run", "build"], { cwd: frontend, stdio: "inherit" });
  const port = await freePort();
  const server = await startServer(port);
  const profile = mkdtempSync(join(tmpdir(), "live-ai-bench-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumBin,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 1000 },
  });
  try {
    const page = await context.newPage();
    await page.addInitScript(instrument);
    await page.goto(`http://127.0.0.1:${port}/?bench`);
    await page.getByRole("heading", { name: "Live AI Blocks" }).waitFor();
    await page.locator("section.block-quiz input[type=number]").fill("10");
    // Warm-up round (loads Mermaid's lazy chunks), not measured.
    await runRound(page);
    const warmupEnd = await page.evaluate(() => performance.now());
    const totals = Object.fromEntries(blockNames.map((b) => [b, { renders: 0, ms: 0, chars: 0 }]));
    for (let round = 0; round < rounds; round++) {
      const before = await page.evaluate(() => ({ ...window.__liveAiBench.renders }));
      const since = await runRound(page);
      const after = await page.evaluate(() => ({ ...window.__liveAiBench.renders }));
      const transitions = await page.evaluate((from) => window.__transitions.slice(from), since);
      if (process.env.BENCH_DEBUG) console.error(JSON.stringify(transitions));
      for (const name of blockNames) {
        const mine = transitions.filter((t) => t.block === name);
        const roundStart = await page.evaluate(() => window.__roundStart);
        const started = mine.find((t) => t.status === "connecting")?.at ?? roundStart;
        const ended = mine.find((t) => t.status === "complete")?.at;
        totals[name].renders += after[name] - before[name];
        totals[name].ms += ended - started;
        totals[name].chars += (await page.locator(`section.block-${name} .output`).textContent()).length;
      }
    }
    const longTasks = await page.evaluate((from) => window.__longTasks.filter((t) => t.start >= from), warmupEnd);
    const allLongTasks = await page.evaluate(() => window.__longTasks);
    const report = {
      date: new Date().toISOString(),
      tokens_per_second: Number(tokensPerSecond),
      rounds,
      blocks: Object.fromEntries(
        Object.entries(totals).map(([name, t]) => [
          name,
          {
            renders_per_second: Math.round((t.renders / t.ms) * 1000 * 10) / 10,
            renders_per_round: Math.round((t.renders / rounds) * 10) / 10,
            stream_ms_per_round: Math.round(t.ms / rounds),
            output_text_chars_per_round: Math.round(t.chars / rounds),
          },
        ]),
      ),
      longest_task_ms: Math.max(0, ...longTasks.map((t) => t.duration)),
      long_tasks: longTasks.length,
      long_task_durations_ms: longTasks.map((t) => Math.round(t.duration)),
      longest_task_ms_including_warmup: Math.max(0, ...allLongTasks.map((t) => t.duration)),
    };
    console.log(JSON.stringify(report, null, 2));
    const worst = Math.max(...Object.values(report.blocks).map((b) => b.renders_per_second));
    const ok = worst <= 60 && report.longest_task_ms <= 50;
    console.log(`${ok ? "PASS" : "OVER TARGET"}: max ${worst} renders/s per block (target ≤ 60), longest task ${report.longest_task_ms} ms (target ≤ 50)`);
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
    server.kill("SIGTERM");
  }
}

/** Starts the blocks at once and waits until each has completed; returns where its transitions begin. */
async function runRound(page) {
  const since = await page.evaluate(() => window.__transitions.length);
  const before = await page.evaluate(() =>
    Object.fromEntries([...document.querySelectorAll("section.block")].map((s) => [s.className, s.getAttribute("data-stream-id")])),
  );
  // All blocks start in the same task. (Pointer clicks one by one would race the layout:
  // the first blocks' output moves the buttons of the blocks below.)
  await page.evaluate((names) => {
    window.__roundStart = performance.now();
    for (const name of names) document.querySelector(`section.block-${name} form button[type=submit]`).click();
  }, blockNames);
  // Done when every block shows a new stream as complete. (Statuses are published once per
  // frame, so a stream shorter than a starved frame may never show "connecting" at all.)
  await page
    .waitForFunction(
      ([names, previous]) =>
        names.every((name) => {
          const section = document.querySelector(`section.block-${name}`);
          const id = section.getAttribute("data-stream-id");
          return id && id !== previous[section.className] && section.getAttribute("data-status") === "complete";
        }),
      [blockNames, before],
      { timeout: 60_000 },
    )
    .catch(async (error) => {
      const state = await page.evaluate((from) => ({
        statuses: [...document.querySelectorAll("section.block")].map((s) => `${s.className}: ${s.getAttribute("data-status")}`),
        transitions: window.__transitions.slice(from),
      }), since);
      throw new Error(`a round did not complete: ${JSON.stringify(state)}`, { cause: error });
    });
  // Let the diagram finish drawing before the next round.
  await page.waitForTimeout(300);
  return since;
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
