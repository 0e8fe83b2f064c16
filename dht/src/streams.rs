//! A second, lean connection for our own stream protocols (the actor protocol, the block
//! protocol), on the same port as the overlay's.
//!
//! Every wake-up of a libp2p connection polls the handler of every behaviour of its swarm
//! and rebuilds the set of protocols it accepts. On the overlay's connections that is
//! Kademlia, identify, ping and gossipsub, several microseconds per wake-up: a round trip
//! on a bare stream there took 25.7 µs where the same stream between swarms that run only
//! the stream behaviour took 19.8 µs. So our stream protocols run on a swarm of their own
//! ([`StreamBehaviour`]: streams, an address book and the block list), with the same key
//! and so the same `PeerId`, over the same transport.
//!
//! Both swarms share the listening port. A dialer's first bytes are multistream-select's
//! header and its proposal of a security protocol; the stream swarm proposes its own name
//! for the same handshake (`/blocktree/streams/noise` for Noise, [`Renamed`]). The overlay
//! swarm's transport ([`Divert`]) reads those first bytes of every inbound connection
//! ([`sort`]), hands connections that propose the stream swarm's name to it
//! ([`Diverted`]), and keeps the rest, each with the bytes read put back in front
//! ([`Rewind`]). Nothing is decrypted or trusted before the handshake either swarm then
//! runs as usual.

use std::collections::HashMap;
use std::io;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::mpsc;
use futures::future::{self, BoxFuture};
use futures::stream::FuturesUnordered;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, FutureExt, StreamExt};
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::core::{Endpoint, Multiaddr, Transport};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::PeerAddresses;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{PeerId, allow_block_list};

/// The stream swarm's name for Noise: a dialer proposing it is handed to the stream swarm.
pub const STREAMS_NOISE: &str = "/blocktree/streams/noise";

/// The stream swarm's name for the simulator's plaintext exchange of keys.
pub const STREAMS_PLAINTEXT: &str = "/blocktree/streams/plaintext/2.0.0";

/// multistream-select's header line, the first message of every negotiation.
const MULTISTREAM_HEADER: &[u8] = b"/multistream/1.0.0\n";

/// How long a connection may take to send its first proposal. A dialer sends it in its
/// first flight, right after the TCP handshake, so this only bounds what a connection
/// that never speaks holds.
pub const SORT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections being sorted at once; more are closed at once (their dialers retry). To
/// keep a node refusing, peers must open this many silent connections every
/// [`SORT_TIMEOUT`], from at least `MAX_SORTING / MAX_SORTING_PER_SOURCE` sources
/// (libp2p's own handshakes are bounded by neither).
pub const MAX_SORTING: usize = 1024;

/// Connections from one source (an IPv4 address, an IPv6 /64) being sorted at once; more
/// from it are closed at once. An honest dialer's connection is sorted within a round
/// trip, so even many peers behind one NAT stay far below this; one host that keeps
/// silent connections coming takes no more than this share of [`MAX_SORTING`].
pub const MAX_SORTING_PER_SOURCE: usize = 64;

/// Connections from one IPv6 /48 being sorted at once, whatever /64s in it they come
/// from: a site is often given a /48 or a /56, and 6to4 gives each IPv4 address a /48,
/// so one holder of many /64s takes at most this share of [`MAX_SORTING`].
pub const MAX_SORTING_PER_SITE: usize = 256;

/// Sorted connections waiting for the stream swarm; more are closed.
const DIVERTED_QUEUE: usize = 64;

/// Peers whose addresses the stream swarm remembers (least recently used go first).
const ADDRESS_BOOK_PEERS: usize = 4096;

/// Which swarm an inbound connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// The overlay swarm (everything that does not propose the stream swarm's name).
    Overlay,
    /// The stream swarm.
    Streams,
}

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preamble {
    /// Not enough bytes yet.
    Incomplete,
    /// Decided.
    Sorted(Lane),
}

/// The first bytes a dialer of the stream swarm sends: multistream-select's header and
/// its proposal of `name`, each a message of an unsigned LEB128 length and a line.
pub fn stream_preamble(name: &str) -> Vec<u8> {
    let proposal = [name.as_bytes(), b"\n"].concat();
    let mut bytes = Vec::with_capacity(MULTISTREAM_HEADER.len() + proposal.len() + 4);
    for line in [MULTISTREAM_HEADER, &proposal] {
        let mut length = line.len();
        loop {
            let low = (length & 0x7f) as u8;
            length >>= 7;
            if length == 0 {
                bytes.push(low);
                break;
            }
            bytes.push(low | 0x80);
        }
        bytes.extend_from_slice(line);
    }
    bytes
}

