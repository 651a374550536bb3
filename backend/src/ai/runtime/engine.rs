//! The runtime engine: runs one block on one provider and turns the provider's
//! deltas into contract events — `start`, `chunk`s, `part`s, then exactly one
//! terminal `complete` or `error`.
//!
//! Streaming mode (`Engine::stream`) yields the events as they happen; whole-response
//! mode (`Engine::respond`) consumes the very same stream, so both modes produce the
//! same text for the same input. Provider failures before the first token are
//! retried with backoff; after a token was sent they never are (the client would see
//! text twice). A provider silent for the idle timeout is a `timeout`, noticed
//! within twice that (one watchdog per attempt, not a timer per token).
//! Dropping the stream drops the provider stream, which closes the upstream request.
//!
//! `complete` always reports the output it charges: the provider's usage when it
//! sends it, else the tokens counted as they streamed ([`TokenCounter`]). A report
//! of zero completion tokens for a non-empty answer counts as missing.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_stream::stream;
use futures::{Stream, StreamExt};
use serde_json::Value;
use tokio::time::Instant;

use crate::ai::blocks::{BlockInput, Part};
use crate::ai::providers::{Provider, ProviderError, ProviderEvent, ProviderRequest, TokenCounter, Watched};
use crate::ai::streaming::events::{ErrorCode, EventBody, FinishReason, Usage};

pub type EventStream = Pin<Box<dyn Stream<Item = EventBody> + Send>>;

/// The longest provider-requested wait the engine retries after; a longer
/// `Retry-After` is reported to the client (`rate_limited`) rather than slept on.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub idle_timeout: Duration,
    /// Bound on a whole generation, so a provider that keeps the stream alive
    /// (pings) without finishing cannot hold it forever.
    pub max_duration: Duration,
    pub max_retries: u32,
    /// First retry delay; doubles on each further retry.
    pub retry_base: Duration,
}

#[derive(Clone)]
pub struct Engine {
    provider: Arc<dyn Provider>,
    config: EngineConfig,
}

/// The result of whole-response mode.
#[derive(Debug, Clone, PartialEq)]
pub struct WholeResponse {
    pub provider: String,
    pub model: String,
    pub text: String,
    pub parts: Vec<Value>,
    pub result: Value,
    pub usage: Usage,
    pub finish_reason: FinishReason,
}

/// A generation that ended in an `error` event, as a value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct GenerationFailed {
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
    pub retry_after_ms: Option<u64>,
    /// Moderation categories of `input_flagged` / `output_flagged`.
    pub categories: Option<Vec<String>>,
}

impl Engine {
    pub fn new(provider: Arc<dyn Provider>, config: EngineConfig) -> Self {
        Self { provider, config }
    }

    pub fn provider(&self) -> &dyn Provider {
        self.provider.as_ref()
    }

    /// Counts the provider's output where it reports no usage.
    pub fn token_counter(&self) -> TokenCounter {
        self.provider.token_counter()
    }

