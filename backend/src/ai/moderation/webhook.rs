//! Tells the host app about each flag: a `moderation.flagged` message POSTed to
//! `MODERATION_WEBHOOK_URL`, signed per the Standard Webhooks specification
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 of
//! HMAC-SHA256 over "id.timestamp.body">`, the `standardwebhooks` crate), so
//! the app can alert a teacher or a parent.
//!
//! The payload names the principal, stream, block, stage, categories and
//! scores; the flagged text only with `MODERATION_WEBHOOK_INCLUDE_TEXT=true`.
//! Deliveries go through the outbox: a failed attempt (no answer in 10 s, or
//! anything but 2xx) is retried after 5 s, 30 s, 2 min, 5 min, 15 min, 30 min,
//! 1 h, 2 h and 4 h — about eight hours — then given up on and logged. Each
//! attempt is signed anew (a fresh timestamp); the id stays, for deduplication.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::moderator::Stage;
use super::outbox::{Delivery, Outbox};
use crate::ai::blocks::BlockType;
use crate::ai::streaming::events::StreamId;
use crate::config::moderation::WebhookSettings;
use crate::metrics::Metrics;

/// Waits after the first, second, … failed attempt; then the delivery is dropped.
pub const RETRY_DELAYS: [Duration; 9] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(300),
    Duration::from_secs(900),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
    Duration::from_secs(7200),
    Duration::from_secs(14400),
];
/// One attempt's bound; a claim's lease outlasts it, so no other process
/// retries a delivery while its attempt may still succeed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const LEASE: Duration = Duration::from_secs(30);
/// How often the outbox is looked at when nothing woke the loop (deliveries
/// due after a retry delay, or added by another process).
const POLL: Duration = Duration::from_secs(1);
const BATCH: usize = 32;

/// A flag, as reported.
#[derive(Debug, Clone)]
pub struct Flagged {
    pub principal: String,
    pub stream_id: Option<StreamId>,
    pub block: BlockType,
    pub stage: Stage,
    pub categories: Vec<String>,
    pub scores: BTreeMap<String, f64>,
    pub moderator: &'static str,
    /// The flagged text: the learner's input, or the output window.
    pub text: String,
}

/// The body: Standard Webhooks' `{type, timestamp, data}`.
#[derive(Serialize)]
struct Payload<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: String,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    principal: &'a str,
    /// `null` for a whole-response request (`POST /api/ai-block/…`).
    stream_id: Option<&'a str>,
    block_type: BlockType,
    stage: &'static str,
    categories: &'a [String],
    scores: &'a BTreeMap<String, f64>,
    moderator: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

/// The JSON body of a flag's message.
pub fn payload(flagged: &Flagged, include_text: bool, now: chrono::DateTime<chrono::Utc>) -> String {
    let payload = Payload {
        kind: "moderation.flagged",
        timestamp: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        data: Data {
            principal: &flagged.principal,
            stream_id: flagged.stream_id.as_ref().map(StreamId::as_str),
            block_type: flagged.block,
            stage: flagged.stage.as_str(),
            categories: &flagged.categories,
            scores: &flagged.scores,
            moderator: flagged.moderator,
            text: include_text.then_some(flagged.text.as_str()),
        },
    };
    serde_json::to_string(&payload).expect("payloads serialise")
}

struct Inner {
    outbox: Arc<dyn Outbox>,
    signer: standardwebhooks::Webhook,
    url: String,
    include_text: bool,
    client: reqwest::Client,
    metrics: Metrics,
    wake: Notify,
}

/// The webhook sender of this process: reports go into the outbox, a loop
/// delivers what is due.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

impl Webhooks {
    /// Starts the delivery loop; it stops with `shutdown`.
    pub fn start(settings: &WebhookSettings, outbox: Arc<dyn Outbox>, metrics: Metrics, shutdown: CancellationToken) -> Self {
        let signer = standardwebhooks::Webhook::new(settings.secret.expose()).expect("settings checked the secret");
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the HTTP client builds");
        let inner = Arc::new(Inner {
            outbox,
            signer,
            url: settings.url.clone(),
            include_text: settings.include_text,
            client,
            metrics,
            wake: Notify::new(),
        });
        tokio::spawn(deliver_until(inner.clone(), shutdown));
        Self { inner }
    }