/// Sorts a connection by its first bytes: exactly [`stream_preamble`] goes to the stream
/// swarm; anything else (another proposal, another header, bytes that are not
/// multistream-select at all) to the overlay swarm, whose own negotiation then answers or
/// refuses it. Decided as soon as the bytes part from the preamble, or at its end; what
/// follows it (the handshake's first message) changes nothing.
pub fn sort(bytes: &[u8], preamble: &[u8]) -> Preamble {
    let n = bytes.len().min(preamble.len());
    if bytes[..n] != preamble[..n] {
        Preamble::Sorted(Lane::Overlay)
    } else if n == preamble.len() {
        Preamble::Sorted(Lane::Streams)
    } else {
        Preamble::Incomplete
    }
}

/// A connection with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Rewind<S> {
    read: Vec<u8>,
    at: usize,
    io: S,
}

impl<S> Rewind<S> {
    /// A connection nothing was read from.
    pub fn new(io: S) -> Self {
        Rewind {
            read: Vec::new(),
            at: 0,
            io,
        }
    }

    /// `io`, whose first bytes `read` were already taken from it.
    pub fn with_read(read: Vec<u8>, io: S) -> Self {
        Rewind { read, at: 0, io }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let rest = &this.read[this.at..];
        if !rest.is_empty() {
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            this.at += n;
            if this.at == this.read.len() {
                this.read = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_close(cx)
    }
}

/// Reads a connection's first bytes until [`sort`] decides (never more than `preamble`
/// holds), and puts every byte read back in front of it. A connection that ends or fails
/// before that goes to the overlay swarm, which reports the failure as it would have.
pub async fn read_preamble<S: AsyncRead + Unpin>(mut io: S, preamble: &[u8]) -> (Lane, Rewind<S>) {
    let mut read = vec![0u8; preamble.len()];
    let mut filled = 0;
    loop {
        if let Preamble::Sorted(lane) = sort(&read[..filled], preamble) {
            read.truncate(filled);
            return (lane, Rewind::with_read(read, io));
        }
        match io.read(&mut read[filled..]).await {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(0) | Err(_) => {
                read.truncate(filled);
                return (Lane::Overlay, Rewind::with_read(read, io));
            }
            Ok(n) => filled += n,
        }
    }
}

/// An inbound connection handed to the stream swarm.
#[derive(Debug)]
pub struct DivertedConnection<S> {
    io: Rewind<S>,
    local_addr: Multiaddr,
    send_back_addr: Multiaddr,
}

type Sorting<S, E> = BoxFuture<'static, Sorted<S, E>>;

struct Sorted<S, E> {
    sources: Sources,
    listener_id: ListenerId,
    local_addr: Multiaddr,
    send_back_addr: Multiaddr,
    result: Result<(Lane, Rewind<S>), SortFailure<E>>,
}

enum SortFailure<E> {
    Transport(E),
    TimedOut,
}

/// The overlay swarm's transport: `inner`'s, with every inbound connection sorted by its
/// first bytes and those for the stream swarm sent to its [`Diverted`].
pub struct Divert<T: Transport> {
    inner: T,
    preamble: Arc<[u8]>,
    sorting: FuturesUnordered<Sorting<T::Output, T::Error>>,
    /// Connections being sorted, per source (none: absent).
    sources: HashMap<Source, usize>,
    diverted: mpsc::Sender<DivertedConnection<T::Output>>,
    /// When the bound in all, and a bound per source, was last reported.
    warned: [Option<std::time::Instant>; 2],
}

/// Where an inbound connection comes from, as far as bounding what one host may hold:
/// an IPv4 address, an IPv6 /64 (what one host is usually given) and its /48 (a site),
/// or any other transport's address whole (the memory transport's are each new: the
/// bound per source does not apply there).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    V4(std::net::Ipv4Addr),
    V6(u64),
    V6Site(u64),
    Other(Multiaddr),
}

/// The sources one connection counts against: its host's and, over IPv6, its site's.
type Sources = (Source, Option<Source>);

impl Source {
    fn of(addr: &Multiaddr) -> Sources {
        match addr.iter().next() {
            Some(Protocol::Ip4(ip)) => (Source::V4(ip), None),
            Some(Protocol::Ip6(ip)) => match ip.to_ipv4_mapped() {
                Some(v4) => (Source::V4(v4), None),
                None => (
                    Source::V6((ip.to_bits() >> 64) as u64),
                    Some(Source::V6Site((ip.to_bits() >> 80) as u64)),
                ),
            },
            _ => (Source::Other(addr.clone()), None),
        }
    }