    /// Streaming mode: the events of one generation, ending in exactly one terminal.
    pub fn stream(&self, input: BlockInput) -> EventStream {
        let provider = self.provider.clone();
        let config = self.config.clone();
        let counter = provider.token_counter();
        Box::pin(stream! {
            yield EventBody::Start {
                block_type: input.block_type(),
                provider: provider.name().to_owned(),
                model: provider.model().to_owned(),
                shared: false,
                cached: false,
            };
            let started = Instant::now();
            let deadline = started + config.max_duration;
            let request = ProviderRequest { prompt: input.prompt(), input: input.clone() };
            let mut parser = input.output_parser();
            let mut text = String::new();
            // Output tokens as counted here, for a provider that reports none.
            let mut produced = 0u64;
            let mut first_token_at = None;
            let mut usage = None;
            let finish_reason;
            let mut attempt = 0;
            // One watchdog per attempt, not a timer per token: when it fires after
            // items came, it is moved on from then, so a provider is declared idle
            // between one and two idle timeouts after its last item.
            let watchdog = tokio::time::sleep_until(deadline.min(Instant::now() + config.idle_timeout));
            tokio::pin!(watchdog);
            'attempts: loop {
                let mut upstream = provider.stream(request.clone());
                let mut watched = Watched::new(provider.watch(&request));
                watchdog.as_mut().reset(deadline.min(Instant::now() + config.idle_timeout));
                let (mut items, mut items_at_arming) = (0u64, 0u64);
                loop {
                    let item = tokio::select! {
                        biased;
                        item = upstream.next() => {
                            items += 1;
                            if let Some(item) = &item {
                                watched.saw(item);
                            }
                            item
                        }
                        () = &mut watchdog => {
                            let now = Instant::now();
                            if now >= deadline {
                                Some(Err(ProviderError::TooLong { provider: provider.name().to_owned(), limit: config.max_duration }))
                            } else if items != items_at_arming {
                                items_at_arming = items;
                                watchdog.as_mut().reset(deadline.min(now + config.idle_timeout));
                                continue;
                            } else {
                                Some(Err(ProviderError::Timeout { provider: provider.name().to_owned(), idle: config.idle_timeout }))
                            }
                        }
                    };
                    match item {
                        Some(Ok(ProviderEvent::Delta(token))) => {
                            if token.is_empty() {
                                continue;
                            }
                            first_token_at.get_or_insert_with(Instant::now);
                            produced += counter.chunk(&token);
                            text.push_str(&token);
                            let parsed = parser.push(&token);
                            yield EventBody::Chunk { token };
                            match parsed {
                                Ok(parts) => for part in parts {
                                    yield part_event(part);
                                },
                                Err(invalid) => {
                                    yield invalid_output(invalid.0, &text);
                                    return;
                                }
                            }
                        }
                        Some(Ok(ProviderEvent::Usage(reported))) => usage = Some(reported),
                        Some(Ok(ProviderEvent::Finished(reason))) => {
                            finish_reason = reason;
                            break 'attempts;
                        }
                        Some(Err(error)) => {
                            let wait_acceptable = error.retry_after().is_none_or(|wait| wait <= MAX_RETRY_WAIT);
                            if text.is_empty() && error.retryable() && wait_acceptable && attempt < config.max_retries {
                                let backoff = error.retry_after().unwrap_or(config.retry_base * 2u32.pow(attempt));
                                tracing::warn!(%error, attempt, ?backoff, "provider failed before the first token; retrying");
                                attempt += 1;
                                drop(upstream);
                                drop(watched);
                                tokio::time::sleep(backoff).await;
                                continue 'attempts;
                            }
                            yield provider_error(&error);
                            return;
                        }
                        None => {
                            let error = ProviderError::Upstream {
                                provider: provider.name().to_owned(),
                                message: "the stream ended without its end marker".into(),
                                retryable: true,
                            };
                            if text.is_empty() && attempt < config.max_retries {
                                attempt += 1;
                                continue 'attempts;
                            }
                            yield provider_error(&error);
                            return;
                        }
                    }
                }
            }
            let result = match parser.finish(&text) {
                Ok(result) => result,
                Err(invalid) => {
                    yield invalid_output(invalid.0, &text);
                    return;
                }
            };
            let usage = match usage {
                Some(reported) if reported.completion_tokens > 0 || text.is_empty() => reported,
                Some(reported) => Usage { completion_tokens: produced, total_tokens: reported.prompt_tokens + produced, ..reported },
                None => {
                    let prompt_tokens = counter.text(&request.prompt.system) + counter.text(&request.prompt.user);
                    Usage { prompt_tokens, completion_tokens: produced, total_tokens: prompt_tokens + produced }
                }
            };
            yield EventBody::Complete {
                finish_reason,
                usage,
                result,
                ttft_ms: first_token_at.map_or(0, |t| (t - started).as_millis() as u64),
                duration_ms: started.elapsed().as_millis() as u64,
            };
        })
    }

    /// Whole-response mode: runs the same stream to its end.
    pub async fn respond(&self, input: BlockInput) -> Result<WholeResponse, GenerationFailed> {
        Self::collect(self.stream(input)).await
    }

    /// Gathers a generation's events into its whole response.
    pub async fn collect(mut events: EventStream) -> Result<WholeResponse, GenerationFailed> {
        let mut text = String::new();
        let mut parts = Vec::new();
        let (mut provider, mut model) = (String::new(), String::new());
        while let Some(event) = events.next().await {
            match event {
                EventBody::Start { provider: p, model: m, .. } => (provider, model) = (p, m),
                EventBody::Chunk { token } => text.push_str(&token),
                EventBody::Part { data, .. } => parts.push(data),
                EventBody::Complete { finish_reason, usage, result, .. } => {
                    return Ok(WholeResponse { provider, model, text, parts, result, usage, finish_reason });
                }
                EventBody::Error { code, message, retryable, retry_after_ms, categories, .. } => {
                    return Err(GenerationFailed { code, message, retryable, retry_after_ms, categories });
                }
                EventBody::Cancelled { .. } => break,
            }
        }
        Err(GenerationFailed {
            code: ErrorCode::GenerationLost,
            message: "the generation ended without a result".into(),
            retryable: true,
            retry_after_ms: None,
            categories: None,
        })
    }
}

