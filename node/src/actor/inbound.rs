//! Reading actor streams: the peer's hello, then its frames, each checked before it
//! reaches an actor.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::{AsyncReadExt, StreamExt};
use keys::Path;
use libp2p::{PeerId, Stream};
use protocols::actor::{Envelope, Frame, FrameDecoder, Hello, Kind, Refusal};

use super::outbox::Lane;
use super::supervisor::Slot;
use super::{Back, Incoming, Inner, RefusalNotice, ReplyTo, lock, read, write};

/// Bytes asked for per read.
const READ_BYTES: usize = 64 * 1024;

/// How long a new stream may take to present its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts actor streams until the runtime is gone.
pub(super) async fn accept(inner: Weak<Inner>, mut incoming: libp2p_stream::IncomingStreams) {
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
                })
            }
        };
        let Some(slot) = open else {
            tracing::debug!(%peer, "refusing one more actor stream from a peer");
            continue;
        };
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

/// Counts an open inbound stream until it ends.
struct StreamSlot {
    inner: Weak<Inner>,
    peer: PeerId,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            let mut streams = lock(&inner.inbound);
            if let Some(open) = streams.get_mut(&self.peer) {
                *open -= 1;
                if *open == 0 {
                    streams.remove(&self.peer);
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
    /// The receiving actor, and the sender as its session table knows it.
    target: Option<(Arc<Slot>, super::sessions::Peer)>,
}

struct Reader {
    inner: Arc<Inner>,
    peer: PeerId,
    principal: keys::Principal,
    stream: Stream,
    decoder: FrameDecoder,
    channels: Vec<Channel>,
    sequence: u64,
    /// The time of the last read (seconds).
    now: keys::Timestamp,
}

impl Reader {
    fn new(inner: Arc<Inner>, peer: PeerId, stream: Stream) -> Result<Self, String> {
        let principal = keys::PublicKey::from_peer_id(&peer)
            .ok_or("the peer's id carries no ed25519 key")?
            .principal();
        Ok(Reader {
            inner,
            peer,
            principal,
            stream,
            decoder: FrameDecoder::new(),
            channels: Vec::new(),
            sequence: 0,
            now: keys::now(),
        })
    }

    /// Reads more bytes straight into the decoder; false at the end of the stream.
    async fn fill(&mut self) -> Result<bool, String> {
        let room = self.decoder.unfilled(READ_BYTES);
        let n = self.stream.read(room).await.map_err(|e| e.to_string())?;
        self.decoder.filled(n);
        self.now = keys::now();
        Ok(n > 0)
    }

    async fn run(&mut self) -> Result<(), String> {
        let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
            loop {
                if let Some(hello) = self
                    .decoder
                    .next_message::<Hello>()
                    .map_err(|e| e.to_string())?
                {
                    return Ok(hello);
                }
                if !self.fill().await? {
                    return Err("the stream ended before its hello".to_string());
                }
            }
        })
        .await
        .map_err(|_| "no hello in time".to_string())??;
        self.hello(hello)?;
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
            while let Some(frame) = self.decoder.next_actor_frame().map_err(|e| e.to_string())? {
                self.frame(frame).await?;
            }
            if !self.fill().await? {
                return Ok(());
            }
        }
    }

    fn hello(&mut self, hello: Hello) -> Result<(), String> {
        let inner = self.inner.clone();
        let now = keys::now();
        let mut verified = write(&inner.verified);
        for chain in &hello.chains {
            if let Err(e) =
                verified.insert(&self.principal, chain, now, &keys::Revocations::default())
            {
                tracing::debug!(error = %e, "a chain in the peer's hello does not hold");
            }
        }
        Ok(())
    }

    async fn frame(&mut self, frame: Frame) -> Result<(), String> {
        match frame {
            Frame::Hello(hello) => self.hello(hello),
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
                let inner = self.inner.clone();
                let authorized_until =
                    read(&inner.verified).authorized_until(&self.principal, &from, self.now);
                let to = Arc::new(to);
                let from = Arc::new(from);
                let target = read(&inner.actors).get(&to).map(|slot| {
                    let sender = slot.sessions.peer(&from, &protocol, &self.peer);
                    (slot.clone(), sender)
                });
                self.channels.push(Channel {
                    from,
                    to,
                    protocol: Arc::from(protocol),
                    role: Arc::from(role),
                    authorized_until,
                    target,
                });
                Ok(())
            }
            Frame::Message(Envelope {
                channel,
                session,
                sequence,
                kind,
                label,
                payload,
            }) => {
                if sequence != self.sequence {
                    return Err(format!("sequence {sequence}, expected {}", self.sequence));
                }
                self.sequence += 1;
                self.message(channel, session, sequence, kind, label, payload)
                    .await
            }
            Frame::Refused {
                channel,
                kind,
                refusal,
                ..
            } => {
                self.refused(channel, kind, refusal)?;
                Ok(())
            }
        }
    }

    async fn message(
        &mut self,
        channel: u32,
        session: u64,
        sequence: u64,
        kind: Kind,
        label: String,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        let inner = &self.inner;
        let peer = self.peer;
        let Some(ch) = self.channels.get_mut(channel as usize) else {
            return Err(format!("message on unopened channel {channel}"));
        };
        // Checked per message against the time of the last read: a writecap that expires
        // while the stream is open stops covering its channel then.
        if ch.authorized_until.is_none_or(|until| self.now >= until) {
            let refusal = Refusal::NotAuthorized {
                path: ch.from.to_string(),
                peer: peer.to_string(),
            };
            return refuse(inner, peer, channel, sequence, kind, refusal, true);
        }
        if let Kind::Reply { id } = kind {
            let pending = {
                let mut asks = lock(&inner.asks);
                let ours = asks
                    .get(&id)
                    .is_some_and(|a| a.peer == Some(peer) && a.to == ch.from);
                if ours { asks.remove(&id) } else { None }
            };
            match pending {
                Some(ask) => {
                    let _ = ask.reply.send(Ok(super::Reply {
                        from: ch.from.clone(),
                        label,
                        payload,
                    }));
                }
                None => tracing::debug!(id, "a reply to no open ask (late or stray)"),
            }
            return Ok(());
        }
        if ch.target.as_ref().is_none_or(|(t, _)| t.is_stopped()) {
            ch.target = read(&inner.actors).get(&ch.to).map(|slot| {
                let sender = slot.sessions.peer(&ch.from, &ch.protocol, &peer);
                (slot.clone(), sender)
            });
        }
        let Some((target, peer_key)) = ch.target.clone() else {
            let refusal = Refusal::NoSuchActor {
                path: ch.to.to_string(),
            };
            return refuse(inner, peer, channel, sequence, kind, refusal, false);
        };
        let reply = match kind {
            Kind::Ask { id } => {
                let outbox = inner.outbox(peer, Lane::Replies);
                let role = target.sessions.role(&ch.protocol);
                // No way back (our reply stream just broke): the ask is still handled,
                // and the asker times out; the peer's stream is not at fault.
                match outbox.channel(&ch.to, &ch.from, &ch.protocol, &role) {
                    Ok(back) => Some(ReplyTo {
                        id,
                        back: Some(Back::Remote {
                            outbox,
                            channel: back,
                            their_channel: channel,
                            sequence,
                        }),
                        actor: target.clone(),
                        asker: ch.from.clone(),
                        protocol: ch.protocol.clone(),
                        session,
                        peer: peer_key,
                        delivery: 0,
                    }),
                    Err(e) => {
                        tracing::debug!(error = %e, "no reply channel");
                        None
                    }
                }
            }
            _ => None,
        };
        let incoming = Incoming {
            from: ch.from.clone(),
            protocol: ch.protocol.clone(),
            role: ch.role.clone(),
            session,
            label,
            payload,
            reply: reply.map(Box::new),
            peer: peer_key,
        };
        match target.deliver(inner, incoming).await {
            Ok(()) => Ok(()),
            Err(refusal) => {
                let penalise = matches!(
                    refusal,
                    Refusal::Violation(_) | Refusal::UnknownProtocol { .. }
                );
                refuse(inner, peer, channel, sequence, kind, refusal, penalise)
            }
        }
    }

    /// The peer refused one of our messages.
    fn refused(&self, channel: u32, kind: Kind, refusal: Refusal) -> Result<(), String> {
        let inner = self.inner.clone();
        inner.refusals_received.fetch_add(1, Ordering::Relaxed);
        let key = lock(&inner.outboxes)
            .get(&(self.peer, Lane::Requests))
            .and_then(|o| o.channel_key(channel));
        let Some((from, to, protocol, _)) = key else {
            tracing::debug!(channel, "a refusal for a channel we do not know");
            return Ok(());
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
                return Ok(());
            }
        }
        tracing::warn!(from = %from, to = %to, protocol = %protocol, refusal = %refusal, "message refused");
        let _ = inner.refusals.send(RefusalNotice {
            from: from.to_string(),
            to: to.to_string(),
            protocol: protocol.to_string(),
            refusal,
        });
        Ok(())
    }
}

/// Tells the peer its message was refused, logs it, and counts it against the peer when
/// `penalise`.
fn refuse(
    inner: &Arc<Inner>,
    peer: PeerId,
    channel: u32,
    sequence: u64,
    kind: Kind,
    refusal: Refusal,
    penalise: bool,
) -> Result<(), String> {
    inner.refused.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%peer, refusal = %refusal, "refused a message");
    if let Err(e) = inner
        .outbox(peer, Lane::Replies)
        .refuse(channel, sequence, kind, refusal)
    {
        tracing::debug!(error = %e, "could not send the refusal");
    }
    if penalise {
        inner.penalise(peer);
    }
    Ok(())
}
