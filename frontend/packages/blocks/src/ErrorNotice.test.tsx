// What a learner is told when a block fails on a limit or a credential, and that Retry waits
// for the time the server named.
import { act, cleanup, render, screen, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, describe, expect, it, vi } from "vitest";
import { StreamClient, type StreamError } from "@live-ai/client";
import { StreamClientProvider } from "@live-ai/react";
import { FakeApi, limited, unauthorized } from "../../../testing/fake-api.js";
import { ErrorNotice } from "./ErrorNotice.js";
import { QuizBlock } from "./QuizBlock.js";

afterEach(() => {
  cleanup();
  vi.useRealTimers();
});

describe("ErrorNotice", () => {
  it("counts down a short wait and holds Retry until it has passed", async () => {
    vi.useFakeTimers({ toFake: ["Date", "setInterval", "clearInterval"] });
    const error: StreamError = { code: "rate_limited", message: "too many starts", retryable: true, retryAfterMs: 3_000, retryAt: Date.now() + 3_000 };
    const onRetry = vi.fn();
    render(<ErrorNotice error={error} onRetry={onRetry} />);
    const alert = screen.getByRole("alert");
    expect(alert.textContent).toContain("Too many requests — try again in 3 s.");
    expect(within(alert).getByRole("button", { name: "Retry" })).toHaveProperty("disabled", true);
    await act(() => vi.advanceTimersByTimeAsync(1_000));
    expect(alert.textContent).toContain("try again in 2 s");
    await act(() => vi.advanceTimersByTimeAsync(2_000));
    expect(alert.textContent).toContain("you can try again now");
    within(alert).getByRole("button", { name: "Retry" }).click();
    expect(onRetry).toHaveBeenCalledTimes(1);
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
    expect(within(alert).getByRole("button", { name: "Retry" })).toHaveProperty("disabled", true);
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