    /// How many of its connections may be sorted at once.
    fn limit(&self) -> usize {
        match self {
            Source::V6Site(_) => MAX_SORTING_PER_SITE,
            _ => MAX_SORTING_PER_SOURCE,
        }
    }
}

impl<T: Transport> std::fmt::Debug for Divert<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Divert")
            .field("preamble", &self.preamble)
            .field("sorting", &self.sorting.len())
            .finish()
    }
}

/// A pair of transports that share `inner`'s listeners: the overlay swarm's and the stream
/// swarm's inbound side. `name` is the stream swarm's name for its security handshake.
pub fn divert<T>(inner: T, name: &'static str) -> (Divert<T>, Diverted<T::Output>)
where
    T: Transport,
{
    let (sender, receiver) = mpsc::channel(DIVERTED_QUEUE);
    (
        Divert {
            inner,
            preamble: stream_preamble(name).into(),
            sorting: FuturesUnordered::new(),
            sources: HashMap::new(),
            diverted: sender,
            warned: [None; 2],
        },
        Diverted {
            incoming: receiver,
            listener: None,
        },
    )
}

impl<T> Transport for Divert<T>
where
    T: Transport + Unpin,
    T::Output: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    type Output = Rewind<T::Output>;
    type Error = T::Error;
    type ListenerUpgrade = future::Ready<Result<Self::Output, Self::Error>>;
    type Dial = future::MapOk<T::Dial, fn(T::Output) -> Rewind<T::Output>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        use futures::TryFutureExt;
        Ok(self
            .inner
            .dial(addr, opts)?
            .map_ok(Rewind::new as fn(T::Output) -> Rewind<T::Output>))
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let this = self.get_mut();
        loop {
            if let Poll::Ready(Some(sorted)) = this.sorting.poll_next_unpin(cx) {
                let Sorted {
                    sources: (host, site),
                    listener_id,
                    local_addr,
                    send_back_addr,
                    result,
                } = sorted;
                for source in std::iter::once(host).chain(site) {
                    if let Some(held) = this.sources.get_mut(&source) {
                        *held -= 1;
                        if *held == 0 {
                            this.sources.remove(&source);
                        }
                    }
                }
                match result {
                    Ok((Lane::Overlay, io)) => {
                        return Poll::Ready(TransportEvent::Incoming {
                            listener_id,
                            upgrade: future::ready(Ok(io)),
                            local_addr,
                            send_back_addr,
                        });
                    }
                    Ok((Lane::Streams, io)) => {
                        let connection = DivertedConnection {
                            io,
                            local_addr,
                            send_back_addr,
                        };
                        if let Err(e) = this.diverted.try_send(connection) {
                            tracing::debug!(
                                full = e.is_full(),
                                "a stream connection was dropped: the stream swarm is not taking them"
                            );
                        }
                    }
                    Err(SortFailure::Transport(error)) => {
                        return Poll::Ready(TransportEvent::Incoming {
                            listener_id,
                            upgrade: future::ready(Err(error)),
                            local_addr,
                            send_back_addr,
                        });
                    }
                    Err(SortFailure::TimedOut) => {
                        tracing::debug!(address = %send_back_addr, "an inbound connection sent no proposal in time");
                    }
                }
                continue;
            }
            match Pin::new(&mut this.inner).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(TransportEvent::Incoming {
                    listener_id,
                    upgrade,
                    local_addr,
                    send_back_addr,
                }) => {
                    let sources = Source::of(&send_back_addr);
                    let (host, site) = &sources;
                    let over = |source: &Source| {
                        this.sources
                            .get(source)
                            .is_some_and(|&n| n >= source.limit())
                    };
                    let full = if this.sorting.len() >= MAX_SORTING {
                        Some((0, "in all", MAX_SORTING))
                    } else {
                        std::iter::once(host)
                            .chain(site)
                            .find(|s| over(s))
                            .map(|source| (1, "from one source", source.limit()))
                    };
                    if let Some((scope, what, limit)) = full {
                        // Dropping the connection closes it.
                        let now = std::time::Instant::now();
                        let warned = &mut this.warned[scope];
                        if warned.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60))
                        {
                            *warned = Some(now);
                            tracing::warn!(address = %send_back_addr, limit, "too many inbound connections {what} sent nothing yet; closing new ones (warned once a minute)");
                        }
                        continue;
                    }
                    for source in std::iter::once(host).chain(site) {
                        *this.sources.entry(source.clone()).or_default() += 1;
                    }
                    let preamble = this.preamble.clone();
                    this.sorting.push(
                        async move {
                            let sorted = tokio::time::timeout(SORT_TIMEOUT, async {
                                match upgrade.await {
                                    Ok(io) => Ok(read_preamble(io, &preamble).await),
                                    Err(e) => Err(SortFailure::Transport(e)),
                                }
                            })
                            .await
                            .unwrap_or(Err(SortFailure::TimedOut));
                            Sorted {
                                sources,
                                listener_id,
                                local_addr,
                                send_back_addr,
                                result: sorted,
                            }
                        }
                        .boxed(),
                    );
                }
                Poll::Ready(TransportEvent::NewAddress {
                    listener_id,
                    listen_addr,
                }) => {
                    return Poll::Ready(TransportEvent::NewAddress {
                        listener_id,
                        listen_addr,
                    });
                }
                Poll::Ready(TransportEvent::AddressExpired {
                    listener_id,
                    listen_addr,
                }) => {
                    return Poll::Ready(TransportEvent::AddressExpired {
                        listener_id,
                        listen_addr,
                    });
                }
                Poll::Ready(TransportEvent::ListenerClosed {
                    listener_id,
                    reason,
                }) => {
                    return Poll::Ready(TransportEvent::ListenerClosed {
                        listener_id,
                        reason,
                    });
                }
                Poll::Ready(TransportEvent::ListenerError { listener_id, error }) => {
                    return Poll::Ready(TransportEvent::ListenerError { listener_id, error });
                }
            }
        }
    }
}

