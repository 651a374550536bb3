//! Limits per principal — concurrent generations, starts per minute, output
//! tokens per day — and per WebSocket; with Redis, across processes. Over a limit:
//! 429 with `Retry-After` and `RateLimit-*`, or a `protocol_error` on a socket.

use serde_json::{json, Value};

use crate::helpers::*;

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut vars = jwt_mode();
    vars.extend_from_slice(extra);
    vars
}

/// Polls `/api/usage` of `token` until `check` holds.
async fn usage_until(app: &TestApp, token: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let usage: Value = app.http.get(app.url("/api/usage")).bearer_auth(token).send().await.unwrap().json().await.unwrap();
        if check(&usage) {
            return usage;
        }
        assert!(tokio::time::Instant::now() < deadline, "usage stuck at {usage}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn assert_limited(response: reqwest::Response, code: &str, limit: &str) -> Value {
    let headers = response.headers().clone();
    let body = assert_problem(response, 429, code).await;
    assert_eq!(headers["ratelimit-limit"], limit);
    assert_eq!(headers["ratelimit-remaining"], "0");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    let reset: u64 = headers["ratelimit-reset"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1 && reset >= 1);
    assert!(body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0 && ms <= retry_after * 1000), "{body}");
    assert_eq!(body["retryable"], true);
    body
}

#[tokio::test]
async fn a_principal_over_its_concurrent_limit_gets_429_until_a_generation_ends() {
    let app = spawn_app(&with(&[("LIMIT_CONCURRENT_STREAMS", "2"), ("DEMO_TOKENS_PER_SECOND", "20")])).await;
    let (ada, eve) = (learner_token("ada"), learner_token("eve"));
    let first = app.create_stream_as(&ada, "explain-eli10", json!({"topic": "a"})).await;
    app.create_stream_as(&ada, "explain-eli10", json!({"topic": "b"})).await;
    assert_limited(app.start_as(&ada, "explain-eli10", json!({"topic": "c"})).await, "rate_limited", "2").await;
    let via_get = app.http.get(app.url("/api/stream/ai-block/quiz?topic=c")).bearer_auth(&ada).send().await.unwrap();
    assert_limited(via_get, "rate_limited", "2").await;
    let whole = app.http.post(app.url("/api/ai-block/quiz")).bearer_auth(&ada).json(&json!({"topic": "c"})).send().await.unwrap();
    assert_limited(whole, "rate_limited", "2").await;
    assert_eq!(app.start_as(&eve, "explain-eli10", json!({"topic": "c"})).await.status(), 201, "eve has her own slots");
    let usage = usage_until(&app, &ada, |u| u["active_streams"] == 2).await;
    assert_eq!(usage["concurrent_streams_limit"], 2);

    let id = first["stream_id"].as_str().unwrap();
    app.http.delete(app.url(&format!("/api/streams/{id}"))).bearer_auth(&ada).send().await.unwrap();
    usage_until(&app, &ada, |u| u["active_streams"] == 1).await;
    assert_eq!(app.start_as(&ada, "explain-eli10", json!({"topic": "c"})).await.status(), 201, "a slot freed when a generation ended");
}

#[tokio::test]
async fn starts_beyond_the_rate_get_429_and_reading_or_resuming_never_counts() {
    let app = spawn_app(&with(&[("LIMIT_STARTS_PER_MINUTE", "2")])).await;
    let ada = learner_token("ada");
    let auth = format!("Bearer {ada}");
    let created = app.create_stream_as(&ada, "explain-eli10", json!({"topic": "a"})).await;
    let id = created["stream_id"].as_str().unwrap();
    for after in [None, Some(1), Some(3)] {
        let path = match after {
            None => format!("/api/streams/{id}/events"),
            Some(seq) => format!("/api/streams/{id}/events?after={seq}"),
        };
        app.sse(&path, &[("authorization", &auth)]).await.until_terminal().await;
    }
    let mut ws = app.ws_with(&[("authorization", &auth)]).await.unwrap();
    ws.send(json!({"type": "resume", "stream_id": id, "after": 0})).await;
    ws.until_terminal(id, &mut Vec::new()).await;
    app.create_stream_as(&ada, "explain-eli10", json!({"topic": "b"})).await;
    let body = assert_limited(app.start_as(&ada, "explain-eli10", json!({"topic": "c"})).await, "rate_limited", "2").await;
    assert!(body["retry_after_ms"].as_u64().unwrap() <= 60_000);
    assert_eq!(app.start_as(&learner_token("eve"), "explain-eli10", json!({"topic": "c"})).await.status(), 201);
}

