// Every HTTP request the client makes to the API goes through here: it carries the learner's
// token as `Authorization: Bearer`, and a 401 gets one retry with a fresh token (a second 401
// in a row is the caller's to report as `unauthorized`).
import { bearer, type TokenSource } from "./auth.js";

export class ApiHttp {
  constructor(
    private readonly fetch: typeof globalThis.fetch,
    readonly baseUrl: string,
    private readonly tokens: TokenSource,
  ) {}

  /** An API request; `path` starts with "/api/". Throws what fetch throws (network, abort). */
  async request(path: string, init: RequestInit = {}): Promise<Response> {
    let credential = await this.tokens.credential();
    for (let attempt = 1; ; attempt++) {
      const response = await this.fetch(`${this.baseUrl}${path}`, {
        ...init,
        headers: { ...(init.headers as Record<string, string> | undefined), ...bearer(credential) },
      });
      if (response.status !== 401 || attempt === 2) return response;
      // The body of the refused request is not needed; release the connection.
      await response.body?.cancel().catch(() => undefined);
      credential = await this.tokens.refresh(credential);
    }
  }

  /** A request that needs no credential (the config the page reads before anyone signs in). */
  requestPublic(path: string, init: RequestInit = {}): Promise<Response> {
    return this.fetch(`${this.baseUrl}${path}`, init);
  }
}
