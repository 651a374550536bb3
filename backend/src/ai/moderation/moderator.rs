//! What every moderator is: text in, a typed verdict out (allowed, or flagged
//! with categories), or a typed failure; a [`BatchModerator`] also takes many
//! texts in one request. [`Attempts`] bounds each request by
//! `MODERATION_TIMEOUT_MS` and retries failures the way the engine retries a
//! provider (`PROVIDER_MAX_RETRIES`, doubling backoff, a short `Retry-After`
//! honoured); [`Checker`] applies it to each check, or hands checks to a
//! [`Batcher`], which applies it to each batch. The stage above only sees
//! verdicts and final failures.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::batch::{Batcher, Batching};

/// Which side of the exchange a check looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The learner's input fields.
    Input,
    /// The model's streamed output.
    Output,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Output => "output",
        }
    }
}

/// Why text was flagged: categories of [`super::category`], and the scores the
/// moderator gave (a classifier's; the local filter's severity; none for Llama Guard).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Flag {
    pub categories: Vec<String>,
    pub scores: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Allowed,
    Flagged(Flag),
}

/// One thing to check. `context` is the learner's input when `text` is output,
/// for moderators that judge an answer in its conversation (Llama Guard).
#[derive(Debug, Clone)]
pub struct Check {
    pub stage: Stage,
    pub text: String,
    pub context: Arc<str>,
}

