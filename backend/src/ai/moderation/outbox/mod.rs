//! Webhook deliveries waiting to be made: added when a flag is raised, claimed
//! by a delivery loop when due, removed once delivered or given up on, and
//! rescheduled after a failed attempt. A claim is a lease: a delivery claimed by
//! a process that died is claimed again once the lease ends (at least once;
//! receivers dedupe by `webhook-id`, as Standard Webhooks says).
//!
//! The memory outbox lives as long as the process; with `STREAM_STORE=redis`
//! the outbox is in Redis, so deliveries outlive a restart and any process
//! delivers them.

pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// One webhook message and how often its delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The `webhook-id`: the same on every attempt.
    pub id: String,
    /// The exact JSON body that is signed and sent.
    pub payload: String,
    pub attempts: u32,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("the webhook outbox is unavailable: {0}")]
pub struct OutboxError(pub String);

#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Adds a delivery, due now.
    async fn add(&self, delivery: &Delivery) -> Result<(), OutboxError>;
    /// Up to `max` due deliveries, each leased to the caller for `lease`.
    async fn claim(&self, lease: Duration, max: usize) -> Result<Vec<Delivery>, OutboxError>;
    /// Makes `delivery` (with its new attempt count) due again after `delay`.
    async fn retry(&self, delivery: &Delivery, delay: Duration) -> Result<(), OutboxError>;
    /// Forgets a delivery: delivered, or given up on.
    async fn remove(&self, id: &str) -> Result<(), OutboxError>;
}
