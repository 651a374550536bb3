// Incremental markdown splitting and the sanitizing renderer.
import { describe, expect, it } from "vitest";
import { MarkdownBlockSplitter } from "./markdown-blocks.js";
import { renderMarkdown } from "./render-markdown.js";

describe("MarkdownBlockSplitter", () => {
  it("splits at blank lines and keeps the unfinished block as the tail", () => {
    const splitter = new MarkdownBlockSplitter();
    expect(splitter.update("# Title\n\nFirst para")).toEqual({ blocks: ["# Title\n"], tail: "First para" });
    expect(splitter.update("# Title\n\nFirst paragraph.\n\n- a\n- b")).toEqual({
      blocks: ["# Title\n", "First paragraph.\n"],
      tail: "- a\n- b",
    });
  });

  it("gives the same split token by token as all at once", () => {
    const text = "Intro line\nmore\n\n```js\nconst a = 1;\n\nconst b = 2;\n```\n\n1. one\n2. two\n\nEnd";
    const whole = new MarkdownBlockSplitter().update(text);
    const incremental = new MarkdownBlockSplitter();
    let last = incremental.update("");
    for (let i = 1; i <= text.length; i++) last = incremental.update(text.slice(0, i));
    expect(last).toEqual(whole);
    expect(whole.blocks).toEqual(["Intro line\nmore\n", "```js\nconst a = 1;\n\nconst b = 2;\n```\n", "1. one\n2. two\n"]);
    expect(whole.tail).toBe("End");
  });

  it("does not split inside a fenced code block until it closes", () => {
    const splitter = new MarkdownBlockSplitter();
    expect(splitter.update("~~~~\na\n\n~~~\nb\n\n").blocks).toEqual([]);
    expect(splitter.update("~~~~\na\n\n~~~\nb\n\n~~~~\n\nc").blocks).toEqual(["~~~~\na\n\n~~~\nb\n\n~~~~\n"]);
  });

  it("keeps finished blocks identical between updates (so they are not re-rendered)", () => {
    const splitter = new MarkdownBlockSplitter();
    const first = splitter.update("a\n\nb");
    const second = splitter.update("a\n\nbc");
    expect(second.blocks).toBe(first.blocks);
  });

  it("starts over when the text is replaced", () => {
    const splitter = new MarkdownBlockSplitter();
    splitter.update("old\n\nstuff");
    expect(splitter.update("new")).toEqual({ blocks: [], tail: "new" });
  });
});

describe("renderMarkdown", () => {
  it("renders markdown", () => {
    expect(renderMarkdown("**bold** and `code`")).toBe("<p><strong>bold</strong> and <code>code</code></p>\n");
  });

  it.each([
    ["<script>alert(1)</script>", "<script"],
    ['<img src=x onerror="alert(1)">', "<img"],
    ["[click](javascript:alert(1))", "javascript:"],
  ])("never lets model output inject markup: %s", (source, forbidden) => {
    expect(renderMarkdown(source)).not.toContain(forbidden);
  });

  it("shows raw HTML as text", () => {
    expect(renderMarkdown("a <b>bold</b> claim")).toContain("&lt;b&gt;bold&lt;/b&gt;");
  });
});