/// The stream swarm's inbound side: the connections [`Divert`] sorted to it, on one
/// listener (whatever address it is given: the overlay swarm's listeners are the real
/// ones). It dials nothing; the stream swarm dials through the transport it is paired
/// with ([`Transport::or_transport`]).
#[derive(Debug)]
pub struct Diverted<S> {
    incoming: mpsc::Receiver<DivertedConnection<S>>,
    listener: Option<ListenerId>,
}

/// A [`Diverted`] transport's error: it never dials.
#[derive(Debug, thiserror::Error)]
#[error("the diverted transport only accepts")]
pub struct DivertedError;

impl<S: Send + Unpin + 'static> Transport for Diverted<S> {
    type Output = Rewind<S>;
    type Error = DivertedError;
    type ListenerUpgrade = future::Ready<Result<Self::Output, Self::Error>>;
    type Dial = future::Pending<Result<Self::Output, Self::Error>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        if self.listener.is_some() {
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        self.listener = Some(id);
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        if self.listener == Some(id) {
            self.listener = None;
            true
        } else {
            false
        }
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        Err(TransportError::MultiaddrNotSupported(addr))
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let this = self.get_mut();
        // The stream swarm listens as it is built, before it is first polled; without a
        // listener nothing is taken, and `listen_on` is followed by a poll of the swarm.
        let Some(listener_id) = this.listener else {
            return Poll::Pending;
        };
        match this.incoming.poll_next_unpin(cx) {
            Poll::Ready(Some(connection)) => Poll::Ready(TransportEvent::Incoming {
                listener_id,
                upgrade: future::ready(Ok(connection.io)),
                local_addr: connection.local_addr,
                send_back_addr: connection.send_back_addr,
            }),
            Poll::Ready(None) => {
                this.listener = None;
                Poll::Ready(TransportEvent::ListenerClosed {
                    listener_id,
                    reason: Ok(()),
                })
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A security upgrade proposed under another name: the same handshake, so that the
/// listener's [`Divert`] can tell the two swarms' connections apart.
#[derive(Debug, Clone)]
pub struct Renamed<U: UpgradeInfo> {
    inner: U,
    info: U::Info,
    name: &'static str,
}

impl<U: UpgradeInfo> Renamed<U> {
    /// `inner` under `name`; `None` if `inner` names no protocol.
    pub fn new(inner: U, name: &'static str) -> Option<Self> {
        let info = inner.protocol_info().into_iter().next()?;
        Some(Renamed { inner, info, name })
    }
}

impl<U: UpgradeInfo> UpgradeInfo for Renamed<U> {
    type Info = &'static str;
    type InfoIter = std::iter::Once<&'static str>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(self.name)
    }
}

impl<C, U: InboundConnectionUpgrade<C>> InboundConnectionUpgrade<C> for Renamed<U> {
    type Output = U::Output;
    type Error = U::Error;
    type Future = U::Future;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        self.inner.upgrade_inbound(socket, self.info)
    }
}

impl<C, U: OutboundConnectionUpgrade<C>> OutboundConnectionUpgrade<C> for Renamed<U> {
    type Output = U::Output;
    type Error = U::Error;
    type Future = U::Future;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        self.inner.upgrade_outbound(socket, self.info)
    }
}

