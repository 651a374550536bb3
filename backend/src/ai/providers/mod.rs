//! Language-model providers behind one trait. A provider turns a prompt into a
//! stream of `ProviderEvent`s; dropping the stream closes its upstream request, which
//! is how cancel and abandonment stop generation (and billing).

pub mod anthropic;
pub mod demo;
pub(crate) mod demo_content;
#[cfg(test)]
pub(crate) mod fake_upstream;
pub mod openai;
pub mod token_count;
mod upstream;
pub mod watch;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;

use crate::ai::blocks::{BlockInput, Prompt};
use crate::ai::streaming::events::{ErrorCode, FinishReason, Usage};
use crate::config::settings::{ProviderKind, Settings};
pub use token_count::TokenCounter;
pub use watch::{CallWatch, Watched};

/// What a provider is asked. `input` is the validated block input: real models see
/// only the prompt; the demo model uses the input to write block-shaped content.
#[derive(Debug, Clone)]
pub struct ProviderRequest {
    pub prompt: Prompt,
    pub input: BlockInput,
}

/// One normalised item of a provider's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderEvent {
    /// The next piece of output text. An empty one says the provider is alive (a
    /// ping, hidden reasoning): it resets the idle timeout and sends nothing.
    Delta(String),
    /// Token counts, when the provider reports them.
    Usage(Usage),
    /// The provider's end marker; nothing follows it.
    Finished(FinishReason),
}

/// Why a provider could not produce (the rest of) its output.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    #[error("{provider} is unreachable: {message}")]
    Unavailable { provider: String, message: String },
    #[error("{provider} is rate limiting requests: {message}")]
    RateLimited { provider: String, message: String, retry_after: Option<Duration> },
    #[error("{provider} refused the credentials: {message}")]
    Unauthorized { provider: String, message: String },
    #[error("{provider} failed: {message}")]
    Upstream { provider: String, message: String, retryable: bool },
    #[error("{provider} sent no data for {idle:?}")]
    Timeout { provider: String, idle: Duration },
    #[error("{provider} did not finish within {limit:?} (GENERATION_TIMEOUT_SECONDS)")]
    TooLong { provider: String, limit: Duration },
}

impl ProviderError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unavailable { .. } => ErrorCode::ProviderUnavailable,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::Unauthorized { .. } | Self::Upstream { .. } => ErrorCode::ProviderError,
            Self::Timeout { .. } | Self::TooLong { .. } => ErrorCode::Timeout,
        }
    }

    pub fn retryable(&self) -> bool {
        match self {
            Self::Unavailable { .. } | Self::RateLimited { .. } | Self::Timeout { .. } | Self::TooLong { .. } => true,
            Self::Unauthorized { .. } => false,
            Self::Upstream { retryable, .. } => *retryable,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

pub type ProviderStream = Pin<Box<dyn Stream<Item = Result<ProviderEvent, ProviderError>> + Send>>;

pub trait Provider: Send + Sync {
    /// `demo`, `openai` or `anthropic`: shown in `start` events.
    fn name(&self) -> &str;
    /// The model answering: shown in `start` events.
    fn model(&self) -> &str;
    /// Starts a generation. The stream is lazy: no request is made before it is
    /// polled, and dropping it closes the upstream request.
    fn stream(&self, request: ProviderRequest) -> ProviderStream;
    /// Counts the model's output where the provider reports no usage.
    fn token_counter(&self) -> TokenCounter {
        TokenCounter::Estimate
    }
    /// The host and port requests go to (`server.address`/`server.port` of the
    /// GenAI spans); `None` for a model inside this process.
    fn server(&self) -> Option<(String, u16)> {
        None
    }
    /// A watch on the call `stream(request)` just started, when something
    /// (telemetry) watches this provider's calls; the engine shows it every item.
    fn watch(&self, _request: &ProviderRequest) -> Option<Box<dyn CallWatch>> {
        None
    }
}

/// A provider that cannot be built from the settings given.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ProviderSetupError {
    pub variable: &'static str,
    pub message: String,
}

/// The provider the settings ask for.
pub fn from_settings(settings: &Settings) -> Result<Arc<dyn Provider>, ProviderSetupError> {
    match settings.provider {
        ProviderKind::Demo => Ok(Arc::new(demo::DemoProvider::new(settings.demo.clone()))),
        ProviderKind::OpenAi => {
            Ok(Arc::new(openai::OpenAiProvider::new(&settings.openai_base_url, settings.openai_api_key.clone(), settings.model.clone())?))
        }
        ProviderKind::Anthropic => {
            // Settings refuse to load without it; this keeps the message if that changes.
            let key = settings.anthropic_api_key.clone().ok_or(ProviderSetupError {
                variable: "ANTHROPIC_API_KEY",
                message: "an API key is required when AI_PROVIDER=anthropic".into(),
            })?;
            Ok(Arc::new(anthropic::AnthropicProvider::new(&settings.anthropic_base_url, key, settings.model.clone())?))
        }
    }
}

/// A `Secret` holding `value`, built the way start-up builds one.
#[cfg(test)]
pub(crate) fn secret_for_tests(value: &str) -> crate::config::settings::Secret {
    let vars = [("AI_PROVIDER", "anthropic"), ("ANTHROPIC_API_KEY", value)];
    let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Settings::from_map(&vars).expect("valid settings").anthropic_api_key.expect("the key just set")
}

/// Counts open provider requests: the gauge drops when a stream is dropped, which
/// is how tests and operators see that a cancel closed the upstream request.
struct Instrumented {
    inner: Arc<dyn Provider>,
    open: prometheus::IntGauge,
}

struct OpenGuard(prometheus::IntGauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Provider for Instrumented {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn model(&self) -> &str {
        self.inner.model()
    }

    fn token_counter(&self) -> TokenCounter {
        self.inner.token_counter()
    }

    fn server(&self) -> Option<(String, u16)> {
        self.inner.server()
    }

    fn watch(&self, request: &ProviderRequest) -> Option<Box<dyn CallWatch>> {
        self.inner.watch(request)
    }

    fn stream(&self, request: ProviderRequest) -> ProviderStream {
        self.open.inc();
        let guard = OpenGuard(self.open.clone());
        let upstream = self.inner.stream(request);
        Box::pin(futures::StreamExt::map(upstream, move |item| {
            let _ = &guard;
            item
        }))
    }
}

pub fn instrumented(inner: Arc<dyn Provider>, open: prometheus::IntGauge) -> Arc<dyn Provider> {
    Arc::new(Instrumented { inner, open })
}

/// Reading provider streams in the provider tests.
#[cfg(test)]
pub(crate) mod stream_reading {
    use super::{ProviderError, ProviderEvent, ProviderStream};
    use futures::StreamExt;

    pub type Events = Vec<Result<ProviderEvent, ProviderError>>;

    /// Everything the stream yields, failing the test if it does not end.
    pub async fn drain(stream: ProviderStream) -> Events {
        tokio::time::timeout(std::time::Duration::from_secs(10), stream.collect()).await.expect("the stream ends")
    }

    /// The text of the deltas.
    pub fn text(events: &Events) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                Ok(ProviderEvent::Delta(t)) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    pub fn last_error(events: &Events) -> ProviderError {
        match events.last() {
            Some(Err(error)) => error.clone(),
            other => panic!("expected the stream to end in an error, got {other:?}"),
        }
    }
}
