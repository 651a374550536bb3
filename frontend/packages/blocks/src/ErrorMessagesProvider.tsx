"use client";
// The error→message table the blocks below read (see error-text.ts): a host rewords codes, or
// words new ones, without replacing any component. Entries merge over the defaults, and over an
// outer provider's.
import { createContext, useContext, useMemo, type ReactNode } from "react";
import { DEFAULT_ERROR_MESSAGES, type ErrorMessages } from "./error-text.js";

const ErrorMessagesContext = createContext<ErrorMessages>(DEFAULT_ERROR_MESSAGES);

export function ErrorMessagesProvider({ messages, children }: { messages: ErrorMessages; children?: ReactNode }) {
  const outer = useContext(ErrorMessagesContext);
  const merged = useMemo(() => ({ ...outer, ...messages }), [outer, messages]);
  return <ErrorMessagesContext.Provider value={merged}>{children}</ErrorMessagesContext.Provider>;
}

/** The table in force here, with `overrides` (a block's `errorMessages` prop) on top. */
export function useErrorMessages(overrides?: ErrorMessages): ErrorMessages {
  const inherited = useContext(ErrorMessagesContext);
  return useMemo(() => (overrides ? { ...inherited, ...overrides } : inherited), [inherited, overrides]);
}
