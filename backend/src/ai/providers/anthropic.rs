//! `AI_PROVIDER=anthropic`: Anthropic's Messages API with streaming.
//!
//! Owns where the request goes (`ANTHROPIC_BASE_URL` + `/v1/messages`), the key
//! (`ANTHROPIC_API_KEY`, sent as `x-api-key`) and the default model. The stream's
//! `ping` events keep the engine's idle timer alive; an `error` event such as
//! `overloaded_error` ends it as a rate limit; it ends at `message_stop`.

use std::sync::Arc;

use genai::adapter::AdapterKind;
use genai::resolver::{AuthData, Endpoint};
use genai::{ModelIden, ServiceTarget};

use super::upstream::Upstream;
use super::{Provider, ProviderRequest, ProviderSetupError, ProviderStream};
use crate::config::settings::Secret;

/// Fast and inexpensive: block answers are short and latency is what learners see.
pub const DEFAULT_MODEL: &str = "claude-haiku-4-5";

pub struct AnthropicProvider {
    upstream: Arc<Upstream>,
    model: String,
}

/// Names the model only: the key stays out of every `{:?}`.
impl std::fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicProvider").field("model", &self.model).finish_non_exhaustive()
    }
}

impl AnthropicProvider {
    pub fn new(base_url: &str, api_key: Secret, model: Option<String>) -> Result<Self, ProviderSetupError> {
        let model = model.unwrap_or_else(|| DEFAULT_MODEL.to_owned());
        let target = ServiceTarget {
            endpoint: Endpoint::from_owned(endpoint_url(base_url)?.to_string()),
            auth: AuthData::from_single(api_key.expose()),
            model: ModelIden::new(AdapterKind::Anthropic, model.clone()),
        };
        let upstream = Upstream {
            provider: "anthropic",
            client: Upstream::client("AI_PROVIDER")?,
            target,
            api_key: Some(api_key),
            key_variable: "ANTHROPIC_API_KEY",
            end_marker: "event: message_stop",
        };
        Ok(Self { upstream: Arc::new(upstream), model })
    }
}

