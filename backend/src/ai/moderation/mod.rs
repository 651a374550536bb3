//! Child safety: moderation of what learners ask and of what the model streams
//! back, as a stage wrapped around the engine's events, before the stream
//! manager appends them to the log — the one place that can keep a flagged word
//! out of every reader, every process and every replay.
//!
//! - `moderator.rs`: the trait (text → allowed / flagged with categories), with
//!   timeouts and retries; `local.rs` (word filter), `openai.rs`
//!   (`/v1/moderations`), `llama_guard.rs` (Llama Guard over a chat server).
//! - `batch.rs`: checks of all streams that arrive within
//!   `MODERATION_BATCH_WAIT_MS` sent to `openai` in one request.
//! - `window.rs`: output cut into windows at sentence ends.
//! - `stage.rs`: the stream wrapper — input checked alongside the provider
//!   call, output held back per window (`buffered`) or checked behind the
//!   stream and retracted (`async`), fail modes.
//! - `webhook.rs` + `outbox/`: each flag POSTed to the host app, signed per
//!   Standard Webhooks, retried for hours from an outbox (in Redis with
//!   `STREAM_STORE=redis`, so deliveries outlive a restart).

mod batch;
pub mod category;
mod http;
pub mod llama_guard;
pub mod local;
pub mod moderator;
pub mod openai;
pub mod outbox;
mod stage;
pub mod webhook;
pub mod window;

use std::sync::Arc;

use serde::Serialize;

use self::batch::Batching;
use self::moderator::{Checker, Flag, Stage};
use self::webhook::{Flagged, Webhooks};
use crate::ai::blocks::BlockType;
use crate::ai::runtime::engine::EventStream;
use crate::ai::streaming::events::StreamId;
use crate::config::moderation::{FailMode, ModerationSettings, ModeratorKind, OutputMode, Stages};
use crate::metrics::Metrics;

/// The exchange a stream belongs to: who asked what, for checks and reports.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// `None` in whole-response mode, which has no stream.
    pub stream_id: Option<StreamId>,
    pub principal: String,
    pub block: BlockType,
    /// The learner's free-text input fields, joined.
    pub input: Arc<str>,
}

/// What `/api/ai/config` says about moderation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModerationInfo {
    /// `off`, `input`, `output` or `both`.
    pub stages: &'static str,
    /// `local`, `openai` or `llama-guard`.
    pub provider: &'static str,
    /// What the moderator is; the local one says it is a word-level filter, not a classifier.
    pub description: String,
    /// `buffered` or `async`.
    pub output_mode: &'static str,
    pub window_chars: usize,
    /// `closed` or `open`.
    pub fail_mode: &'static str,
}

struct Inner {
    stages: Stages,
    output_mode: OutputMode,
    window_chars: usize,
    fail_mode: FailMode,
    checker: Checker,
    webhooks: Option<Webhooks>,
    metrics: Metrics,
}

/// The moderation stage of this deployment.
#[derive(Clone)]
pub struct Moderation {
    inner: Arc<Inner>,
}

impl Moderation {
    /// `webhooks` delivers flags to the host app, when one is configured.
    pub fn new(settings: &ModerationSettings, max_retries: u32, webhooks: Option<Webhooks>, metrics: Metrics) -> Self {
        let checker = match settings.provider {
            ModeratorKind::Local => {
                local::warm_up();
                Checker::new(Arc::new(local::LocalFilter), settings.timeout, max_retries)
            }
            ModeratorKind::OpenAi => {
                let openai = Arc::new(openai::OpenAiModeration::new(
                    &settings.base_url,
                    settings.api_key.clone(),
                    settings.model.clone(),
                    settings.thresholds.clone(),
                ));
                let batching = Batching { wait: settings.batch_wait, max: settings.batch_max };
                Checker::new(openai.clone(), settings.timeout, max_retries).batching(
                    openai,
                    batching,
                    metrics.moderation_batch_size.clone(),
                )
            }
            // Llama Guard judges one conversation per chat request: no batching.
            ModeratorKind::LlamaGuard => Checker::new(
                Arc::new(llama_guard::LlamaGuard::new(&settings.base_url, settings.api_key.clone(), settings.model.clone())),
                settings.timeout,
                max_retries,
            ),
        };
        let inner = Inner {
            stages: settings.stages,
            output_mode: settings.output_mode,
            window_chars: settings.window_chars,
            fail_mode: settings.fail_mode,
            checker,
            webhooks,
            metrics,
        };
        Self { inner: Arc::new(inner) }
    }

    /// A generation's events, moderated as the settings say.
    pub fn guard(&self, events: EventStream, exchange: Exchange) -> EventStream {
        if self.inner.stages == Stages::Off {
            return events;
        }
        stage::guard(self.inner.clone(), events, exchange, self.inner.output_mode)
    }

    /// The same for whole-response mode: nothing is shown before the end, so
    /// output is always checked before it is returned (as `buffered`).
    pub fn guard_whole(&self, events: EventStream, exchange: Exchange) -> EventStream {
        if self.inner.stages == Stages::Off {
            return events;
        }
        stage::guard(self.inner.clone(), events, exchange, OutputMode::Buffered)
    }

    pub fn info(&self) -> ModerationInfo {
        let inner = &self.inner;
        ModerationInfo {
            stages: inner.stages.as_str(),
            provider: inner.checker.moderator().name(),
            description: inner.checker.moderator().description(),
            output_mode: inner.output_mode.as_str(),
            window_chars: inner.window_chars,
            fail_mode: inner.fail_mode.as_str(),
        }
    }
}

impl Inner {
    /// Counts a flag, logs it (categories only, never text) and tells the host app.
    fn report(&self, exchange: &Exchange, stage: Stage, flag: &Flag, text: &str) {
        for category in &flag.categories {
            self.metrics.moderation_flags.with_label_values(&[stage.as_str(), category, exchange.block.as_str()]).inc();
        }
        tracing::warn!(
            stream_id = exchange.stream_id.as_ref().map(StreamId::as_str),
            stage = stage.as_str(),
            categories = ?flag.categories,
            moderator = self.checker.moderator().name(),
            "moderation flagged the {}", if stage == Stage::Input { "learner's input" } else { "model's output" }
        );
        if let Some(webhooks) = &self.webhooks {
            webhooks.report(Flagged {
                principal: exchange.principal.clone(),
                stream_id: exchange.stream_id.clone(),
                block: exchange.block,
                stage,
                categories: flag.categories.clone(),
                scores: flag.scores.clone(),
                moderator: self.checker.moderator().name(),
                text: text.to_owned(),
            });
        }
    }
}
