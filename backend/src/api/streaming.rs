//! Streaming over SSE: the spec's one-shot `GET /api/stream/ai-block/{block_type}`
//! (native `EventSource` works, including its reconnect with `Last-Event-ID`), and
//! the create / stream / cancel resource `/api/streams` for fetch clients.
//!
//! Every request acts for a [`Principal`]; starts are admitted by the limits and
//! refused when cross-site ([`SameSiteStart`]) — except a retried start whose
//! `Idempotency-Key` names a stream already started, which gets that stream
//! whatever the limits; a stream read, resumed or cancelled by anyone but its
//! owner answers exactly as an unknown one.
//!
//! With coalescing on, a start may join an identical request's generation in
//! the principal's scope, or replay its finished answer; `fresh: true` in the
//! body or `Cache-Control: no-cache` (`POST /api/streams`), or `fresh=true` in
//! the query (the one-shot GET), asks for a new answer instead. The GET ignores
//! `Cache-Control`: a native `EventSource` sends `no-cache` on every request, so
//! honouring it there would keep every browser learner from sharing.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::blocks::parse_block_type;
use super::error::{ApiError, JsonBody, QueryParams};
use super::origin::SameSiteStart;
use super::{sse, AppState};
use crate::ai::blocks::{BlockInput, BlockType};
use crate::ai::streaming::coalesce::Sharing;
use crate::ai::streaming::events::StreamId;
use crate::ai::streaming::stream_manager::{CancelOutcome, ManagerError, StartError, Started};
use crate::auth::principal::Reader;
use crate::auth::Principal;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/stream/ai-block/{block_type}", get(stream_block))
        .route("/api/streams", post(create_stream))
        .route("/api/streams/{stream_id}/events", get(stream_events))
        .route("/api/streams/{stream_id}", delete(cancel_stream))
}

/// Longest idempotency key accepted.
const MAX_KEY_LEN: usize = 128;

fn require_streaming(state: &AppState) -> Result<(), ApiError> {
    if state.settings.streaming_enabled {
        Ok(())
    } else {
        Err(ApiError::StreamingDisabled)
    }
}

/// The `Idempotency-Key` header: 1 to 128 printable ASCII characters, not all spaces.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.as_bytes();
    let printable = key.iter().all(|b| (0x20..=0x7e).contains(b));
    if printable && key.len() <= MAX_KEY_LEN && key.iter().any(|b| *b != b' ') {
        Ok(Some(String::from_utf8_lossy(key).trim().to_owned()))
    } else {
        Err(ApiError::bad_request("Idempotency-Key", format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} printable ASCII characters")))
    }
}

fn parse_stream_id(raw: &str) -> Result<StreamId, ApiError> {
    StreamId::parse(raw).ok_or_else(|| ApiError::bad_request("stream_id", "stream_id must be 1 to 64 characters of A-Z, a-z, 0-9, _ or -"))
}

/// Whether the request asks for a new answer with `Cache-Control: no-cache`
/// (the way browsers and HTTP caches ask a server to revalidate).
pub fn wants_fresh(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|directive| directive.trim().eq_ignore_ascii_case("no-cache"))
}

/// Starts a stream for `principal`, admitted by its limits; a known
/// idempotency key returns its stream without asking the limits. `fresh`
/// asks for a new answer rather than a shared or cached one.
pub async fn start(
    state: &AppState,
    principal: &Principal,
    input: BlockInput,
    key: Option<String>,
    fresh: bool,
) -> Result<Started, ApiError> {
    let tokens = input.prompt().max_tokens.into();
    let admit = || state.limits.admit(principal, tokens);
    let sharing = Sharing::of(principal, fresh);
    state.manager.start(input, key, principal.id(), &sharing, admit).await.map_err(|error| match error {
        StartError::Refused(refused) => ApiError::from(refused),
        StartError::Manager(error) => error.into(),
    })
}

/// Where a reader's resume point came from, to name it in an error.
#[derive(Clone, Copy)]
enum ResumeFrom {
    Start,
    LastEventId,
    After,
}

/// Opens `principal`'s stream after `after` and answers with SSE (or 204, or a
/// `stream_not_found` event).
async fn attach(
    state: &AppState,
    principal: &Principal,
    stream_id: StreamId,
    after: Option<u64>,
    from: ResumeFrom,
) -> Result<Response, ApiError> {
    match state.manager.open(&stream_id, after, principal.id()).await {
        Ok(opened) => Ok(sse::respond(state, stream_id, opened)),
        Err(ManagerError::NotFound { next_seq, .. }) => Ok(sse::not_found(state, stream_id, next_seq)),
        Err(error @ ManagerError::AfterBeyondLog { .. }) => {
            let field = if matches!(from, ResumeFrom::LastEventId) { "Last-Event-ID" } else { "after" };
            Err(ApiError::bad_request(field, error.to_string()))
        }
        Err(other) => Err(other.into()),
    }
}

