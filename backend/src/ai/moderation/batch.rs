//! Batching of checks for a moderator whose API judges many texts in one
//! request (OpenAI's `/v1/moderations` takes `input` as an array and answers
//! `results` in the same order). Checks that arrive within
//! `MODERATION_BATCH_WAIT_MS` of the first one waiting go out together, at most
//! `MODERATION_BATCH_MAX` per request; a full batch leaves at once. Input checks
//! and output windows of every stream share the one queue.
//!
//! Why: streams that start together fill their first windows together, and a
//! thousand checks sent as a thousand requests queue behind each other on
//! connections and cores; thirty-odd requests of 32 do not.
//!
//! Each batch is one request as far as timeouts and retries go ([`Attempts`]):
//! a batch that fails for good fails each of its checks with that error, as
//! the single request would have, so the fail modes above work unchanged. An
//! answer with a different number of results than inputs fails every check in
//! the batch: which verdict is whose cannot be told.
//!
//! The queue is unbounded on purpose: what waits in it is bounded by the
//! streams running (each has an input check and a few windows in flight), and a
//! check refused here would only become a failure the stage must handle anyway.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::moderator::{Attempts, BatchModerator, Check, ModerationError, Verdict};

/// How checks are gathered into requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// How long the first check of a batch waits for others (zero: no batching).
    pub wait: Duration,
    /// Inputs per request at most.
    pub max: usize,
}

/// A check waiting for its batch's answer.
struct Queued {
    text: String,
    reply: oneshot::Sender<Result<Verdict, ModerationError>>,
}

/// The front of the queue: checks go in, each gets its own verdict back.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::UnboundedSender<Queued>,
    moderator: &'static str,
}

impl Batcher {
    /// Starts the task that gathers batches; it ends when the last `Batcher` clone is dropped.
    pub fn start(moderator: Arc<dyn BatchModerator>, attempts: Attempts, batching: Batching, batch_size: prometheus::Histogram) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        let name = moderator.name();
        let sender = Arc::new(Sender { moderator, attempts, batch_size });
        tokio::spawn(gather(queued, batching, sender));
        Self { queue, moderator: name }
    }

    pub async fn check(&self, check: Check) -> Result<Verdict, ModerationError> {
        let stopped = || ModerationError::Unavailable { moderator: self.moderator, message: "the batching task stopped".into() };
        let (reply, verdict) = oneshot::channel();
        self.queue.send(Queued { text: check.text, reply }).map_err(|_| stopped())?;
        verdict.await.map_err(|_| stopped())?
    }
}

