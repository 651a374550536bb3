// The learner's credential: the host app's `getToken()`, asked for every request (the host
// caches its token; asking each time is what lets a sign-out and a sign-in as someone else
// take effect at the next request), and asked with `{ refresh: true }` when the server refused
// the token it gave — once per refused token, shared by every request refused with it, so a
// burst of refusals costs one refresh, not one per request.

export interface GetTokenOptions {
  /** The server refused the last token: fetch a fresh one rather than returning the cached one. */
  refresh: boolean;
}

/**
 * Returns the learner's current token (a JWT or API key), or null when there is none. Called
 * for every request: return a cached token (and fetch a new one shortly before it expires, or
 * when `refresh` is set).
 */
export type GetToken = (options: GetTokenOptions) => Promise<string | null>;

export interface Credential {
  token: string | null;
}

export class TokenSource {
  /** A refresh in flight, and the token it replaces. */
  private refreshing: { from: string | null; fresh: Promise<Credential> } | undefined;
  /** The last token a refresh replaced: a late refusal of it needs no second refresh. */
  private replaced: { token: string | null } | undefined;

  constructor(private readonly getToken?: GetToken) {}

  /** The token to send now: the host's, asked again each time. */
  credential(): Promise<Credential> {
    if (this.refreshing) return this.refreshing.fresh;
    return this.ask(false);
  }

  /** `used` was refused: asks the host for a fresh token, unless someone already did. */
  refresh(used: Credential): Promise<Credential> {
    if (this.refreshing?.from === used.token) return this.refreshing.fresh;
    if (this.replaced && this.replaced.token === used.token) return this.credential();
    const fresh = this.ask(true);
    const refreshing = { from: used.token, fresh };
    this.refreshing = refreshing;
    const done = () => {
      if (this.refreshing === refreshing) this.refreshing = undefined;
    };
    fresh.then(() => {
      this.replaced = { token: used.token };
      done();
    }, done);
    return fresh;
  }

  /** Forgets what was learned about past tokens (the learner changed). */
  reset(): void {
    this.refreshing = undefined;
    this.replaced = undefined;
  }

  private async ask(refresh: boolean): Promise<Credential> {
    if (!this.getToken) return { token: null };
    return { token: (await this.getToken({ refresh })) || null };
  }
}

export function bearer(credential: Credential): Record<string, string> {
  return credential.token === null ? {} : { authorization: `Bearer ${credential.token}` };
}
