//! `explain-eli10`: explains a topic so that a ten-year-old understands it.

use super::fields::Fields;
use super::{InputError, Prompt};

pub const MAX_TOPIC_CHARS: usize = 500;

#[derive(Debug, Clone, PartialEq)]
pub struct ExplainEli10Input {
    pub topic: String,
}

impl ExplainEli10Input {
    pub(super) fn parse(fields: &Fields) -> Result<Self, InputError> {
        Ok(Self { topic: fields.text("topic", MAX_TOPIC_CHARS)? })
    }

    pub fn prompt(&self) -> Prompt {
        let system = "You explain things to a curious ten-year-old. Use short sentences, everyday \
            words and one vivid comparison from a child's life. No jargon; if a technical word is \
            needed, explain it. Write at most three short paragraphs of markdown."
            .to_owned();
        Prompt { system, user: format!("Explain like I am 10: {}", self.topic), max_tokens: 400 }
    }
}
