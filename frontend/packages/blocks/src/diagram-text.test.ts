// A diagram's text alternative: the demo model's three kinds, and sources written by hand.
import { describe, expect, it } from "vitest";
import { diagramDescription } from "./diagram-text.js";

describe("diagramDescription", () => {
  it.each([
    [
      'flowchart TD\n    S0["Sun heats the sea"]\n    S1["Water rises"]\n    S2["Clouds form"]\n    S0 --> S1\n    S1 --> S2\n',
      "Flowchart: Sun heats the sea leads to Water rises; Water rises leads to Clouds form.",
    ],
    ["graph LR\n  A[Start] -->|yes| B(Go)\n  A --> C{Stop}", "Flowchart: Start leads to Go (yes); Start leads to Stop."],
    [
      "sequenceDiagram\n    participant L as Learner\n    participant S as System\n    L->>S: asks why\n    S-->>L: explains\n",
      "Sequence diagram: Learner to System: asks why; System to Learner: explains.",
    ],
    ["mindmap\n  root((Planets))\n    Mercury\n    Venus\n", "Mind map of Planets: Mercury, Venus."],
    ["pie title Pets\n  \"Dogs\" : 386", "A diagram; its Mermaid source is shown below it."],
  ])("says what %j shows", (source, words) => {
    expect(diagramDescription(source)).toBe(words);
  });
});