/// Whether the stream swarm can dial `address`: TCP and memory addresses (QUIC
/// connections are not diverted; they stay the overlay's).
pub fn stream_dialable(address: &Multiaddr) -> bool {
    let mut reachable = false;
    for protocol in address.iter() {
        match protocol {
            Protocol::Tcp(_) | Protocol::Memory(_) => reachable = true,
            Protocol::Udp(_) | Protocol::QuicV1 | Protocol::P2pCircuit => return false,
            _ => {}
        }
    }
    reachable
}

/// The addresses the stream swarm dials a peer at: the one the overlay swarm reached it
/// at by dialling, if any (confirmed: it leads to this peer through whatever lies
/// between); else what the peer says it listens at and what Kademlia knows, all at once.
/// A confirmed address that fails is forgotten.
pub struct AddressBook {
    book: PeerAddresses,
    confirmed: HashMap<PeerId, Multiaddr>,
}

impl std::fmt::Debug for AddressBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressBook")
            .field("confirmed", &self.confirmed.len())
            .finish_non_exhaustive()
    }
}

impl Default for AddressBook {
    fn default() -> Self {
        AddressBook {
            book: PeerAddresses::new(
                NonZeroUsize::new(ADDRESS_BOOK_PEERS).unwrap_or(NonZeroUsize::MIN),
            ),
            confirmed: HashMap::new(),
        }
    }
}

impl AddressBook {
    /// Remembers that `peer` listens at `address` (ignored if the stream swarm cannot
    /// dial it). Returns whether it was new.
    pub fn add(&mut self, peer: PeerId, address: Multiaddr) -> bool {
        stream_dialable(&address) && self.book.add(peer, address)
    }

    /// Remembers that the overlay swarm reached `peer` by dialling `address`.
    pub fn confirm(&mut self, peer: PeerId, address: Multiaddr) {
        if !stream_dialable(&address) {
            return;
        }
        let Ok(address) = address.with_p2p(peer) else {
            return;
        };
        if self.confirmed.len() >= ADDRESS_BOOK_PEERS && !self.confirmed.contains_key(&peer) {
            // Bounded: forget an arbitrary half; their listen addresses remain.
            let forget: Vec<PeerId> = self.confirmed.keys().copied().step_by(2).collect();
            for gone in forget {
                self.confirmed.remove(&gone);
            }
        }
        self.confirmed.insert(peer, address);
    }

    /// Where to dial `peer`: the confirmed address alone, or else every other one.
    pub fn addresses(&mut self, peer: &PeerId) -> Vec<Multiaddr> {
        match self.confirmed.get(peer) {
            Some(confirmed) => vec![confirmed.clone()],
            None => self.book.get(peer).collect(),
        }
    }
}

