//! `futures_timer::Delay`, with the same API, on tokio's timer.
//!
//! libp2p's crates time everything with `futures-timer`: every stream a Kademlia or
//! identify handler opens gets a timeout, every idle connection a shutdown timer,
//! gossipsub a heartbeat, ping an interval. `futures-timer` keeps its timers on one
//! helper thread: creating, resetting or dropping a `Delay` pushes it onto a list and
//! unparks that thread (a futex wake), and a timer that fires wakes its task from there,
//! another cross-thread wake into the runtime. In the simulator (a thousand nodes, two
//! cores) that thread took a quarter of a core, and futex calls and the kernel's task
//! switching were 29 % of all samples. Every part of Blocktree runs on tokio, whose timer
//! wheel lives in the runtime's own driver: arming and cancelling a timer is a local
//! operation and an expired timer is woken by the worker that drives the clock.
//!
//! The workspace patches this crate in for crates.io's `futures-timer` 3 (same name and
//! version). A `Delay` records its deadline when created and arms a `tokio::time::Sleep`
//! the first time it is polled, so one may be made outside a runtime (a behaviour built
//! before the swarm is spawned) as long as it is polled inside one. Polled outside any
//! tokio runtime, it uses a small runtime of its own on a background thread, started on
//! first use, which is what `futures-timer` always did. A runtime polled in must have its
//! timer enabled (`enable_time` or `enable_all`), as for any tokio timer.
//!
//! Differences a caller could see: deadlines have tokio's 1 ms resolution, and under a
//! runtime whose clock is paused (tests with `start_paused`), libp2p's timers follow the
//! paused clock like the caller's own.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::{Instant, Sleep};

/// A future that completes at a point in time (`futures_timer::Delay`'s API).
pub struct Delay {
    deadline: Instant,
    /// Armed on the first poll, in the runtime that polls.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Delay {
    /// A delay that completes `dur` from now.
    pub fn new(dur: Duration) -> Delay {
        Delay {
            deadline: deadline_in(dur),
            sleep: None,
        }
    }

    /// Makes the delay complete `dur` from now instead, whether or not it had completed.
    pub fn reset(&mut self, dur: Duration) {
        self.deadline = deadline_in(dur);
        if let Some(sleep) = &mut self.sleep {
            sleep.as_mut().reset(self.deadline);
        }
    }
}

/// `now + dur`, or about thirty years from now when that overflows (tokio's own limit
/// for a far deadline; `futures-timer` panicked on overflow).
fn deadline_in(dur: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(dur)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

impl Future for Delay {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let deadline = this.deadline;
        let sleep = this.sleep.get_or_insert_with(|| arm(deadline));
        sleep.as_mut().poll(cx)
    }
}

/// A `Sleep` until `deadline` in the current runtime, or in the fallback one when the
/// caller runs outside tokio.
fn arm(deadline: Instant) -> Pin<Box<Sleep>> {
    match Handle::try_current() {
        Ok(_) => Box::pin(tokio::time::sleep_until(deadline)),
        Err(_) => {
            let _entered = fallback().enter();
            Box::pin(tokio::time::sleep_until(deadline))
        }
    }
}

/// A current-thread runtime with only a timer, driven by a thread of its own.
fn fallback() -> &'static Handle {
    static FALLBACK: OnceLock<Handle> = OnceLock::new();
    FALLBACK.get_or_init(|| {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime,
            // Without a runtime no timer can ever fire; futures-timer would equally have
            // failed without its helper thread. Nothing to return but this.
            Err(e) => panic!("futures-timer (tokio): cannot start a timer runtime: {e}"),
        };
        let handle = runtime.handle().clone();
        let spawned = std::thread::Builder::new()
            .name("futures-timer".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()));
        if let Err(e) = spawned {
            panic!("futures-timer (tokio): cannot start the timer thread: {e}");
        }
        handle
    })
}

impl fmt::Debug for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delay")
            .field("deadline", &self.deadline)
            .field("armed", &self.sleep.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn completes_at_its_deadline_and_stays_complete() {
        let start = Instant::now();
        let mut delay = Delay::new(Duration::from_secs(5));
        (&mut delay).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // Completed stays completed, as futures-timer's does.
        (&mut delay).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn reset_moves_the_deadline_before_and_after_completion() {
        let start = Instant::now();
        let mut delay = Delay::new(Duration::from_secs(5));
        // Armed, then moved later.
        assert!(futures::poll!(&mut delay).is_pending());
        delay.reset(Duration::from_secs(8));
        (&mut delay).await;
        assert_eq!(start.elapsed(), Duration::from_secs(8));
        // Completed, then re-armed: pending again until the new deadline.
        delay.reset(Duration::from_secs(2));
        assert!(futures::poll!(&mut delay).is_pending());
        (&mut delay).await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        // Reset before its first poll: the later deadline counts.
        let mut fresh = Delay::new(Duration::from_secs(1));
        fresh.reset(Duration::from_secs(3));
        fresh.await;
        assert_eq!(start.elapsed(), Duration::from_secs(13));
    }

    #[test]
    fn made_outside_a_runtime_and_polled_inside_one() {
        let delay = Delay::new(Duration::from_secs(60));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let start = Instant::now();
            delay.await;
            // The deadline was taken from the real clock before the runtime paused its
            // own; it fires at most 60 s into the paused clock.
            assert!(start.elapsed() <= Duration::from_secs(60));
        });
    }

    #[test]
    fn polled_outside_any_runtime_fires_from_the_fallback_thread() {
        let start = std::time::Instant::now();
        futures::executor::block_on(Delay::new(Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn an_overflowing_duration_is_a_far_deadline_not_a_panic() {
        let mut delay = Delay::new(Duration::MAX);
        delay.reset(Duration::MAX);
        assert!(futures::executor::block_on(async { futures::poll!(&mut delay) }).is_pending());
    }
}
