// The learner's credential: the host app's `getToken()`, asked once and cached, and asked again
// (once, shared by every request that was refused with the same token) when the server answers
// 401. A generation number tells a refusal of the current token from one of a token already
// replaced, so a burst of refusals costs one refresh, not one per request.

/** Returns the learner's current token (a JWT or API key), or null when there is none. */
export type GetToken = () => Promise<string | null>;

export interface Credential {
  token: string | null;
  generation: number;
}

export class TokenSource {
  private generation = 0;
  private current: Promise<Credential> | undefined;

  constructor(private readonly getToken?: GetToken) {}

  /** The token to send now; the host is asked only the first time (or after a refresh). */
  credential(): Promise<Credential> {
    if (!this.getToken) return Promise.resolve({ token: null, generation: 0 });
    this.current ??= this.ask(this.generation);
    return this.current;
  }

  /** `used` was refused: asks the host for a fresh token, unless someone already did. */
  refresh(used: Credential): Promise<Credential> {
    if (used.generation === this.generation) {
      this.generation += 1;
      this.current = undefined;
    }
    return this.credential();
  }

  private ask(generation: number): Promise<Credential> {
    const asked = this.getToken!().then((token) => ({ token: token || null, generation }));
    // A failed ask is not cached: the next request asks again.
    asked.catch(() => {
      if (this.current === asked) this.current = undefined;
    });
    return asked;
  }
}

export function bearer(credential: Credential): Record<string, string> {
  return credential.token === null ? {} : { authorization: `Bearer ${credential.token}` };
}