/// Takes checks off the queue a batch at a time and sends each batch on its
/// own task, so the next batch gathers while this one is answered.
async fn gather(mut queued: mpsc::UnboundedReceiver<Queued>, batching: Batching, sender: Arc<Sender>) {
    let mut batch = Vec::with_capacity(batching.max);
    loop {
        if queued.recv_many(&mut batch, batching.max).await == 0 {
            return;
        }
        // The first check's wait bounds the batch's, however many follow.
        let deadline = Instant::now() + batching.wait;
        while batch.len() < batching.max {
            let room = batching.max - batch.len();
            match tokio::time::timeout_at(deadline, queued.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let full = std::mem::replace(&mut batch, Vec::with_capacity(batching.max));
        tokio::spawn(sender.clone().send(full));
    }
}

struct Sender {
    moderator: Arc<dyn BatchModerator>,
    attempts: Attempts,
    batch_size: prometheus::Histogram,
}

impl Sender {
    async fn send(self: Arc<Self>, batch: Vec<Queued>) {
        // A stream that ended (cancelled, or flagged elsewhere) no longer waits for its verdict.
        let batch: Vec<Queued> = batch.into_iter().filter(|queued| !queued.reply.is_closed()).collect();
        if batch.is_empty() {
            return;
        }
        self.batch_size.observe(batch.len() as f64);
        let texts: Vec<&str> = batch.iter().map(|queued| queued.text.as_str()).collect();
        let moderator = self.moderator.name();
        let what = format!("a batch of {} checks", texts.len());
        let outcome = self.attempts.run(moderator, &what, || self.moderator.check_batch(&texts)).await.and_then(|verdicts| {
            if verdicts.len() == texts.len() {
                Ok(verdicts)
            } else {
                Err(ModerationError::Malformed {
                    moderator,
                    message: format!(
                        "{} results for {} inputs in one request: which verdict is whose cannot be told, so every check of it failed",
                        verdicts.len(),
                        texts.len()
                    ),
                })
            }
        });
        match outcome {
            Ok(verdicts) => {
                for (queued, verdict) in batch.into_iter().zip(verdicts) {
                    let _ = queued.reply.send(Ok(verdict));
                }
            }
            Err(error) => {
                for queued in batch {
                    let _ = queued.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::super::moderator::{Checker, Flag, Moderator, Stage};
    use super::*;

    /// Records every request; flags each text except those starting `fine`,
    /// naming the text itself as the category, so a test sees whose verdict
    /// each check got.
    #[derive(Default)]
    struct Recorder {
        /// Each batch request's texts, with when it was sent (from the test's start).
        batches: Mutex<Vec<(Vec<String>, Duration)>>,
        singles: AtomicU32,
        /// Requests that fail before the first that answers.
        failures: AtomicU32,
        /// Answers one result fewer than asked.
        short: bool,
        started: Option<Instant>,
    }

    impl Recorder {
        fn new() -> Self {
            Self { started: Some(Instant::now()), ..Self::default() }
        }

        fn verdict(text: &str) -> Verdict {
            if text.starts_with("fine") {
                Verdict::Allowed
            } else {
                Verdict::Flagged(Flag { categories: vec![text.to_owned()], scores: Default::default() })
            }
        }

        fn batches(&self) -> Vec<Vec<String>> {
            self.batches.lock().unwrap().iter().map(|(texts, _)| texts.clone()).collect()
        }
    }

    #[async_trait]
    impl Moderator for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn description(&self) -> String {
            "recorder".into()
        }
        async fn check(&self, check: &Check) -> Result<Verdict, ModerationError> {
            self.singles.fetch_add(1, Ordering::SeqCst);
            Ok(Self::verdict(&check.text))
        }
    }

    #[async_trait]
    impl BatchModerator for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        async fn check_batch(&self, texts: &[&str]) -> Result<Vec<Verdict>, ModerationError> {
            let at = self.started.expect("made by new()").elapsed();
            self.batches.lock().unwrap().push((texts.iter().map(|t| t.to_string()).collect(), at));
            if self.failures.load(Ordering::SeqCst) > 0 {
                self.failures.fetch_sub(1, Ordering::SeqCst);
                return Err(ModerationError::Unavailable { moderator: "recorder", message: "refused".into() });
            }
            let mut verdicts: Vec<Verdict> = texts.iter().map(|text| Self::verdict(text)).collect();
            if self.short {
                verdicts.pop();
            }
            Ok(verdicts)
        }
    }

    const WAIT: Duration = Duration::from_millis(5);

    fn batch_size() -> prometheus::Histogram {
        prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("batch_size", "test")).unwrap()
    }

    fn batched(recorder: &Arc<Recorder>, wait: Duration, max: usize, retries: u32, batch_size: prometheus::Histogram) -> Checker {
        Checker::new(recorder.clone(), Duration::from_secs(1), retries).batching(recorder.clone(), Batching { wait, max }, batch_size)
    }

    fn output(text: &str) -> Check {
        Check { stage: Stage::Output, text: text.into(), context: "".into() }
    }

    fn input(text: &str) -> Check {
        Check { stage: Stage::Input, text: text.into(), context: "".into() }
    }

    fn flagged_as(text: &str) -> Result<Verdict, ModerationError> {
        Ok(Recorder::verdict(text))
    }

    #[tokio::test(start_paused = true)]
    async fn checks_within_the_wait_share_one_request_in_arrival_order_and_a_later_one_gets_its_own() {
        let recorder = Arc::new(Recorder::new());
        let sizes = batch_size();
        let checker = batched(&recorder, WAIT, 32, 0, sizes.clone());
        let late = async {
            tokio::time::sleep(WAIT + Duration::from_millis(1)).await;
            checker.check(output("fine late")).await
        };
        // `futures::join!` polls in order, so the checks queue in this order.
        let (first, second, third, late) = futures::join!(
            checker.check(input("fine question")),
            checker.check(output("window two")),
            checker.check(output("fine window three")),
            late
        );
        assert_eq!(recorder.batches(), [vec!["fine question", "window two", "fine window three"], vec!["fine late"]]);
        assert_eq!(
            (first, second, third, late),
            (Ok(Verdict::Allowed), flagged_as("window two"), Ok(Verdict::Allowed), Ok(Verdict::Allowed))
        );
        assert_eq!(recorder.singles.load(Ordering::SeqCst), 0, "no check went alone");
        assert_eq!((sizes.get_sample_count(), sizes.get_sample_sum()), (2, 4.0), "two requests, four inputs");
    }

    #[tokio::test(start_paused = true)]
    async fn each_check_gets_the_verdict_of_its_own_result() {
        let recorder = Arc::new(Recorder::new());
        let checker = batched(&recorder, WAIT, 32, 0, batch_size());
        let texts: Vec<String> = (0..20).map(|n| if n % 3 == 0 { format!("fine {n}") } else { format!("text {n}") }).collect();
        let verdicts = futures::future::join_all(texts.iter().map(|text| checker.check(output(text)))).await;
        assert_eq!(recorder.batches().len(), 1);
        for (text, verdict) in texts.iter().zip(verdicts) {
            assert_eq!(verdict, flagged_as(text), "the verdict of {text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn more_checks_than_the_batch_max_are_split_and_full_batches_leave_without_waiting() {
        let recorder = Arc::new(Recorder::new());
        let checker = batched(&recorder, Duration::from_millis(100), 2, 0, batch_size());
        let texts = ["a", "fine b", "c", "d", "fine e"];
        let verdicts = futures::future::join_all(texts.iter().map(|text| checker.check(output(text)))).await;
        assert_eq!(recorder.batches(), [vec!["a", "fine b"], vec!["c", "d"], vec!["fine e"]]);
        let sent_at: Vec<Duration> = recorder.batches.lock().unwrap().iter().map(|(_, at)| *at).collect();
        assert_eq!(sent_at, [Duration::ZERO, Duration::ZERO, Duration::from_millis(100)], "only the partial batch waits");
        for (text, verdict) in texts.iter().zip(verdicts) {
            assert_eq!(verdict, flagged_as(text), "the verdict of {text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_of_zero_sends_one_request_per_check() {
        let recorder = Arc::new(Recorder::new());
        let checker = batched(&recorder, Duration::ZERO, 32, 0, batch_size());
        let verdicts = futures::future::join_all(["fine a", "b", "fine c"].map(|text| checker.check(output(text)))).await;
        assert_eq!(verdicts, [Ok(Verdict::Allowed), flagged_as("b"), Ok(Verdict::Allowed)]);
        assert_eq!(recorder.singles.load(Ordering::SeqCst), 3);
        assert!(recorder.batches().is_empty(), "{:?}", recorder.batches());
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_with_too_few_results_fails_every_check_of_its_batch() {
        let recorder = Arc::new(Recorder { short: true, ..Recorder::new() });
        let checker = batched(&recorder, WAIT, 32, 2, batch_size());
        let verdicts = futures::future::join_all(["fine a", "fine b", "fine c"].map(|text| checker.check(output(text)))).await;
        for verdict in verdicts {
            let Err(ModerationError::Malformed { moderator: "recorder", message }) = verdict else { panic!("{verdict:?}") };
            assert!(message.starts_with("2 results for 3 inputs"), "{message}");
        }
        assert_eq!(recorder.batches().len(), 1, "an unreadable answer is not retried");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_batch_is_retried_as_one_request_and_fails_each_check_once_retries_run_out() {
        let recorder = Arc::new(Recorder::new());
        recorder.failures.store(1, Ordering::SeqCst);
        let checker = batched(&recorder, WAIT, 32, 1, batch_size());
        let verdicts = futures::future::join_all(["fine a", "b"].map(|text| checker.check(output(text)))).await;
        assert_eq!(verdicts, [Ok(Verdict::Allowed), flagged_as("b")]);
        assert_eq!(recorder.batches(), [vec!["fine a", "b"], vec!["fine a", "b"]], "the same batch, retried");

        let recorder = Arc::new(Recorder::new());
        recorder.failures.store(5, Ordering::SeqCst);
        let checker = batched(&recorder, WAIT, 32, 1, batch_size());
        let verdicts = futures::future::join_all(["fine a", "b"].map(|text| checker.check(output(text)))).await;
        let down = ModerationError::Unavailable { moderator: "recorder", message: "refused".into() };
        assert_eq!(verdicts, [Err(down.clone()), Err(down)]);
        assert_eq!(recorder.batches().len(), 2, "one attempt and one retry");
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_dropped_before_its_batch_leaves_is_not_sent() {
        let recorder = Arc::new(Recorder::new());
        let checker = batched(&recorder, WAIT, 32, 0, batch_size());
        let mut gone = Box::pin(checker.check(output("fine gone")));
        assert!(futures::poll!(&mut gone).is_pending(), "queued");
        drop(gone);
        assert_eq!(checker.check(output("fine kept")).await, Ok(Verdict::Allowed));
        assert_eq!(recorder.batches(), [vec!["fine kept"]]);
    }
}
