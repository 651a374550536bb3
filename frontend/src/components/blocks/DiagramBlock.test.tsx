// The diagram block: draws versions that parse, keeps the last good drawing, shows a bad final source.
import { cleanup, render, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, describe, expect, it, vi } from "vitest";
import { StreamClient } from "../../ai/streamClient";
import { StreamClientProvider } from "../../ai/streamHooks";
import { FakeApi } from "../../ai/testing/fake-api";
import { streamEvents } from "../../ai/testing/events";
import { DiagramBlock } from "./DiagramBlock";
import { mermaidSource } from "./MermaidDiagram";

// A stand-in for Mermaid (which needs a real layout engine): a source parses when every
// line after the header is an `A-->B` edge; the "drawing" lists the edges it drew.
vi.mock("mermaid", () => {
  const valid = (source: string) =>
    source.startsWith("flowchart") && source.split("\n").slice(1).every((line) => /^\s*\w+-->\w+\s*$/.test(line));
  return {
    default: {
      initialize: vi.fn(),
      parse: vi.fn(async (source: string) => (valid(source) ? { diagramType: "flowchart" } : false)),
      render: vi.fn(async (_id: string, source: string) => ({
        svg: `<svg><text>${source.split("\n").slice(1).map((l) => l.trim()).join(" ")}</text></svg>`,
      })),
    },
  };
});

afterEach(cleanup);

describe("DiagramBlock", () => {
  it("draws each version that parses, keeps the last good drawing, and shows the source when the final one fails", async () => {
    const api = new FakeApi();
    render(
      <StreamClientProvider client={new StreamClient({ fetch: api.fetch })}>
        <DiagramBlock initialDescription="rain" />
      </StreamClientProvider>,
    );
    await userEvent.click(screen.getByRole("button", { name: "Draw" }));
    const response = await api.eventResponse(0);
    const e = streamEvents("s1");
    const drawing = () => document.querySelector(".diagram-svg svg")?.textContent;

    response.sendEvents(e.start("diagram"), e.chunk("flowchart TD\n  A-->B"));
    await waitFor(() => expect(drawing()).toBe("A-->B"));
    expect(document.querySelector(".diagram-live-source")?.textContent).toBe("flowchart TD\n  A-->B");

    response.sendEvents(e.chunk("\n  B-"));
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(drawing()).toBe("A-->B"); // incomplete: the last good drawing stays
    expect(screen.queryByRole("alert")).toBeNull();

    response.sendEvents(e.chunk("->C"));
    await waitFor(() => expect(drawing()).toBe("A-->B B-->C"));

    response.sendEvents(e.chunk("\n  C-"), e.complete({ kind: "flowchart", source: "flowchart TD\n  A-->B\n  B-->C\n  C-" }));
    const alert = await screen.findByRole("alert");
    expect(alert.textContent).toMatch(/could not be drawn/);
    expect(document.querySelector(".diagram-error code")?.textContent).toBe("flowchart TD\n  A-->B\n  B-->C\n  C-");
    expect(drawing()).toBe("A-->B B-->C");
  });

  it.each([
    ["```mermaid\nflowchart TD\n  A-->B\n```", "flowchart TD\n  A-->B"],
    ["~~~mermaid\nflowchart TD\n  A-->B", "flowchart TD\n  A-->B"],
    ["flowchart TD\n  A-->B\n", "flowchart TD\n  A-->B"],
  ])("strips a markdown fence around the source: %j", (text, expected) => {
    expect(mermaidSource(text)).toBe(expected);
  });
});
