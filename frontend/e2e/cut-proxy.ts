// A loopback TCP proxy whose open connections the test can cut at will: the way to drop a
// live SSE response or WebSocket mid-stream, exactly as a flaky network would.
import { createConnection, createServer, type Socket } from "node:net";

export interface CutProxy {
  url: string;
  port: number;
  /** Destroys every open connection (both directions); new connections still work. */
  cutAll(): number;
  /** How many connections have been accepted so far. */
  connections(): number;
  close(): Promise<void>;
}

export async function startCutProxy(targetPort: number): Promise<CutProxy> {
  const open = new Set<Socket>();
  let accepted = 0;
  const server = createServer((client) => {
    accepted++;
    const upstream = createConnection({ host: "127.0.0.1", port: targetPort });
    open.add(client);
    open.add(upstream);
    const teardown = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    client.on("error", teardown).on("close", teardown);
    upstream.on("error", teardown).on("close", teardown);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (typeof address !== "object" || !address) throw new Error("proxy has no address");
  return {
    url: `http://127.0.0.1:${address.port}`,
    port: address.port,
    cutAll: () => {
      const count = open.size;
      for (const socket of open) socket.destroy();
      open.clear();
      return count;
    },
    connections: () => accepted,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of open) socket.destroy();
        server.close(() => resolve());
      }),
  };
}
