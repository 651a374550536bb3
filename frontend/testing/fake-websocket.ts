// A controllable WebSocket stand-in for unit tests: records every socket and sent frame,
// and lets the test open, message and close sockets from the "server" side. Frames in both
// directions are held to the contract: what the client sends must be a valid client message,
// and what the test sends as the server must be a valid server message.
import { checkClientMessage, parseServerMessage, type StreamEvent } from "@live-ai/client";

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
    this.sent.push(checkClientMessage(JSON.parse(frame)));
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
      const frame = JSON.stringify(message);
      parseServerMessage(frame);
      this.onmessage?.(new MessageEvent("message", { data: frame }));
    }
  }
  /** The server closes the socket, with a close code (1008: policy violation, after a refused token). */
  serverClose(code = 1000): void {
    this.readyState = 3;
    this.onclose?.(Object.assign(new Event("close"), { code }) as CloseEvent);
  }
  serverDrop(): void {
    this.readyState = 3;
    this.onerror?.(new Event("error"));
    this.onclose?.(new Event("close") as CloseEvent);
  }
}
