// The text and quiz blocks as a learner uses them: live markdown, status, focus, reconnect, retry, quiz answers.
import { act, cleanup, fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, describe, expect, it } from "vitest";
import { StreamClient } from "@live-ai/client";
import { StreamClientProvider, useAIBlockStreaming } from "@live-ai/react";
import { FakeApi } from "../../../testing/fake-api.js";
import { SAMPLE_QUESTION, streamEvents } from "../../../testing/events.js";
import { AskQuestionBlock } from "./AskQuestionBlock.js";
import { QuizBlock } from "./QuizBlock.js";

function withClient(api: FakeApi, ui: React.ReactElement, backoffMs = 1) {
  const client = new StreamClient({ fetch: api.fetch, backoff: { initialMs: backoffMs, maxMs: backoffMs } });
  return render(<StreamClientProvider client={client}>{ui}</StreamClientProvider>);
}

afterEach(cleanup);

describe("AskQuestionBlock", () => {
  it("streams markdown live with status, demo label and a cancel button", async () => {
    const api = new FakeApi();
    withClient(api, <AskQuestionBlock initialQuestion="Why is the sky blue?" />);
    await userEvent.click(screen.getByRole("button", { name: "Ask" }));
    const response = await api.eventResponse(0);
    const e = streamEvents("s1");
    response.sendEvents(e.start("ask-question"), e.chunk("The **sky** "));
    await waitFor(() => expect(screen.getByText("sky").tagName).toBe("STRONG"));
    expect(screen.getByTestId("status").textContent).toBe("Streaming…");
    expect(screen.getByText("demo model")).toBeTruthy();
    expect(screen.getByRole("button", { name: "Cancel" })).toBeTruthy();
    const output = document.querySelector(".output")!;
    expect(output.textContent).toContain("The sky");
    response.sendEvents(e.chunk("scatters light.\n\nBlue wins."), e.complete({ markdown: "x" }));
    await waitFor(() => expect(screen.getByTestId("status").textContent).toBe("Done"));
    expect(screen.queryByRole("button", { name: "Cancel" })).toBeNull();
    expect(output.querySelectorAll("p")).toHaveLength(2);
  });

  it("keeps keyboard focus in the block: Enter to ask, Enter to cancel, focus back on Ask", async () => {
    const api = new FakeApi();
    withClient(api, <AskQuestionBlock initialQuestion="q" />);
    const user = userEvent.setup();
    screen.getByRole("button", { name: "Ask" }).focus();
    await user.keyboard("{Enter}");
    await waitFor(() => expect(document.activeElement).toBe(screen.getByRole("button", { name: "Cancel" })));
    await user.keyboard("{Enter}");
    await waitFor(() => expect(screen.getByTestId("status").textContent).toBe("Cancelled"));
    expect(document.activeElement).toBe(screen.getByRole("button", { name: "Ask" }));
  });

  it("shows reconnecting, then recovers by itself", async () => {
    const api = new FakeApi();
    // A backoff long enough for the reconnecting state to be on screen for a few frames.
    withClient(api, <AskQuestionBlock initialQuestion="q" />, 300);
    await userEvent.click(screen.getByRole("button", { name: "Ask" }));
    const first = await api.eventResponse(0);
    const e = streamEvents("s1");
    first.sendEvents(e.start("ask-question"), e.chunk("Hello "));
    await waitFor(() => expect(screen.getByTestId("status").textContent).toBe("Streaming…"));
    first.drop();
    await waitFor(() => expect(screen.getByText(/reconnecting…/)).toBeTruthy());
    const second = await api.eventResponse(1);
    second.sendEvents(e.chunk("world"), e.complete());
    await waitFor(() => expect(screen.getByTestId("status").textContent).toBe("Done"));
    expect(document.querySelector(".output")!.textContent).toBe("Hello world\n");
  });

  it("shows the error and retries", async () => {
    const api = new FakeApi();
    withClient(api, <AskQuestionBlock initialQuestion="q" />);
    await userEvent.click(screen.getByRole("button", { name: "Ask" }));
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start("ask-question"), e.error("provider_error", true));
    const alert = await screen.findByRole("alert");
    expect(alert.textContent).toContain("provider_error happened");
    await userEvent.click(within(alert.closest(".error")!).getByRole("button", { name: "Retry" }));
    const e2 = streamEvents("s2");
    (await api.eventResponse(1)).sendEvents(e2.start("ask-question"), e2.chunk("fine"), e2.complete());
    await waitFor(() => expect(screen.getByTestId("status").textContent).toBe("Done"));
    expect(screen.queryByRole("alert")).toBeNull();
  });
});

describe("a detached block", () => {
  it("says it is paused, lets the learner ask again, and resumes the same stream", async () => {
    const api = new FakeApi();
    function Host() {
      const stream = useAIBlockStreaming("ask-question");
      return (
        <>
          <button onClick={stream.detach}>leave</button>
          <AskQuestionBlock stream={stream} initialQuestion="q" />
        </>
      );
    }
    withClient(api, <Host />);
    await userEvent.click(screen.getByRole("button", { name: "Ask" }));
    const e = streamEvents("s1");
    const log = [e.start("ask-question"), e.chunk("Hello "), e.chunk("world"), e.complete()];
    (await api.eventResponse(0)).sendEvents(log[0]!, log[1]!);
    await waitFor(() => expect(document.querySelector(".output")!.textContent).toContain("Hello"));
    expect(screen.getByRole("button", { name: "Ask" })).toHaveProperty("disabled", true);
    await userEvent.click(screen.getByRole("button", { name: "leave" }));
    await waitFor(() => expect(screen.getByTestId("status").textContent).toBe("Paused"));
    expect(screen.getByRole("button", { name: "Ask" })).toHaveProperty("disabled", false);
    expect(screen.queryByRole("button", { name: "Cancel" })).toBeNull();
    await userEvent.click(screen.getByRole("button", { name: "Resume" }));
    const resumed = await api.eventResponse(1);
    expect(resumed.request.url.pathname).toBe("/api/streams/s1/events");
    resumed.sendEvents(...log.slice(1));
    await waitFor(() => expect(screen.getByTestId("status").textContent).toBe("Done"));
    expect(document.querySelector(".output")!.textContent).toBe("Hello world\n");
    expect(api.requestsTo("POST", /^\/api\/streams$/)).toHaveLength(1);
  });
});

