//! Scale-out over the Redis store, with real separate `live-ai` processes (the
//! built binary) on one Redis, reached directly or through a round-robin proxy
//! that sends every request to the next process: a client resumes or cancels on
//! any process, a generation read only elsewhere is not abandoned, the death of a
//! process or of Redis is told to readers, and nothing is lost or repeated.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::proxy::RoundRobinProxy;
use crate::test_server::{TestCertificates, TestServer};

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// How long readers may take to learn that a generator or Redis died (the bound).
pub const DEATH_NOTICE: Duration = Duration::from_secs(10);

/// Settings shared by the processes of one deployment (their own key prefix).
pub struct Deployment {
    vars: Vec<(&'static str, String)>,
}

impl Deployment {
    pub fn new(redis_url: &str, tokens_per_second: u32) -> Self {
        let prefix = format!("live-ai-test-{}", uuid_like());
        Self {
            vars: vec![
                ("STREAM_STORE", "redis".into()),
                ("REDIS_URL", redis_url.to_owned()),
                ("REDIS_KEY_PREFIX", prefix),
                ("DEMO_TOKENS_PER_SECOND", tokens_per_second.to_string()),
            ],
        }
    }

    /// Processes on the Redis Cluster whose seed nodes are `urls`.
    pub fn on_cluster(urls: &str, tokens_per_second: u32) -> Self {
        let mut deployment = Self::new("redis://unused", tokens_per_second);
        deployment.vars.retain(|(name, _)| *name != "REDIS_URL");
        deployment.vars.push(("REDIS_CLUSTER_URLS", urls.to_owned()));
        deployment
    }

    pub fn var(&self, name: &str) -> Option<String> {
        self.vars.iter().rev().find(|(n, _)| *n == name).map(|(_, v)| v.clone())
    }

    pub fn with(mut self, name: &'static str, value: &str) -> Self {
        self.vars.push((name, value.to_owned()));
        self
    }

    pub async fn process(&self) -> LiveAiProcess {
        let vars: Vec<(&str, &str)> = self.vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        LiveAiProcess::spawn(&vars).await
    }

