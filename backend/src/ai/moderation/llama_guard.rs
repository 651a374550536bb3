//! `MODERATION_PROVIDER=llama-guard`: Llama Guard 3 served by an
//! OpenAI-compatible chat server (vLLM, llama.cpp's `llama-server`, Ollama).
//!
//! The server applies the model's own chat template, which asks Llama Guard
//! about the conversation's last turn: a learner's input is sent as the user
//! turn; an output window as the assistant's answer to the learner's input, so
//! it is judged as an answer (a refusal to a bad question is safe). The model
//! answers `safe`, or `unsafe` and a line of hazard codes (`S1,S11`), mapped to
//! the shared categories; it gives no scores.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use super::category;
use super::http::JsonPost;
use super::moderator::{Check, Flag, ModerationError, Moderator, Stage, Verdict};
use crate::config::settings::Secret;

pub struct LlamaGuard {
    post: JsonPost,
    model: String,
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
}

/// The verdict in Llama Guard's answer text.
pub fn parse_answer(answer: &str) -> Result<Verdict, String> {
    let mut lines = answer.trim().lines().map(str::trim);
    match lines.next() {
        Some("safe") => Ok(Verdict::Allowed),
        Some("unsafe") => {
            let mut categories: Vec<String> = Vec::new();
            for code in lines.next().unwrap_or_default().split(',').map(str::trim).filter(|c| !c.is_empty()) {
                let name = category::of_llama_guard(code).map_or_else(|| format!("llama-guard/{code}"), str::to_owned);
                if !categories.contains(&name) {
                    categories.push(name);
                }
            }
            if categories.is_empty() {
                // Unsafe without a code: still a flag, of a category nobody named.
                categories.push("llama-guard/unspecified".into());
            }
            Ok(Verdict::Flagged(Flag { categories, scores: Default::default() }))
        }
        _ => Err(format!("expected `safe` or `unsafe`, got {:?}", answer.chars().take(40).collect::<String>())),
    }
}

impl LlamaGuard {
    pub fn new(base_url: &str, key: Option<Secret>, model: String) -> Self {
        Self { post: JsonPost::new("llama-guard", base_url, "chat/completions", key), model }
    }
}

#[async_trait]
impl Moderator for LlamaGuard {
    fn name(&self) -> &'static str {
        "llama-guard"
    }

    fn description(&self) -> String {
        format!("Llama Guard ({}), a classifier", self.model)
    }

    async fn check(&self, check: &Check) -> Result<Verdict, ModerationError> {
        let messages = match check.stage {
            Stage::Input => json!([{"role": "user", "content": check.text}]),
            Stage::Output => json!([{"role": "user", "content": &*check.context}, {"role": "assistant", "content": check.text}]),
        };
        let body = json!({"model": self.model, "messages": messages, "max_tokens": 20, "temperature": 0, "stream": false});
        let answer = self.post.send(&body).await?;
        let malformed = |message: String| ModerationError::Malformed { moderator: "llama-guard", message };
        let completion: Completion = serde_json::from_slice(&answer).map_err(|e| malformed(e.to_string()))?;
        let text = completion.choices.into_iter().next().and_then(|c| c.message.content).ok_or_else(|| malformed("no message".into()))?;
        parse_answer(&text).map_err(malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::providers::fake_upstream::{fixture_in, FakeUpstream, Reply};

    fn fixture(name: &str) -> String {
        String::from_utf8(fixture_in("moderation", name)).unwrap()
    }

    #[test]
    fn answers_parse_to_verdicts() {
        assert_eq!(parse_answer("\n\nsafe"), Ok(Verdict::Allowed));
        let Ok(Verdict::Flagged(flag)) = parse_answer("\n\nunsafe\nS1,S11") else { panic!() };
        assert_eq!(flag.categories, ["violence", "self-harm"]);
        let Ok(Verdict::Flagged(flag)) = parse_answer("unsafe\nS3,S12,S99") else { panic!() };
        assert_eq!(flag.categories, ["sexual", "llama-guard/S99"], "S3 and S12 are both `sexual`, named once");
        assert!(parse_answer("I cannot help with that").is_err());
        assert!(parse_answer("").is_err());
    }

    #[tokio::test]
    async fn an_output_window_is_judged_as_the_answer_to_the_learners_input() {
        let upstream = FakeUpstream::start(vec![Reply::status(200, &[], fixture("llama_guard_vllm_unsafe.json"))]).await;
        let guard = LlamaGuard::new(&format!("{}/v1", upstream.url()), None, "meta-llama/Llama-Guard-3-8B".into());
        let check = Check { stage: Stage::Output, text: "the answer".into(), context: "the question".into() };
        let Ok(Verdict::Flagged(flag)) = guard.check(&check).await else { panic!("unsafe flags") };
        assert_eq!(flag.categories, ["violence", "self-harm"]);
        let request = upstream.request(0).await;
        assert_eq!(request.path, "/v1/chat/completions");
        assert_eq!(request.header("authorization"), None, "no key, no header");
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["messages"], json!([{"role": "user", "content": "the question"}, {"role": "assistant", "content": "the answer"}]));
        assert_eq!(body["model"], "meta-llama/Llama-Guard-3-8B");
    }

    #[tokio::test]
    async fn a_safe_answer_from_llama_cpp_allows() {
        let upstream = FakeUpstream::start(vec![Reply::status(200, &[], fixture("llama_guard_llamacpp_safe.json"))]).await;
        let guard = LlamaGuard::new(&format!("{}/v1/", upstream.url()), None, "m".into());
        let check = Check { stage: Stage::Input, text: "why is the sky blue".into(), context: "".into() };
        assert_eq!(guard.check(&check).await, Ok(Verdict::Allowed));
        let body: serde_json::Value = serde_json::from_slice(&upstream.request(0).await.body).unwrap();
        assert_eq!(body["messages"], json!([{"role": "user", "content": "why is the sky blue"}]));
    }
}
