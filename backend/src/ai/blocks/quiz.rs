//! `quiz`: multiple-choice questions on a topic, streamed as JSON. Each question is
//! validated and sent as a `part` as soon as its object closes, while the text still
//! streams; the whole JSON is validated again at the end and becomes the result.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::fields::Fields;
use super::json_items::ArrayItemScanner;
use super::{InputError, InvalidOutput, OutputParser, Part, Prompt};
use crate::ai::streaming::events::PartKind;

pub const MAX_TOPIC_CHARS: usize = 500;
pub const MAX_QUESTIONS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Difficulty {
    Easy,
    Medium,
    Hard,
}

impl Difficulty {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Easy => "easy",
            Self::Medium => "medium",
            Self::Hard => "hard",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuizInput {
    pub topic: String,
    pub count: usize,
    pub difficulty: Difficulty,
}

impl QuizInput {
    pub(super) fn parse(fields: &Fields) -> Result<Self, InputError> {
        let difficulties = [("easy", Difficulty::Easy), ("medium", Difficulty::Medium), ("hard", Difficulty::Hard)];
        Ok(Self {
            topic: fields.text("topic", MAX_TOPIC_CHARS)?,
            count: fields.integer("count", 1, MAX_QUESTIONS as i64)?.unwrap_or(3) as usize,
            difficulty: fields.choice("difficulty", &difficulties)?.unwrap_or(Difficulty::Medium),
        })
    }

    pub fn prompt(&self) -> Prompt {
        let system = "You write multiple-choice quiz questions for learners. Reply with JSON only, no \
            prose and no code fences, exactly of this shape:\n\
            {\"questions\":[{\"question\":\"…\",\"choices\":[\"…\",\"…\",\"…\",\"…\"],\"answer_index\":0,\"explanation\":\"…\"}]}\n\
            Each question has 2 to 6 distinct choices, exactly one correct; answer_index is the \
            0-based index of the correct choice; the explanation says in one or two sentences why \
            it is correct."
            .to_owned();
        let user = format!(
            "Write {} {} question{} about: {}",
            self.count,
            self.difficulty.as_str(),
            if self.count == 1 { "" } else { "s" },
            self.topic
        );
        Prompt { system, user, max_tokens: 300 * self.count as u32 + 100 }
    }
}

/// One validated question, as sent in `part.data` and in the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuizQuestion {
    pub question: String,
    pub choices: Vec<String>,
    pub answer_index: usize,
    pub explanation: String,
}

impl QuizQuestion {
    fn validate(self, index: usize) -> Result<Self, InvalidOutput> {
        let fail = |why: &str| Err(InvalidOutput(format!("question {}: {why}", index + 1)));
        if self.question.trim().is_empty() {
            return fail("the question is empty");
        }
        if !(2..=6).contains(&self.choices.len()) {
            return fail("needs 2 to 6 choices");
        }
        if self.choices.iter().any(|c| c.trim().is_empty()) {
            return fail("a choice is empty");
        }
        if self.answer_index >= self.choices.len() {
            return fail("answer_index does not point at a choice");
        }
        if self.explanation.trim().is_empty() {
            return fail("the explanation is empty");
        }
        Ok(self)
    }

