//! Who holds the heap: reads a valgrind massif file's peak snapshot and sums its
//! bytes by owner, so "bytes per live stream" can be split into the event log, the
//! tasks, the channels, hyper's buffers and the rest (bench/profile.sh).
//!
//! Each allocation site is a path from the allocator up to `main`; it is charged to
//! the first frame on the way up that names an owner below. A task's future is
//! allocated inside tokio's `spawn`, so it is charged to the task that was spawned.

use std::collections::BTreeMap;

/// (pattern in a frame, owner), checked from the allocator upwards. Inlined frames
/// name only a file, so most patterns are file names: bare for live-ai's and the
/// floor's own (`(memory.rs:`), with a directory for a library's (`src/sync/mpsc/`).
const OWNERS: &[(&str, &str)] = &[
    ("LoggedEvent::new", "event log: each event's JSON (Arc<str>)"),
    ("EventStore>::read_after", "event log: batches copied out for readers"),
    ("(memory.rs:", "event log: the Vec of events (capacity doubles) and the index"),
    ("demo_content", "demo model: its text and tokens"),
    ("(demo.rs:", "demo model: its text and tokens"),
    ("(engine.rs:", "engine: prompt, text so far, output parser"),
    ("src/sync/mpsc/", "tokio mpsc channels (SSE pump, WebSocket outbox)"),
    ("src/sync/watch.rs", "tokio watch channels"),
    ("src/sync/broadcast.rs", "tokio broadcast channels"),
    ("proto/h1/io.rs", "hyper connection buffers (read 16 KiB, write)"),
    ("src/routing/", "axum router, rebuilt for every connection by `axum::serve(listener, router)`"),
    ("src/response/sse.rs", "axum SSE frames"),
    ("(stream_manager.rs:", "stream manager: other"),
    ("(sse.rs:", "SSE transport: other"),
    ("(floor.rs:", "floor: its text and tokens"),
    ("serde_json", "serde_json values and strings"),
];

/// (pattern in a frame above tokio's task allocation, the task).
const SPAWNERS: &[(&str, &str)] = &[
    ("(stream_manager.rs:", "the generation"),
    ("(sse.rs:", "the SSE pump"),
    ("(ws.rs:", "a WebSocket reader or sender"),
    ("src/serve/mod.rs", "the connection (axum::serve)"),
];

fn owner_of(path: &[&str]) -> String {
    for (n, frame) in path.iter().enumerate() {
        if frame.contains("task::core::Cell") {
            let task =
                path[n..].iter().find_map(|f| SPAWNERS.iter().find(|(pattern, _)| f.contains(pattern))).map_or("another", |(_, t)| t);
            return format!("tokio task of {task} (its future)");
        }
        if let Some((_, owner)) = OWNERS.iter().find(|(pattern, _)| frame.contains(pattern)) {
            return owner.to_string();
        }
    }
    "other: runtime and libraries".into()
}

/// Bytes of the peak snapshot's heap by owner.
pub fn owners(massif: &str) -> BTreeMap<String, u64> {
    let mut owners = BTreeMap::new();
    let Some(tree) = massif.split("heap_tree=peak\n").nth(1) else { return owners };
    // The frames from the root to the current node, by depth.
    let mut path: Vec<&str> = Vec::new();
    for line in tree.lines() {
        let trimmed = line.trim_start_matches(' ');
        let Some(rest) = trimmed.strip_prefix('n') else { break };
        let depth = line.len() - trimmed.len();
        let Some((children, rest)) = rest.split_once(": ") else { break };
        let (bytes, frame) = rest.split_once(' ').unwrap_or((rest, ""));
        path.truncate(depth);
        path.push(frame);
        if children == "0" && depth > 0 {
            let owner = if frame.contains("below massif's threshold") {
                "small allocation sites (each under the threshold)".to_owned()
            } else {
                // From the allocator upwards, skipping the root.
                owner_of(&path[1..])
            };
            *owners.entry(owner).or_default() += bytes.parse::<u64>().unwrap_or(0);
        }
    }
    owners
}

/// `load massif FILE STREAMS`: the peak heap by owner, in total and per stream.
pub fn main(args: &[String]) {
    let file = args.first().expect("usage: load massif FILE STREAMS");
    let streams: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("cannot read {file}: {e}"));
    let mut owners: Vec<(String, u64)> = owners(&text).into_iter().collect();
    owners.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    let total: u64 = owners.iter().map(|(_, b)| b).sum();
    println!("| heap at the peak, by owner | bytes | per stream |");
    println!("|---|---|---|");
    for (owner, bytes) in &owners {
        println!("| {owner} | {bytes} | {:.0} |", *bytes as f64 / streams);
    }
    println!("| **total** | **{total}** | **{:.0}** |", total as f64 / streams);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_are_charged_to_the_first_owner_above_the_allocator() {
        let massif = "heap_tree=peak\n\
            n3: 1000 (heap allocation functions) malloc/new/new[], --alloc-fns, etc.\n \
            n1: 600 0x1: alloc::raw_vec::finish_grow (raw_vec.rs:1)\n  \
            n0: 600 0x2: <..>::append::{{closure}} (memory.rs:107)\n \
            n1: 300 0x3: tokio::runtime::task::core::Cell<..>::new (src/runtime/task/core.rs:1)\n  \
            n1: 300 0x4: tokio::task::spawn::spawn (src/task/spawn.rs:1)\n   \
            n0: 300 0x5: pump (sse.rs:70)\n \
            n0: 100 in 7 places, all below massif's threshold (0.50%)\n\
            #-----------\n";
        let owners = owners(massif);
        assert_eq!(owners["event log: the Vec of events (capacity doubles) and the index"], 600);
        assert_eq!(owners["tokio task of the SSE pump (its future)"], 300);
        assert_eq!(owners["small allocation sites (each under the threshold)"], 100);
    }
}
