//! A stream belongs to the principal that started it: to anyone else it does not
//! exist — on read, resume and cancel, over both transports and both stores —
//! and idempotency keys and WebSocket refs are scoped per principal. Read tokens
//! read one stream, for a few minutes.

use serde_json::{json, Value};

use crate::helpers::*;

/// What an intruder sees of `id`, and of an id that never existed, must be the same.
async fn assert_intruder_sees_nothing(app: &TestApp, intruder: &str, id: &str) {
    let auth = format!("Bearer {intruder}");
    for stream in [id, "neverexisted"] {
        let events = app.sse(&format!("/api/streams/{stream}/events"), &[("authorization", &auth)]).await.until_terminal().await;
        assert_eq!((events.len(), events[0].data["code"].as_str()), (1, Some("stream_not_found")), "read {stream}");
        let resumed = app
            .sse(&format!("/api/streams/{stream}/events"), &[("authorization", &auth), ("last-event-id", &format!("{stream}:1"))])
            .await
            .until_terminal()
            .await;
        assert_eq!((resumed[0].seq(), resumed[0].data["code"].as_str()), (2, Some("stream_not_found")), "resume {stream}");
        let spec_resume =
            app.sse("/api/stream/ai-block/quiz?topic=x", &[("authorization", &auth), ("last-event-id", &format!("{stream}:0"))]).await;
        assert_eq!(spec_resume.status, 200);
        let cancel = app.http.delete(app.url(&format!("/api/streams/{stream}"))).bearer_auth(intruder).send().await.unwrap();
        let body = assert_problem(cancel, 404, "stream_not_found").await;
        assert_eq!(body["detail"], format!("no stream {stream}; it may have expired"));
    }
    let mut ws = app.ws().await;
    ws.send(json!({"type": "auth", "token": intruder})).await;
    ws.send(json!({"type": "resume", "stream_id": id, "after": 0})).await;
    let resumed = ws.next().await;
    assert_eq!((resumed["type"].as_str(), resumed["code"].as_str()), (Some("error"), Some("stream_not_found")));
    ws.send(json!({"type": "cancel", "stream_id": id})).await;
    let cancelled = ws.next().await;
    assert_eq!((cancelled["type"].as_str(), cancelled["code"].as_str()), (Some("protocol_error"), Some("stream_not_found")));
}

async fn intruders_are_told_nothing_and_change_nothing(owner: &TestApp, intruder_side: &TestApp) {
    let (ada, eve) = (learner_token("ada"), learner_token("eve"));
    let created = owner.create_stream_as(&ada, "ask-question", json!({"question": "Why do leaves fall?"})).await;
    let id = created["stream_id"].as_str().unwrap();
    let mut reader = owner.sse(&format!("/api/streams/{id}/events"), &[("authorization", &format!("Bearer {ada}"))]).await;
    let mut events = reader.take(2).await;
    assert_intruder_sees_nothing(intruder_side, &eve, id).await;
    events.extend(reader.until_terminal().await);
    assert_contiguous(&events, 0);
    assert_eq!(events.last().unwrap().kind(), "complete", "the intruder's cancel changed nothing");
}

#[tokio::test]
async fn another_principal_cannot_read_resume_or_cancel_a_stream() {
    let mut vars = jwt_mode();
    vars.push(("DEMO_TOKENS_PER_SECOND", "100"));
    let app = spawn_app(&vars).await;
    intruders_are_told_nothing_and_change_nothing(&app, &app).await;
}

#[tokio::test]
async fn ownership_holds_across_processes_sharing_redis() {
    let deployment = redis_deployment(&fresh_prefix());
    let mut vars: Vec<(&str, &str)> = deployment.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.extend(jwt_mode());
    vars.push(("DEMO_TOKENS_PER_SECOND", "100"));
    let (a, b) = (spawn_app(&vars).await, spawn_app(&vars).await);
    intruders_are_told_nothing_and_change_nothing(&a, &b).await;
}

