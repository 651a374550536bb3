//! `AI_PROVIDER=openai`: any server that speaks OpenAI's Chat Completions API with
//! streaming — OpenAI, Ollama, vLLM, llama.cpp server, LM Studio, OpenRouter, Groq.
//!
//! Owns where the request goes (`OPENAI_BASE_URL` + `chat/completions`), whether a
//! key is sent (local servers need none, so none is sent when `OPENAI_API_KEY` is
//! unset) and the default model of each known server. Streaming asks for usage
//! (`stream_options.include_usage`); the stream ends at `data: [DONE]`.

use std::sync::Arc;

use genai::adapter::AdapterKind;
use genai::resolver::{AuthData, Endpoint};
use genai::{Headers, ModelIden, ServiceTarget};

use super::upstream::Upstream;
use super::{Provider, ProviderRequest, ProviderSetupError, ProviderStream, TokenCounter};
use crate::config::settings::Secret;

pub struct OpenAiProvider {
    upstream: Arc<Upstream>,
    model: String,
    tokens: TokenCounter,
}

/// Names the model only: the key stays out of every `{:?}`.
impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider").field("model", &self.model).finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    /// `model` is `AI_MODEL`; without it the server's usual model is used, and a
    /// server this file does not know must be told which model to run.
    pub fn new(base_url: &str, api_key: Option<Secret>, model: Option<String>) -> Result<Self, ProviderSetupError> {
        let base = endpoint_url(base_url)?;
        let model = match model {
            Some(model) => model,
            None => default_model(&base).map(str::to_owned).ok_or_else(|| ProviderSetupError {
                variable: "AI_MODEL",
                message: format!(
                    "name the model your OpenAI-compatible server at {} serves (there is no default for it)",
                    base.host_str().unwrap_or("OPENAI_BASE_URL")
                ),
            })?,
        };
        let auth = match &api_key {
            Some(key) => AuthData::from_single(key.expose()),
            // Without a key, send no Authorization header at all: an empty bearer
            // token is refused by some servers that accept none.
            None => AuthData::RequestOverride {
                url: base.join("chat/completions").expect("a base URL ending in / joins").to_string(),
                headers: Headers::default(),
            },
        };
        let target = ServiceTarget {
            endpoint: Endpoint::from_owned(base.to_string()),
            auth,
            // Chat Completions explicitly: genai would route some OpenAI model names
            // to the Responses API, which compatible servers do not have.
            model: ModelIden::new(AdapterKind::OpenAI, model.clone()),
        };
        let upstream = Upstream {
            provider: "openai",
            client: Upstream::client("AI_PROVIDER")?,
            target,
            api_key,
            key_variable: "OPENAI_API_KEY",
            end_marker: "data: [DONE]",
        };
        Ok(Self { upstream: Arc::new(upstream), tokens: TokenCounter::openai(&model), model })
    }
}

impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        "openai"
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

    /// tiktoken's tokenizer for the OpenAI models it knows; an estimate for the
    /// models of other OpenAI-compatible servers.
    fn token_counter(&self) -> TokenCounter {
        self.tokens
    }
}

