// Markdown as the plain words a screen reader should say (the announcer's pieces): rendered by
// the same parser, tags dropped, entities decoded. Never inserted as HTML, so no sanitizer is
// needed, and no DOM is needed either (server rendering).
import { Marked } from "marked";

const marked = new Marked({ gfm: true, async: false });

const ENTITIES: Record<string, string> = { amp: "&", lt: "<", gt: ">", quot: '"', "#39": "'", nbsp: " " };

export function plainText(markdown: string): string {
  const html = marked.parse(markdown, { async: false });
  return html
    .replace(/<[^>]*>/g, " ")
    .replace(/&(amp|lt|gt|quot|#39|nbsp);/g, (_match, name: string) => ENTITIES[name]!)
    .replace(/\s+/g, " ")
    .trim();
}
