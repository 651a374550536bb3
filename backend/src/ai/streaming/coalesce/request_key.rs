//! When two requests are the same request: a digest of everything that shapes
//! the answer — the scope it may be shared in, the block, the input normalized
//! (defaults filled in by parsing; text trimmed, runs of white space made one
//! space), the provider and model, and the prompt the normalized input renders
//! (which carries the prompt template's version and the sampling parameters the
//! blocks set, `max_tokens`). A change to any prompt template therefore never
//! serves an answer written for the old one.
//!
//! A question with a lesson `context` is never shared: the context is the
//! learner's own material, and two contexts rarely match anyway.

use sha2::{Digest, Sha256};

use crate::ai::blocks::ask_question::AskQuestionInput;
use crate::ai::blocks::diagram::DiagramInput;
use crate::ai::blocks::explain_eli10::ExplainEli10Input;
use crate::ai::blocks::quiz::QuizInput;
use crate::ai::blocks::BlockInput;
use crate::ai::providers::Provider;

/// Bumped when the digest's composition changes, so old keys are never matched.
const KEY_VERSION: &str = "coalesce-v1";

/// The digest naming one request in one scope (hex SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey(String);

impl RequestKey {
    /// The key of `input` asked of `provider` in `scope`; `None` when the input
    /// is never shared.
    pub fn of(scope: &str, input: &BlockInput, provider: &dyn Provider) -> Option<Self> {
        if matches!(input, BlockInput::AskQuestion(AskQuestionInput { context: Some(_), .. })) {
            return None;
        }
        let normalized = normalized(input);
        let prompt = normalized.prompt();
        let mut hash = Sha256::new();
        // Each part length-prefixed, so no two compositions run together.
        let max_tokens = prompt.max_tokens.to_string();
        let parts = [
            KEY_VERSION,
            scope,
            input.block_type().as_str(),
            provider.name(),
            provider.model(),
            &normalized.fingerprint(),
            &prompt.system,
            &prompt.user,
            &max_tokens,
        ];
        for part in parts {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        Some(Self(hex::encode(hash.finalize())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Text as the model would read it the same: trimmed, white space runs as one space.
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn normalized(input: &BlockInput) -> BlockInput {
    match input {
        BlockInput::AskQuestion(i) => {
            BlockInput::AskQuestion(AskQuestionInput { question: words(&i.question), context: i.context.as_deref().map(words) })
        }
        BlockInput::ExplainEli10(i) => BlockInput::ExplainEli10(ExplainEli10Input { topic: words(&i.topic) }),
        BlockInput::Quiz(i) => BlockInput::Quiz(QuizInput { topic: words(&i.topic), ..i.clone() }),
        BlockInput::Diagram(i) => BlockInput::Diagram(DiagramInput { description: words(&i.description), ..i.clone() }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ai::blocks::BlockType;
    use crate::ai::providers::demo::DemoProvider;
    use crate::config::settings::DemoSettings;

    fn demo() -> DemoProvider {
        DemoProvider::new(DemoSettings::unpaced())
    }

    fn key(scope: &str, block: BlockType, input: serde_json::Value) -> Option<RequestKey> {
        let input = BlockInput::parse(block, input.as_object().unwrap()).unwrap();
        RequestKey::of(scope, &input, &demo())
    }

    #[test]
    fn the_same_request_spelled_differently_is_one_request() {
        let a = key("scope:7b", BlockType::Quiz, json!({"topic": "the water cycle"}));
        let b = key("scope:7b", BlockType::Quiz, json!({"topic": "  the   water\ncycle ", "count": 3, "difficulty": "medium"}));
        assert!(a.is_some());
        assert_eq!(a, b);
    }

    #[test]
    fn scope_block_input_and_parameters_each_tell_requests_apart() {
        let base = key("scope:7b", BlockType::Quiz, json!({"topic": "tides"}));
        for other in [
            key("scope:7c", BlockType::Quiz, json!({"topic": "tides"})),
            key("principal:jwt:ada", BlockType::Quiz, json!({"topic": "tides"})),
            key("scope:7b", BlockType::ExplainEli10, json!({"topic": "tides"})),
            key("scope:7b", BlockType::Quiz, json!({"topic": "Tides"})),
            key("scope:7b", BlockType::Quiz, json!({"topic": "tides", "count": 4})),
            key("scope:7b", BlockType::Quiz, json!({"topic": "tides", "difficulty": "hard"})),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn a_question_with_a_context_is_never_shared() {
        assert_eq!(key("scope:7b", BlockType::AskQuestion, json!({"question": "Why?", "context": "light"})), None);
        assert!(key("scope:7b", BlockType::AskQuestion, json!({"question": "Why?", "context": "  "})).is_some(), "a blank context is none");
    }
}