impl NetworkBehaviour for AddressBook {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: libp2p::core::transport::PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        Ok(peer.map(|peer| self.addresses(&peer)).unwrap_or_default())
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        // A failed dial (unreachable, or another peer answered) forgets the confirmed
        // address, so that the next one tries what the peer announced.
        if let FromSwarm::DialFailure(libp2p::swarm::DialFailure {
            peer_id: Some(peer),
            ..
        }) = &event
        {
            self.confirmed.remove(peer);
        }
        self.book.on_swarm_event(&event);
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// The stream swarm's behaviour: streams of our own protocols, where to dial peers, and
/// the peers blocked for misbehaving (the same as the overlay swarm's).
#[allow(missing_debug_implementations)] // libp2p behaviours implement no Debug
#[derive(NetworkBehaviour)]
pub struct StreamBehaviour {
    /// Streams of our own protocols.
    pub stream: libp2p_stream::Behaviour,
    /// Where peers listen.
    pub addresses: AddressBook,
    /// Peers refused for a while.
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
}

impl StreamBehaviour {
    pub(crate) fn new() -> Self {
        StreamBehaviour {
            stream: libp2p_stream::Behaviour::new(),
            addresses: AddressBook::default(),
            blocked: allow_block_list::Behaviour::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut n = body.len();
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        out.extend_from_slice(body);
        out
    }

    fn proposing(proposal: &str) -> Vec<u8> {
        let mut bytes = frame(MULTISTREAM_HEADER);
        bytes.extend(frame(format!("{proposal}\n").as_bytes()));
        bytes
    }

    #[test]
    fn a_source_is_an_ipv4_address_or_an_ipv6_64_and_its_48() {
        let of = |addr: &str| Source::of(&addr.parse().unwrap()).0;
        let site = |addr: &str| Source::of(&addr.parse().unwrap()).1;
        // Ports do not matter; addresses do.
        assert_eq!(of("/ip4/10.0.0.1/tcp/1"), of("/ip4/10.0.0.1/tcp/2"));
        assert_ne!(of("/ip4/10.0.0.1/tcp/1"), of("/ip4/10.0.0.2/tcp/1"));
        // One /64 is one source, whatever its lower half; the next /64 is another.
        assert_eq!(
            of("/ip6/2001:db8:1:2::1/tcp/1"),
            of("/ip6/2001:db8:1:2:ffff:ffff:ffff:ffff/tcp/9")
        );
        assert_ne!(
            of("/ip6/2001:db8:1:2::1/tcp/1"),
            of("/ip6/2001:db8:1:3::1/tcp/1")
        );
        // Every /64 of a /48 counts against the /48 too; IPv4 has no such second bound.
        assert_eq!(
            site("/ip6/2001:db8:1:2::1/tcp/1"),
            site("/ip6/2001:db8:1:ff::1/tcp/1")
        );
        assert_ne!(
            site("/ip6/2001:db8:1:2::1/tcp/1"),
            site("/ip6/2001:db8:2:2::1/tcp/1")
        );
        assert_eq!(
            site("/ip6/2001:db8:1:2::1/tcp/1").map(|s| s.limit()),
            Some(MAX_SORTING_PER_SITE)
        );
        assert_eq!(site("/ip4/10.0.0.1/tcp/1"), None);
        // An IPv4 host reached over IPv6 is the same host.
        assert_eq!(of("/ip6/::ffff:10.0.0.1/tcp/1"), of("/ip4/10.0.0.1/tcp/7"));
        // Anything else is taken whole.
        assert_ne!(of("/memory/1"), of("/memory/2"));
        assert_eq!(of("/memory/1"), of("/memory/1"));
    }

    #[test]
    fn the_preamble_is_multistream_selects_header_and_proposal() {
        assert_eq!(stream_preamble(STREAMS_NOISE), proposing(STREAMS_NOISE));
        let long = "/x".repeat(100);
        assert_eq!(stream_preamble(&long), proposing(&long));
    }

    #[test]
    fn the_stream_swarms_proposal_is_diverted_and_others_are_not() {
        let ours = stream_preamble(STREAMS_NOISE);
        assert_eq!(sort(&ours, &ours), Preamble::Sorted(Lane::Streams));
        for other in [
            "/noise",
            "/tls/1.0.0",
            "/blocktree/streams/noise2",
            "/blocktree/streams/nois",
        ] {
            assert_eq!(
                sort(&proposing(other), &ours),
                Preamble::Sorted(Lane::Overlay),
                "{other}"
            );
        }
        // What follows the proposal (the handshake's first message) does not matter.
        let mut more = ours.clone();
        more.extend_from_slice(&[0, 32, 1, 2, 3]);
        assert_eq!(sort(&more, &ours), Preamble::Sorted(Lane::Streams));
        // Every strict prefix waits for more.
        for n in 0..ours.len() {
            assert_eq!(sort(&ours[..n], &ours), Preamble::Incomplete, "{n}");
        }
        // Anything else is decided at its first byte that differs.
        assert_eq!(sort(b"G", &ours), Preamble::Sorted(Lane::Overlay));
        assert_eq!(
            sort(&frame(b"/multistream/2.0.0\n"), &ours),
            Preamble::Sorted(Lane::Overlay)
        );
    }

    #[test]
    fn the_overlays_confirmed_address_is_dialled_alone() {
        let peer = PeerId::random();
        let listen: Multiaddr = "/ip4/10.0.0.1/tcp/4001".parse().expect("address");
        let relay: Multiaddr = "/ip4/10.0.0.9/tcp/7000".parse().expect("address");
        let quic: Multiaddr = "/ip4/10.0.0.1/udp/4001/quic-v1".parse().expect("address");
        let mut book = AddressBook::default();
        assert!(book.add(peer, listen.clone()));
        assert!(!book.add(peer, quic), "QUIC is not the stream swarm's");
        assert_eq!(
            book.addresses(&peer),
            vec![listen.clone().with_p2p(peer).expect("p2p")]
        );
        book.confirm(peer, relay.clone());
        assert_eq!(
            book.addresses(&peer),
            vec![relay.with_p2p(peer).expect("p2p")]
        );
        assert!(book.addresses(&PeerId::random()).is_empty());
    }

    #[tokio::test]
    async fn a_sorted_connection_reads_back_every_byte() {
        let ours = stream_preamble(STREAMS_NOISE);
        let mut sent = ours.clone();
        sent.extend((0..1000u32).map(|i| i as u8));
        let (lane, mut rewound) =
            read_preamble(futures::io::Cursor::new(sent.clone()), &ours).await;
        assert_eq!(lane, Lane::Streams);
        let mut back = Vec::new();
        rewound.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, sent);
    }

