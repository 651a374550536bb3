// Test helpers: a handler set that records what a stream delivered, and a client on a FakeApi.
import { StreamClient, type StreamClientOptions, type StreamHandlers, type StreamStatus } from "@live-ai/client";
import type { FakeApi } from "./fake-api";

/** Records everything the handlers see, in order. */
export function recorder() {
  const log: string[] = [];
  const statuses: StreamStatus[] = [];
  let text = "";
  const handlers: StreamHandlers = {
    onStatus: (status) => statuses.push(status),
    onStart: (event) => log.push(`start:${event.provider}`),
    onChunk: (event) => {
      log.push(`chunk:${event.seq}`);
      text += event.token;
    },
    onPart: (event) => log.push(`part:${event.index}`),
    onError: (error, event) => log.push(`error:${error.code}:${event ? "server" : "client"}`),
    onComplete: () => log.push("complete"),
    onCancelled: (event) => log.push(`cancelled:${event ? event.reason : "local"}`),
  };
  return { handlers, log, statuses, text: () => text };
}

/** A client talking to `api`, with deterministic jitter. */
export function clientFor(api: FakeApi, extra: Partial<StreamClientOptions> = {}) {
  return new StreamClient({ fetch: api.fetch, random: () => 0.5, ...extra });
}
