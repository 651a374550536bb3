//! The path both real providers share: one streaming chat request made through the
//! `genai` crate, its events normalised into `ProviderEvent`s, and every way it can
//! fail classified into a `ProviderError`.
//!
//! Owns three decisions the provider files rely on:
//! - a failure ends the stream: nothing is polled after the first error, and the
//!   genai stream is dropped with ours, which closes the HTTP request;
//! - a stream that ends without the provider's end marker ends in an error, never
//!   in `Finished`;
//! - the API key never reaches a message: HTTP 401/403 says which variable was
//!   refused, and every upstream text is scrubbed of the key before it is kept.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_stream::stream;
use futures::{Stream, StreamExt};
use genai::chat::{ChatMessage, ChatOptions, ChatRequest, ChatStreamEvent, StopReason};
use genai::{Client, ServiceTarget};
use reqwest::header::HeaderMap;
use serde_json::Value;

use super::{ProviderError, ProviderEvent, ProviderSetupError, ProviderStream};
use crate::ai::blocks::Prompt;
use crate::ai::streaming::events::{FinishReason, Usage};
use crate::config::settings::Secret;

/// Upstream texts kept in error messages are cut to this many characters: enough
/// for "The model `x` does not exist", not a whole HTML error page.
const MAX_UPSTREAM_MESSAGE_CHARS: usize = 300;

/// How long a TCP (and TLS) connect may take before the provider counts as
/// unreachable. Streaming reads have no timeout here: the engine's idle timeout
/// owns silence.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One configured upstream: where to send, with which credentials, and how to
/// word its failures.
pub(super) struct Upstream {
    /// `openai` or `anthropic`: the `provider` of every error.
    pub provider: &'static str,
    pub client: Client,
    pub target: ServiceTarget,
    /// The key sent, kept only to scrub it from upstream texts.
    pub api_key: Option<Secret>,
    /// The variable holding the key, named when the key is refused or missing.
    pub key_variable: &'static str,
    /// What the provider's stream ends with, named when a stream ends without it.
    pub end_marker: &'static str,
}

