// Reads a stream's log from the real server over SSE, every event checked against the contract:
// what e2e tests compare clients with, and how they wait for the server's side of a story
// (a `cancelled` at the end of the log) instead of sleeping.
import { EventSourceParserStream } from "eventsource-parser/stream";
import { parseStreamEvent, type StreamEvent } from "@live-ai/client";

/** Reads an SSE endpoint to its end and validates every event against the contract. */
export async function readAllEvents(url: string, headers: Record<string, string> = {}): Promise<{ status: number; events: StreamEvent[] }> {
  const response = await fetch(url, { headers });
  if (!response.body || response.status !== 200) return { status: response.status, events: [] };
  const events: StreamEvent[] = [];
  const reader = response.body.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream()).getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    events.push(parseStreamEvent(value.data, value.event));
  }
  return { status: response.status, events };
}

/** Resolves with the stream's whole log once the server has ended it with `type`. */
export async function untilLogEndsWith(baseUrl: string, streamId: string, type: StreamEvent["type"], timeoutMs = 10_000): Promise<StreamEvent[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    // A finished stream's log is replayed whole; a running one is followed to its end.
    const { events } = await readAllEvents(`${baseUrl}/api/streams/${streamId}/events`);
    if (events.at(-1)?.type === type) return events;
    if (Date.now() > deadline) throw new Error(`stream ${streamId} did not end with ${type}: ${events.at(-1)?.type}`);
  }
}
