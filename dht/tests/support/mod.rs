//! Helpers shared by the overlay tests (a `mod.rs`, so that cargo does not build it as a
//! test of its own).

use std::time::{Duration, Instant};

/// Polls `f` every 100 ms until it gives a value; fails the test after `timeout`.
pub(crate) async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
