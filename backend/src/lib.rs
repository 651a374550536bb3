//! Live AI Blocks: streams the answers of AI blocks from a language model to
//! browsers over SSE and WebSocket, with resume, cancel and fan-out.

pub mod ai;
pub mod api;
pub mod auth;
pub mod config;
pub mod limits;
pub mod metrics;
pub mod redis_connection;
pub mod server;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ai::moderation::outbox::memory::MemoryOutbox;
use crate::ai::moderation::outbox::redis::RedisOutbox;
use crate::ai::moderation::outbox::{Outbox, OutboxError};
use crate::ai::moderation::webhook::Webhooks;
use crate::ai::moderation::Moderation;
use crate::ai::providers;
use crate::ai::runtime::engine::{Engine, EngineConfig};
use crate::ai::streaming::coalesce::CoalesceConfig;
use crate::ai::streaming::store::memory::MemoryStore;
use crate::ai::streaming::store::redis::{RedisStore, RedisStoreConfig};
use crate::ai::streaming::store::{EventStore, StoreError};
use crate::ai::streaming::stream_manager::{ManagerConfig, StreamManager};
use crate::api::AppState;
use crate::auth::{AuthSetupError, Authenticator};
use crate::config::settings::{Settings, StoreKind};
use crate::limits::memory::MemoryLimitStore;
use crate::limits::redis::RedisLimitStore;
use crate::limits::{LimitError, LimitStore, Limits, SLOT_TTL};
use crate::metrics::Metrics;

/// Why the application could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("invalid setting {0}")]
    Provider(#[from] providers::ProviderSetupError),
    #[error("cannot use the Redis store at {0}: {1}")]
    Store(&'static str, StoreError),
    #[error("{0}")]
    Auth(#[from] AuthSetupError),
    #[error("cannot keep limits in the Redis at {0}: {1}")]
    Limits(&'static str, LimitError),
    #[error("cannot keep the moderation webhook outbox in the Redis at {0}: {1}")]
    Outbox(&'static str, OutboxError),
}

/// Builds the application state from settings; `shutdown` ends every stream.
pub async fn build_state(settings: Settings, shutdown: CancellationToken) -> Result<AppState, SetupError> {
    let metrics = Metrics::new();
    let auth = Arc::new(Authenticator::from_settings(&settings)?);
    let limit_store: Arc<dyn LimitStore> = match settings.store {
        StoreKind::Memory => Arc::new(MemoryLimitStore::new(settings.limits.clone())),
        StoreKind::Redis => {
            let store = RedisLimitStore::connect(&settings.redis, &settings.redis_key_prefix, settings.limits.clone(), SLOT_TTL).await;
            Arc::new(store.map_err(|error| SetupError::Limits(settings.redis.variable(), error))?)
        }
    };
    let limits = Limits::new(limit_store, settings.limits.clone(), shutdown.clone());
    let provider = providers::instrumented(providers::from_settings(&settings)?, metrics.provider_streams_open.clone());
    let provider = telemetry::instrument_provider(&settings.telemetry, provider);
    telemetry::export_metrics(&settings.telemetry, &metrics);
    limits.count_refusals(metrics.limits_refused.clone());
    let engine = Engine::new(
        provider,
        EngineConfig {
            idle_timeout: settings.provider_idle_timeout,
            max_duration: settings.generation_timeout,
            max_retries: settings.provider_max_retries,
            retry_base: std::time::Duration::from_millis(250),
        },
    );
    let webhooks = match &settings.moderation.webhook {
        None => None,
        Some(webhook) => {
            let outbox: Arc<dyn Outbox> = match settings.store {
                StoreKind::Memory => Arc::new(MemoryOutbox::default()),
                StoreKind::Redis => {
                    let outbox = RedisOutbox::connect(&settings.redis, &settings.redis_key_prefix).await;
                    Arc::new(outbox.map_err(|error| SetupError::Outbox(settings.redis.variable(), error))?)
                }
            };
            Some(Webhooks::start(webhook, outbox, metrics.clone(), shutdown.clone()))
        }
    };
    let moderation = Moderation::new(&settings.moderation, settings.provider_max_retries, webhooks, metrics.clone());
    let store: Arc<dyn EventStore> = match settings.store {
        StoreKind::Memory => {
            Arc::new(MemoryStore::new(settings.retention, settings.retention_max_bytes, metrics.retained_log_bytes.clone()))
        }
        StoreKind::Redis => {
            let config = RedisStoreConfig {
                prefix: settings.redis_key_prefix.clone(),
                retention: settings.retention,
                grace: settings.resume_grace,
                generation_timeout: settings.generation_timeout,
            };
            let store = RedisStore::connect(&settings.redis, config).await;
            Arc::new(store.map_err(|error| SetupError::Store(settings.redis.variable(), error))?)
        }
    };
    let manager = StreamManager::new(
        store,
        engine,
        moderation,
        ManagerConfig {
            resume_grace: settings.resume_grace,
            retention: settings.retention,
            max_concurrent_streams: settings.max_concurrent_streams,
            coalesce: CoalesceConfig {
                enabled: settings.coalesce.enabled,
                cache: settings.coalesce.cache,
                // A request key names a running generation for at most as long
                // as the generation may run, plus the grace it may outlive its
                // last reader by, plus a minute of slack.
                live_ttl: settings.generation_timeout + settings.resume_grace + std::time::Duration::from_secs(60),
            },
        },
        metrics.clone(),
        shutdown.clone(),
    );
    let sse_readers =
        api::sse_body::Readers::start(settings.client_send_timeout, settings.sse_keepalive, metrics.clone(), shutdown.clone());
    let ws_sessions = tokio_util::task::TaskTracker::new();
    Ok(AppState { settings: Arc::new(settings), manager, auth, limits, metrics, sse_readers, ws_sessions, shutdown })
}

/// Serves `state` on an already-bound listener until `signal` resolves; then every
/// open stream gets a terminal event and the server stops within the shutdown
/// timeout.
pub async fn run(listener: TcpListener, state: AppState, signal: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let app = api::router(state.clone());
    let shutdown = state.shutdown.clone();
    let timeout = state.settings.shutdown_timeout;
    let serving = server::ServeConfig {
        header_timeout: state.settings.http_header_timeout,
        max_connections: state.settings.max_connections,
        send_timeout: state.settings.client_send_timeout,
        metrics: state.metrics.clone(),
        drain: state.settings.shutdown_timeout,
    };
    let manager = state.manager.clone();
    let drained = CancellationToken::new();
    let serve_until = drained.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = signal => {}
            _ = shutdown.cancelled() => {}
        }
        tracing::info!("shutting down: ending open streams");
        manager.drain(timeout).await;
        serve_until.cancel();
    });
    // Connections that do not close by themselves (an idle WebSocket, a client that
    // stopped reading) must not hold the process: they get the timeout, no more.
    let ws_sessions = state.ws_sessions.clone();
    server::serve(listener, app, serving, drained).await;
    // Sockets send their last events and their close frame (1012) before the
    // process goes; the server's drain does not wait for upgraded connections.
    ws_sessions.close();
    if tokio::time::timeout(timeout, ws_sessions.wait()).await.is_err() {
        tracing::warn!("WebSocket sessions still open after the shutdown timeout; closing them");
    }
    Ok(())
}
