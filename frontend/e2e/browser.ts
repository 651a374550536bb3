// Launches Debian's Chromium through playwright-core (playwright's own browser download is
// not available here) with a fresh profile, and offers helpers to drive the demo page.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium, type BrowserContext, type Locator, type Page } from "playwright-core";

export const CHROMIUM_BIN = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";

const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export interface Browser {
  context: BrowserContext;
  close(): Promise<void>;
}

export async function launchBrowser(): Promise<Browser> {
  const profile = await mkdtemp(join(tmpdir(), "live-ai-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM_BIN,
    headless: true,
    args: ARGS,
    viewport: { width: 1280, height: 1000 },
  });
  return {
    context,
    close: async () => {
      await context.close();
      await rm(profile, { recursive: true, force: true });
    },
  };
}

export const BLOCK_BUTTONS = {
  "ask-question": "Ask",
  "explain-eli10": "Explain",
  quiz: "Make quiz",
  diagram: "Draw",
} as const;
export type BlockName = keyof typeof BLOCK_BUTTONS;

/** The demo page's section for one block. */
export function block(page: Page, name: BlockName): Locator {
  return page.locator(`section.block-${name}`);
}

export async function startBlock(page: Page, name: BlockName): Promise<void> {
  await block(page, name).getByRole("button", { name: BLOCK_BUTTONS[name], exact: true }).click();
}

/**
 * Starts several blocks in one go. A pointer click per block would race the layout: the
 * first blocks' growing output moves the buttons of the blocks below between aim and click.
 */
export async function startBlocks(page: Page, names: readonly BlockName[]): Promise<void> {
  await page.evaluate((selectors) => {
    for (const selector of selectors) document.querySelector<HTMLButtonElement>(selector)!.click();
  }, names.map((name) => `section.block-${name} form button[type=submit]`));
}

export async function waitForStatus(page: Page, name: BlockName, status: string, timeout = 30_000): Promise<void> {
  await page.waitForFunction(
    ([selector, wanted]) => document.querySelector(selector)?.getAttribute("data-status") === wanted,
    [`section.block-${name}`, status] as const,
    { timeout },
  );
}

/** Where each block shows what the model has written so far. */
const PARTIAL_OUTPUT: Record<BlockName, string> = {
  "ask-question": ".output .markdown",
  "explain-eli10": ".output .markdown",
  quiz: ".output .quiz-questions",
  // Until the diagram first parses, its source is shown as it arrives.
  diagram: ".diagram-live-source, .diagram-svg",
};

/** Resolves once the block shows model output while it is still streaming (not just at the end). */
export async function waitForIntermediateOutput(page: Page, name: BlockName): Promise<string> {
  const handle = await page.waitForFunction(
    ([sectionSelector, outputSelector]) => {
      const section = document.querySelector(sectionSelector);
      const text = section?.querySelector(outputSelector)?.textContent ?? "";
      return section?.getAttribute("data-status") === "streaming" && text.trim().length > 0 ? text : false;
    },
    [`section.block-${name}`, PARTIAL_OUTPUT[name]] as const,
    { timeout: 30_000, polling: 10 },
  );
  return (await handle.jsonValue()) as string;
}

export async function outputText(page: Page, name: BlockName): Promise<string> {
  return (await block(page, name).locator(".output").textContent()) ?? "";
}

/** Collects page errors so a test can assert the page never threw. */
export function watchErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on("pageerror", (error) => errors.push(error.message));
  page.on("console", (message) => {
    if (message.type() === "error" && !/Failed to load resource|ERR_/.test(message.text())) errors.push(message.text());
  });
  return errors;
}

/** Starts recording every status the block passes through (read back with `statusHistory`). */
export async function recordStatuses(page: Page, name: BlockName): Promise<void> {
  await page.evaluate((selector) => {
    const section = document.querySelector(selector)!;
    const history: string[] = [];
    (window as unknown as { __statusHistory: Record<string, string[]> }).__statusHistory ??= {};
    (window as unknown as { __statusHistory: Record<string, string[]> }).__statusHistory[selector] = history;
    new MutationObserver(() => {
      const status = section.getAttribute("data-status") ?? "";
      if (history.at(-1) !== status) history.push(status);
    }).observe(section, { attributes: true, attributeFilter: ["data-status"] });
  }, `section.block-${name}`);
}

export async function statusHistory(page: Page, name: BlockName): Promise<string[]> {
  return page.evaluate(
    (selector) => (window as unknown as { __statusHistory: Record<string, string[]> }).__statusHistory[selector] ?? [],
    `section.block-${name}`,
  );
}
