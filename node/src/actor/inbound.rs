//! Reading actor streams: the peer's hello, then its frames, each checked before it
//! reaches an actor.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::{AsyncReadExt, StreamExt};
use keys::{Chain, Path};
use libp2p::{PeerId, Stream};
use protocols::actor::{
    ChannelState, Frame, FrameDecoder, FrameRef, Hello, Kind, MessageRef, Refusal,
};

use super::outbox::{Lane, Outbox};
use super::supervisor::Slot;
use super::{Back, Incoming, Inner, Label, Origin, RefusalNotice, ReplyTo, lock, read, write};

/// Bytes asked for per read.
const READ_BYTES: usize = 64 * 1024;

/// Most new chains (not remembered for the peer already) a stream may present in hellos
/// after its first. A node sends one such hello per writecap it receives while the
/// stream is open (of its first 64), with that one chain.
const MAX_LATER_CHAINS: usize = 4 * protocols::actor::MAX_HELLO_CHAINS;

/// How often a stream's refusals of our messages are logged as warnings at most (the
/// others at debug level).
const REFUSALS_WARNED_EVERY: Duration = Duration::from_secs(1);

/// Most messages handed to a mailbox at once.
const MAX_BATCH: usize = 256;

/// How long a new stream may take to present its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Memory one stream's channel table may take, as [`held_bytes`] counts it. A channel
/// holds two paths of up to 4 KiB each on the wire, and a path is held segment by
/// segment (a 4 KiB path of one-letter segments takes ~110 KiB): without a bound in
/// memory, 4096 channels of such paths from one peer held gigabytes.
const MAX_TABLE_BYTES: usize = 4 << 20;

/// About what `path` takes in memory: its text, and a string per segment.
fn path_bytes(path: &Path) -> usize {
    path.text_len() + path.segments().len() * 48
}

/// About what a channel of these names takes in memory.
fn held_bytes(from: &Path, to: &Path, protocol: &str, role: &str) -> usize {
    std::mem::size_of::<Channel>()
        + path_bytes(from)
        + path_bytes(to)
        + protocol.len()
        + role.len()
        + 128
}

/// Accepts actor streams until the runtime is gone.
pub(super) async fn accept(inner: Weak<Inner>, mut incoming: dht::IncomingStreams) {
    while let Some((peer, stream)) = incoming.next().await {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        // A peer has two streams to us (requests, replies), a few more while a broken
        // one is replaced; more is a peer trying to make us hold many.
        let open = {
            let mut streams = lock(&strong.inbound);
            let open = streams.entry(peer).or_default();
            if *open >= MAX_STREAMS_PER_PEER {
                None
            } else {
                *open += 1;
                Some(StreamSlot {
                    inner: inner.clone(),
                    peer,
                    principal: keys::PublicKey::from_peer_id(&peer).map(|k| k.principal()),
                })
            }
        };
        let Some(slot) = open else {
            tracing::debug!(%peer, "refusing one more actor stream from a peer");
            continue;
        };
        // While the stream is open, the chains its hellos bring are not pushed out of
        // the shared cache to make room for others'.
        if let Some(principal) = &slot.principal {
            write(&strong.verified).pin(principal);
        }
        let span = tracing::debug_span!("actor-stream", %peer);
        let weak = inner.clone();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                read_stream(weak, peer, stream).await;
                drop(slot);
            },
            span,
        ));
    }
}

/// Most actor streams one peer may have open to us.
const MAX_STREAMS_PER_PEER: usize = 4;

