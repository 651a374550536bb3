//! `MODERATION_PROVIDER=openai`: OpenAI's `POST /v1/moderations`
//! (`omni-moderation-latest` by default), or any server with that API.
//!
//! A category flags when its score reaches the threshold set for it in
//! `MODERATION_THRESHOLDS` (e.g. `self-harm=0.2,sexual/minors=0.01`: stricter
//! than OpenAI's own cut-offs, for children), and otherwise when OpenAI's own
//! `categories` says so. The verdict carries every score OpenAI returned.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use super::http::JsonPost;
use super::moderator::{Check, Flag, ModerationError, Moderator, Verdict};
use crate::config::settings::Secret;

pub struct OpenAiModeration {
    post: JsonPost,
    model: String,
    thresholds: Vec<(String, f64)>,
}

#[derive(Deserialize)]
struct Response {
    results: Vec<ModerationResult>,
}

#[derive(Deserialize)]
struct ModerationResult {
    #[serde(default)]
    categories: BTreeMap<String, Option<bool>>,
    #[serde(default)]
    category_scores: BTreeMap<String, Option<f64>>,
}

impl OpenAiModeration {
    pub fn new(base_url: &str, key: Option<Secret>, model: String, thresholds: Vec<(String, f64)>) -> Self {
        Self { post: JsonPost::new("openai", base_url, "moderations", key), model, thresholds }
    }

    /// The verdict of an answer's body.
    fn verdict(&self, body: &[u8]) -> Result<Verdict, ModerationError> {
        let malformed = |message: String| ModerationError::Malformed { moderator: "openai", message };
        let response: Response = serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
        let [result] =
            <[ModerationResult; 1]>::try_from(response.results).map_err(|r| malformed(format!("{} results for one input", r.len())))?;
        let scores: BTreeMap<String, f64> = result.category_scores.into_iter().filter_map(|(name, score)| Some((name, score?))).collect();
        let mut categories: Vec<String> = Vec::new();
        for (name, flagged) in &result.categories {
            let threshold = self.thresholds.iter().find(|(category, _)| category == name).map(|(_, t)| *t);
            let flagged = match (threshold, scores.get(name)) {
                (Some(threshold), Some(score)) => *score >= threshold,
                _ => flagged.unwrap_or(false),
            };
            if flagged {
                categories.push(name.clone());
            }
        }
        // A threshold on a category the answer scored but did not list.
        for (name, threshold) in &self.thresholds {
            if !result.categories.contains_key(name) && scores.get(name).is_some_and(|s| s >= threshold) {
                categories.push(name.clone());
            }
        }
        Ok(if categories.is_empty() { Verdict::Allowed } else { Verdict::Flagged(Flag { categories, scores }) })
    }
}

#[async_trait]
impl Moderator for OpenAiModeration {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn description(&self) -> String {
        format!("OpenAI moderation API ({}), a classifier", self.model)
    }

    async fn check(&self, check: &Check) -> Result<Verdict, ModerationError> {
        let body = self.post.send(&json!({"model": self.model, "input": check.text})).await?;
        self.verdict(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::providers::fake_upstream::{FakeUpstream, Reply};

    fn fixture(name: &str) -> String {
        String::from_utf8(crate::ai::providers::fake_upstream::fixture_in("moderation", name)).unwrap()
    }

    fn moderation(url: &str, thresholds: &[(&str, f64)]) -> OpenAiModeration {
        let thresholds = thresholds.iter().map(|(c, t)| (c.to_string(), *t)).collect();
        OpenAiModeration::new(url, Some(crate::ai::providers::secret_for_tests("sk-test")), "omni-moderation-latest".into(), thresholds)
    }

    fn check(text: &str) -> Check {
        Check { stage: super::super::moderator::Stage::Output, text: text.into(), context: "".into() }
    }

    #[tokio::test]
    async fn a_flagged_answer_names_its_categories_with_every_score() {
        let upstream = FakeUpstream::start(vec![Reply::status(200, &[], fixture("openai_moderation_flagged.json"))]).await;
        let verdict = moderation(&format!("{}/v1", upstream.url()), &[]).check(&check("I want to kill them.")).await.unwrap();
        let Verdict::Flagged(flag) = verdict else { panic!("expected a flag, got {verdict:?}") };
        assert_eq!(flag.categories, ["harassment", "harassment/threatening", "violence", "violence/graphic"]);
        assert_eq!(flag.scores.len(), 13);
        assert_eq!(flag.scores["violence"], 0.9999992735124786);
        let request = upstream.request(0).await;
        assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/v1/moderations"));
        assert_eq!(request.header("authorization").as_deref(), Some("Bearer sk-test"));
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body, json!({"model": "omni-moderation-latest", "input": "I want to kill them."}));
    }

    #[tokio::test]
    async fn a_clean_answer_is_allowed_unless_a_threshold_says_otherwise() {
        let upstream = FakeUpstream::start(vec![Reply::status(200, &[], fixture("openai_moderation_clean.json"))]).await;
        let url = format!("{}/v1", upstream.url());
        assert_eq!(moderation(&url, &[]).check(&check("Volcanoes erupt.")).await, Ok(Verdict::Allowed));
        // The clean answer scores `illicit` at about 3e-6: a threshold below that flags it.
        let strict = moderation(&url, &[("illicit", 0.000001), ("self-harm", 0.2)]);
        let Ok(Verdict::Flagged(flag)) = strict.check(&check("Volcanoes erupt.")).await else { panic!("the threshold flags") };
        assert_eq!(flag.categories, ["illicit"]);
    }

    #[tokio::test]
    async fn a_threshold_above_the_score_unflags_what_openai_flagged() {
        let upstream = FakeUpstream::start(vec![Reply::status(200, &[], fixture("openai_moderation_flagged.json"))]).await;
        let lenient = moderation(&format!("{}/v1", upstream.url()), &[("harassment", 0.9), ("harassment/threatening", 0.9)]);
        let Ok(Verdict::Flagged(flag)) = lenient.check(&check("x")).await else { panic!("violence still flags") };
        assert_eq!(flag.categories, ["violence", "violence/graphic"]);
    }

    #[tokio::test]
    async fn refusals_and_garbage_are_typed_failures() {
        let upstream = FakeUpstream::start(vec![
            Reply::status(
                429,
                &[("retry-after", "2")],
                r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#.into(),
            ),
            Reply::status(200, &[], r#"{"results": []}"#.into()),
        ])
        .await;
        let moderation = moderation(&format!("{}/v1", upstream.url()), &[]);
        let limited = moderation.check(&check("x")).await.unwrap_err();
        assert_eq!(
            limited,
            ModerationError::Status { moderator: "openai", status: 429, retry_after: Some(std::time::Duration::from_secs(2)) }
        );
        assert!(limited.retryable());
        let garbage = moderation.check(&check("x")).await.unwrap_err();
        assert!(matches!(garbage, ModerationError::Malformed { .. }), "{garbage:?}");
    }
}
