//! `MODERATION_PROVIDER=openai`: OpenAI's `POST /v1/moderations`
//! (`omni-moderation-latest` by default), or any server with that API.
//!
//! A category flags when its score reaches the threshold set for it in
//! `MODERATION_THRESHOLDS` (e.g. `self-harm=0.2,sexual/minors=0.01`: stricter
//! than OpenAI's own cut-offs, for children), and otherwise when OpenAI's own
//! `categories` says so. The verdict carries every score OpenAI returned.
//!
//! It also judges many texts in one request (`input` an array, `results` in
//! the same order), which the batcher uses (`batch.rs`).

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use super::http::JsonPost;
use super::moderator::{BatchModerator, Check, Flag, ModerationError, Moderator, Verdict};
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

    /// The results of an answer's body, in the order of the inputs.
    fn results(body: &[u8]) -> Result<Vec<ModerationResult>, ModerationError> {
        let response: Response = serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
        Ok(response.results)
    }

    /// The verdict of one result, with the thresholds applied to its scores.
    fn verdict(&self, result: ModerationResult) -> Verdict {
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
        if categories.is_empty() {
            Verdict::Allowed
        } else {
            Verdict::Flagged(Flag { categories, scores })
        }
    }
}

fn malformed(message: String) -> ModerationError {
    ModerationError::Malformed { moderator: "openai", message }
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
        let [result] = <[ModerationResult; 1]>::try_from(Self::results(&body)?)
            .map_err(|r| malformed(format!("{} results for one input", r.len())))?;
        Ok(self.verdict(result))
    }
}

/// `input` as an array: one result per text, in order (`MODERATION_BATCH_WAIT_MS`).
#[async_trait]
impl BatchModerator for OpenAiModeration {
    fn name(&self) -> &'static str {
        "openai"
    }

    async fn check_batch(&self, texts: &[&str]) -> Result<Vec<Verdict>, ModerationError> {
        let body = self.post.send(&json!({"model": self.model, "input": texts})).await?;
        Ok(Self::results(&body)?.into_iter().map(|result| self.verdict(result)).collect())
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
    async fn a_batch_sends_its_texts_as_an_array_and_maps_each_result_to_its_text_in_order() {
        let upstream = FakeUpstream::start(vec![Reply::status(200, &[], fixture("openai_moderation_batch.json"))]).await;
        let verdicts =
            moderation(&format!("{}/v1", upstream.url()), &[]).check_batch(&["Volcanoes erupt.", "I want to kill them."]).await.unwrap();
        let [clean, Verdict::Flagged(flag)] = verdicts.as_slice() else { panic!("allowed, then flagged: {verdicts:?}") };
        assert_eq!(*clean, Verdict::Allowed);
        assert_eq!(flag.categories, ["harassment", "harassment/threatening", "violence", "violence/graphic"]);
        let body: serde_json::Value = serde_json::from_slice(&upstream.request(0).await.body).unwrap();
        assert_eq!(body, json!({"model": "omni-moderation-latest", "input": ["Volcanoes erupt.", "I want to kill them."]}));
    }

    #[tokio::test]
    async fn thresholds_apply_to_each_result_of_a_batch() {
        let upstream = FakeUpstream::start(vec![Reply::status(200, &[], fixture("openai_moderation_batch.json"))]).await;
        let strict = moderation(&format!("{}/v1", upstream.url()), &[("illicit", 0.000001), ("harassment", 0.9)]);
        let verdicts = strict.check_batch(&["a", "b"]).await.unwrap();
        let categories: Vec<Vec<String>> = verdicts
            .into_iter()
            .map(|v| match v {
                Verdict::Flagged(flag) => flag.categories,
                Verdict::Allowed => vec![],
            })
            .collect();
        // The clean text's `illicit` (about 3e-6) reaches its threshold; the threat's
        // harassment (0.82) no longer does, its violence still flags.
        assert_eq!(categories[0], ["illicit"]);
        assert!(!categories[1].contains(&"harassment".to_owned()) && categories[1].contains(&"violence".to_owned()), "{categories:?}");
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
