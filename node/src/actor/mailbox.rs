//! An actor's mailbox: a bounded queue that producers fill in batches (a stream's reader
//! queues every message of one read at once) and the actor empties in batches (it takes
//! everything queued in one step), so a message costs a share of one lock, not a lock,
//! a semaphore and a wake-up of its own.
//!
//! Bounds: at most `capacity` messages, and payloads of at most [`MAX_QUEUED_BYTES`]
//! (or one message, however large), wait in the queue; the actor holds at most as many
//! more, taken but not yet handled. A producer that finds the queue full waits until the
//! actor takes from it: backpressure, never loss.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

use super::Incoming;

/// The mailbox was closed (the actor stopped); nothing more is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// What [`Mailbox::take`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    /// Messages were moved into the actor's batch.
    Some,
    /// Nothing is queued: wait on [`Mailbox::ready`].
    Empty,
    /// Closed, and nothing is left.
    Closed,
}

/// Payload bytes that may wait in one mailbox (beyond one message, however large): a
/// count alone let a peer queue 1024 messages of 4 MiB for one slow actor, and the actor
/// take as many again.
pub(crate) const MAX_QUEUED_BYTES: usize = 16 << 20;

/// The queue, with what its payloads take and whether a producer found no room.
#[derive(Default)]
struct Queue {
    items: VecDeque<Incoming>,
    bytes: usize,
    /// A producer waits for room: the next `take` wakes it.
    full: bool,
}

/// Whether a message of `size` payload bytes fits behind `len` messages of `bytes`: an
/// empty queue takes any one.
fn fits(len: usize, bytes: usize, size: usize, capacity: usize) -> bool {
    len == 0 || (len < capacity && bytes + size <= MAX_QUEUED_BYTES)
}

pub(crate) struct Mailbox {
    queue: Mutex<Queue>,
    capacity: usize,
    closed: AtomicBool,
    /// Wakes the actor: something was queued to an empty queue, or the mailbox closed.
    ready: Notify,
    /// Wakes producers waiting for room.
    room: Notify,
    /// Messages taken by the actor and not yet handled.
    held: AtomicUsize,
}

impl Mailbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Mailbox {
            queue: Mutex::new(Queue::default()),
            capacity: capacity.max(1),
            closed: AtomicBool::new(false),
            ready: Notify::new(),
            room: Notify::new(),
            held: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Nothing panics while holding it; a poisoned queue is still a valid queue.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Messages waiting, queued or taken but not yet handled.
    pub(crate) fn queued(&self) -> usize {
        self.lock().items.len() + self.held.load(Ordering::Relaxed)
    }

    /// Queues what fits of `items`, from the front; how many it queued. Closed: none.
    fn push_some(&self, items: &mut Vec<Incoming>) -> Result<usize, Closed> {
        let mut queue = self.lock();
        // Checked under the lock: `close` sets the flag, then empties the queue under it,
        // so nothing is queued after the queue was emptied for good.
        if self.is_closed() {
            return Err(Closed);
        }
        let was_empty = queue.items.is_empty();
        let (mut n, mut len, mut bytes) = (0, queue.items.len(), queue.bytes);
        while let Some(next) = items.get(n) {
            let size = next.payload.len();
            if !fits(len, bytes, size, self.capacity) {
                break;
            }
            (n, len, bytes) = (n + 1, len + 1, bytes + size);
        }
        queue.items.extend(items.drain(..n));
        queue.bytes = bytes;
        if n < items.len() {
            queue.full = true;
        }
        drop(queue);
        if was_empty && n > 0 {
            // A permit is kept if the actor is not waiting yet: no wake-up is lost.
            self.ready.notify_one();
        }
        Ok(n)
    }

    /// Queues every one of `items` in order, waiting while the queue is full. On `Err`
    /// the items not queued are left in `items`. Cancel-safe: what is left in `items`
    /// was not queued.
    pub(crate) async fn push(&self, items: &mut Vec<Incoming>) -> Result<(), Closed> {
        self.push_some(items)?;
        while !items.is_empty() {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before looking, so a `take` in between is not missed.
            room.as_mut().enable();
            if self.push_some(items)? == 0 {
                room.await;
            }
        }
        Ok(())
    }

