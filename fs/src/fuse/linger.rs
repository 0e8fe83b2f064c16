//! Staying awake between requests.
//!
//! A program that works through a mount one call at a time (`stat` after `stat`, `unlink`
//! after `unlink`) sends its next request a few microseconds after our reply. Were the
//! FUSE thread asleep in `read(2)` by then, the kernel would have to wake it, and waking a
//! thread whose CPU has gone idle costs tens of microseconds (an inter-processor
//! interrupt; on a virtual machine without guest halt-polling, an exit to the host and
//! back): on the 2-core VM of the benchmarks, two such wake-ups per call were most of a
//! `stat`'s time. So after a reply the thread watches `/dev/fuse` for a short while
//! before it goes back to sleep, as Go's runtime does for gocryptfs's threads and as the
//! kernel's `haltpoll` idle governor does for a whole CPU.
//!
//! How long it watches adapts like `haltpoll`: the window doubles (up to
//! [`MAX_WINDOW`]) while requests keep coming within it and halves when one came after
//! it, down to none at all once requests are sparse, so that an idle mount costs nothing.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// The longest a FUSE thread watches for the next request after a reply.
pub const MAX_WINDOW: Duration = Duration::from_micros(100);

/// The first window after a quiet spell; windows shorter than this are none.
pub const MIN_WINDOW: Duration = Duration::from_micros(25);

/// The watch window and when the last reply went out.
#[derive(Debug, Default)]
pub struct Window {
    window: Duration,
    last_reply: Option<Instant>,
}

impl Window {
    /// The window now.
    pub fn current(&self) -> Duration {
        self.window
    }

    /// A request arrived at `now`: the window grows if it came soon enough after the
    /// last reply to be caught by a full window, and shrinks otherwise.
    pub fn arrived(&mut self, now: Instant) {
        let Some(last) = self.last_reply.take() else {
            return;
        };
        if now.saturating_duration_since(last) <= MAX_WINDOW {
            self.window = (self.window * 2).clamp(MIN_WINDOW, MAX_WINDOW);
        } else {
            self.window /= 2;
            if self.window < MIN_WINDOW {
                self.window = Duration::ZERO;
            }
        }
    }

    /// A reply went out at `now`: how long to watch for the next request.
    pub fn replied(&mut self, now: Instant) -> Duration {
        self.last_reply = Some(now);
        self.window
    }
}

/// Watches `device` until it has a request to read (or reports an error or hang-up, which
/// the session's next read will meet) or `window` has passed; false if it stayed quiet
/// for the whole window, or cannot be polled.
pub fn watch(device: &OwnedFd, window: Duration) -> bool {
    if window.is_zero() {
        return false;
    }
    let start = Instant::now();
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    loop {
        let mut fds = [rustix::event::PollFd::new(
            device,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut fds, Some(&now)) {
            Ok(0) => {}
            Ok(_) => return true,
            Err(_) => return false,
        }
        if start.elapsed() >= window {
            return false;
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn the_window_opens_while_requests_come_close_together_and_closes_when_they_stop() {
        let mut w = Window::default();
        let t0 = Instant::now();
        // The first request has nothing to go by.
        w.arrived(t0);
        assert_eq!(w.replied(t0 + us(10)), Duration::ZERO);
        // Requests 30 us after each reply: the window opens and doubles up to the bound.
        let mut t = t0 + us(10);
        let mut seen = Vec::new();
        for _ in 0..6 {
            t += us(30);
            w.arrived(t);
            t += us(10);
            seen.push(w.replied(t));
        }
        assert_eq!(
            seen,
            [us(25), us(50), us(100), us(100), us(100), us(100)],
            "grows from the minimum to the bound"
        );
        // A request long after the reply (the program paused): the window halves each
        // time, and is gone once it would fall under the minimum.
        let mut seen = Vec::new();
        for _ in 0..5 {
            t += Duration::from_millis(5);
            w.arrived(t);
            t += us(10);
            seen.push(w.replied(t));
        }
        assert_eq!(
            seen,
            [
                us(50),
                us(25),
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO
            ]
        );
        // A request just past the bound does not count as caught.
        t += MAX_WINDOW + us(1);
        w.arrived(t);
        assert_eq!(w.current(), Duration::ZERO);
    }

    #[test]
    fn a_watch_ends_at_once_when_a_request_is_waiting_and_after_the_window_otherwise() {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        let reader = OwnedFd::from(reader);
        assert!(!watch(&reader, Duration::ZERO), "no window, no watch");
        let start = Instant::now();
        assert!(!watch(&reader, us(300)), "nothing to read");
        assert!(start.elapsed() >= us(300), "watched the whole window");
        std::io::Write::write_all(&mut &writer, b"x").expect("written");
        // A watch that ran out would say false: this one ended on the byte.
        assert!(
            watch(&reader, Duration::from_secs(600)),
            "something to read"
        );
    }
}
