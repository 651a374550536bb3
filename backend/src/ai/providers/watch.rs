//! Watching a provider call from the engine's side: what telemetry
//! (`telemetry::genai`) learns of a call — when its first chunk came, the gaps
//! between later chunks, its usage, end marker or error — without wrapping the
//! call's stream.
//!
//! Why not a wrapper around the stream: every item would pass through one more
//! allocation, reached by one more pointer, for the whole call. [`Watched`]
//! lives inside the engine's own state instead: per chunk it reads the clock and
//! keeps the gap beside the engine's other per-chunk variables; the watch
//! itself, in its own allocation, is reached once per [`GAPS_HELD`] chunks and
//! at the call's few other moments. What a chunk still costs is that clock read
//! and, a batch at a time, the histogram's (bench/RESULTS.md, issue 24).
//!
//! The clock is the CPU's time-stamp counter where it is invariant, read raw
//! per chunk and scaled only for the gap ([`quanta`], calibrated once against
//! the monotonic clock); elsewhere the monotonic clock itself. The monotonic
//! clock through the vDSO, with `Instant`'s arithmetic, was half the per-chunk
//! cost.

use std::sync::LazyLock;
use std::time::Duration;

use super::{ProviderError, ProviderEvent};
use crate::ai::streaming::events::{FinishReason, Usage};

/// Told what one provider call does; dropped when the call ends (its stream is
/// dropped: finished, failed, retried or cancelled).
pub trait CallWatch: Send {
    /// The first non-empty delta arrived, `waited` after the call started.
    fn first_chunk(&mut self, waited: Duration);
    /// Gaps between later chunks (end of one to end of the next), in
    /// microseconds, oldest first: a batch at a time, and the rest when the call ends.
    fn chunk_gaps(&mut self, gaps: &[u32]);
    /// A non-empty delta's text, only when [`CallWatch::wants_text`].
    fn text(&mut self, _token: &str) {}
    fn wants_text(&self) -> bool {
        false
    }
    /// The provider's token counts.
    fn usage(&mut self, usage: &Usage);
    /// The provider's end marker.
    fn finished(&mut self, reason: FinishReason);
    /// The call failed.
    fn failed(&mut self, error: &ProviderError);
}

/// Chunk gaps held before the watch is told them. Small, so [`Watched`] stays
/// about one cache line of the engine's state.
pub const GAPS_HELD: usize = 7;

/// The chunk clock.
static CLOCK: LazyLock<quanta::Clock> = LazyLock::new(quanta::Clock::new);

/// Calibrates the chunk clock now (a few milliseconds), so that no call pays it.
pub fn calibrate_clock() {
    LazyLock::force(&CLOCK);
}

/// One call's watch, as the engine holds it; with no watch, each item costs a
/// branch and no clock read.
pub struct Watched {
    watch: Option<Box<dyn CallWatch>>,
    /// When the call started, then when its last chunk arrived: raw [`CLOCK`] ticks.
    last: u64,
    gaps: [u32; GAPS_HELD],
    held: u8,
    chunks_seen: bool,
    wants_text: bool,
}

impl Watched {
    /// `watch` over a call starting now.
    pub fn new(watch: Option<Box<dyn CallWatch>>) -> Self {
        let wants_text = watch.as_ref().is_some_and(|watch| watch.wants_text());
        let last = if watch.is_some() { CLOCK.raw() } else { 0 };
        Self { watch, last, gaps: [0; GAPS_HELD], held: 0, chunks_seen: false, wants_text }
    }

