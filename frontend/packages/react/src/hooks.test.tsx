// The React hooks: live state, render batching, retry, cancel, fallback, callbacks, unmount cleanup.
import { act, cleanup, render, screen, waitFor } from "@testing-library/react";
import { Profiler, StrictMode, useEffect } from "react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { StreamClient, type BlockStreamOptions, type StreamEvent } from "@live-ai/client";
import { useAIBlockStreaming, useAIStreaming } from "./hooks.js";
import { StreamClientProvider } from "./provider.js";
import { FakeApi, json } from "../../../testing/fake-api.js";
import { FakeWebSocket } from "../../../testing/fake-websocket.js";
import { SAMPLE_QUESTION, streamEvents } from "../../../testing/events.js";

function QuizProbe(props: { options?: BlockStreamOptions<"quiz"> }) {
  const quiz = useAIBlockStreaming("quiz", props.options);
  return (
    <div>
      <span data-testid="status">{quiz.status}</span>
      <span data-testid="text">{quiz.text}</span>
      <span data-testid="parts">{quiz.parts.map((p) => p.question).join("|")}</span>
      <span data-testid="demo">{String(quiz.isDemo)}</span>
      <span data-testid="error">{quiz.error ? `${quiz.error.code}:${quiz.error.retryable}` : ""}</span>
      <button onClick={() => quiz.start({ topic: "volcanoes", count: 1 })}>start</button>
      <button onClick={() => quiz.cancel()}>cancel</button>
      <button onClick={() => quiz.retry()}>retry</button>
    </div>
  );
}

function mount(api: FakeApi, options?: BlockStreamOptions<"quiz">, onRender?: () => void) {
  const client = new StreamClient({
    fetch: api.fetch,
    baseUrl: "http://127.0.0.1:9999",
    WebSocket: FakeWebSocket as unknown as typeof WebSocket,
    backoff: { initialMs: 1, maxMs: 2 },
  });
  const view = render(
    <StreamClientProvider client={client}>
      <Profiler id="quiz" onRender={() => onRender?.()}>
        <QuizProbe options={options} />
      </Profiler>
    </StreamClientProvider>,
  );
  return { client, view };
}

const text = (id: string) => screen.getByTestId(id).textContent;

beforeEach(() => FakeWebSocket.reset());
afterEach(() => {
  cleanup();
  vi.useRealTimers();
});

