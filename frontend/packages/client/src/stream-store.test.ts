// The stream store: one published snapshot per frame, parts by index, cleanup.
import { describe, expect, it } from "vitest";
import { StreamStore } from "./stream-store.js";

function manualFrames() {
  const queue: Array<() => void> = [];
  return {
    schedule: (callback: () => void) => {
      queue.push(callback);
      return () => queue.splice(queue.indexOf(callback), 1);
    },
    runFrame: () => queue.splice(0).forEach((callback) => callback()),
    pending: () => queue.length,
  };
}

describe("StreamStore", () => {
  it("publishes many updates as one snapshot per frame", () => {
    const frames = manualFrames();
    const store = new StreamStore(frames.schedule);
    let notifications = 0;
    store.subscribe(() => notifications++);
    store.update({ status: "streaming" });
    for (let i = 0; i < 5_000; i++) store.appendText(`${i % 10}`);
    expect(frames.pending()).toBe(1);
    expect(store.getSnapshot().text).toBe("");
    frames.runFrame();
    expect(notifications).toBe(1);
    expect(store.getSnapshot().text).toHaveLength(5_000);
    expect(store.getSnapshot().status).toBe("streaming");
  });

  it("keeps the same snapshot object while nothing changed", () => {
    const frames = manualFrames();
    const store = new StreamStore(frames.schedule);
    const before = store.getSnapshot();
    frames.runFrame();
    expect(store.getSnapshot()).toBe(before);
  });

  it("places parts by index even when they arrive out of order", () => {
    const frames = manualFrames();
    const store = new StreamStore(frames.schedule);
    const q = (question: string) => ({ question, choices: ["a", "b"], answer_index: 0, explanation: "e" });
    store.setPart(1, q("second"));
    store.setPart(0, q("first"));
    frames.runFrame();
    expect(store.getSnapshot().parts.map((p) => p.question)).toEqual(["first", "second"]);
  });

  it("drops its scheduled frame on dispose", () => {
    const frames = manualFrames();
    const store = new StreamStore(frames.schedule);
    store.appendText("x");
    store.dispose();
    expect(frames.pending()).toBe(0);
  });
});