/// `OPENAI_BASE_URL` as a URL ending in `/`, so `chat/completions` joins onto it
/// rather than replacing its last segment (`…/v1` + `chat/completions`).
fn endpoint_url(raw: &str) -> Result<reqwest::Url, ProviderSetupError> {
    let invalid =
        |why: &str| ProviderSetupError { variable: "OPENAI_BASE_URL", message: format!("{why}, such as https://api.openai.com/v1") };
    let mut url = reqwest::Url::parse(raw.trim()).map_err(|_| invalid("expected an http(s) URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid("expected an http(s) URL"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// The model to use when `AI_MODEL` is unset, for the servers whose usual model is
/// known. vLLM, llama.cpp and LM Studio serve whatever was loaded: no default.
fn default_model(base: &reqwest::Url) -> Option<&'static str> {
    let host = base.host_str()?;
    if host.ends_with("api.openai.com") {
        Some("gpt-4o-mini")
    } else if host.ends_with("openrouter.ai") {
        Some("openai/gpt-4o-mini")
    } else if host.ends_with("api.groq.com") {
        Some("llama-3.1-8b-instant")
    } else if base.port() == Some(11434) {
        // Ollama's port.
        Some("llama3.2")
    } else {
        None
    }
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

    const KEY: &str = "sk-test-0123456789abcdef";

    fn request() -> ProviderRequest {
        let fields = serde_json::json!({ "topic": "tides" });
        let input = BlockInput::parse(BlockType::ExplainEli10, fields.as_object().unwrap()).unwrap();
        ProviderRequest { prompt: input.prompt(), input }
    }

    fn provider(server: &FakeUpstream, key: Option<&str>) -> OpenAiProvider {
        OpenAiProvider::new(&format!("{}/v1", server.url()), key.map(secret_for_tests), Some("test-model".into())).unwrap()
    }

    async fn collect(provider: &OpenAiProvider) -> Events {
        drain(provider.stream(request())).await
    }

    #[tokio::test]
    async fn streams_deltas_then_usage_then_finished_from_a_split_transcript() {
        let server = FakeUpstream::start(vec![Reply::sse(fixture("openai_chat_stream.sse"))]).await;
        let events = collect(&provider(&server, Some(KEY))).await;
        assert_eq!(text(&events), "Tides rise and fall — like a café's 🌊 breathing, twice a day.");
        let n = events.len();
        assert_eq!(events[n - 2], Ok(ProviderEvent::Usage(Usage { prompt_tokens: 41, completion_tokens: 17, total_tokens: 58 })));
        assert_eq!(events[n - 1], Ok(ProviderEvent::Finished(FinishReason::Stop)));
    }

    #[tokio::test]
    async fn the_request_is_a_streaming_chat_completion_that_asks_for_usage() {
        let server = FakeUpstream::start(vec![Reply::sse(fixture("openai_chat_stream.sse"))]).await;
        collect(&provider(&server, Some(KEY))).await;
        let sent = server.request(0).await;
        assert_eq!(sent.path, "/v1/chat/completions");
        assert_eq!(sent.header("authorization").as_deref(), Some(&*format!("Bearer {KEY}")));
        let body: Value = serde_json::from_slice(&sent.body).unwrap();
        assert_eq!(body["model"], "test-model");
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["max_tokens"], request().prompt.max_tokens);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][1]["role"], "user");
        assert_eq!(body["messages"][1]["content"], "Explain like I am 10: tides");
    }

    #[tokio::test]
    async fn a_local_server_gets_no_authorization_header_without_a_key() {
        let server = FakeUpstream::start(vec![Reply::sse(fixture("openai_chat_stream.sse"))]).await;
        let events = collect(&provider(&server, None)).await;
        assert_eq!(events.last(), Some(&Ok(ProviderEvent::Finished(FinishReason::Stop))));
        let sent = server.request(0).await;
        assert_eq!(sent.path, "/v1/chat/completions");
        assert_eq!(sent.header("authorization"), None);
    }

    #[tokio::test]
    async fn a_refused_port_is_unavailable_and_retryable() {
        let port = FakeUpstream::refused_port().await;
        let provider = OpenAiProvider::new(&format!("http://127.0.0.1:{port}/v1"), None, Some("m".into())).unwrap();
        let error = last_error(&collect(&provider).await);
        assert!(matches!(error, ProviderError::Unavailable { .. }), "{error:?}");
        assert!(error.retryable());
        assert!(error.to_string().to_lowercase().contains("refused"), "{error}");
    }

    #[tokio::test]
    async fn a_refused_key_is_unauthorized_and_never_echoed() {
        // Some servers quote the key they refused; the error must not.
        let body = format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {KEY}","type":"invalid_request_error","code":"invalid_api_key"}}}}"#
        );
        let server = FakeUpstream::start(vec![Reply::status(401, &[], body)]).await;
        let error = last_error(&collect(&provider(&server, Some(KEY))).await);
        assert!(matches!(error, ProviderError::Unauthorized { .. }), "{error:?}");
        assert!(!error.retryable());
        assert!(error.to_string().contains("OPENAI_API_KEY"), "{error}");
        assert!(!format!("{error} {error:?}").contains(KEY));
    }

    #[tokio::test]
    async fn forbidden_is_unauthorized_too() {
        let server = FakeUpstream::start(vec![Reply::status(403, &[], r#"{"error":{"message":"no access"}}"#.into())]).await;
        assert!(matches!(last_error(&collect(&provider(&server, Some(KEY))).await), ProviderError::Unauthorized { .. }));
    }

    #[tokio::test]
    async fn a_429_is_rate_limited_with_its_retry_after() {
        let body = r#"{"error":{"message":"Rate limit reached for requests","type":"requests","code":"rate_limit_exceeded"}}"#;
        let server = FakeUpstream::start(vec![Reply::status(429, &[("Retry-After", "7")], body.into())]).await;
        let error = last_error(&collect(&provider(&server, Some(KEY))).await);
        assert!(matches!(error, ProviderError::RateLimited { .. }), "{error:?}");
        assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
        assert!(error.retryable());
        assert!(error.to_string().contains("Rate limit reached"), "{error}");
    }

    #[tokio::test]
    async fn a_500_is_a_retryable_upstream_error() {
        let server = FakeUpstream::start(vec![Reply::status(500, &[], "upstream exploded".into())]).await;
        let error = last_error(&collect(&provider(&server, Some(KEY))).await);
        assert!(matches!(error, ProviderError::Upstream { retryable: true, .. }), "{error:?}");
        assert!(error.to_string().contains("HTTP 500"), "{error}");
    }

    #[tokio::test]
    async fn an_unknown_model_is_an_upstream_error_that_is_not_retried() {
        let body = r#"{"error":{"message":"The model `nope` does not exist","type":"invalid_request_error"}}"#;
        let server = FakeUpstream::start(vec![Reply::status(404, &[], body.into())]).await;
        let error = last_error(&collect(&provider(&server, Some(KEY))).await);
        assert!(matches!(error, ProviderError::Upstream { retryable: false, .. }), "{error:?}");
        assert!(error.to_string().contains("does not exist"), "{error}");
    }

    #[tokio::test]
    async fn malformed_json_ends_the_stream_with_a_non_retryable_error() {
        let server = FakeUpstream::start(vec![Reply::sse(fixture("openai_malformed.sse"))]).await;
        let events = collect(&provider(&server, Some(KEY))).await;
        assert_eq!(text(&events), "Tides");
        let error = last_error(&events);
        assert!(matches!(error, ProviderError::Upstream { retryable: false, .. }), "{error:?}");
        assert!(error.to_string().contains("malformed"), "{error}");
    }

    #[tokio::test]
    async fn a_stream_without_done_never_finishes() {
        let server = FakeUpstream::start(vec![Reply::sse(fixture("openai_truncated.sse"))]).await;
        let events = collect(&provider(&server, Some(KEY))).await;
        assert!(!events.iter().any(|e| matches!(e, Ok(ProviderEvent::Finished(_)))));
        assert!(last_error(&events).to_string().contains("[DONE]"));
    }

    #[tokio::test]
    async fn a_connection_cut_mid_stream_is_an_error_not_a_finish() {
        let server = FakeUpstream::start(vec![Reply::sse(fixture("openai_truncated.sse")).cut()]).await;
        let events = collect(&provider(&server, Some(KEY))).await;
        assert!(!events.iter().any(|e| matches!(e, Ok(ProviderEvent::Finished(_)))));
        assert!(matches!(last_error(&events), ProviderError::Upstream { retryable: true, .. }));
    }

    #[tokio::test]
    async fn an_error_chunk_mid_stream_is_reported() {
        let server = FakeUpstream::start(vec![Reply::sse(fixture("openai_error_chunk.sse"))]).await;
        let events = collect(&provider(&server, Some(KEY))).await;
        let error = last_error(&events);
        assert!(matches!(error, ProviderError::Upstream { retryable: true, .. }), "{error:?}");
        assert!(error.to_string().contains("server_error"), "{error}");
    }

    #[tokio::test]
    async fn a_stall_sends_nothing_and_dropping_the_stream_closes_the_request() {
        let server = FakeUpstream::start(vec![Reply::sse(fixture("openai_chat_stream.sse")).stall_after(2)]).await;
        let provider = provider(&server, Some(KEY));
        let mut stream = provider.stream(request());
        let mut text = String::new();
        while text.is_empty() {
            if let Some(Ok(ProviderEvent::Delta(t))) = stream.next().await {
                text.push_str(&t);
            }
        }
        assert!(tokio::time::timeout(Duration::from_millis(300), stream.next()).await.is_err(), "a stalled upstream yields nothing");
        drop(stream);
        // That the close is prompt is measured end to end in tests/api/providers.rs.
        tokio::time::timeout(Duration::from_secs(5), server.closed(0)).await.expect("the upstream sees the close");
    }

    #[tokio::test]
    async fn the_stream_is_lazy() {
        let server = FakeUpstream::start(vec![Reply::sse(fixture("openai_chat_stream.sse"))]).await;
        let stream = provider(&server, Some(KEY)).stream(request());
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(stream);
        assert_eq!(server.connections(), 0);
    }

    #[test]
    fn defaults_follow_the_server_and_unknown_servers_need_ai_model() {
        let model = |url: &str| OpenAiProvider::new(url, None, None).map(|p| p.model);
        assert_eq!(model("https://api.openai.com/v1").unwrap(), "gpt-4o-mini");
        assert_eq!(model("http://127.0.0.1:11434/v1").unwrap(), "llama3.2");
        assert_eq!(model("https://api.groq.com/openai/v1").unwrap(), "llama-3.1-8b-instant");
        assert_eq!(model("https://openrouter.ai/api/v1").unwrap(), "openai/gpt-4o-mini");
        assert_eq!(model("http://127.0.0.1:8000/v1").unwrap_err().variable, "AI_MODEL");
        assert_eq!(OpenAiProvider::new("localhost:8000", None, None).unwrap_err().variable, "OPENAI_BASE_URL");
    }

    #[test]
    fn the_base_url_keeps_its_path() {
        assert_eq!(
            endpoint_url("https://api.groq.com/openai/v1").unwrap().join("chat/completions").unwrap().as_str(),
            "https://api.groq.com/openai/v1/chat/completions"
        );
        assert_eq!(
            endpoint_url("http://127.0.0.1:8080/v1/").unwrap().join("chat/completions").unwrap().as_str(),
            "http://127.0.0.1:8080/v1/chat/completions"
        );
    }
}
