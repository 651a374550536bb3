//! Where the announcements of the streams this process generates go: for each
//! of them, the channels of the other processes serving its readers, learnt
//! from their follow and leave notices (`control.rs`), and whether this process
//! serves readers of it itself. The append path reads it as each event is
//! confirmed, so an event goes to the processes that follow its stream at that
//! moment, each once, and nowhere else.
//!
//! This process's own readers are not sent anything through Redis: the events
//! of a stream generated and followed here go straight into its mirror
//! (`deliver_here`), with no `PUBLISH` to its own channel, no encoding and no
//! copy; in the same order, and only once confirmed, as any other follower's.
//!
//! A stream's route opens when its log is created here and closes with its
//! terminal event (or when its generation lets go); a closed route is kept a
//! little while, so a follow notice that arrives just after the end still
//! earns its sender a nudge (it then reads the end from the log).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::tail::Tails;
use crate::ai::streaming::events::{LoggedEvent, StreamId};

/// How long a closed route still answers follow notices.
pub const CLOSED_KEPT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Routes {
    streams: Mutex<HashMap<StreamId, Route>>,
    /// One `Arc` per follower's channel, shared by all the routes that name
    /// it, so the append path tells channels apart by pointer (`announce.rs`).
    channels: Mutex<Vec<Arc<str>>>,
    /// This process's mirrors, once they exist.
    mirrors: OnceLock<Weak<Tails>>,
}

#[derive(Default)]
pub struct Route {
    /// The channels of the other processes following the stream.
    pub readers: Vec<Arc<str>>,
    /// Whether this process follows it too.
    pub here: bool,
    closed_at: Option<Instant>,
}

/// What a follow notice found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Followed {
    /// The stream is generated here: its next confirmed events go to the follower.
    Added,
    /// It ended here a moment ago: nothing more will be announced.
    Closed,
    /// Not generated here.
    Unknown,
}

impl Routes {
    /// A log created here: its events are announced to whoever follows it.
    pub fn open(&self, id: &StreamId) {
        self.streams.lock().unwrap().insert(id.clone(), Route::default());
    }

    /// Where the events of the streams followed here go.
    pub fn set_mirrors(&self, tails: Weak<Tails>) {
        let _ = self.mirrors.set(tails);
    }

    /// The log ended, or its generation let go of it.
    pub fn close(&self, id: &StreamId) {
        if let Some(route) = self.streams.lock().unwrap().get_mut(id) {
            route.readers.clear();
            route.here = false;
            route.closed_at.get_or_insert_with(Instant::now);
        }
    }

    /// Whether `id` is generated here, or was a moment ago.
    pub fn knows(&self, id: &StreamId) -> bool {
        self.streams.lock().unwrap().contains_key(id)
    }

    /// The process of `channel` follows `id`.
    pub fn follow(&self, id: &StreamId, channel: &Arc<str>) -> Followed {
        let channel = &self.interned(channel);
        let mut streams = self.streams.lock().unwrap();
        match streams.get_mut(id) {
            Some(route) if route.closed_at.is_some() => Followed::Closed,
            Some(route) => {
                if !route.readers.contains(channel) {
                    route.readers.push(channel.clone());
                }
                Followed::Added
            }
            None => Followed::Unknown,
        }
    }

    /// The `Arc` of `channel` that the routes share.
    fn interned(&self, channel: &Arc<str>) -> Arc<str> {
        let mut channels = self.channels.lock().unwrap();
        if let Some(known) = channels.iter().find(|known| *known == channel) {
            return known.clone();
        }
        channels.push(channel.clone());
        channel.clone()
    }

    /// This process follows `id`.
    pub fn follow_here(&self, id: &StreamId) -> Followed {
        match self.streams.lock().unwrap().get_mut(id) {
            Some(route) if route.closed_at.is_some() => Followed::Closed,
            Some(route) => {
                route.here = true;
                Followed::Added
            }
            None => Followed::Unknown,
        }
    }

    /// The process of `channel` has no reader of `id` any more.
    pub fn leave(&self, id: &StreamId, channel: &str) {
        if let Some(route) = self.streams.lock().unwrap().get_mut(id) {
            route.readers.retain(|c| &**c != channel);
        }
    }

    /// This process has no reader of `id` any more.
    pub fn leave_here(&self, id: &StreamId) {
        if let Some(route) = self.streams.lock().unwrap().get_mut(id) {
            route.here = false;
        }
    }

    /// The routes, locked, for a batch of confirmed events.
    pub fn lock(&self) -> MutexGuard<'_, HashMap<StreamId, Route>> {
        self.streams.lock().unwrap()
    }

    /// The channels of the other processes following `id` now.
    pub fn readers_of(&self, id: &StreamId) -> Vec<Arc<str>> {
        self.streams.lock().unwrap().get(id).map(|route| route.readers.clone()).unwrap_or_default()
    }

    /// Whether this process follows `id` now.
    pub fn is_followed_here(&self, id: &StreamId) -> bool {
        self.streams.lock().unwrap().get(id).is_some_and(|route| route.here)
    }

    /// Hands confirmed events of streams followed here to this process's
    /// mirrors, in place of an announcement. Called without the routes'
    /// lock held: the mirrors' lock is taken before it elsewhere.
    pub fn deliver_here(&self, events: Vec<(StreamId, LoggedEvent)>) {
        if events.is_empty() {
            return;
        }
        if let Some(tails) = self.mirrors.get().and_then(Weak::upgrade) {
            tails.offer_confirmed(events);
        }
    }

    /// Forgets the routes closed longer than [`CLOSED_KEPT`] ago.
    pub fn purge(&self) {
        self.streams.lock().unwrap().retain(|_, route| route.closed_at.is_none_or(|at| at.elapsed() < CLOSED_KEPT));
        // Channels no route names any more (their processes stopped following).
        self.channels.lock().unwrap().retain(|channel| Arc::strong_count(channel) > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_takes_followers_while_open_and_none_once_closed() {
        let routes = Routes::default();
        let (id, a, b): (StreamId, Arc<str>, Arc<str>) = (StreamId::parse("s1").unwrap(), "a".into(), "b".into());
        assert_eq!(routes.follow(&id, &a), Followed::Unknown);
        routes.open(&id);
        assert_eq!(routes.follow(&id, &a), Followed::Added);
        assert_eq!(routes.follow(&id, &a), Followed::Added);
        assert_eq!(routes.follow(&id, &b), Followed::Added);
        assert_eq!(routes.readers_of(&id), [a.clone(), b.clone()], "each follower once");
        let other = StreamId::parse("s2").unwrap();
        routes.open(&other);
        routes.follow(&other, &"a".into());
        assert!(Arc::ptr_eq(&routes.readers_of(&id)[0], &routes.readers_of(&other)[0]), "one Arc per channel");
        assert_eq!(routes.follow_here(&id), Followed::Added);
        assert!(routes.is_followed_here(&id));
        routes.leave(&id, "a");
        assert_eq!(routes.readers_of(&id), [b]);
        routes.leave_here(&id);
        assert!(!routes.is_followed_here(&id));
        routes.follow_here(&id);
        routes.close(&id);
        assert!(routes.readers_of(&id).is_empty());
        assert!(!routes.is_followed_here(&id));
        assert_eq!(routes.follow_here(&id), Followed::Closed);
        assert_eq!(routes.follow(&id, &a), Followed::Closed);
        routes.purge();
        assert_eq!(routes.follow(&id, &a), Followed::Closed, "kept a while after the end");
    }
}
