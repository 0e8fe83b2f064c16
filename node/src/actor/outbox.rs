//! One outbound actor stream to one peer: senders encode frames into a shared buffer
//! under a byte budget; one writer task swaps the buffer out and writes it whole.
//!
//! Backpressure: a sender first takes as many permits of the byte budget as its frame
//! needs and waits while there are none; the writer returns them once the bytes are
//! written to the stream, which waits on Yamux's flow control, which waits on the
//! receiver reading, which waits on the receiving actor's mailbox. So a sender that never
//! waits is slowed down to the receiver's pace; nothing queues without bound.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use keys::{Chain, Path};
use libp2p::{PeerId, StreamProtocol};
use protocols::actor::{
    self, ChannelState, EnvelopeRef, Frame, Hello, Kind, MAX_CHANNELS, Refusal,
};
use protocols::wire;
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

/// How long a closed outbox is kept for refusals that may still come back about its
/// stream. A refusal is sent as soon as the message is read, so it trails its stream's end
/// by about a round trip.
const RETIRED_FOR: Duration = Duration::from_secs(60);

/// Closed outboxes kept per peer and lane: the one just replaced and the one before it.
/// One peer resetting its streams again and again does not push out anyone else's.
const RETIRED_PER_LANE: usize = 2;

/// Closed outboxes kept in all.
const RETIRED_OUTBOXES: usize = 64;

/// Channels those may hold in all: each channel names two paths a peer may have chosen
/// (up to 4 KB each), so what the closed outboxes keep is bounded by channels, not by
/// outboxes.
const RETIRED_CHANNELS: usize = 8192;

/// Outboxes closed lately, oldest first: a refusal that comes back after its stream was
/// replaced is read against the channels of the stream it is about.
#[derive(Default)]
pub(crate) struct Retired {
    outboxes: VecDeque<(Instant, Arc<Outbox>, usize)>,
    channels: usize,
}

impl Retired {
    /// Keeps `outbox` (once, however often it is retired), dropping what is too old and
    /// what is over the bounds.
    pub(crate) fn retire(&mut self, outbox: &Arc<Outbox>, now: Instant) {
        self.expire(now);
        if self.outboxes.iter().any(|(_, o, _)| Arc::ptr_eq(o, outbox)) {
            return;
        }
        let same_lane = |o: &Arc<Outbox>| o.peer == outbox.peer && o.lane == outbox.lane;
        while self
            .outboxes
            .iter()
            .filter(|(_, o, _)| same_lane(o))
            .count()
            >= RETIRED_PER_LANE
        {
            if let Some(i) = self.outboxes.iter().position(|(_, o, _)| same_lane(o)) {
                self.remove(i);
            }
        }
        let channels = outbox.channels();
        self.outboxes.push_back((now, outbox.clone(), channels));
        self.channels += channels;
        while self.outboxes.len() > RETIRED_OUTBOXES || self.channels > RETIRED_CHANNELS {
            self.remove(0);
        }
    }

    /// The closed outbox to `peer` on `lane` whose stream we numbered `stream`.
    pub(crate) fn find(
        &mut self,
        peer: PeerId,
        lane: Lane,
        stream: u64,
        now: Instant,
    ) -> Option<Arc<Outbox>> {
        self.expire(now);
        self.outboxes
            .iter()
            .rev()
            .find(|(_, o, _)| o.peer == peer && o.lane == lane && o.stream == stream)
            .map(|(_, o, _)| o.clone())
    }

    fn expire(&mut self, now: Instant) {
        while self
            .outboxes
            .front()
            .is_some_and(|(at, _, _)| now.duration_since(*at) > RETIRED_FOR)
        {
            self.remove(0);
        }
    }

    fn remove(&mut self, i: usize) {
        if let Some((_, _, channels)) = self.outboxes.remove(i) {
            self.channels -= channels;
        }
    }