#[tokio::test]
async fn a_finished_generation_settles_its_reservation_to_the_tokens_it_used() {
    let app = spawn_app(&with(&[("LIMIT_TOKENS_PER_DAY", "100000")])).await;
    let ada = learner_token("ada");
    let created = app.create_stream_as(&ada, "explain-eli10", json!({"topic": "a"})).await;
    let id = created["stream_id"].as_str().unwrap();
    let events = app.sse(&format!("/api/streams/{id}/events"), &[("authorization", &format!("Bearer {ada}"))]).await.until_terminal().await;
    let used = events.last().unwrap().data["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(used > 0 && used < 400, "the demo model uses less than the 400 reserved");
    let usage = usage_until(&app, &ada, |u| u["tokens_reserved"] == 0).await;
    assert_eq!(usage["tokens_used_today"], used, "settled to the complete event's usage");
    assert_eq!(usage["tokens_left_today"], 100_000 - used);
    assert_eq!(usage["tokens_per_day_limit"], 100_000);
    assert!(usage["tokens_reset_at"].as_str().unwrap().ends_with("T00:00:00Z"));
    let whole = app.http.post(app.url("/api/ai-block/explain-eli10")).bearer_auth(&ada).json(&json!({"topic": "a"})).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    usage_until(&app, &ada, |u| u["tokens_used_today"] == 2 * used && u["tokens_reserved"] == 0).await;
}

#[tokio::test]
async fn a_failed_whole_response_call_is_charged_the_tokens_it_produced() {
    let app = spawn_app(&with(&[("LIMIT_TOKENS_PER_DAY", "100000"), ("DEMO_FAIL_AFTER_TOKENS", "7")])).await;
    let ada = learner_token("ada");
    let whole = app.http.post(app.url("/api/ai-block/explain-eli10")).bearer_auth(&ada).json(&json!({"topic": "a"})).send().await.unwrap();
    let body = assert_problem(whole, 502, "provider_error").await;
    assert!(body["detail"].as_str().unwrap().contains("after 7 tokens"), "{body}");
    let usage = usage_until(&app, &ada, |u| u["tokens_reserved"] == 0).await;
    assert_eq!(usage["tokens_used_today"], 7, "the demo model's seven tokens were produced, so they are charged");
}

#[tokio::test]
async fn a_whole_response_call_whose_client_left_is_charged_what_was_produced_and_stops() {
    // 20 tokens a second: the answer takes seconds; the client leaves after 0.6 s.
    let app = spawn_app(&with(&[("LIMIT_TOKENS_PER_DAY", "100000"), ("DEMO_TOKENS_PER_SECOND", "20")])).await;
    let ada = learner_token("ada");
    let request = app.http.post(app.url("/api/ai-block/explain-eli10")).bearer_auth(&ada).json(&json!({"topic": "a"}));
    let left = request.timeout(std::time::Duration::from_millis(600)).send().await;
    assert!(left.is_err_and(|e| e.is_timeout()), "the client gave up before the answer");
    let usage = usage_until(&app, &ada, |u| u["tokens_reserved"] == 0).await;
    let used = usage["tokens_used_today"].as_u64().unwrap();
    assert!(used > 0, "what was produced before the client left is charged: {usage}");
    // The generation stopped with its client: far fewer tokens than a whole answer.
    let whole = app.http.post(app.url("/api/ai-block/explain-eli10")).bearer_auth(learner_token("eve")).json(&json!({"topic": "a"}));
    let whole: Value = whole.send().await.unwrap().json().await.unwrap();
    assert!(used < whole["usage"]["completion_tokens"].as_u64().unwrap(), "{used} of {whole}");
    assert_eq!(app.metric("live_ai_provider_streams_open", &[]).await, 0.0);
}

#[tokio::test]
async fn a_reservation_the_budget_cannot_cover_is_refused_before_any_provider_call() {
    // The demo model "thinks" for a minute: reservations stay open, nothing is used.
    let app = spawn_app(&with(&[("LIMIT_TOKENS_PER_DAY", "1000"), ("DEMO_FIRST_TOKEN_MS", "60000")])).await;
    let ada = learner_token("ada");
    // explain-eli10 reserves 400 output tokens: two fit, a third does not.
    let first = app.create_stream_as(&ada, "explain-eli10", json!({"topic": "a"})).await;
    app.create_stream_as(&ada, "explain-eli10", json!({"topic": "b"})).await;
    let open_before = app.metric("live_ai_provider_streams_open", &[]).await;
    let response = app.start_as(&ada, "explain-eli10", json!({"topic": "c"})).await;
    let headers = response.headers().clone();
    let body = assert_problem(response, 429, "budget_exhausted").await;
    assert_eq!((headers["ratelimit-limit"].to_str().unwrap(), headers["ratelimit-remaining"].to_str().unwrap()), ("1000", "200"));
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry_after), "until midnight UTC");
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0 && body["detail"].as_str().unwrap().contains("budget"));
    assert_eq!(app.metric("live_ai_provider_streams_open", &[]).await, open_before, "the refused start reached no provider");
    assert_eq!(app.metric("live_ai_active_streams", &[]).await, 2.0);

    let mut ws = app.ws_with(&[("authorization", &format!("Bearer {ada}"))]).await.unwrap();
    ws.send(json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "e"}, "ref": "e"})).await;
    let refused = ws.next().await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str(), refused["ref"].as_str(), refused["retryable"].as_bool()),
        (Some("protocol_error"), Some("budget_exhausted"), Some("e"), Some(true))
    );
    assert!(refused["retry_after_ms"].as_u64().unwrap() > 0);

    // A generation cancelled before its first token used nothing: its 400 come back.
    let id = first["stream_id"].as_str().unwrap();
    app.http.delete(app.url(&format!("/api/streams/{id}"))).bearer_auth(&ada).send().await.unwrap();
    let usage = usage_until(&app, &ada, |u| u["tokens_reserved"] == 400).await;
    assert_eq!((usage["tokens_used_today"].as_u64(), usage["tokens_left_today"].as_u64()), (Some(0), Some(600)));
    assert_eq!(app.start_as(&ada, "explain-eli10", json!({"topic": "c"})).await.status(), 201);
}

