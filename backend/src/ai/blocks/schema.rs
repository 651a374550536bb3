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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    use super::*;
    use crate::ai::blocks::BlockInput;

    /// Values as a fuzzer sends them: text with whitespace, control and far-away
    /// characters at any length around the limits, numbers (integral or not), and
    /// every other JSON type.
    fn value() -> impl Strategy<Value = Value> {
        let text = prop_oneof![
            "\\PC{0,12}",
            "[ \\t\\n\\u{85}\\u{a0}\\u{2000}\\u{3000}\\u{feff}\\u{1c}]{0,4}",
            (0usize..3, prop::sample::select(vec![499usize, 500, 501, 3999, 4000, 4001, 15999, 16000, 16001]))
                .prop_map(|(c, n)| ["x", "é", "😀"][c].repeat(n)),
            prop::sample::select(vec!["easy", "medium", "hard", "flowchart", "sequence", "mindmap", "gantt", "3", " 3"])
                .prop_map(String::from),
        ];
        prop_oneof![
            text.prop_map(Value::String),
            (-3i64..14).prop_map(Value::from),
            prop::sample::select(vec![0.5f64, 3.0, 10.0, 11.0, -1.0, 1e300]).prop_map(Value::from),
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            Just(serde_json::json!([1, "a"])),
            Just(serde_json::json!({"nested": true})),
        ]
    }

    fn input() -> impl Strategy<Value = (BlockType, Map<String, Value>)> {
        let names = prop::sample::select(vec!["question", "context", "topic", "count", "difficulty", "description", "kind", "colour", ""]);
        (prop::sample::select(BlockType::ALL.to_vec()), prop::collection::btree_map(names, value(), 0..4))
            .prop_map(|(block, fields)| (block, fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(600))]

        /// The published schema and the parser agree on every input: accepted
        /// exactly when valid, never a panic, and a refusal names a field.
        #[test]
        fn a_block_input_is_accepted_exactly_when_its_schema_says_it_is_valid((block, fields) in input()) {
            let validator = jsonschema::validator_for(&input_schema(block)).unwrap();
            let parsed = BlockInput::parse(block, &fields);
            let instance = Value::Object(fields.clone());
            prop_assert_eq!(parsed.is_ok(), validator.is_valid(&instance), "{:?} {}", parsed, instance);
            if let Err(error) = parsed {
                prop_assert!(!error.field.is_empty() || fields.contains_key(""));
            }
        }

        /// Query parameters (all strings) follow the same rules as their schemas.
        #[test]
        fn query_inputs_are_accepted_exactly_when_their_parameters_are_valid((block, fields) in input()) {
            let strings: Map<String, Value> = fields
                .into_iter()
                .filter_map(|(k, v)| match v { Value::String(s) => Some((k, Value::String(s))), Value::Number(n) => Some((k, Value::String(n.to_string()))), _ => None })
                .collect();
            let parameters = query_parameters(block);
            let valid = strings.keys().all(|k| parameters.iter().any(|(name, _, _)| name == k))
                && parameters.iter().all(|(name, required, schema)| match strings.get(name) {
                    None => !required,
                    Some(Value::String(raw)) => {
                        let typed = if schema["type"] == "integer" {
                            match raw.parse::<i64>() { Ok(n) if !raw.starts_with('+') => Value::from(n), _ => Value::String(raw.clone()) }
                        } else {
                            Value::String(raw.clone())
                        };
                        jsonschema::validator_for(schema).unwrap().is_valid(&typed)
                    }
                    Some(_) => false,
                });
            prop_assert_eq!(BlockInput::parse_query(block, &strings).is_ok(), valid, "{:?}", strings);
        }
    }
}
