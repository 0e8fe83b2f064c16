//! A running overlay node: a cloneable [`Client`] sends commands over a bounded channel
//! to one [`EventLoop`] task that owns the swarm.
//!
//! # Resolution and liveness
//!
//! `resolve(path)` asks the DHT for the records of the path and of each of its prefixes
//! (longest first, at most [`MAX_PREFIXES`]), in parallel, and checks every record it gets
//! ([`PathRecord::from_kad`]). The answer is the longest prefix whose node is *live*:
//! already connected, or reachable by a dial within [`Config::liveness_timeout`]. Answers
//! are cached for [`Config::resolve_cache_ttl`], and a cached answer is dropped the moment
//! the last connection to its node closes. So a node that dies stops resolving as soon as
//! its connections close — at once for a killed process (its kernel resets the TCP
//! connections), within a ping interval and timeout ([`Config::ping_interval`] and
//! [`Config::ping_timeout`], 4 s each) for a machine that
//! vanishes — well inside 10 s, without waiting for the record to expire. A node that comes
//! back republishes its records with a higher sequence number and resolves again.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use keys::{Chain, Path, SigningKey};
use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, GetRecordOk, QueryId, QueryResult, Quorum};
use libp2p::metrics::{Metrics, Recorder, Registry};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, gossipsub, identify, ping};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL, Swarms, Transports, build_swarm};
use crate::config::Config;
use crate::record::{PathRecord, key_of};
use crate::refresh::{Refresh, Target};
use crate::store::{Store, error_chain};
use crate::streams::{StreamBehaviour, StreamBehaviourEvent};

/// Most prefixes of a path that one resolution asks for.
pub const MAX_PREFIXES: usize = 16;

/// Capacity of the command channel.
const COMMAND_QUEUE: usize = 64;

/// How often the event loop looks for routing-table buckets due a refresh, at most
/// (a quarter of the refresh interval when that is shorter). A refresh lookup that ends
/// starts the next one due at once.
const REFRESH_CHECK: Duration = Duration::from_secs(5);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The swarm could not be built.
    #[error(transparent)]
    Build(#[from] crate::behaviour::BuildError),
    /// A listen address was refused (bad multiaddr for this transport, port in use).
    #[error("cannot listen on {address}: {reason}")]
    Listen {
        /// The address.
        address: Multiaddr,
        /// Why.
        reason: String,
    },
}

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// The node holds no valid writecap for the path.
    #[error("this node holds no valid writecap for {path}: {reason}")]
    NotAuthorized {
        /// The path.
        path: String,
        /// Why the chain fails.
        reason: String,
    },
    /// No prefix of the path is registered.
    #[error("nothing is registered at {path} or any prefix of it")]
    NotRegistered {
        /// The path.
        path: String,
    },
    /// Records exist but none of their nodes answers.
    #[error("{path} is registered, but its node {peer} is unreachable")]
    Unreachable {
        /// The registered prefix.
        path: String,
        /// The node.
        peer: String,
    },
    /// The record could not be stored or encoded.
    #[error("cannot publish: {0}")]
    Publish(String),
    /// The address could not be dialled.
    #[error("cannot dial: {0}")]
    Dial(String),
    /// Pub-sub refused the request.
    #[error("pub-sub: {0}")]
    PubSub(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Shutdown,
    /// The resolution took longer than it may.
    #[error("resolving {path} took more than {secs} s")]
    TimedOut {
        /// The path.
        path: String,
        /// The limit, in seconds.
        secs: u64,
    },
}

/// How long a resolution may take in all. Its prefixes are looked up one after another,
/// each within Kademlia's query timeout and then a liveness dial, and a lookup is run
/// again for newer records when its node is gone: bounded each, but not together (a node
/// that had just joined, with departed peers in its table, took over a minute).
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a path resolves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The path asked for.
    pub path: String,
    /// The longest registered prefix with a live node.
    pub prefix: String,
    /// The node.
    pub peer_id: String,
    /// The node's addresses.
    pub addresses: Vec<String>,
    /// The record's sequence number.
    pub sequence: u64,
    /// Kademlia requests the lookup took (0 when answered from this node's own store or
    /// cache): the stand-in for hops, which Kademlia does not report.
    pub requests: u32,
    /// Whether the answer came from the cache.
    pub cached: bool,
}

/// A node's state at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This node's PeerId.
    pub peer_id: String,
    /// This node's principal.
    pub principal: String,
    /// Addresses it listens on, with `/p2p/<peer id>`.
    pub listen_addrs: Vec<String>,
    /// Connected peers.
    pub peers: usize,
    /// Peers the stream swarm (our own protocols' connections) is connected to.
    #[serde(default)]
    pub stream_peers: usize,
    /// Entries in the Kademlia routing table.
    pub routing_table: usize,
    /// Path records held in the store.
    pub records: usize,
    /// Paths this node registered.
    pub registered: Vec<String>,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// What Kademlia did for and on behalf of this node since it started.
    pub kad: KadCounters,
}

/// Kademlia's work on one node, counted since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KadCounters {
    /// Requests for the peers closest to a key (FIND_NODE) this node answered.
    pub served_closest: u64,
    /// Requests for a record (GET_VALUE) this node answered.
    pub served_get_record: u64,
    /// Records (PUT_VALUE) this node was asked to store.
    pub served_put_record: u64,
    /// Routing-table refresh lookups (of the own key or a key in one bucket) this node
    /// ran: its own (see `crate::refresh`) and Kademlia's bootstrap's while joining.
    pub bootstrap: QueryCount,
    /// Lookups of the peers closest to a key.
    pub closest: QueryCount,
    /// Record lookups.
    pub get_record: QueryCount,
    /// Record stores.
    pub put_record: QueryCount,
    /// Record stores that no peer acknowledged (each is retried later, backing off).
    #[serde(default)]
    pub put_unacknowledged: u64,
    /// Records this node sent to a peer that joined near them, to store (see `hand_off`).
    #[serde(default)]
    pub handed_off: u64,
    /// Of the refresh lookups, those of a key in a bucket no other lookup went through
    /// within the interval (see `crate::refresh`).
    #[serde(default)]
    pub refreshed_buckets: u64,
    /// Peers dropped from the routing table because a dial to them failed while no
    /// connection to them was open (see `EventLoop::forget`).
    #[serde(default)]
    pub forgotten: u64,
}

/// Queries of one kind that ended, and the requests they sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryCount {
    /// Queries that ended.
    pub queries: u64,
    /// Requests they sent.
    pub requests: u64,
}

impl QueryCount {
    fn add(&mut self, stats: &kad::QueryStats) {
        self.queries += 1;
        self.requests += u64::from(stats.num_requests());
    }
}

/// One connected peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its PeerId.
    pub peer_id: String,
    /// Remote addresses of the connections to it.
    pub addresses: Vec<String>,
    /// Its agent version, from identify.
    pub agent: Option<String>,
    /// Last ping round trip, in microseconds.
    pub rtt_micros: Option<u64>,
}

/// What a successful registration did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The path.
    pub path: String,
    /// The record's sequence number.
    pub sequence: u64,
    /// Its expiry (UNIX seconds).
    pub expires: u64,
    /// Peers that acknowledged the PUT before it finished. The PUT stops at the first
    /// acknowledgement, so this is 0 (no peer answered: the record is held here and
    /// republished later) or 1 and more. An acknowledgement says the peer received the
    /// record; each peer then checks it before storing it.
    pub acks: usize,
    /// Addresses in the record.
    pub addresses: Vec<String>,
}

enum Command {
    Register {
        path: Path,
        chain: Chain,
        reply: oneshot::Sender<Result<Registered, Error>>,
    },
    Resolve {
        path: Path,
        reply: oneshot::Sender<Result<Resolution, Error>>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    Dial {
        address: Multiaddr,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    Subscribe {
        topic: String,
        subscribe: bool,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Validate {
        id: gossipsub::MessageId,
        propagated_by: PeerId,
        verdict: Verdict,
    },
    Gossip {
        reply: oneshot::Sender<mpsc::Receiver<Gossip>>,
    },
    Block {
        peer: PeerId,
        duration: Duration,
    },
    ConnectStreams {
        peer: PeerId,
        reply: oneshot::Sender<Result<Route, String>>,
    },
    Closest {
        key: Vec<u8>,
        count: usize,
        reply: oneshot::Sender<Vec<Candidate>>,
    },
    LookUpClosest {
        key: Vec<u8>,
        count: usize,
        reply: oneshot::Sender<Vec<Candidate>>,
    },
}

/// A peer near a key, from [`Client::closest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The peer (possibly this node).
    pub peer: PeerId,
    /// Whether a connection to it is open now.
    pub connected: bool,
}

/// A lookup of the peers nearest a key: the key, how many, who waits for them.
type ClosestLookup = (Vec<u8>, usize, oneshot::Sender<Vec<Candidate>>);

/// A pub-sub message received on a subscribed topic. Gossipsub holds it back until the
/// application gives its [`Verdict`] through [`Client::validate`].
#[derive(Debug, Clone)]
pub struct Gossip {
    /// The topic.
    pub topic: String,
    /// The publishing node (gossipsub signs every message with the node's key).
    pub source: PeerId,
    /// The peer that passed the message on.
    pub propagated_by: PeerId,
    /// Gossipsub's message id.
    pub id: gossipsub::MessageId,
    /// The message.
    pub data: Vec<u8>,
}

/// What the application says of a [`Gossip`] message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: deliver and forward.
    Accept,
    /// Invalid: drop, do not forward, and penalise the peers that sent it.
    Reject,
    /// Drop without penalty (e.g. no room to handle it now).
    Ignore,
}

/// An open on a connected stream swarm that takes longer than this has the node make
/// sure of the connection.
const SLOW_OPEN: Duration = Duration::from_secs(2);

/// The peers whose deadline in `deadlines` has passed at `now`.
fn due(deadlines: &HashMap<PeerId, Instant>, now: Instant) -> Vec<PeerId> {
    deadlines
        .iter()
        .filter(|(_, until)| now >= **until)
        .map(|(peer, _)| *peer)
        .collect()
}

/// How long a stream dial waits for the overlay to learn where a connected peer listens.
const ADDRESS_WAIT: Duration = Duration::from_secs(2);

/// How long streams to a peer the stream swarm could not reach ride the overlay's
/// connection before the stream swarm tries again.
const STREAM_FALLBACK_FOR: Duration = Duration::from_secs(60);

/// Capacity of the channel of received pub-sub messages; when it is full, new messages
/// are ignored (pub-sub is best effort) and counted.
pub const GOSSIP_QUEUE: usize = 4096;

/// A handle on a running node. Cheap to clone; every method is cancel-safe (dropping
/// the future drops the reply, the node finishes the work anyway).
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    streams: Streams,
    membership: tokio::sync::watch::Receiver<u64>,
    routing: Arc<std::sync::RwLock<Arc<RoutingView>>>,
}

