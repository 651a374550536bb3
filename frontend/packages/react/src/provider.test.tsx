// The provider: a client made from options, the latest getToken always the one asked.
import { act, cleanup, render, screen, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, it } from "vitest";
import { useAIBlockStreaming } from "./hooks.js";
import { StreamClientProvider } from "./provider.js";
import { FakeApi } from "../../../testing/fake-api.js";
import { streamEvents } from "../../../testing/events.js";

afterEach(cleanup);

function Explain() {
  const eli10 = useAIBlockStreaming("explain-eli10");
  return (
    <div>
      <span data-testid="status">{eli10.status}</span>
      <button onClick={() => eli10.start({ topic: "rain" })}>go</button>
    </div>
  );
}

describe("StreamClientProvider", () => {
  it("makes one client from baseUrl and getToken, and asks the getToken of the latest render", async () => {
    const api = new FakeApi();
    api.requireToken("second-render");
    const tree = (token: string) => (
      <StreamClientProvider baseUrl="http://127.0.0.1:9999" fetch={api.fetch} getToken={async () => token}>
        <Explain />
      </StreamClientProvider>
    );
    const view = render(tree("first-render"));
    view.rerender(tree("second-render"));
    act(() => screen.getByText("go").click());
    const e = streamEvents("s1");
    const response = await api.eventResponse(0);
    expect(response.request.url.origin).toBe("http://127.0.0.1:9999");
    expect(response.request.headers.get("authorization")).toBe("Bearer second-render");
    response.sendEvents(e.start("explain-eli10"), e.complete());
    await waitFor(() => expect(screen.getByTestId("status").textContent).toBe("complete"));
  });
});
