//! Who is asking: learner JWTs (HS256, and RS256/ES256 from a JWKS file), API
//! keys, the WebSocket's first-message auth, and what needs no credential.

use futures::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

async fn spawn_jwt_app(extra: &[(&str, &str)]) -> TestApp {
    let mut vars = jwt_mode();
    vars.extend_from_slice(extra);
    spawn_app(&vars).await
}

#[tokio::test]
async fn api_requests_without_a_credential_get_401_with_a_bearer_challenge() {
    let app = spawn_jwt_app(&[]).await;
    let start = json!({"block_type": "quiz", "input": {"topic": "x"}});
    for response in [
        app.post_json("/api/streams", &start).await,
        app.get("/api/stream/ai-block/quiz?topic=x").await,
        app.get("/api/streams/abc/events").await,
        app.delete("/api/streams/abc").await,
        app.post_json("/api/ai-block/quiz", &json!({"topic": "x"})).await,
        app.get("/api/usage").await,
    ] {
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_problem(response, 401, "unauthorized").await;
    }
    for open in ["/healthz", "/metrics", "/api/openapi.json", "/api/ai/config", "/"] {
        assert_eq!(app.get(open).await.status(), 200, "{open} needs no credential");
    }
    let config: Value = app.get("/api/ai/config").await.json().await.unwrap();
    assert_eq!(config["auth_mode"], "jwt");
}

#[tokio::test]
async fn expired_misaddressed_and_forged_tokens_are_refused_as_invalid() {
    let app = spawn_jwt_app(&[]).await;
    let claims = |patch: Value| {
        let mut claims = json!({"sub": "ada", "exp": now_secs() + 600, "iss": "https://learn.example", "aud": "live-ai"});
        claims.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
        claims
    };
    for (token, why) in [
        (sign_hs256(&claims(json!({"exp": now_secs() - 600})), JWT_SECRET), "expired"),
        (sign_hs256(&claims(json!({"aud": "another-app"})), JWT_SECRET), "audience"),
        (sign_hs256(&claims(json!({"iss": "https://elsewhere.example"})), JWT_SECRET), "issuer"),
        (sign_hs256(&claims(json!({"nbf": now_secs() + 600})), JWT_SECRET), "not valid yet"),
        (sign_hs256(&claims(json!({})), "a-forged-secret-that-is-long-enough-0123"), "signature"),
        ("garbage".to_owned(), "JWT"),
    ] {
        let response = app.start_as(&token, "explain-eli10", json!({"topic": "x"})).await;
        assert_eq!(response.headers()["www-authenticate"], "Bearer error=\"invalid_token\"", "{why}");
        let body = assert_problem(response, 401, "unauthorized").await;
        assert!(body["detail"].as_str().unwrap().contains(why), "{why}: {body}");
    }
    let ok = app.start_as(&learner_token("ada"), "explain-eli10", json!({"topic": "x"})).await;
    assert_eq!(ok.status(), 201);
}

#[tokio::test]
async fn learner_tokens_signed_with_the_jwks_keys_are_accepted_and_alg_confusion_is_not() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let dir = env!("CARGO_MANIFEST_DIR");
    let jwks = format!("{dir}/tests/fixtures/auth/jwks.json");
    // `*` waives the audience on purpose: these tokens carry no `aud`.
    let app = spawn_app(&[("AUTH_MODE", "jwt"), ("AUTH_JWKS_FILE", &jwks), ("AUTH_JWT_AUDIENCE", "*")]).await;
    let claims = json!({"sub": "grace", "exp": now_secs() + 600});
    let sign = |alg: Algorithm, kid: &str, key: EncodingKey| {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        encode(&header, &claims, &key).unwrap()
    };
    let rsa = std::fs::read(format!("{dir}/tests/fixtures/auth/rsa_private.pem")).unwrap();
    let ec = std::fs::read(format!("{dir}/tests/fixtures/auth/ec_private.pem")).unwrap();
    for token in [
        sign(Algorithm::RS256, "rsa-test", EncodingKey::from_rsa_pem(&rsa).unwrap()),
        sign(Algorithm::ES256, "ec-test", EncodingKey::from_ec_pem(&ec).unwrap()),
    ] {
        let usage: Value = app.http.get(app.url("/api/usage")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        assert_eq!(usage["principal"], "jwt:grace");
    }
    // The public JWKS as an HMAC secret: the classic algorithm confusion.
    let confused = sign(Algorithm::HS256, "rsa-test", EncodingKey::from_secret(&std::fs::read(&jwks).unwrap()));
    let response = app.http.get(app.url("/api/usage")).bearer_auth(confused).send().await.unwrap();
    assert_problem(response, 401, "unauthorized").await;
}