#[tokio::test]
async fn idempotency_keys_and_refs_are_scoped_per_principal() {
    let app = spawn_app(&jwt_mode()).await;
    let body = json!({"block_type": "explain-eli10", "input": {"topic": "fog"}});
    let start =
        |token: String| app.http.post(app.url("/api/streams")).bearer_auth(token).header("idempotency-key", "same-key").json(&body).send();
    let ada = start(learner_token("ada")).await.unwrap();
    let eve = start(learner_token("eve")).await.unwrap();
    let ada_again = start(learner_token("ada")).await.unwrap();
    assert_eq!((ada.status().as_u16(), eve.status().as_u16(), ada_again.status().as_u16()), (201, 201, 200));
    let (ada, eve, ada_again): (Value, Value, Value) =
        (ada.json().await.unwrap(), eve.json().await.unwrap(), ada_again.json().await.unwrap());
    assert_ne!(ada["stream_id"], eve["stream_id"], "eve's key is not ada's");
    assert_eq!(ada["stream_id"], ada_again["stream_id"]);

    let ws_start = json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "tea"}, "ref": "same-ref"});
    let mut starts = Vec::new();
    for sub in ["ada", "eve", "ada"] {
        let mut ws = app.ws().await;
        ws.send(json!({"type": "auth", "token": learner_token(sub)})).await;
        ws.send(ws_start.clone()).await;
        starts.push(ws.next().await["stream_id"].clone());
    }
    assert_ne!(starts[0], starts[1]);
    assert_eq!(starts[0], starts[2]);
}

#[tokio::test]
async fn a_read_token_reads_its_stream_without_headers_and_nothing_else() {
    let app = spawn_app(&jwt_mode()).await;
    let ada = learner_token("ada");
    let created = app.create_stream_as(&ada, "explain-eli10", json!({"topic": "clouds"})).await;
    let (id, token) = (created["stream_id"].as_str().unwrap(), created["read_token"].as_str().unwrap());
    let expires: chrono::DateTime<chrono::Utc> = created["read_token_expires_at"].as_str().unwrap().parse().unwrap();
    let lifetime = expires.timestamp() - now_secs() as i64;
    assert!((0..=300).contains(&lifetime), "at most five minutes: {lifetime} s");

    let events = app.sse(&format!("/api/streams/{id}/events?read_token={token}"), &[]).await.until_terminal().await;
    assert_eq!(events.last().unwrap().kind(), "complete", "a native EventSource reads with the token alone");
    let resumed = app.sse(&format!("/api/streams/{id}/events?read_token={token}&after=2"), &[]).await.until_terminal().await;
    assert_eq!(resumed[0].seq(), 3);

    let other = app.create_stream_as(&ada, "explain-eli10", json!({"topic": "rain"})).await;
    let other_id = other["stream_id"].as_str().unwrap();
    assert_problem(app.get(&format!("/api/streams/{other_id}/events?read_token={token}")).await, 401, "unauthorized").await;
    assert_problem(app.http.delete(app.url(&format!("/api/streams/{id}?read_token={token}"))).send().await.unwrap(), 401, "unauthorized")
        .await;
    assert_problem(app.get(&format!("/api/usage?read_token={token}")).await, 401, "unauthorized").await;
    // A long-lived credential is never accepted in a URL.
    assert_problem(app.get(&format!("/api/streams/{id}/events?read_token={ada}")).await, 401, "unauthorized").await;
}

#[tokio::test]
async fn an_expired_read_token_is_refused() {
    let app = spawn_app(&jwt_mode()).await;
    let created = app.create_stream_as(&learner_token("ada"), "explain-eli10", json!({"topic": "snow"})).await;
    let id = created["stream_id"].as_str().unwrap();
    // The same claims as the server's token, signed with the same key, but expired.
    let issued: Value = {
        let payload = created["read_token"].as_str().unwrap().split('.').nth(1).unwrap();
        use base64::Engine;
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    };
    assert_eq!((issued["sub"].as_str(), issued["sid"].as_str()), (Some("jwt:ada"), Some(id)));
    let mut expired = issued.clone();
    expired["exp"] = json!(now_secs() - 1);
    expired["iat"] = json!(now_secs() - 301);
    let expired = sign_hs256(&expired, READ_TOKEN_SECRET);
    let body = assert_problem(app.get(&format!("/api/streams/{id}/events?read_token={expired}")).await, 401, "unauthorized").await;
    assert!(body["detail"].as_str().unwrap().contains("expired"));
    let still_good = sign_hs256(&issued, READ_TOKEN_SECRET);
    assert_eq!(app.get(&format!("/api/streams/{id}/events?read_token={still_good}")).await.status(), 200);
}