/// Opens and accepts streams of our own protocols, on the node's stream swarm (see
/// [`crate::streams`]). Cheap to clone.
///
/// A stream to a peer the stream swarm is not connected to first has the node dial it
/// (at the addresses the overlay learned of it) and waits for that dial's outcome:
/// `libp2p-stream` asks its swarm for one dial at a time and forgets the others, so
/// streams opened to several new peers at once would otherwise wait forever. Where the
/// stream swarm cannot reach a peer the overlay is connected to (the peer dialled us
/// from behind a NAT, announced no address, or runs an older version), the stream rides
/// the overlay's connection instead, and further streams to that peer do for a minute.
/// Streams are accepted from both.
#[derive(Clone)]
pub struct Streams {
    control: libp2p_stream::Control,
    overlay: libp2p_stream::Control,
    connected: Arc<std::sync::RwLock<HashSet<PeerId>>>,
    commands: Option<mpsc::Sender<Command>>,
}

/// The streams peers open to this node, on either swarm.
pub type IncomingStreams =
    futures::stream::Select<libp2p_stream::IncomingStreams, libp2p_stream::IncomingStreams>;

/// Which connection a stream to a peer takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The stream swarm's.
    Streams,
    /// The overlay's: the stream swarm could not reach the peer.
    Overlay,
}

impl fmt::Debug for Streams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streams").finish_non_exhaustive()
    }
}

impl Streams {
    /// A handle attached to no node: it accepts streams that never come and opens none.
    /// For tests of code that holds one.
    pub fn detached() -> Streams {
        Streams {
            control: libp2p_stream::Behaviour::new().new_control(),
            overlay: libp2p_stream::Behaviour::new().new_control(),
            connected: Arc::default(),
            commands: None,
        }
    }

    /// Opens a stream of `protocol` to `peer`, connecting first if need be.
    pub async fn open_stream(
        &mut self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<libp2p::Stream, libp2p_stream::OpenStreamError> {
        let connected = match self.connected.read() {
            Ok(set) => set.contains(&peer),
            Err(poisoned) => poisoned.into_inner().contains(&peer),
        };
        if !connected {
            return match self.connect(peer).await? {
                Route::Streams => self.control.open_stream(peer, protocol).await,
                Route::Overlay => self.overlay.open_stream(peer, protocol).await,
            };
        }
        // The connection may close between the look above and the open: libp2p-stream
        // then asks its swarm for a dial, which it may drop (see above). An open that
        // takes long has the node connect; the new connection takes the waiting open.
        let mut control = self.control.clone();
        let open = control.open_stream(peer, protocol.clone());
        tokio::pin!(open);
        tokio::select! {
            opened = &mut open => return opened,
            () = tokio::time::sleep(SLOW_OPEN) => {}
        }
        match self.connect(peer).await? {
            Route::Streams => open.await,
            Route::Overlay => self.overlay.open_stream(peer, protocol).await,
        }
    }

    /// Has the node connect the stream swarm to `peer`, or say to take the overlay's
    /// connection.
    async fn connect(&self, peer: PeerId) -> io::Result<Route> {
        let stopped = || io::Error::other("the node has stopped");
        let commands = self.commands.as_ref().ok_or_else(stopped)?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(Command::ConnectStreams { peer, reply })
            .await
            .map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(|e| io::Error::new(io::ErrorKind::NotConnected, e))
    }

    /// The streams of `protocol` that peers open to this node; one taker per protocol.
    pub fn accept(
        &mut self,
        protocol: StreamProtocol,
    ) -> Result<IncomingStreams, libp2p_stream::AlreadyRegistered> {
        let lean = self.control.accept(protocol.clone())?;
        let overlay = self.overlay.accept(protocol)?;
        Ok(futures::stream::select(lean, overlay))
    }
}

/// `address` without its trailing `/p2p/<peer>`, as Kademlia keeps addresses and a dial
/// reports them with it.
fn without_p2p(address: &Multiaddr) -> Multiaddr {
    let mut address = address.clone();
    if matches!(
        address.iter().last(),
        Some(libp2p::multiaddr::Protocol::P2p(_))
    ) {
        address.pop();
    }
    address
}

/// The routing table as the event loop last published it, for [`Client::closest_known`].
#[derive(Debug)]
struct RoutingView {
    me: PeerId,
    /// Every entry: its Kademlia key, and whether a connection to it was open.
    peers: Vec<(kad::KBucketKey<PeerId>, bool)>,
}

impl RoutingView {
    /// This node and the peers nearest to `key`, nearest first, at most `count`.
    fn closest(&self, key: &[u8], count: usize) -> Vec<Candidate> {
        let target = kad::KBucketKey::new(kad::RecordKey::new(&key));
        let mut near: Vec<(kad::KBucketDistance, PeerId, bool)> = self
            .peers
            .iter()
            .map(|(peer, connected)| (peer.distance(&target), *peer.preimage(), *connected))
            .collect();
        near.push((
            kad::KBucketKey::from(self.me).distance(&target),
            self.me,
            true,
        ));
        if near.len() > count {
            near.select_nth_unstable(count);
            near.truncate(count);
        }
        near.sort();
        near.into_iter()
            .map(|(_, peer, connected)| Candidate { peer, connected })
            .collect()
    }

    /// The `count` peers nearest to this node, nearest first.
    fn neighbourhood(&self, count: usize) -> Vec<PeerId> {
        let me = kad::KBucketKey::from(self.me);
        let mut near: Vec<(kad::KBucketDistance, PeerId)> = self
            .peers
            .iter()
            .map(|(peer, _)| (peer.distance(&me), *peer.preimage()))
            .collect();
        if near.len() > count {
            near.select_nth_unstable(count);
            near.truncate(count);
        }
        near.sort();
        near.into_iter().map(|(_, peer)| peer).collect()
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| Error::Shutdown)?;
        answer.await.map_err(|_| Error::Shutdown)
    }

    /// Publishes a record for `path`, held through `chain`.
    pub async fn register(&self, path: Path, chain: Chain) -> Result<Registered, Error> {
        self.ask(|reply| Command::Register { path, chain, reply })
            .await?
    }

    /// Resolves `path` to the live node of its longest registered prefix.
    pub async fn resolve(&self, path: Path) -> Result<Resolution, Error> {
        self.ask(|reply| Command::Resolve { path, reply }).await?
    }

    /// The node's status.
    pub async fn status(&self) -> Result<Status, Error> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// Connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, Error> {
        self.ask(|reply| Command::Peers { reply }).await
    }

    /// Dials an address and waits for the connection.
    pub async fn dial(&self, address: Multiaddr) -> Result<(), Error> {
        self.ask(|reply| Command::Dial { address, reply }).await?
    }

    /// Stops the node: connections close, the event loop ends.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.ask(|reply| Command::Shutdown { reply }).await
    }

    /// This node and the peers of its routing table, nearest to `key` first (XOR distance
    /// in Kademlia's key space, where a record with this key would be placed), at most
    /// `count`. Answered from the local routing table, without network traffic.
    pub async fn closest(&self, key: Vec<u8>, count: usize) -> Result<Vec<Candidate>, Error> {
        self.ask(|reply| Command::Closest { key, count, reply })
            .await
    }

    /// [`Client::closest`] from the routing table as the node last published it (after
    /// every change to its entries or their connections), without asking the node: no round trip
    /// through its event loop, which costs two thread wake-ups per call. It may miss what
    /// the event loop is handling at the moment.
    pub fn closest_known(&self, key: &[u8], count: usize) -> Vec<Candidate> {
        let view = match self.routing.read() {
            Ok(view) => view.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        view.closest(key, count)
    }

    /// This node and the peers nearest to `key` in the whole overlay, nearest first, at
    /// most `count` (up to Kademlia's k = 20): an iterative lookup, as a PUT makes before
    /// it stores. Only peers that answered are named; this node is among them when it is
    /// near. Use it where the local routing table cannot know (a key far from this node);
    /// on a lookup that finds nobody, the local table's answer.
    pub async fn look_up_closest(
        &self,
        key: Vec<u8>,
        count: usize,
    ) -> Result<Vec<Candidate>, Error> {
        self.ask(|reply| Command::LookUpClosest { key, count, reply })
            .await
    }

    /// A counter that changes whenever this node's neighbourhood changes: which peers are
    /// the [`Config::neighbourhood`] nearest to it in the routing table, or one of them
    /// lost its last connection (it may have crashed). A cue to check what is held near
    /// this node; connections to peers farther away, which lookups open and idle
    /// timeouts close all the time, do not move it, nor does a neighbour that returns
    /// before it left the table.
    pub fn membership(&self) -> tokio::sync::watch::Receiver<u64> {
        self.membership.clone()
    }

    /// A handle that opens and accepts streams of our own protocols on this node's stream
    /// connections (dialling the peer when not connected).
    pub fn streams(&self) -> Streams {
        self.streams.clone()
    }

    /// Joins the pub-sub topic `topic`; its messages arrive on [`Client::gossip`].
    pub async fn subscribe(&self, topic: String) -> Result<(), Error> {
        self.ask(|reply| Command::Subscribe {
            topic,
            subscribe: true,
            reply,
        })
        .await?
    }

    /// Leaves the pub-sub topic `topic`.
    pub async fn unsubscribe(&self, topic: String) -> Result<(), Error> {
        self.ask(|reply| Command::Subscribe {
            topic,
            subscribe: false,
            reply,
        })
        .await?
    }

    /// Publishes `data` on `topic`, signed by the node's key.
    pub async fn publish(&self, topic: String, data: Vec<u8>) -> Result<(), Error> {
        self.ask(|reply| Command::Publish { topic, data, reply })
            .await?
    }

    /// The messages of subscribed topics. There is one receiver: a second call replaces
    /// the first. Every message waits for [`Client::validate`].
    pub async fn gossip(&self) -> Result<mpsc::Receiver<Gossip>, Error> {
        self.ask(|reply| Command::Gossip { reply }).await
    }

    /// Gives the verdict on a received pub-sub message.
    pub async fn validate(&self, gossip: &Gossip, verdict: Verdict) -> Result<(), Error> {
        self.commands
            .send(Command::Validate {
                id: gossip.id.clone(),
                propagated_by: gossip.propagated_by,
                verdict,
            })
            .await
            .map_err(|_| Error::Shutdown)
    }

    /// Refuses every connection with `peer` for `duration` (closing those open now).
    pub async fn block(&self, peer: PeerId, duration: Duration) -> Result<(), Error> {
        self.commands
            .send(Command::Block { peer, duration })
            .await
            .map_err(|_| Error::Shutdown)
    }
}