    /// A reader that hands out at most `step` bytes per read, and with `interrupt` fails
    /// every other read with `Interrupted` (which readers retry).
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
        step: usize,
        interrupt: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.interrupt {
                this.interrupt = false;
                return Poll::Ready(Err(io::ErrorKind::Interrupted.into()));
            }
            this.interrupt = true;
            let n = this.step.min(buf.len()).min(this.bytes.len() - this.at);
            buf[..n].copy_from_slice(&this.bytes[this.at..this.at + n]);
            this.at += n;
            Poll::Ready(Ok(n))
        }
    }

    /// What a connection sends: any bytes, or a prefix of the preamble (up to all of it)
    /// and then any bytes, so that sorting meets near misses and early ends.
    fn arrivals() -> impl Strategy<Value = Vec<u8>> {
        let preamble = stream_preamble(STREAMS_NOISE);
        let len = preamble.len();
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            (0..=len, prop::collection::vec(any::<u8>(), 0..200)).prop_map(move |(k, rest)| [
                &preamble[..k],
                &rest[..]
            ]
            .concat()),
        ]
    }

    proptest! {
        /// Whatever arrives, in whatever pieces (interrupted reads among them): the
        /// preamble, and only it, goes to the stream swarm; no more than the preamble's
        /// length is read to decide; and the connection reads back exactly what was sent.
        #[test]
        fn sorting_any_bytes_loses_none(sent in arrivals(), step in 1usize..80) {
            let preamble = stream_preamble(STREAMS_NOISE);
            let trickle = Trickle { bytes: sent.clone(), at: 0, step, interrupt: true };
            let (lane, mut rewound) = futures::executor::block_on(read_preamble(trickle, &preamble));
            prop_assert_eq!(lane == Lane::Streams, sent.starts_with(&preamble));
            prop_assert!(rewound.io.at <= preamble.len(), "read {} bytes to decide", rewound.io.at);
            let mut back = Vec::new();
            let mut buf = [0u8; 37];
            loop {
                match futures::executor::block_on(rewound.read(&mut buf)) {
                    Ok(0) => break,
                    Ok(n) => back.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("read: {e}"),
                }
            }
            prop_assert_eq!(back, sent);
        }

        /// Sorting is decided by a prefix: more bytes never change it.
        #[test]
        fn sorting_is_decided_by_a_prefix(
            bytes in arrivals(),
            more in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let preamble = stream_preamble(STREAMS_NOISE);
            if let Preamble::Sorted(lane) = sort(&bytes, &preamble) {
                let mut longer = bytes.clone();
                longer.extend_from_slice(&more);
                prop_assert_eq!(sort(&longer, &preamble), Preamble::Sorted(lane));
            }
        }
    }
}
