// A controllable WebSocket stand-in for unit tests: records every socket and sent frame,
// and lets the test open, message and close sockets from the "server" side.
import type { StreamEvent } from "../contract";

export class FakeWebSocket {
  static readonly sockets: FakeWebSocket[] = [];
  static reset(): void {
    FakeWebSocket.sockets.length = 0;
  }
  static latest(): FakeWebSocket {
    const socket = FakeWebSocket.sockets.at(-1);
    if (!socket) throw new Error("no socket was opened");
    return socket;
  }

  readyState = 0;
  readonly sent: unknown[] = [];
  onopen: ((event: Event) => void) | null = null;
  onmessage: ((event: MessageEvent) => void) | null = null;
  onclose: ((event: CloseEvent) => void) | null = null;
  onerror: ((event: Event) => void) | null = null;

  constructor(readonly url: string) {
    FakeWebSocket.sockets.push(this);
  }

  send(frame: string): void {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(JSON.parse(frame));
  }

  close(): void {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    this.onclose?.(new Event("close") as CloseEvent);
  }

  // Server side:
  serverOpen(): void {
    this.readyState = 1;
    this.onopen?.(new Event("open"));
  }
  serverSend(...messages: Array<StreamEvent | Record<string, unknown>>): void {
    for (const message of messages) {
      this.onmessage?.(new MessageEvent("message", { data: JSON.stringify(message) }));
    }
  }
  serverDrop(): void {
    this.readyState = 3;
    this.onerror?.(new Event("error"));
    this.onclose?.(new Event("close") as CloseEvent);
  }
}