/// Counts an open inbound stream until it ends, and pins its peer's chains in the
/// shared cache meanwhile.
struct StreamSlot {
    inner: Weak<Inner>,
    peer: PeerId,
    /// The peer's principal (none for a peer id that is not an ed25519 key).
    principal: Option<keys::Principal>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            let mut streams = lock(&inner.inbound);
            let last = streams.get_mut(&self.peer).is_some_and(|open| {
                *open -= 1;
                *open == 0
            });
            if last {
                streams.remove(&self.peer);
            }
            drop(streams);
            if let Some(principal) = &self.principal {
                let mut verified = write(&inner.verified);
                // Its last stream is gone: so are the chains its hellos brought (a new
                // stream brings them again). Peers that come and go under new ids would
                // otherwise fill the cache up to its bounds. Decided by the pins, under
                // the cache's lock: a stream opened meanwhile pinned it first, and its
                // hello's chains stay.
                if verified.unpin(principal) {
                    verified.forget(principal);
                }
            }
        }
    }
}

async fn read_stream(inner: Weak<Inner>, peer: PeerId, stream: Stream) {
    let Some(inner) = inner.upgrade() else {
        return;
    };
    let mut reader = match Reader::new(inner, peer, stream) {
        Ok(reader) => reader,
        Err(e) => {
            tracing::debug!(error = %e, "refusing an actor stream");
            return;
        }
    };
    match reader.run().await {
        Ok(()) => tracing::debug!("actor stream closed"),
        Err(e) => {
            tracing::warn!(error = %e, "actor stream dropped");
            reader.inner.penalise(peer);
        }
    }
}

/// One channel the peer opened.
struct Channel {
    from: Arc<Path>,
    to: Arc<Path>,
    protocol: Arc<str>,
    role: Arc<str>,
    /// Until when the peer's chains cover `from` (none: they do not).
    authorized_until: Option<keys::Timestamp>,
    /// The receiving actor, and the sender as it knows it.
    target: Option<(Arc<Slot>, Arc<Origin>)>,
    /// The session and label of the last message: the next one says them only when they
    /// change (and shares the label while it repeats).
    state: ChannelState<Label>,
    /// Where replies to this channel's asks go: our stream back and our channel on it.
    back: Option<(Arc<Outbox>, u32)>,
}

/// A read message's channel, sequence and kind: what a refusal of it names.
type Meta = (u32, u64, Kind);

impl Channel {
    /// The actor the channel is to, if one is here, and the sender as it knows it.
    fn find_target(&self, inner: &Inner, peer: &PeerId) -> Option<(Arc<Slot>, Arc<Origin>)> {
        let slot = read(&inner.actors).get(&self.to)?.clone();
        let origin = Origin::new(&slot, &self.from, &self.protocol, &self.role, peer);
        Some((slot, origin))
    }
}

struct Reader {
    inner: Arc<Inner>,
    peer: PeerId,
    principal: keys::Principal,
    stream: Stream,
    /// The peer's number for this stream (from its hello): our refusals name it.
    number: u64,
    channels: Vec<Channel>,
    /// What `channels` takes in memory, as [`held_bytes`] counts it.
    table_bytes: usize,
    sequence: u64,
    /// The time of the last read (seconds).
    now: keys::Timestamp,
    /// The generation of revocation lists the channels' authorisations were taken under.
    revocations: u64,
    /// Messages read for one actor and not yet handed to it: delivered together when the
    /// read's frames are done, when a message for another actor comes, or when full.
    batch: Vec<Incoming>,
    /// Each batched message's channel, sequence and kind, to refuse it by.
    batch_meta: Vec<Meta>,
    batch_target: Option<Arc<Slot>>,
    /// A message for another actor than the batch's, read before the batch was flushed.
    held: Option<(Arc<Slot>, Incoming, Meta)>,
    /// When a refusal of ours was last logged as a warning, and how many were logged
    /// quietly since: a peer may send refusals as fast as it likes, and the log is read
    /// by people.
    warned: Option<(std::time::Instant, u64)>,
    /// New chains presented in hellos after the first (see [`MAX_LATER_CHAINS`]).
    later_chains: usize,
    /// A chain its hellos brought could not be remembered (see
    /// [`keys::VerifiedChains::remember`]): what it is refused for want of one is not
    /// held against the peer.
    unremembered: bool,
}

