//! The offline demo model: no network, no key, deterministic for the same input,
//! at a configurable pace. It also injects faults for tests and benchmarks
//! (`DEMO_FAIL_AFTER_TOKENS`, `DEMO_STALL_AFTER_TOKENS`), and text the model did
//! not write (`DEMO_INJECT_TEXT` after `DEMO_INJECT_AFTER_TOKENS`: a flagged
//! sentence mid-answer, for the moderation tests and benchmarks).

use std::time::Duration;

use async_stream::stream;
use tokio::time::{sleep_until, Instant};

use super::demo_content;
use super::{Provider, ProviderError, ProviderEvent, ProviderRequest, ProviderStream, TokenCounter};
use crate::ai::streaming::events::{FinishReason, Usage};
use crate::config::settings::DemoSettings;

pub const DEMO_MODEL: &str = "demo-model (offline)";

pub struct DemoProvider {
    settings: DemoSettings,
}

impl DemoProvider {
    pub fn new(settings: DemoSettings) -> Self {
        Self { settings }
    }
}

/// Rough token count of a prompt, for `usage`: about four characters a token.
fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

impl Provider for DemoProvider {
    fn name(&self) -> &str {
        "demo"
    }

    fn model(&self) -> &str {
        DEMO_MODEL
    }

    /// Each chunk is one of its tokens, as its usage counts them.
    fn token_counter(&self) -> TokenCounter {
        TokenCounter::OnePerChunk
    }

    fn stream(&self, request: ProviderRequest) -> ProviderStream {
        let settings = self.settings.clone();
        Box::pin(stream! {
            let mut text = demo_content::write(&request.input);
            if let Some(injected) = &settings.inject_text {
                text = demo_content::inject(&text, injected, settings.inject_after_tokens as usize);
            }
            let max_tokens = request.prompt.max_tokens as usize;
            let prompt_tokens = estimate_tokens(&request.prompt.system) + estimate_tokens(&request.prompt.user);
            // What a live stream holds is its text; the request is done with.
            drop(request);
            let period = (settings.tokens_per_second > 0.0).then(|| Duration::from_secs_f64(1.0 / settings.tokens_per_second));
            let start = Instant::now() + settings.first_token;
            sleep_until(start).await;
            let mut sent = 0u64;
            let mut tokens = demo_content::tokens(&text).enumerate();
            for (n, token) in tokens.by_ref().take(max_tokens) {
                if settings.fail_after_tokens == Some(sent) {
                    yield Err(ProviderError::Upstream {
                        provider: "demo".into(),
                        message: format!("fault injected after {sent} tokens (DEMO_FAIL_AFTER_TOKENS)"),
                        retryable: true,
                    });
                    return;
                }
                if settings.stall_after_tokens == Some(sent) {
                    futures::future::pending::<()>().await;
                }
                // Pace against the start time, not the previous token, so a late
                // wake-up catches up instead of drifting.
                if let Some(period) = period {
                    sleep_until(start + period * n as u32).await;
                }
                yield Ok(ProviderEvent::Delta(token.to_owned()));
                sent += 1;
            }
            yield Ok(ProviderEvent::Usage(Usage { prompt_tokens, completion_tokens: sent, total_tokens: prompt_tokens + sent }));
            let reason = if tokens.next().is_some() { FinishReason::Length } else { FinishReason::Stop };
            yield Ok(ProviderEvent::Finished(reason));
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::blocks::{BlockInput, BlockType};
    use futures::StreamExt;

    fn request(topic: &str) -> ProviderRequest {
        let fields = serde_json::json!({ "topic": topic });
        let input = BlockInput::parse(BlockType::ExplainEli10, fields.as_object().unwrap()).unwrap();
        ProviderRequest { prompt: input.prompt(), input }
    }

    fn fast() -> DemoSettings {
        DemoSettings::unpaced()
    }

    #[tokio::test]
    async fn streams_the_text_then_usage_then_the_end_marker() {
        let events: Vec<_> = DemoProvider::new(fast()).stream(request("rain")).collect().await;
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                Ok(ProviderEvent::Delta(t)) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, demo_content::write(&request("rain").input));
        assert!(matches!(events[events.len() - 2], Ok(ProviderEvent::Usage(u)) if u.completion_tokens as usize == events.len() - 2));
        assert_eq!(events.last().unwrap(), &Ok(ProviderEvent::Finished(FinishReason::Stop)));
    }

    #[tokio::test]
    async fn an_injected_fault_ends_the_stream_after_that_many_tokens() {
        let provider = DemoProvider::new(DemoSettings { fail_after_tokens: Some(3), ..fast() });
        let events: Vec<_> = provider.stream(request("rain")).collect().await;
        assert_eq!(events.len(), 4);
        assert!(matches!(&events[3], Err(ProviderError::Upstream { retryable: true, .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_follow_the_configured_pace() {
        let provider = DemoProvider::new(DemoSettings { tokens_per_second: 10.0, first_token: Duration::from_millis(500), ..fast() });
        let started = Instant::now();
        let mut stream = provider.stream(request("rain"));
        stream.next().await;
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        stream.next().await;
        stream.next().await;
        assert_eq!(started.elapsed(), Duration::from_millis(700));
    }

    #[tokio::test]
    async fn injected_text_is_streamed_after_that_many_tokens() {
        let provider =
            DemoProvider::new(DemoSettings { inject_text: Some("Injected words here.".into()), inject_after_tokens: 3, ..fast() });
        let events: Vec<_> = provider.stream(request("rain")).collect().await;
        let deltas: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                Ok(ProviderEvent::Delta(t)) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        let clean = demo_content::write(&request("rain").input);
        let first_three: String = demo_content::tokens(&clean).take(3).collect();
        assert_eq!(deltas[..3].concat(), first_three);
        assert!(deltas[3..].concat().starts_with("Injected words here."), "{:?}", &deltas[3..6]);
        assert_eq!(deltas.concat().len(), clean.len() + "Injected words here. ".len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_sends_nothing_more() {
        let provider = DemoProvider::new(DemoSettings { stall_after_tokens: Some(2), ..fast() });
        let mut stream = provider.stream(request("rain"));
        assert!(stream.next().await.is_some());
        assert!(stream.next().await.is_some());
        assert!(tokio::time::timeout(Duration::from_secs(3600), stream.next()).await.is_err());
    }
}
