// @live-ai/blocks: the four Live AI Blocks as React components. Styles are opt-in:
// import "@live-ai/blocks/styles.css". Mermaid (diagrams) and marked + DOMPurify (markdown)
// are dependencies of this package only; Mermaid loads on the first diagram drawn.
export { AskQuestionBlock } from "./AskQuestionBlock.js";
export { ExplainELI10Block } from "./ExplainELI10Block.js";
export { QuizBlock } from "./QuizBlock.js";
export { DiagramBlock } from "./DiagramBlock.js";
export type { BlockProps } from "./block-stream.js";
export { BlockFrame, LiveOutput, isActive } from "./BlockFrame.js";
export { ErrorNotice } from "./ErrorNotice.js";
export { DEFAULT_ERROR_MESSAGES, errorAction, errorText } from "./error-text.js";
export type { ErrorMessage, ErrorMessages } from "./error-text.js";
export { ErrorMessagesProvider } from "./ErrorMessagesProvider.js";
export { DEFAULT_BLOCK_LABELS } from "./block-labels.js";
export type { BlockLabels } from "./block-labels.js";
export { BlockLabelsProvider } from "./BlockLabelsProvider.js";
export { Announcer } from "./a11y/Announcer.js";
export { diagramDescription } from "./diagram-text.js";
export { StreamingMarkdown, useFinishedParagraphs } from "./markdown/StreamingMarkdown.js";
export { renderMarkdown } from "./markdown/render-markdown.js";
export { MermaidDiagram, mermaidSource } from "./MermaidDiagram.js";