#[utoipa::path(
    get, path = "/api/stream/ai-block/{block_type}",
    params(
        ("block_type" = String, Path, description = "ask-question, explain-eli10, quiz or diagram"),
        ("Last-Event-ID" = Option<String>, Header, description = "`<stream_id>:<seq>`: resume that stream after that event instead of starting one"),
        ("Idempotency-Key" = Option<String>, Header, description = "A retried start with the same key attaches to the same generation"),
        ("fresh" = Option<bool>, Query, description = "`true`: a new answer, never one shared with an identical request or replayed (COALESCE). `Cache-Control` is not read here: a native EventSource sends `no-cache` on every request"),
    ),
    description = "Starts a generation with the block input as query parameters (e.g. `?topic=volcanoes&count=3`, and `fresh=true` for a new answer) and streams its events as SSE.",
    responses(
        (status = 200, description = "SSE stream of contract events", content_type = "text/event-stream"),
        (status = 204, description = "Resumed a finished stream whose terminal event the client holds"),
        (status = 400, body = super::error::Problem), (status = 404, body = super::error::Problem),
        (status = 413, body = super::error::Problem), (status = 422, body = super::error::Problem),
        (status = 503, body = super::error::Problem, description = "Streaming disabled, or at capacity"),
    )
)]
pub async fn stream_block(
    _: SameSiteStart,
    State(state): State<AppState>,
    principal: Principal,
    Path(block_type): Path<String>,
    headers: HeaderMap,
    QueryParams(query): QueryParams<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    require_streaming(&state)?;
    let block_type = parse_block_type(&block_type)?;
    let mut fields = Map::new();
    for (name, value) in query {
        if fields.insert(name.clone(), Value::String(value)).is_some() {
            return Err(ApiError::bad_request("query", format!("`{name}` is given more than once")));
        }
    }
    let fresh = match fields.remove("fresh") {
        None => false,
        Some(Value::String(value)) if value == "true" => true,
        Some(Value::String(value)) if value == "false" => false,
        Some(_) => return Err(ApiError::bad_request("fresh", "fresh must be true or false")),
    };
    // The URL is checked on a reconnect too: the same request is valid or not,
    // whatever its headers say.
    let input = BlockInput::parse_query(block_type, &fields)?;
    let key = idempotency_key(&headers)?;
    // A native EventSource reconnects to the same URL with Last-Event-ID: that is a
    // resume of the same generation, never a new one.
    if let Some((stream_id, seq)) = sse::last_event_id(&headers)? {
        return attach(&state, &principal, stream_id, Some(seq), ResumeFrom::LastEventId).await;
    }
    let started = start(&state, &principal, input, key, fresh).await?;
    attach(&state, &principal, started.stream_id().clone(), None, ResumeFrom::Start).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStream {
    /// ask-question, explain-eli10, quiz or diagram.
    block_type: String,
    /// The block input, e.g. `{"topic": "volcanoes", "count": 3}`.
    #[schema(value_type = Object)]
    input: Map<String, Value>,
    /// true: always generate anew; never join a running generation for an
    /// identical request or replay a finished answer (COALESCE). Same as
    /// `Cache-Control: no-cache`.
    #[serde(default)]
    fresh: Option<bool>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StreamCreated {
    stream_id: String,
    /// Reads this stream as `?read_token=` on its events URL, for clients that
    /// cannot send headers; bound to the stream and its owner.
    read_token: String,
    /// When `read_token` stops working (RFC 3339; at most five minutes away).
    read_token_expires_at: String,
}

#[utoipa::path(
    post, path = "/api/streams", request_body = CreateStream,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "A retried start with the same key returns the same stream"),
        ("Cache-Control" = Option<String>, Header, description = "`no-cache`: as `fresh: true`"),
    ),
    responses(
        (status = 201, body = StreamCreated, description = "A new generation"),
        (status = 200, body = StreamCreated, description = "The generation this Idempotency-Key started (whatever the limits: a retry is not a new start)"),
        (status = 413, body = super::error::Problem), (status = 422, body = super::error::Problem),
        (status = 503, body = super::error::Problem),
    )
)]
pub async fn create_stream(
    _: SameSiteStart,
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CreateStream>,
) -> Result<Response, ApiError> {
    require_streaming(&state)?;
    let block_type = BlockType::parse(&request.block_type).ok_or_else(|| {
        ApiError::bad_request("block_type", format!("unknown block type `{}`", request.block_type.chars().take(64).collect::<String>()))
    })?;
    let input = BlockInput::parse(block_type, &request.input)?;
    let fresh = request.fresh.unwrap_or(false) || wants_fresh(&headers);
    let started = start(&state, &principal, input, idempotency_key(&headers)?, fresh).await?;
    let status = match started {
        Started::New(_) => StatusCode::CREATED,
        Started::Existing(_) => StatusCode::OK,
    };
    let read = state.auth.read_tokens().issue(&principal, started.stream_id());
    let expires_at = chrono::DateTime::<chrono::Utc>::from(read.expires_at).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let created = StreamCreated { stream_id: started.stream_id().to_string(), read_token: read.token, read_token_expires_at: expires_at };
    Ok((status, Json(created)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    after: Option<u64>,
    /// Read by the [`Reader`] extractor.
    #[allow(dead_code)]
    read_token: Option<String>,
}

#[utoipa::path(
    get, path = "/api/streams/{stream_id}/events",
    params(
        ("stream_id" = String, Path),
        ("after" = Option<u64>, Query, description = "Resume after this seq"),
        ("Last-Event-ID" = Option<String>, Header, description = "`<stream_id>:<seq>`; takes precedence over `after`"),
    ),
    responses(
        (status = 200, description = "SSE stream of contract events (a `stream_not_found` error event for unknown ids)", content_type = "text/event-stream"),
        (status = 204, description = "The stream finished and the client holds its terminal event"),
        (status = 400, body = super::error::Problem),
    )
)]
pub async fn stream_events(
    State(state): State<AppState>,
    reader: Reader,
    Path(stream_id): Path<String>,
    headers: HeaderMap,
    QueryParams(query): QueryParams<EventsQuery>,
) -> Result<Response, ApiError> {
    require_streaming(&state)?;
    let stream_id = parse_stream_id(&stream_id)?;
    let principal = reader.principal_for(&stream_id)?;
    let (after, from) = match sse::last_event_id(&headers)? {
        Some((id, _)) if id != stream_id => {
            return Err(ApiError::bad_request("Last-Event-ID", "Last-Event-ID names another stream than the path"));
        }
        Some((_, seq)) => (Some(seq), ResumeFrom::LastEventId),
        None => (query.after, ResumeFrom::After),
    };
    attach(&state, principal, stream_id, after, from).await
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CancelState {
    stream_id: String,
    /// `cancelled`: stopped now; `cancelling`: signalled, still stopping;
    /// `finished`: it had already ended.
    state: &'static str,
}

#[utoipa::path(
    delete, path = "/api/streams/{stream_id}", params(("stream_id" = String, Path)),
    responses(
        (status = 202, body = CancelState),
        (status = 404, body = super::error::Problem),
    )
)]
pub async fn cancel_stream(
    State(state): State<AppState>,
    principal: Principal,
    Path(stream_id): Path<String>,
) -> Result<Response, ApiError> {
    let stream_id = parse_stream_id(&stream_id)?;
    let outcome = state.manager.cancel(&stream_id, principal.id()).await?;
    let state = match outcome {
        CancelOutcome::Cancelled => "cancelled",
        CancelOutcome::Cancelling => "cancelling",
        CancelOutcome::AlreadyFinished => "finished",
    };
    Ok((StatusCode::ACCEPTED, Json(CancelState { stream_id: stream_id.to_string(), state })).into_response())
}