fn part_event(part: Part) -> EventBody {
    EventBody::Part { kind: part.kind, index: part.index, data: part.data }
}

fn provider_error(error: &ProviderError) -> EventBody {
    EventBody::Error {
        code: error.code(),
        message: error.to_string(),
        retryable: error.retryable(),
        retry_after_ms: error.retry_after().map(|d| d.as_millis() as u64),
        raw_output: None,
        categories: None,
        retract: false,
    }
}

fn invalid_output(message: String, text: &str) -> EventBody {
    EventBody::Error {
        code: ErrorCode::InvalidOutput,
        message: format!("the model's output is not valid for this block: {message}"),
        retryable: true,
        retry_after_ms: None,
        raw_output: Some(text.to_owned()),
        categories: None,
        retract: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::blocks::BlockType;
    use crate::ai::providers::ProviderStream;
    use crate::ai::streaming::events::EventType;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Replays a script per attempt.
    struct Scripted {
        attempts: AtomicU32,
        scripts: Vec<Vec<Result<ProviderEvent, ProviderError>>>,
    }

    impl Provider for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        fn model(&self) -> &str {
            "script"
        }
        fn stream(&self, _request: ProviderRequest) -> ProviderStream {
            let n = self.attempts.fetch_add(1, Ordering::SeqCst) as usize;
            let script = self.scripts[n.min(self.scripts.len() - 1)].clone();
            Box::pin(futures::stream::iter(script))
        }
    }

    fn engine(scripts: Vec<Vec<Result<ProviderEvent, ProviderError>>>) -> (Engine, Arc<Scripted>) {
        let provider = Arc::new(Scripted { attempts: AtomicU32::new(0), scripts });
        let config = EngineConfig {
            idle_timeout: Duration::from_secs(5),
            max_duration: Duration::from_secs(60),
            max_retries: 2,
            retry_base: Duration::from_millis(10),
        };
        (Engine::new(provider.clone(), config), provider)
    }

    fn eli10() -> BlockInput {
        BlockInput::parse(BlockType::ExplainEli10, serde_json::json!({"topic": "tides"}).as_object().unwrap()).unwrap()
    }

    fn delta(t: &str) -> Result<ProviderEvent, ProviderError> {
        Ok(ProviderEvent::Delta(t.into()))
    }

    fn down() -> Result<ProviderEvent, ProviderError> {
        Err(ProviderError::Unavailable { provider: "scripted".into(), message: "refused".into() })
    }

    async fn types(engine: &Engine) -> Vec<EventType> {
        engine.stream(eli10()).map(|e| e.event_type()).collect().await
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_before_the_first_token_is_retried() {
        let ok = vec![delta("Hi"), Ok(ProviderEvent::Finished(FinishReason::Stop))];
        let (engine, provider) = engine(vec![vec![down()], ok]);
        assert_eq!(types(&engine).await, [EventType::Start, EventType::Chunk, EventType::Complete]);
        assert_eq!(provider.attempts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_after_a_token_is_never_retried() {
        let (engine, provider) = engine(vec![vec![delta("Hi"), down()]]);
        assert_eq!(types(&engine).await, [EventType::Start, EventType::Chunk, EventType::Error]);
        assert_eq!(provider.attempts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded() {
        let (engine, provider) = engine(vec![vec![down()]]);
        let events: Vec<_> = engine.stream(eli10()).collect().await;
        assert!(matches!(events.last(), Some(EventBody::Error { code: ErrorCode::ProviderUnavailable, retryable: true, .. })));
        assert_eq!(provider.attempts.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn whole_response_mode_returns_the_streamed_text() {
        let ok = vec![delta("Tides "), delta("rise."), Ok(ProviderEvent::Finished(FinishReason::Stop))];
        let (engine, _) = engine(vec![ok]);
        let whole = engine.respond(eli10()).await.unwrap();
        assert_eq!(whole.text, "Tides rise.");
        assert_eq!(whole.result, serde_json::json!({"markdown": "Tides rise."}));
    }

    fn usage_of(events: &[EventBody]) -> Usage {
        match events.last() {
            Some(EventBody::Complete { usage, .. }) => *usage,
            other => panic!("expected complete, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn complete_reports_the_counted_output_when_the_provider_reports_no_usage() {
        // Scripted has no tokenizer: ceil(chars / 4) per chunk, at least one.
        let ok = vec![delta("Tides"), delta(" rise"), delta(" and fall."), Ok(ProviderEvent::Finished(FinishReason::Stop))];
        let (engine, _) = engine(vec![ok]);
        let events: Vec<_> = engine.stream(eli10()).collect().await;
        let usage = usage_of(&events);
        assert_eq!(usage.completion_tokens, 2 + 2 + 3);
        assert!(usage.prompt_tokens > 0, "the prompt is counted too");
        assert_eq!(usage.total_tokens, usage.prompt_tokens + 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_of_zero_completion_tokens_for_an_answer_counts_as_missing_and_reported_usage_wins_otherwise() {
        let reported = |completion_tokens| Ok(ProviderEvent::Usage(Usage { prompt_tokens: 9, completion_tokens, total_tokens: 9 }));
        let finish = || Ok(ProviderEvent::Finished(FinishReason::Stop));
        let (zero, _) = engine(vec![vec![delta("Tides"), reported(0), finish()]]);
        let usage = usage_of(&zero.stream(eli10()).collect::<Vec<_>>().await);
        assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.total_tokens), (9, 2, 11));
        let (five, _) = engine(vec![vec![delta("Tides"), reported(5), finish()]]);
        assert_eq!(usage_of(&five.stream(eli10()).collect::<Vec<_>>().await).completion_tokens, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_without_its_end_marker_is_an_error_after_tokens() {
        let (engine, _) = engine(vec![vec![delta("Tides")]]);
        let events: Vec<_> = engine.stream(eli10()).collect().await;
        assert!(matches!(events.last(), Some(EventBody::Error { code: ErrorCode::ProviderError, .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_retry_after_is_reported_instead_of_slept_on() {
        let limited = Err(ProviderError::RateLimited {
            provider: "p".into(),
            message: "slow down".into(),
            retry_after: Some(Duration::from_secs(600)),
        });
        let (engine, provider) = engine(vec![vec![limited]]);
        let events: Vec<_> = engine.stream(eli10()).collect().await;
        assert!(matches!(events.last(), Some(EventBody::Error { code: ErrorCode::RateLimited, retry_after_ms: Some(600_000), .. })));
        assert_eq!(provider.attempts.load(Ordering::SeqCst), 1);
    }

    /// Sends keep-alive deltas forever: never idle, never done.
    struct Pinging;

    impl Provider for Pinging {
        fn name(&self) -> &str {
            "pinging"
        }
        fn model(&self) -> &str {
            "ping"
        }
        fn stream(&self, _request: ProviderRequest) -> ProviderStream {
            Box::pin(futures::stream::repeat(()).then(|()| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(ProviderEvent::Delta(String::new()))
            }))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_that_never_finishes_hits_the_generation_limit() {
        let config = EngineConfig {
            idle_timeout: Duration::from_secs(5),
            max_duration: Duration::from_secs(30),
            max_retries: 0,
            retry_base: Duration::ZERO,
        };
        let events: Vec<_> = Engine::new(Arc::new(Pinging), config).stream(eli10()).collect().await;
        assert!(matches!(events.last(), Some(EventBody::Error { code: ErrorCode::Timeout, .. })), "{:?}", events.last());
    }
}