describe("useAIBlockStreaming", () => {
  it("shows status, text, parts and the demo flag as the stream arrives", async () => {
    const api = new FakeApi();
    mount(api);
    expect(text("status")).toBe("idle");
    act(() => screen.getByText("start").click());
    await waitFor(() => expect(text("status")).toBe("connecting"));
    const response = await api.eventResponse(0);
    const e = streamEvents("s1");
    response.sendEvents(e.start("quiz"), e.chunk('{"q'), e.part(0, SAMPLE_QUESTION));
    await waitFor(() => expect(text("parts")).toBe(SAMPLE_QUESTION.question));
    expect(text("status")).toBe("streaming");
    expect(text("text")).toBe('{"q');
    expect(text("demo")).toBe("true");
    response.sendEvents(e.complete({ questions: [SAMPLE_QUESTION] }));
    await waitFor(() => expect(text("status")).toBe("complete"));
  });

  it("renders at most once per frame however many tokens arrive", async () => {
    const api = new FakeApi();
    let renders = 0;
    mount(api, undefined, () => renders++);
    act(() => screen.getByText("start").click());
    const response = await api.eventResponse(0);
    const e = streamEvents("s1");
    const events: StreamEvent[] = [e.start("quiz")];
    for (let i = 0; i < 2_000; i++) events.push(e.chunk("x"));
    const before = renders;
    response.sendEvents(...events);
    await waitFor(() => expect(text("text")).toHaveLength(2_000));
    // 2,000 tokens in one network read: a handful of frames, not 2,000 renders.
    expect(renders - before).toBeLessThanOrEqual(3);
  });

  it("exposes a retryable error and retries as a new generation", async () => {
    const api = new FakeApi();
    mount(api);
    act(() => screen.getByText("start").click());
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start("quiz"), e.error("provider_error", true));
    await waitFor(() => expect(text("status")).toBe("error"));
    expect(text("error")).toBe("provider_error:true");
    act(() => screen.getByText("retry").click());
    await waitFor(() => expect(text("status")).toBe("connecting"));
    expect(text("error")).toBe("");
    const e2 = streamEvents("s2");
    (await api.eventResponse(1)).sendEvents(e2.start("quiz"), e2.chunk("ok"), e2.complete({ questions: [SAMPLE_QUESTION] }));
    await waitFor(() => expect(text("status")).toBe("complete"));
    expect(text("text")).toBe("ok");
    const keys = api.requestsTo("POST", /^\/api\/streams$/).map((r) => r.headers.get("idempotency-key"));
    expect(keys).toHaveLength(2);
    expect(keys[0]).not.toBe(keys[1]);
  });

  it("cancels on the server and shows cancelled", async () => {
    const api = new FakeApi();
    mount(api);
    act(() => screen.getByText("start").click());
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start("quiz"), e.chunk("a"));
    await waitFor(() => expect(text("text")).toBe("a"));
    act(() => screen.getByText("cancel").click());
    await waitFor(() => expect(text("status")).toBe("cancelled"));
    await waitFor(() => expect(api.requestsTo("DELETE", /^\/api\/streams\/s1$/)).toHaveLength(1));
  });

  it("falls back to the whole-response endpoint when config says streaming is off", async () => {
    const api = new FakeApi();
    api.config = { ...api.config, streaming_enabled: false };
    api.route((request) =>
      request.url.pathname === "/api/ai-block/quiz"
        ? json(200, {
            block_type: "quiz",
            provider: "demo",
            model: "demo-model",
            text: "whole text",
            result: { questions: [SAMPLE_QUESTION] },
            parts: [SAMPLE_QUESTION],
            usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 },
            finish_reason: "stop",
          })
        : undefined,
    );
    mount(api);
    act(() => screen.getByText("start").click());
    await waitFor(() => expect(text("status")).toBe("complete"));
    expect(text("text")).toBe("whole text");
    expect(text("parts")).toBe(SAMPLE_QUESTION.question);
    expect(api.requestsTo("POST", /^\/api\/streams$/)).toHaveLength(0);
  });

  it("uses the config's transport by default and the hook option over it", async () => {
    const api = new FakeApi();
    api.config = { ...api.config, streaming_backend: "websocket" };
    mount(api);
    act(() => screen.getByText("start").click());
    await waitFor(() => expect(FakeWebSocket.sockets).toHaveLength(1));
    cleanup();

    const api2 = new FakeApi();
    api2.config = { ...api2.config, streaming_backend: "websocket" };
    mount(api2, { mode: "sse" });
    act(() => screen.getByText("start").click());
    await api2.eventResponse(0);
    expect(FakeWebSocket.sockets).toHaveLength(1);
  });

  it("cleans up on unmount: cancels the stream, aborts the request, leaves no timer", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "requestAnimationFrame", "cancelAnimationFrame"] });
    const api = new FakeApi();
    const { view } = mount(api);
    act(() => screen.getByText("start").click());
    await act(() => vi.advanceTimersByTimeAsync(0));
    const response = await api.eventResponse(0);
    const e = streamEvents("s1");
    response.sendEvents(e.start("quiz"), e.chunk("a"));
    await act(() => vi.advanceTimersByTimeAsync(20));
    expect(text("text")).toBe("a");
    response.sendEvents(e.chunk("b")); // leaves a frame scheduled
    await act(() => vi.advanceTimersByTimeAsync(0));
    view.unmount();
    // Released once the task that unmounted ends (StrictMode mounts again within it).
    await act(async () => undefined);
    expect(response.request.signal?.aborted).toBe(true);
    expect(vi.getTimerCount()).toBe(0);
    await vi.waitFor(() => expect(api.requestsTo("DELETE", /^\/api\/streams\/s1$/)).toHaveLength(1));
  });

  it("cancels over the WebSocket and closes it on unmount", async () => {
    const api = new FakeApi();
    api.config = { ...api.config, streaming_backend: "websocket" };
    const { view } = mount(api);
    act(() => screen.getByText("start").click());
    await waitFor(() => expect(FakeWebSocket.sockets).toHaveLength(1));
    const socket = FakeWebSocket.latest();
    socket.serverOpen();
    await vi.waitFor(() => expect(socket.sent).toHaveLength(1));
    const start = socket.sent[0] as { ref: string };
    const e = streamEvents("w1");
    socket.serverSend({ ...e.start("quiz"), ref: start.ref } as StreamEvent, e.chunk("a"));
    view.unmount();
    await vi.waitFor(() => expect(socket.sent.at(-1)).toEqual({ type: "cancel", stream_id: "w1" }));
    await vi.waitFor(() => expect(socket.readyState).toBe(3));
  });

  it("unmounted before the server named the stream, cancels it once named, then closes", async () => {
    const api = new FakeApi();
    api.config = { ...api.config, streaming_backend: "websocket" };
    const { view } = mount(api);
    act(() => screen.getByText("start").click());
    await waitFor(() => expect(FakeWebSocket.sockets).toHaveLength(1));
    const socket = FakeWebSocket.latest();
    socket.serverOpen();
    await vi.waitFor(() => expect(socket.sent).toHaveLength(1));
    view.unmount();
    await act(async () => undefined);
    const start = socket.sent[0] as { ref: string };
    socket.serverSend({ ...streamEvents("w2").start("quiz"), ref: start.ref } as StreamEvent);
    await vi.waitFor(() => expect(socket.sent.at(-1)).toEqual({ type: "cancel", stream_id: "w2" }));
    await vi.waitFor(() => expect(socket.readyState).toBe(3));
  });
});