#[cfg(test)]
mod tests {
    use axum::extract::Query;
    use axum::http::Uri;
    use proptest::prelude::*;

    use super::*;

    fn after_of(query: &str) -> Option<Result<Option<u64>, ()>> {
        let uri: Uri = format!("/api/streams/x/events?{query}").parse().ok()?;
        Some(Query::<EventsQuery>::try_from_uri(&uri).map(|q| q.0.after).map_err(|_| ()))
    }

    #[test]
    fn no_cache_among_any_cache_control_directives_asks_for_a_fresh_answer() {
        let fresh = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(axum::http::header::CACHE_CONTROL, value.parse().unwrap());
            }
            wants_fresh(&headers)
        };
        assert!(fresh(&["no-cache"]));
        assert!(fresh(&["max-age=0, No-Cache"]));
        assert!(fresh(&["max-age=0", "no-cache"]));
        assert!(!fresh(&[]));
        assert!(!fresh(&["max-age=0", "no-store"]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// `?after=` is a seq or refused (400), never a panic.
        #[test]
        fn any_query_string_gives_a_seq_or_a_refusal(query in "[ -~]{0,60}") {
            let _ = after_of(&query);
        }

        #[test]
        fn every_seq_parses_back(seq in any::<u64>()) {
            prop_assert_eq!(after_of(&format!("after={seq}")), Some(Ok(Some(seq))));
        }

        #[test]
        fn negative_and_non_numeric_positions_are_refused(raw in "-[0-9]{1,5}|[a-z]{1,5}|[1-9][0-9]{20,24}") {
            prop_assert_eq!(after_of(&format!("after={raw}")), Some(Err(())));
        }
    }
}
