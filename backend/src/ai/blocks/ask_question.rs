//! `ask-question`: answers a learner's question in markdown, optionally grounded in
//! the lesson context the block sits in.

use super::fields::Fields;
use super::{InputError, Prompt};

pub const MAX_QUESTION_CHARS: usize = 4000;
pub const MAX_CONTEXT_CHARS: usize = 16000;

#[derive(Debug, Clone, PartialEq)]
pub struct AskQuestionInput {
    pub question: String,
    pub context: Option<String>,
}

impl AskQuestionInput {
    pub(super) fn parse(fields: &Fields) -> Result<Self, InputError> {
        Ok(Self {
            question: fields.text("question", MAX_QUESTION_CHARS)?,
            context: fields.optional_text("context", MAX_CONTEXT_CHARS)?.filter(|c| !c.trim().is_empty()),
        })
    }

    pub fn prompt(&self) -> Prompt {
        let system = "You are a patient tutor inside a learning app. Answer the learner's question \
            accurately and clearly in GitHub-flavoured markdown: a one-sentence direct answer first, \
            then a short explanation with an example. Use headings or lists only when they help. \
            If the question cannot be answered from what you know, say so."
            .to_owned();
        let user = match &self.context {
            Some(context) => format!("Lesson context:\n\"\"\"\n{context}\n\"\"\"\n\nQuestion: {}", self.question),
            None => format!("Question: {}", self.question),
        };
        Prompt { system, user, max_tokens: 800 }
    }
}