#[tokio::test]
async fn api_keys_from_the_keys_file_name_their_principal_and_unknown_keys_are_refused() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let lines = format!(
        "# server callers\n{}\n{}\n",
        live_ai::auth::api_keys::line_for("grader", "key-of-the-grader"),
        live_ai::auth::api_keys::line_for("reports", "key-of-reports")
    );
    std::fs::write(file.path(), lines).unwrap();
    let app = spawn_app(&[("AUTH_MODE", "api_key"), ("AUTH_API_KEYS_FILE", file.path().to_str().unwrap())]).await;
    let usage: Value = app.http.get(app.url("/api/usage")).bearer_auth("key-of-the-grader").send().await.unwrap().json().await.unwrap();
    assert_eq!(usage["principal"], "key:grader");
    let response = app.http.get(app.url("/api/usage")).bearer_auth("key-of-someone-else").send().await.unwrap();
    assert_problem(response, 401, "unauthorized").await;
    let config: Value = app.get("/api/ai/config").await.json().await.unwrap();
    assert_eq!(config["auth_mode"], "api_key");
}

/// The next message, expecting the server to end the socket after it.
async fn closed_with_policy_violation(ws: &mut WsClient) -> Value {
    let error = ws.next().await;
    assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("protocol_error"), Some("unauthorized")), "{error}");
    match tokio::time::timeout(PATIENCE, ws.socket.next()).await.expect("the socket closes in time") {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Policy),
        other => panic!("expected a close frame with 1008, got {other:?}"),
    }
    error
}

#[tokio::test]
async fn a_websocket_authenticates_by_first_message_or_header_and_is_closed_1008_otherwise() {
    let app = spawn_jwt_app(&[]).await;
    let start = json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "tides"}, "ref": "r1"});

    let mut ws = app.ws().await;
    ws.send(json!({"type": "auth", "token": learner_token("ada")})).await;
    ws.send(start.clone()).await;
    assert_eq!(ws.next().await["type"], "start", "no answer to auth, then the stream");

    let mut ws = app.ws_with(&[("authorization", &format!("Bearer {}", learner_token("ada")))]).await.unwrap();
    ws.send(start.clone()).await;
    assert_eq!(ws.next().await["type"], "start", "the upgrade's header authenticates too");

    let mut ws = app.ws().await;
    ws.send(start.clone()).await;
    closed_with_policy_violation(&mut ws).await;

    let mut ws = app.ws().await;
    ws.send(json!({"type": "auth", "token": sign_hs256(&json!({"sub": "ada", "exp": now_secs() - 600}), JWT_SECRET)})).await;
    closed_with_policy_violation(&mut ws).await;

    // A refused token later on closes the socket just the same.
    let mut ws = app.ws().await;
    ws.send(json!({"type": "auth", "token": learner_token("ada")})).await;
    ws.send(json!({"type": "auth", "token": sign_hs256(&json!({"sub": "ada", "exp": now_secs() + 600}), "a-forged-secret-that-is-long-enough-0123")})).await;
    closed_with_policy_violation(&mut ws).await;

    let refused = app.ws_with(&[("authorization", "Bearer not-a-token")]).await;
    assert!(matches!(refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401));
}

/// The next protocol error on `ws`, keeping the stream events that came before it.
async fn next_protocol_error(ws: &mut WsClient, events: &mut Vec<Value>) -> Value {
    loop {
        let message = ws.next().await;
        if message["type"] == "protocol_error" {
            return message;
        }
        events.push(message);
    }
}