impl Reader {
    fn new(inner: Arc<Inner>, peer: PeerId, stream: Stream) -> Result<Self, String> {
        let principal = keys::PublicKey::from_peer_id(&peer)
            .ok_or("the peer's id carries no ed25519 key")?
            .principal();
        Ok(Reader {
            peer,
            principal,
            stream,
            number: 0,
            channels: Vec::new(),
            table_bytes: 0,
            sequence: 0,
            revocations: inner.refresh_revocations(),
            now: keys::now(),
            batch: Vec::new(),
            batch_meta: Vec::new(),
            batch_target: None,
            held: None,
            warned: None,
            later_chains: 0,
            unremembered: false,
            inner,
        })
    }

    /// Reads more bytes straight into the decoder; false at the end of the stream.
    async fn fill(&mut self, decoder: &mut FrameDecoder) -> Result<bool, String> {
        let room = decoder.unfilled(READ_BYTES);
        let n = self.stream.read(room).await.map_err(|e| e.to_string())?;
        decoder.filled(n);
        self.now = keys::now();
        let revocations = self.inner.refresh_revocations();
        if revocations != self.revocations {
            // New revocation lists: what the verified chains say now holds for every
            // channel, at once.
            self.revocations = revocations;
            let verified = read(&self.inner.verified);
            for ch in &mut self.channels {
                ch.authorized_until =
                    verified.authorized_until(&self.principal, &ch.from, self.now);
            }
        }
        Ok(n > 0)
    }