    fn parse(source: &str, index: usize) -> Result<Self, InvalidOutput> {
        serde_json::from_str::<Self>(source).map_err(|e| InvalidOutput(format!("question {}: {e}", index + 1)))?.validate(index)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum QuizDocument {
    Wrapped { questions: Vec<Value> },
    Bare(Vec<Value>),
}

pub struct QuizParser {
    scanner: ArrayItemScanner,
    streamed: usize,
    requested: usize,
}

impl QuizParser {
    pub fn new(requested: usize) -> Self {
        Self { scanner: ArrayItemScanner::default(), streamed: 0, requested }
    }
}

/// The JSON document inside `text`, without prose or fences around it.
fn json_document(text: &str) -> &str {
    let start = text.find(['{', '[']).unwrap_or(0);
    let end = text.rfind(['}', ']']).map_or(text.len(), |i| i + 1);
    text.get(start..end.max(start)).unwrap_or("")
}

impl OutputParser for QuizParser {
    fn push(&mut self, token: &str) -> Result<Vec<Part>, InvalidOutput> {
        let mut parts = Vec::new();
        for source in self.scanner.push(token) {
            if self.streamed == MAX_QUESTIONS {
                return Err(InvalidOutput(format!("more than {MAX_QUESTIONS} questions")));
            }
            let question = QuizQuestion::parse(&source, self.streamed)?;
            parts.push(Part {
                kind: PartKind::QuizQuestion,
                index: self.streamed as u32,
                data: serde_json::to_value(question).expect("plain data serialises"),
            });
            self.streamed += 1;
        }
        Ok(parts)
    }

    fn finish(&mut self, text: &str) -> Result<Value, InvalidOutput> {
        let document: QuizDocument =
            serde_json::from_str(json_document(text)).map_err(|e| InvalidOutput(format!("the quiz is not the JSON asked for: {e}")))?;
        let raw = match document {
            QuizDocument::Wrapped { questions } | QuizDocument::Bare(questions) => questions,
        };
        if raw.is_empty() {
            return Err(InvalidOutput("the quiz has no questions".into()));
        }
        let questions = raw.iter().enumerate().map(|(i, v)| QuizQuestion::parse(&v.to_string(), i)).collect::<Result<Vec<_>, _>>()?;
        if questions.len() != self.streamed {
            return Err(InvalidOutput(format!("{} questions were streamed but the quiz holds {}", self.streamed, questions.len())));
        }
        // Fewer questions than asked is still a usable quiz; it is logged, not refused.
        if questions.len() != self.requested {
            tracing::info!(requested = self.requested, got = questions.len(), "quiz question count differs from the request");
        }
        Ok(json!({ "questions": questions }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIZ: &str = r#"{"questions":[{"question":"2+2?","choices":["3","4"],"answer_index":1,"explanation":"Two twos are four."},{"question":"Sky colour?","choices":["Blue","Green","Red"],"answer_index":0,"explanation":"Rayleigh scattering."}]}"#;

    #[test]
    fn each_question_becomes_a_part_as_soon_as_it_closes() {
        let mut parser = QuizParser::new(2);
        let mut parts = Vec::new();
        let mut seen_at = Vec::new();
        for (i, c) in QUIZ.chars().enumerate() {
            let new = parser.push(&c.to_string()).unwrap();
            if !new.is_empty() {
                seen_at.push(i);
            }
            parts.extend(new);
        }
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].index, 1);
        assert_eq!(parts[0].data["choices"][1], "4");
        assert!(seen_at[0] < QUIZ.len() / 2, "the first part must arrive mid-stream");
        let result = parser.finish(QUIZ).unwrap();
        assert_eq!(result["questions"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_question_with_an_out_of_range_answer_is_invalid_output() {
        let bad = r#"{"questions":[{"question":"q","choices":["a","b"],"answer_index":2,"explanation":"e"}]}"#;
        let err = QuizParser::new(1).push(bad).unwrap_err();
        assert!(err.0.contains("answer_index"), "{err}");
    }

    #[test]
    fn unknown_keys_and_truncated_json_are_invalid_output() {
        let extra = r#"[{"question":"q","choices":["a","b"],"answer_index":0,"explanation":"e","hint":"x"}]"#;
        assert!(QuizParser::new(1).push(extra).is_err());
        let mut parser = QuizParser::new(1);
        let truncated = &QUIZ[..QUIZ.len() - 3];
        parser.push(truncated).unwrap();
        assert!(parser.finish(truncated).is_err());
    }

    #[test]
    fn fenced_json_is_accepted() {
        let fenced = format!("```json\n{QUIZ}\n```");
        let mut parser = QuizParser::new(2);
        assert_eq!(parser.push(&fenced).unwrap().len(), 2);
        assert!(parser.finish(&fenced).is_ok());
    }
}
