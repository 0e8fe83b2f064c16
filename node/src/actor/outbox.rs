//! One outbound actor stream to one peer: senders encode frames into a shared buffer
//! under a byte budget; one writer task swaps the buffer out and writes it whole.
//!
//! Backpressure: a sender first takes as many permits of the byte budget as its frame
//! needs and waits while there are none; the writer returns them once the bytes are
//! written to the stream, which waits on Yamux's flow control, which waits on the
//! receiver reading, which waits on the receiving actor's mailbox. So a sender that never
//! waits is slowed down to the receiver's pace; nothing queues without bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use keys::{Chain, Path};
use libp2p::{PeerId, StreamProtocol};
use protocols::actor::{
    self, ChannelState, EnvelopeRef, Frame, Hello, Kind, MAX_CHANNELS, Refusal,
};
use tokio::sync::{Notify, Semaphore};

use super::SendError;

/// How long a write may wait for the peer to read before the stream is given up.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long opening a stream to a peer may take, all attempts together; messages queue
/// meanwhile.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// (from, to, protocol, the sender's role).
pub(crate) type ChannelKey = (Arc<Path>, Arc<Path>, Arc<str>, Arc<str>);

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    /// Permits taken by the frames in `buffer`.
    permits: usize,
    channels: HashMap<ChannelKey, u32>,
    /// The channels by number (for reading refusals), each with what its last message
    /// said: the next one leaves out a session and label that did not change.
    by_number: Vec<(ChannelKey, ChannelState<String>)>,
    closed: Option<String>,
}

/// Which of the two streams to a peer an outbox feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    /// Tells and asks: what the peer's mailboxes may hold back.
    Requests,
    /// Replies and refusals: read at once whatever the peer's mailboxes are doing, so an
    /// answer never waits behind requests (and two actors telling each other cannot
    /// wedge both streams).
    Replies,
}

/// The sending side of one stream.
pub(crate) struct Outbox {
    pub(crate) peer: PeerId,
    pub(crate) lane: Lane,
    /// Our number for the stream, told in its hello and named by the peer's refusals.
    pub(crate) stream: u64,
    state: Mutex<State>,
    wake: Notify,
    budget: Semaphore,
    capacity: usize,
    closed: AtomicBool,
    counters: Arc<Counters>,
}