#[tokio::test]
async fn a_websocket_start_over_a_limit_gets_a_protocol_error_with_its_ref() {
    let app = spawn_app(&with(&[("LIMIT_CONCURRENT_STREAMS", "1"), ("DEMO_TOKENS_PER_SECOND", "20")])).await;
    let mut ws = app.ws_with(&[("authorization", &format!("Bearer {}", learner_token("ada")))]).await.unwrap();
    ws.send(json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "a"}, "ref": "one"})).await;
    let start = ws.next().await;
    ws.send(json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "b"}, "ref": "two"})).await;
    let refused = loop {
        let message = ws.next().await;
        if message["type"] == "protocol_error" {
            break message;
        }
    };
    assert_eq!(
        (refused["code"].as_str(), refused["ref"].as_str(), refused["retryable"].as_bool()),
        (Some("rate_limited"), Some("two"), Some(true))
    );
    assert!(refused["retry_after_ms"].as_u64().unwrap() > 0);
    let id = start["stream_id"].as_str().unwrap();
    let events = ws.until_terminal(id, &mut Vec::new()).await;
    assert_eq!(events.last().unwrap().kind(), "complete", "the admitted stream lives on");
}

#[tokio::test]
async fn one_socket_reads_at_most_its_stream_limit_and_more_after_one_ends() {
    let app = spawn_app(&[("LIMIT_STREAMS_PER_SOCKET", "2"), ("DEMO_TOKENS_PER_SECOND", "40")]).await;
    let mut ws = app.ws().await;
    let mut ids = Vec::new();
    for topic in ["a", "b"] {
        ws.send(json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": topic}, "ref": topic})).await;
        loop {
            let message = ws.next().await;
            if message["type"] == "start" {
                ids.push(message["stream_id"].as_str().unwrap().to_owned());
                break;
            }
        }
    }
    ws.send(json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "c"}, "ref": "c"})).await;
    let third = app.create_stream("explain-eli10", json!({"topic": "d"})).await;
    ws.send(json!({"type": "resume", "stream_id": third})).await;
    let mut refusals = Vec::new();
    let mut ended = Vec::new();
    while refusals.len() < 2 {
        let message = ws.next().await;
        if message["type"] == "protocol_error" {
            refusals.push(message);
        } else if matches!(message["type"].as_str(), Some("complete" | "error" | "cancelled")) {
            ended.push(message["stream_id"].clone());
        }
    }
    assert!(refusals.iter().all(|r| r["code"] == "rate_limited" && r["retryable"] == true), "{refusals:?}");
    assert!(refusals.iter().any(|r| r["ref"] == "c") && refusals.iter().any(|r| r["stream_id"] == third.as_str()));
    // Once a stream on it ended, the socket has room again.
    while ended.is_empty() {
        let message = ws.next().await;
        if message["type"] == "complete" {
            ended.push(message["stream_id"].clone());
        }
    }
    ws.send(json!({"type": "resume", "stream_id": third})).await;
    let events = ws.until_terminal(&third, &mut Vec::new()).await;
    assert_eq!(events.last().unwrap().kind(), "complete");
}