    pub async fn processes(&self, n: usize) -> Vec<LiveAiProcess> {
        join_all((0..n).map(|_| self.process())).await
    }
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{nanos:x}-{}", std::process::id())
}

/// A small deterministic generator for cut points, so a failure can be replayed.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

pub fn assert_generation_lost(event: &Received, mentioning: &str) {
    assert_eq!(event.kind(), "error", "{:?}", event.data);
    assert_eq!(event.data["code"], "generation_lost", "{:?}", event.data);
    assert_eq!(event.data["retryable"], true, "{:?}", event.data);
    assert!(event.data["message"].as_str().unwrap().contains(mentioning), "{:?}", event.data);
}

/// Reads until the terminal event within `bound`; returns the events.
pub async fn terminal_within(reader: &mut SseReader, bound: Duration) -> Vec<Received> {
    tokio::time::timeout(bound, reader.until_terminal()).await.expect("the terminal event in time")
}

#[tokio::test]
async fn a_stream_started_on_one_process_resumes_on_another_without_gap_or_duplicate() {
    let deployment = Deployment::new(&redis_url(), 200);
    let [a, b]: [LiveAiProcess; 2] = deployment.processes(2).await.try_into().ok().unwrap();
    let id = a.create_stream("quiz", json!({"topic": "glaciers", "count": 2})).await;
    let mut first = a.events_of(&id).await;
    let mut events = first.take(10).await;
    drop(first);
    let last = events.last().unwrap().id.clone();
    events.extend(b.sse(&format!("/api/streams/{id}/events"), &[("last-event-id", &last)]).await.until_terminal().await);
    assert_contiguous(&events, 0);
    assert_eq!(events.last().unwrap().kind(), "complete");
    assert_eq!(events.iter().filter(|e| e.kind() == "part").count(), 2);
    let done = b.sse(&format!("/api/streams/{id}/events"), &[("last-event-id", &events.last().unwrap().id)]).await;
    assert_eq!(done.status, 204);
}

#[tokio::test]
async fn a_stream_longer_than_the_grace_read_only_through_another_process_completes() {
    // ~130 chunks at 40/s is over three times the grace: the generator's process
    // never has a reader of its own, the other process has one throughout.
    let deployment = Deployment::new(&redis_url(), 40).with("STREAM_RESUME_GRACE_SECONDS", "1");
    let [generator, reader]: [LiveAiProcess; 2] = deployment.processes(2).await.try_into().ok().unwrap();
    let id = generator.create_stream("ask-question", json!({"question": "Why do leaves change colour?"})).await;
    let events = reader.events_of(&id).await.until_terminal().await;
    assert_contiguous(&events, 0);
    assert_eq!(events.last().unwrap().kind(), "complete", "{:?}", events.last().unwrap().data);
    assert_eq!(events.last().unwrap().data["result"]["markdown"], text_of(&events));
}

/// Starts stream `n` through `proxy` (a quiz every fourth, else an
/// explanation) and reads it to its end, cutting the connection after 1 to
/// `cut_within` events each time (see [`read_with_cuts_from`]) and resuming with `Last-Event-ID` (through the
/// proxy: on the next process). Returns the block, the events and the resumes.
pub async fn read_with_cuts(proxy: &RoundRobinProxy, n: u64, cut_within: u64) -> (&'static str, Vec<Received>, u32) {
    read_with_cuts_from(proxy, n, 1, cut_within).await
}

/// As [`read_with_cuts`], cutting after `at_least` to `at_most` events.
pub async fn read_with_cuts_from(proxy: &RoundRobinProxy, n: u64, at_least: u64, at_most: u64) -> (&'static str, Vec<Received>, u32) {
    let (block, input) = if n.is_multiple_of(4) {
        ("quiz", json!({"topic": format!("topic {n}"), "count": 2}))
    } else {
        ("explain-eli10", json!({"topic": format!("topic {n}")}))
    };
    let id = proxy.create_stream(block, input).await;
    let (events, resumes) = read_cut_at_random(proxy, &id, &[], n, at_least, at_most).await;
    (block, events, resumes)
}

/// Reads stream `id` through `proxy` (sending `headers`, e.g. the reader's
/// credentials) to its terminal event, cutting the connection after
/// `at_least` to `at_most` events each time, at points drawn from `seed`, and
/// resuming with `Last-Event-ID` (through the proxy: on the next process).
/// Returns the events and the resumes.
pub async fn read_cut_at_random(
    proxy: &RoundRobinProxy,
    id: &str,
    headers: &[(&str, &str)],
    seed: u64,
    at_least: u64,
    at_most: u64,
) -> (Vec<Received>, u32) {
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15 ^ (seed + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut events: Vec<Received> = Vec::new();
    let mut resumes = 0;
    let path = format!("/api/streams/{id}/events");
    loop {
        let last = events.last().map(|event| event.id.clone());
        let mut sent = headers.to_vec();
        if let Some(last) = &last {
            sent.push(("last-event-id", last));
        }
        let mut reader = proxy.sse(&path, &sent).await;
        assert_eq!(reader.status, 200, "stream {id} resume {resumes}");
        let cut_after = at_least + dice.roll(at_most - at_least + 1);
        let mut read = 0;
        while read < cut_after {
            let Some(event) = reader.next().await else { break };
            let terminal = event.is_terminal();
            events.push(event);
            read += 1;
            if terminal {
                assert!(reader.next().await.is_none(), "nothing follows the terminal event");
                return (events, resumes);
            }
        }
        resumes += 1;
    }
}

/// Every stream complete, contiguous, its result what its events said.
pub fn assert_all_complete(outcomes: &[(&'static str, Vec<Received>, u32)]) {
    for (block, events, _) in outcomes {
        assert_contiguous(events, 0);
        let last = events.last().unwrap();
        assert_eq!(last.kind(), "complete", "{:?}", last.data);
        match *block {
            "quiz" => {
                let parts: Vec<&Value> = events.iter().filter(|e| e.kind() == "part").map(|e| &e.data["data"]).collect();
                let questions: Vec<&Value> = last.data["result"]["questions"].as_array().unwrap().iter().collect();
                assert_eq!(parts, questions);
            }
            _ => assert_eq!(last.data["result"]["markdown"], text_of(events)),
        }
    }
}

#[tokio::test]
async fn streams_read_with_random_cuts_and_resumes_on_other_processes_lose_and_repeat_nothing() {
    let deployment = Deployment::new(&redis_url(), 400);
    let processes = deployment.processes(3).await;
    let proxy = RoundRobinProxy::start(processes.iter().map(|p| p.addr).collect()).await;
    let mut outcomes = Vec::new();
    // 100 streams, 25 at a time: bounded load on a small machine.
    for wave in 0..4 {
        outcomes.extend(join_all((0..25).map(|i| read_with_cuts(&proxy, wave * 25 + i, 25))).await);
    }
    assert_all_complete(&outcomes);
    let total_resumes: u32 = outcomes.iter().map(|(_, _, resumes)| resumes).sum();
    assert!(total_resumes >= 100, "the streams were cut and resumed ({total_resumes} resumes)");
}

#[tokio::test]
async fn a_reader_hopping_between_processes_keeps_its_generation_alive_at_a_one_second_grace() {
    // The run: 60 learners at once, each resuming on the next process
    // every 5-25 events, at the demo model's own pace. A generation whose reader
    // was never away more than a few milliseconds must not be abandoned.
    let deployment = Deployment::new(&redis_url(), 40).with("STREAM_RESUME_GRACE_SECONDS", "1");
    let processes = deployment.processes(3).await;
    let proxy = RoundRobinProxy::start(processes.iter().map(|p| p.addr).collect()).await;
    let outcomes = join_all((0..60).map(|n| read_with_cuts_from(&proxy, 1000 + n, 5, 25))).await;
    assert_all_complete(&outcomes);
}

#[tokio::test]
async fn a_cancel_sent_to_another_process_ends_the_stream_cancelled_for_readers_everywhere() {
    let deployment = Deployment::new(&redis_url(), 30);
    let [a, b, c]: [LiveAiProcess; 3] = deployment.processes(3).await.try_into().ok().unwrap();
    let id = a.create_stream("ask-question", json!({"question": "Where do rivers start?"})).await;
    let mut readers = vec![a.events_of(&id).await, b.events_of(&id).await, c.events_of(&id).await];
    for reader in &mut readers {
        reader.take(2).await;
    }
    let response: Value = c.delete(&format!("/api/streams/{id}")).await.json().await.unwrap();
    assert_eq!(response["state"], "cancelled");
    for reader in &mut readers {
        let events = reader.until_terminal().await;
        assert_eq!(events.last().unwrap().kind(), "cancelled");
    }
    a.wait_for_metric("live_ai_provider_streams_open", &[], |v| v == 0.0).await;
}

#[tokio::test]
async fn cancels_landing_while_appends_are_in_flight_always_end_cancelled() {
    // Fast enough that appends are always in flight, slow enough that every
    // stream is still running when its cancel lands.
    let deployment = Deployment::new(&redis_url(), 500);
    let [a, b]: [LiveAiProcess; 2] = deployment.processes(2).await.try_into().ok().unwrap();
    let (a, b) = (&a, &b);
    let cancel_one = |n: u64| async move {
        let id = a.create_stream("ask-question", json!({"question": format!("Question {n}?")})).await;
        let mut reader = a.events_of(&id).await;
        reader.take(2 + (n % 7) as usize).await;
        // Half through the generator's own process, half through the other one.
        let canceller = if n.is_multiple_of(2) { a } else { b };
        let response: Value = canceller.delete(&format!("/api/streams/{id}")).await.json().await.unwrap();
        let events = reader.until_terminal().await;
        (response["state"].as_str().unwrap().to_owned(), events.last().unwrap().clone())
    };
    let outcomes = join_all((0..30).map(cancel_one)).await;
    for (state, terminal) in outcomes {
        assert_eq!(terminal.kind(), "cancelled", "{:?}", terminal.data);
        assert_eq!(terminal.data["reason"], "requested");
        assert_eq!(state, "cancelled");
    }
}

#[tokio::test]
async fn killing_the_generating_process_ends_every_reader_elsewhere_with_generation_lost() {
    let deployment = Deployment::new(&redis_url(), 5);
    let generator = deployment.process().await;
    let [b, c]: [LiveAiProcess; 2] = deployment.processes(2).await.try_into().ok().unwrap();
    let id = generator.create_stream("explain-eli10", json!({"topic": "comets"})).await;
    let mut readers = vec![b.events_of(&id).await, c.events_of(&id).await];
    let mut received = Vec::new();
    for reader in &mut readers {
        received.push(reader.take(2).await);
    }
    generator.kill().await;
    for (reader, mut events) in readers.iter_mut().zip(received) {
        events.extend(terminal_within(reader, DEATH_NOTICE).await);
        assert_contiguous(&events, 0);
        assert_generation_lost(events.last().unwrap(), "stopped");
    }
    // Every process reports the same end.
    let resumed = b.sse(&format!("/api/streams/{id}/events"), &[]).await.until_terminal().await;
    assert_eq!(resumed.last().unwrap().data, c.events_of(&id).await.until_terminal().await.last().unwrap().data);
}

#[tokio::test]
async fn a_start_retried_on_another_process_attaches_to_the_same_generation() {
    let deployment = Deployment::new(&redis_url(), 100);
    let [a, b]: [LiveAiProcess; 2] = deployment.processes(2).await.try_into().ok().unwrap();
    let body = json!({"block_type": "explain-eli10", "input": {"topic": "fog"}});
    let start = |app: &LiveAiProcess| app.http.post(app.url("/api/streams")).header("idempotency-key", "one-fog").json(&body).send();
    let first = start(&a).await.unwrap();
    let retried = start(&b).await.unwrap();
    assert_eq!((first.status().as_u16(), retried.status().as_u16()), (201, 200));
    let (first, retried): (Value, Value) = (first.json().await.unwrap(), retried.json().await.unwrap());
    assert_eq!(first["stream_id"], retried["stream_id"]);
    assert_eq!(b.metric("live_ai_active_streams", &[]).await, 0.0, "the retry started nothing on b");
}

#[tokio::test]
async fn a_redis_outage_ends_open_streams_with_a_store_error_and_the_processes_recover() {
    let mut redis = TestServer::start(&[]).await;
    let deployment = Deployment::new(&redis.url(), 10);
    let [generator, reader]: [LiveAiProcess; 2] = deployment.processes(2).await.try_into().ok().unwrap();
    let id = generator.create_stream("ask-question", json!({"question": "What is rain?"})).await;
    let mut readers = vec![generator.events_of(&id).await, reader.events_of(&id).await];
    let mut received = Vec::new();
    for reader in &mut readers {
        received.push(reader.take(2).await);
    }
    assert_eq!(generator.get("/readyz").await.status(), 200);

    redis.stop().await;
    for (reader, mut events) in readers.iter_mut().zip(received) {
        events.extend(terminal_within(reader, DEATH_NOTICE).await);
        assert_contiguous(&events, 0);
        assert_generation_lost(events.last().unwrap(), "Redis");
        // In no log: its seq may yet be logged by the generator, so it names no
        // position to resume from (no `id:` line).
        assert_eq!(events.last().unwrap().id, "", "a reader's own closing event has no id");
    }
    for process in [&generator, &reader] {
        let readiness = process.get("/readyz").await;
        assert_eq!(readiness.status(), 503);
        assert_eq!(process.get("/healthz").await.status(), 200, "liveness is not readiness");
    }

    redis.restart().await;
    for process in [&generator, &reader] {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while process.get("/readyz").await.status() != 200 {
            assert!(tokio::time::Instant::now() < deadline, "ready again once Redis answers");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let id = process.create_stream("explain-eli10", json!({"topic": "snow"})).await;
        let events = reader.events_of(&id).await.until_terminal().await;
        assert_eq!(events.last().unwrap().kind(), "complete");
    }
}

#[tokio::test]
async fn processes_share_streams_through_a_tls_only_redis_they_trust_and_refuse_one_they_do_not() {
    let redis = TestServer::start_tls(TestCertificates::from_own_ca()).await;
    let url = format!("rediss://localhost:{}", redis.port);
    let deployment = Deployment::new(&url, 100).with("SSL_CERT_FILE", &redis.ca_file());
    let [generator, reader]: [LiveAiProcess; 2] = deployment.processes(2).await.try_into().ok().unwrap();
    let id = generator.create_stream("ask-question", json!({"question": "What is rain?"})).await;
    let events = reader.events_of(&id).await.until_terminal().await;
    assert_contiguous(&events, 0);
    assert_eq!(events.last().unwrap().kind(), "complete");

    // With the system's roots only, which lack the test's CA, a process does not start on that Redis.
    let (code, stderr) = start_up_failure(&[("STREAM_STORE", "redis"), ("REDIS_URL", &url)]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("REDIS_URL") && stderr.contains("certificate"), "{stderr}");
}

/// What a client of a rolling deploy saw of one stream.
pub struct Followed {
    pub events: Vec<Received>,
    /// Responses that ended without the terminal event (their process stopped).
    moved: u32,
}

/// Starts a stream through `proxy`, retrying a start that meets a stopping
/// process (503 or a closed connection).
pub async fn start_through(proxy: &RoundRobinProxy, n: u64) -> String {
    let body = json!({"block_type": "explain-eli10", "input": {"topic": format!("rolling {n}")}});
    for _ in 0..50 {
        match proxy.http.post(proxy.url("/api/streams")).json(&body).send().await {
            Ok(response) if response.status() == 201 => {
                return response.json::<Value>().await.unwrap()["stream_id"].as_str().unwrap().to_owned();
            }
            Ok(response) => assert_eq!(response.status(), 503, "only a stopping process may refuse a start"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no process took stream {n}");
}

/// Reads stream `id` through `proxy` to its terminal event, resuming with
/// `Last-Event-ID` whenever a response ends without it.
pub async fn follow_through(proxy: &RoundRobinProxy, id: &str) -> Followed {
    let (mut events, mut moved): (Vec<Received>, u32) = (Vec::new(), 0);
    let path = format!("/api/streams/{id}/events");
    for _ in 0..200 {
        let headers: Vec<(&str, &str)> = events.last().map(|last: &Received| vec![("last-event-id", last.id.as_str())]).unwrap_or_default();
        let Ok(mut reader) = proxy.try_sse(&path, &headers).await else {
            // The process stopped while answering: try the next.
            moved += 1;
            continue;
        };
        assert_eq!(reader.status, 200, "{id} after {} events", events.len());
        while let Some(event) = reader.next().await {
            let terminal = event.is_terminal();
            events.push(event);
            if terminal {
                assert!(reader.next().await.is_none(), "nothing follows the terminal event");
                return Followed { events, moved };
            }
        }
        moved += 1;
    }
    panic!("stream {id} never ended: {:?}", kinds(&events));
}

#[tokio::test]
async fn sigterm_of_each_process_in_turn_under_load_ends_every_stream_once_without_gap_or_duplicate() {
    let deployment = Deployment::new(&redis_url(), 60);
    let mut processes = deployment.processes(3).await;
    let proxy = RoundRobinProxy::start(processes.iter().map(|p| p.addr).collect()).await;
    let deploying = tokio_util::sync::CancellationToken::new();
    // 24 learners, each starting stream after stream (about 2 s each) until the deploy is over.
    let learners = (0..24u64).map(|learner| {
        let (proxy, deploying) = (&proxy, deploying.clone());
        async move {
            let mut followed = Vec::new();
            for round in 0.. {
                if deploying.is_cancelled() && round > 0 {
                    break;
                }
                let id = start_through(proxy, learner * 1000 + round).await;
                followed.push(follow_through(proxy, &id).await);
            }
            followed
        }
    });
    let deploy = async {
        for slot in 0..processes.len() {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            processes[slot].terminate();
            let exit = tokio::time::timeout(PATIENCE, processes[slot].child.wait()).await.expect("the process exits");
            assert!(exit.unwrap().success(), "a SIGTERMed process exits cleanly");
            processes[slot] = deployment.process().await;
            proxy.set_backends(processes.iter().map(|p| p.addr).collect());
        }
        deploying.cancel();
    };
    let (outcomes, ()) = tokio::join!(join_all(learners), deploy);
    let all: Vec<Followed> = outcomes.into_iter().flatten().collect();
    let (mut lost, mut moved) = (0, 0);
    for followed in &all {
        assert_contiguous(&followed.events, 0);
        let last = followed.events.last().unwrap();
        match last.kind() {
            "complete" => assert_eq!(last.data["result"]["markdown"], text_of(&followed.events)),
            _ => {
                assert_generation_lost(last, "shutting down");
                assert!(!last.id.is_empty(), "a generation's end on shutdown is in its log");
                lost += 1;
            }
        }
        moved += followed.moved;
    }
    assert!(lost > 0, "some generations ran on a stopped process ({} streams)", all.len());
    assert!(moved > 0, "some readers were moved off a stopping process ({} streams)", all.len());
}

#[tokio::test]
async fn sigterm_closes_a_websocket_with_1012_after_the_events_it_had_and_the_stream_resumes_elsewhere() {
    let deployment = Deployment::new(&redis_url(), 40);
    let [generator, stopping]: [LiveAiProcess; 2] = deployment.processes(2).await.try_into().ok().unwrap();
    let id = generator.create_stream("explain-eli10", json!({"topic": "tides"})).await;
    let mut socket = stopping.ws().await;
    socket.send(json!({"type": "resume", "stream_id": id, "after": null})).await;
    let mut events = Vec::new();
    while events.len() < 3 {
        events.push(Received { id: String::new(), data: socket.next().await });
    }
    stopping.terminate();
    let close = loop {
        let frame = tokio::time::timeout(PATIENCE, futures::StreamExt::next(&mut socket.socket)).await.expect("a frame in time");
        match frame.expect("the socket closes with a frame").expect("a clean close") {
            tokio_tungstenite::tungstenite::Message::Text(text) => {
                events.push(Received { id: String::new(), data: serde_json::from_str(&text).unwrap() })
            }
            tokio_tungstenite::tungstenite::Message::Close(frame) => break frame,
            _ => {}
        }
    };
    assert_eq!(u16::from(close.expect("a close code").code), 1012, "service restart: resume elsewhere");
    assert!(!events.last().unwrap().is_terminal(), "the stream goes on elsewhere");
    let after = events.last().unwrap().seq().to_string();
    let rest = generator.sse(&format!("/api/streams/{id}/events?after={after}"), &[]).await.until_terminal().await;
    events.extend(rest);
    assert_contiguous(&events, 0);
    assert_eq!(events.last().unwrap().kind(), "complete");
}

#[tokio::test]
async fn sigterm_in_redis_mode_ends_its_generations_for_readers_everywhere_and_hands_other_readers_off() {
    let deployment = Deployment::new(&redis_url(), 20);
    let [stopping, staying]: [LiveAiProcess; 2] = deployment.processes(2).await.try_into().ok().unwrap();
    let generated_here = stopping.create_stream("explain-eli10", json!({"topic": "moths"})).await;
    let generated_there = staying.create_stream("explain-eli10", json!({"topic": "bats"})).await;
    // On the stopping process: a reader of each; on the other, a reader of the one that will be lost.
    let (mut own, mut other, mut elsewhere) =
        (stopping.events_of(&generated_here).await, stopping.events_of(&generated_there).await, staying.events_of(&generated_here).await);
    let (mut own_events, mut other_events, mut elsewhere_events) = (own.take(2).await, other.take(2).await, elsewhere.take(2).await);
    stopping.terminate();
    // Its generation ends generation_lost, logged, for its reader there (before the listeners stop) and everywhere.
    own_events.extend(own.until_terminal().await);
    assert_contiguous(&own_events, 0);
    assert_generation_lost(own_events.last().unwrap(), "shutting down");
    elsewhere_events.extend(terminal_within(&mut elsewhere, PATIENCE).await);
    assert_eq!(elsewhere_events.last().unwrap().data, own_events.last().unwrap().data);
    // The reader of a stream generated elsewhere gets what the process had, then its response ends.
    while let Some(event) = other.next().await {
        assert!(!event.is_terminal(), "the stream goes on elsewhere");
        other_events.push(event);
    }
    let last = other_events.last().unwrap().id.clone();
    other_events
        .extend(staying.sse(&format!("/api/streams/{generated_there}/events"), &[("last-event-id", &last)]).await.until_terminal().await);
    assert_contiguous(&other_events, 0);
    assert_eq!(other_events.last().unwrap().kind(), "complete");
}

/// What each process's announcement channel carried, as a raw subscriber saw
/// it: `(channel, stream id, seq)` in arrival order.
pub struct AnnouncementWatch {
    messages: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    pub seen: Vec<(String, String, u64)>,
    _keep: Box<dyn std::any::Any + Send>,
}

impl AnnouncementWatch {
    /// Every process channel of the deployment under `prefix` on one node (a pattern subscription).
    pub async fn on_node(url: &str, prefix: &str) -> Self {
        let mut pubsub = redis::Client::open(url).unwrap().get_async_pubsub().await.unwrap();
        pubsub.psubscribe(format!("{prefix}:events:*")).await.unwrap();
        let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            use futures::StreamExt;
            let mut stream = pubsub.on_message();
            while let Some(message) = stream.next().await {
                let _ = tx.send((message.get_channel_name().to_owned(), message.get_payload_bytes().to_vec()));
            }
        });
        Self { messages, seen: Vec::new(), _keep: Box::new(AbortOnDrop(task)) }
    }

    /// The given channels of a cluster (sharded pub/sub cannot match patterns).
    pub async fn on_cluster(urls: &[String], channels: &[String]) -> Self {
        let (push, mut pushes) = tokio::sync::mpsc::unbounded_channel();
        let client = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push)
            .build()
            .unwrap();
        let mut conn = client.get_async_connection().await.unwrap();
        for channel in channels {
            conn.ssubscribe(channel).await.unwrap();
        }
        let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(push) = pushes.recv().await {
                if push.kind != redis::PushKind::SMessage {
                    continue;
                }
                if let [redis::Value::BulkString(channel), redis::Value::BulkString(payload)] = &push.data[..] {
                    let _ = tx.send((String::from_utf8_lossy(channel).into_owned(), payload.clone()));
                }
            }
        });
        Self { messages, seen: Vec::new(), _keep: Box::new((AbortOnDrop(task), conn)) }
    }

    /// Reads until `channel_of` some record is `(stream, seq)`; returns the channel.
    pub async fn until(&mut self, stream: &str, seq: u64) -> String {
        loop {
            let (channel, payload) = tokio::time::timeout(Duration::from_secs(15), self.messages.recv()).await.expect("announced").unwrap();
            let mut found = false;
            for (id, at) in announced_records(&payload) {
                found |= id == stream && at == seq;
                self.seen.push((channel.clone(), id, at));
            }
            if found {
                return channel;
            }
        }
    }

    /// Reads until some event of `stream` has been announced, if none has yet.
    pub async fn until_any(&mut self, stream: &str) {
        while !self.seen.iter().any(|(_, id, _)| id == stream) {
            let (channel, payload) = tokio::time::timeout(Duration::from_secs(15), self.messages.recv()).await.expect("announced").unwrap();
            for (id, at) in announced_records(&payload) {
                self.seen.push((channel.clone(), id, at));
            }
        }
    }

    /// The channels that carried events of `stream`.
    pub fn channels_of(&self, stream: &str) -> std::collections::BTreeSet<String> {
        self.seen.iter().filter(|(_, id, _)| id == stream).map(|(channel, _, _)| channel.clone()).collect()
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `(stream id, seq)` of each event record of an announcement message (the
/// store's `announce.rs` format); nudges are left out.
fn announced_records(mut rest: &[u8]) -> Vec<(String, u64)> {
    let mut records = Vec::new();
    while let Some(&id_len) = rest.first() {
        let id = String::from_utf8_lossy(&rest[1..1 + id_len as usize]).into_owned();
        rest = &rest[1 + id_len as usize..];
        let seq = u64::from_be_bytes(rest[..8].try_into().unwrap());
        let type_len = rest[8] as usize;
        let kind = &rest[9..9 + type_len];
        rest = &rest[9 + type_len..];
        let fields_len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        rest = &rest[4 + fields_len..];
        if !kind.starts_with(b"+") {
            records.push((id, seq));
        }
    }
    records
}

/// Runs the scenario on a deployment of three processes: one generates two
/// streams, another reads the first, the third only the second, at the same
/// time. The streams are slow (see the callers), so each reader's process
/// follows its stream long before it could end: once an announcement of each
/// has been seen, both are cancelled, and the watch reads until their terminal
/// events, after anything of either that could have been sent anywhere.
/// (Streams left to end by themselves made the outcome depend on timing: a
/// reader whose follow notice reached the generator after the end reads the
/// log, and nothing of its stream is announced at all.) Returns the channels
/// each stream's events went to.
pub async fn announce_only_where_read<F: std::future::Future<Output = AnnouncementWatch>>(
    deployment: &Deployment,
    watch: impl FnOnce() -> F,
) -> (std::collections::BTreeSet<String>, std::collections::BTreeSet<String>) {
    let [generator, reading, idle]: [LiveAiProcess; 3] = deployment.processes(3).await.try_into().ok().unwrap();
    let mut watch = watch().await;
    let other = generator.create_stream("explain-eli10", json!({"topic": "moons"})).await;
    let other_reader = idle.events_of(&other).await;
    let read = generator.create_stream("explain-eli10", json!({"topic": "tides"})).await;
    let reader = reading.events_of(&read).await;
    watch.until_any(&other).await;
    watch.until_any(&read).await;
    for (id, mut reader) in [(&other, other_reader), (&read, reader)] {
        let response: Value = generator.delete(&format!("/api/streams/{id}")).await.json().await.unwrap();
        assert_eq!(response["state"], "cancelled", "{id} was still live: {response}");
        let terminal = reader.until_terminal().await.pop().unwrap();
        assert_eq!(terminal.kind(), "cancelled");
        watch.until(id, terminal.seq()).await;
    }
    (watch.channels_of(&read), watch.channels_of(&other))
}

#[tokio::test]
async fn a_streams_events_are_announced_only_on_the_channel_of_the_process_serving_its_reader() {
    // Streams of about 26 s each, cancelled once followed.
    let deployment = Deployment::new(&redis_url(), 5);
    let prefix = deployment.var("REDIS_KEY_PREFIX").unwrap();
    let url = redis_url();
    let (read, later) = announce_only_where_read(&deployment, || AnnouncementWatch::on_node(&url, &prefix)).await;
    assert_eq!(read.len(), 1, "one process read the first stream: {read:?}");
    assert_eq!(later.len(), 1, "one process read the second stream: {later:?}");
    assert_ne!(read, later, "the process reading only the second stream was sent none of the first");
}
