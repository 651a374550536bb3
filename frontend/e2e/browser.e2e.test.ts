// The built demo page in Chromium against the real live-ai server: every block streams
// visibly, cancel, the quiz, the diagram, recovery from a connection cut mid-stream, the
// same stream picked up again after a reload, and a class asking the same question.
import { mkdir } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Page } from "playwright-core";
import { block, launchBrowser, outputText, recordStatuses, startBlock, startBlocks, statusHistory, waitForIntermediateOutput, waitForStatus, watchErrors, type BlockName, type Browser } from "./browser";
import { startCutProxy, type CutProxy } from "./cut-proxy";
import { startLiveAi, type LiveAiServer } from "./live-ai-server";
import { metricSum } from "./metrics";
import { untilLogEndsWith } from "./server-log";

const RESULTS_DIR = fileURLToPath(new URL("../test-results", import.meta.url));
const BLOCKS: BlockName[] = ["ask-question", "explain-eli10", "quiz", "diagram"];

let server: LiveAiServer;
let proxy: CutProxy;
let browser: Browser;

beforeAll(async () => {
  // Slow enough that a stream lasts a few seconds and can be watched, cancelled and cut.
  // Async moderation: output shows token by token (buffered mode shows a short answer, such as
  // a diagram, only once all of it passed, and these tests watch output arrive).
  // No coalescing: these tests ask the same questions again and again (a reference run, then one
  // that is cut, cancelled or reloaded) and each must be a generation of its own, written at the
  // model's pace; the class's shared answers have their own server below.
  server = await startLiveAi({ DEMO_TOKENS_PER_SECOND: "60", DEMO_FIRST_TOKEN_MS: "100", SSE_KEEPALIVE_SECONDS: "1", MODERATION_OUTPUT_MODE: "async", COALESCE: "off" });
  proxy = await startCutProxy(server.port);
  browser = await launchBrowser();
});

afterAll(async () => {
  await browser?.close();
  await proxy?.close();
  await server?.stop();
});

/** Streamed, lost the connection, reconnected (maybe in several tries) and finished. */
function expectRecovered(history: string[]) {
  expect(history.join(" ")).toMatch(/^connecting streaming (reconnecting streaming )+complete$/);
}

async function openPage(query = ""): Promise<{ page: Page; errors: string[] }> {
  const page = await browser.context.newPage();
  const errors = watchErrors(page);
  await page.goto(`${proxy.url}/${query}`);
  await page.getByRole("heading", { name: "Live AI Blocks" }).waitFor();
  return { page, errors };
}

for (const transport of ["sse", "websocket"] as const) {
  describe(`demo page over ${transport}`, () => {
    it("streams every block, showing output before it completes", async () => {
      const { page, errors } = await openPage(`?transport=${transport}`);
      const sockets: string[] = [];
      page.on("websocket", (socket) => sockets.push(socket.url()));
      const partials = BLOCKS.map((name) =>
        waitForIntermediateOutput(page, name).then(
          (text) => text.length,
          (error: Error) => `${name}: ${error.message.split("\n")[0]}`,
        ),
      );
      await startBlocks(page, BLOCKS);
      for (const partial of await Promise.all(partials)) expect(partial).toBeGreaterThan(0);
      for (const name of BLOCKS) await waitForStatus(page, name, "complete");
      for (const name of BLOCKS) {
        await expect(block(page, name).locator(".demo-label").textContent()).resolves.toBe("demo model");
      }
      expect((await outputText(page, "ask-question")).length).toBeGreaterThan(100);
      await block(page, "diagram").locator(".diagram-svg svg").waitFor({ timeout: 15_000 });
      expect(await block(page, "quiz").locator(".quiz-question").count()).toBe(3);
      // Four concurrent streams share one socket over WebSocket, and SSE opens none.
      expect(sockets).toEqual(transport === "websocket" ? [`${proxy.url.replace("http", "ws")}/api/stream/ws`] : []);
      if (transport === "sse") {
        await mkdir(RESULTS_DIR, { recursive: true });
        await page.screenshot({ path: `${RESULTS_DIR}/demo-page.png`, fullPage: true });
      }
      expect(errors).toEqual([]);
      await page.close();
    });

    it("recovers from a connection cut mid-stream with the same text as an uninterrupted run", async () => {
      const { page, errors } = await openPage(`?transport=${transport}`);
      await startBlock(page, "explain-eli10");
      await waitForStatus(page, "explain-eli10", "complete");
      const reference = await outputText(page, "explain-eli10");

      await recordStatuses(page, "explain-eli10");
      await startBlock(page, "explain-eli10");
      await waitForIntermediateOutput(page, "explain-eli10");
      await page.waitForTimeout(300);
      expect(proxy.cutAll()).toBeGreaterThan(0);
      await waitForStatus(page, "explain-eli10", "complete");
      expect(await outputText(page, "explain-eli10")).toBe(reference);
      expectRecovered(await statusHistory(page, "explain-eli10"));
      expect(errors).toEqual([]);
      await page.close();
    });
  });
}