    /// Queues a flag for delivery (in the background: a stream never waits on it).
    pub fn report(&self, flagged: Flagged) {
        let inner = self.inner.clone();
        let delivery = Delivery {
            id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            payload: payload(&flagged, inner.include_text, chrono::Utc::now()),
            attempts: 0,
        };
        tokio::spawn(async move {
            match inner.outbox.add(&delivery).await {
                Ok(()) => inner.wake.notify_one(),
                Err(error) => {
                    inner.metrics.moderation_webhooks.with_label_values(&["lost"]).inc();
                    tracing::error!(webhook_id = %delivery.id, %error, "could not queue a moderation webhook");
                }
            }
        });
    }
}

/// The delivery loop: supervised by its own `loop` (errors are logged and the
/// loop goes on), it ends with the process.
async fn deliver_until(strong: Arc<Inner>, shutdown: CancellationToken) {
    loop {
        let claimed = match strong.outbox.claim(LEASE, BATCH).await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(%error, "cannot read the webhook outbox");
                Vec::new()
            }
        };
        let full = claimed.len() == BATCH;
        futures::future::join_all(claimed.into_iter().map(|delivery| attempt(&strong, delivery))).await;
        if full {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = strong.wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// One attempt at one delivery, and what follows from it.
async fn attempt(inner: &Inner, mut delivery: Delivery) {
    let outcome = send(inner, &delivery).await;
    let deliveries = &inner.metrics.moderation_webhooks;
    let recorded = match outcome {
        Ok(()) => {
            deliveries.with_label_values(&["delivered"]).inc();
            inner.outbox.remove(&delivery.id).await
        }
        Err(reason) => {
            let delay = RETRY_DELAYS.get(delivery.attempts as usize).copied();
            delivery.attempts += 1;
            match delay {
                Some(delay) => {
                    deliveries.with_label_values(&["failed"]).inc();
                    tracing::warn!(webhook_id = %delivery.id, attempt = delivery.attempts, %reason, retry_in = ?delay, "moderation webhook not delivered");
                    inner.outbox.retry(&delivery, delay).await
                }
                None => {
                    deliveries.with_label_values(&["abandoned"]).inc();
                    tracing::error!(webhook_id = %delivery.id, attempts = delivery.attempts, %reason, "moderation webhook given up after its last retry");
                    inner.outbox.remove(&delivery.id).await
                }
            }
        }
    };
    if let Err(error) = recorded {
        // The lease runs out and the delivery is tried again: at least once.
        tracing::warn!(webhook_id = %delivery.id, %error, "could not record a webhook attempt");
    }
}

async fn send(inner: &Inner, delivery: &Delivery) -> Result<(), String> {
    let timestamp = chrono::Utc::now().timestamp();
    let signature = inner.signer.sign(&delivery.id, timestamp, delivery.payload.as_bytes()).map_err(|e| e.to_string())?;
    let response = inner
        .client
        .post(&inner.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(standardwebhooks::HEADER_WEBHOOK_ID, &delivery.id)
        .header(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, timestamp.to_string())
        .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
        .body(delivery.payload.clone())
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_carries_the_flag_and_the_text_only_when_asked() {
        let flagged = Flagged {
            principal: "learner-7".into(),
            stream_id: StreamId::parse("s1"),
            block: BlockType::ExplainEli10,
            stage: Stage::Output,
            categories: vec!["profanity".into()],
            scores: [("profanity".to_owned(), 1.0)].into(),
            moderator: "local",
            text: "a flagged sentence".into(),
        };
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let without: serde_json::Value = serde_json::from_str(&payload(&flagged, false, at)).unwrap();
        assert_eq!(
            without,
            serde_json::json!({
                "type": "moderation.flagged",
                "timestamp": "2023-11-14T22:13:20.000Z",
                "data": {"principal": "learner-7", "stream_id": "s1", "block_type": "explain-eli10", "stage": "output",
                         "categories": ["profanity"], "scores": {"profanity": 1.0}, "moderator": "local"}
            })
        );
        let with: serde_json::Value = serde_json::from_str(&payload(&flagged, true, at)).unwrap();
        assert_eq!(with["data"]["text"], "a flagged sentence");
    }
}
