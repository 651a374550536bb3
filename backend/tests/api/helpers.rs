//! The test harness: `spawn_app` starts a real server on 127.0.0.1:0; `TestApp`
//! speaks HTTP, SSE and WebSocket to it; every event read is checked against the
//! contract's JSON Schemas.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use live_ai::config::settings::Settings;

/// How long any single wait in a test may take before it fails (not a speed
/// assertion: a bound so a broken server fails the test instead of hanging it).
pub const PATIENCE: Duration = Duration::from_secs(15);

const CONTRACT: &str = include_str!("../../../specs/050-live-ai-interaction/contracts/stream-schema.yaml");

fn contract() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_norway::from_str(CONTRACT).expect("the contract is valid YAML"))
}

/// A validator for one schema of the contract's `components/schemas`.
pub fn schema_validator(name: &str) -> jsonschema::Validator {
    let mut root = contract().clone();
    root["$ref"] = Value::String(format!("#/components/schemas/{name}"));
    jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("schema {name} compiles: {e}"))
}

fn validators() -> &'static (jsonschema::Validator, jsonschema::Validator, jsonschema::Validator) {
    static V: OnceLock<(jsonschema::Validator, jsonschema::Validator, jsonschema::Validator)> = OnceLock::new();
    V.get_or_init(|| (schema_validator("StreamEvent"), schema_validator("ProtocolError"), schema_validator("KeepAlive")))
}

/// Panics unless `event` is a stream event of the contract.
pub fn assert_stream_event(event: &Value) {
    let errors: Vec<String> = validators().0.iter_errors(event).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "event breaks the contract: {event}\n{}", errors.join("\n"));
}

pub fn assert_protocol_error(message: &Value) {
    let errors: Vec<String> = validators().1.iter_errors(message).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "protocol error breaks the contract: {message}\n{}", errors.join("\n"));
}

/// Speaks HTTP, SSE and WebSocket to one address: a server, or a proxy in front of several.
pub struct ApiClient {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
}

/// A server running in this test's runtime.
pub struct TestApp {
    pub api: ApiClient,
    pub shutdown: CancellationToken,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl std::ops::Deref for TestApp {
    type Target = ApiClient;
    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

/// Fast demo model, streaming on, no frontend, no per-principal limits (the
/// tests of limits set their own); `vars` override any setting.
pub async fn spawn_app(vars: &[(&str, &str)]) -> TestApp {
    let mut all = vec![
        ("AI_STREAMING_ENABLED", "true"),
        ("DEMO_TOKENS_PER_SECOND", "0"),
        ("DEMO_FIRST_TOKEN_MS", "0"),
        ("STATIC_DIR", "no-frontend-in-tests"),
        ("PROVIDER_MAX_RETRIES", "0"),
        ("LIMIT_CONCURRENT_STREAMS", "unlimited"),
        ("LIMIT_STARTS_PER_MINUTE", "unlimited"),
        ("LIMIT_STREAMS_PER_SOCKET", "unlimited"),
    ];
    all.extend_from_slice(vars);
    let map = all.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let settings = Settings::from_map(&map).expect("test settings are valid");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let state = live_ai::build_state(settings, shutdown.clone()).await.expect("state builds");
    let signal = shutdown.clone().cancelled_owned();
    let server = tokio::spawn(live_ai::run(listener, state, signal));
    TestApp { api: ApiClient::new(addr), shutdown, server }
}

/// One event as a client received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The SSE `id:` (empty over WebSocket).
    pub id: String,
    pub data: Value,
}

impl Received {
    pub fn kind(&self) -> &str {
        self.data["type"].as_str().unwrap_or_default()
    }
    pub fn seq(&self) -> u64 {
        self.data["seq"].as_u64().expect("events carry seq")
    }
    pub fn is_terminal(&self) -> bool {
        matches!(self.kind(), "error" | "complete" | "cancelled")
    }
}

/// Concatenated `chunk` tokens.
pub fn text_of(events: &[Received]) -> String {
    events.iter().filter(|e| e.kind() == "chunk").map(|e| e.data["token"].as_str().unwrap()).collect()
}

pub fn kinds(events: &[Received]) -> Vec<String> {
    events.iter().map(|e| e.kind().to_owned()).collect()
}

/// Asserts seq runs contiguously from `first`, with one terminal event, last.
pub fn assert_contiguous(events: &[Received], first: u64) {
    for (n, event) in events.iter().enumerate() {
        assert_eq!(event.seq(), first + n as u64, "seq gap or duplicate in {:?}", kinds(events));
    }
    let terminals = events.iter().filter(|e| e.is_terminal()).count();
    assert_eq!(terminals, 1, "exactly one terminal event: {:?}", kinds(events));
    assert!(events.last().unwrap().is_terminal(), "the terminal event comes last");
}

pub struct SseReader {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    events: BoxStream<'static, Received>,
}

impl SseReader {
    /// The next event, or `None` when the server closed the stream.
    pub async fn next(&mut self) -> Option<Received> {
        tokio::time::timeout(PATIENCE, self.events.next()).await.expect("an SSE event or the end in time")
    }