#[tokio::test]
async fn limits_hold_across_two_processes_sharing_redis() {
    let deployment = redis_deployment(&fresh_prefix());
    let mut vars: Vec<(&str, &str)> = deployment.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.extend(with(&[("LIMIT_CONCURRENT_STREAMS", "2"), ("LIMIT_STARTS_PER_MINUTE", "3"), ("DEMO_TOKENS_PER_SECOND", "20")]));
    let (a, b) = (spawn_app(&vars).await, spawn_app(&vars).await);
    let ada = learner_token("ada");
    a.create_stream_as(&ada, "explain-eli10", json!({"topic": "a"})).await;
    let second = b.create_stream_as(&ada, "explain-eli10", json!({"topic": "b"})).await;
    assert_limited(a.start_as(&ada, "explain-eli10", json!({"topic": "c"})).await, "rate_limited", "2").await;
    assert_limited(b.start_as(&ada, "explain-eli10", json!({"topic": "c"})).await, "rate_limited", "2").await;
    let usage = usage_until(&b, &ada, |u| u["active_streams"] == 2).await;
    assert_eq!(usage["principal"], "jwt:ada");
    // Cancelled on a, its slot frees for b; the third start of the minute is the last.
    let id = second["stream_id"].as_str().unwrap();
    a.http.delete(a.url(&format!("/api/streams/{id}"))).bearer_auth(&ada).send().await.unwrap();
    usage_until(&a, &ada, |u| u["active_streams"] == 1).await;
    assert_eq!(b.start_as(&ada, "explain-eli10", json!({"topic": "d"})).await.status(), 201);
    usage_until(&a, &ada, |u| u["active_streams"] == 2).await;
    let cancel_one = b.create_stream_as(&learner_token("eve"), "explain-eli10", json!({"topic": "e"})).await;
    assert!(cancel_one["stream_id"].is_string(), "eve is not limited by ada's starts");
}

/// A learner at 1 of 1 concurrent streams, 2 starts a minute, whose 201 was lost:
/// every retry (HTTP or WebSocket, same key) gets the same stream, and none of
/// them spends a start.
async fn retries_of_a_known_key_get_their_stream_whatever_the_limits(store: &[(&'static str, String)]) {
    let mut vars: Vec<(&str, &str)> = store.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.extend(with(&[("LIMIT_CONCURRENT_STREAMS", "1"), ("LIMIT_STARTS_PER_MINUTE", "2"), ("DEMO_TOKENS_PER_SECOND", "20")]));
    let app = spawn_app(&vars).await;
    let ada = learner_token("ada");
    let body = json!({"block_type": "explain-eli10", "input": {"topic": "fog"}});
    let start = || app.http.post(app.url("/api/streams")).bearer_auth(&ada).header("idempotency-key", "fog-1").json(&body).send();
    let first = start().await.unwrap();
    assert_eq!(first.status(), 201);
    let id = first.json::<Value>().await.unwrap()["stream_id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let retry = start().await.unwrap();
        assert_eq!(retry.status(), 200, "a retry at the concurrency limit gets its stream");
        assert_eq!(retry.json::<Value>().await.unwrap()["stream_id"], id.as_str());
    }
    let mut ws = app.ws_with(&[("authorization", &format!("Bearer {ada}"))]).await.unwrap();
    ws.send(json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "fog"}, "ref": "fog-1"})).await;
    let answer = ws.next().await;
    assert_eq!(
        (answer["type"].as_str(), answer["stream_id"].as_str(), answer["ref"].as_str()),
        (Some("start"), Some(id.as_str()), Some("fog-1"))
    );
    drop(ws);
    // The retries spent nothing: once the stream ends, the second start of the minute is allowed.
    app.http.delete(app.url(&format!("/api/streams/{id}"))).bearer_auth(&ada).send().await.unwrap();
    usage_until(&app, &ada, |u| u["active_streams"] == 0).await;
    let rain = app.create_stream_as(&ada, "explain-eli10", json!({"topic": "rain"})).await;
    let rain = rain["stream_id"].as_str().unwrap();
    app.http.delete(app.url(&format!("/api/streams/{rain}"))).bearer_auth(&ada).send().await.unwrap();
    usage_until(&app, &ada, |u| u["active_streams"] == 0).await;
    assert_limited(app.start_as(&ada, "explain-eli10", json!({"topic": "snow"})).await, "rate_limited", "2").await;
}

