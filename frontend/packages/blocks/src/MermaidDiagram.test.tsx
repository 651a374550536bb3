// The pure part of the diagram block: the Mermaid source inside a model's answer. Drawing with
// Mermaid needs a layout engine jsdom does not have, so the drawing itself is tested with real
// Mermaid in Chromium (e2e/diagram.e2e.test.ts).
import { describe, expect, it } from "vitest";
import { mermaidSource } from "./MermaidDiagram.js";

describe("mermaidSource", () => {
  it.each([
    ["```mermaid\nflowchart TD\n  A-->B\n```", "flowchart TD\n  A-->B"],
    ["~~~mermaid\nflowchart TD\n  A-->B", "flowchart TD\n  A-->B"],
    ["flowchart TD\n  A-->B\n", "flowchart TD\n  A-->B"],
  ])("strips a markdown fence around the source: %j", (text, expected) => {
    expect(mermaidSource(text)).toBe(expected);
  });
});
