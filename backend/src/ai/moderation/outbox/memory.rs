//! The outbox in process memory (`STREAM_STORE=memory`): lost with the process.
//! Bounded: past `MAX_DELIVERIES` the oldest waiting delivery is dropped, with a
//! warning, rather than letting an unreachable host app grow memory forever.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{Delivery, Outbox, OutboxError};

const MAX_DELIVERIES: usize = 10_000;

#[derive(Default)]
pub struct MemoryOutbox {
    /// id → (due, added, delivery).
    waiting: Mutex<HashMap<String, (Instant, Instant, Delivery)>>,
}

#[async_trait]
impl Outbox for MemoryOutbox {
    async fn add(&self, delivery: &Delivery) -> Result<(), OutboxError> {
        let mut waiting = self.waiting.lock().unwrap();
        if waiting.len() >= MAX_DELIVERIES {
            if let Some(oldest) = waiting.iter().min_by_key(|(_, (_, added, _))| *added).map(|(id, _)| id.clone()) {
                tracing::warn!(webhook_id = %oldest, "the webhook outbox is full; dropping its oldest delivery");
                waiting.remove(&oldest);
            }
        }
        let now = Instant::now();
        waiting.insert(delivery.id.clone(), (now, now, delivery.clone()));
        Ok(())
    }

    async fn claim(&self, lease: Duration, max: usize) -> Result<Vec<Delivery>, OutboxError> {
        let now = Instant::now();
        let mut waiting = self.waiting.lock().unwrap();
        let mut due: Vec<(Instant, String)> =
            waiting.iter().filter(|(_, (at, _, _))| *at <= now).map(|(id, (at, _, _))| (*at, id.clone())).collect();
        due.sort();
        Ok(due
            .into_iter()
            .take(max)
            .filter_map(|(_, id)| {
                let entry = waiting.get_mut(&id)?;
                entry.0 = now + lease;
                Some(entry.2.clone())
            })
            .collect())
    }

    async fn retry(&self, delivery: &Delivery, delay: Duration) -> Result<(), OutboxError> {
        if let Some(entry) = self.waiting.lock().unwrap().get_mut(&delivery.id) {
            entry.0 = Instant::now() + delay;
            entry.2 = delivery.clone();
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), OutboxError> {
        self.waiting.lock().unwrap().remove(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: &str) -> Delivery {
        Delivery { id: id.into(), payload: "{}".into(), attempts: 0 }
    }

    #[tokio::test(start_paused = true)]
    async fn a_claimed_delivery_is_leased_and_a_retried_one_waits_its_delay() {
        let outbox = MemoryOutbox::default();
        outbox.add(&delivery("a")).await.unwrap();
        let lease = Duration::from_secs(30);
        assert_eq!(outbox.claim(lease, 10).await.unwrap(), [delivery("a")]);
        assert!(outbox.claim(lease, 10).await.unwrap().is_empty(), "leased");
        let failed = Delivery { attempts: 1, ..delivery("a") };
        outbox.retry(&failed, Duration::from_secs(5)).await.unwrap();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(outbox.claim(lease, 10).await.unwrap().is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(outbox.claim(lease, 10).await.unwrap(), [failed]);
        outbox.remove("a").await.unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(outbox.claim(lease, 10).await.unwrap().is_empty());
    }
}
