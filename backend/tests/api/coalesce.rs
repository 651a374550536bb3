//! A class asks at once (coalescing): identical requests in one scope share one
//! generation, and a finished answer is served again without the model — each
//! learner keeping a stream of their own. Real servers, real HTTP/SSE/WebSocket
//! clients; the model is a fake OpenAI server replaying a byte-exact transcript
//! (its connections are the provider requests made), or the paced demo model.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};

use crate::fake_upstream::{fixture, FakeUpstream, Reply};
use crate::helpers::*;

/// The JWT claim naming a learner's class, as the host app mints it.
const SCOPE_CLAIM: &str = "class_id";

/// A learner's token in class `class` (no class claim when `None`).
fn learner_in(sub: &str, class: Option<&str>) -> String {
    let mut claims = json!({"sub": sub, "exp": now_secs() + 600, "iss": "https://learn.example", "aud": "live-ai"});
    if let Some(class) = class {
        claims[SCOPE_CLAIM] = json!(class);
    }
    sign_hs256(&claims, JWT_SECRET)
}

/// Settings of a server whose learners share answers within their class.
fn class_settings<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut vars = jwt_mode();
    vars.push(("COALESCE_SCOPE_CLAIM", SCOPE_CLAIM));
    vars.extend_from_slice(extra);
    vars
}

/// A fake OpenAI server whose every answer begins after `delay`: a generation
/// stays in flight that long, so the starts a test makes meanwhile find it running.
async fn slow_model(delay: Duration) -> FakeUpstream {
    FakeUpstream::start(vec![Reply::sse(fixture("openai_chat_stream.sse")).after(delay)]).await
}

