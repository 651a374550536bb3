// A block whose answer is the class's (coalescing: a joined generation or a replayed one) says so
// with a small label, in words a host can replace.
import { cleanup, render, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, describe, expect, it } from "vitest";
import { StreamClient } from "@live-ai/client";
import { StreamClientProvider } from "@live-ai/react";
import { FakeApi } from "../../../testing/fake-api.js";
import { SAMPLE_QUESTION, streamEvents } from "../../../testing/events.js";
import { BlockLabelsProvider } from "./BlockLabelsProvider.js";
import { ExplainELI10Block } from "./ExplainELI10Block.js";
import { QuizBlock } from "./QuizBlock.js";

function withClient(api: FakeApi, ui: React.ReactElement) {
  const client = new StreamClient({ fetch: api.fetch, backoff: { initialMs: 1, maxMs: 1 } });
  return render(<StreamClientProvider client={client}>{ui}</StreamClientProvider>);
}

const label = () => document.querySelector(".shared-label");

afterEach(cleanup);

describe("the label of an answer written for the class", () => {
  it("shows on a shared answer while it streams and after, and goes with the next start that is the learner's own", async () => {
    const api = new FakeApi();
    withClient(api, <ExplainELI10Block initialTopic="rain" />);
    expect(label()).toBeNull();
    await userEvent.click(screen.getByRole("button", { name: "Explain" }));
    const joined = streamEvents("s1");
    const response = await api.eventResponse(0);
    response.sendEvents(joined.start("explain-eli10", "demo", undefined, "shared"), joined.chunk("Rain "));
    await waitFor(() => expect(label()?.textContent).toBe("answered for your class"));
    // Inside the block's header, read with its title: no live region of its own.
    expect(label()!.closest("header")).toBe(screen.getByRole("heading", { name: "Explain like I am 10" }).closest("header"));
    expect(label()!.closest("[aria-live], [role=status], [role=alert]")).toBeNull();
    response.sendEvents(joined.chunk("falls."), joined.complete({ markdown: "Rain falls." }));
    await waitFor(() => expect(screen.getByTestId("status").textContent).toBe("Done"));
    expect(label()?.textContent).toBe("answered for your class");

    await userEvent.click(screen.getByRole("button", { name: "Explain" }));
    const own = streamEvents("s2");
    (await api.eventResponse(1)).sendEvents(own.start("explain-eli10"), own.chunk("Rain "));
    await waitFor(() => expect(document.querySelector(".output")!.textContent).toBe("Rain \n"));
    expect(label()).toBeNull();
  });

  it("shows on a replayed (cached) answer too, on every block", async () => {
    const api = new FakeApi();
    withClient(api, <QuizBlock initialTopic="volcanoes" />);
    await userEvent.click(screen.getByRole("button", { name: "Make quiz" }));
    const replayed = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(replayed.start("quiz", "demo", undefined, "cached"), replayed.part(0, SAMPLE_QUESTION), replayed.complete({ questions: [SAMPLE_QUESTION] }));
    await waitFor(() => expect(screen.getByTestId("status").textContent).toBe("Done"));
    expect(label()?.textContent).toBe("answered for your class");
  });

  it("reads as the host words it: a BlockLabelsProvider for every block below, a block's labels prop over it", async () => {
    const api = new FakeApi();
    withClient(
      api,
      <BlockLabelsProvider labels={{ sharedAnswer: "für deine Klasse beantwortet" }}>
        <ExplainELI10Block initialTopic="Regen" />
        <QuizBlock initialTopic="Vulkane" labels={{ sharedAnswer: "Klassenantwort" }} />
      </BlockLabelsProvider>,
    );
    await userEvent.click(screen.getByRole("button", { name: "Explain" }));
    await userEvent.click(screen.getByRole("button", { name: "Make quiz" }));
    const explain = streamEvents("s1");
    const quiz = streamEvents("s2");
    (await api.eventResponse(0)).sendEvents(explain.start("explain-eli10", "demo", undefined, "shared"));
    (await api.eventResponse(1)).sendEvents(quiz.start("quiz", "demo", undefined, "cached"));
    await waitFor(() => expect(document.querySelectorAll(".shared-label")).toHaveLength(2));
    expect(document.querySelector(".block-explain-eli10 .shared-label")!.textContent).toBe("für deine Klasse beantwortet");
    expect(document.querySelector(".block-quiz .shared-label")!.textContent).toBe("Klassenantwort");
  });
});