describe("demo page", () => {
  it("recovers when the network goes away mid-stream (offline + connections cut) and comes back", async () => {
    const { page } = await openPage();
    await startBlock(page, "ask-question");
    await waitForStatus(page, "ask-question", "complete");
    const reference = await outputText(page, "ask-question");

    await recordStatuses(page, "ask-question");
    await startBlock(page, "ask-question");
    await waitForIntermediateOutput(page, "ask-question");
    // Chromium's offline mode fails new requests but leaves open responses flowing, so the
    // open connections are cut as well, the way a real network loss would.
    let failures = 0;
    let secondFailure!: () => void;
    const resumeRefused = new Promise<void>((resolve) => (secondFailure = resolve));
    page.on("requestfailed", (request) => {
      if (request.url().includes("/api/streams/") && ++failures === 2) secondFailure();
    });
    let whileOffline = "";
    await browser.context.setOffline(true);
    try {
      expect(proxy.cutAll()).toBeGreaterThan(0);
      // The first failure is the cut response itself; the second, a resume the offline network
      // refused. After that the page must still be waiting to reconnect, not failed.
      await resumeRefused;
      await waitForStatus(page, "ask-question", "reconnecting", 5_000);
      whileOffline = await outputText(page, "ask-question");
    } finally {
      await browser.context.setOffline(false);
    }
    await waitForStatus(page, "ask-question", "complete");
    const final = await outputText(page, "ask-question");
    expect(whileOffline.length).toBeLessThan(final.length);
    expect(final).toBe(reference);
    expectRecovered(await statusHistory(page, "ask-question"));
    await page.close();
  });

  it("cancels a stream: cancelled on the page and on the server, with no text after the cancel", async () => {
    const { page } = await openPage();
    await startBlock(page, "ask-question");
    await waitForIntermediateOutput(page, "ask-question");
    await block(page, "ask-question").getByRole("button", { name: "Cancel" }).click();
    await waitForStatus(page, "ask-question", "cancelled", 5_000);
    const atCancel = await outputText(page, "ask-question");
    const streamId = await block(page, "ask-question").getAttribute("data-stream-id");
    // Once the server's log ends with `cancelled`, no token of this stream can come any more.
    const log = await untilLogEndsWith(server.url, streamId!, "cancelled");
    expect(log.at(-1)).toMatchObject({ type: "cancelled", reason: "requested" });
    expect(await outputText(page, "ask-question")).toBe(atCancel);
    expect(await block(page, "ask-question").getByRole("button", { name: "Cancel" }).count()).toBe(0);
    await page.close();
  });

  it("picks the same stream up after a page reload (resume: true) and ends with the uninterrupted text", async () => {
    const { page, errors } = await openPage();
    await startBlock(page, "explain-eli10");
    await waitForStatus(page, "explain-eli10", "complete");
    const reference = await outputText(page, "explain-eli10");

    await startBlock(page, "explain-eli10");
    const partial = await waitForIntermediateOutput(page, "explain-eli10");
    const streamId = await block(page, "explain-eli10").getAttribute("data-stream-id");
    const starts: string[] = [];
    page.on("request", (request) => {
      if (request.method() === "POST") starts.push(request.url());
    });
    await page.reload();
    await page.getByRole("heading", { name: "Live AI Blocks" }).waitFor();
    // What was on screen before the reload is back at once, and the stream goes on from there.
    await expect.poll(async () => (await outputText(page, "explain-eli10")).trim().length).toBeGreaterThanOrEqual(partial.trim().length);
    await waitForStatus(page, "explain-eli10", "complete");
    expect(await block(page, "explain-eli10").getAttribute("data-stream-id")).toBe(streamId);
    expect(await outputText(page, "explain-eli10")).toBe(reference);
    expect(starts).toEqual([]);
    expect(errors).toEqual([]);
    await page.close();
  });

  it("lets the learner answer the quiz from the keyboard and see the explanation", async () => {
    const { page } = await openPage();
    await startBlock(page, "quiz");
    const quiz = block(page, "quiz");
    // The first question is answerable while the rest are still being written.
    const first = quiz.locator(".quiz-question").first();
    await first.waitFor({ timeout: 30_000 });
    expect(await quiz.getAttribute("data-status")).toBe("streaming");
    await first.getByRole("radio").first().focus();
    await page.keyboard.press("Space");
    await page.keyboard.press("Tab");
    await page.keyboard.press("Enter");
    const feedback = first.locator(".feedback");
    await feedback.waitFor();
    expect(await feedback.textContent()).toMatch(/Correct!|Not quite/);
    expect((await first.locator(".explanation").textContent())!.length).toBeGreaterThan(10);
    await waitForStatus(page, "quiz", "complete");
    await page.close();
  });

  it("works through the whole-response endpoint too (?transport=whole), with the same page", async () => {
    const { page, errors } = await openPage("?transport=whole");
    await startBlocks(page, BLOCKS);
    for (const name of BLOCKS) await waitForStatus(page, name, "complete");
    expect(await block(page, "quiz").locator(".quiz-question").count()).toBe(3);
    await block(page, "diagram").locator(".diagram-svg svg").waitFor({ timeout: 15_000 });
    expect((await outputText(page, "explain-eli10")).length).toBeGreaterThan(100);
    expect(errors).toEqual([]);
    await page.close();
  });

  it("draws the diagram as an SVG", async () => {
    const { page } = await openPage();
    await startBlock(page, "diagram");
    await waitForStatus(page, "diagram", "complete");
    // Mid-stream drawings (an early "flowchart TD" parses, and draws an empty chart) give way to
    // the final source's: await that one being drawn, not just any drawing.
    await page.waitForFunction(
      () => {
        const section = document.querySelector("section.block-diagram");
        const final = section?.querySelector(".diagram-source code")?.textContent;
        return final !== undefined && final !== "" && section?.querySelector(".diagram")?.getAttribute("data-drawn-source") === final;
      },
      null,
      { timeout: 15_000 },
    );
    const svg = block(page, "diagram").locator(".diagram-svg svg");
    expect(await svg.locator("text, foreignObject").count()).toBeGreaterThan(0);
    // Its text alternative says what it shows.
    expect(await block(page, "diagram").locator(".diagram-svg").getAttribute("aria-label")).toMatch(/^Flowchart: .+ leads to .+\.$/);
    await page.close();
  });
});

