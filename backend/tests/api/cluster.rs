//! Scale-out on a Redis Cluster (`REDIS_CLUSTER_URLS`): three primaries and
//! three replicas started by the tests, real `live-ai` processes behind the
//! round-robin proxy. The scale-out scenarios of one node run again here, on one
//! cluster shared by these tests (each deployment its own key prefix); the
//! failover test kills a primary, so it has a cluster of its own.

use std::sync::OnceLock;
use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::proxy::RoundRobinProxy;
use crate::scale_out::*;
use crate::test_server::TestCluster;

/// The cluster these tests share, started by the first that needs it.
pub fn cluster() -> &'static TestCluster {
    static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
    CLUSTER.get_or_init(TestCluster::start)
}

/// The settings of a deployment on [`cluster`] under key prefix `prefix`: the
/// cluster's counterpart of `helpers::redis_deployment`.
pub fn cluster_deployment(prefix: &str) -> Vec<(&'static str, String)> {
    vec![("STREAM_STORE", "redis".into()), ("REDIS_CLUSTER_URLS", cluster().urls()), ("REDIS_KEY_PREFIX", prefix.to_owned())]
}

#[tokio::test]
async fn on_a_cluster_streams_read_with_cuts_on_every_process_lose_and_repeat_nothing_and_keep_their_keys_on_one_node() {
    let deployment = Deployment::on_cluster(&cluster().urls(), 400);
    let processes = deployment.processes(3).await;
    let proxy = RoundRobinProxy::start(processes.iter().map(|p| p.addr).collect()).await;
    let outcomes = join_all((0..30).map(|n| read_with_cuts(&proxy, n, 25))).await;
    assert_all_complete(&outcomes);

    // Every key of a stream is on the node of its hash tag's slot, and only there.
    let id = outcomes[0].1[0].data["stream_id"].as_str().unwrap().to_owned();
    let prefix = &deployment_prefix(&deployment);
    let keys: Vec<String> = ["log", "meta"].iter().map(|part| format!("{prefix}:{{{id}}}:{part}")).collect();
    let slots: Vec<String> = keys.iter().map(|key| TestCluster::ask(cluster().ports[0], &format!("CLUSTER KEYSLOT {key}"))).collect();
    assert!(slots.iter().all(|slot| *slot == slots[0]), "{slots:?}");
    let primary = cluster().primary_of(&keys[0]);
    for key in &keys {
        assert_eq!(TestCluster::ask(primary, &format!("EXISTS {key}")).trim(), "1", "{key} on its slot's primary");
    }
}

#[tokio::test]
async fn on_a_cluster_a_cancel_sent_to_another_process_ends_the_stream_cancelled_everywhere() {
    let deployment = Deployment::on_cluster(&cluster().urls(), 30);
    let [a, b, c]: [LiveAiProcess; 3] = deployment.processes(3).await.try_into().ok().unwrap();
    let id = a.create_stream("ask-question", json!({"question": "Where do rivers start?"})).await;
    let mut readers = vec![a.events_of(&id).await, b.events_of(&id).await, c.events_of(&id).await];
    for reader in &mut readers {
        reader.take(2).await;
    }
    let response: Value = c.delete(&format!("/api/streams/{id}")).await.json().await.unwrap();
    assert_eq!(response["state"], "cancelled");
    for reader in &mut readers {
        assert_eq!(reader.until_terminal().await.last().unwrap().kind(), "cancelled");
    }
}

#[tokio::test]
async fn on_a_cluster_killing_the_generating_process_ends_readers_elsewhere_with_generation_lost() {
    let deployment = Deployment::on_cluster(&cluster().urls(), 5);
    let generator = deployment.process().await;
    let reader = deployment.process().await;
    let id = generator.create_stream("explain-eli10", json!({"topic": "comets"})).await;
    let mut events_of = reader.events_of(&id).await;
    let mut events = events_of.take(2).await;
    generator.kill().await;
    events.extend(terminal_within(&mut events_of, DEATH_NOTICE).await);
    assert_contiguous(&events, 0);
    assert_generation_lost(events.last().unwrap(), "stopped");
}

#[tokio::test]
async fn on_a_cluster_readers_hopping_between_processes_keep_their_generations_alive_at_a_one_second_grace() {
    let deployment = Deployment::on_cluster(&cluster().urls(), 40).with("STREAM_RESUME_GRACE_SECONDS", "1");
    let processes = deployment.processes(3).await;
    let proxy = RoundRobinProxy::start(processes.iter().map(|p| p.addr).collect()).await;
    let outcomes = join_all((0..20).map(|n| read_with_cuts_from(&proxy, 2000 + n, 5, 25))).await;
    assert_all_complete(&outcomes);
}