/// Starts a node: builds the swarm, listens, dials the bootstrap peers and spawns the
/// event loop on the current tokio runtime. Returns once listening has started.
pub async fn start(
    key: SigningKey,
    config: Config,
    store: Store,
    transports: Transports,
) -> Result<(Client, tokio::task::JoinHandle<()>), StartError> {
    start_with_metrics(key, config, store, transports, None).await
}

/// [`start`], recording libp2p's metrics (connections, Kademlia, identify, ping,
/// gossipsub) and the overlay's own (`blocktree_*`) in `registry`.
pub async fn start_with_metrics(
    key: SigningKey,
    config: Config,
    store: Store,
    transports: Transports,
    registry: Option<&mut Registry>,
) -> Result<(Client, tokio::task::JoinHandle<()>), StartError> {
    let Swarms {
        overlay: mut swarm,
        streams: stream_swarm,
    } = build_swarm(key.to_libp2p(), store, &config, transports)?;
    let mut pending = HashSet::new();
    for address in &config.listen {
        let id = swarm
            .listen_on(address.clone())
            .map_err(|e| StartError::Listen {
                address: address.clone(),
                reason: error_chain(&e),
            })?;
        pending.insert(id);
    }
    // Wait until every listener reports an address or fails (port in use, …).
    let mut listen_addrs = Vec::new();
    while !pending.is_empty() {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                listen_addrs.push(address);
                pending.remove(&listener_id);
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => {
                let address = addresses.first().cloned().unwrap_or_else(Multiaddr::empty);
                return Err(StartError::Listen {
                    address,
                    reason: match reason {
                        Err(e) => e.to_string(),
                        Ok(()) => "listener closed".into(),
                    },
                });
            }
            SwarmEvent::ListenerError { error, .. } => {
                return Err(StartError::Listen {
                    address: Multiaddr::empty(),
                    reason: error.to_string(),
                });
            }
            _ => {}
        }
    }
    let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
    let control = stream_swarm.behaviour().stream.new_control();
    let overlay = swarm.behaviour().stream.new_control();
    let mut event_loop = EventLoop::new(swarm, stream_swarm, key, config, receiver);
    let streams = Streams {
        control,
        overlay,
        connected: event_loop.stream_peers.clone(),
        commands: Some(commands.clone()),
    };
    event_loop.metrics = registry.map(NodeMetrics::new);
    event_loop.listen_addrs = listen_addrs;
    event_loop.start_bootstrap();
    let membership = event_loop.membership.subscribe();
    event_loop.publish_routing();
    let routing = event_loop.routing.clone();
    let span = tracing::info_span!("dht", peer = %event_loop.peer_id);
    let task = tokio::spawn(tracing::Instrument::instrument(event_loop.run(), span));
    Ok((
        Client {
            commands,
            streams,
            membership,
            routing,
        },
        task,
    ))
}

struct Bootstrap {
    address: Multiaddr,
    next_attempt: Instant,
    backoff: Duration,
    dialing: Option<ConnectionId>,
    connected: bool,
}

struct Registration {
    chain: Chain,
    record: PathRecord,
    /// The PUT of this path in flight: a republication waits for it rather than start a
    /// second one beside it.
    put: Option<QueryId>,
    /// A republication was asked for while `put` ran (the addresses changed, or the
    /// period came round): publish again once it ends.
    again: bool,
    /// PUTs in a row that no peer acknowledged.
    failures: u32,
    /// When to publish again after such a failure ([`retry_backoff`]).
    retry_at: Option<Instant>,
    /// The last PUT asked no peer at all (the routing table was empty): the next peer
    /// that enters the table is worth an early retry.
    alone: bool,
}

impl Registration {
    fn new(chain: Chain, record: PathRecord, put: QueryId) -> Self {
        Registration {
            chain,
            record,
            put: Some(put),
            again: false,
            failures: 0,
            retry_at: None,
            alone: false,
        }
    }
}

/// First wait before publishing again a record that no peer acknowledged.
const RETRY_FIRST: Duration = Duration::from_secs(2);
/// Longest wait between such retries (or the republish interval, if shorter).
const RETRY_MOST: Duration = Duration::from_secs(120);

/// How long to wait after the `failures`th PUT in a row of one path that no peer
/// acknowledged: 2 s doubling up to [`RETRY_MOST`] (or `cap`), each wait drawn from its
/// upper half by a hash of the node, the path and the count, so nodes that failed together
/// do not retry together. A PUT times out when the overlay is overloaded or partitioned;
/// retrying at a fixed rate would add load exactly then (with a 2 s retry, 700 simulated
/// nodes sent 3.7 M store requests in 45 minutes and the overlay never recovered).
fn retry_backoff(failures: u32, cap: Duration, node: &PeerId, path: &Path) -> Duration {
    let cap = cap.min(RETRY_MOST).max(RETRY_FIRST);
    let full = RETRY_FIRST
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(cap);
    let mut hasher = blake3::Hasher::new();
    hasher.update(&node.to_bytes());
    hasher.update(path.to_string().as_bytes());
    hasher.update(&failures.to_le_bytes());
    let hash = hasher.finalize();
    let draw = f64::from(u16::from_le_bytes([hash.as_bytes()[0], hash.as_bytes()[1]]));
    full / 2 + full.mul_f64(draw / f64::from(u16::MAX) / 2.0)
}

struct PendingRegister {
    path: Path,
    reply: oneshot::Sender<Result<Registered, Error>>,
    record: PathRecord,
}

/// One prefix lookup inside a resolution.
struct Lookup {
    prefix: Path,
    /// Its Kademlia query has been started (a shorter prefix is looked up only once the
    /// longer ones found nothing: most paths resolve at their own record).
    started: bool,
    done: bool,
    best: Option<PathRecord>,
    /// Valid records received (the lookup stops at [`Config::resolve_quorum`]).
    found: u32,
    /// It stopped at the quorum rather than at the end of the query: a newer record may
    /// be held by peers it did not ask.
    stopped_early: bool,
    /// Records at or below this sequence are ignored: their node was found dead, and the
    /// lookup was started again for a newer one.
    floor: Option<u64>,
    requests: u32,
}

struct PendingResolve {
    path: Path,
    /// When it is given up (see [`RESOLVE_TIMEOUT`]).
    deadline: Instant,
    lookups: Vec<Lookup>,
    /// Index of the lookup whose node is being dialled for liveness.
    checking: Option<(usize, Instant)>,
    reply: oneshot::Sender<Result<Resolution, Error>>,
    dead: Option<(Path, PeerId)>,
}

/// The task that owns the swarm.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    /// The lean swarm of our own stream protocols (see [`crate::streams`]).
    streams: Swarm<StreamBehaviour>,
    /// The peers it is connected to, for [`Streams::open_stream`].
    stream_peers: Arc<std::sync::RwLock<HashSet<PeerId>>>,
    /// Who waits for the stream swarm to connect to a peer.
    stream_dials: HashMap<PeerId, Vec<oneshot::Sender<Result<Route, String>>>>,
    /// Peers the stream swarm could not reach lately, until when: streams to them ride
    /// the overlay's connection while there is one.
    stream_unreachable: HashMap<PeerId, Instant>,
    /// Stream dials that wait for the overlay to learn where the peer listens, until when.
    awaiting_addresses: HashMap<PeerId, Instant>,
    key: SigningKey,
    peer_id: PeerId,
    config: Config,
    commands: mpsc::Receiver<Command>,
    listen_addrs: Vec<Multiaddr>,
    started: Instant,
    kad_counters: KadCounters,
    bootstraps: Vec<Bootstrap>,
    registrations: HashMap<Path, Registration>,
    /// Every PUT in flight and the path it publishes.
    puts: HashMap<QueryId, Path>,
    /// The PUTs of registrations, whose callers wait for the outcome.
    pending_puts: HashMap<QueryId, PendingRegister>,
    next_resolve: u64,
    resolves: HashMap<u64, PendingResolve>,
    gets: HashMap<QueryId, (u64, usize)>,
    /// Lookups of the peers nearest a key: the key, how many, who waits.
    closest_lookups: HashMap<QueryId, ClosestLookup>,
    cache: HashMap<Path, (Resolution, PeerId, Instant)>,
    dials: HashMap<ConnectionId, oneshot::Sender<Result<(), Error>>>,
    agents: HashMap<PeerId, String>,
    rtts: HashMap<PeerId, Duration>,
    connections: HashMap<PeerId, HashSet<Multiaddr>>,
    /// When each connected peer last connected or passed on a pub-sub message.
    active: HashMap<PeerId, Instant>,
    /// Republish every path soon (the addresses changed, or the node joined).
    republish_due: Option<Instant>,
    gossip: Option<mpsc::Sender<Gossip>>,
    blocked: HashMap<PeerId, Instant>,
    metrics: Option<NodeMetrics>,
    membership: tokio::sync::watch::Sender<u64>,
    /// What [`Client::closest_known`] reads.
    routing: Arc<std::sync::RwLock<Arc<RoutingView>>>,
    /// The routing table or connections may have changed since the last publication.
    routing_changed: bool,
    /// Entries in the last published table (the next one's capacity).
    routing_len: usize,
    /// The peers nearest this node at the last publication (see [`Client::membership`]).
    neighbourhood: Vec<PeerId>,
    /// Which buckets lookups went through lately, and the refresh lookup in flight.
    refresh: Refresh,
    /// When to look for stale buckets next.
    refresh_check: Instant,
}

