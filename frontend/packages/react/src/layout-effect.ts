// useLayoutEffect in the browser, useEffect on a server (where neither runs, and React 18 warns
// about the former): for the refs the hooks keep current before the browser paints.
import { useEffect, useLayoutEffect } from "react";

export const useIsomorphicLayoutEffect = typeof document === "undefined" ? useEffect : useLayoutEffect;
