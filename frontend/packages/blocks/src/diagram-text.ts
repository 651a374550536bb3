// A diagram's text alternative (WCAG 1.1.1): what its Mermaid source says, in words a screen
// reader can read — the steps of a flowchart and where each leads, the messages of a sequence,
// the branches of a mind map. Best effort over the source's common forms; anything it cannot
// read falls back to saying the source is there to read.

/** Labels as written: S1["Text"], S1[Text], S1(Text), S1((Text)), S1{Text}, S1>Text]. */
const NODE = /([A-Za-z0-9_]+)\s*(?:\[\s*"([^"]*)"\s*\]|\[([^\]]*)\]|\(\(\s*"?([^)"]*)"?\s*\)\)|\(\s*"?([^)"]*)"?\s*\)|\{\s*"?([^}"]*)"?\s*\}|>\s*"?([^\]"]*)"?\s*\])/g;
const EDGE = /([A-Za-z0-9_]+)(?:\s*[[({>][^\]})]*[\]})])?\s*(?:-{2,}>|={2,}>|-\.+->|-{2,}|={2,})(?:\|([^|]*)\|)?\s*([A-Za-z0-9_]+)/g;

export function diagramDescription(source: string): string {
  const lines = source
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("%%"));
  const header = lines[0]?.split(/\s+/)[0]?.toLowerCase() ?? "";
  const body = lines.slice(1);
  if (header === "flowchart" || header === "graph") return flowchart(body);
  if (header === "sequencediagram") return sequence(body);
  if (header === "mindmap") return mindmap(body);
  return "A diagram; its Mermaid source is shown below it.";
}

function flowchart(lines: string[]): string {
  const labels = new Map<string, string>();
  for (const line of lines) {
    for (const match of line.matchAll(NODE)) {
      const label = match.slice(2).find((group) => group !== undefined)?.trim();
      if (label && !labels.has(match[1]!)) labels.set(match[1]!, label);
    }
  }
  const name = (id: string) => labels.get(id) ?? id;
  const edges: string[] = [];
  for (const line of lines) {
    for (const match of line.matchAll(EDGE)) {
      const via = match[2]?.trim();
      edges.push(`${name(match[1]!)} leads to ${name(match[3]!)}${via ? ` (${via})` : ""}`);
    }
  }
  if (edges.length > 0) return `Flowchart: ${edges.join("; ")}.`;
  if (labels.size > 0) return `Flowchart of ${[...labels.values()].join(", ")}.`;
  return "A flowchart; its Mermaid source is shown below it.";
}

function sequence(lines: string[]): string {
  const names = new Map<string, string>();
  const messages: string[] = [];
  for (const line of lines) {
    const participant = /^(?:participant|actor)\s+(\S+)(?:\s+as\s+(.+))?$/i.exec(line);
    if (participant) {
      names.set(participant[1]!, participant[2]?.trim() ?? participant[1]!);
      continue;
    }
    const message = /^([^-\s]+)\s*-{1,2}[>x)]{1,2}[+-]?\s*([^:\s]+)\s*:\s*(.*)$/.exec(line);
    if (message) messages.push(`${names.get(message[1]!) ?? message[1]} to ${names.get(message[2]!) ?? message[2]}: ${message[3]!.trim()}`);
  }
  return messages.length > 0 ? `Sequence diagram: ${messages.join("; ")}.` : "A sequence diagram; its Mermaid source is shown below it.";
}

function mindmap(lines: string[]): string {
  const words = lines.map((line) => line.replace(/^root/, "").replace(/[()[\]{}]/g, " ").replace(/\s+/g, " ").trim()).filter(Boolean);
  if (words.length === 0) return "A mind map; its Mermaid source is shown below it.";
  const [root, ...branches] = words;
  return branches.length > 0 ? `Mind map of ${root}: ${branches.join(", ")}.` : `Mind map of ${root}.`;
}