/// Why a moderator gave no verdict. Messages are for logs: never the text checked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModerationError {
    #[error("{moderator} is unreachable: {message}")]
    Unavailable { moderator: &'static str, message: String },
    #[error("{moderator} answered HTTP {status}")]
    Status { moderator: &'static str, status: u16, retry_after: Option<Duration> },
    #[error("{moderator} did not answer within {limit:?} (MODERATION_TIMEOUT_MS)")]
    Timeout { moderator: &'static str, limit: Duration },
    #[error("{moderator} sent an answer that cannot be read: {message}")]
    Malformed { moderator: &'static str, message: String },
}

impl ModerationError {
    pub fn retryable(&self) -> bool {
        match self {
            Self::Unavailable { .. } | Self::Timeout { .. } => true,
            Self::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            Self::Malformed { .. } => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[async_trait]
pub trait Moderator: Send + Sync {
    /// `local`, `openai` or `llama-guard`.
    fn name(&self) -> &'static str;
    /// What it is, for `/api/ai/config` and the logs: the local filter says it
    /// is a word-level filter, not a classifier.
    fn description(&self) -> String;
    async fn check(&self, check: &Check) -> Result<Verdict, ModerationError>;
}

/// A moderator whose API judges many texts in one request.
#[async_trait]
pub trait BatchModerator: Send + Sync {
    fn name(&self) -> &'static str;
    /// One verdict per text, in the texts' order. A count that differs is the
    /// caller's to refuse: it cannot tell which verdict is whose.
    async fn check_batch(&self, texts: &[&str]) -> Result<Vec<Verdict>, ModerationError>;
}

/// The longest `Retry-After` waited for; a longer one fails the check.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);

/// How one request to a moderator is bounded and retried.
#[derive(Debug, Clone, Copy)]
pub struct Attempts {
    timeout: Duration,
    max_retries: u32,
    retry_base: Duration,
}

impl Attempts {
    pub fn new(timeout: Duration, max_retries: u32) -> Self {
        Self { timeout, max_retries, retry_base: Duration::from_millis(250) }
    }

    /// `request` until it answers, fails for good or runs out of retries;
    /// `what` names it in the logs (never its text).
    pub async fn run<T, F, Fut>(&self, moderator: &'static str, what: &str, mut request: F) -> Result<T, ModerationError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ModerationError>>,
    {
        let mut attempt = 0;
        loop {
            let outcome = match tokio::time::timeout(self.timeout, request()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(ModerationError::Timeout { moderator, limit: self.timeout }),
            };
            let error = match outcome {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            let wait = error.retry_after().unwrap_or(self.retry_base * 2u32.pow(attempt));
            if !error.retryable() || attempt >= self.max_retries || wait > MAX_RETRY_WAIT {
                return Err(error);
            }
            tracing::warn!(%error, attempt, ?wait, what, "moderation request failed; retrying");
            attempt += 1;
            tokio::time::sleep(wait).await;
        }
    }
}

/// A moderator with its timeout and retries, asked one check at a time or in batches.
#[derive(Clone)]
pub struct Checker {
    moderator: Arc<dyn Moderator>,
    attempts: Attempts,
    batcher: Option<Batcher>,
}

impl Checker {
    pub fn new(moderator: Arc<dyn Moderator>, timeout: Duration, max_retries: u32) -> Self {
        Self { moderator, attempts: Attempts::new(timeout, max_retries), batcher: None }
    }

    /// Checks that arrive within `batching.wait` of each other go to `batch`
    /// together, each batch timed and retried as one request. A wait of zero
    /// keeps one request per check, through [`Moderator::check`]. Starts a
    /// task: call within a tokio runtime.
    pub fn batching(self, batch: Arc<dyn BatchModerator>, batching: Batching, batch_size: prometheus::Histogram) -> Self {
        if batching.wait.is_zero() {
            return self;
        }
        let batcher = Batcher::start(batch, self.attempts, batching, batch_size);
        Self { batcher: Some(batcher), ..self }
    }

    pub fn moderator(&self) -> &dyn Moderator {
        self.moderator.as_ref()
    }

    pub async fn check(&self, check: Check) -> Result<Verdict, ModerationError> {
        if let Some(batcher) = &self.batcher {
            return batcher.check(check).await;
        }
        self.attempts.run(self.moderator.name(), check.stage.as_str(), || self.moderator.check(&check)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fails `failures` times, then allows.
    struct Flaky {
        failures: u32,
        calls: AtomicU32,
        error: ModerationError,
    }

    #[async_trait]
    impl Moderator for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn description(&self) -> String {
            "flaky".into()
        }
        async fn check(&self, _check: &Check) -> Result<Verdict, ModerationError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                return Err(self.error.clone());
            }
            Ok(Verdict::Allowed)
        }
    }

    fn check() -> Check {
        Check { stage: Stage::Input, text: "hi".into(), context: "".into() }
    }

    fn down() -> ModerationError {
        ModerationError::Unavailable { moderator: "flaky", message: "refused".into() }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_within_the_bound() {
        let flaky = Arc::new(Flaky { failures: 2, calls: AtomicU32::new(0), error: down() });
        let checker = Checker::new(flaky.clone(), Duration::from_secs(1), 2);
        assert_eq!(checker.check(check()).await, Ok(Verdict::Allowed));
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);

        let flaky = Arc::new(Flaky { failures: 5, calls: AtomicU32::new(0), error: down() });
        let checker = Checker::new(flaky.clone(), Duration::from_secs(1), 2);
        assert_eq!(checker.check(check()).await, Err(down()));
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_not_retried() {
        let refused = ModerationError::Status { moderator: "flaky", status: 401, retry_after: None };
        let flaky = Arc::new(Flaky { failures: 1, calls: AtomicU32::new(0), error: refused.clone() });
        assert_eq!(Checker::new(flaky.clone(), Duration::from_secs(1), 2).check(check()).await, Err(refused));
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 1);
    }

    /// Never answers.
    struct Silent;

    #[async_trait]
    impl Moderator for Silent {
        fn name(&self) -> &'static str {
            "silent"
        }
        fn description(&self) -> String {
            "silent".into()
        }
        async fn check(&self, _check: &Check) -> Result<Verdict, ModerationError> {
            futures::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_moderator_that_does_not_answer_times_out() {
        let outcome = Checker::new(Arc::new(Silent), Duration::from_millis(300), 0).check(check()).await;
        assert_eq!(outcome, Err(ModerationError::Timeout { moderator: "silent", limit: Duration::from_millis(300) }));
    }
}
