// Reads the real server's Prometheus counters: how e2e tests see what happened on the server's
// side (generations run, joined, replayed) rather than guessing it from the page.

/** The sum of a metric's samples whose labels include every one of `labels`. */
export async function metricSum(baseUrl: string, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`${baseUrl}/metrics`)).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const has = Object.entries(labels).every(([key, value]) => (match[2] ?? "").includes(`${key}="${value}"`));
    if (has) sum += Number(match[3]);
  }
  return sum;
}
