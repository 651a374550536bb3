"use client";
// The client the hooks use: one per provider (so a host sets the API origin and the learner's
// token once), or the page-wide default when there is no provider.
import { createContext, createElement, useContext, useEffect, useRef, useState, type ReactNode } from "react";
import { useIsomorphicLayoutEffect } from "./layout-effect.js";
import { getDefaultStreamClient, StreamClient, type StreamClientOptions } from "@live-ai/client";

const StreamClientContext = createContext<StreamClient | null>(null);

export type StreamClientProviderProps = { children?: ReactNode } & (
  | { /** A client made by the host (tests, or one shared with non-React code). */ client: StreamClient }
  | ({ client?: undefined } & StreamClientOptions)
);

/**
 * Gives the hooks below one shared client: pass `client`, or the client's options (`baseUrl`,
 * `getToken`, …) to have one made. The latest `getToken` is always the one called.
 */
export function StreamClientProvider(props: StreamClientProviderProps) {
  const latestGetToken = useRef(props.client ? undefined : props.getToken);
  useIsomorphicLayoutEffect(() => {
    latestGetToken.current = props.client ? undefined : props.getToken;
  });
  const [own] = useState(() => {
    if (props.client) return null;
    const { children: _children, client: _client, getToken, ...options } = props;
    return new StreamClient({ ...options, ...(getToken ? { getToken: (asked) => latestGetToken.current?.(asked) ?? Promise.resolve(null) } : {}) });
  });
  useEffect(() => () => own?.dispose(), [own]);
  return createElement(StreamClientContext.Provider, { value: props.client ?? own }, props.children);
}

/** The provider's client, or the page-wide default one. */
export function useStreamClient(): StreamClient {
  return useContext(StreamClientContext) ?? getDefaultStreamClient();
}