/// What every outbox of a runtime counts.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Sends that found the budget spent and waited.
    pub(crate) waits: AtomicU64,
    /// Streams that closed with queued messages.
    pub(crate) lost: AtomicU64,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// An outbox to `peer` whose writer task runs on `streams`; `capacity` bytes may wait
    /// unwritten. `stream` numbers it among this runtime's streams to `peer`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open(
        peer: PeerId,
        lane: Lane,
        stream: u64,
        streams: libp2p_stream::Control,
        chains: Vec<Chain>,
        capacity: usize,
        counters: Arc<Counters>,
        on_close: impl FnOnce(&Arc<Outbox>) + Send + 'static,
    ) -> Arc<Outbox> {
        let outbox = Arc::new(Outbox {
            peer,
            lane,
            stream,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            budget: Semaphore::new(capacity),
            capacity,
            closed: AtomicBool::new(false),
            counters,
        });
        let writer = outbox.clone();
        let span = tracing::debug_span!("outbox", %peer);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let reason = match writer.write(streams, chains).await {
                    Ok(()) => "closed".to_string(),
                    Err(e) => e,
                };
                tracing::debug!(reason = %reason, "actor stream ended");
                writer.close(reason);
                on_close(&writer);
            },
            span,
        ));
        outbox
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves only bytes in a buffer behind.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the stream has ended; a closed outbox takes no more frames.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn close(&self, reason: String) {
        let mut state = self.lock();
        if !state.buffer.is_empty() {
            // Taken by `tell` (at most once) but never written: say so.
            tracing::warn!(peer = %self.peer, bytes = state.buffer.len(), reason = %reason, "an actor stream closed with messages still queued; they are lost");
            self.counters.lost.fetch_add(1, Ordering::Relaxed);
        }
        state.closed.get_or_insert(reason);
        state.buffer = Vec::new();
        drop(state);
        self.closed.store(true, Ordering::Release);
        // Wake every waiting sender (they see the outbox closed) and the writer.
        self.budget.close();
        self.wake.notify_one();
    }

    fn closed_error(&self) -> SendError {
        let reason = self.lock().closed.clone().unwrap_or_default();
        SendError::ConnectionLost {
            peer: self.peer.to_string(),
            reason,
        }
    }

    /// The channel number of `(from, to, protocol, role)`, opening it when new.
    pub(crate) fn channel(
        &self,
        from: &Arc<Path>,
        to: &Arc<Path>,
        protocol: &Arc<str>,
        role: &Arc<str>,
    ) -> Result<u32, SendError> {
        let mut state = self.lock();
        if state.closed.is_some() {
            drop(state);
            return Err(self.closed_error());
        }
        let key = (from.clone(), to.clone(), protocol.clone(), role.clone());
        if let Some(channel) = state.channels.get(&key) {
            return Ok(*channel);
        }
        let channel = state.by_number.len() as u32;
        if channel >= MAX_CHANNELS {
            // Opening more would be refused; the next send opens a fresh stream.
            drop(state);
            self.close("channel table full".into());
            return Err(self.closed_error());
        }
        let open = Frame::Open {
            channel,
            from: (**from).clone(),
            to: (**to).clone(),
            protocol: protocol.to_string(),
            role: role.to_string(),
        };
        actor::encode_frame(&open, &mut state.buffer)
            .map_err(|e| SendError::Encode(e.to_string()))?;
        state.channels.insert(key.clone(), channel);
        state.by_number.push((key, ChannelState::default()));
        drop(state);
        self.wake.notify_one();
        Ok(channel)
    }

    /// The `(from, to, protocol)` of one of our channels.
    pub(crate) fn channel_key(&self, channel: u32) -> Option<ChannelKey> {
        self.lock()
            .by_number
            .get(channel as usize)
            .map(|(key, _)| key.clone())
    }

    /// Queues one message, waiting while the byte budget is spent. Cancel-safe: a
    /// cancelled call has queued nothing.
    pub(crate) async fn send(&self, envelope: EnvelopeRef<'_>) -> Result<(), SendError> {
        if self.try_send(envelope)? {
            return Ok(());
        }
        self.counters.waits.fetch_add(1, Ordering::Relaxed);
        let needed = self.permits_for(envelope);
        self.budget
            .acquire_many(needed as u32)
            .await
            .map_err(|_| self.closed_error())?
            .forget();
        self.push(envelope, needed)
    }

    /// Queues one message if the byte budget has room now: `Ok(false)` when it has not
    /// (then [`Outbox::send`] waits for it). Nothing to await: the hot path of a tell.
    pub(crate) fn try_send(&self, envelope: EnvelopeRef<'_>) -> Result<bool, SendError> {
        let needed = self.permits_for(envelope);
        match self.budget.try_acquire_many(needed as u32) {
            Ok(permits) => {
                permits.forget();
                self.push(envelope, needed)?;
                Ok(true)
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => Ok(false),
            Err(tokio::sync::TryAcquireError::Closed) => Err(self.closed_error()),
        }
    }

    /// Queues more chains for the peer (it verifies them as it did the first hello).
    pub(crate) fn hello(&self, chain: Chain) {
        let frame = Frame::Hello(Hello {
            stream: self.stream,
            chains: vec![chain],
        });
        let mut state = self.lock();
        if state.closed.is_some() {
            return;
        }
        // Outside the byte budget: rare, small, and it must not wait.
        if let Err(e) = actor::encode_frame(&frame, &mut state.buffer) {
            tracing::warn!(error = %e, "cannot send a new chain");
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Queues a refusal of a message the peer sent us on its stream numbered `stream`.
    pub(crate) fn refuse(
        &self,
        stream: u64,
        channel: u32,
        sequence: u64,
        kind: Kind,
        refusal: Refusal,
    ) -> Result<(), SendError> {
        let frame = Frame::Refused {
            stream,
            channel,
            sequence,
            kind,
            refusal,
        };
        let needed = self.capacity.min(256);
        let permits = self
            .budget
            .try_acquire_many(needed as u32)
            .map_err(|_| SendError::Busy)?;
        permits.forget();
        let mut state = self.lock();
        if state.closed.is_some() {
            drop(state);
            return Err(self.closed_error());
        }
        if let Err(e) = actor::encode_frame(&frame, &mut state.buffer) {
            drop(state);
            self.budget.add_permits(needed);
            return Err(SendError::Encode(e.to_string()));
        }
        state.permits += needed;
        drop(state);
        self.wake.notify_one();
        Ok(())
    }

    fn permits_for(&self, envelope: EnvelopeRef<'_>) -> usize {
        (envelope.payload.len() + envelope.label.len() + 48).min(self.capacity)
    }

    fn push(&self, envelope: EnvelopeRef<'_>, permits: usize) -> Result<(), SendError> {
        let mut guard = self.lock();
        if guard.closed.is_some() {
            drop(guard);
            self.budget.add_permits(permits);
            return Err(self.closed_error());
        }
        let state = &mut *guard;
        // The writer waits only after finding the buffer empty: wake it for the first
        // frame after that, not for every one.
        let first = state.buffer.is_empty();
        let encoded = match state.by_number.get_mut(envelope.channel as usize) {
            Some((_, sent)) => actor::encode_message(sent, envelope, &mut state.buffer)
                .map_err(|e| SendError::Encode(e.to_string())),
            None => Err(SendError::Encode(format!(
                "no channel {} on this stream",
                envelope.channel
            ))),
        };
        if let Err(e) = encoded {
            drop(guard);
            self.budget.add_permits(permits);
            return Err(e);
        }
        guard.permits += permits;
        drop(guard);
        if first {
            self.wake.notify_one();
        }
        Ok(())
    }

    async fn write(
        &self,
        mut streams: libp2p_stream::Control,
        chains: Vec<Chain>,
    ) -> Result<(), String> {
        let protocol = StreamProtocol::new(actor::PROTOCOL_NAME);
        // A connection may be dropping or still coming up: try again for a while before
        // giving up on what is queued.
        let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT;
        let mut backoff = Duration::from_millis(100);
        let mut hello = Vec::new();
        actor::encode_frame(
            &Hello {
                stream: self.stream,
                chains,
            },
            &mut hello,
        )
        .map_err(|e| e.to_string())?;
        let stream = loop {
            let attempt =
                tokio::time::timeout_at(deadline, streams.open_stream(self.peer, protocol.clone()))
                    .await
                    .map_err(|_| format!("no stream could be opened within {OPEN_TIMEOUT:?}"))?;
            let attempt: Result<(), String> = match attempt {
                // Nothing queued goes out before the peer has taken the stream: it answers
                // the hello with one byte. A stream it dropped unread (a busy peer drops
                // streams it cannot take at once) is opened again, and nothing is lost.
                Ok(mut stream) => {
                    let welcomed = tokio::time::timeout_at(deadline, async {
                        stream.write_all(&hello).await?;
                        stream.flush().await?;
                        let mut ack = [0u8; 1];
                        stream.read_exact(&mut ack).await?;
                        if ack[0] == actor::WELCOME {
                            Ok(())
                        } else {
                            Err(std::io::Error::other("a bad welcome"))
                        }
                    })
                    .await
                    .map_err(|_| format!("no welcome within {OPEN_TIMEOUT:?}"))?;
                    match welcomed {
                        Ok(()) => break stream,
                        Err(e) => Err(format!("the peer did not take the stream: {e}")),
                    }
                }
                Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(p)) => {
                    return Err(format!("the peer does not speak {p}"));
                }
                Err(e) => Err(e.to_string()),
            };
            match attempt {
                Ok(()) => {}
                Err(e) if tokio::time::Instant::now() + backoff < deadline => {
                    tracing::debug!(error = %e, "opening an actor stream; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        };
        // The peer writes nothing more on this stream; reading tells at once when it goes
        // away.
        let (mut reader, mut stream) = stream.split();
        let mut spare = Vec::new();
        loop {
            let permits = {
                let mut state = self.lock();
                if let Some(reason) = &state.closed {
                    return Err(reason.clone());
                }
                std::mem::swap(&mut state.buffer, &mut spare);
                std::mem::take(&mut state.permits)
            };
            if spare.is_empty() {
                stream.flush().await.map_err(|e| e.to_string())?;
                let mut byte = [0u8; 1];
                tokio::select! {
                    () = self.wake.notified() => {}
                    read = reader.read(&mut byte) => return Err(match read {
                        Ok(0) => "the peer closed the stream".to_string(),
                        Ok(_) => "the peer wrote on a one-way stream".to_string(),
                        Err(e) => e.to_string(),
                    }),
                }
                continue;
            }
            // A peer that stops reading would hold every sender here for ever: give up
            // on it (waiting senders then see the stream lost).
            let written = tokio::time::timeout(STALL_TIMEOUT, stream.write_all(&spare)).await;
            self.budget.add_permits(permits);
            written
                .map_err(|_| format!("the peer read nothing for {STALL_TIMEOUT:?}"))?
                .map_err(|e| e.to_string())?;
            spare.clear();
            if spare.capacity() > 4 * self.capacity {
                spare = Vec::new();
            }
        }
    }
}
