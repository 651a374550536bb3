// Vite plugin that turns the AsyncAPI contract (YAML) into a JSON module at build time,
// so the client validates against the very file the backend tests use.
import { readFile } from "node:fs/promises";
import { parse } from "yaml";
import type { Plugin } from "vite";

export function yamlContract(): Plugin {
  return {
    name: "live-ai-yaml-contract",
    async load(id) {
      if (!id.endsWith(".yaml")) return null;
      const document: unknown = parse(await readFile(id, "utf8"));
      return { code: `export default ${JSON.stringify(document)};`, map: null };
    },
  };
}
