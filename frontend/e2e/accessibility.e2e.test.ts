// WCAG 2.2 AA on the built demo page in Chromium, against the real live-ai: axe-core finds no
// violation idle, streaming, complete, with a quiz answered, failed and over a limit; and what
// axe cannot see is measured here: the output is aria-busy while written and its screen-reader
// announcements are whole paragraphs, never tokens; a limit's countdown ticks outside the
// alert; the focus outline and input borders reach 3:1 against the block (1.4.11); the status
// pulse stops for learners who asked for less motion.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Page } from "playwright-core";
import { block, launchBrowser, startBlock, startBlocks, waitForIntermediateOutput, waitForStatus, watchErrors, type BlockName, type Browser } from "./browser";
import { startLiveAi, type LiveAiServer } from "./live-ai-server";

const BLOCKS: BlockName[] = ["ask-question", "explain-eli10", "quiz", "diagram"];
/** The rules of WCAG 2.0–2.2, levels A and AA. */
const WCAG_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"];

let axeSource: string;
let browser: Browser;

beforeAll(async () => {
  axeSource = await readFile(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
  browser = await launchBrowser();
});

afterAll(async () => {
  await browser?.close();
});

interface Violation {
  id: string;
  help: string;
  nodes: Array<{ target: string[] }>;
}

/** axe-core's WCAG A/AA violations on the page as it is now, each as "rule: selectors". */
async function violations(page: Page): Promise<string[]> {
  // Evaluated through the DevTools protocol: the page's CSP, which allows only its own scripts, does not apply.
  if (!(await page.evaluate(() => "axe" in window))) await page.evaluate(axeSource);
  const { found, passed } = (await page.evaluate(
    (tags) =>
      (window as unknown as { axe: { run(context: Document, options: object): Promise<{ violations: unknown[]; passes: unknown[] }> } }).axe
        .run(document, { runOnly: { type: "tag", values: tags } })
        .then((result) => ({ found: result.violations, passed: result.passes.length })),
    WCAG_AA,
  )) as { found: Violation[]; passed: number };
  // axe did look: a page of four blocks passes dozens of rules (contrast, names, labels, ARIA…).
  expect(passed).toBeGreaterThan(10);
  return found.map((violation) => `${violation.id}: ${violation.nodes.map((node) => node.target.join(" ")).join(", ")}`);
}

async function openPage(server: LiveAiServer): Promise<{ page: Page; errors: string[] }> {
  const page = await browser.context.newPage();
  const errors = watchErrors(page);
  await page.goto(server.url);
  await page.getByRole("heading", { name: "Live AI Blocks" }).waitFor();
  return { page, errors };
}

/** WCAG's contrast ratio of two `rgb(…)` colours. */
function contrast(a: string, b: string): number {
  const luminance = (color: string) => {
    const [r, g, b] = color.match(/\d+(\.\d+)?/g)!.slice(0, 3).map((channel) => {
      const c = Number(channel) / 255;
      return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r! + 0.7152 * g! + 0.0722 * b!;
  };
  const [light, dark] = [luminance(a), luminance(b)].sort((x, y) => y - x);
  return (light! + 0.05) / (dark! + 0.05);
}

describe("the demo page, streaming normally", () => {
  let server: LiveAiServer;
  beforeAll(async () => {
    // Slow enough to be seen streaming; a paragraph every second or so.
    // Async moderation, so the page is checked while output arrives token by token.
    // No coalescing: both tests ask the same, and the second must watch its answer being written,
    // not a replay of the first's (which arrives at once).
    server = await startLiveAi({ DEMO_TOKENS_PER_SECOND: "80", DEMO_FIRST_TOKEN_MS: "100", MODERATION_OUTPUT_MODE: "async", COALESCE: "off" });
  });
  afterAll(async () => {
    await server?.stop();
  });

  it("has no WCAG 2.2 A/AA violation idle, streaming, complete, or with a quiz answered", async () => {
    const { page, errors } = await openPage(server);
    expect(await violations(page)).toEqual([]);

    await startBlocks(page, BLOCKS);
    await Promise.all(BLOCKS.map((name) => waitForIntermediateOutput(page, name)));
    expect(await violations(page)).toEqual([]);

    for (const name of BLOCKS) await waitForStatus(page, name, "complete");
    await block(page, "diagram").locator(".diagram-svg svg").waitFor({ timeout: 15_000 });
    expect(await violations(page)).toEqual([]);

    const question = block(page, "quiz").locator(".quiz-question").first();
    await question.getByRole("radio").first().check();
    await question.getByRole("button", { name: "Check answer" }).click();
    await question.locator(".feedback").waitFor();
    expect(await violations(page)).toEqual([]);
    expect(errors).toEqual([]);
    await page.close();
  });

  it("marks the output busy while it is written and announces whole paragraphs, not tokens", async () => {
    const { page } = await openPage(server);
    await page.evaluate(() => {
      const announcer = document.querySelector('section.block-explain-eli10 [data-testid="announcer"]')!;
      const spoken: string[] = [];
      (window as unknown as { spoken: string[] }).spoken = spoken;
      new MutationObserver(() => spoken.push(announcer.textContent ?? "")).observe(announcer, { childList: true, characterData: true, subtree: true });
    });
    await startBlock(page, "explain-eli10");
    await waitForIntermediateOutput(page, "explain-eli10");
    const output = block(page, "explain-eli10").locator(".output");
    expect(await output.getAttribute("aria-busy")).toBe("true");
    // Nothing that changes per token sits in a live region.
    expect(await output.evaluate((element) => element.closest("[aria-live], [role=status], [role=alert], [role=log]"))).toBeNull();
    await waitForStatus(page, "explain-eli10", "complete");
    expect(await output.getAttribute("aria-busy")).toBe("false");
    const spoken = await page.evaluate(() => (window as unknown as { spoken: string[] }).spoken.filter((text) => text !== ""));
    const paragraphs = await output.locator(".md-block").evaluateAll((elements) => elements.map((element) => (element.textContent ?? "").replace(/\s+/g, " ").trim()));
    // Each paragraph read once, whole, in order: as many announcements as paragraphs, not tokens.
    expect(spoken.join(" ").replace(/\s+/g, " ")).toBe(paragraphs.join(" "));
    expect(spoken.length).toBeLessThanOrEqual(paragraphs.length);
    await page.close();
  });

  it("draws the focus outline and the input borders at 3:1 or more against the block (WCAG 1.4.11)", async () => {
    const { page } = await openPage(server);
    const section = block(page, "explain-eli10");
    const background = await section.evaluate((element) => getComputedStyle(element).backgroundColor);
    const input = section.getByRole("textbox");
    const border = await input.evaluate((element) => getComputedStyle(element).borderTopColor);
    expect(contrast(border, background)).toBeGreaterThanOrEqual(3);
    // Keyboard focus (focus-visible) on the block's button.
    await input.focus();
    await page.keyboard.press("Tab");
    const focused = await page.evaluate(() => {
      const element = document.activeElement!;
      const style = getComputedStyle(element);
      return { text: element.textContent, outline: style.outlineColor, width: style.outlineWidth, style: style.outlineStyle };
    });
    expect(focused.text).toBe("Explain");
    expect(focused.style).not.toBe("none");
    expect(parseFloat(focused.width)).toBeGreaterThanOrEqual(2);
    expect(contrast(focused.outline, background)).toBeGreaterThanOrEqual(3);
    await page.close();
  });

  it("honours prefers-reduced-motion: the live status does not pulse", async () => {
    const { page } = await openPage(server);
    const pulse = () => block(page, "explain-eli10").locator(".status").evaluate((element) => getComputedStyle(element, "::before").animationName);
    await startBlock(page, "explain-eli10");
    await waitForIntermediateOutput(page, "explain-eli10");
    expect(await pulse()).toBe("live-ai-pulse");
    await page.emulateMedia({ reducedMotion: "reduce" });
    expect(await pulse()).toBe("none");
    await page.close();
  });
});

describe("the demo page, failing", () => {
  let server: LiveAiServer;
  beforeAll(async () => {
    // Every generation fails after a few tokens, and a fifth start in a minute is over the limit.
    server = await startLiveAi({ DEMO_TOKENS_PER_SECOND: "200", DEMO_FIRST_TOKEN_MS: "20", DEMO_FAIL_AFTER_TOKENS: "3", LIMIT_STARTS_PER_MINUTE: "4" });
  });
  afterAll(async () => {
    await server?.stop();
  });

  it("has no WCAG 2.2 A/AA violation with failed blocks, and a limit's countdown ticks outside the alert", async () => {
    const { page } = await openPage(server);
    await startBlocks(page, BLOCKS);
    for (const name of BLOCKS) await waitForStatus(page, name, "error");
    expect(await violations(page)).toEqual([]);

    // A fifth start in the minute: refused with when to try again, counted down.
    await block(page, "quiz").getByRole("button", { name: "Retry" }).click();
    const notice = block(page, "quiz").locator(".error[data-code=rate_limited]");
    await notice.waitFor();
    expect(await violations(page)).toEqual([]);
    const countdown = notice.locator(".error-text");
    const alert = notice.getByRole("alert");
    const announced = await alert.textContent();
    expect(announced).toMatch(/^Too many requests — try again in \d+ s\.$/);
    const first = await countdown.textContent();
    await page.waitForFunction((before) => document.querySelector("section.block-quiz .error .error-text")?.textContent !== before, first, { timeout: 5_000 });
    expect(await countdown.textContent()).toMatch(/try again in \d+ s/);
    expect(await countdown.evaluate((element) => element.closest("[role=alert], [role=status], [aria-live]"))).toBeNull();
    // The alert keeps the sentence it was announced with: nothing in it changes each second.
    expect(await alert.textContent()).toBe(announced);
    await page.close();
  });
});