describe("hook lifecycle: isLoading, detach and resume, reset, StrictMode", () => {
  function Lifecycle({ autoStart = false, outcomes = [] }: { autoStart?: boolean; outcomes?: string[] }) {
    const eli10 = useAIBlockStreaming("explain-eli10");
    useEffect(() => {
      if (autoStart) {
        eli10.start({ topic: "rain" }).then(
          (result) => outcomes.push(`result:${result.markdown}`),
          (error: { code: string }) => outcomes.push(`error:${error.code}`),
        );
      }
    }, []);
    return (
      <div>
        <span data-testid="status">{eli10.status}</span>
        <span data-testid="loading">{String(eli10.isLoading)}</span>
        <span data-testid="text">{eli10.text}</span>
        <button onClick={() => void eli10.start({ topic: "rain" }).catch(() => undefined)}>start</button>
        <button onClick={eli10.detach}>detach</button>
        <button onClick={() => void eli10.resume().catch(() => undefined)}>resume</button>
        <button onClick={eli10.reset}>reset</button>
      </div>
    );
  }

  it("isLoading is true exactly while a stream is under way; detach says so and resume() continues", async () => {
    const api = new FakeApi();
    render(
      <StreamClientProvider client={new StreamClient({ fetch: api.fetch })}>
        <Lifecycle />
      </StreamClientProvider>,
    );
    expect(text("loading")).toBe("false");
    act(() => screen.getByText("start").click());
    await waitFor(() => expect(text("loading")).toBe("true"));
    const e = streamEvents("s1");
    const log = [e.start("explain-eli10"), e.chunk("Rain "), e.chunk("falls."), e.complete({ markdown: "Rain falls." })];
    (await api.eventResponse(0)).sendEvents(log[0]!, log[1]!);
    await waitFor(() => expect(text("text")).toBe("Rain "));
    act(() => screen.getByText("detach").click());
    await waitFor(() => expect(text("status")).toBe("detached"));
    expect(text("loading")).toBe("false");
    act(() => screen.getByText("resume").click());
    const resumed = await api.eventResponse(1);
    expect(resumed.request.url.pathname).toBe("/api/streams/s1/events");
    resumed.sendEvents(...log.slice(1));
    await waitFor(() => expect(text("status")).toBe("complete"));
    expect(text("text")).toBe("Rain falls.");
    expect(text("loading")).toBe("false");
    act(() => screen.getByText("reset").click());
    await waitFor(() => expect(text("status")).toBe("idle"));
    expect(text("text")).toBe("");
  });

  it("under StrictMode, a start in a mount effect is one generation whose promise the effect gets, run twice or not", async () => {
    const api = new FakeApi();
    const outcomes: string[] = [];
    render(
      <StrictMode>
        <StreamClientProvider client={new StreamClient({ fetch: api.fetch })}>
          <Lifecycle autoStart outcomes={outcomes} />
        </StreamClientProvider>
      </StrictMode>,
    );
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start("explain-eli10"), e.chunk("Rain"), e.complete({ markdown: "Rain" }));
    await waitFor(() => expect(text("status")).toBe("complete"));
    // Both runs of the effect hear the one stream's result; neither is told it was cancelled.
    expect(outcomes).toEqual(["result:Rain", "result:Rain"]);
    expect(api.requestsTo("POST", /^\/api\/streams$/)).toHaveLength(1);
    expect(api.requestsTo("DELETE", /.*/)).toHaveLength(0);
  });

  it("under StrictMode, unmounting still cancels the stream", async () => {
    const api = new FakeApi();
    const view = render(
      <StrictMode>
        <StreamClientProvider client={new StreamClient({ fetch: api.fetch })}>
          <Lifecycle autoStart />
        </StreamClientProvider>
      </StrictMode>,
    );
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start("explain-eli10"), e.chunk("Rain"));
    await waitFor(() => expect(text("text")).toBe("Rain"));
    view.unmount();
    await waitFor(() => expect(api.requestsTo("DELETE", /^\/api\/streams\/s1$/)).toHaveLength(1));
  });
});

