// The boundary check: valid events of every type pass, malformed ones are rejected.
import { describe, expect, it } from "vitest";
import { ContractError, parseServerMessage, parseStreamEvent } from "./contract-validator.js";
import { SAMPLE_QUESTION, streamEvents } from "../../../testing/events.js";

describe("parseStreamEvent", () => {
  const e = streamEvents("abc");
  const valid = [
    e.start("quiz"),
    e.chunk("héllo"),
    e.part(0, SAMPLE_QUESTION),
    e.error("rate_limited", true),
    e.complete({ questions: [SAMPLE_QUESTION] }),
    e.cancelled("abandoned"),
  ];

  it.each(valid.map((event) => [event.type, event] as const))("accepts a valid %s event", (type, event) => {
    expect(parseStreamEvent(JSON.stringify(event), type)).toEqual(event);
  });

  it.each([
    ["missing seq", { type: "chunk", stream_id: "abc", token: "x" }],
    ["negative seq", { type: "chunk", stream_id: "abc", seq: -1, token: "x" }],
    ["unknown type", { type: "tick", stream_id: "abc", seq: 0 }],
    ["extra field", { type: "chunk", stream_id: "abc", seq: 0, token: "x", more: 1 }],
    ["bad stream id", { type: "chunk", stream_id: "a b", seq: 0, token: "x" }],
    ["unknown error code", { type: "error", stream_id: "a", seq: 0, code: "oops", message: "", retryable: true }],
    ["quiz with one choice", { type: "part", stream_id: "abc", seq: 0, kind: "quiz_question", index: 0, data: { ...SAMPLE_QUESTION, choices: ["only"] } }],
  ])("rejects %s", (_name, value) => {
    expect(() => parseStreamEvent(JSON.stringify(value))).toThrow(ContractError);
  });

  it("rejects a payload whose type disagrees with the SSE event name", () => {
    expect(() => parseStreamEvent(JSON.stringify(e.chunk("x")), "complete")).toThrow(/carries/);
  });

  it("rejects non-JSON", () => {
    expect(() => parseStreamEvent("{nope")).toThrow(ContractError);
  });
});

describe("parseServerMessage", () => {
  it("recognises the WebSocket keep-alive and rejects anything else", () => {
    expect(parseServerMessage('{"type":"keep_alive"}')).toEqual({ kind: "keep_alive" });
    expect(() => parseServerMessage('{"type":"keep_alive","extra":1}')).toThrow(ContractError);
    expect(() => parseServerMessage('{"type":"tick"}')).toThrow(ContractError);
  });

  it("tells a stream error event from a protocol error by its seq", () => {
    const event = streamEvents("s1").error();
    expect(parseServerMessage(JSON.stringify(event)).kind).toBe("event");
    const protocolError = { type: "protocol_error", code: "bad_request", message: "no", retryable: false, ref: "r1" };
    expect(parseServerMessage(JSON.stringify(protocolError))).toEqual({ kind: "protocol_error", error: protocolError });
  });
});
