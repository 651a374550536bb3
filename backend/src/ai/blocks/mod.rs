//! The four AI blocks. Each owns its input validation, its prompt template and its
//! output parser; this module maps a block type to them.

pub mod ask_question;
pub mod diagram;
pub mod explain_eli10;
pub mod fields;
mod json_items;
pub mod quiz;
pub mod schema;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use fields::InputError;

use crate::ai::streaming::events::PartKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BlockType {
    AskQuestion,
    #[serde(rename = "explain-eli10")]
    ExplainEli10,
    Quiz,
    Diagram,
}

impl BlockType {
    pub const ALL: [BlockType; 4] = [Self::AskQuestion, Self::ExplainEli10, Self::Quiz, Self::Diagram];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AskQuestion => "ask-question",
            Self::ExplainEli10 => "explain-eli10",
            Self::Quiz => "quiz",
            Self::Diagram => "diagram",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == raw)
    }
}

/// A block's validated input.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockInput {
    AskQuestion(ask_question::AskQuestionInput),
    ExplainEli10(explain_eli10::ExplainEli10Input),
    Quiz(quiz::QuizInput),
    Diagram(diagram::DiagramInput),
}

/// What a provider is asked: a system and a user message, plus output limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub system: String,
    pub user: String,
    pub max_tokens: u32,
}

/// A validated structured piece of output, sent as a `part` event.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub kind: PartKind,
    pub index: u32,
    pub data: Value,
}

/// Model output that does not have the shape its block asked for.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidOutput(pub String);

/// Turns a block's streamed text into parts while it streams, and into the final
/// result when it ends.
pub trait OutputParser: Send {
    /// Feeds the next token; returns the parts it completed.
    fn push(&mut self, token: &str) -> Result<Vec<Part>, InvalidOutput>;
    /// The whole text has arrived; returns the block's result.
    fn finish(&mut self, text: &str) -> Result<Value, InvalidOutput>;
}

impl BlockInput {
    /// Validates `fields` of a JSON body for `block`.
    pub fn parse(block: BlockType, fields: &Map<String, Value>) -> Result<Self, InputError> {
        Self::parse_fields(block, fields::Fields::new(fields))
    }

    /// Validates query parameters (each value a string) for `block`.
    pub fn parse_query(block: BlockType, fields: &Map<String, Value>) -> Result<Self, InputError> {
        Self::parse_fields(block, fields::Fields::from_query(fields))
    }

    fn parse_fields(block: BlockType, fields: fields::Fields) -> Result<Self, InputError> {
        let input = match block {
            BlockType::AskQuestion => Self::AskQuestion(ask_question::AskQuestionInput::parse(&fields)?),
            BlockType::ExplainEli10 => Self::ExplainEli10(explain_eli10::ExplainEli10Input::parse(&fields)?),
            BlockType::Quiz => Self::Quiz(quiz::QuizInput::parse(&fields)?),
            BlockType::Diagram => Self::Diagram(diagram::DiagramInput::parse(&fields)?),
        };
        fields.reject_unknown()?;
        Ok(input)
    }

    pub fn block_type(&self) -> BlockType {
        match self {
            Self::AskQuestion(_) => BlockType::AskQuestion,
            Self::ExplainEli10(_) => BlockType::ExplainEli10,
            Self::Quiz(_) => BlockType::Quiz,
            Self::Diagram(_) => BlockType::Diagram,
        }
    }

    pub fn prompt(&self) -> Prompt {
        match self {
            Self::AskQuestion(input) => input.prompt(),
            Self::ExplainEli10(input) => input.prompt(),
            Self::Quiz(input) => input.prompt(),
            Self::Diagram(input) => input.prompt(),
        }
    }

    pub fn output_parser(&self) -> Box<dyn OutputParser> {
        match self {
            Self::AskQuestion(_) | Self::ExplainEli10(_) => Box::new(MarkdownParser),
            Self::Quiz(input) => Box::new(quiz::QuizParser::new(input.count)),
            Self::Diagram(input) => Box::new(diagram::DiagramParser::new(input.kind)),
        }
    }

    /// The learner's own words (question, context, topic, description), joined:
    /// what input moderation reads. Choices from a list (count, difficulty,
    /// kind) are not words of the learner's.
    pub fn learner_text(&self) -> String {
        match self {
            Self::AskQuestion(i) => match &i.context {
                Some(context) => format!("{}\n\n{context}", i.question),
                None => i.question.clone(),
            },
            Self::ExplainEli10(i) => i.topic.clone(),
            Self::Quiz(i) => i.topic.clone(),
            Self::Diagram(i) => i.description.clone(),
        }
    }

    /// A stable digest of the block and its input: a reused idempotency key must
    /// come with the same request. Stable across processes and builds (FNV-1a).
    pub fn fingerprint(&self) -> String {
        let canonical = match self {
            Self::AskQuestion(i) => serde_json::json!({"question": i.question, "context": i.context}),
            Self::ExplainEli10(i) => serde_json::json!({"topic": i.topic}),
            Self::Quiz(i) => serde_json::json!({"topic": i.topic, "count": i.count, "difficulty": i.difficulty.as_str()}),
            Self::Diagram(i) => serde_json::json!({"description": i.description, "kind": i.kind.as_str()}),
        };
        format!("{}:{:016x}", self.block_type().as_str(), fnv1a(&canonical.to_string()))
    }
}

/// FNV-1a, 64 bits: a small stable hash for fingerprints and demo seeds.
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Output of the text blocks: the markdown as written.
struct MarkdownParser;

impl OutputParser for MarkdownParser {
    fn push(&mut self, _token: &str) -> Result<Vec<Part>, InvalidOutput> {
        Ok(Vec::new())
    }

    fn finish(&mut self, text: &str) -> Result<Value, InvalidOutput> {
        if text.trim().is_empty() {
            return Err(InvalidOutput("the model returned no text".into()));
        }
        Ok(serde_json::json!({ "markdown": text }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_types_round_trip_through_their_names() {
        for block in BlockType::ALL {
            assert_eq!(BlockType::parse(block.as_str()), Some(block));
            assert_eq!(serde_json::to_value(block).unwrap(), block.as_str());
        }
        assert_eq!(BlockType::parse("poem"), None);
    }

    #[test]
    fn unknown_fields_are_named_in_the_error() {
        let fields = serde_json::json!({"topic": "x", "colour": "red"});
        let err = BlockInput::parse(BlockType::ExplainEli10, fields.as_object().unwrap()).unwrap_err();
        assert_eq!(err.field, "colour");
    }

    #[test]
    fn fingerprints_tell_requests_apart_and_ignore_defaults_spelled_out() {
        let parse = |v: serde_json::Value| BlockInput::parse(BlockType::Quiz, v.as_object().unwrap()).unwrap();
        let a = parse(serde_json::json!({"topic": "x"}));
        let same = parse(serde_json::json!({"topic": "x", "count": 3, "difficulty": "medium"}));
        let other = parse(serde_json::json!({"topic": "y"}));
        assert_eq!(a.fingerprint(), same.fingerprint());
        assert_ne!(a.fingerprint(), other.fingerprint());
        assert!(a.fingerprint().starts_with("quiz:"));
    }

    #[test]
    fn empty_markdown_is_invalid_output() {
        assert!(MarkdownParser.finish("  \n").is_err());
        assert_eq!(MarkdownParser.finish("# Hi").unwrap(), serde_json::json!({"markdown": "# Hi"}));
    }
}