describe("hook callbacks", () => {
  function Callbacks(props: { label: string; seen: string[] }) {
    const stream = useAIBlockStreaming("explain-eli10", {
      onFinish: (_result, event) => props.seen.push(`${props.label}:complete:${event.seq}`),
      onError: (error) => props.seen.push(`${props.label}:error:${error.code}`),
    });
    return <button onClick={() => stream.start({ topic: "rain" })}>go</button>;
  }

  it("calls the latest onFinish / onError the component rendered with", async () => {
    const api = new FakeApi();
    const seen: string[] = [];
    const client = new StreamClient({ fetch: api.fetch });
    const view = render(
      <StreamClientProvider client={client}>
        <Callbacks label="first" seen={seen} />
      </StreamClientProvider>,
    );
    act(() => screen.getByText("go").click());
    view.rerender(
      <StreamClientProvider client={client}>
        <Callbacks label="second" seen={seen} />
      </StreamClientProvider>,
    );
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start("explain-eli10"), e.complete());
    await waitFor(() => expect(seen).toEqual(["second:complete:1"]));
    act(() => screen.getByText("go").click());
    (await api.eventResponse(1)).sendEvents(streamEvents("s2").start("explain-eli10"), { ...streamEvents("s2").error(), seq: 1 });
    await waitFor(() => expect(seen).toEqual(["second:complete:1", "second:error:provider_error"]));
  });
});

describe("useAIStreaming", () => {
  function AnyBlock() {
    const stream = useAIStreaming();
    return (
      <div>
        <span data-testid="status">{stream.status}</span>
        <span data-testid="text">{stream.text}</span>
        <button onClick={() => stream.start("explain-eli10", { topic: "rain" })}>go</button>
      </div>
    );
  }

  it("streams whichever block start() names", async () => {
    const api = new FakeApi();
    render(
      <StreamClientProvider client={new StreamClient({ fetch: api.fetch })}>
        <AnyBlock />
      </StreamClientProvider>,
    );
    act(() => screen.getByText("go").click());
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start("explain-eli10"), e.chunk("Rain is "), e.chunk("water."), e.complete({ markdown: "Rain is water." }));
    await waitFor(() => expect(text("status")).toBe("complete"));
    expect(text("text")).toBe("Rain is water.");
    expect(JSON.parse(api.requestsTo("POST", /^\/api\/streams$/)[0]!.body!).block_type).toBe("explain-eli10");
  });
});