    /// Events up to and including the terminal one; then checks the stream ends.
    pub async fn until_terminal(&mut self) -> Vec<Received> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            let terminal = event.is_terminal();
            events.push(event);
            if terminal {
                assert!(self.next().await.is_none(), "nothing follows the terminal event");
                return events;
            }
        }
        panic!("the stream closed before its terminal event: {:?}", kinds(&events));
    }

    pub async fn take(&mut self, n: usize) -> Vec<Received> {
        let mut events = Vec::new();
        while events.len() < n {
            events.push(self.next().await.expect("more events"));
        }
        events
    }
}

impl ApiClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, http: reqwest::Client::new() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http.post(self.url(path)).json(body).send().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.http.delete(self.url(path)).send().await.unwrap()
    }

    /// `POST /api/streams`; returns the stream id.
    pub async fn create_stream(&self, block_type: &str, input: Value) -> String {
        let response = self.post_json("/api/streams", &json!({"block_type": block_type, "input": input})).await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let body: Value = response.json().await.unwrap();
        body["stream_id"].as_str().unwrap().to_owned()
    }

    /// Opens an SSE stream with optional extra headers.
    pub async fn sse(&self, path: &str, headers: &[(&str, &str)]) -> SseReader {
        self.try_sse(path, headers).await.unwrap()
    }

    /// As [`sse`](Self::sse), with the request's failure (a process that
    /// stopped while answering) as an error.
    pub async fn try_sse(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Result<SseReader> {
        let mut request = self.http.get(self.url(path)).header("accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await?;
        let status = response.status();
        let response_headers = response.headers().clone();
        let events = response
            .bytes_stream()
            .eventsource()
            .take_while(|event| futures::future::ready(event.is_ok()))
            .map(|event| {
                let event = event.expect("checked by take_while");
                let data: Value = serde_json::from_str(&event.data).expect("SSE data is JSON");
                assert_stream_event(&data);
                assert_eq!(event.event, data["type"].as_str().unwrap(), "SSE event name is the type");
                let own_id = format!("{}:{}", data["stream_id"].as_str().unwrap(), data["seq"]);
                // A reader's own closing event (its store failed) is in no log and
                // has no `id:` line: the last event id stays the last logged one.
                let unlogged = data["code"] == "generation_lost" && event.id != own_id;
                if unlogged {
                    let logged_before =
                        data["seq"].as_u64().unwrap().checked_sub(1).map(|seq| format!("{}:{seq}", data["stream_id"].as_str().unwrap()));
                    assert!(event.id.is_empty() || Some(&event.id) == logged_before.as_ref(), "{} after {}", own_id, event.id);
                } else {
                    assert_eq!(event.id, own_id, "SSE id is <stream_id>:<seq>");
                }
                Received { id: if unlogged { String::new() } else { event.id }, data }
            })
            .boxed();
        Ok(SseReader { status, headers: response_headers, events })
    }

    pub async fn events_of(&self, stream_id: &str) -> SseReader {
        self.sse(&format!("/api/streams/{stream_id}/events"), &[]).await
    }

    /// A metric's value summed over its label sets matching `labels` (e.g. `block="quiz"`).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self.get("/metrics").await.text().await.unwrap();
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter(|line| line.starts_with(&format!("{name} ")) || line.starts_with(&format!("{name}{{")))
            .filter(|line| labels.iter().all(|l| line.contains(l)))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Polls a metric until `check` holds (or fails the test after `PATIENCE`).
    pub async fn wait_for_metric(&self, name: &str, labels: &[&str], check: impl Fn(f64) -> bool) -> f64 {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let value = self.metric(name, labels).await;
            if check(value) {
                return value;
            }
            assert!(tokio::time::Instant::now() < deadline, "metric {name}{labels:?} stuck at {value}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn ws(&self) -> WsClient {
        let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/api/stream/ws", self.addr)).await.unwrap();
        WsClient { socket, skip_keep_alives: true }
    }

    /// A WebSocket whose upgrade request carries `headers`; the handshake's error
    /// (an HTTP refusal) when the server does not upgrade.
    pub async fn ws_with(&self, headers: &[(&str, &str)]) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{}/api/stream/ws", self.addr).into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                reqwest::header::HeaderValue::from_str(value).unwrap(),
            );
        }
        let (socket, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(WsClient { socket, skip_keep_alives: true })
    }

    /// `POST /api/streams` as the holder of `token`; returns the response.
    pub async fn start_as(&self, token: &str, block_type: &str, input: Value) -> reqwest::Response {
        self.http
            .post(self.url("/api/streams"))
            .bearer_auth(token)
            .json(&json!({"block_type": block_type, "input": input}))
            .send()
            .await
            .unwrap()
    }

    /// `POST /api/streams` as the holder of `token`; returns the 201 body.
    pub async fn create_stream_as(&self, token: &str, block_type: &str, input: Value) -> Value {
        let response = self.start_as(token, block_type, input).await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        response.json().await.unwrap()
    }
}