/// The overlay's metrics, beside libp2p's.
struct NodeMetrics {
    libp2p: Metrics,
    records: Gauge,
    routing_table: Gauge,
    peers: Gauge,
    resolves_ok: Counter,
    resolves_failed: Counter,
}

impl NodeMetrics {
    fn new(registry: &mut Registry) -> Self {
        let libp2p = Metrics::new(registry);
        let registry = registry.sub_registry_with_prefix("blocktree");
        let records = Gauge::default();
        registry.register("records", "Path records held in the store", records.clone());
        let routing_table = Gauge::default();
        registry.register(
            "routing_table_entries",
            "Entries in the Kademlia routing table",
            routing_table.clone(),
        );
        let peers = Gauge::default();
        registry.register("connected_peers", "Connected peers", peers.clone());
        let resolves_ok = Counter::default();
        registry.register("resolves_ok", "Resolutions answered", resolves_ok.clone());
        let resolves_failed = Counter::default();
        registry.register(
            "resolves_failed",
            "Resolutions that found no live node",
            resolves_failed.clone(),
        );
        NodeMetrics {
            libp2p,
            records,
            routing_table,
            peers,
            resolves_ok,
            resolves_failed,
        }
    }
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl EventLoop {
    fn new(
        swarm: Swarm<Behaviour>,
        streams: Swarm<StreamBehaviour>,
        key: SigningKey,
        config: Config,
        commands: mpsc::Receiver<Command>,
    ) -> Self {
        let now = Instant::now();
        let bootstraps = config
            .bootstrap
            .iter()
            .map(|address| Bootstrap {
                address: address.clone(),
                next_attempt: now,
                backoff: config.bootstrap_retry,
                dialing: None,
                connected: false,
            })
            .collect();
        let peer_id = *swarm.local_peer_id();
        let refresh = Refresh::new(peer_id, config.bootstrap_interval, now);
        EventLoop {
            peer_id,
            swarm,
            streams,
            stream_peers: Arc::default(),
            stream_dials: HashMap::new(),
            stream_unreachable: HashMap::new(),
            awaiting_addresses: HashMap::new(),
            key,
            config,
            commands,
            listen_addrs: Vec::new(),
            started: now,
            kad_counters: KadCounters::default(),
            bootstraps,
            registrations: HashMap::new(),
            puts: HashMap::new(),
            pending_puts: HashMap::new(),
            next_resolve: 0,
            resolves: HashMap::new(),
            gets: HashMap::new(),
            closest_lookups: HashMap::new(),
            cache: HashMap::new(),
            dials: HashMap::new(),
            agents: HashMap::new(),
            rtts: HashMap::new(),
            connections: HashMap::new(),
            active: HashMap::new(),
            republish_due: None,
            gossip: None,
            blocked: HashMap::new(),
            metrics: None,
            membership: tokio::sync::watch::Sender::new(0),
            routing: Arc::new(std::sync::RwLock::new(Arc::new(RoutingView {
                me: peer_id,
                peers: Vec::new(),
            }))),
            routing_changed: true,
            refresh,
            refresh_check: now,
            routing_len: 0,
            neighbourhood: Vec::new(),
        }
    }

    /// Runs until shutdown.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut republish = tokio::time::interval(self.config.republish_interval);
        republish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        republish.tick().await;
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                event = self.streams.select_next_some() => self.on_stream_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        tracing::info!("shutting down");
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    None => return,
                },
                _ = tick.tick() => self.on_tick(),
                _ = republish.tick() => self.republish_all(),
            }
            if self.routing_changed {
                self.publish_routing();
            }
        }
    }

    /// Publishes the routing table for [`Client::closest_known`].
    fn publish_routing(&mut self) {
        self.routing_changed = false;
        let view = Arc::new(self.routing_view());
        let size = self
            .config
            .neighbourhood
            .max(self.config.replication_factor)
            .max(1);
        let neighbourhood = view.neighbourhood(size);
        if neighbourhood != self.neighbourhood {
            self.neighbourhood = neighbourhood;
            self.membership.send_modify(|n| *n += 1);
        }
        match self.routing.write() {
            Ok(mut published) => *published = view,
            Err(poisoned) => *poisoned.into_inner() = view,
        }
    }

    /// The routing table now: every entry, and whether it is connected. (A table holds a
    /// few hundred peers; Kademlia's own closest-peers iterator moves a k-sized buffer
    /// through all 256 buckets, which cost more than this on every block operation.)
    fn routing_view(&mut self) -> RoutingView {
        let mut keys: Vec<kad::KBucketKey<PeerId>> = Vec::with_capacity(self.routing_len);
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            keys.extend(bucket.iter().map(|entry| *entry.node.key));
        }
        self.routing_len = keys.len();
        let peers = keys
            .into_iter()
            .map(|key| {
                let connected = self.swarm.is_connected(key.preimage());
                (key, connected)
            })
            .collect();
        RoutingView {
            me: self.peer_id,
            peers,
        }
    }

    fn start_bootstrap(&mut self) {
        self.on_tick();
    }

    fn on_gossip(
        &mut self,
        propagated_by: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        if let Some(at) = self.active.get_mut(&propagated_by) {
            *at = Instant::now();
        }
        // Strict validation: gossipsub has checked the source's signature already.
        let verdict = match (&self.gossip, message.source) {
            (Some(queue), Some(source)) => {
                let gossip = Gossip {
                    topic: message.topic.into_string(),
                    source,
                    propagated_by,
                    id: id.clone(),
                    data: message.data,
                };
                match queue.try_send(gossip) {
                    Ok(()) => return,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::debug!("pub-sub queue full, message ignored");
                        gossipsub::MessageAcceptance::Ignore
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        self.gossip = None;
                        gossipsub::MessageAcceptance::Ignore
                    }
                }
            }
            (None, Some(_)) => gossipsub::MessageAcceptance::Ignore,
            (_, None) => gossipsub::MessageAcceptance::Reject,
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &propagated_by, verdict);
    }

    /// Starts a lookup that refreshes the routing table, if one is due (see
    /// [`crate::refresh`]).
    fn refresh_stale_bucket(&mut self, now: Instant) {
        if self.refresh.is_running() {
            return;
        }
        let k = self.config.replication_factor.max(1);
        let kth = match self.neighbourhood.get(k - 1) {
            Some(peer) => self.refresh.bucket_of(&kad::KBucketKey::from(*peer)),
            None => None,
        };
        let kad = &mut self.swarm.behaviour_mut().kad;
        let nearest = kad.kbuckets().next().and_then(|b| b.range().0.ilog2());
        let Some(target) = self.refresh.due(nearest, kth, now) else {
            return;
        };
        let query = match &target {
            Target::Own => kad.get_closest_peers(self.peer_id),
            Target::Bucket { key, .. } => kad.get_closest_peers(key.clone()),
        };
        tracing::debug!(?target, "refreshing the routing table");
        if matches!(target, Target::Bucket { .. }) {
            self.kad_counters.refreshed_buckets += 1;
        }
        self.refresh.start(query, &target, now);
    }

    /// Disconnects the least recently active peers while more than
    /// [`Config::max_connections`] are connected (see there).
    fn trim_connections(&mut self, now: Instant) {
        let high = self.config.max_connections;
        if high == 0 || self.active.len() <= high {
            return;
        }
        let low = high - high / 4;
        let mesh: HashSet<PeerId> = self
            .swarm
            .behaviour()
            .gossipsub
            .all_mesh_peers()
            .copied()
            .collect();
        let mut idle: Vec<(Instant, PeerId)> = self
            .active
            .iter()
            .filter(|(peer, at)| {
                !mesh.contains(peer) && now.duration_since(**at) >= crate::config::CONNECTION_GRACE
            })
            .map(|(peer, at)| (*at, *peer))
            .collect();
        idle.sort();
        let excess = self.active.len() - low;
        for (_, peer) in idle.into_iter().take(excess) {
            tracing::debug!(%peer, "trimming an idle connection");
            self.active.remove(&peer);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        self.trim_connections(now);
        if now >= self.refresh_check {
            self.refresh_check = now + REFRESH_CHECK.min(self.config.bootstrap_interval / 4);
            self.refresh_stale_bucket(now);
        }
        let expired = due(&self.blocked, now);
        for peer in due(&self.awaiting_addresses, now) {
            self.dial_streams(peer);
        }
        for peer in expired {
            tracing::info!(%peer, "block lifted");
            self.blocked.remove(&peer);
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            self.streams.behaviour_mut().blocked.unblock_peer(peer);
        }
        // Alone again (every peer left or restarted): join through the bootstrap peers anew.
        if !self.bootstraps.is_empty() && self.swarm.connected_peers().next().is_none() {
            for b in &mut self.bootstraps {
                b.connected = false;
            }
        }
        for i in 0..self.bootstraps.len() {
            let b = &mut self.bootstraps[i];
            if b.connected || b.dialing.is_some() || now < b.next_attempt {
                continue;
            }
            let opts = DialOpts::unknown_peer_id()
                .address(b.address.clone())
                .build();
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => b.dialing = Some(id),
                Err(e) => {
                    tracing::warn!(address = %b.address, error = %error_chain(&e), retry_in = ?b.backoff, "cannot dial bootstrap peer");
                    b.next_attempt = now + b.backoff;
                    b.backoff = (b.backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        // Liveness checks that ran out of time.
        let expired: Vec<u64> = self
            .resolves
            .iter()
            .filter(|(_, r)| r.checking.is_some_and(|(_, deadline)| now >= deadline))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.liveness_failed(id);
        }
        // Resolutions past their deadline: answered with the error, their lookups ended.
        let late: Vec<u64> = self
            .resolves
            .iter()
            .filter(|(_, r)| now >= r.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.finish_lookups(id);
            if let Some(resolve) = self.resolves.remove(&id) {
                tracing::debug!(path = %resolve.path, "a resolution ran out of time");
                if let Some(m) = &self.metrics {
                    m.resolves_failed.inc();
                }
                let _ = resolve.reply.send(Err(Error::TimedOut {
                    path: resolve.path.to_string(),
                    secs: RESOLVE_TIMEOUT.as_secs(),
                }));
            }
        }
        if self.republish_due.is_some_and(|due| now >= due) {
            self.republish_due = None;
            self.republish_all();
        }
        // PUTs that no peer acknowledged, whose wait is over.
        let retry: Vec<Path> = self
            .registrations
            .iter()
            .filter(|(_, r)| r.put.is_none() && r.retry_at.is_some_and(|at| now >= at))
            .map(|(path, _)| path.clone())
            .collect();
        for path in retry {
            self.republish(&path);
        }
        let ttl = self.config.resolve_cache_ttl;
        self.cache
            .retain(|_, (_, _, at)| now.duration_since(*at) < ttl);
        if self.metrics.is_some() {
            let status = self.status();
            if let Some(m) = &self.metrics {
                m.records.set(status.records as i64);
                m.routing_table.set(status.routing_table as i64);
                m.peers.set(status.peers as i64);
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Register { path, chain, reply } => self.register(path, chain, reply),
            Command::Resolve { path, reply } => self.resolve(path, reply),
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.peers());
            }
            Command::Dial { address, reply } => {
                let opts = DialOpts::unknown_peer_id().address(address).build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.dials.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Error::Dial(error_chain(&e))));
                    }
                }
            }
            Command::Shutdown { .. } => {}
            Command::Subscribe {
                topic,
                subscribe,
                reply,
            } => {
                let topic = gossipsub::IdentTopic::new(topic);
                let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
                let result = if subscribe {
                    gossipsub
                        .subscribe(&topic)
                        .map(|_| ())
                        .map_err(|e| Error::PubSub(e.to_string()))
                } else {
                    gossipsub.unsubscribe(&topic);
                    Ok(())
                };
                let _ = reply.send(result);
            }
            Command::Publish { topic, data, reply } => {
                let result = match self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(gossipsub::IdentTopic::new(topic), data)
                {
                    Ok(_) => Ok(()),
                    // Alone on the topic: nobody to deliver to is not an error of the
                    // publisher's; pub-sub is best effort.
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Ok(()),
                    Err(e) => Err(Error::PubSub(e.to_string())),
                };
                let _ = reply.send(result);
            }
            Command::Validate {
                id,
                propagated_by,
                verdict,
            } => {
                let acceptance = match verdict {
                    Verdict::Accept => gossipsub::MessageAcceptance::Accept,
                    Verdict::Reject => gossipsub::MessageAcceptance::Reject,
                    Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &propagated_by, acceptance);
            }
            Command::Gossip { reply } => {
                let (sender, receiver) = mpsc::channel(GOSSIP_QUEUE);
                self.gossip = Some(sender);
                let _ = reply.send(receiver);
            }
            Command::Closest { key, count, reply } => {
                let _ = reply.send(self.closest(key, count));
            }
            Command::LookUpClosest { key, count, reply } => {
                let count = count.clamp(1, kad::K_VALUE.get());
                // A lookup of the own key for fewer than k peers does not fill the near
                // buckets as the own key's refresh does (see `crate::refresh`).
                let target = kad::KBucketKey::new(key.clone());
                if count >= self.config.replication_factor
                    || self.refresh.bucket_of(&target).is_some()
                {
                    self.refresh.looked_up(&target, Instant::now());
                }
                let query = self.swarm.behaviour_mut().kad.get_n_closest_peers(
                    key.clone(),
                    NonZeroUsize::new(count).unwrap_or(NonZeroUsize::MIN),
                );
                self.closest_lookups.insert(query, (key, count, reply));
            }
            Command::ConnectStreams { peer, reply } => self.connect_streams(peer, reply),
            Command::Block { peer, duration } => {
                tracing::warn!(%peer, ?duration, "blocking peer");
                self.swarm.behaviour_mut().blocked.block_peer(peer);
                self.streams.behaviour_mut().blocked.block_peer(peer);
                self.blocked.insert(peer, Instant::now() + duration);
            }
        }
    }

    fn status(&mut self) -> Status {
        let routing_table = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum();
        let mut registered: Vec<String> =
            self.registrations.keys().map(ToString::to_string).collect();
        registered.sort();
        Status {
            peer_id: self.peer_id.to_string(),
            principal: self.key.principal().to_string(),
            listen_addrs: self
                .listen_addrs
                .iter()
                .map(|a| format!("{a}/p2p/{}", self.peer_id))
                .collect(),
            peers: self.swarm.connected_peers().count(),
            stream_peers: self.streams.connected_peers().count(),
            routing_table,
            records: self.swarm.behaviour_mut().kad.store_mut().len(),
            registered,
            uptime_secs: self.started.elapsed().as_secs(),
            kad: self.kad_counters.clone(),
        }
    }

    fn closest(&mut self, key: Vec<u8>, count: usize) -> Vec<Candidate> {
        self.routing_view().closest(&key, count)
    }

    fn peers(&self) -> Vec<PeerInfo> {
        let mut peers: Vec<PeerInfo> = self
            .swarm
            .connected_peers()
            .map(|peer| PeerInfo {
                peer_id: peer.to_string(),
                addresses: self
                    .connections
                    .get(peer)
                    .map(|a| a.iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
                agent: self.agents.get(peer).cloned(),
                rtt_micros: self.rtts.get(peer).map(|d| d.as_micros() as u64),
            })
            .collect();
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        peers
    }

    fn record_addresses(&self) -> Vec<Multiaddr> {
        let mut addresses: Vec<Multiaddr> = self.listen_addrs.clone();
        addresses.truncate(keys::limits::MAX_RECORD_ADDRESSES);
        addresses
    }

    fn make_record(&self, path: &Path, chain: &Chain, previous: Option<u64>) -> PathRecord {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let sequence = now_ms.max(previous.map_or(0, |p| p + 1));
        let expires = keys::now() + self.config.record_ttl.as_secs();
        PathRecord::new(
            &self.key,
            path.clone(),
            self.record_addresses(),
            chain.clone(),
            sequence,
            expires,
        )
    }

    fn register(
        &mut self,
        path: Path,
        chain: Chain,
        reply: oneshot::Sender<Result<Registered, Error>>,
    ) {
        let revocations = self.revocations();
        if let Err(e) = chain.verify(&path, &self.key.principal(), keys::now(), &revocations) {
            let _ = reply.send(Err(Error::NotAuthorized {
                path: path.to_string(),
                reason: e.to_string(),
            }));
            return;
        }
        let previous = self.registrations.get(&path).map(|r| r.record.sequence());
        let record = self.make_record(&path, &chain, previous);
        match self.publish(&record) {
            Ok(query) => {
                // A republication of the path still in flight runs out by itself; its
                // outcome no longer counts (`on_put_done`), and its record is older.
                self.registrations.insert(
                    path.clone(),
                    Registration::new(chain, record.clone(), query),
                );
                self.puts.insert(query, path.clone());
                self.cache.retain(|p, _| !p.starts_with(&path));
                self.pending_puts.insert(
                    query,
                    PendingRegister {
                        path,
                        reply,
                        record,
                    },
                );
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Stores a record at the closest peers. The PUT is answered once as many of them as a
    /// resolution reads ([`Config::resolve_quorum`]) hold it, or all it reached do: a
    /// resolution right after a registration then finds the new record, not the old.
    fn publish(&mut self, record: &PathRecord) -> Result<QueryId, Error> {
        let kad_record = record.to_kad().map_err(|e| Error::Publish(e.to_string()))?;
        let quorum =
            NonZeroUsize::new(self.config.resolve_quorum as usize).unwrap_or(NonZeroUsize::MIN);
        self.refresh.looked_up(
            &kad::KBucketKey::new(kad_record.key.clone()),
            Instant::now(),
        );
        self.swarm
            .behaviour_mut()
            .kad
            .put_record(kad_record, Quorum::N(quorum))
            .map_err(|e| Error::Publish(e.to_string()))
    }

    fn republish_all(&mut self) {
        let paths: Vec<Path> = self.registrations.keys().cloned().collect();
        for path in paths {
            self.republish(&path);
        }
    }

    /// Publishes a path's record anew, freshly signed with the current addresses; or, if
    /// a PUT of it is in flight, once that one ends.
    fn republish(&mut self, path: &Path) {
        let Some(reg) = self.registrations.get_mut(path) else {
            return;
        };
        if reg.put.is_some() {
            reg.again = true;
            return;
        }
        let (chain, sequence) = (reg.chain.clone(), reg.record.sequence());
        let record = self.make_record(path, &chain, Some(sequence));
        match self.publish(&record) {
            Ok(query) => {
                self.puts.insert(query, path.clone());
                if let Some(reg) = self.registrations.get_mut(path) {
                    reg.record = record;
                    reg.put = Some(query);
                    reg.again = false;
                    reg.retry_at = None;
                }
            }
            Err(e) => tracing::warn!(%path, error = %e, "cannot republish"),
        }
    }

    /// Kademlia's rule for a node that joins: records it is now among the k nearest to
    /// are stored at it by the node nearest them that holds them (here: this node, if at
    /// most one other peer in its table is nearer the key, so that a gap in one table is
    /// covered by another). Without it a record stays where it was put until its owner
    /// republishes, and an overlay that grows meanwhile (a warm-up, a wave of joins) puts
    /// k newer nodes between the key and every holder: lookups stop at those and find
    /// nothing. (libp2p's Kademlia leaves this to its hourly replication, which this
    /// node turns off: see [`Config::replication_interval`].)
    fn hand_off(&mut self, new: PeerId) {
        let k = self.config.replication_factor.max(1);
        let new_key = kad::KBucketKey::from(new);
        let me = kad::KBucketKey::from(self.peer_id);
        // The table as last published (the new peer is left out below anyway).
        let view = match self.routing.read() {
            Ok(view) => Arc::clone(&view),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        let table = view.peers.iter().map(|(key, _)| key);
        let kad = &mut self.swarm.behaviour_mut().kad;
        let mut records = Vec::new();
        let store: &Store = kad.store_mut();
        for record in store.records() {
            let target = kad::KBucketKey::new(record.key.clone());
            let (to_new, to_me) = (new_key.distance(&target), me.distance(&target));
            let (mut nearer_than_new, mut nearer_than_me) = (0, 0);
            for peer in table.clone().filter(|key| key.preimage() != &new) {
                let d = peer.distance(&target);
                nearer_than_new += usize::from(d < to_new);
                nearer_than_me += usize::from(d < to_me);
            }
            // `get` checks the record again where revocation lists are held (only for
            // the few handed off: that check verifies signatures): a revoked node's
            // record is not spread.
            if nearer_than_new < k && nearer_than_me <= 1 && store.get(&record.key).is_some() {
                records.push(record.into_owned());
            }
        }
        for record in records {
            self.kad_counters.handed_off += 1;
            kad.put_record_to(record, std::iter::once(new), Quorum::One);
        }
    }

    /// A PUT of `path` ended with `acks` peers holding the record, after asking `asked`.
    fn on_put_done(&mut self, path: &Path, query: QueryId, acks: usize, asked: u32) {
        let cap = self.config.republish_interval;
        let node = self.peer_id;
        let Some(reg) = self.registrations.get_mut(path) else {
            return;
        };
        if reg.put != Some(query) {
            return; // superseded by a registration
        }
        reg.put = None;
        if acks == 0 {
            self.kad_counters.put_unacknowledged += 1;
            reg.failures = reg.failures.saturating_add(1);
            reg.alone = asked == 0;
            let wait = retry_backoff(reg.failures, cap, &node, path);
            tracing::debug!(%path, failures = reg.failures, asked, ?wait, "no peer took the record");
            reg.retry_at = Some(Instant::now() + wait);
            // A republication asked for meanwhile happens at the retry.
            reg.again = false;
        } else {
            reg.failures = 0;
            reg.alone = false;
            reg.retry_at = None;
            if std::mem::take(&mut reg.again) {
                self.republish(path);
            }
        }
    }

    fn resolve(&mut self, path: Path, reply: oneshot::Sender<Result<Resolution, Error>>) {
        if let Some((resolution, peer, at)) = self.cache.get(&path)
            && at.elapsed() < self.config.resolve_cache_ttl
            && (*peer == self.peer_id || self.swarm.is_connected(peer))
        {
            let mut resolution = resolution.clone();
            resolution.cached = true;
            let _ = reply.send(Ok(resolution));
            return;
        }
        let mut prefixes = Vec::new();
        let mut p = Some(path.clone());
        while let Some(prefix) = p {
            if prefixes.len() == MAX_PREFIXES {
                break;
            }
            p = prefix.parent();
            prefixes.push(prefix);
        }
        let id = self.next_resolve;
        self.next_resolve += 1;
        let mut lookups = Vec::with_capacity(prefixes.len());
        for prefix in prefixes {
            let own = self.registrations.get(&prefix).map(|r| r.record.clone());
            lookups.push(Lookup {
                prefix,
                done: own.is_some(),
                started: own.is_some(),
                best: own,
                found: 0,
                stopped_early: false,
                floor: None,
                requests: 0,
            });
        }
        self.resolves.insert(
            id,
            PendingResolve {
                path,
                lookups,
                checking: None,
                deadline: Instant::now() + RESOLVE_TIMEOUT,
                reply,
                dead: None,
            },
        );
        self.advance_resolve(id);
    }

    /// Moves a resolution on: answers when the longest prefix with a record is known and
    /// its node is live; starts a liveness dial when needed.
    fn advance_resolve(&mut self, id: u64) {
        let Some(resolve) = self.resolves.get_mut(&id) else {
            return;
        };
        if resolve.checking.is_some() {
            return;
        }
        let mut candidate = None;
        for (index, lookup) in resolve.lookups.iter_mut().enumerate() {
            if !lookup.started {
                lookup.started = true;
                let key = key_of(&lookup.prefix);
                self.refresh
                    .looked_up(&kad::KBucketKey::new(key.clone()), Instant::now());
                let query = self.swarm.behaviour_mut().kad.get_record(key);
                self.gets.insert(query, (id, index));
                return;
            }
            if !lookup.done {
                return; // a longer prefix may still answer
            }
            if lookup.best.is_some() {
                candidate = Some(index);
                break;
            }
        }
        let Some(index) = candidate else {
            let resolve = self.resolves.remove(&id).expect("present");
            let result = match resolve.dead {
                Some((prefix, peer)) => Err(Error::Unreachable {
                    path: prefix.to_string(),
                    peer: peer.to_string(),
                }),
                None => Err(Error::NotRegistered {
                    path: resolve.path.to_string(),
                }),
            };
            if let Some(m) = &self.metrics {
                m.resolves_failed.inc();
            }
            let _ = resolve.reply.send(result);
            return;
        };
        let record = resolve.lookups[index]
            .best
            .clone()
            .expect("candidate has a record");
        let peer = record.peer_id();
        if peer == self.peer_id || self.swarm.is_connected(&peer) {
            self.answer(id, index);
            return;
        }
        let deadline = Instant::now() + self.config.liveness_timeout;
        resolve.checking = Some((index, deadline));
        let opts = DialOpts::peer_id(peer)
            .addresses(record.addresses().to_vec())
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts)
            && !matches!(e, libp2p::swarm::DialError::DialPeerConditionFalse(_))
        {
            tracing::debug!(%peer, error = %error_chain(&e), "liveness dial failed");
            self.liveness_failed(id);
        }
    }

    /// Stops the lookups of a resolution that no longer need an answer.
    fn finish_lookups(&mut self, id: u64) {
        let queries: Vec<QueryId> = self
            .gets
            .iter()
            .filter(|(_, (resolve, _))| *resolve == id)
            .map(|(query, _)| *query)
            .collect();
        for query in queries {
            self.gets.remove(&query);
            if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&query) {
                q.finish();
            }
        }
    }

    fn answer(&mut self, id: u64, index: usize) {
        self.finish_lookups(id);
        let Some(resolve) = self.resolves.remove(&id) else {
            return;
        };
        let lookup = &resolve.lookups[index];
        let Some(record) = &lookup.best else {
            return;
        };
        let requests: u32 = resolve.lookups[..=index].iter().map(|l| l.requests).sum();
        let resolution = Resolution {
            path: resolve.path.to_string(),
            prefix: lookup.prefix.to_string(),
            peer_id: record.peer_id().to_string(),
            addresses: record.addresses().iter().map(ToString::to_string).collect(),
            sequence: record.sequence(),
            requests,
            cached: false,
        };
        self.cache.insert(
            resolve.path.clone(),
            (resolution.clone(), record.peer_id(), Instant::now()),
        );
        if let Some(m) = &self.metrics {
            m.resolves_ok.inc();
        }
        let _ = resolve.reply.send(Ok(resolution));
    }

    fn liveness_failed(&mut self, id: u64) {
        let Some(resolve) = self.resolves.get_mut(&id) else {
            return;
        };
        let Some((index, _)) = resolve.checking.take() else {
            return;
        };
        let lookup = &mut resolve.lookups[index];
        if let Some(record) = lookup.best.take() {
            tracing::debug!(prefix = %lookup.prefix, peer = %record.peer_id(), "registered node is not live");
            if resolve.dead.is_none() {
                resolve.dead = Some((lookup.prefix.clone(), record.peer_id()));
            }
            // The lookup stopped at its first few records, all as old as this one or
            // older: ask again, for newer ones only (the path may have moved on).
            if lookup.stopped_early {
                lookup.floor = Some(record.sequence());
                lookup.started = false;
                lookup.done = false;
                lookup.stopped_early = false;
                lookup.found = 0;
            }
        }
        self.advance_resolve(id);
    }

    /// Resolutions waiting to learn whether `peer` is live.
    fn checking(&self, peer: PeerId) -> Vec<u64> {
        self.resolves
            .iter()
            .filter_map(|(id, r)| {
                let (index, _) = r.checking?;
                (r.lookups[index].best.as_ref()?.peer_id() == peer).then_some(*id)
            })
            .collect()
    }

    fn on_peer_reachable(&mut self, peer: PeerId) {
        for id in self.checking(peer) {
            if let Some(r) = self.resolves.get_mut(&id)
                && let Some((index, _)) = r.checking.take()
            {
                self.answer(id, index);
            }
        }
    }

    fn on_peer_unreachable(&mut self, peer: PeerId) {
        for id in self.checking(peer) {
            self.liveness_failed(id);
        }
    }

    /// Has the stream swarm connect to `peer` and answers once it is (or cannot be).
    /// A peer the overlay is connected to but whose addresses are not known yet (it
    /// dialled us, and its identify has not arrived) is dialled once they are, or after
    /// [`ADDRESS_WAIT`].
    fn connect_streams(&mut self, peer: PeerId, reply: oneshot::Sender<Result<Route, String>>) {
        if self.streams.is_connected(&peer) {
            let _ = reply.send(Ok(Route::Streams));
            return;
        }
        if self.swarm.is_connected(&peer)
            && self
                .stream_unreachable
                .get(&peer)
                .is_some_and(|until| Instant::now() < *until)
        {
            let _ = reply.send(Ok(Route::Overlay));
            return;
        }
        self.stream_dials.entry(peer).or_default().push(reply);
        let known = !self
            .streams
            .behaviour_mut()
            .addresses
            .addresses(&peer)
            .is_empty();
        if !known && self.swarm.is_connected(&peer) {
            self.awaiting_addresses
                .entry(peer)
                .or_insert_with(|| Instant::now() + ADDRESS_WAIT);
            return;
        }
        self.dial_streams(peer);
    }

    /// Dials `peer` on the stream swarm unless a dial is under way; a dial that cannot
    /// start answers its waiters at once.
    fn dial_streams(&mut self, peer: PeerId) {
        self.awaiting_addresses.remove(&peer);
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.streams.dial(opts) {
            Ok(()) | Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {}
            Err(e) => self.stream_dial_done(peer, Err(error_chain(&e))),
        }
    }

    /// The overlay learned addresses of `peer`: a stream dial waiting for them starts.
    fn addresses_learned(&mut self, peer: PeerId) {
        if self.awaiting_addresses.contains_key(&peer) {
            self.dial_streams(peer);
        }
    }

    /// Answers everyone waiting for the stream swarm to connect to `peer`: a peer it
    /// cannot reach is reached on the overlay's connection, if there is one.
    fn stream_dial_done(&mut self, peer: PeerId, outcome: Result<(), String>) {
        let waiting = self.stream_dials.remove(&peer).unwrap_or_default();
        let answer = match outcome {
            Ok(()) => Ok(Route::Streams),
            Err(e) if self.swarm.is_connected(&peer) => {
                tracing::debug!(%peer, error = %e, "the stream swarm cannot reach a peer; its streams ride the overlay's connection");
                let now = Instant::now();
                if self.stream_unreachable.len() >= 4096 {
                    self.stream_unreachable.retain(|_, until| now < *until);
                }
                self.stream_unreachable
                    .insert(peer, now + STREAM_FALLBACK_FOR);
                Ok(Route::Overlay)
            }
            Err(e) => Err(e),
        };
        for reply in waiting {
            let _ = reply.send(answer.clone());
        }
    }

    fn set_stream_peer(&self, peer: PeerId, connected: bool) {
        let mut set = match self.stream_peers.write() {
            Ok(set) => set,
            Err(poisoned) => poisoned.into_inner(),
        };
        if connected {
            set.insert(peer);
        } else {
            set.remove(&peer);
        }
    }

    /// The stream swarm's events: who it is connected to, for [`Streams::open_stream`];
    /// the streams themselves are the stream behaviour's business.
    fn on_stream_event(&mut self, event: SwarmEvent<StreamBehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                tracing::debug!(peer = %peer_id, address = %endpoint.get_remote_address(), "stream connection opened");
                // Bounded like the overlay's: a connection beyond the bound that a peer
                // opened is closed again (streams then ride the overlay's connection).
                if endpoint.is_listener()
                    && self
                        .streams
                        .network_info()
                        .connection_counters()
                        .num_established() as usize
                        > self.config.max_connections
                {
                    tracing::debug!(peer = %peer_id, limit = self.config.max_connections, "too many stream connections; closing a new one");
                    self.streams.close_connection(connection_id);
                }
                if num_established.get() == 1 {
                    self.set_stream_peer(peer_id, true);
                }
                self.stream_dial_done(peer_id, Ok(()));
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                cause,
                num_established,
                ..
            } => {
                tracing::debug!(peer = %peer_id, cause = ?cause, "stream connection closed");
                if num_established == 0 {
                    self.set_stream_peer(peer_id, false);
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, error = %error_chain(&error), "stream connection failed");
                if let Some(peer) = peer_id
                    && !self.streams.is_connected(&peer)
                {
                    self.stream_dial_done(peer, Err(error_chain(&error)));
                    // The stream swarm dials one address, and only over TCP: whether the
                    // peer is gone is for an overlay dial, at every address Kademlia holds,
                    // to say (see `forget`).
                    if matches!(error, libp2p::swarm::DialError::Transport(_))
                        && !self.swarm.is_connected(&peer)
                    {
                        let _ = self.swarm.dial(
                            DialOpts::peer_id(peer)
                                .condition(PeerCondition::DisconnectedAndNotDialing)
                                .build(),
                        );
                    }
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                tracing::debug!(address = %send_back_addr, error = %error_chain(&error), "inbound stream connection failed");
            }
            _ => {}
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if let Some(metrics) = &self.metrics {
            metrics.libp2p.record(&event);
            match &event {
                SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => metrics.libp2p.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => metrics.libp2p.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => metrics.libp2p.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => metrics.libp2p.record(e),
                _ => {}
            }
        }
        // What the published view holds: the table's entries (Kademlia reports every
        // insertion and eviction, its own and `add_address`'s, as `RoutingUpdated`) and
        // whether each is connected (the first connection opened, the last one closed).
        self.routing_changed |= match &event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => {
                matches!(e, kad::Event::RoutingUpdated { .. })
            }
            SwarmEvent::ConnectionEstablished {
                num_established, ..
            } => num_established.get() == 1,
            SwarmEvent::ConnectionClosed {
                num_established, ..
            } => *num_established == 0,
            _ => false,
        };
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                self.agents.insert(peer_id, info.agent_version.clone());
                let book = &mut self.streams.behaviour_mut().addresses;
                for address in &info.listen_addrs {
                    book.add(peer_id, address.clone());
                }
                self.addresses_learned(peer_id);
                if info.protocols.contains(&KAD_PROTOCOL) {
                    for address in info.listen_addrs {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer_id, address);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                self.rtts.insert(peer, rtt);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_gossip(propagation_source, message_id, message),
            SwarmEvent::Behaviour(_) => {}
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if !self.listen_addrs.contains(&address) {
                    self.listen_addrs.push(address);
                    self.republish_due = Some(Instant::now() + Duration::from_millis(500));
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
                self.republish_due = Some(Instant::now() + Duration::from_millis(500));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                tracing::debug!(peer = %peer_id, address = %endpoint.get_remote_address(), "connected");
                if endpoint.is_dialer() {
                    self.streams
                        .behaviour_mut()
                        .addresses
                        .confirm(peer_id, endpoint.get_remote_address().clone());
                    self.addresses_learned(peer_id);
                }
                self.connections
                    .entry(peer_id)
                    .or_default()
                    .insert(endpoint.get_remote_address().clone());
                self.active.insert(peer_id, Instant::now());
                if let Some(reply) = self.dials.remove(&connection_id) {
                    let _ = reply.send(Ok(()));
                }
                if let Some(b) = self
                    .bootstraps
                    .iter_mut()
                    .find(|b| b.dialing == Some(connection_id))
                {
                    b.dialing = None;
                    b.connected = true;
                    b.backoff = self.config.bootstrap_retry;
                    tracing::info!(address = %b.address, peer = %peer_id, "joined through bootstrap peer");
                    let address = endpoint.get_remote_address().clone();
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    kad.add_address(&peer_id, address);
                    // Find this node's neighbours; Kademlia then refreshes the farther
                    // buckets by itself (its automatic bootstrap, 500 ms after the last
                    // peer it added while it knew fewer than k). A bootstrap started here
                    // ran, and Kademlia's ran again right after it, since the table
                    // passed k during the first: two full refreshes per join, 480
                    // requests, half of all Kademlia traffic in a simulated warm-up.
                    kad.get_closest_peers(self.peer_id);
                    self.refresh.looked_up_own(Instant::now());
                    self.republish_due = Some(Instant::now() + Duration::from_millis(500));
                }
                self.on_peer_reachable(peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                endpoint,
                ..
            } => {
                if num_established == 0 {
                    tracing::debug!(peer = %peer_id, "disconnected");
                    self.connections.remove(&peer_id);
                    self.active.remove(&peer_id);
                    self.rtts.remove(&peer_id);
                    self.agents.remove(&peer_id);
                    // Answers that point at this node are no longer known to be live.
                    self.cache.retain(|_, (_, peer, _)| *peer != peer_id);
                    if self.neighbourhood.contains(&peer_id) {
                        self.membership.send_modify(|n| *n += 1);
                    }
                } else if let Some(set) = self.connections.get_mut(&peer_id) {
                    set.remove(endpoint.get_remote_address());
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                if let Some(reply) = self.dials.remove(&connection_id) {
                    let _ = reply.send(Err(Error::Dial(error_chain(&error))));
                }
                let now = Instant::now();
                if let Some(b) = self
                    .bootstraps
                    .iter_mut()
                    .find(|b| b.dialing == Some(connection_id))
                {
                    b.dialing = None;
                    tracing::warn!(address = %b.address, error = %error_chain(&error), retry_in = ?b.backoff, "bootstrap peer unreachable; retrying");
                    b.next_attempt = now + b.backoff;
                    b.backoff = (b.backoff * 2).min(Duration::from_secs(30));
                }
                if let Some(peer) = peer_id
                    && !self.swarm.is_connected(&peer)
                {
                    self.on_peer_unreachable(peer);
                    self.forget(peer, &error);
                }
            }
            _ => {}
        }
    }

    /// Drops `peer` from the routing table after an overlay dial to it failed at every
    /// address the table holds for it while no connection to it was open, as
    /// go-libp2p-kad-dht drops a peer its query could not dial. Kademlia keeps a
    /// disconnected entry until a newcomer needs its slot in a full bucket, and the
    /// buckets near a node are sparse: a neighbour that left would stay among the nearest
    /// of every key around this node for good, taken for where items belong (so this node
    /// would count itself away from what it should look after) and asked at every lookup.
    /// A live peer dropped by mistake comes back at its next overlay connection (see
    /// `RoutingUpdated`). Kademlia has already struck the failed addresses but the last.
    fn forget(&mut self, peer: PeerId, error: &libp2p::swarm::DialError) {
        let libp2p::swarm::DialError::Transport(failed) = error else {
            return;
        };
        if self.swarm.is_connected(&peer) || self.streams.is_connected(&peer) {
            return;
        }
        let failed: HashSet<Multiaddr> = failed.iter().map(|(a, _)| without_p2p(a)).collect();
        let kad = &mut self.swarm.behaviour_mut().kad;
        let key = kad::KBucketKey::from(peer);
        let untried = kad.kbucket(peer).is_some_and(|bucket| {
            bucket
                .iter()
                .filter(|entry| *entry.node.key == key)
                .flat_map(|entry| entry.node.value.iter().map(without_p2p))
                .any(|a| !failed.contains(&a))
        });
        if untried || kad.remove_peer(&peer).is_none() {
            return;
        }
        tracing::debug!(%peer, error = %error_chain(error), "dropped from the routing table: it cannot be dialled");
        self.kad_counters.forgotten += 1;
        // Where items near it belong may have changed (see `publish_routing`).
        self.routing_changed = true;
    }

    fn on_kad(&mut self, event: kad::Event) {
        self.count_kad(&event);
        match event {
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            } => {
                let store = self.swarm.behaviour_mut().kad.store_mut();
                if let Err(e) = store.insert(record) {
                    tracing::debug!(peer = %source, error = %error_chain(&e), "refused a record");
                }
            }
            kad::Event::RoutingUpdated {
                peer,
                is_new_peer,
                addresses,
                ..
            } => {
                let book = &mut self.streams.behaviour_mut().addresses;
                for address in addresses.iter() {
                    book.add(peer, address.clone());
                }
                self.addresses_learned(peer);
                if !is_new_peer {
                    return;
                }
                self.hand_off(peer);
                // A record that found no peer at all: publish it once this one settles.
                let soon = Instant::now() + Duration::from_millis(300);
                for reg in self.registrations.values_mut() {
                    if reg.alone && reg.put.is_none() {
                        reg.alone = false;
                        reg.retry_at = Some(reg.retry_at.map_or(soon, |at| at.min(soon)));
                    }
                }
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                stats,
                step,
                ..
            } => match result {
                QueryResult::GetRecord(result) => {
                    let Some(&(resolve_id, index)) = self.gets.get(&id) else {
                        return;
                    };
                    let mut enough = false;
                    if let Ok(GetRecordOk::FoundRecord(found)) = &result {
                        enough = self.on_found(resolve_id, index, &found.record);
                    }
                    if step.last || enough {
                        self.gets.remove(&id);
                        if !step.last
                            && let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id)
                        {
                            query.finish();
                        }
                        if let Some(resolve) = self.resolves.get_mut(&resolve_id) {
                            let lookup = &mut resolve.lookups[index];
                            lookup.done = true;
                            lookup.stopped_early = !step.last;
                            lookup.requests += stats.num_requests();
                        }
                        self.advance_resolve(resolve_id);
                    }
                }
                QueryResult::PutRecord(result) => {
                    if !step.last {
                        return;
                    }
                    // `stats` also counts the replies of the lookup before the PUT, so
                    // count acknowledgements from the result only.
                    let acks = match &result {
                        Ok(_) => 1,
                        Err(kad::PutRecordError::QuorumFailed { success, .. })
                        | Err(kad::PutRecordError::Timeout { success, .. }) => success.len(),
                    };
                    if let Some(path) = self.puts.remove(&id) {
                        self.on_put_done(&path, id, acks, stats.num_requests());
                    }
                    let Some(pending) = self.pending_puts.remove(&id) else {
                        return;
                    };
                    let _ = pending.reply.send(Ok(Registered {
                        path: pending.path.to_string(),
                        sequence: pending.record.sequence(),
                        expires: pending.record.expires(),
                        acks,
                        addresses: pending
                            .record
                            .addresses()
                            .iter()
                            .map(ToString::to_string)
                            .collect(),
                    }));
                }
                QueryResult::GetClosestPeers(result) => {
                    if self.refresh.finished(id) {
                        // Kademlia has put what the lookup found in the table; go on with
                        // the next bucket due, if any.
                        self.refresh_stale_bucket(Instant::now());
                        return;
                    }
                    let Some((key, count, reply)) = self.closest_lookups.remove(&id) else {
                        return;
                    };
                    let found = match result {
                        Ok(ok) => ok.peers,
                        Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                    };
                    let answer = if found.is_empty() {
                        self.closest(key, count)
                    } else {
                        let target = kad::KBucketKey::new(kad::RecordKey::new(&key));
                        let mut peers: Vec<(kad::KBucketDistance, PeerId)> = found
                            .into_iter()
                            .map(|p| {
                                (
                                    kad::KBucketKey::from(p.peer_id).distance(&target),
                                    p.peer_id,
                                )
                            })
                            .chain(std::iter::once((
                                kad::KBucketKey::from(self.peer_id).distance(&target),
                                self.peer_id,
                            )))
                            .collect();
                        peers.sort();
                        peers.dedup_by_key(|(_, p)| *p);
                        peers.truncate(count);
                        peers
                            .into_iter()
                            .map(|(_, peer)| Candidate {
                                peer,
                                connected: peer == self.peer_id || self.swarm.is_connected(&peer),
                            })
                            .collect()
                    };
                    let _ = reply.send(answer);
                }
                QueryResult::Bootstrap(Ok(ok)) => {
                    // Each step of Kademlia's own bootstrap (while joining) is a lookup of
                    // its own key or of one in a bucket: those are refreshed too.
                    let target = kad::KBucketKey::from(ok.peer);
                    self.refresh.looked_up(&target, Instant::now());
                    if step.last {
                        tracing::debug!(peer = %ok.peer, "kademlia bootstrap done");
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn count_kad(&mut self, event: &kad::Event) {
        let counters = &mut self.kad_counters;
        match event {
            kad::Event::InboundRequest { request } => match request {
                kad::InboundRequest::FindNode { .. } => counters.served_closest += 1,
                kad::InboundRequest::GetRecord { .. } => counters.served_get_record += 1,
                kad::InboundRequest::PutRecord { .. } => counters.served_put_record += 1,
                _ => {}
            },
            // Kademlia's bootstrap runs one lookup per bucket, each reported as a step with
            // its own counts; the other kinds report counts that grow to the last step.
            kad::Event::OutboundQueryProgressed {
                result: QueryResult::Bootstrap(_),
                stats,
                ..
            } => {
                counters.bootstrap.queries += 1;
                counters.bootstrap.requests += u64::from(stats.num_requests());
            }
            // Refresh lookups of our own (see `crate::refresh`) count as refreshes.
            kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::GetClosestPeers(_),
                stats,
                step,
                ..
            } if step.last && self.refresh.is_query(*id) => {
                counters.bootstrap.queries += 1;
                counters.bootstrap.requests += u64::from(stats.num_requests());
            }
            kad::Event::OutboundQueryProgressed {
                result,
                stats,
                step,
                ..
            } if step.last => match result {
                QueryResult::GetClosestPeers(_) => counters.closest.add(stats),
                QueryResult::GetRecord(_) => counters.get_record.add(stats),
                QueryResult::PutRecord(_) => counters.put_record.add(stats),
                _ => {}
            },
            _ => {}
        }
    }

    /// The revocation lists in force (the record store's, shared with the node).
    fn revocations(&mut self) -> std::sync::Arc<keys::Revocations> {
        self.swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .revocations()
            .read()
    }

    /// Takes in a record a lookup found; true once the lookup has found enough.
    fn on_found(&mut self, resolve_id: u64, index: usize, record: &kad::Record) -> bool {
        let revocations = self.revocations();
        let Some(resolve) = self.resolves.get_mut(&resolve_id) else {
            return false;
        };
        let lookup = &mut resolve.lookups[index];
        match PathRecord::from_kad(&record.key, &record.value, keys::now(), &revocations) {
            Ok(found)
                if found.path() == &lookup.prefix
                    && lookup.floor.is_none_or(|floor| found.sequence() > floor) =>
            {
                lookup.found += 1;
                if lookup
                    .best
                    .as_ref()
                    .is_none_or(|best| best.sequence() < found.sequence())
                {
                    lookup.best = Some(found);
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %error_chain(&e), "ignoring an invalid record from the DHT")
            }
        }
        lookup.found >= self.config.resolve_quorum.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_bound_and_spread_out() {
        let node = PeerId::random();
        let path = Path::root_of(SigningKey::generate().principal());
        let cap = Duration::from_secs(600);
        let mut previous_full = Duration::ZERO;
        for failures in 1..=40 {
            let full = RETRY_FIRST
                .saturating_mul(1 << (failures - 1).min(16))
                .min(RETRY_MOST);
            let wait = retry_backoff(failures, cap, &node, &path);
            assert!(
                wait >= full / 2 && wait <= full,
                "{failures}: {wait:?} of {full:?}"
            );
            assert!(full >= previous_full);
            previous_full = full;
        }
        assert_eq!(previous_full, RETRY_MOST);
        // A shorter republish interval bounds the wait too.
        let short = Duration::from_secs(10);
        assert!(retry_backoff(30, short, &node, &path) <= short);
        // Nodes that failed together draw different waits.
        let waits: HashSet<Duration> = (0..32)
            .map(|_| retry_backoff(3, cap, &PeerId::random(), &path))
            .collect();
        assert!(waits.len() > 16, "{waits:?}");
    }
}