describe("a class's answer (coalescing)", () => {
  function Explain() {
    const eli10 = useAIBlockStreaming("explain-eli10");
    return (
      <div>
        <span data-testid="coalesced">{`shared:${eli10.shared} cached:${eli10.cached}`}</span>
        <button onClick={() => eli10.start({ topic: "rain" })}>ask</button>
        <button onClick={() => eli10.start({ topic: "rain" }, { fresh: true })}>ask anew</button>
      </div>
    );
  }
  function AnyBlock() {
    const stream = useAIStreaming();
    return (
      <div>
        <span data-testid="coalesced">{`shared:${stream.shared} cached:${stream.cached}`}</span>
        <button onClick={() => stream.start("quiz", { topic: "rain" })}>ask</button>
        <button onClick={() => stream.start("quiz", { topic: "rain" }, { fresh: true })}>ask anew</button>
      </div>
    );
  }

  for (const [name, Component, blockType] of [
    ["useAIBlockStreaming", Explain, "explain-eli10"],
    ["useAIStreaming", AnyBlock, "quiz"],
  ] as const) {
    it(`${name} shows shared and cached from the start event, and start(input, { fresh: true }) asks for a generation of its own`, async () => {
      const api = new FakeApi();
      render(
        <StreamClientProvider client={new StreamClient({ fetch: api.fetch })}>
          <Component />
        </StreamClientProvider>,
      );
      expect(text("coalesced")).toBe("shared:false cached:false");
      act(() => screen.getByText("ask").click());
      const joined = streamEvents("s1");
      (await api.eventResponse(0)).sendEvents(joined.start(blockType, "demo", undefined, "shared"));
      await waitFor(() => expect(text("coalesced")).toBe("shared:true cached:false"));

      act(() => screen.getByText("ask").click());
      const replayed = streamEvents("s2");
      (await api.eventResponse(1)).sendEvents(replayed.start(blockType, "demo", undefined, "cached"));
      await waitFor(() => expect(text("coalesced")).toBe("shared:false cached:true"));

      act(() => screen.getByText("ask anew").click());
      const own = streamEvents("s3");
      (await api.eventResponse(2)).sendEvents(own.start(blockType), own.chunk("Rain"));
      await waitFor(() => expect(text("coalesced")).toBe("shared:false cached:false"));
      const bodies = api.requestsTo("POST", /^\/api\/streams$/).map((request) => JSON.parse(request.body!) as { fresh?: boolean });
      expect(bodies.map((body) => body.fresh)).toEqual([undefined, undefined, true]);
    });
  }
});

describe("useAIBlockStreaming promise and resume", () => {
  function Diagram(props: { onResult(kind: string): void; resume?: boolean }) {
    const diagram = useAIBlockStreaming("diagram", { resume: props.resume });
    return (
      <div>
        <span data-testid="status">{diagram.status}</span>
        <span data-testid="text">{diagram.text}</span>
        <button onClick={() => diagram.start({ description: "rain" }).then((result) => props.onResult(result.kind), () => undefined)}>draw</button>
      </div>
    );
  }

  it("start() resolves with the block's typed result", async () => {
    const api = new FakeApi();
    const onResult = vi.fn();
    render(
      <StreamClientProvider client={new StreamClient({ fetch: api.fetch })}>
        <Diagram onResult={onResult} />
      </StreamClientProvider>,
    );
    act(() => screen.getByText("draw").click());
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start("diagram"), e.chunk("flowchart TD"), e.complete({ kind: "flowchart", source: "flowchart TD\n  A-->B" }));
    await waitFor(() => expect(onResult).toHaveBeenCalledWith("flowchart"));
  });

  it("with resume: true, a component mounted after a reload picks the stream up where it was", async () => {
    sessionStorage.clear();
    const api = new FakeApi();
    const first = render(
      <StreamClientProvider client={new StreamClient({ fetch: api.fetch })}>
        <Diagram onResult={() => undefined} resume />
      </StreamClientProvider>,
    );
    act(() => screen.getByText("draw").click());
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start("diagram"), e.chunk("flowchart TD"));
    await waitFor(() => expect(text("text")).toBe("flowchart TD"));
    window.dispatchEvent(new Event("pagehide"));
    first.unmount();
    expect(api.requestsTo("DELETE", /.*/)).toHaveLength(0);

    render(
      <StreamClientProvider client={new StreamClient({ fetch: api.fetch })}>
        <Diagram onResult={() => undefined} resume />
      </StreamClientProvider>,
    );
    expect(text("text")).toBe("flowchart TD");
    const resumed = await api.eventResponse(1);
    expect(resumed.request.headers.get("last-event-id")).toBe("s1:0");
    resumed.sendEvents({ type: "chunk", stream_id: "s1", seq: 1, token: "flowchart TD" }, e.chunk("\n  A-->B"), e.complete({ kind: "flowchart", source: "flowchart TD\n  A-->B" }));
    await waitFor(() => expect(text("status")).toBe("complete"));
    expect(text("text")).toBe("flowchart TD\n  A-->B");
  });
});