/// Panics unless `response` is a problem body with `status` and `code`; returns it.
pub async fn assert_problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status, "{:?}", response.headers());
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["status"].as_u64(), body["code"].as_str()), (Some(status as u64), Some(code)), "{body}");
    body
}

/// The HS256 secret the JWT tests share with the server.
pub const JWT_SECRET: &str = "host-app-secret-for-tests-0123456789abcdef";
/// The read-token key the tests give the server.
pub const READ_TOKEN_SECRET: &str = "read-token-secret-for-tests-0123456789abcd";

/// Settings of a server that trusts learner JWTs signed with [`JWT_SECRET`].
pub fn jwt_mode() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AUTH_MODE", "jwt"),
        ("AUTH_JWT_SECRET", JWT_SECRET),
        ("AUTH_JWT_AUDIENCE", "live-ai"),
        ("AUTH_JWT_ISSUER", "https://learn.example"),
        ("AUTH_READ_TOKEN_SECRET", READ_TOKEN_SECRET),
    ]
}

/// Runs the real binary with only `vars` set, in an empty directory (no `.env`),
/// for a start that must fail: its exit code and what it printed on stderr. A
/// process still running after `PATIENCE` is killed and fails the test, so a
/// start that hangs (on a Redis it cannot use, say) cannot hang the suite.
pub fn start_up_failure(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_live-ai"))
        .env_clear()
        .envs(vars.iter().copied())
        .env("PORT", "0")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("live-ai runs");
    let pid = child.id().to_string();
    let (done, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match output.recv_timeout(PATIENCE) {
        Ok(output) => {
            let output = output.expect("live-ai's exit is read");
            (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
        }
        Err(_) => {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid]).status();
            panic!("live-ai with {vars:?} neither started nor gave up within {PATIENCE:?}");
        }
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A learner JWT as a host app mints it: HS256, `sub`, `exp` in ten minutes.
pub fn learner_token(sub: &str) -> String {
    sign_hs256(&json!({"sub": sub, "exp": now_secs() + 600, "iss": "https://learn.example", "aud": "live-ai"}), JWT_SECRET)
}

pub fn sign_hs256(claims: &Value, secret: &str) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

/// A Redis deployment's settings: processes with the same fresh prefix share
/// streams and limits.
pub fn redis_deployment(prefix: &str) -> Vec<(&'static str, String)> {
    vec![
        ("STREAM_STORE", "redis".into()),
        ("REDIS_URL", std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())),
        ("REDIS_KEY_PREFIX", prefix.to_owned()),
    ]
}

/// A key prefix no other test uses.
pub fn fresh_prefix() -> String {
    format!("live-ai-test-{}", uuid::Uuid::new_v4().simple())
}

pub struct WsClient {
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Keep-alive messages are checked, then skipped, unless a test wants them.
    pub skip_keep_alives: bool,
}

impl WsClient {
    pub async fn send(&mut self, message: Value) {
        self.socket.send(Message::text(message.to_string())).await.unwrap();
    }

    pub async fn send_raw(&mut self, text: String) {
        self.socket.send(Message::text(text)).await.unwrap();
    }

    /// The next server message (a stream event or a protocol error), validated.
    pub async fn next(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next()).await.expect("a message in time");
            match message.expect("socket open").expect("socket healthy") {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value.get("seq").is_some() {
                        assert_stream_event(&value);
                    } else if value["type"] == "keep_alive" {
                        assert!(validators().2.is_valid(&value), "keep-alive breaks the contract: {value}");
                        if self.skip_keep_alives {
                            continue;
                        }
                    } else {
                        assert_protocol_error(&value);
                    }
                    return value;
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Events of `stream_id` until its terminal one; other streams' events are kept
    /// in `others`.
    pub async fn until_terminal(&mut self, stream_id: &str, others: &mut Vec<Value>) -> Vec<Received> {
        let mut events = Vec::new();
        loop {
            let value = self.next().await;
            if value["stream_id"] != stream_id || value.get("seq").is_none() {
                others.push(value);
                continue;
            }
            let received = Received { id: String::new(), data: value };
            let terminal = received.is_terminal();
            events.push(received);
            if terminal {
                return events;
            }
        }
    }
}

/// Input that each block accepts, for tests that go over all four.
pub fn sample_inputs() -> Vec<(&'static str, Value)> {
    vec![
        ("ask-question", json!({"question": "Why is the sky blue?", "context": "Physics of light"})),
        ("explain-eli10", json!({"topic": "photosynthesis"})),
        ("quiz", json!({"topic": "the water cycle", "count": 3, "difficulty": "easy"})),
        ("diagram", json!({"description": "seed, then sprout, then plant, then flower", "kind": "flowchart"})),
    ]
}

/// The same input as query parameters, for the one-shot GET endpoint.
pub fn as_query(input: &Value) -> String {
    let pairs: Vec<String> = input
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{k}={}", urlencode(&v))
        })
        .collect();
    pairs.join("&")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real `live-ai` process (the built binary) on a free loopback port, for what
/// only a process shows: signals, dying, and several processes on one store.
pub struct LiveAiProcess {
    pub child: tokio::process::Child,
    pub base: String,
    pub port: u16,
    pub api: ApiClient,
}

impl std::ops::Deref for LiveAiProcess {
    type Target = ApiClient;
    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

impl LiveAiProcess {
    /// Starts the binary with the test defaults plus `vars`, and waits until it answers.
    pub async fn spawn(vars: &[(&str, &str)]) -> Self {
        // LIVE_AI_TEST_LOGS=1 shows the processes' logs when a test needs explaining.
        let logs =
            || if std::env::var_os("LIVE_AI_TEST_LOGS").is_some() { std::process::Stdio::inherit() } else { std::process::Stdio::null() };
        Self::start(vars, logs(), logs()).await
    }

    /// As [`spawn`](Self::spawn), writing the process's output (its logs) to `log`.
    pub async fn spawn_logging(vars: &[(&str, &str)], log: std::fs::File) -> Self {
        Self::start(vars, log.try_clone().unwrap().into(), log.into()).await
    }

    async fn start(vars: &[(&str, &str)], stdout: std::process::Stdio, stderr: std::process::Stdio) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_live-ai"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("AI_STREAMING_ENABLED", "true")
            .env("DEMO_FIRST_TOKEN_MS", "0")
            .env("STATIC_DIR", "no-frontend-in-tests")
            .env("LIMIT_CONCURRENT_STREAMS", "unlimited")
            .env("LIMIT_STARTS_PER_MINUTE", "unlimited")
            .env("LIMIT_STREAMS_PER_SOCKET", "unlimited")
            .envs(vars.iter().copied())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        let child = command.spawn().expect("the live-ai binary starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..100 {
            if http.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status() == 200) {
                let api = ApiClient::new(format!("127.0.0.1:{port}").parse().unwrap());
                return Self { child, base, port, api };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("live-ai did not come up on {base}");
    }

    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// Waits for the process to end by itself; its exit status.
    pub async fn exited(mut self) -> std::process::ExitStatus {
        self.child.wait().await.expect("the process can be waited for")
    }

    /// Sends SIGTERM, as a process manager does to stop a service.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
    }
}
