// Vite plugin that turns the AsyncAPI contract (YAML) into a JSON module at build time,
// so the client validates against the very file the backend tests use.
import { readFile } from "node:fs/promises";
import { parse } from "yaml";
import type { Plugin } from "vite";

export function yamlContract(): Plugin {
  return {
    name: "live-ai-yaml-contract",
    async load(id) {
      const file = id.split("?")[0]!;
      if (!file.endsWith(".yaml")) return null;
      const document: unknown = parse(await readFile(file, "utf8"));
      return { code: `export default ${JSON.stringify(document)};`, map: null };
    },
  };
}