#[tokio::test]
async fn retries_of_a_known_key_get_their_stream_whatever_the_limits_in_memory() {
    retries_of_a_known_key_get_their_stream_whatever_the_limits(&[]).await;
}

#[tokio::test]
async fn retries_of_a_known_key_get_their_stream_whatever_the_limits_with_redis() {
    retries_of_a_known_key_get_their_stream_whatever_the_limits(&redis_deployment(&fresh_prefix())).await;
}

#[tokio::test]
async fn a_start_the_limits_refuse_gives_its_key_back() {
    let app = spawn_app(&with(&[("LIMIT_CONCURRENT_STREAMS", "1"), ("DEMO_TOKENS_PER_SECOND", "20")])).await;
    let ada = learner_token("ada");
    let running = app.create_stream_as(&ada, "explain-eli10", json!({"topic": "a"})).await;
    let body = json!({"block_type": "explain-eli10", "input": {"topic": "b"}});
    let start = || app.http.post(app.url("/api/streams")).bearer_auth(&ada).header("idempotency-key", "b-1").json(&body).send();
    assert_limited(start().await.unwrap(), "rate_limited", "1").await;
    let id = running["stream_id"].as_str().unwrap();
    app.http.delete(app.url(&format!("/api/streams/{id}"))).bearer_auth(&ada).send().await.unwrap();
    usage_until(&app, &ada, |u| u["active_streams"] == 0).await;
    let retried = start().await.unwrap();
    assert_eq!(retried.status(), 201, "the key names no stream: the retry starts one");
    let new_id = retried.json::<Value>().await.unwrap()["stream_id"].as_str().unwrap().to_owned();
    let events =
        app.sse(&format!("/api/streams/{new_id}/events"), &[("authorization", &format!("Bearer {ada}"))]).await.until_terminal().await;
    assert_eq!(events[0].kind(), "start");
}

#[tokio::test]
async fn concurrent_retries_on_two_processes_all_get_one_stream_that_exists() {
    let deployment = redis_deployment(&fresh_prefix());
    let mut vars: Vec<(&str, &str)> = deployment.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.extend(with(&[]));
    let (a, b) = (spawn_app(&vars).await, spawn_app(&vars).await);
    let ada = learner_token("ada");
    let body = json!({"block_type": "quiz", "input": {"topic": "fog", "count": 1}});
    let start =
        |app: &TestApp| app.http.post(app.url("/api/streams")).bearer_auth(&ada).header("idempotency-key", "fog-q").json(&body).send();
    let answers = futures::future::join_all([&a, &b, &a, &b, &a, &b].map(start)).await;
    let mut ids = Vec::new();
    let mut created = 0;
    for answer in answers {
        let answer = answer.unwrap();
        created += usize::from(answer.status() == 201);
        assert!(matches!(answer.status().as_u16(), 200 | 201), "{}", answer.status());
        ids.push(answer.json::<Value>().await.unwrap()["stream_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(created, 1, "one start created the stream");
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let auth = format!("Bearer {ada}");
    for app in [&a, &b] {
        let events = app.sse(&format!("/api/streams/{}/events", ids[0]), &[("authorization", &auth)]).await.until_terminal().await;
        assert_eq!((events[0].kind(), events.last().unwrap().kind()), ("start", "complete"));
    }
}