#[tokio::test]
async fn a_socket_past_its_tokens_exp_refuses_starts_and_resumes_until_a_fresh_auth_and_keeps_its_streams() {
    let app = spawn_jwt_app(&[("DEMO_TOKENS_PER_SECOND", "20")]).await;
    // Past its exp but within the 5 s of tolerated clock skew: usable for about two seconds more.
    let exp = now_secs() - 3;
    let claims = json!({"sub": "ada", "exp": exp, "iss": "https://learn.example", "aud": "live-ai"});
    let mut ws = app.ws().await;
    ws.send(json!({"type": "auth", "token": sign_hs256(&claims, JWT_SECRET)})).await;
    ws.send(json!({"type": "start", "block_type": "ask-question", "input": {"question": "Why do owls hoot?"}, "ref": "early"})).await;
    let start = ws.next().await;
    assert_eq!((start["type"].as_str(), start["ref"].as_str()), (Some("start"), Some("early")));
    let id = start["stream_id"].as_str().unwrap().to_owned();
    // Let the token's last usable second pass (a wait for the clock, not a proof of silence).
    let usable_until = std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp + 5);
    if let Ok(left) = usable_until.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left + std::time::Duration::from_millis(1100)).await;
    }
    let mut events = vec![start];
    ws.send(json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "owls"}, "ref": "late"})).await;
    let refused = next_protocol_error(&mut ws, &mut events).await;
    assert_eq!(
        (refused["code"].as_str(), refused["ref"].as_str(), refused["retryable"].as_bool()),
        (Some("unauthorized"), Some("late"), Some(true))
    );
    assert!(refused["message"].as_str().unwrap().contains("expired"), "{refused}");
    ws.send(json!({"type": "resume", "stream_id": id, "after": 0})).await;
    let refused = next_protocol_error(&mut ws, &mut events).await;
    assert_eq!((refused["code"].as_str(), refused["stream_id"].as_str()), (Some("unauthorized"), Some(id.as_str())));
    // A fresh token: starts work again on the same socket, and the first stream never stopped.
    ws.send(json!({"type": "auth", "token": learner_token("ada")})).await;
    ws.send(json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "owls"}, "ref": "fresh"})).await;
    let mut others = Vec::new();
    events.extend(ws.until_terminal(&id, &mut others).await.into_iter().map(|e| e.data));
    let first: Vec<Received> =
        events.into_iter().filter(|e| e["stream_id"] == id.as_str()).map(|data| Received { id: String::new(), data }).collect();
    assert_contiguous(&first, 0);
    assert_eq!(first.last().unwrap().kind(), "complete", "the stream went on past the token's exp");
    let fresh = match others.iter().find(|m| m["type"] == "start") {
        Some(fresh) => fresh.clone(),
        None => ws.next().await,
    };
    assert_eq!((fresh["type"].as_str(), fresh["ref"].as_str()), (Some("start"), Some("fresh")), "{others:?}");
}

#[tokio::test]
async fn an_auth_for_another_learner_switches_the_socket_and_ends_the_previous_learners_streams_on_it() {
    let app = spawn_jwt_app(&[("DEMO_TOKENS_PER_SECOND", "20")]).await;
    let (ada, eve) = (learner_token("ada"), learner_token("eve"));
    let mut ws = app.ws().await;
    ws.send(json!({"type": "auth", "token": ada})).await;
    let mut adas = Vec::new();
    for topic in ["moss", "ferns"] {
        ws.send(json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": topic}, "ref": topic})).await;
        loop {
            let message = ws.next().await;
            if message["type"] == "start" {
                adas.push(message["stream_id"].as_str().unwrap().to_owned());
                break;
            }
        }
    }
    ws.send(json!({"type": "auth", "token": eve})).await;
    let mut ended = Vec::new();
    while ended.len() < 2 {
        let message = ws.next().await;
        if message["type"] == "protocol_error" {
            assert_eq!((message["code"].as_str(), message["retryable"].as_bool()), (Some("unauthorized"), Some(false)), "{message}");
            ended.push(message["stream_id"].as_str().unwrap().to_owned());
        } else {
            assert!(adas.contains(&message["stream_id"].as_str().unwrap().to_owned()), "{message}");
        }
    }
    ended.sort();
    adas.sort();
    assert_eq!(ended, adas, "each of ada's streams on the socket ends with one unauthorized");
    // From now on the socket is eve's: her start, and nothing more of ada's.
    ws.send(json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "bees"}, "ref": "bees"})).await;
    let start = ws.next().await;
    assert_eq!((start["type"].as_str(), start["ref"].as_str()), (Some("start"), Some("bees")), "{start}");
    let eves = start["stream_id"].as_str().unwrap().to_owned();
    let mut others = Vec::new();
    ws.until_terminal(&eves, &mut others).await;
    assert!(others.is_empty(), "nothing of ada's after the switch: {others:?}");
    let path = format!("/api/streams/{eves}/events");
    let as_eve = app.sse(&path, &[("authorization", &format!("Bearer {eve}"))]).await.until_terminal().await;
    assert_eq!(as_eve.last().unwrap().kind(), "complete", "the new stream is eve's");
    let as_ada = app.sse(&path, &[("authorization", &format!("Bearer {ada}"))]).await.until_terminal().await;
    assert_eq!(as_ada[0].data["code"], "stream_not_found");
    // Ada's generations go on: she can still read them.
    let ada_auth = format!("Bearer {ada}");
    let events = app.sse(&format!("/api/streams/{}/events", adas[0]), &[("authorization", &ada_auth)]).await.until_terminal().await;
    assert_eq!(events.last().unwrap().kind(), "complete");
}

