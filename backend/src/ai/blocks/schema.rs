//! The JSON Schema of each block's input, as the parsers validate it: the OpenAPI
//! document publishes these, and property tests check that a random input is
//! accepted exactly when its schema says it is valid, so the two cannot drift.
//!
//! Two deliberate details: a required text must hold a character that is not
//! whitespace (the class below is Rust's `char::is_whitespace`, spelled out so
//! every regex engine agrees), and an optional field may be `null`, which counts
//! as absent.

use serde_json::{json, Value};

use super::{ask_question, diagram, explain_eli10, quiz, BlockType};

/// Matches a string holding at least one non-whitespace character.
pub const NOT_BLANK: &str = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";

fn required_text(max: usize) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": max, "pattern": NOT_BLANK})
}

fn optional_text(max: usize) -> Value {
    json!({"type": ["string", "null"], "maxLength": max})
}

fn optional_choice(options: &[&str]) -> Value {
    let mut values: Vec<Value> = options.iter().map(|o| json!(o)).collect();
    values.push(Value::Null);
    json!({"type": ["string", "null"], "enum": values})
}

/// The input of `block` as a JSON body (`POST /api/ai-block/…`, `POST /api/streams`,
/// a WebSocket `start`).
pub fn input_schema(block: BlockType) -> Value {
    let (required, properties) = match block {
        BlockType::AskQuestion => (
            "question",
            json!({
                "question": required_text(ask_question::MAX_QUESTION_CHARS),
                "context": optional_text(ask_question::MAX_CONTEXT_CHARS),
            }),
        ),
        BlockType::ExplainEli10 => ("topic", json!({"topic": required_text(explain_eli10::MAX_TOPIC_CHARS)})),
        BlockType::Quiz => (
            "topic",
            json!({
                "topic": required_text(quiz::MAX_TOPIC_CHARS),
                "count": {"type": ["integer", "null"], "minimum": 1, "maximum": quiz::MAX_QUESTIONS, "description": "Questions to write (default 3)."},
                "difficulty": optional_choice(&["easy", "medium", "hard"]),
            }),
        ),
        BlockType::Diagram => (
            "description",
            json!({
                "description": required_text(diagram::MAX_DESCRIPTION_CHARS),
                "kind": optional_choice(&["flowchart", "sequence", "mindmap"]),
            }),
        ),
    };
    json!({"type": "object", "additionalProperties": false, "required": [required], "properties": properties})
}

/// The input of `block` as query parameters (`GET /api/stream/ai-block/…`): the
/// same fields, each a plain value (no `null`); `count` is a decimal integer.
pub fn query_parameters(block: BlockType) -> Vec<(String, bool, Value)> {
    let schema = input_schema(block);
    let required: Vec<&str> = schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    schema["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, property)| {
            let mut property = property.clone();
            if let Some(types) = property["type"].as_array() {
                property["type"] = types.iter().find(|t| *t != "null").cloned().unwrap_or(Value::Null);
            }
            if let Some(values) = property.get_mut("enum").and_then(Value::as_array_mut) {
                values.retain(|v| !v.is_null());
            }
            (name.clone(), required.contains(&name.as_str()), property)
        })
        .collect()
}
