//! `diagram`: turns a description into Mermaid source. The parser strips code
//! fences models like to add and checks the diagram header matches the kind asked
//! for; full Mermaid parsing happens in the browser, which renders it.

use serde_json::{json, Value};

use super::fields::Fields;
use super::{InputError, InvalidOutput, OutputParser, Part, Prompt};

pub const MAX_DESCRIPTION_CHARS: usize = 4000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiagramKind {
    Flowchart,
    Sequence,
    Mindmap,
}

impl DiagramKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flowchart => "flowchart",
            Self::Sequence => "sequence",
            Self::Mindmap => "mindmap",
        }
    }

    /// Mermaid keywords that may open a diagram of this kind.
    fn headers(self) -> &'static [&'static str] {
        match self {
            Self::Flowchart => &["flowchart", "graph"],
            Self::Sequence => &["sequenceDiagram"],
            Self::Mindmap => &["mindmap"],
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DiagramInput {
    pub description: String,
    pub kind: DiagramKind,
}

impl DiagramInput {
    pub(super) fn parse(fields: &Fields) -> Result<Self, InputError> {
        let kinds = [("flowchart", DiagramKind::Flowchart), ("sequence", DiagramKind::Sequence), ("mindmap", DiagramKind::Mindmap)];
        Ok(Self {
            description: fields.text("description", MAX_DESCRIPTION_CHARS)?,
            kind: fields.choice("kind", &kinds)?.unwrap_or(DiagramKind::Flowchart),
        })
    }

    pub fn prompt(&self) -> Prompt {
        let header = match self.kind {
            DiagramKind::Flowchart => "flowchart TD",
            DiagramKind::Sequence => "sequenceDiagram",
            DiagramKind::Mindmap => "mindmap",
        };
        let system = format!(
            "You draw diagrams for a learning app. Reply with Mermaid source only: no prose, no \
             code fences. The first line must be `{header}`. Keep it to at most 15 nodes, with \
             short labels in double quotes when they contain punctuation."
        );
        Prompt { system, user: format!("Diagram: {}", self.description), max_tokens: 600 }
    }
}

pub struct DiagramParser {
    kind: DiagramKind,
}

impl DiagramParser {
    pub fn new(kind: DiagramKind) -> Self {
        Self { kind }
    }
}

/// The Mermaid source inside `text`: the first fenced block when there is one
/// (models often add prose around it), else the whole text, trimmed.
pub fn mermaid_source(text: &str) -> &str {
    let Some((_, fenced)) = text.split_once("```") else { return text.trim() };
    // Drop the info string (`mermaid`), then everything from the closing fence on.
    let body = fenced.split_once('\n').map_or("", |(_, body)| body);
    body.split_once("```").map_or(body, |(inside, _)| inside).trim()
}

impl OutputParser for DiagramParser {
    fn push(&mut self, _token: &str) -> Result<Vec<Part>, InvalidOutput> {
        Ok(Vec::new())
    }

    fn finish(&mut self, text: &str) -> Result<Value, InvalidOutput> {
        let source = mermaid_source(text);
        let first = source.lines().next().unwrap_or("").trim();
        let keyword = first.split_whitespace().next().unwrap_or("");
        if !self.kind.headers().contains(&keyword) {
            return Err(InvalidOutput(format!(
                "expected a Mermaid {} diagram starting with `{}`, got `{}`",
                self.kind.as_str(),
                self.kind.headers()[0],
                first.chars().take(60).collect::<String>()
            )));
        }
        if source.lines().count() < 2 {
            return Err(InvalidOutput("the diagram has a header but no content".into()));
        }
        Ok(json!({ "kind": self.kind.as_str(), "source": source }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_are_stripped_from_the_source() {
        assert_eq!(mermaid_source("```mermaid\nflowchart TD\n  A-->B\n```\n"), "flowchart TD\n  A-->B");
        assert_eq!(mermaid_source("\nflowchart TD\nA-->B\n"), "flowchart TD\nA-->B");
        assert_eq!(mermaid_source("Here is your diagram:\n```mermaid\ngraph LR\nA-->B\n```\nHope it helps!"), "graph LR\nA-->B");
    }

    #[test]
    fn the_header_must_match_the_kind_asked_for() {
        let mut p = DiagramParser::new(DiagramKind::Sequence);
        assert!(p.finish("flowchart TD\nA-->B").is_err());
        let ok = p.finish("sequenceDiagram\nA->>B: hi").unwrap();
        assert_eq!(ok["kind"], "sequence");
        assert!(DiagramParser::new(DiagramKind::Flowchart).finish("graph LR\nA-->B").is_ok());
        assert!(DiagramParser::new(DiagramKind::Mindmap).finish("mindmap").is_err());
    }
}