    async fn run(&mut self) -> Result<(), String> {
        let mut decoder = FrameDecoder::new();
        let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
            loop {
                if let Some(hello) = decoder.next_message::<Hello>().map_err(|e| e.to_string())? {
                    return Ok(hello);
                }
                if !self.fill(&mut decoder).await? {
                    return Err("the stream ended before its hello".to_string());
                }
            }
        })
        .await
        .map_err(|_| "no hello in time".to_string())??;
        self.number = hello.stream;
        self.hello(hello, false)?;
        // Taken: the opener may now send what it holds (see `protocols::actor::WELCOME`).
        {
            use futures::AsyncWriteExt;
            self.stream
                .write_all(&[protocols::actor::WELCOME])
                .await
                .map_err(|e| e.to_string())?;
            self.stream.flush().await.map_err(|e| e.to_string())?;
        }
        loop {
            let read = self.read_frames(&mut decoder).await;
            // Everything read is decoded: hand it over (and a message held back for
            // another actor after it) before waiting for more, or before giving up on a
            // stream that sent a bad frame (what came before the bad frame still counts).
            while self.batch_target.is_some() {
                self.flush().await;
            }
            read?;
            if !self.fill(&mut decoder).await? {
                return Ok(());
            }
        }
    }

    /// Reads every whole frame the decoder holds, batching messages.
    async fn read_frames(&mut self, decoder: &mut FrameDecoder) -> Result<(), String> {
        while let Some(frame) = decoder.next_actor_frame_ref().map_err(|e| e.to_string())? {
            // Reading a message is not async: building a future per message, and moving
            // it into this one, cost more than the rest of the read.
            let flush = match frame {
                FrameRef::Message(message) => self.message(message)?,
                FrameRef::Other(frame) => {
                    self.frame(*frame)?;
                    false
                }
            };
            if flush {
                self.flush().await;
            }
        }
        Ok(())
    }

    /// Hands the batch to its actor, and refuses what the actor's sessions refuse; then
    /// begins the next batch with the message held back for another actor, if any.
    async fn flush(&mut self) {
        let Some(target) = self.batch_target.take() else {
            return;
        };
        let refused = target.deliver_all(&self.inner, &mut self.batch).await;
        for (i, refusal) in refused {
            let (channel, sequence, kind) = self.batch_meta[i];
            let penalise = matches!(
                refusal,
                Refusal::Violation(_) | Refusal::UnknownProtocol { .. }
            );
            self.refuse((channel, sequence, kind), refusal, penalise);
        }
        self.batch_meta.clear();
        if let Some((target, incoming, meta)) = self.held.take() {
            self.batch_target = Some(target);
            self.batch.push(incoming);
            self.batch_meta.push(meta);
        }
    }

    /// Takes the chains of a hello (`later`: one after the stream's first).
    fn hello(&mut self, hello: Hello, later: bool) -> Result<(), String> {
        if hello.stream != self.number {
            return Err(format!(
                "a hello renumbered the stream from {} to {}",
                self.number, hello.stream
            ));
        }
        let inner = self.inner.clone();
        let now = keys::now();
        // Chains remembered for the peer already need no second check.
        let fresh: Vec<Chain> = {
            let verified = read(&inner.verified);
            hello
                .chains
                .into_iter()
                .filter(|chain| !verified.holds(&self.principal, chain, now))
                .collect()
        };
        if later {
            // Each new chain costs up to 8 signature checks: a peer that keeps sending
            // new ones (its own tree's, valid) on one stream is not given a core.
            self.later_chains += fresh.len();
            if self.later_chains > MAX_LATER_CHAINS {
                return Err(format!(
                    "more than {MAX_LATER_CHAINS} new chains in hellos after the first"
                ));
            }
        }
        // Checked before the shared cache is locked: the signatures of a hello's chains
        // (up to 8 links each) are not verified while every other stream waits.
        let mut forged = false;
        let checked_at = inner.config.revocations.generation();
        let checked: Vec<keys::CheckedChain> = {
            let revocations = inner.config.revocations.read();
            fresh
                .iter()
                .filter_map(|chain| {
                    keys::VerifiedChains::verify(&self.principal, chain, now, &revocations)
                        .map_err(|e| {
                            tracing::debug!(error = %e, "a chain in the peer's hello does not hold");
                            // An expired, premature or revoked chain may be an honest
                            // node's that does not know yet; any other fault is not.
                            forged |= !matches!(
                                e,
                                keys::WritecapError::Expired { .. }
                                    | keys::WritecapError::NotYetValid { .. }
                                    | keys::WritecapError::Revoked { .. }
                            );
                        })
                        .ok()
                })
                .collect()
        };
        if forged {
            // Counted against the peer, as a refused message is: verifying costs us,
            // sending costs it nothing.
            inner.penalise(self.peer);
        }
        let (verified, remembered) = inner.remember_checked(checked, checked_at, now);
        drop(verified);
        match remembered {
            Ok(()) => {}
            Err(keys::NotRemembered::NoRoom) => {
                // No room among the peers whose streams are open: its messages that
                // needed them are refused, but not held against it.
                tracing::warn!(peer = %self.peer, "no room to remember the chains in the peer's hello (the cache is full)");
                self.unremembered = true;
            }
            // A chain larger than a holder may have is the peer's doing.
            Err(keys::NotRemembered::TooLarge) => {
                tracing::debug!(peer = %self.peer, "a chain in the peer's hello is too large to remember");
            }
        }
        Ok(())
    }

    fn frame(&mut self, frame: Frame) -> Result<(), String> {
        match frame {
            Frame::Hello(hello) => self.hello(hello, true),
            Frame::Open {
                channel,
                from,
                to,
                protocol,
                role,
            } => {
                if channel as usize != self.channels.len() {
                    return Err(format!(
                        "channel {channel} opened out of order (next is {})",
                        self.channels.len()
                    ));
                }
                self.table_bytes += held_bytes(&from, &to, &protocol, &role);
                if self.table_bytes > MAX_TABLE_BYTES {
                    return Err(format!(
                        "the peer's channels take more than {MAX_TABLE_BYTES} bytes"
                    ));
                }
                let inner = self.inner.clone();
                let authorized_until =
                    read(&inner.verified).authorized_until(&self.principal, &from, self.now);
                if authorized_until.is_none() && !self.unremembered {
                    // Its messages will be refused; a peer that opens channels for paths
                    // it holds no writecap for is counted as violating, as each of those
                    // messages would be.
                    tracing::debug!(from = %from, "a channel opened without a writecap for its sender");
                    inner.penalise(self.peer);
                }
                let mut channel = Channel {
                    from: Arc::new(from),
                    to: Arc::new(to),
                    protocol: Arc::from(protocol),
                    role: Arc::from(role),
                    authorized_until,
                    target: None,
                    state: ChannelState::default(),
                    back: None,
                };
                channel.target = channel.find_target(&inner, &self.peer);
                self.channels.push(channel);
                Ok(())
            }
            Frame::Refused {
                stream,
                channel,
                kind,
                refusal,
                ..
            } => {
                self.refused(stream, channel, kind, refusal);
                Ok(())
            }
        }
    }

    /// Reads one message into the batch; true when the batch must be flushed now.
    fn message(&mut self, message: MessageRef<'_>) -> Result<bool, String> {
        let MessageRef {
            channel,
            kind,
            payload,
            ..
        } = message;
        let sequence = self.sequence;
        self.sequence += 1;
        let peer = self.peer;
        let Some(ch) = self.channels.get_mut(channel as usize) else {
            return Err(format!("message on unopened channel {channel}"));
        };
        // Taken in before anything else: a refused message still tells its channel's
        // session and label to the messages after it.
        let (session, label) = ch.state.expand(&message).map_err(|e| e.to_string())?;
        let label = label.clone();
        // Checked per message against the time of the last read: a writecap that expires
        // while the stream is open stops covering its channel then.
        if ch.authorized_until.is_none_or(|until| self.now >= until) {
            let refusal = Refusal::NotAuthorized {
                path: ch.from.to_string(),
                peer: peer.to_string(),
            };
            let penalise = !self.unremembered;
            self.refuse((channel, sequence, kind), refusal, penalise);
            return Ok(false);
        }
        if let Kind::Reply { id } = kind {
            let pending = {
                let mut asks = lock(&self.inner.asks);
                let ours = asks
                    .get(&id)
                    .is_some_and(|a| a.peer == Some(peer) && a.to == ch.from);
                if ours { asks.remove(&id) } else { None }
            };
            match pending {
                Some(ask) => {
                    let _ = ask.reply.send(Ok(super::Reply {
                        from: ch.from.clone(),
                        label: label.into(),
                        payload: payload.to_vec(),
                    }));
                }
                None => tracing::debug!(id, "a reply to no open ask (late or stray)"),
            }
            return Ok(false);
        }
        if ch.target.as_ref().is_none_or(|(t, _)| t.is_stopped()) {
            ch.target = ch.find_target(&self.inner, &peer);
            // The way back names the replying actor's role: found again with the actor.
            ch.back = None;
        }
        let Some((target, origin)) = &ch.target else {
            let refusal = Refusal::NoSuchActor {
                path: ch.to.to_string(),
            };
            self.refuse((channel, sequence, kind), refusal, false);
            return Ok(false);
        };
        let reply = match kind {
            Kind::Ask { id } => {
                if ch
                    .back
                    .as_ref()
                    .is_none_or(|(outbox, _)| outbox.is_closed())
                {
                    let outbox = self.inner.outbox(peer, Lane::Replies);
                    let role = target.sessions.role(&ch.protocol);
                    // No way back (our reply stream just broke): the ask is still
                    // handled, and the asker times out; the peer's stream is not at fault.
                    ch.back = match outbox.channel(&ch.to, &ch.from, &ch.protocol, &role) {
                        Ok(back) => Some((outbox, back)),
                        Err(e) => {
                            tracing::debug!(error = %e, "no reply channel");
                            None
                        }
                    };
                }
                ch.back.as_ref().map(|(outbox, back)| {
                    Box::new(ReplyTo {
                        id,
                        back: Some(Back::Remote {
                            outbox: outbox.clone(),
                            channel: *back,
                            their_stream: self.number,
                            their_channel: channel,
                            sequence,
                        }),
                        actor: target.clone(),
                        asker: ch.from.clone(),
                        protocol: ch.protocol.clone(),
                        session,
                        peer: origin.peer,
                        delivery: 0,
                    })
                })
            }
            _ => None,
        };
        let incoming = Incoming {
            origin: origin.clone(),
            session,
            label,
            payload: payload.to_vec(),
            reply,
        };
        let meta = (channel, sequence, kind);
        if self
            .batch_target
            .as_ref()
            .is_some_and(|t| !Arc::ptr_eq(t, target))
        {
            // For another actor: it waits until this batch is handed over.
            self.held = Some((target.clone(), incoming, meta));
            return Ok(true);
        }
        if self.batch_target.is_none() {
            self.batch_target = Some(target.clone());
        }
        self.batch.push(incoming);
        self.batch_meta.push(meta);
        Ok(self.batch.len() >= MAX_BATCH)
    }

    /// Refuses the message `meta` read on this stream (see [`refuse`]).
    fn refuse(&self, meta: Meta, refusal: Refusal, penalise: bool) {
        refuse(&self.inner, self.peer, self.number, meta, refusal, penalise);
    }

    /// The peer refused one of our messages, sent on our stream numbered `stream`.
    fn refused(&mut self, stream: u64, channel: u32, kind: Kind, refusal: Refusal) {
        let inner = self.inner.clone();
        inner.refusals_received.fetch_add(1, Ordering::Relaxed);
        // The channel is numbered by the stream the refused message went out on: replies
        // go on the replies stream, everything else on the requests stream.
        let lane = match kind {
            Kind::Reply { .. } => Lane::Replies,
            Kind::Tell | Kind::Ask { .. } => Lane::Requests,
        };
        // Read against the channels of the stream it is about, which may have been
        // replaced since (then it is among the retired ones, if not long gone).
        let key = inner
            .sent_on(self.peer, lane, stream)
            .and_then(|o| o.channel_key(channel));
        let Some((from, to, protocol, _)) = key else {
            tracing::debug!(
                stream,
                channel,
                "a refusal for a stream or channel we do not know"
            );
            return;
        };
        if let Kind::Ask { id } = kind {
            let pending = {
                let mut asks = lock(&inner.asks);
                let ours = asks
                    .get(&id)
                    .is_some_and(|a| a.peer == Some(self.peer) && a.to == to);
                if ours { asks.remove(&id) } else { None }
            };
            if let Some(ask) = pending {
                let _ = ask.reply.send(Err(refusal));
                return;
            }
        }
        let now = std::time::Instant::now();
        match &mut self.warned {
            Some((at, quiet)) if now.duration_since(*at) < REFUSALS_WARNED_EVERY => {
                *quiet += 1;
                tracing::debug!(from = %from, to = %to, protocol = %protocol, refusal = %refusal, "message refused");
            }
            _ => {
                let quiet = self.warned.map_or(0, |(_, quiet)| quiet);
                tracing::warn!(from = %from, to = %to, protocol = %protocol, refusal = %refusal, more_since_last_warning = quiet, "message refused");
                self.warned = Some((now, 0));
            }
        }
        let _ = inner.refusals.send(RefusalNotice {
            from: from.to_string(),
            to: to.to_string(),
            protocol: protocol.to_string(),
            refusal,
        });
    }
}

/// Tells the peer its message was refused, logs it, and counts it against the peer when
/// `penalise`.
fn refuse(
    inner: &Arc<Inner>,
    peer: PeerId,
    stream: u64,
    (channel, sequence, kind): Meta,
    refusal: Refusal,
    penalise: bool,
) {
    inner.refused.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%peer, refusal = %refusal, "refused a message");
    if let Err(e) = inner
        .outbox(peer, Lane::Replies)
        .refuse(stream, channel, sequence, kind, refusal)
    {
        tracing::debug!(error = %e, "could not send the refusal");
    }
    if penalise {
        inner.penalise(peer);
    }
}
