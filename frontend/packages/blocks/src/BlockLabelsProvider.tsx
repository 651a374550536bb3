"use client";
// The label table the blocks below read (see block-labels.ts), the way ErrorMessagesProvider
// hands down the error messages: entries merge over the defaults, and over an outer provider's.
import { createContext, useContext, useMemo, type ReactNode } from "react";
import { DEFAULT_BLOCK_LABELS, type BlockLabels } from "./block-labels.js";

const BlockLabelsContext = createContext<BlockLabels>(DEFAULT_BLOCK_LABELS);

export function BlockLabelsProvider({ labels, children }: { labels: Partial<BlockLabels>; children?: ReactNode }) {
  const outer = useContext(BlockLabelsContext);
  const merged = useMemo(() => ({ ...outer, ...labels }), [outer, labels]);
  return <BlockLabelsContext.Provider value={merged}>{children}</BlockLabelsContext.Provider>;
}

/** The labels in force here, with `overrides` (a block's `labels` prop) on top. */
export function useBlockLabels(overrides?: Partial<BlockLabels>): BlockLabels {
  const inherited = useContext(BlockLabelsContext);
  return useMemo(() => (overrides ? { ...inherited, ...overrides } : inherited), [inherited, overrides]);
}