describe("AskQuestionBlock for screen readers", () => {
  it("marks the output busy while it is written and reads out finished paragraphs, never the text token by token", async () => {
    const api = new FakeApi();
    withClient(api, <AskQuestionBlock initialQuestion="Why is the sky blue?" />);
    await userEvent.click(screen.getByRole("button", { name: "Ask" }));
    const response = await api.eventResponse(0);
    const e = streamEvents("s1");
    const output = document.querySelector(".output")!;
    const announcer = screen.getByTestId("announcer");
    // The output is no live region (or inside one): only the announcer speaks.
    expect(output.closest("[aria-live]")).toBeNull();
    expect(announcer.getAttribute("aria-live")).toBe("polite");
    const spoken: string[] = [];
    new MutationObserver(() => spoken.push(announcer.textContent ?? "")).observe(announcer, { childList: true, characterData: true, subtree: true });

    response.sendEvents(e.start("ask-question"), e.chunk("The **sky** "), e.chunk("scatters "));
    await waitFor(() => expect(output.textContent).toContain("The sky scatters"));
    expect(output.getAttribute("aria-busy")).toBe("true");
    expect(announcer.textContent).toBe("");
    response.sendEvents(e.chunk("light.\n\nBlue "), e.chunk("wins."));
    await waitFor(() => expect(output.textContent).toContain("Blue wins."));
    expect(announcer.textContent).toBe("The sky scatters light.");
    response.sendEvents(e.complete({ markdown: "x" }));
    await waitFor(() => expect(screen.getByTestId("status").textContent).toBe("Done"));
    expect(output.getAttribute("aria-busy")).toBe("false");
    expect(announcer.textContent).toBe("Blue wins.");
    expect(spoken).toEqual(["The sky scatters light.", "Blue wins."]);
  });

  it("gives two blocks of one type their own ids, so each section is named by its own heading", async () => {
    withClient(
      new FakeApi(),
      <>
        <AskQuestionBlock initialQuestion="one" />
        <AskQuestionBlock initialQuestion="two" />
      </>,
    );
    const sections = [...document.querySelectorAll("section")];
    const ids = [...document.querySelectorAll("[id]")].map((element) => element.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(sections.map((section) => document.getElementById(section.getAttribute("aria-labelledby")!)?.textContent)).toEqual(["Ask a question", "Ask a question"]);
  });

  it("moves focus to Cancel only when focus was in the block: a stream that starts by itself leaves focus where it is", async () => {
    const api = new FakeApi();
    withClient(
      api,
      <>
        <input aria-label="elsewhere" />
        <AskQuestionBlock initialQuestion="q" />
      </>,
    );
    // Nothing focused, as after a reload whose stream resumes by itself; then a start from outside the block.
    screen.getByLabelText("elsewhere").focus();
    screen.getByLabelText("elsewhere").blur();
    expect(document.activeElement).toBe(document.body);
    act(() => screen.getByRole("button", { name: "Ask" }).closest("form")!.requestSubmit());
    await waitFor(() => expect(screen.getByRole("button", { name: "Cancel" })).toBeTruthy());
    expect(document.activeElement).toBe(document.body);
  });
});

describe("QuizBlock", () => {
  it("shows each question as its part arrives and lets the learner answer from the keyboard", async () => {
    const api = new FakeApi();
    withClient(api, <QuizBlock initialTopic="volcanoes" />);
    await userEvent.click(screen.getByRole("button", { name: "Make quiz" }));
    const response = await api.eventResponse(0);
    const e = streamEvents("s1");
    const second = { ...SAMPLE_QUESTION, question: "Where is lava hottest?", answer_index: 1, choices: ["Top", "Vent"] };
    response.sendEvents(e.start("quiz"), e.chunk('[{"question"'), e.part(0, SAMPLE_QUESTION));
    await screen.findByText(`1. ${SAMPLE_QUESTION.question}`);
    expect(screen.getByText("Writing question 2…")).toBeTruthy();

    // Answer question 1 while question 2 is still being written: keyboard only.
    const user = userEvent.setup();
    const q1 = screen.getByText(`1. ${SAMPLE_QUESTION.question}`).closest("form")!;
    within(q1).getByRole("radio", { name: "Milk" }).focus();
    await user.keyboard(" ");
    await user.tab();
    await user.keyboard("{Enter}");
    expect(within(q1).getByText(/Not quite — the answer is “Lava”/)).toBeTruthy();
    expect(document.activeElement).toBe(q1.querySelector(".feedback"));
    expect(within(q1).getByText(SAMPLE_QUESTION.explanation)).toBeTruthy();

    response.sendEvents(e.part(1, second), e.complete({ questions: [SAMPLE_QUESTION, second] }));
    const q2 = (await screen.findByText("2. Where is lava hottest?")).closest("form")!;
    fireEvent.click(within(q2).getByRole("radio", { name: "Vent" }));
    fireEvent.click(within(q2).getByRole("button", { name: "Check answer" }));
    expect(within(q2).getByText("Correct!")).toBeTruthy();
    await act(async () => undefined);
    expect(screen.getByTestId("status").textContent).toBe("Done");
  });
});