fn openai_settings(upstream: &FakeUpstream) -> Vec<(&'static str, String)> {
    vec![
        ("AI_PROVIDER", "openai"),
        ("OPENAI_BASE_URL", format!("{}/v1", upstream.url()).leak()),
        ("OPENAI_API_KEY", "sk-test-0123456789abcdef"),
        ("AI_MODEL", "gpt-test"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect()
}

/// A server of learners in classes, answering with the fake model `upstream`.
async fn class_app(upstream: &FakeUpstream, extra: &[(&str, &str)]) -> TestApp {
    let openai = openai_settings(upstream);
    let mut vars: Vec<(&str, &str)> = openai.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.extend_from_slice(extra);
    spawn_app(&class_settings(&vars)).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `POST /api/streams` as `token`'s learner with `extra` body fields and headers; the 201 body.
async fn start(api: &ApiClient, token: &str, input: Value, extra: Value, headers: &[(&str, &str)]) -> Value {
    let mut body = json!({"block_type": "explain-eli10", "input": input});
    body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    let mut request = api.http.post(api.url("/api/streams")).bearer_auth(token).json(&body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    response.json().await.unwrap()
}

/// The whole stream `id` as `token`'s learner reads it, checked contiguous from 0.
async fn read_all(api: &ApiClient, token: &str, id: &str) -> Vec<Received> {
    let events = reader(api, token, id).await.until_terminal().await;
    assert_contiguous(&events, 0);
    events
}

async fn reader(api: &ApiClient, token: &str, id: &str) -> SseReader {
    api.sse(&format!("/api/streams/{id}/events"), &[("authorization", &bearer(token))]).await
}

fn topic() -> Value {
    json!({"topic": "why the sea is salty"})
}

fn id_of(created: &Value) -> &str {
    created["stream_id"].as_str().unwrap()
}

/// The `shared` and `cached` marks of a stream's `start` (absent counts as false).
fn marks(events: &[Received]) -> (bool, bool) {
    let start = &events[0].data;
    assert_eq!(start["type"], "start");
    (start["shared"] == true, start["cached"] == true)
}

async fn cancel(api: &ApiClient, token: &str, id: &str) {
    let response = api.http.delete(api.url(&format!("/api/streams/{id}"))).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn two_learners_of_one_class_asking_at_once_get_one_provider_request_and_the_same_answer() {
    let upstream = slow_model(Duration::from_millis(500)).await;
    let app = class_app(&upstream, &[]).await;
    let (ada, bo) = (learner_in("ada", Some("7b")), learner_in("bo", Some("7b")));
    let first = start(&app, &ada, topic(), json!({}), &[]).await;
    let second = start(&app, &bo, json!({"topic": "  why the sea   is salty "}), json!({}), &[]).await;
    assert_ne!(first["stream_id"], second["stream_id"], "each learner has a stream of their own");
    assert_ne!(first["read_token"], second["read_token"]);
    let (a, b) = tokio::join!(read_all(&app, &ada, id_of(&first)), read_all(&app, &bo, id_of(&second)));
    assert_eq!(marks(&a), (false, false), "the first learner's generation is their own");
    assert_eq!(marks(&b), (true, false), "the second joined it");
    assert_eq!((a.last().unwrap().kind(), b.last().unwrap().kind()), ("complete", "complete"));
    assert!(!text_of(&a).is_empty());
    assert_eq!(text_of(&a), text_of(&b));
    assert_eq!(a.last().unwrap().data["result"], b.last().unwrap().data["result"]);
    assert_eq!(upstream.connections(), 1, "one provider request for both");
    assert_eq!(app.metric("live_ai_coalesce_joins_total", &["block=\"explain-eli10\""]).await, 1.0);
    assert_eq!(app.metric("live_ai_shared_generations_total", &["block=\"explain-eli10\""]).await, 1.0);
    // Each stream is its learner's alone: the other learner cannot read it.
    let foreign = reader(&app, &ada, id_of(&second)).await.until_terminal().await;
    assert_eq!(foreign[0].data["code"], "stream_not_found");
}

#[tokio::test]
async fn a_late_joiner_gets_the_answer_from_its_first_chunk_then_the_live_tail_on_sse_and_websocket() {
    let app = spawn_app(&class_settings(&[("DEMO_TOKENS_PER_SECOND", "60")])).await;
    let (ada, bo, cy) = (learner_in("ada", Some("7b")), learner_in("bo", Some("7b")), learner_in("cy", Some("7b")));
    let first = start(&app, &ada, topic(), json!({}), &[]).await;
    let mut first_reader = reader(&app, &ada, id_of(&first)).await;
    // The shared answer is under way before the others ask.
    let opening = first_reader.take(4).await;
    assert_eq!(kinds(&opening), ["start", "chunk", "chunk", "chunk"]);
    let second = start(&app, &bo, topic(), json!({}), &[]).await;
    let mut ws = app.ws_with(&[("authorization", &bearer(&cy))]).await.unwrap();
    ws.send(json!({"type": "start", "block_type": "explain-eli10", "input": topic(), "ref": "cy-1"})).await;
    let ws_start = ws.next().await;
    assert_eq!(
        (ws_start["type"].as_str(), ws_start["ref"].as_str(), ws_start["shared"].as_bool()),
        (Some("start"), Some("cy-1"), Some(true))
    );
    let ws_id = ws_start["stream_id"].as_str().unwrap().to_owned();
    let mut ws_events = vec![Received { id: String::new(), data: ws_start }];
    ws_events.extend(ws.until_terminal(&ws_id, &mut Vec::new()).await);
    let mut a = opening;
    a.extend(first_reader.until_terminal().await);
    let b = read_all(&app, &bo, id_of(&second)).await;
    assert_contiguous(&a, 0);
    assert_contiguous(&ws_events, 0);
    assert_eq!(marks(&b), (true, false));
    assert_eq!(text_of(&b), text_of(&a), "from the first chunk, no gap, no duplicate");
    assert_eq!(text_of(&ws_events), text_of(&a));
    assert_eq!(app.metric("live_ai_stream_outcomes_total", &[]).await, 1.0, "one generation in all");
    assert_eq!(app.metric("live_ai_coalesce_joins_total", &[]).await, 2.0);
}

#[tokio::test]
async fn learners_of_other_classes_without_a_class_or_asking_with_a_context_get_generations_of_their_own() {
    let upstream = slow_model(Duration::from_millis(500)).await;
    let app = class_app(&upstream, &[]).await;
    let (ada, bo) = (learner_in("ada", Some("7b")), learner_in("bo", Some("7b")));
    let (cy, dee, eve) = (learner_in("cy", Some("8a")), learner_in("dee", None), learner_in("eve", None));
    let ask = |question: &str, context: Option<&str>| {
        let mut input = json!({"question": question});
        if let Some(context) = context {
            input["context"] = json!(context);
        }
        json!({"block_type": "ask-question", "input": input})
    };
    let question = "Why is the sea salty?";
    let starts = [
        (&ada, ask(question, None)),
        (&bo, ask(question, None)),              // joins ada: same class
        (&cy, ask(question, None)),              // another class
        (&dee, ask(question, None)),             // no class: alone
        (&eve, ask(question, None)),             // no class: alone, not with dee
        (&ada, ask(question, Some("Lesson 3"))), // a context is never shared
        (&bo, ask(question, Some("Lesson 3"))),
    ];
    let mut streams = Vec::new();
    for (token, body) in &starts {
        let response = app.http.post(app.url("/api/streams")).bearer_auth(token).json(body).send().await.unwrap();
        assert_eq!(response.status(), 201);
        let created: Value = response.json().await.unwrap();
        streams.push(((*token).clone(), id_of(&created).to_owned()));
    }
    let read = streams.iter().map(|(token, id)| read_all(&app, token, id));
    let all = join_all(read).await;
    let shared: Vec<bool> = all.iter().map(|events| marks(events).0).collect();
    assert_eq!(shared, [false, true, false, false, false, false, false]);
    assert!(all.iter().all(|events| events.last().unwrap().kind() == "complete"));
    assert_eq!(upstream.connections(), 6, "one request per scope and per question with a context");
}

#[tokio::test]
async fn a_joiner_who_cancels_stops_only_their_own_view_of_the_answer() {
    let app = spawn_app(&class_settings(&[("DEMO_TOKENS_PER_SECOND", "60")])).await;
    let (ada, bo) = (learner_in("ada", Some("7b")), learner_in("bo", Some("7b")));
    let first = start(&app, &ada, topic(), json!({}), &[]).await;
    let second = start(&app, &bo, topic(), json!({}), &[]).await;
    let mut a = reader(&app, &ada, id_of(&first)).await;
    let mut b = reader(&app, &bo, id_of(&second)).await;
    let b_opening = b.take(3).await;
    assert_eq!(marks(&b_opening), (true, false));
    let mut a_events = a.take(3).await;
    cancel(&app, &bo, id_of(&second)).await;
    let b_rest = b.until_terminal().await;
    assert_eq!(b_rest.last().unwrap().data["reason"], "requested", "the joiner's own view stopped");
    a_events.extend(a.until_terminal().await);
    assert_contiguous(&a_events, 0);
    assert_eq!(a_events.last().unwrap().kind(), "complete", "the first asker's stream went on to the end");
    app.wait_for_metric("live_ai_stream_outcomes_total", &["outcome=\"complete\""], |done| done == 1.0).await;
    assert_eq!(app.metric("live_ai_stream_outcomes_total", &[]).await, 1.0, "the one generation completed");
}

#[tokio::test]
async fn a_first_asker_who_cancels_mid_answer_ends_her_own_stream_while_the_joiner_gets_the_whole_answer_which_is_served_next() {
    let app = spawn_app(&class_settings(&[("DEMO_TOKENS_PER_SECOND", "60")])).await;
    let (ada, bo, cy) = (learner_in("ada", Some("7b")), learner_in("bo", Some("7b")), learner_in("cy", Some("7b")));
    let first = start(&app, &ada, topic(), json!({}), &[]).await;
    let second = start(&app, &bo, topic(), json!({}), &[]).await;
    let mut a = reader(&app, &ada, id_of(&first)).await;
    let mut b = reader(&app, &bo, id_of(&second)).await;
    let mut b_events = b.take(3).await;
    assert_eq!(marks(&b_events), (true, false));
    let mut a_events = a.take(3).await;
    cancel(&app, &ada, id_of(&first)).await;
    a_events.extend(a.until_terminal().await);
    assert_contiguous(&a_events, 0);
    let last = a_events.last().unwrap();
    assert_eq!((last.kind(), last.data["reason"].as_str()), ("cancelled", Some("requested")), "her own stream ends as she asked");
    b_events.extend(b.until_terminal().await);
    assert_contiguous(&b_events, 0);
    let last = b_events.last().unwrap();
    assert_eq!(last.kind(), "complete", "the other learner's stream went on to the end");
    assert!(!text_of(&b_events).is_empty());
    assert_eq!(last.data["result"]["markdown"], text_of(&b_events), "the whole answer, no gap, no duplicate");
    // The answer, handed over whole, is what the class is served next.
    let third = start(&app, &cy, topic(), json!({}), &[]).await;
    let c_events = read_all(&app, &cy, id_of(&third)).await;
    assert_eq!((marks(&c_events), text_of(&c_events)), ((false, true), text_of(&b_events)));
    app.wait_for_metric("live_ai_stream_outcomes_total", &["outcome=\"complete\""], |done| done == 1.0).await;
    assert_eq!(app.metric("live_ai_stream_outcomes_total", &[]).await, 1.0, "one generation, which completed");
    // The joiner reads their own stream only: the first asker's is not theirs.
    let foreign = reader(&app, &bo, id_of(&first)).await.until_terminal().await;
    assert_eq!(foreign[0].data["code"], "stream_not_found");
}

#[tokio::test]
async fn a_first_asker_who_cancels_after_a_fresh_start_took_the_question_still_hands_her_answer_whole_to_its_joiner() {
    let app = spawn_app(&class_settings(&[("DEMO_TOKENS_PER_SECOND", "60")])).await;
    let (ada, bo, cy) = (learner_in("ada", Some("7b")), learner_in("bo", Some("7b")), learner_in("cy", Some("7b")));
    let first = start(&app, &ada, topic(), json!({}), &[]).await;
    let second = start(&app, &bo, topic(), json!({}), &[]).await;
    let mut b = reader(&app, &bo, id_of(&second)).await;
    let mut b_events = b.take(3).await;
    assert_eq!(marks(&b_events), (true, false));
    // Cy asks afresh: a generation of her own, which the class's next starts get.
    let third = start(&app, &cy, topic(), json!({"fresh": true}), &[]).await;
    cancel(&app, &ada, id_of(&first)).await;
    b_events.extend(b.until_terminal().await);
    assert_contiguous(&b_events, 0);
    let last = b_events.last().unwrap();
    assert_eq!(last.kind(), "complete", "the joiner of the first answer still got it to the end");
    assert_eq!(last.data["result"]["markdown"], text_of(&b_events), "the whole answer, no gap, no duplicate");
    let c_events = read_all(&app, &cy, id_of(&third)).await;
    assert_eq!((marks(&c_events), c_events.last().unwrap().kind()), ((false, false), "complete"), "her own generation");
    app.wait_for_metric("live_ai_stream_outcomes_total", &["outcome=\"complete\""], |done| done == 2.0).await;
}

#[tokio::test]
async fn at_a_grace_of_zero_a_first_asker_who_leaves_while_others_read_leaves_the_whole_answer_to_the_class_and_to_her_own_stream() {
    let app = spawn_app(&class_settings(&[("DEMO_TOKENS_PER_SECOND", "40"), ("STREAM_RESUME_GRACE_SECONDS", "0")])).await;
    let (ada, bo) = (learner_in("ada", Some("7b")), learner_in("bo", Some("7b")));
    let first = start(&app, &ada, topic(), json!({}), &[]).await;
    let second = start(&app, &bo, topic(), json!({}), &[]).await;
    let mut a = reader(&app, &ada, id_of(&first)).await;
    let mut b = reader(&app, &bo, id_of(&second)).await;
    assert_eq!(kinds(&a.take(3).await), ["start", "chunk", "chunk"]);
    let mut b_events = b.take(3).await;
    assert_eq!(marks(&b_events), (true, false));
    drop(a);
    b_events.extend(b.until_terminal().await);
    assert_contiguous(&b_events, 0);
    assert_eq!(b_events.last().unwrap().kind(), "complete", "the learner still reading got the whole answer");
    assert_eq!(app.metric("live_ai_shared_generations_total", &["block=\"explain-eli10\""]).await, 1.0);
    app.wait_for_metric("live_ai_stream_outcomes_total", &["outcome=\"complete\""], |done| done == 1.0).await;
    // The first asker's stream is the class's answer: the other learner's
    // relay reads it, so it was not abandoned when she left, even at a grace
    // of zero (when a shared log of its own was the answer, her stream ended
    // `cancelled`/`abandoned` as she left). It ran to its end: she resumes it whole.
    let rest = app
        .sse(&format!("/api/streams/{}/events?after=2", id_of(&first)), &[("authorization", &bearer(&ada))])
        .await
        .until_terminal()
        .await;
    assert_eq!(rest[0].seq(), 3);
    assert_eq!(rest.last().unwrap().kind(), "complete");
}

#[tokio::test]
async fn when_every_learner_has_cancelled_the_shared_generation_stops_and_its_upstream_request_closes() {
    let upstream = FakeUpstream::start(vec![Reply::sse(fixture("openai_chat_stream.sse")).stall_after(3)]).await;
    // Async moderation: the chunks before the stall reach the readers.
    let app = class_app(&upstream, &[("MODERATION_OUTPUT_MODE", "async")]).await;
    let (ada, bo) = (learner_in("ada", Some("7b")), learner_in("bo", Some("7b")));
    let first = start(&app, &ada, topic(), json!({}), &[]).await;
    let second = start(&app, &bo, topic(), json!({}), &[]).await;
    let (mut a, mut b) = (reader(&app, &ada, id_of(&first)).await, reader(&app, &bo, id_of(&second)).await);
    assert_eq!(kinds(&a.take(2).await), ["start", "chunk"]);
    assert_eq!(kinds(&b.take(2).await), ["start", "chunk"]);
    cancel(&app, &ada, id_of(&first)).await;
    assert_eq!(a.until_terminal().await.last().unwrap().kind(), "cancelled");
    cancel(&app, &bo, id_of(&second)).await;
    assert_eq!(b.until_terminal().await.last().unwrap().kind(), "cancelled");
    tokio::time::timeout(PATIENCE, upstream.closed(0)).await.expect("the upstream request is closed once nobody reads the answer");
    app.wait_for_metric("live_ai_provider_streams_open", &[], |open| open == 0.0).await;
    assert_eq!(upstream.connections(), 1, "the two learners shared one request");
}

#[tokio::test]
async fn a_finished_answer_is_replayed_to_an_identical_request_without_asking_the_model() {
    let upstream = slow_model(Duration::ZERO).await;
    let app = class_app(&upstream, &[]).await;
    let (ada, bo) = (learner_in("ada", Some("7b")), learner_in("bo", Some("7b")));
    let first = start(&app, &ada, topic(), json!({}), &[]).await;
    let a = read_all(&app, &ada, id_of(&first)).await;
    assert_eq!(a.last().unwrap().kind(), "complete");
    let again = start(&app, &bo, topic(), json!({}), &[]).await;
    let b = read_all(&app, &bo, id_of(&again)).await;
    assert_eq!(marks(&b), (false, true));
    assert_eq!(kinds(&b), kinds(&a), "the whole answer, event for event");
    assert_eq!(text_of(&b), text_of(&a));
    assert_eq!(b.last().unwrap().data["usage"], a.last().unwrap().data["usage"]);
    assert_eq!(upstream.connections(), 1, "no provider request for the replay");
    assert_eq!(app.metric("live_ai_coalesce_cache_hits_total", &["block=\"explain-eli10\""]).await, 1.0);
    let total = a.last().unwrap().data["usage"]["total_tokens"].as_f64().unwrap();
    assert!(total > 0.0);
    assert_eq!(app.metric("live_ai_coalesce_tokens_saved_total", &["block=\"explain-eli10\""]).await, total);
    // Its own stream: resumable from the middle like any other.
    let resumed = app.sse(&format!("/api/streams/{}/events?after=2", id_of(&again)), &[("authorization", &bearer(&bo))]).await;
    let resumed = { resumed }.until_terminal().await;
    assert_eq!(resumed[0].seq(), 3);
}

#[tokio::test]
async fn a_fresh_start_or_no_cache_asks_the_model_again_over_http_and_websocket() {
    let upstream = slow_model(Duration::ZERO).await;
    let app = class_app(&upstream, &[]).await;
    let ada = learner_in("ada", Some("7b"));
    let first = start(&app, &ada, topic(), json!({}), &[]).await;
    read_all(&app, &ada, id_of(&first)).await;
    // The control: without asking for a fresh answer, the finished one is replayed.
    let cached = start(&app, &ada, topic(), json!({}), &[]).await;
    assert_eq!(marks(&read_all(&app, &ada, id_of(&cached)).await), (false, true));
    assert_eq!(upstream.connections(), 1);
    let fresh = start(&app, &ada, topic(), json!({"fresh": true}), &[]).await;
    let events = read_all(&app, &ada, id_of(&fresh)).await;
    assert_eq!((marks(&events), events.last().unwrap().kind()), ((false, false), "complete"));
    assert_eq!(upstream.connections(), 2, "fresh: true asked the model");
    let no_cache = start(&app, &ada, topic(), json!({}), &[("cache-control", "no-cache")]).await;
    assert_eq!(marks(&read_all(&app, &ada, id_of(&no_cache)).await), (false, false));
    assert_eq!(upstream.connections(), 3, "Cache-Control: no-cache asked the model");
    // The one-shot GET ignores Cache-Control, which every native EventSource sends:
    // with it the answer is still replayed; `fresh=true` in the query asks anew.
    let one_shot = app
        .sse(
            &format!("/api/stream/ai-block/explain-eli10?{}", as_query(&topic())),
            &[("authorization", &bearer(&ada)), ("cache-control", "no-cache")],
        )
        .await;
    assert_eq!(marks(&{ one_shot }.until_terminal().await), (false, true));
    assert_eq!(upstream.connections(), 3, "an EventSource's no-cache did not ask the model");
    let one_shot = app
        .sse(&format!("/api/stream/ai-block/explain-eli10?{}&fresh=true", as_query(&topic())), &[("authorization", &bearer(&ada))])
        .await;
    assert_eq!(marks(&{ one_shot }.until_terminal().await), (false, false));
    assert_eq!(upstream.connections(), 4, "the one-shot GET with fresh=true did");
    let mut ws = app.ws_with(&[("authorization", &bearer(&ada))]).await.unwrap();
    ws.send(json!({"type": "start", "block_type": "explain-eli10", "input": topic(), "ref": "r1", "fresh": true})).await;
    let ws_start = ws.next().await;
    assert_eq!((ws_start["type"].as_str(), ws_start.get("cached")), (Some("start"), None));
    ws.until_terminal(ws_start["stream_id"].as_str().unwrap(), &mut Vec::new()).await;
    assert_eq!(upstream.connections(), 5, "so did a WebSocket start with fresh: true");
    // A fresh answer becomes the one served next.
    let after = start(&app, &ada, topic(), json!({}), &[]).await;
    assert_eq!(marks(&read_all(&app, &ada, id_of(&after)).await), (false, true));
    assert_eq!(upstream.connections(), 5);
}

#[tokio::test]
async fn a_failed_answer_is_never_served_again() {
    let failure = r#"{"error":{"message":"The server had an error","type":"server_error"}}"#;
    let upstream = FakeUpstream::start(vec![Reply::status(500, &[], failure.into()), Reply::sse(fixture("openai_chat_stream.sse"))]).await;
    let app = class_app(&upstream, &[]).await;
    let (ada, bo) = (learner_in("ada", Some("7b")), learner_in("bo", Some("7b")));
    let first = start(&app, &ada, topic(), json!({}), &[]).await;
    let failed = read_all(&app, &ada, id_of(&first)).await;
    assert_eq!((failed.last().unwrap().kind(), failed.last().unwrap().data["code"].as_str()), ("error", Some("provider_error")));
    let retry = start(&app, &bo, topic(), json!({}), &[]).await;
    let answered = read_all(&app, &bo, id_of(&retry)).await;
    assert_eq!((marks(&answered), answered.last().unwrap().kind()), ((false, false), "complete"));
    assert_eq!(upstream.connections(), 2, "the error was not replayed: the model was asked again");
    // The control: the complete answer is what is served next.
    let third = start(&app, &ada, topic(), json!({}), &[]).await;
    assert_eq!(marks(&read_all(&app, &ada, id_of(&third)).await), (false, true));
}

#[tokio::test]
async fn a_question_the_local_filter_flags_at_once_ends_input_flagged_for_every_learner_asking_it_and_is_never_replayed() {
    let app = spawn_app(&class_settings(&[])).await;
    let learners: Vec<String> = (0..4).map(|n| learner_in(&format!("learner-{n}"), Some("7b"))).collect();
    let flagged = json!({"topic": "f u c k this"});
    let starts = learners.iter().map(|token| start(&app, token, flagged.clone(), json!({}), &[]));
    let created = join_all(starts).await;
    let reads = learners.iter().zip(&created).map(|(token, created)| read_all(&app, token, created["stream_id"].as_str().unwrap()));
    for events in join_all(reads).await {
        assert_eq!(kinds(&events), ["start", "error"], "each stream begins with its own start");
        let error = &events[1].data;
        assert_eq!((error["code"].as_str(), error["retryable"].as_bool()), (Some("input_flagged"), Some(false)));
    }
    // Asked again afterwards: checked again (a new generation), never a replay.
    let again = start(&app, &learners[0], flagged, json!({}), &[]).await;
    let events = read_all(&app, &learners[0], id_of(&again)).await;
    assert_eq!((marks(&events), events[1].data["code"].as_str()), ((false, false), Some("input_flagged")));
    let generations = app.metric("live_ai_shared_generations_total", &[]).await;
    let checked = app.metric("live_ai_moderation_checks_total", &["stage=\"input\""]).await;
    assert_eq!(checked, generations, "moderation ran once per shared generation, not once per learner");
    assert!((2.0..=5.0).contains(&generations), "{generations}");
}

#[tokio::test]
async fn a_joined_stream_counts_against_the_learners_limits_and_budget_as_if_generated_alone() {
    let app = spawn_app(&class_settings(&[("DEMO_TOKENS_PER_SECOND", "60"), ("LIMIT_CONCURRENT_STREAMS", "1")])).await;
    let (ada, bo) = (learner_in("ada", Some("7b")), learner_in("bo", Some("7b")));
    let first = start(&app, &ada, topic(), json!({}), &[]).await;
    let joined = start(&app, &bo, topic(), json!({}), &[]).await;
    // Bo's joined stream holds Bo's one slot, as any start does.
    let refused = app.start_as(&bo, "explain-eli10", topic()).await;
    let problem = assert_problem(refused, 429, "rate_limited").await;
    assert!(problem["detail"].as_str().unwrap_or_default().contains("at once") || problem.to_string().contains("at once"), "{problem}");
    let (a, b) = tokio::join!(read_all(&app, &ada, id_of(&first)), read_all(&app, &bo, id_of(&joined)));
    assert_eq!(marks(&b), (true, false));
    let used = a.last().unwrap().data["usage"]["completion_tokens"].as_u64().unwrap();
    for token in [&ada, &bo] {
        let usage = usage_of(&app, token, |u| u["active_streams"] == 0).await;
        assert_eq!(usage["tokens_used_today"].as_u64(), Some(used), "each charged the whole answer: {usage}");
    }
}

/// `GET /api/usage` as `token`'s learner, once `ready` holds for it.
async fn usage_of(api: &ApiClient, token: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let usage: Value = api.http.get(api.url("/api/usage")).bearer_auth(token).send().await.unwrap().json().await.unwrap();
        if ready(&usage) {
            return usage;
        }
        assert!(tokio::time::Instant::now() < deadline, "usage never settled: {usage}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn with_coalesce_off_every_start_generates() {
    let upstream = slow_model(Duration::from_millis(300)).await;
    let app = class_app(&upstream, &[("COALESCE", "off")]).await;
    let (ada, bo) = (learner_in("ada", Some("7b")), learner_in("bo", Some("7b")));
    let (first, second) = tokio::join!(start(&app, &ada, topic(), json!({}), &[]), start(&app, &bo, topic(), json!({}), &[]));
    let (a, b) = tokio::join!(read_all(&app, &ada, id_of(&first)), read_all(&app, &bo, id_of(&second)));
    assert_eq!((marks(&a), marks(&b)), ((false, false), (false, false)));
    let again = start(&app, &ada, topic(), json!({}), &[]).await;
    assert_eq!(marks(&read_all(&app, &ada, id_of(&again)).await), (false, false));
    assert_eq!(upstream.connections(), 3);
}

/// Three processes of a class deployment on the Redis of `store` (settings),
/// answering with the fake model `upstream`.
async fn class_processes(store: Vec<(&'static str, String)>, upstream: &FakeUpstream) -> Vec<LiveAiProcess> {
    let mut vars = store;
    vars.extend(openai_settings(upstream));
    vars.extend(class_settings(&[]).into_iter().map(|(k, v)| (k, v.to_owned())));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    join_all((0..3).map(|_| LiveAiProcess::spawn(&vars))).await
}

/// Thirty learners of one class start at once, spread over three processes on
/// the Redis of `store` (settings), each reading on another process than the
/// one it started on: one provider request.
async fn thirty_starts_over_three_processes(store: Vec<(&'static str, String)>) {
    let upstream = slow_model(Duration::from_millis(1500)).await;
    let processes = class_processes(store, &upstream).await;
    let learners: Vec<String> = (0..30).map(|n| learner_in(&format!("learner-{n}"), Some("7b"))).collect();
    let starts = learners.iter().enumerate().map(|(n, token)| start(&processes[n % 3].api, token, topic(), json!({}), &[]));
    let created = join_all(starts).await;
    let reads =
        learners.iter().zip(&created).enumerate().map(|(n, (token, created))| read_all(&processes[(n + 1) % 3].api, token, id_of(created)));
    let all = join_all(reads).await;
    assert!(all.iter().all(|events| events.last().unwrap().kind() == "complete"), "every learner got the answer");
    let text = text_of(&all[0]);
    assert!(!text.is_empty() && all.iter().all(|events| text_of(events) == text));
    assert_eq!(all.iter().filter(|events| marks(events) == (false, false)).count(), 1, "one learner's start generated");
    assert_eq!(upstream.connections(), 1, "thirty starts, three processes, one provider request");
}

#[tokio::test]
async fn thirty_starts_over_three_processes_on_redis_make_one_provider_request() {
    thirty_starts_over_three_processes(redis_deployment(&fresh_prefix())).await;
}

#[tokio::test]
async fn thirty_starts_over_three_processes_on_a_redis_cluster_make_one_provider_request() {
    thirty_starts_over_three_processes(crate::cluster::cluster_deployment(&fresh_prefix())).await;
}

#[tokio::test]
async fn when_the_process_generating_a_shared_answer_dies_every_joined_learner_elsewhere_gets_generation_lost() {
    let upstream = FakeUpstream::start(vec![Reply::sse(fixture("openai_chat_stream.sse")).stall_after(3)]).await;
    let prefix = fresh_prefix();
    let mut vars: Vec<(&str, String)> = redis_deployment(&prefix);
    vars.extend(openai_settings(&upstream));
    // Async moderation: the chunks before the stall reach the readers.
    vars.extend(class_settings(&[("MODERATION_OUTPUT_MODE", "async")]).into_iter().map(|(k, v)| (k, v.to_owned())));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let generator = LiveAiProcess::spawn(&vars).await;
    let [b, c]: [LiveAiProcess; 2] = join_all((0..2).map(|_| LiveAiProcess::spawn(&vars))).await.try_into().ok().unwrap();
    let (ada, bo, cy) = (learner_in("ada", Some("7b")), learner_in("bo", Some("7b")), learner_in("cy", Some("7b")));
    start(&generator, &ada, topic(), json!({}), &[]).await;
    let joined = [start(&b, &bo, topic(), json!({}), &[]).await, start(&c, &cy, topic(), json!({}), &[]).await];
    let mut readers = vec![reader(&b, &bo, id_of(&joined[0])).await, reader(&c, &cy, id_of(&joined[1])).await];
    let mut received = Vec::new();
    for reader in &mut readers {
        let opening = reader.take(2).await;
        assert_eq!((kinds(&opening), marks(&opening)), (vec!["start".to_owned(), "chunk".to_owned()], (true, false)));
        received.push(opening);
    }
    generator.kill().await;
    for (reader, mut events) in readers.iter_mut().zip(received) {
        events.extend(reader.until_terminal().await);
        assert_contiguous(&events, 0);
        let last = events.last().unwrap();
        assert_eq!(
            (last.data["code"].as_str(), last.data["retryable"].as_bool()),
            (Some("generation_lost"), Some(true)),
            "{:?}",
            last.data
        );
    }
    // The lost answer is not served again: the next start generates anew.
    let again = start(&b, &bo, topic(), json!({}), &[]).await;
    let opening = reader(&b, &bo, id_of(&again)).await.take(2).await;
    assert_eq!(marks(&opening), (false, false));
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test]
async fn thirty_learners_of_one_class_starting_within_half_a_second_get_one_provider_request_and_identical_answers() {
    // The answer begins well after the last start, so every start finds it running.
    let upstream = slow_model(Duration::from_millis(1500)).await;
    let app = class_app(&upstream, &[]).await;
    let learners: Vec<String> = (0..30).map(|n| learner_in(&format!("learner-{n}"), Some("7b"))).collect();
    let learn = |n: usize, token: &str| {
        let (app, token) = (&app, token.to_owned());
        async move {
            // Spread over half a second, as a class pressing "Explain" together is.
            tokio::time::sleep(Duration::from_millis(n as u64 * 500 / 30)).await;
            let created = start(app, &token, topic(), json!({}), &[]).await;
            read_all(app, &token, id_of(&created)).await
        }
    };
    let all = join_all(learners.iter().enumerate().map(|(n, token)| learn(n, token))).await;
    let last = |events: &[Received]| events.last().unwrap().data.clone();
    assert!(all.iter().all(|events| last(events)["type"] == "complete"), "all thirty complete");
    let (text, usage, result) = (text_of(&all[0]), last(&all[0])["usage"].clone(), last(&all[0])["result"].clone());
    assert!(!text.is_empty() && usage["completion_tokens"].as_u64() > Some(0));
    for events in &all {
        assert_eq!((text_of(events), &last(events)["usage"], &last(events)["result"]), (text.clone(), &usage, &result));
    }
    let started: Vec<(bool, bool)> = all.iter().map(|events| marks(events)).collect();
    assert_eq!(started.iter().filter(|m| **m == (false, false)).count(), 1, "one learner's start generated: {started:?}");
    assert_eq!(started.iter().filter(|m| **m == (true, false)).count(), 29, "the others joined it: {started:?}");
    assert_eq!(upstream.connections(), 1, "thirty learners, one provider request");
    assert_eq!(app.metric("live_ai_coalesce_joins_total", &["block=\"explain-eli10\""]).await, 29.0);
    assert_eq!(app.metric("live_ai_shared_generations_total", &["block=\"explain-eli10\""]).await, 1.0);
}

#[tokio::test]
async fn quizzes_differing_only_in_count_or_difficulty_each_get_a_provider_request_while_identical_ones_share() {
    let upstream = FakeUpstream::start(vec![Reply::sse(fixture("openai_quiz_stream.sse")).after(Duration::from_millis(500))]).await;
    let app = class_app(&upstream, &[]).await;
    let quiz = |count: u32, difficulty: &str| json!({"topic": "volcanoes", "count": count, "difficulty": difficulty});
    let starts = [
        ("ada", quiz(3, "easy")),
        ("bo", quiz(3, "easy")),  // the control: identical, joins ada's
        ("cy", quiz(4, "easy")),  // another count
        ("dee", quiz(3, "hard")), // another difficulty
        ("eve", quiz(4, "hard")), // both
    ];
    let mut streams = Vec::new();
    for (sub, input) in starts {
        let token = learner_in(sub, Some("7b"));
        let created = start(&app, &token, input, json!({"block_type": "quiz"}), &[]).await;
        streams.push((token, id_of(&created).to_owned()));
    }
    let all = join_all(streams.iter().map(|(token, id)| read_all(&app, token, id))).await;
    assert!(all.iter().all(|events| events.last().unwrap().kind() == "complete"));
    let shared: Vec<bool> = all.iter().map(|events| marks(events).0).collect();
    assert_eq!(shared, [false, true, false, false, false]);
    assert_eq!(upstream.connections(), 4, "one provider request per distinct quiz");
    // Each of them asked the model for its own quiz.
    let mut prompts: Vec<Vec<u8>> = Vec::new();
    for n in 0..4 {
        prompts.push(upstream.request(n).await.body);
    }
    prompts.sort();
    prompts.dedup();
    assert_eq!(prompts.len(), 4, "four different requests to the model");
}

/// A fake OpenAI answer `times` as long as the fixture's (its words over and
/// over), so that its readers are cut many times while it streams.
fn long_answer(times: usize) -> Vec<u8> {
    let transcript = String::from_utf8(fixture("openai_chat_stream.sse")).unwrap();
    let events: Vec<&str> = transcript.split_inclusive("\n\n").collect();
    // The role, the words, then the finish, the usage and [DONE].
    let (role, rest) = events.split_at(1);
    let (words, end) = rest.split_at(rest.len() - 3);
    let mut body = role.concat();
    for _ in 0..times {
        body.push_str(&words.concat());
    }
    body.push_str(&end.concat());
    body.into_bytes()
}

#[tokio::test]
async fn thirty_learners_over_three_processes_each_resuming_on_other_processes_at_random_cuts_get_the_whole_answer_from_one_request() {
    // The answer begins after every start, then streams long enough for many cuts.
    let upstream = FakeUpstream::start(vec![Reply::sse(long_answer(8)).after(Duration::from_millis(1500))]).await;
    let processes = class_processes(redis_deployment(&fresh_prefix()), &upstream).await;
    let proxy = crate::proxy::RoundRobinProxy::start(processes.iter().map(|p| p.addr).collect()).await;
    let learners: Vec<String> = (0..30).map(|n| learner_in(&format!("learner-{n}"), Some("7b"))).collect();
    let starts = learners.iter().enumerate().map(|(n, token)| start(&processes[n % 3].api, token, topic(), json!({}), &[]));
    let created = join_all(starts).await;
    let proxy = &proxy;
    let reads = learners.iter().zip(&created).enumerate().map(|(n, (token, created))| async move {
        let authorization = bearer(token);
        // Each response cut after 1 to 12 events, the next through the proxy's next process.
        crate::scale_out::read_cut_at_random(proxy, id_of(created), &[("authorization", &authorization)], n as u64, 1, 12).await
    });
    let all = join_all(reads).await;
    let mut resumes = 0;
    for (events, hops) in &all {
        assert_contiguous(events, 0);
        let last = events.last().unwrap();
        assert_eq!(last.kind(), "complete", "{:?}", last.data);
        assert_eq!(last.data["result"]["markdown"], text_of(events), "the whole answer, no gap, no duplicate");
        resumes += hops;
    }
    let text = text_of(&all[0].0);
    assert!(text.len() > 200 && all.iter().all(|(events, _)| text_of(events) == text), "one answer for all");
    assert_eq!(all.iter().filter(|(events, _)| marks(events) == (false, false)).count(), 1, "one learner's start generated");
    assert!(resumes >= 30 * 5, "the readers were cut and resumed elsewhere ({resumes} resumes)");
    assert_eq!(upstream.connections(), 1, "thirty learners, three processes, every resume: one provider request");
}

/// A response's status and headers apart from the date and the length (which
/// follows the ids' lengths): what a client could tell apart.
fn response_shape(status: reqwest::StatusCode, headers: &reqwest::header::HeaderMap) -> Vec<String> {
    let mut shape = vec![status.to_string()];
    let mut named: Vec<String> = headers
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "date" | "content-length"))
        .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or_default()))
        .collect();
    named.sort();
    shape.extend(named);
    shape
}

/// An event or body with its ids and timings replaced by their JSON types:
/// every other field and value is what a client could tell apart.
fn shape_of(value: &Value) -> Value {
    let mut shape = value.clone();
    if let Some(fields) = shape.as_object_mut() {
        for (name, value) in fields.iter_mut() {
            if matches!(name.as_str(), "stream_id" | "read_token" | "read_token_expires_at" | "ts" | "ttft_ms" | "duration_ms") {
                *value = json!(if value.is_string() { "string" } else { "number" });
            }
        }
    }
    shape
}

/// `POST /api/streams` for `token`'s learner, then its events: the start
/// response's shape, its body, and the events' shapes with the events
/// response's shape first.
async fn start_and_read_shapes(api: &ApiClient, token: &str) -> (Vec<String>, Value, Vec<Value>, Vec<Received>) {
    let body = json!({"block_type": "explain-eli10", "input": topic()});
    let response = api.http.post(api.url("/api/streams")).bearer_auth(token).json(&body).send().await.unwrap();
    let start_shape = response_shape(response.status(), response.headers());
    let created: Value = response.json().await.unwrap();
    let mut events = reader(api, token, id_of(&created)).await;
    let events_shape = json!(response_shape(events.status, &events.headers));
    let received = events.until_terminal().await;
    assert_contiguous(&received, 0);
    let shapes = std::iter::once(events_shape).chain(received.iter().map(|event| shape_of(&event.data))).collect();
    (start_shape, shape_of(&created), shapes, received)
}

#[tokio::test]
async fn another_classs_learner_can_neither_join_a_finished_answer_nor_tell_from_the_responses_that_it_exists() {
    let upstream = slow_model(Duration::ZERO).await;
    let app = class_app(&upstream, &[]).await;
    let (ada, bo, cy) = (learner_in("ada", Some("7b")), learner_in("bo", Some("7b")), learner_in("cy", Some("8a")));
    // Class 7b's very first request: a miss.
    let (first_start, first_body, first_events, first) = start_and_read_shapes(&app, &ada).await;
    assert_eq!((marks(&first), first.last().unwrap().kind()), ((false, false), "complete"));
    // The control: within class 7b the finished answer is replayed, and that shows.
    let (_, _, cached_events, cached) = start_and_read_shapes(&app, &bo).await;
    assert_eq!(marks(&cached), (false, true));
    assert_ne!(cached_events[1], first_events[1], "a replay's start differs from a miss's");
    assert_eq!(upstream.connections(), 1);
    // Class 8a asks the same after it completed: the model is asked anew, and
    // nothing in what cy gets differs from a first-ever request. No timing is
    // measured: a foreign scope takes the very path of a miss, because the scope
    // is hashed into the request key (`RequestKey::of`), so the index lookup
    // (`claim_request`, SET NX in Redis) of another scope's learner cannot find
    // class 7b's entry — it finds the key vacant and claims it, as ada's did.
    let (foreign_start, foreign_body, foreign_events, foreign) = start_and_read_shapes(&app, &cy).await;
    assert_eq!(marks(&foreign), (false, false), "neither shared nor cached");
    assert_eq!(upstream.connections(), 2, "its own provider request");
    assert_eq!(foreign_start, first_start, "the start response's status and headers");
    assert_eq!(foreign_body, first_body, "the start response's fields");
    assert_eq!(foreign_events, first_events, "the events response, and every event's type, fields and values");
    assert_eq!(app.metric("live_ai_coalesce_cache_hits_total", &[]).await, 1.0, "only class 7b's replay");
}

#[tokio::test]
async fn at_a_one_second_retention_an_answer_whose_log_expired_is_generated_anew_not_replayed_or_failed() {
    // The cache window (300 s by default) is bounded by the retention: here the
    // shared log, its learners' logs and the index entry all lapse after 1 s.
    let upstream = slow_model(Duration::ZERO).await;
    let app = class_app(&upstream, &[("STREAM_RETENTION_SECONDS", "1")]).await;
    let (ada, bo) = (learner_in("ada", Some("7b")), learner_in("bo", Some("7b")));
    let first = start(&app, &ada, topic(), json!({}), &[]).await;
    let a = read_all(&app, &ada, id_of(&first)).await;
    assert_eq!(a.last().unwrap().kind(), "complete");
    // Await the expiry, as the first learner's own stream reports it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let events = reader(&app, &ada, id_of(&first)).await.until_terminal().await;
        if events.last().unwrap().data["code"] == "stream_not_found" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the answer expires after the retention");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = start(&app, &bo, topic(), json!({}), &[]).await;
    let b = read_all(&app, &bo, id_of(&again)).await;
    assert_eq!((marks(&b), b.last().unwrap().kind()), ((false, false), "complete"));
    assert_eq!(text_of(&b), text_of(&a));
    assert_eq!(upstream.connections(), 2, "the expired answer was asked for again");
}

/// A connection to the Redis the one-node deployments of these tests use.
async fn redis_connection() -> redis::aio::MultiplexedConnection {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.expect("Redis runs for the tests")
}

/// The names of the Redis keys matching `pattern`.
async fn keys(pattern: &str) -> Vec<String> {
    redis::cmd("KEYS").arg(pattern).query_async(&mut redis_connection().await).await.unwrap()
}

/// `count` processes of a class deployment on the Redis of `store`
/// (settings), answering with the demo model, with `extra` settings.
async fn demo_class_processes(store: Vec<(&'static str, String)>, count: usize, extra: &[(&str, &str)]) -> Vec<LiveAiProcess> {
    let mut vars = store;
    vars.extend(class_settings(extra).into_iter().map(|(k, v)| (k, v.to_owned())));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    join_all((0..count).map(|_| LiveAiProcess::spawn(&vars))).await
}

#[tokio::test]
async fn in_redis_a_question_nobody_else_asks_is_written_once_in_its_learners_own_log() {
    let prefix = fresh_prefix();
    let processes = demo_class_processes(redis_deployment(&prefix), 1, &[("DEMO_TOKENS_PER_SECOND", "0")]).await;
    let ada = learner_in("ada", Some("7b"));
    let created = start(&processes[0], &ada, topic(), json!({}), &[]).await;
    let events = read_all(&processes[0], &ada, id_of(&created)).await;
    assert_eq!((marks(&events), events.last().unwrap().kind()), ((false, false), "complete"));
    let logs = keys(&format!("{prefix}:*:log")).await;
    assert_eq!(logs, [format!("{prefix}:{{{}}}:log", id_of(&created))], "one log, the learner's own: no shared log beside it");
    let appended: usize = redis::cmd("XLEN").arg(&logs[0]).query_async(&mut redis_connection().await).await.unwrap();
    assert_eq!(appended, events.len(), "each event appended once");
}

#[tokio::test]
async fn in_redis_a_first_asker_who_cancels_mid_answer_hands_it_whole_to_joiners_on_her_process_and_another_and_it_is_served_next() {
    first_asker_cancels_mid_answer_over_two_processes(redis_deployment(&fresh_prefix()), &[]).await;
}

#[tokio::test]
async fn in_redis_at_a_grace_of_zero_a_first_asker_who_cancels_mid_answer_still_hands_it_whole_to_joiners() {
    // No grace: the shared log the answer goes on in has no reader until the
    // joiners' relays reach it, and must not be abandoned meanwhile.
    first_asker_cancels_mid_answer_over_two_processes(redis_deployment(&fresh_prefix()), &[("STREAM_RESUME_GRACE_SECONDS", "0")]).await;
}

#[tokio::test]
async fn on_a_redis_cluster_a_first_asker_who_cancels_mid_answer_hands_it_whole_to_joiners_on_her_process_and_another() {
    first_asker_cancels_mid_answer_over_two_processes(crate::cluster::cluster_deployment(&fresh_prefix()), &[]).await;
}

/// Ada asks first on one process of the Redis of `store` (settings); Bo joins
/// on her process, Cy on another; Ada cancels mid-answer: her stream ends
/// `cancelled`, Bo's and Cy's get the whole answer and are charged it whole,
/// and Dee is served it from the cache next, on the other process.
async fn first_asker_cancels_mid_answer_over_two_processes(store: Vec<(&'static str, String)>, extra: &[(&str, &str)]) {
    let mut settings = vec![("DEMO_TOKENS_PER_SECOND", "40")];
    settings.extend_from_slice(extra);
    let [a, b]: [LiveAiProcess; 2] = demo_class_processes(store, 2, &settings).await.try_into().ok().unwrap();
    let learners: Vec<String> = ["ada", "bo", "cy", "dee"].iter().map(|sub| learner_in(sub, Some("7b"))).collect();
    let (ada, bo, cy, dee) = (&learners[0], &learners[1], &learners[2], &learners[3]);
    let first = start(&a, ada, topic(), json!({}), &[]).await;
    let joined = [start(&a, bo, topic(), json!({}), &[]).await, start(&b, cy, topic(), json!({}), &[]).await];
    let mut joiners = vec![(reader(&a, bo, id_of(&joined[0])).await, Vec::new()), (reader(&b, cy, id_of(&joined[1])).await, Vec::new())];
    for (reader, events) in &mut joiners {
        events.extend(reader.take(3).await);
        assert_eq!(marks(events), (true, false));
    }
    let mut first_reader = reader(&a, ada, id_of(&first)).await;
    let mut a_events = first_reader.take(3).await;
    cancel(&a, ada, id_of(&first)).await;
    a_events.extend(first_reader.until_terminal().await);
    assert_contiguous(&a_events, 0);
    let last = a_events.last().unwrap();
    assert_eq!((last.kind(), last.data["reason"].as_str()), ("cancelled", Some("requested")));
    let (mut texts, mut produced) = (Vec::new(), Vec::new());
    for (mut reader, mut events) in joiners {
        events.extend(reader.until_terminal().await);
        assert_contiguous(&events, 0);
        let last = events.last().unwrap();
        assert_eq!(last.kind(), "complete", "{:?}", last.data);
        assert_eq!(last.data["result"]["markdown"], text_of(&events), "the whole answer, no gap, no duplicate");
        texts.push(text_of(&events));
        produced.push(last.data["usage"]["completion_tokens"].as_u64().unwrap());
    }
    assert!(!texts[0].is_empty());
    assert_eq!(texts[0], texts[1]);
    // Each joiner is charged the whole answer, as if generated alone, though
    // it went on in another log once Ada cancelled.
    assert_eq!(produced[0], produced[1]);
    for (process, joiner) in [(&a, bo), (&b, cy)] {
        let usage = usage_of(process, joiner, |u| u["active_streams"] == 0).await;
        assert_eq!(usage["tokens_used_today"].as_u64(), Some(produced[0]), "charged the whole answer across the handover: {usage}");
    }
    // Served next from the cache, on the other process.
    let next = start(&b, dee, topic(), json!({}), &[]).await;
    let d_events = read_all(&b, dee, id_of(&next)).await;
    assert_eq!((marks(&d_events), text_of(&d_events)), ((false, true), texts[0].clone()));
    a.wait_for_metric("live_ai_stream_outcomes_total", &["outcome=\"complete\""], |done| done == 1.0).await;
    assert_eq!(a.metric("live_ai_stream_outcomes_total", &[]).await, 1.0, "one generation, which completed");
    assert_eq!(b.metric("live_ai_stream_outcomes_total", &[]).await, 0.0, "none on the other process");
}

#[tokio::test]
async fn in_redis_a_first_asker_who_cancels_an_answer_nobody_joined_closes_its_provider_request_and_gives_its_key_back() {
    let answer = fixture("openai_chat_stream.sse");
    let upstream = FakeUpstream::start(vec![Reply::sse(answer.clone()).stall_after(3), Reply::sse(answer)]).await;
    let prefix = fresh_prefix();
    let mut vars = redis_deployment(&prefix);
    vars.extend(openai_settings(&upstream));
    // Async moderation: the chunks before the stall reach the reader.
    vars.extend(class_settings(&[("MODERATION_OUTPUT_MODE", "async")]).into_iter().map(|(k, v)| (k, v.to_owned())));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let process = LiveAiProcess::spawn(&vars).await;
    let (ada, bo) = (learner_in("ada", Some("7b")), learner_in("bo", Some("7b")));
    let first = start(&process, &ada, topic(), json!({}), &[]).await;
    let mut a = reader(&process, &ada, id_of(&first)).await;
    assert_eq!(kinds(&a.take(2).await), ["start", "chunk"]);
    assert_eq!(keys(&format!("{prefix}:request:*")).await.len(), 1, "her stream answers the request");
    cancel(&process, &ada, id_of(&first)).await;
    // The provider request is closed by the time the cancel is answered, as
    // for any stream of one's own.
    assert_eq!(process.metric("live_ai_provider_streams_open", &[]).await, 0.0);
    assert_eq!(a.until_terminal().await.last().unwrap().kind(), "cancelled");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !keys(&format!("{prefix}:request:*")).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the request key is given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(keys(&format!("{prefix}:*:log")).await.len(), 1, "no shared log: nobody joined");
    let again = start(&process, &bo, topic(), json!({}), &[]).await;
    let events = read_all(&process, &bo, id_of(&again)).await;
    assert_eq!((marks(&events), events.last().unwrap().kind()), ((false, false), "complete"), "the next start generates anew");
    assert_eq!(upstream.connections(), 2);
}