describe("a class asking the same question (coalescing on, as by default)", () => {
  let classServer: LiveAiServer;
  beforeAll(async () => {
    // The main server's pace: an answer takes seconds, so a second learner can ask while the
    // first's is still being written. Async moderation: output shows as it is written.
    classServer = await startLiveAi({ DEMO_TOKENS_PER_SECOND: "60", DEMO_FIRST_TOKEN_MS: "100", MODERATION_OUTPUT_MODE: "async" });
  });
  afterAll(async () => {
    await classServer?.stop();
  });

  /** A learner's tab. All of them are one anonymous principal (one address): one scope. */
  async function learner(): Promise<{ page: Page; errors: string[] }> {
    const page = await browser.context.newPage();
    const errors = watchErrors(page);
    await page.goto(`${classServer.url}/?transport=sse`);
    await page.getByRole("heading", { name: "Live AI Blocks" }).waitFor();
    return { page, errors };
  }
  const label = (page: Page) => block(page, "explain-eli10").locator(".shared-label");

  it("joins one generation while it is written, replays it once finished, and says so to all but the first learner", async () => {
    const [first, second] = [await learner(), await learner()];
    await startBlock(first.page, "explain-eli10");
    await waitForIntermediateOutput(first.page, "explain-eli10");
    await startBlock(second.page, "explain-eli10");
    await label(second.page).waitFor();
    expect(await label(second.page).textContent()).toBe("answered for your class");
    await waitForStatus(first.page, "explain-eli10", "complete");
    await waitForStatus(second.page, "explain-eli10", "complete");
    const answer = await outputText(first.page, "explain-eli10");
    expect(answer.length).toBeGreaterThan(100);
    expect(await outputText(second.page, "explain-eli10")).toBe(answer);
    // The first learner's answer is their own generation: no label.
    expect(await label(first.page).count()).toBe(0);

    const third = await learner();
    await startBlock(third.page, "explain-eli10");
    await label(third.page).waitFor();
    await waitForStatus(third.page, "explain-eli10", "complete");
    expect(await outputText(third.page, "explain-eli10")).toBe(answer);

    // On the server: one generation shared, one learner joined it, one got it replayed.
    const counts = await Promise.all(
      ["live_ai_shared_generations_total", "live_ai_coalesce_joins_total", "live_ai_coalesce_cache_hits_total"].map((name) =>
        metricSum(classServer.url, name, { block: "explain-eli10" }),
      ),
    );
    expect(counts).toEqual([1, 1, 1]);
    for (const { page, errors } of [first, second, third]) {
      expect(errors).toEqual([]);
      await page.close();
    }
  });
});
