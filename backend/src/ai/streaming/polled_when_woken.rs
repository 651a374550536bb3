//! A future that is polled again only after it woke its task. A generation's
//! loop selects over its events, its cancel token and its abandonment timer, and
//! so polls all three for every event; the two that rarely fire cost a mutex lock
//! or two per poll (`CancellationToken::is_cancelled`, a `Notify`'s waiter list):
//! 4 % of a generating process's CPU (bench/RESULTS.md). Wrapped, each costs a
//! flag check until it actually wakes.
//!
//! The inner future is given a waker of ours that raises a flag, then wakes the
//! task. While the flag is down and the task's waker unchanged, nothing the inner
//! future waits on has happened, so polling it would only return `Pending`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

pub struct PolledWhenWoken<F> {
    inner: Pin<Box<F>>,
    /// Our waker, and the flag behind it, for the task waker it forwards to.
    hook: Option<(Arc<Hook>, Waker)>,
}

struct Hook {
    woken: AtomicBool,
    task: Waker,
}

impl Wake for Hook {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl<F: Future> PolledWhenWoken<F> {
    pub fn new(inner: F) -> Self {
        Self { inner: Box::pin(inner), hook: None }
    }
}

impl<F: Future> Future for PolledWhenWoken<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        match &this.hook {
            Some((hook, _)) if hook.task.will_wake(cx.waker()) => {
                if !hook.woken.swap(false, Ordering::AcqRel) {
                    return Poll::Pending;
                }
            }
            // First poll, or another task waker: the inner future must learn ours.
            _ => {
                let hook = Arc::new(Hook { woken: AtomicBool::new(false), task: cx.waker().clone() });
                this.hook = Some((hook.clone(), Waker::from(hook)));
            }
        }
        let (_, waker) = this.hook.as_ref().expect("set above");
        this.inner.as_mut().poll(&mut Context::from_waker(waker))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio_util::sync::CancellationToken;

    use super::*;

    /// Pending forever, counting its polls and keeping the last waker it got.
    struct Counted {
        polls: Arc<AtomicUsize>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Counted {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_inner_future_is_polled_again_only_after_it_woke_the_task_or_the_task_changed() {
        let (polls, inner_waker) = (Arc::new(AtomicUsize::new(0)), Arc::default());
        let mut future = PolledWhenWoken::new(Counted { polls: polls.clone(), waker: Arc::clone(&inner_waker) });
        let task = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..5 {
            assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);

        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the inner future's wake reaches the task");
        assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2);

        let other = Waker::from(Arc::new(CountWakes(AtomicUsize::new(0))));
        assert!(Pin::new(&mut future).poll(&mut Context::from_waker(&other)).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_wrapped_cancellation_resolves_when_the_token_or_its_parent_is_cancelled() {
        for cancel_parent in [false, true] {
            let parent = CancellationToken::new();
            let token = parent.child_token();
            let cancelled = PolledWhenWoken::new(token.clone().cancelled_owned());
            tokio::pin!(cancelled);
            let mut ticks = 0;
            loop {
                tokio::select! {
                    biased;
                    () = &mut cancelled => break,
                    () = tokio::task::yield_now() => ticks += 1,
                }
                if ticks == 3 {
                    if cancel_parent {
                        parent.cancel()
                    } else {
                        token.cancel()
                    }
                }
            }
            assert_eq!(ticks, 3);
        }
        let already = CancellationToken::new();
        already.cancel();
        PolledWhenWoken::new(already.cancelled_owned()).await;
    }
}
