// What a learner is told when a block fails on a limit or a credential, and that Retry waits
// for the time the server named.
import { act, cleanup, render, screen, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, describe, expect, it, vi } from "vitest";
import { StreamClient, type StreamError } from "@live-ai/client";
import { StreamClientProvider } from "@live-ai/react";
import { FakeApi, limited, unauthorized } from "../../../testing/fake-api.js";
import { ErrorNotice } from "./ErrorNotice.js";
import { ErrorMessagesProvider } from "./ErrorMessagesProvider.js";
import { QuizBlock } from "./QuizBlock.js";

afterEach(() => {
  cleanup();
  vi.useRealTimers();
});

describe("ErrorNotice", () => {
  it("counts down a short wait outside the alert, announced once, and holds Retry until it has passed", async () => {
    vi.useFakeTimers({ toFake: ["Date", "setInterval", "clearInterval"] });
    const error: StreamError = { code: "rate_limited", message: "too many starts", retryable: true, retryAfterMs: 3_000, retryAt: Date.now() + 3_000 };
    const onRetry = vi.fn();
    const { container } = render(<ErrorNotice error={error} onRetry={onRetry} />);
    const alert = screen.getByRole("alert");
    const notice = container.querySelector(".error-text")!;
    expect(alert.textContent).toBe("Too many requests — try again in 3 s.");
    expect(notice.textContent).toBe("Too many requests — try again in 3 s.");
    // The ticking text is not inside the alert (or any live region): it is not read out each second.
    expect(alert.contains(notice)).toBe(false);
    expect(notice.closest("[role=alert], [role=status], [aria-live]")).toBeNull();
    const retry = within(container).getByRole("button", { name: "Retry" });
    expect(retry).toHaveProperty("disabled", true);
    await act(() => vi.advanceTimersByTimeAsync(1_000));
    expect(notice.textContent).toContain("try again in 2 s");
    expect(alert.textContent).toBe("Too many requests — try again in 3 s.");
    await act(() => vi.advanceTimersByTimeAsync(2_000));
    expect(notice.textContent).toContain("you can try again now");
    retry.click();
    expect(onRetry).toHaveBeenCalledTimes(1);
  });

  it("says an expired answer has expired and offers to ask again", () => {
    const onRetry = vi.fn();
    render(<ErrorNotice error={{ code: "stream_not_found", message: "no stream s1; it may have expired: start again", retryable: true }} onRetry={onRetry} />);
    expect(screen.getByRole("alert").textContent).toBe("This answer has expired and can no longer be shown.");
    screen.getByRole("button", { name: "Ask again" }).click();
    expect(onRetry).toHaveBeenCalledTimes(1);
  });

  it("words each moderation outcome kindly, never quoting the server's message, and a host can reword them", () => {
    const flagged = (code: StreamError["code"], extra: Partial<StreamError> = {}): StreamError => ({ code, message: "server text", retryable: false, ...extra });
    render(
      <>
        <ErrorNotice error={flagged("input_flagged", { categories: ["profanity"] })} onRetry={() => undefined} />
        <ErrorNotice error={flagged("output_flagged", { categories: ["violence"] })} onRetry={() => undefined} />
        <ErrorNotice error={flagged("output_flagged", { retract: true })} onRetry={() => undefined} />
        <ErrorNotice error={flagged("moderation_unavailable", { retryable: true })} onRetry={() => undefined} />
        <ErrorNotice error={flagged("input_flagged")} onRetry={() => undefined} messages={{ input_flagged: { text: "Frag bitte anders." } }} />
      </>,
    );
    const texts = screen.getAllByRole("alert").map((alert) => alert.textContent);
    expect(texts).toEqual([
      "Let's ask that in a different way — this question can't be answered here.",
      "We stopped that answer because it wasn't right for this lesson. Try asking in a different way.",
      "We took that answer away because it wasn't right for this lesson. Try asking in a different way.",
      "We couldn't check this answer is safe just now, so it isn't shown. Please try again in a moment.",
      "Frag bitte anders.",
    ]);
    expect(texts.join(" ")).not.toContain("server text");
    // Only the moderator being down is worth retrying as is.
    expect(screen.getAllByRole("button").map((button) => button.textContent)).toEqual(["Retry"]);
  });

  it("takes its words from the host's table, entry by entry, over the defaults", () => {
    const error: StreamError = { code: "stream_not_found", message: "gone", retryable: true };
    render(
      <ErrorMessagesProvider messages={{ stream_not_found: { text: "Diese Antwort ist abgelaufen.", action: "Nochmal fragen" } }}>
        <ErrorNotice error={error} onRetry={() => undefined} />
        <ErrorNotice error={{ code: "unauthorized", message: "401", retryable: false }} onRetry={() => undefined} messages={{ unauthorized: { text: (e) => `Bitte anmelden (${e.code}).` } }} />
        <ErrorNotice error={{ code: "forbidden_origin", message: "403", retryable: false }} onRetry={() => undefined} />
      </ErrorMessagesProvider>,
    );
    expect(screen.getAllByRole("alert").map((alert) => alert.textContent)).toEqual([
      "Diese Antwort ist abgelaufen.",
      "Bitte anmelden (unauthorized).",
      "This page is not allowed to use the AI service.",
    ]);
    expect(screen.getByRole("button", { name: "Nochmal fragen" })).toBeTruthy();
  });

  it("tells a signed-out learner to sign in, without a Retry that cannot work", () => {
    render(<ErrorNotice error={{ code: "unauthorized", message: "401", retryable: false }} onRetry={() => undefined} />);
    expect(screen.getByRole("alert").textContent).toBe("You're signed out of the AI service — sign in again, then retry.");
    expect(screen.queryByRole("button")).toBeNull();
  });
});

describe("a block over its learner's limit", () => {
  it("shows when today's budget comes back (the next 00:00 UTC) instead of a generic failure", async () => {
    // Mid-afternoon, whenever the test runs: a wait of minutes would be a countdown instead.
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(new Date("2026-11-27T15:00:00Z"));
    const api = new FakeApi();
    const now = Date.now();
    const midnight = Math.ceil((now + 1) / 86_400_000) * 86_400_000;
    api.route((request) => (request.method === "POST" ? limited("budget_exhausted", midnight - now) : undefined));
    render(
      <StreamClientProvider client={new StreamClient({ fetch: api.fetch })}>
        <QuizBlock initialTopic="volcanoes" />
      </StreamClientProvider>,
    );
    await userEvent.click(screen.getByRole("button", { name: "Make quiz" }));
    const alert = await screen.findByRole("alert");
    expect(alert.textContent).toContain("You've used today's AI budget — try again at 00:00 UTC.");
    expect(within(alert.closest(".error")!).getByRole("button", { name: "Retry" })).toHaveProperty("disabled", true);
    expect(api.requestsTo("POST", /^\/api\/streams$/)).toHaveLength(1);
  });

  it("shows the sign-in message once the refreshed token is refused as well", async () => {
    const api = new FakeApi();
    api.route(() => unauthorized());
    const getToken = vi.fn(async () => "expired");
    render(
      <StreamClientProvider client={new StreamClient({ fetch: api.fetch, getToken })}>
        <QuizBlock initialTopic="volcanoes" />
      </StreamClientProvider>,
    );
    await userEvent.click(screen.getByRole("button", { name: "Make quiz" }));
    expect((await screen.findByRole("alert")).textContent).toContain("sign in again");
    expect(getToken).toHaveBeenCalledTimes(2);
  });
});
