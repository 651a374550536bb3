// Child safety in the browser: the real `live-ai` binary, its demo model made to write a flagged
// sentence mid-answer (DEMO_INJECT_TEXT, a test knob), the local word filter, Chromium. Async
// moderation shows the text, then retracts it: the block removes what it showed and says so kindly.
// Buffered moderation never lets the flagged words reach the page at all, and a flagged question
// gets its own kind message.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Page } from "playwright-core";
import { block, launchBrowser, startBlock, waitForIntermediateOutput, waitForStatus, watchErrors, type Browser } from "./browser";
import { startLiveAi, type LiveAiServer } from "./live-ai-server";

const FLAGGED = "You are a worthless piece of shit.";
const FLAGGED_WORDS = ["worthless", "shit"];

let asyncServer: LiveAiServer;
let bufferedServer: LiveAiServer;
let browser: Browser;

beforeAll(async () => {
  const injecting = { DEMO_INJECT_TEXT: FLAGGED, DEMO_INJECT_AFTER_TOKENS: "40", DEMO_FIRST_TOKEN_MS: "100" };
  [asyncServer, bufferedServer, browser] = await Promise.all([
    // Slow enough that the text is on screen for a while before its window is judged.
    startLiveAi({ ...injecting, DEMO_TOKENS_PER_SECOND: "40", MODERATION_OUTPUT_MODE: "async", MODERATION_WINDOW_CHARS: "400" }),
    startLiveAi({ ...injecting, DEMO_TOKENS_PER_SECOND: "200" }),
    launchBrowser(),
  ]);
});

afterAll(async () => {
  await browser?.close();
  await Promise.all([asyncServer?.stop(), bufferedServer?.stop()]);
});

/** Records every text the block's output ever held, so a test can tell what was shown at any time. */
async function recordOutput(page: Page): Promise<void> {
  await page.evaluate(() => {
    const seen: string[] = [];
    (window as unknown as { __outputSeen: string[] }).__outputSeen = seen;
    const section = document.querySelector("section.block-explain-eli10")!;
    new MutationObserver(() => seen.push(section.querySelector(".output")?.textContent ?? "")).observe(section, {
      subtree: true,
      childList: true,
      characterData: true,
    });
  });
}

const outputSeen = (page: Page) => page.evaluate(() => (window as unknown as { __outputSeen: string[] }).__outputSeen.join("\n"));

describe("moderation in the blocks", () => {
  it("async: the text shown is removed when moderation retracts it, and the learner is told kindly", async () => {
    const page = await browser.context.newPage();
    const errors = watchErrors(page);
    await page.goto(`${asyncServer.url}/?transport=sse`);
    await recordOutput(page);
    await startBlock(page, "explain-eli10");
    expect((await waitForIntermediateOutput(page, "explain-eli10")).length).toBeGreaterThan(0);
    await waitForStatus(page, "explain-eli10", "error");
    const section = block(page, "explain-eli10");
    expect(await section.getByRole("alert").textContent()).toBe(
      "We took that answer away because it wasn't right for this lesson. Try asking in a different way.",
    );
    // It was on screen, and now nothing of the answer is.
    expect(await outputSeen(page)).toContain("worthless");
    const output = (await section.locator(".output .markdown").count()) === 0 ? "" : await section.locator(".output .markdown").textContent();
    expect(output?.trim() ?? "").toBe("");
    for (const word of FLAGGED_WORDS) expect(await section.textContent()).not.toContain(word);
    expect(errors).toEqual([]);
    await page.close();
  });

  it("buffered: the flagged words never reach the page, and the answer stops with a kind message", async () => {
    const page = await browser.context.newPage();
    await page.goto(`${bufferedServer.url}/?transport=websocket`);
    await recordOutput(page);
    await startBlock(page, "explain-eli10");
    await waitForStatus(page, "explain-eli10", "error");
    const section = block(page, "explain-eli10");
    expect(await section.getByRole("alert").textContent()).toBe(
      "We stopped that answer because it wasn't right for this lesson. Try asking in a different way.",
    );
    const everShown = await outputSeen(page);
    expect(everShown.trim().length).toBeGreaterThan(0);
    for (const word of FLAGGED_WORDS) expect(everShown).not.toContain(word);
    await page.close();
  });

  it("a flagged question is answered with a kind message and no answer", async () => {
    const page = await browser.context.newPage();
    await page.goto(`${bufferedServer.url}/?transport=sse`);
    const section = block(page, "explain-eli10");
    await section.locator("input").fill("f u c k this");
    await startBlock(page, "explain-eli10");
    await waitForStatus(page, "explain-eli10", "error");
    expect(await section.getByRole("alert").textContent()).toBe("Let's ask that in a different way — this question can't be answered here.");
    expect(await section.getByRole("button", { name: "Retry" }).count()).toBe(0);
    await page.close();
  });
});