#[tokio::test]
async fn a_websocket_that_never_authenticates_is_closed() {
    let app = spawn_jwt_app(&[]).await;
    let mut ws = app.ws().await;
    let error = closed_with_policy_violation(&mut ws).await;
    assert!(error["message"].as_str().unwrap().contains("authenticate within"));
}

#[tokio::test]
async fn anonymous_mode_accepts_and_ignores_an_auth_message_and_bearer_headers() {
    let app = spawn_app(&[]).await;
    let mut ws = app.ws().await;
    ws.send(json!({"type": "auth", "token": "anything"})).await;
    ws.send(json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "moss"}})).await;
    let events = {
        let start = ws.next().await;
        let id = start["stream_id"].as_str().unwrap().to_owned();
        ws.until_terminal(&id, &mut Vec::new()).await
    };
    assert_eq!(events.last().unwrap().kind(), "complete");
    let created = app.create_stream_as("whatever", "explain-eli10", json!({"topic": "moss"})).await;
    assert!(created["read_token"].as_str().is_some_and(|t| !t.is_empty()), "read tokens also with AUTH_MODE=none");
    let config: Value = app.get("/api/ai/config").await.json().await.unwrap();
    assert_eq!(config["auth_mode"], "none");
}

#[test]
fn anonymous_mode_refuses_to_start_on_a_public_address_naming_both_variables() {
    let (code, stderr) = start_up_failure(&[("HOST", "0.0.0.0")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("AUTH_MODE") && stderr.contains("ALLOW_ANONYMOUS"), "{stderr}");
}

#[test]
fn jwt_mode_without_an_audience_refuses_to_start_naming_the_variable() {
    let (code, stderr) = start_up_failure(&[("AUTH_MODE", "jwt"), ("AUTH_JWT_SECRET", JWT_SECRET)]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("AUTH_JWT_AUDIENCE"), "{stderr}");
}

#[tokio::test]
async fn anonymous_ipv6_clients_of_one_64_network_are_one_principal() {
    // The test's requests come through a "proxy" on loopback that names the client.
    let app = spawn_app(&[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let principal_of = |client: &'static str| {
        let request = app.http.get(app.url("/api/usage")).header("x-forwarded-for", client);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap()["principal"].as_str().unwrap().to_owned() }
    };
    let first = principal_of("2001:db8:7:1::1").await;
    assert_eq!(first, "ip:2001:db8:7:1::/64");
    assert_eq!(principal_of("2001:db8:7:1:9f3c:2a:bb01:7").await, first, "a rotated address of the same /64");
    assert_ne!(principal_of("2001:db8:7:2::1").await, first, "another /64 is another client");
    assert_eq!(principal_of("198.51.100.7").await, "ip:198.51.100.7", "IPv4 clients stay one address each");
}

#[tokio::test]
async fn tokens_never_appear_in_the_logs() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut vars = jwt_mode();
    vars.push(("RUST_LOG", "debug"));
    let process = LiveAiProcess::spawn_logging(&vars, log.reopen().unwrap()).await;
    let app_token = learner_token("ada");
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/api/streams", process.base))
        .bearer_auth(&app_token)
        .json(&json!({"block_type": "explain-eli10", "input": {"topic": "owls"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, read_token) = (created["stream_id"].as_str().unwrap(), created["read_token"].as_str().unwrap());
    let body = http.get(format!("{}/api/streams/{id}/events?read_token={read_token}", process.base)).send().await.unwrap();
    assert_eq!(body.status(), 200);
    assert!(body.text().await.unwrap().contains("event: complete"));
    let refused = http.get(format!("{}/api/usage", process.base)).bearer_auth("forged.token.value").send().await.unwrap();
    assert_eq!(refused.status(), 401);
    process.kill().await;
    let logs = std::fs::read_to_string(log.path()).unwrap();
    assert!(logs.contains(id), "the logs carry the stream id, so they were captured");
    for secret in [app_token.as_str(), read_token, "forged.token.value", JWT_SECRET, READ_TOKEN_SECRET] {
        assert!(!logs.contains(secret), "a token leaked into the logs");
    }
    // Nor any piece of a token (each JWT's signature part is unique).
    for token in [app_token.as_str(), read_token] {
        assert!(!logs.contains(token.rsplit('.').next().unwrap()));
    }
}
