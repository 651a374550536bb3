// The diagram block with real Mermaid in Chromium, fed a source the test writes token by token:
// each version that parses is drawn, an unfinished one leaves the last good drawing in place,
// and a final source that does not parse is shown as source with an alert. The block marks the
// source it last tried and the one it drew, so the test awaits Mermaid instead of sleeping.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Page } from "playwright-core";
import { block, launchBrowser, startBlock, watchErrors, type Browser } from "./browser";
import { DIST_DIR } from "./live-ai-server";
import { startScriptedServer, type ScriptedServer } from "./scripted-server";
import { streamEvents } from "../testing/events";

let server: ScriptedServer;
let browser: Browser;

beforeAll(async () => {
  server = await startScriptedServer(DIST_DIR);
  browser = await launchBrowser();
});

afterAll(async () => {
  await browser?.close();
  await server?.close();
});

const diagram = (page: Page) => block(page, "diagram").locator(".diagram");

async function untilTried(page: Page, source: string): Promise<void> {
  await page.waitForFunction(
    (wanted) => document.querySelector("section.block-diagram .diagram")?.getAttribute("data-tried-source") === wanted,
    source,
    { timeout: 15_000 },
  );
}

describe("DiagramBlock with real Mermaid", () => {
  it("draws each version that parses, keeps the last good drawing, and shows the source when the final one fails", async () => {
    const page = await browser.context.newPage();
    const errors = watchErrors(page);
    await page.goto(`${server.url}/?transport=sse`);
    await startBlock(page, "diagram");
    const stream = await server.stream(0);
    const e = streamEvents(stream.streamId);
    const drawnLabels = () => block(page, "diagram").locator(".diagram-svg svg").textContent();

    const first = "flowchart TD\n  A[Cloud]-->B[Rain]";
    stream.send(e.start("diagram"), e.chunk(first));
    await untilTried(page, first);
    expect(await diagram(page).getAttribute("data-drawn-source")).toBe(first);
    expect(await drawnLabels()).toMatch(/Cloud[\s\S]*Rain/);

    // An edge with no end yet: Mermaid cannot parse it, so the drawing of `first` stays.
    const unfinished = `${first}\n  B-->`;
    stream.send(e.chunk("\n  B-->"));
    await untilTried(page, unfinished);
    expect(await diagram(page).getAttribute("data-drawn-source")).toBe(first);
    expect(await block(page, "diagram").getByRole("alert").count()).toBe(0);

    const second = `${unfinished}C[Sea]`;
    stream.send(e.chunk("C[Sea]"));
    await untilTried(page, second);
    expect(await diagram(page).getAttribute("data-drawn-source")).toBe(second);
    expect(await drawnLabels()).toMatch(/Sea/);

    const broken = `${second}\n  C-->`;
    stream.send(e.chunk("\n  C-->"), e.complete({ kind: "flowchart", source: broken }));
    const alert = block(page, "diagram").getByRole("alert");
    await alert.waitFor({ timeout: 15_000 });
    expect(await alert.textContent()).toMatch(/could not be drawn/);
    expect(await block(page, "diagram").locator(".diagram-error code").textContent()).toBe(broken);
    expect(await diagram(page).getAttribute("data-drawn-source")).toBe(second);
    expect(errors).toEqual([]);
    await page.close();
  });
});
