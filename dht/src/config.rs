//! Overlay configuration.

use std::time::Duration;

use libp2p::Multiaddr;

/// A connection is never trimmed for [`Config::max_connections`] before it is this old.
pub const CONNECTION_GRACE: Duration = Duration::from_secs(10);

/// How the overlay behaves. [`Config::new`] documents every default; `with_*` setters
/// change them.
#[derive(Debug, Clone)]
pub struct Config {
    /// Peers to join through. Default: none (start a new overlay).
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses to listen on. Default: TCP and QUIC on all interfaces, ephemeral ports.
    pub listen: Vec<Multiaddr>,
    /// How long a published path record stays valid. Default: 1 hour.
    pub record_ttl: Duration,
    /// How often a node republishes its own records. Default: 10 minutes.
    pub republish_interval: Duration,
    /// How long a resolution is cached (and dropped at once when the peer disconnects).
    /// Default: 5 s.
    pub resolve_cache_ttl: Duration,
    /// How long resolve waits to reach a record's node before calling it dead.
    /// Default: 3 s.
    pub liveness_timeout: Duration,
    /// Kademlia query timeout. Default: 10 s.
    pub query_timeout: Duration,
    /// Ping interval on every connection. Default: 4 s (with the 4 s timeout, a machine
    /// that vanishes without closing its connections is noticed within 8 s).
    pub ping_interval: Duration,
    /// A connection whose ping goes unanswered this long is closed. Default: 4 s.
    pub ping_timeout: Duration,
    /// Idle connections close after this long. Default: 60 s.
    pub idle_connection_timeout: Duration,
    /// First retry delay for an unreachable bootstrap peer; doubles up to 30 s.
    /// Default: 1 s.
    pub bootstrap_retry: Duration,
    /// Most records the store holds. Default: 65 536.
    pub max_records: usize,
    /// Kademlia replication factor: how many nodes store a record, and how many nearest
    /// peers a lookup finds (so the buckets nearer than the k-th nearest peer's are
    /// filled by the lookup of the own key, and not refreshed on their own). Default: 20
    /// (Kademlia's k).
    pub replication_factor: usize,
    /// How many of the peers nearest this node make its neighbourhood: a change among
    /// them (one joins or leaves the routing table, or loses its last connection) moves
    /// [`crate::Client::membership`]. A store that keeps R copies of each item on the R
    /// nodes nearest its key should make it at least 4R, so that the other holders of
    /// what this node keeps are in it. Never fewer than `replication_factor` (refresh
    /// reads the k-th nearest peer from the same list). Default: 20.
    pub neighbourhood: usize,
    /// A lookup stops once this many peers returned a valid record for its key (the
    /// newest of them wins); fewer only when the lookup runs out of peers. When the node
    /// it names is found dead, the lookup runs again for newer records only. A
    /// registration waits for as many acknowledgements (or all the peers it reached), so a
    /// resolution after it finds the new record. Default: 3.
    pub resolve_quorum: u32,
    /// How long a routing-table bucket may go without a lookup through it before the node
    /// refreshes it (a lookup of a random key in it), and how often the own key is looked
    /// up. Lookups for records and placements count, so in a busy node mostly the near
    /// buckets are refreshed, those the own key's lookup does not fill (see
    /// `crate::refresh`). Joins refresh every bucket. Default: 10 min
    /// (go-libp2p-kad-dht's).
    pub bootstrap_interval: Duration,
    /// Most connected peers: beyond this, those least recently connected or heard from
    /// over pub-sub are disconnected down to three quarters of it (peers in a pub-sub mesh, and connections younger
    /// than [`CONNECTION_GRACE`], are kept). Their routing-table entries stay; a later
    /// request dials again. 0: no bound. Default: 256.
    pub max_connections: usize,
    /// How often a node re-stores the records it holds for others at the peers now closest
    /// to them (Kademlia's replication), or never. Default: never. A path record is kept
    /// alive by its owner, who republishes it every [`Config::republish_interval`] to the
    /// peers closest to it then; the record of an owner gone is of no use and should
    /// expire, not be copied on. (Kademlia's hourly replication would cost each node a
    /// lookup and k stores per record it holds.)
    pub replication_interval: Option<Duration>,
}

impl Config {
    /// The defaults listed on each field.
    pub fn new() -> Self {
        Config {
            bootstrap: Vec::new(),
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr"),
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("valid multiaddr"),
            ],
            record_ttl: Duration::from_secs(3600),
            republish_interval: Duration::from_secs(600),
            resolve_cache_ttl: Duration::from_secs(5),
            liveness_timeout: Duration::from_secs(3),
            query_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(4),
            ping_timeout: Duration::from_secs(4),
            idle_connection_timeout: Duration::from_secs(60),
            bootstrap_retry: Duration::from_secs(1),
            max_records: 65_536,
            replication_factor: 20,
            neighbourhood: 20,
            resolve_quorum: 3,
            max_connections: 256,
            bootstrap_interval: Duration::from_secs(600),
            replication_interval: None,
        }
    }

    /// Peers to join through.
    pub fn with_bootstrap(mut self, bootstrap: Vec<Multiaddr>) -> Self {
        self.bootstrap = bootstrap;
        self
    }

    /// Addresses to listen on.
    pub fn with_listen(mut self, listen: Vec<Multiaddr>) -> Self {
        self.listen = listen;
        self
    }

    /// How long a published path record stays valid.
    pub fn with_record_ttl(mut self, ttl: Duration) -> Self {
        self.record_ttl = ttl;
        self
    }

    /// How often own records are republished.
    pub fn with_republish_interval(mut self, interval: Duration) -> Self {
        self.republish_interval = interval;
        self
    }

    /// How long a resolution is cached.
    pub fn with_resolve_cache_ttl(mut self, ttl: Duration) -> Self {
        self.resolve_cache_ttl = ttl;
        self
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}