    /// Shows the watch the item the call just yielded.
    #[inline]
    pub fn saw(&mut self, item: &Result<ProviderEvent, ProviderError>) {
        let Some(watch) = &mut self.watch else { return };
        match item {
            Ok(ProviderEvent::Delta(token)) if !token.is_empty() => {
                let now = CLOCK.raw();
                let since = CLOCK.delta_as_nanos(self.last, now);
                self.last = now;
                if !self.chunks_seen {
                    self.chunks_seen = true;
                    watch.first_chunk(Duration::from_nanos(since));
                } else {
                    if usize::from(self.held) == GAPS_HELD {
                        watch.chunk_gaps(&self.gaps);
                        self.held = 0;
                    }
                    self.gaps[usize::from(self.held)] = u32::try_from(since / 1_000).unwrap_or(u32::MAX);
                    self.held += 1;
                }
                if self.wants_text {
                    watch.text(token);
                }
            }
            Ok(ProviderEvent::Delta(_)) => {}
            Ok(ProviderEvent::Usage(usage)) => watch.usage(usage),
            Ok(ProviderEvent::Finished(reason)) => watch.finished(*reason),
            Err(error) => watch.failed(error),
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(watch) = &mut self.watch {
            if self.held > 0 {
                watch.chunk_gaps(&self.gaps[..usize::from(self.held)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What a watch was told, in order.
    #[derive(Default)]
    struct Told(Vec<String>);

    struct Recording(Arc<Mutex<Told>>, bool);

    impl CallWatch for Recording {
        fn first_chunk(&mut self, _waited: Duration) {
            self.0.lock().unwrap().0.push("first".into());
        }
        fn chunk_gaps(&mut self, gaps: &[u32]) {
            self.0.lock().unwrap().0.push(format!("gaps {}", gaps.len()));
        }
        fn text(&mut self, token: &str) {
            self.0.lock().unwrap().0.push(format!("text {token}"));
        }
        fn wants_text(&self) -> bool {
            self.1
        }
        fn usage(&mut self, usage: &Usage) {
            self.0.lock().unwrap().0.push(format!("usage {}", usage.completion_tokens));
        }
        fn finished(&mut self, _reason: FinishReason) {
            self.0.lock().unwrap().0.push("finished".into());
        }
        fn failed(&mut self, error: &ProviderError) {
            self.0.lock().unwrap().0.push(format!("failed {}", error.code().as_str()));
        }
    }

    fn delta(text: &str) -> Result<ProviderEvent, ProviderError> {
        Ok(ProviderEvent::Delta(text.into()))
    }

    #[test]
    fn every_gap_after_the_first_chunk_reaches_the_watch_in_batches_and_the_rest_when_the_call_ends() {
        let told = Arc::new(Mutex::new(Told::default()));
        let mut watched = Watched::new(Some(Box::new(Recording(told.clone(), false))));
        watched.saw(&delta(""));
        for _ in 0..(1 + GAPS_HELD + 3) {
            watched.saw(&delta("a"));
        }
        watched.saw(&Ok(ProviderEvent::Usage(Usage { prompt_tokens: 1, completion_tokens: 11, total_tokens: 12 })));
        watched.saw(&Ok(ProviderEvent::Finished(FinishReason::Stop)));
        drop(watched);
        let told = told.lock().unwrap().0.clone();
        assert_eq!(told, ["first", &format!("gaps {GAPS_HELD}"), "usage 11", "finished", "gaps 3"]);
    }

    /// The first chunk's wait and the gaps, as told.
    struct Timing(Arc<Mutex<(Option<Duration>, Vec<u32>)>>);

    impl CallWatch for Timing {
        fn first_chunk(&mut self, waited: Duration) {
            self.0.lock().unwrap().0 = Some(waited);
        }
        fn chunk_gaps(&mut self, gaps: &[u32]) {
            self.0.lock().unwrap().1.extend_from_slice(gaps);
        }
        fn usage(&mut self, _usage: &Usage) {}
        fn finished(&mut self, _reason: FinishReason) {}
        fn failed(&mut self, _error: &ProviderError) {}
    }

    #[test]
    fn the_first_chunks_wait_and_each_gap_are_told_in_real_time() {
        let told = Arc::new(Mutex::new((None, Vec::new())));
        let pause = Duration::from_millis(5);
        let outer = std::time::Instant::now();
        let mut watched = Watched::new(Some(Box::new(Timing(told.clone()))));
        std::thread::sleep(pause);
        watched.saw(&delta("a"));
        std::thread::sleep(pause);
        watched.saw(&delta("b"));
        drop(watched);
        let elapsed = outer.elapsed();
        let (first, gaps) = told.lock().unwrap().clone();
        let (first, gap) = (first.unwrap(), Duration::from_micros(u64::from(gaps[0])));
        assert_eq!(gaps.len(), 1);
        // Against the monotonic clock, within the calibration's tolerance: raw
        // counter ticks, or a gap in the wrong unit, would be off by far more.
        assert!(first >= pause.mul_f64(0.99) && gap >= pause.mul_f64(0.99) - Duration::from_micros(1), "{first:?} {gap:?}");
        assert!(first + gap <= elapsed.mul_f64(1.01), "{first:?} + {gap:?} > {elapsed:?}");
    }

    #[test]
    fn text_reaches_only_a_watch_that_wants_it_and_errors_reach_every_watch() {
        for wants_text in [false, true] {
            let told = Arc::new(Mutex::new(Told::default()));
            let mut watched = Watched::new(Some(Box::new(Recording(told.clone(), wants_text))));
            watched.saw(&delta("Hi"));
            watched.saw(&Err(ProviderError::Timeout { provider: "demo".into(), idle: Duration::from_secs(1) }));
            drop(watched);
            let told = told.lock().unwrap().0.clone();
            let expected: &[&str] = if wants_text { &["first", "text Hi", "failed timeout"] } else { &["first", "failed timeout"] };
            assert_eq!(told, expected);
        }
    }
}
