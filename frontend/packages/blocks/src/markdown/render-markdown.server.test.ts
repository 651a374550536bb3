// @vitest-environment node
// renderMarkdown where there is no DOM (server rendering): it renders, and model output still
// cannot inject markup or script — without DOMPurify, which needs a DOM.
import { describe, expect, it } from "vitest";
import { isSafeUrl, renderMarkdown } from "./render-markdown.js";

describe("renderMarkdown without a DOM", () => {
  it("runs where there is no window", () => {
    expect(typeof globalThis.window).toBe("undefined");
    expect(renderMarkdown("**bold** and [a link](https://example.org)")).toBe('<p><strong>bold</strong> and <a href="https://example.org">a link</a></p>\n');
  });

  it.each([
    ["<script>alert(1)</script>", "<script"],
    ['<img src=x onerror="alert(1)">', "<img"],
    ["[click](javascript:alert(1))", "javascript:"],
    ["[click](JaVa&#x09;ScRiPt:alert(1))", "href"],
    ["[click](&#x20;javascript:alert(1))", "href"],
    ["![pic](javascript:alert(1))", "<img"],
    ["[data](data:text/html;base64,PHNjcmlwdD4=)", "data:"],
    ["[click](javascript&colon;alert(1))", "href"],
    ["[click](&#106;avascript:alert(1))", "href"],
    ["<javascript:alert(1)>", "href"],
  ])("never lets model output inject markup: %s", (source, forbidden) => {
    expect(renderMarkdown(source)).not.toContain(forbidden);
  });

  it("keeps the text of a link it refuses", () => {
    expect(renderMarkdown("[click me](javascript:alert(1))")).toBe("<p>click me</p>\n");
  });

  it.each([
    ["https://example.org", true],
    ["/relative/path", true],
    ["#anchor", true],
    ["mailto:a@example.org", true],
    ["vbscript:x", false],
    ["file:///etc/passwd", false],
    ["java&#x0A;script:x", false],
    ["a/b:c", true],
  ])("judges %s safe: %s", (href, safe) => {
    expect(isSafeUrl(href)).toBe(safe);
  });
});