#[tokio::test]
async fn on_a_cluster_limits_hold_across_processes() {
    let deployment = Deployment::on_cluster(&cluster().urls(), 5).with("LIMIT_CONCURRENT_STREAMS", "1");
    let [a, b]: [LiveAiProcess; 2] = deployment.processes(2).await.try_into().ok().unwrap();
    a.create_stream("explain-eli10", json!({"topic": "owls"})).await;
    let refused = b.post_json("/api/streams", &json!({"block_type": "explain-eli10", "input": {"topic": "larks"}})).await;
    assert_problem(refused, 429, "rate_limited").await;
}

#[tokio::test]
async fn a_primary_killed_mid_stream_fails_over_and_streams_go_on_or_end_retryably() {
    let mut cluster = TestCluster::start();
    let deployment = Deployment::on_cluster(&cluster.urls(), 20);
    let processes = deployment.processes(3).await;
    let prefix = deployment_prefix(&deployment);
    // A finished stream and a live one on the same primary (found by their slots).
    let finished = processes[0].create_stream("explain-eli10", json!({"topic": "finished"})).await;
    let finished_events = processes[1].events_of(&finished).await.until_terminal().await;
    let primary = cluster.primary_of(&format!("{prefix}:{{{finished}}}:log"));
    let live = loop {
        let id = processes[0].create_stream("ask-question", json!({"question": "Why is the sea salty?"})).await;
        if cluster.primary_of(&format!("{prefix}:{{{id}}}:log")) == primary {
            break id;
        }
        processes[0].delete(&format!("/api/streams/{id}")).await;
    };
    let mut reader = processes[2].events_of(&live).await;
    let mut events = reader.take(3).await;
    // What the primary acknowledged is on its replica before it dies.
    assert!(!TestCluster::ask(primary, "WAIT 1 2000").trim().starts_with('0'), "the replica caught up");
    cluster.kill(primary);

    // The live stream goes on, or ends with a retryable generation_lost.
    events.extend(terminal_within(&mut reader, Duration::from_secs(30)).await);
    assert_contiguous(&events, 0);
    let last = events.last().unwrap();
    match last.kind() {
        "complete" => {}
        _ => assert!(last.data["code"] == "generation_lost" && last.data["retryable"] == true, "{:?}", last.data),
    }
    // The processes stay up; new streams work within 5 s of the failover.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5) + Duration::from_secs(10);
    for process in &processes {
        assert_eq!(process.get("/healthz").await.status(), 200);
        loop {
            let started = process.post_json("/api/streams", &json!({"block_type": "explain-eli10", "input": {"topic": "after"}})).await;
            if started.status() == 201 {
                let id = started.json::<Value>().await.unwrap()["stream_id"].as_str().unwrap().to_owned();
                let events = process.events_of(&id).await.until_terminal().await;
                if events.last().unwrap().kind() == "complete" {
                    break;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "new streams work again after the failover");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The finished stream is still resumable, from the promoted replica.
    let replayed = processes[1].events_of(&finished).await.until_terminal().await;
    assert_eq!(
        replayed.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
        finished_events.iter().map(|e| e.data.clone()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn on_a_cluster_a_streams_events_are_announced_only_on_the_channel_of_the_process_serving_its_reader() {
    // Streams of about 26 s each, cancelled once followed.
    let deployment = Deployment::on_cluster(&cluster().urls(), 5);
    let prefix = deployment_prefix(&deployment);
    let urls: Vec<String> = cluster().urls().split(',').map(str::to_owned).collect();
    let watch = || async move {
        // Each process's channel, found on the node its slot lives on.
        let channels: Vec<String> = cluster()
            .ports
            .iter()
            .flat_map(|port| {
                TestCluster::ask(*port, &format!("PUBSUB SHARDCHANNELS {prefix}:events:*")).lines().map(str::to_owned).collect::<Vec<_>>()
            })
            .filter(|line| !line.trim().is_empty())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(channels.len(), 3, "one channel per process: {channels:?}");
        AnnouncementWatch::on_cluster(&urls, &channels).await
    };
    let (read, later) = announce_only_where_read(&deployment, watch).await;
    assert_eq!(read.len(), 1, "one process read the first stream: {read:?}");
    assert_eq!(later.len(), 1, "one process read the second stream: {later:?}");
    assert_ne!(read, later, "the process reading only the second stream was sent none of the first");
}

/// The key prefix of a deployment.
fn deployment_prefix(deployment: &Deployment) -> String {
    deployment.var("REDIS_KEY_PREFIX").expect("every deployment has its prefix")
}