impl Upstream {
    /// A genai client that connects with a bounded connect timeout.
    pub fn client(provider_variable: &'static str) -> Result<Client, ProviderSetupError> {
        Client::builder()
            .with_web_config(genai::WebConfig::default().with_connect_timeout(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| ProviderSetupError { variable: provider_variable, message: format!("the HTTP client could not be built: {e}") })
    }

    /// The host and port of the endpoint, as GenAI spans name the server.
    pub fn server(&self) -> Option<(String, u16)> {
        let url = reqwest::Url::parse(self.target.endpoint.base_url()).ok()?;
        Some((url.host_str()?.to_owned(), url.port_or_known_default()?))
    }

    /// Streams the answer to `prompt`. Lazy: the request is sent on the first poll.
    pub fn stream(self: &Arc<Self>, prompt: &Prompt) -> ProviderStream {
        let this = self.clone();
        let request = ChatRequest::from_system(prompt.system.clone()).append_message(ChatMessage::user(prompt.user.clone()));
        let options = ChatOptions::default().with_max_tokens(prompt.max_tokens).with_capture_usage(true);
        Box::pin(stream! {
            let response = match this.client.exec_chat_stream(this.target.clone(), request, Some(&options)).await {
                Ok(response) => response,
                Err(error) => {
                    yield Err(this.classify(error));
                    return;
                }
            };
            let mut events = muted(response.stream);
            loop {
                match events.next().await {
                    Some(Ok(ChatStreamEvent::Chunk(chunk))) => yield Ok(ProviderEvent::Delta(chunk.content)),
                    // A ping, or reasoning the block does not show, proves the upstream is
                    // alive: an empty delta resets the engine's idle timer and sends nothing.
                    Some(Ok(
                        ChatStreamEvent::Heartbeat
                        | ChatStreamEvent::ReasoningChunk(_)
                        | ChatStreamEvent::ThoughtSignatureChunk(_)
                        | ChatStreamEvent::ToolCallChunk(_),
                    )) => yield Ok(ProviderEvent::Delta(String::new())),
                    Some(Ok(ChatStreamEvent::Start)) => {}
                    Some(Ok(ChatStreamEvent::End(end))) => {
                        if let Some(usage) = end.captured_usage.as_ref().and_then(usage_from) {
                            yield Ok(ProviderEvent::Usage(usage));
                        }
                        yield Ok(ProviderEvent::Finished(finish_reason(end.captured_stop_reason.as_ref())));
                        return;
                    }
                    Some(Err(error)) => {
                        yield Err(this.classify(error));
                        return;
                    }
                    None => {
                        yield Err(ProviderError::Upstream {
                            provider: this.provider.into(),
                            message: format!("the response ended before its end marker ({})", this.end_marker),
                            retryable: true,
                        });
                        return;
                    }
                }
            }
        })
    }

    /// Maps a genai error, whatever layer it came from, to a `ProviderError`.
    pub fn classify(&self, error: genai::Error) -> ProviderError {
        use genai::Error as G;
        match error {
            G::WebStream { error, .. } => self.classify_transport(error.as_ref()),
            G::WebModelCall { webc_error, .. } | G::WebAdapterCall { webc_error, .. } => self.classify_webc(&webc_error),
            G::HttpError { status, headers, body, .. } => self.http_status(status.as_u16(), &headers, &body),
            G::ChatResponse { body, .. } => self.error_event(&body),
            G::StreamParse { serde_error, .. } => self.malformed(&serde_error.to_string()),
            G::JsonValueExt(cause) => self.malformed(&cause.to_string()),
            other => self.upstream(format!("the request could not be made: {other}"), false),
        }
    }

    /// Errors raised below genai's event parser: the HTTP response status, the
    /// connection, or bytes that are not UTF-8.
    fn classify_transport(&self, error: &(dyn StdError + Send + Sync + 'static)) -> ProviderError {
        if let Some(genai_error) = error.downcast_ref::<genai::Error>() {
            return match genai_error {
                genai::Error::HttpError { status, headers, body, .. } => self.http_status(status.as_u16(), headers, body),
                other => self.upstream(format!("the response could not be read: {other}"), true),
            };
        }
        if let Some(reqwest_error) = error.downcast_ref::<reqwest::Error>() {
            return self.classify_reqwest(reqwest_error);
        }
        if error.is::<std::str::Utf8Error>() || error.is::<std::string::FromUtf8Error>() {
            return self.malformed("the stream is not UTF-8");
        }
        self.upstream(format!("the response could not be read: {}", root_cause(error)), true)
    }

    fn classify_webc(&self, error: &genai::webc::Error) -> ProviderError {
        match error {
            genai::webc::Error::ResponseFailedStatus { status, body, headers } => self.http_status(status.as_u16(), headers, body),
            genai::webc::Error::Reqwest(reqwest_error) => self.classify_reqwest(reqwest_error),
            other => self.malformed(&other.to_string()),
        }
    }

    fn classify_reqwest(&self, error: &reqwest::Error) -> ProviderError {
        if error.is_connect() || error.is_timeout() {
            // Refused, unresolvable or unroutable: the cause says which.
            return ProviderError::Unavailable {
                provider: self.provider.into(),
                message: self.scrub(&format!("cannot connect to {}: {}", self.host(), root_cause(error))),
            };
        }
        // The connection broke mid-response: transient, though the engine never
        // retries once text was sent.
        self.upstream(format!("the connection to {} broke: {}", self.host(), root_cause(error)), true)
    }

    /// A non-2xx response, before any stream data.
    pub fn http_status(&self, status: u16, headers: &HeaderMap, body: &str) -> ProviderError {
        let provider = self.provider.to_owned();
        match status {
            // The body may quote the key (some servers echo it), so it is not kept.
            401 | 403 => ProviderError::Unauthorized {
                provider,
                message: match self.api_key {
                    Some(_) => format!("the API key in {} was refused (HTTP {status})", self.key_variable),
                    None => format!("the server requires an API key: set {} (HTTP {status})", self.key_variable),
                },
            },
            // 529 is Anthropic's "overloaded": back off like a rate limit.
            429 | 529 => ProviderError::RateLimited {
                provider,
                message: format!("HTTP {status}: {}", self.upstream_message(body)),
                retry_after: retry_after(headers, SystemTime::now()),
            },
            408 | 500..=599 => self.upstream(format!("HTTP {status}: {}", self.upstream_message(body)), true),
            _ => self.upstream(format!("HTTP {status}: {}", self.upstream_message(body)), false),
        }
    }

    /// An error the server sent inside the stream: OpenAI's `data: {"error": …}` or
    /// Anthropic's `event: error` (`{"type":"error","error":{"type":…}}`).
    pub fn error_event(&self, body: &Value) -> ProviderError {
        let error = match body.get("error") {
            Some(inner) if inner.is_object() => inner,
            _ => body,
        };
        let kind = error.get("type").or_else(|| error.get("code")).and_then(Value::as_str).unwrap_or("");
        let text = error.get("message").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| body.to_string());
        let message = format!("{}: {}", if kind.is_empty() { "error event" } else { kind }, self.scrub(&truncate(&text)));
        let provider = self.provider.to_owned();
        match kind {
            "overloaded_error" | "rate_limit_error" | "rate_limit_exceeded" => {
                ProviderError::RateLimited { provider, message, retry_after: None }
            }
            "authentication_error" | "permission_error" | "invalid_api_key" => {
                ProviderError::Unauthorized { provider, message: format!("the API key in {} was refused ({kind})", self.key_variable) }
            }
            "api_error" | "server_error" | "internal_server_error" | "timeout_error" | "service_unavailable" => {
                self.upstream(message, true)
            }
            _ => self.upstream(message, false),
        }
    }

    fn malformed(&self, cause: &str) -> ProviderError {
        self.upstream(format!("malformed stream data: {}", truncate(cause)), false)
    }

    fn upstream(&self, message: String, retryable: bool) -> ProviderError {
        ProviderError::Upstream { provider: self.provider.into(), message: self.scrub(&message), retryable }
    }

    /// The error text of a failed response body: the JSON `error.message` both APIs
    /// send, else the start of the body.
    fn upstream_message(&self, body: &str) -> String {
        let parsed: Option<Value> = serde_json::from_str(body).ok();
        let from_json = parsed.as_ref().and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("error").filter(|e| e.is_string()))
                .or_else(|| v.get("message"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let text = from_json.unwrap_or_else(|| body.trim().to_owned());
        if text.is_empty() {
            return "no error message".into();
        }
        self.scrub(&truncate(&text))
    }

    fn host(&self) -> String {
        let base = self.target.endpoint.base_url();
        reqwest::Url::parse(base)
            .ok()
            .and_then(|url| {
                url.host_str().map(|host| match url.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host.to_owned(),
                })
            })
            .unwrap_or_else(|| "the provider".into())
    }

    /// `text` with the API key replaced, for servers that echo credentials.
    fn scrub(&self, text: &str) -> String {
        match &self.api_key {
            Some(key) if key.expose().len() >= 4 => text.replace(key.expose(), "[redacted]"),
            _ => text.to_owned(),
        }
    }
}

/// `events` polled with logging off. genai's streamers log each failure with the
/// upstream's error body verbatim — which may quote the API key — and warn on
/// every role-only chunk; this module reports every failure itself, scrubbed.
fn muted<S: Stream + Unpin>(mut events: S) -> impl Stream<Item = S::Item> + Unpin {
    let silent = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    futures::stream::poll_fn(move |cx| tracing::dispatcher::with_default(&silent, || events.poll_next_unpin(cx)))
}

/// The innermost cause: reqwest's own text is "error sending request", the useful
/// part ("Connection refused") is at the bottom of the chain.
fn root_cause(error: &(dyn StdError + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_UPSTREAM_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The wait a 429/529 asks for: `retry-after-ms` (OpenAI's precise form) or
/// `Retry-After` as seconds or an HTTP date.
pub(super) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return seconds(ms / 1000.0);
    }
    let value = header("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return seconds(secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn seconds(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

fn usage_from(usage: &genai::chat::Usage) -> Option<Usage> {
    let prompt_tokens = usage.prompt_tokens.map(|n| n.max(0) as u64);
    let completion_tokens = usage.completion_tokens.map(|n| n.max(0) as u64);
    if prompt_tokens.is_none() && completion_tokens.is_none() {
        return None;
    }
    let (prompt_tokens, completion_tokens) = (prompt_tokens.unwrap_or(0), completion_tokens.unwrap_or(0));
    let total_tokens = usage.total_tokens.map_or(prompt_tokens + completion_tokens, |n| n.max(0) as u64);
    Some(Usage { prompt_tokens, completion_tokens, total_tokens })
}

/// Only a token limit is reported apart; every other reason ended the text normally.
fn finish_reason(reason: Option<&StopReason>) -> FinishReason {
    match reason {
        Some(StopReason::MaxTokens(_)) => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn retry_after_reads_seconds_milliseconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after(&headers(&[("retry-after", "7")]), now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&headers(&[("retry-after", "1.5")]), now), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after(&headers(&[("retry-after-ms", "250"), ("retry-after", "1")]), now), Some(Duration::from_millis(250)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(retry_after(&headers(&[("retry-after", &date)]), now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(retry_after(&headers(&[("retry-after", &past)]), now), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-3")]), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn long_upstream_texts_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_UPSTREAM_MESSAGE_CHARS + 10);
        let cut = truncate(&long);
        assert_eq!(cut.chars().count(), MAX_UPSTREAM_MESSAGE_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate("short"), "short");
    }

    #[test]
    fn usage_totals_are_computed_when_missing() {
        let usage = genai::chat::Usage { prompt_tokens: Some(12), completion_tokens: Some(5), ..Default::default() };
        assert_eq!(usage_from(&usage), Some(Usage { prompt_tokens: 12, completion_tokens: 5, total_tokens: 17 }));
        assert_eq!(usage_from(&genai::chat::Usage::default()), None);
    }
}
