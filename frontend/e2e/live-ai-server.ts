// Spawns the real `live-ai` binary on a free loopback port for end-to-end tests and stops it
// afterwards. The binary comes from env LIVE_AI_BIN (default: the backend's debug build).
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";

const frontendDir = fileURLToPath(new URL("..", import.meta.url));

export const LIVE_AI_BIN = process.env.LIVE_AI_BIN
  ? resolve(process.env.LIVE_AI_BIN)
  : fileURLToPath(new URL("../../backend/target/debug/live-ai", import.meta.url));

export const DIST_DIR = fileURLToPath(new URL("../dist", import.meta.url));

export interface LiveAiServer {
  url: string;
  port: number;
  output(): string;
  /** SIGTERM (graceful) by default; SIGKILL to simulate a crash. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

/** Starts live-ai; `port` pins the port (to restart a server where clients expect it). */
export async function startLiveAi(env: Record<string, string> = {}, port?: number): Promise<LiveAiServer> {
  if (!existsSync(LIVE_AI_BIN)) {
    throw new Error(`live-ai binary not found at ${LIVE_AI_BIN}; build it or set LIVE_AI_BIN`);
  }
  if (port !== undefined) return spawnOn(port, env);
  // A port picked here may be taken by someone else before the binary binds it: try again.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    try {
      return await spawnOn(port, env);
    } catch (error) {
      if (attempt >= 3) throw error;
    }
  }
}

function spawnOn(port: number, env: Record<string, string>): Promise<LiveAiServer> {
  const child: ChildProcess = spawn(LIVE_AI_BIN, [], {
    cwd: frontendDir,
    env: {
      ...process.env,
      HOST: "127.0.0.1",
      PORT: String(port),
      AI_PROVIDER: "demo",
      AI_STREAMING_ENABLED: "true",
      STATIC_DIR: DIST_DIR,
      RUST_LOG: process.env.RUST_LOG ?? "warn,live_ai=info",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  // Never outlive the test process, even when it dies before its afterAll hook.
  const killOnExit = () => child.kill("SIGKILL");
  process.once("exit", killOnExit);
  child.once("exit", () => process.removeListener("exit", killOnExit));
  let output = "";
  const url = `http://127.0.0.1:${port}`;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  let stopping = false;
  let listening = false;
  // A server that dies under a test explains the test's failure: say so, with its last words.
  child.once("exit", (code, signal) => {
    if (listening && !stopping) process.stderr.write(`\nlive-ai on ${url} exited unexpectedly (${code ?? signal}):\n${output.slice(-4000)}\n`);
  });
  const stop = async (signal: NodeJS.Signals = "SIGTERM") => {
    stopping = true;
    if (child.exitCode === null && child.signalCode === null) {
      child.kill(signal);
      const killTimer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(killTimer);
    }
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      void stop();
      reject(new Error(`live-ai did not start within 20 s:\n${output}`));
    }, 20_000);
    const onData = (data: Buffer) => {
      output += data.toString();
      if (output.includes(`listening on ${url}`)) {
        listening = true;
        clearTimeout(timer);
        resolve({ url, port, output: () => output, stop });
      }
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`live-ai exited with ${code} before listening:\n${output}`));
    });
  });
}