    /// Queues `incoming`, waiting while the queue is full; hands it back if the mailbox
    /// is closed. Cancel-safe: a cancelled call has queued nothing.
    pub(crate) async fn push_one(&self, incoming: Incoming) -> Result<(), Incoming> {
        let mut item = Some(incoming);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            {
                let mut queue = self.lock();
                if self.is_closed() {
                    return Err(item.take().expect("held until queued"));
                }
                if let Some(incoming) = item.take_if(|i| {
                    fits(
                        queue.items.len(),
                        queue.bytes,
                        i.payload.len(),
                        self.capacity,
                    )
                }) {
                    let was_empty = queue.items.is_empty();
                    queue.bytes += incoming.payload.len();
                    queue.items.push_back(incoming);
                    drop(queue);
                    if was_empty {
                        self.ready.notify_one();
                    }
                    return Ok(());
                }
                // Registered while the queue is locked full, so the `take` that makes
                // room is not missed.
                queue.full = true;
                room.as_mut().enable();
            }
            room.await;
        }
    }

    /// Moves everything queued into `batch`, which must be empty.
    pub(crate) fn take(&self, batch: &mut VecDeque<Incoming>) -> Taken {
        debug_assert!(batch.is_empty());
        let mut queue = self.lock();
        if queue.items.is_empty() {
            return if self.is_closed() {
                Taken::Closed
            } else {
                Taken::Empty
            };
        }
        let was_full = std::mem::take(&mut queue.full);
        std::mem::swap(&mut queue.items, batch);
        queue.bytes = 0;
        drop(queue);
        self.held.store(batch.len(), Ordering::Relaxed);
        if was_full {
            self.room.notify_waiters();
        }
        Taken::Some
    }

    /// Notes that the actor has `left` messages of its batch still to handle.
    pub(crate) fn holding(&self, left: usize) {
        self.held.store(left, Ordering::Relaxed);
    }

    /// Resolves when something may have been queued, or the mailbox closed.
    pub(crate) async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Takes no more messages; those queued are handed back (to be dropped, which
    /// refuses their asks) and waiting producers see it closed.
    pub(crate) fn close(&self) -> VecDeque<Incoming> {
        let queued = {
            let mut queue = self.lock();
            self.closed.store(true, Ordering::Release);
            queue.bytes = 0;
            std::mem::take(&mut queue.items)
        };
        self.held.store(0, Ordering::Relaxed);
        self.ready.notify_one();
        self.room.notify_waiters();
        queued
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn message(n: u64) -> Incoming {
        let path = keys::Path::root_of(keys::Principal::from_bytes([1; 32]));
        let origin = super::super::Origin {
            from: Arc::new(path),
            protocol: Arc::from(""),
            role: Arc::from(""),
            peer: super::super::sessions::Peer {
                key: 0,
                node: 0,
                served: None,
            },
        };
        Incoming {
            origin: Arc::new(origin),
            session: n,
            label: super::super::Label::new("n"),
            payload: Vec::new(),
            reply: None,
        }
    }

    fn sized(n: u64, bytes: usize) -> Incoming {
        Incoming {
            payload: vec![0; bytes],
            ..message(n)
        }
    }

    /// Payloads count too: a few large messages fill the mailbox as many small ones do,
    /// and the producer waits for the actor; one message larger than the whole budget
    /// still goes through, alone.
    #[tokio::test]
    async fn large_payloads_fill_a_mailbox_by_their_bytes() {
        let mailbox = Arc::new(Mailbox::new(1024));
        let quarter = MAX_QUEUED_BYTES / 4;
        let producer = {
            let mailbox = mailbox.clone();
            tokio::spawn(async move {
                let mut items: Vec<Incoming> = (0..10).map(|n| sized(n, quarter)).collect();
                items.push(sized(10, MAX_QUEUED_BYTES + 1));
                items.push(sized(11, 1));
                for item in items {
                    if mailbox.push_one(item).await.is_err() {
                        return Err(Closed);
                    }
                }
                Ok(())
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!producer.is_finished(), "ten quarters do not fit");
        assert_eq!(mailbox.queued(), 4);
        let mut seen = Vec::new();
        let mut batch = VecDeque::new();
        while seen.len() < 12 {
            match mailbox.take(&mut batch) {
                Taken::Some => {
                    let bytes: usize = batch.iter().map(|m| m.payload.len()).sum();
                    assert!(batch.len() == 1 || bytes <= MAX_QUEUED_BYTES, "{bytes}");
                    seen.extend(sessions(&batch));
                    batch.clear();
                }
                Taken::Empty => mailbox.ready().await,
                Taken::Closed => panic!("not closed"),
            }
        }
        assert_eq!(seen, (0..12).collect::<Vec<_>>());
        assert_eq!(producer.await.unwrap(), Ok(()));
    }

    fn sessions(batch: &VecDeque<Incoming>) -> Vec<u64> {
        batch.iter().map(|m| m.session).collect()
    }

    #[tokio::test]
    async fn a_full_mailbox_holds_the_producer_back_and_keeps_the_order() {
        let mailbox = Arc::new(Mailbox::new(4));
        let producer = {
            let mailbox = mailbox.clone();
            tokio::spawn(async move {
                let mut items: Vec<Incoming> = (0..10).map(message).collect();
                mailbox.push(&mut items).await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!producer.is_finished(), "10 messages do not fit in 4");
        assert_eq!(mailbox.queued(), 4);
        let mut seen = Vec::new();
        let mut batch = VecDeque::new();
        while seen.len() < 10 {
            match mailbox.take(&mut batch) {
                Taken::Some => {
                    assert!(batch.len() <= 4);
                    seen.extend(sessions(&batch));
                    batch.clear();
                }
                Taken::Empty => mailbox.ready().await,
                Taken::Closed => panic!("not closed"),
            }
        }
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(producer.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn closing_hands_back_the_queue_and_refuses_more() {
        let mailbox = Mailbox::new(2);
        mailbox.push_one(message(1)).await.unwrap();
        let waiting = {
            let mut items: Vec<Incoming> = (2..5).map(message).collect();
            let pushed = tokio::time::timeout(Duration::from_millis(50), mailbox.push(&mut items));
            assert!(pushed.await.is_err(), "the queue is full");
            items
        };
        // The cancelled push queued exactly what it took out of `items`.
        assert_eq!(waiting.len(), 2);
        let queued = mailbox.close();
        assert_eq!(sessions(&queued), vec![1, 2]);
        assert!(mailbox.push_one(message(9)).await.is_err());
        let mut rest = vec![message(10)];
        assert_eq!(mailbox.push(&mut rest).await, Err(Closed));
        assert_eq!(rest.len(), 1);
        assert_eq!(mailbox.take(&mut VecDeque::new()), Taken::Closed);
    }
}