impl Provider for AnthropicProvider {
    fn name(&self) -> &str {
        "anthropic"
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn stream(&self, request: ProviderRequest) -> ProviderStream {
        self.upstream.stream(&request.prompt)
    }

    fn server(&self) -> Option<(String, u16)> {
        self.upstream.server()
    }
}

/// `ANTHROPIC_BASE_URL` is the API's origin (`https://api.anthropic.com`); the
/// versioned root `…/v1/` is derived, and accepted when given.
fn endpoint_url(raw: &str) -> Result<reqwest::Url, ProviderSetupError> {
    let invalid = || ProviderSetupError {
        variable: "ANTHROPIC_BASE_URL",
        message: "expected an http(s) URL, such as https://api.anthropic.com".into(),
    };
    let mut url = reqwest::Url::parse(raw.trim()).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid());
    }
    let path = url.path().trim_end_matches('/').to_owned();
    let path = if path.ends_with("/v1") { format!("{path}/") } else { format!("{path}/v1/") };
    url.set_path(&path);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use serde_json::Value;

    use super::*;
    use crate::ai::blocks::{BlockInput, BlockType};
    use crate::ai::providers::fake_upstream::{fixture, FakeUpstream, Reply};
    use crate::ai::providers::stream_reading::{drain, last_error, text, Events};
    use crate::ai::providers::{secret_for_tests, ProviderError, ProviderEvent};
    use crate::ai::streaming::events::{FinishReason, Usage};

    const KEY: &str = "sk-ant-test-0123456789abcdef";

    fn request() -> ProviderRequest {
        let fields = serde_json::json!({ "description": "how rain forms", "kind": "flowchart" });
        let input = BlockInput::parse(BlockType::Diagram, fields.as_object().unwrap()).unwrap();
        ProviderRequest { prompt: input.prompt(), input }
    }

    fn provider(server: &FakeUpstream) -> AnthropicProvider {
        AnthropicProvider::new(&server.url(), secret_for_tests(KEY), Some("claude-test".into())).unwrap()
    }

    async fn collect(provider: &AnthropicProvider) -> Events {
        drain(provider.stream(request())).await
    }

    #[tokio::test]
    async fn streams_a_split_messages_transcript_with_its_ping() {
        let server = FakeUpstream::start(vec![Reply::sse(fixture("anthropic_messages_stream.sse"))]).await;
        let events = collect(&provider(&server)).await;
        assert_eq!(text(&events), "flowchart TD\n  A[\"Sun warms water\"] --> B[\"Vapour rises ☁️\"]\n  B --> C[\"Rain falls 🌧\"]");
        // The ping became an empty delta: a keep-alive for the engine, no text.
        assert!(events.contains(&Ok(ProviderEvent::Delta(String::new()))));
        let n = events.len();
        assert_eq!(events[n - 2], Ok(ProviderEvent::Usage(Usage { prompt_tokens: 57, completion_tokens: 31, total_tokens: 88 })));
        assert_eq!(events[n - 1], Ok(ProviderEvent::Finished(FinishReason::Stop)));
    }

    #[tokio::test]
    async fn the_request_is_a_streaming_messages_call_with_the_key_header() {
        let server = FakeUpstream::start(vec![Reply::sse(fixture("anthropic_messages_stream.sse"))]).await;
        collect(&provider(&server)).await;
        let sent = server.request(0).await;
        assert_eq!(sent.path, "/v1/messages");
        assert_eq!(sent.header("x-api-key").as_deref(), Some(KEY));
        assert!(sent.header("anthropic-version").is_some());
        let body: Value = serde_json::from_slice(&sent.body).unwrap();
        assert_eq!(body["model"], "claude-test");
        assert_eq!(body["stream"], true);
        assert_eq!(body["max_tokens"], request().prompt.max_tokens);
        assert!(body["system"].to_string().contains("Mermaid"), "{}", body["system"]);
        assert_eq!(body["messages"][0]["role"], "user");
    }

    #[tokio::test]
    async fn max_tokens_is_reported_as_length() {
        let server = FakeUpstream::start(vec![Reply::sse(fixture("anthropic_max_tokens.sse"))]).await;
        let events = collect(&provider(&server)).await;
        assert_eq!(events.last(), Some(&Ok(ProviderEvent::Finished(FinishReason::Length))));
    }

    #[tokio::test]
    async fn an_overloaded_error_event_is_rate_limited() {
        let server = FakeUpstream::start(vec![Reply::sse(fixture("anthropic_overloaded_event.sse"))]).await;
        let error = last_error(&collect(&provider(&server)).await);
        assert!(matches!(error, ProviderError::RateLimited { .. }), "{error:?}");
        assert!(error.retryable());
        assert!(error.to_string().contains("overloaded_error"), "{error}");
    }

    #[tokio::test]
    async fn a_529_is_rate_limited_with_its_retry_after() {
        let body = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let server = FakeUpstream::start(vec![Reply::status(529, &[("retry-after", "3")], body.into())]).await;
        let error = last_error(&collect(&provider(&server)).await);
        assert!(matches!(error, ProviderError::RateLimited { .. }), "{error:?}");
        assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));
    }

    #[tokio::test]
    async fn a_refused_key_is_unauthorized_and_never_echoed() {
        let body = format!(r#"{{"type":"error","error":{{"type":"authentication_error","message":"invalid x-api-key {KEY}"}}}}"#);
        let server = FakeUpstream::start(vec![Reply::status(401, &[], body)]).await;
        let error = last_error(&collect(&provider(&server)).await);
        assert!(matches!(error, ProviderError::Unauthorized { .. }), "{error:?}");
        assert!(!error.retryable());
        assert!(error.to_string().contains("ANTHROPIC_API_KEY"), "{error}");
        assert!(!format!("{error} {error:?}").contains(KEY));
    }

    #[tokio::test]
    async fn a_500_is_a_retryable_upstream_error() {
        let body = r#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#;
        let server = FakeUpstream::start(vec![Reply::status(500, &[], body.into())]).await;
        let error = last_error(&collect(&provider(&server)).await);
        assert!(matches!(error, ProviderError::Upstream { retryable: true, .. }), "{error:?}");
        assert!(error.to_string().contains("Internal server error"), "{error}");
    }

    #[tokio::test]
    async fn a_refused_port_is_unavailable() {
        let port = FakeUpstream::refused_port().await;
        let provider = AnthropicProvider::new(&format!("http://127.0.0.1:{port}"), secret_for_tests(KEY), None).unwrap();
        let error = last_error(&collect(&provider).await);
        assert!(matches!(error, ProviderError::Unavailable { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn malformed_json_is_a_non_retryable_upstream_error() {
        let server = FakeUpstream::start(vec![Reply::sse(fixture("anthropic_malformed.sse"))]).await;
        let error = last_error(&collect(&provider(&server)).await);
        assert!(matches!(error, ProviderError::Upstream { retryable: false, .. }), "{error:?}");
    }

    #[tokio::test]
    async fn a_stream_without_message_stop_never_finishes() {
        let server = FakeUpstream::start(vec![Reply::sse(fixture("anthropic_truncated.sse"))]).await;
        let events = collect(&provider(&server)).await;
        assert!(text(&events).starts_with("flowchart TD"));
        assert!(!events.iter().any(|e| matches!(e, Ok(ProviderEvent::Finished(_)))));
        assert!(last_error(&events).to_string().contains("message_stop"));
    }

    #[tokio::test]
    async fn dropping_a_stalled_stream_closes_the_request() {
        let server = FakeUpstream::start(vec![Reply::sse(fixture("anthropic_messages_stream.sse")).stall_after(4)]).await;
        let provider = provider(&server);
        let mut stream = provider.stream(request());
        let mut text = String::new();
        while text.is_empty() {
            if let Some(Ok(ProviderEvent::Delta(t))) = stream.next().await {
                text.push_str(&t);
            }
        }
        assert!(tokio::time::timeout(Duration::from_millis(300), stream.next()).await.is_err());
        drop(stream);
        // That the close is prompt is measured end to end in tests/api/providers.rs.
        tokio::time::timeout(Duration::from_secs(5), server.closed(0)).await.expect("the upstream sees the close");
    }

    #[test]
    fn the_versioned_root_is_derived_once() {
        for (raw, expected) in [
            ("https://api.anthropic.com", "https://api.anthropic.com/v1/"),
            ("https://api.anthropic.com/", "https://api.anthropic.com/v1/"),
            ("https://api.anthropic.com/v1", "https://api.anthropic.com/v1/"),
            ("http://127.0.0.1:9000/proxy", "http://127.0.0.1:9000/proxy/v1/"),
        ] {
            assert_eq!(endpoint_url(raw).unwrap().as_str(), expected);
        }
        assert_eq!(endpoint_url("api.anthropic.com").unwrap_err().variable, "ANTHROPIC_BASE_URL");
    }
}