    /// How many outboxes and channels are kept.
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        (self.outboxes.len(), self.channels)
    }
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
        streams: dht::Streams,
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

    /// Closes the outbox (also from our side, for a peer that stopped reading): queued
    /// frames are dropped, waiting senders see the stream lost, the writer stops.
    pub(crate) fn close(&self, reason: String) {
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

    /// How many channels the stream has opened.
    fn channels(&self) -> usize {
        self.lock().by_number.len()
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
        // Charged what it takes: a refusal names paths of up to 4 KiB, and a peer that
        // sends messages to be refused and reads none of the refusals would otherwise
        // make the outbox hold many times its budget.
        // One the peer would refuse (and count against us) is not sent.
        wire::Message::validate(&frame).map_err(SendError::Encode)?;
        let mut encoded = Vec::new();
        actor::encode_frame(&frame, &mut encoded).map_err(|e| SendError::Encode(e.to_string()))?;
        let needed = self.capacity.min(encoded.len());
        let permits = self
            .budget
            .try_acquire_many(needed as u32)
            .map_err(|_| SendError::Busy)?;
        permits.forget();
        let mut state = self.lock();
        if state.closed.is_some() {
            drop(state);
            self.budget.add_permits(needed);
            return Err(self.closed_error());
        }
        state.buffer.extend_from_slice(&encoded);
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

    async fn write(&self, mut streams: dht::Streams, chains: Vec<Chain>) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An outbox to `peer` with `channels` channels opened; its writer never reaches the
    /// peer (no swarm runs), which these tests do not need.
    fn outbox(peer: PeerId, lane: Lane, stream: u64, channels: usize) -> Arc<Outbox> {
        let control = dht::Streams::detached();
        let outbox = Outbox::open(
            peer,
            lane,
            stream,
            control,
            Vec::new(),
            1 << 20,
            Arc::default(),
            |_| {},
        );
        let root = Path::root_of(keys::Principal::from_bytes([1; 32]));
        let to = Arc::new(root.join("to").unwrap());
        let (protocol, role): (Arc<str>, Arc<str>) = (Arc::from("p/1"), Arc::from("client"));
        for i in 0..channels {
            let from = Arc::new(root.join(&format!("from{i}")).unwrap());
            outbox.channel(&from, &to, &protocol, &role).unwrap();
        }
        outbox
    }

    #[tokio::test]
    async fn closed_outboxes_are_kept_within_bounds_and_for_a_while() {
        let now = Instant::now();
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut retired = Retired::default();
        // Per peer and lane, the last two; retiring one twice keeps it once.
        let a1 = outbox(a, Lane::Requests, 1, 1);
        retired.retire(&a1, now);
        retired.retire(&a1, now);
        assert_eq!(retired.held(), (1, 1));
        for stream in 2..=4 {
            retired.retire(&outbox(a, Lane::Requests, stream, 1), now);
        }
        retired.retire(&outbox(a, Lane::Replies, 5, 1), now);
        retired.retire(&outbox(b, Lane::Requests, 6, 1), now);
        assert_eq!(retired.held(), (4, 4));
        assert!(retired.find(a, Lane::Requests, 2, now).is_none());
        let found = retired.find(a, Lane::Requests, 4, now).unwrap();
        assert_eq!(
            (found.peer, found.lane, found.stream),
            (a, Lane::Requests, 4)
        );
        // The stream numbers are looked up per lane and per peer.
        assert!(retired.find(a, Lane::Replies, 4, now).is_none());
        assert!(retired.find(b, Lane::Requests, 4, now).is_none());
        assert!(retired.find(b, Lane::Requests, 6, now).is_some());
        // Channels are bounded in all: the oldest go first.
        for (i, peer) in (0..3).map(|_| PeerId::random()).enumerate() {
            retired.retire(&outbox(peer, Lane::Replies, 10 + i as u64, 3000), now);
        }
        let (outboxes, channels) = retired.held();
        assert!(channels <= RETIRED_CHANNELS, "{channels} channels kept");
        assert_eq!(outboxes, 2, "only the two newest fit");
        assert!(retired.find(b, Lane::Requests, 6, now).is_none());
        // And time: a minute on, nothing is left.
        let later = now + RETIRED_FOR + Duration::from_secs(1);
        assert!(retired.find(a, Lane::Requests, 4, later).is_none());
        assert_eq!(retired.held(), (0, 0));
    }
}
