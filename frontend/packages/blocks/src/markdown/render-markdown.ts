// Markdown → safe HTML for model output, safe by construction wherever it runs: raw HTML in the
// markdown is shown as text, and links and images keep only harmless URLs (http, https, mailto,
// relative); a link to anything else shows its text, an image its alt text. Where there is a
// DOM, DOMPurify then sanitizes the result as well (defence in depth); on a server (SSR) there
// is none, and DOMPurify cannot run there, so the construction alone has to be, and is, enough.
import DOMPurify from "dompurify";
import { Marked, type Tokens } from "marked";

const escapeHtml = (text: string) =>
  text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

/**
 * A URL with no scheme (relative, #fragment) or one of the harmless schemes, as a browser will
 * read it: character references decoded (an attribute's `&#x09;` is a tab), then the tabs,
 * newlines and control characters browsers ignore dropped. A named reference left before the
 * path (`&colon;`) could hide a scheme, so it is refused.
 */
export function isSafeUrl(href: string): boolean {
  const decoded = href.replace(/&#(x[0-9a-f]+|\d+);?/gi, (_match, code: string) =>
    String.fromCodePoint(Math.min(code[0] === "x" || code[0] === "X" ? parseInt(code.slice(1), 16) : Number(code), 0x10ffff)),
  );
  const url = decoded.replace(/[\u0000-\u0020\u007f]/g, "");
  const head = url.split(/[/?#]/, 1)[0]!;
  if (/&[a-z0-9]+;?/i.test(head)) return false;
  const scheme = /^([^:]*):/.exec(head)?.[1]?.toLowerCase();
  return scheme === undefined || scheme === "http" || scheme === "https" || scheme === "mailto";
}

const marked = new Marked({
  gfm: true,
  async: false,
  renderer: {
    html: ({ text }) => escapeHtml(text),
    link(token: Tokens.Link) {
      return isSafeUrl(token.href) ? false : this.parser.parseInline(token.tokens);
    },
    image(token: Tokens.Image) {
      return isSafeUrl(token.href) ? false : escapeHtml(token.text);
    },
  },
});

const purify: { sanitize?: typeof DOMPurify.sanitize } = DOMPurify;

export function renderMarkdown(source: string): string {
  const html = marked.parse(source, { async: false });
  return typeof purify.sanitize === "function" ? purify.sanitize(html, { USE_PROFILES: { html: true } }) : html;
}
