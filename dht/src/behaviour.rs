//! The composed overlay behaviour and the swarm built around it.

use std::num::NonZeroUsize;
use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{self, MemoryTransport};
use libp2p::core::upgrade::{UpgradeInfo, Version};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, Transport, allow_block_list, gossipsub,
    identify, identity, kad, noise, ping, quic, tcp, yamux,
};

use crate::config::Config;
use crate::port::NewPortWhenTaken;
use crate::store::Store;
#[cfg(feature = "plaintext-memory")]
use crate::streams::STREAMS_PLAINTEXT;
use crate::streams::{self, Renamed, Rewind, STREAMS_NOISE, StreamBehaviour};

/// Kademlia under Blocktree's own protocol name, so the overlay never merges into
/// another network's DHT.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/blocktree/kad/1.0.0");

/// Gossipsub's protocol prefix (`/blocktree/meshsub/1.1.0` and `/1.0.0`).
pub const GOSSIPSUB_PREFIX: &str = "/blocktree/meshsub";

/// Identify's protocol version string (identify itself stays standard).
pub const IDENTIFY_VERSION: &str = "/blocktree/1.0.0";

/// Kademlia, identify, ping and gossipsub, composed.
#[allow(missing_debug_implementations)] // libp2p behaviours implement no Debug
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Path records and peer routing.
    pub kad: kad::Behaviour<Store>,
    /// Addresses and protocols of peers.
    pub identify: identify::Behaviour,
    /// Connection liveness.
    pub ping: ping::Behaviour,
    /// Pub-sub.
    pub gossipsub: gossipsub::Behaviour,
    /// Streams of our own protocols on the overlay's connections: only where the stream
    /// swarm cannot reach a peer (see [`crate::Streams`]).
    pub stream: libp2p_stream::Behaviour,
    /// Peers refused for a while (penalised for misbehaving).
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
}

/// Which transports a swarm uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transports {
    /// TCP (Noise, Yamux) and QUIC: real networks.
    Network,
    /// The in-process memory transport (Noise, Yamux): tests.
    Memory,
    /// The in-process memory transport, unencrypted (peers still exchange and check
    /// their public keys), with Yamux: the simulator, where a thousand nodes share two
    /// cores and what is measured lies above the transport.
    #[cfg(feature = "plaintext-memory")]
    MemoryPlaintext,
}

/// Why a swarm could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the swarm: {0}")]
pub struct BuildError(String);

impl Behaviour {
    fn new(key: &identity::Keypair, mut store: Store, config: &Config) -> Result<Self, BuildError> {
        let peer_id = key.public().to_peer_id();
        // Full, it keeps what is nearest this node, as Kademlia places records.
        store
            .keep_nearest(peer_id)
            .map_err(|e| BuildError(format!("record store: {e}")))?;
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config
            .set_record_filtering(kad::StoreInserts::FilterBoth)
            .set_record_ttl(Some(config.record_ttl))
            .set_publication_interval(None) // the node republishes its own, freshly signed
            .set_replication_interval(config.replication_interval)
            .set_query_timeout(config.query_timeout)
            // The node refreshes stale buckets itself (`crate::refresh`); Kademlia's
            // automatic bootstrap, while the table is small, stays.
            .set_periodic_bootstrap_interval(None)
            // Kademlia's default frame limit (16 KiB) is below the largest valid path
            // record; leave room for the closer-peers list of a GET reply too.
            .set_max_packet_size(keys::limits::MAX_PATH_RECORD_BYTES + 16 * 1024);
        if let Some(factor) = NonZeroUsize::new(config.replication_factor) {
            kad_config.set_replication_factor(factor);
        }
        let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
        // Every node serves the DHT: a node that only asks would not hold records for
        // others, and small overlays on loopback never confirm an external address.
        kad.set_mode(Some(kad::Mode::Server));

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_VERSION.into(), key.public())
                .with_agent_version(format!("btnode/{}", env!("CARGO_PKG_VERSION")))
                .with_push_listen_addr_updates(true),
        );
        let ping = ping::Behaviour::new(
            ping::Config::new()
                .with_interval(config.ping_interval)
                .with_timeout(config.ping_timeout),
        );
        let gossipsub_config = gossipsub::ConfigBuilder::default()
            .protocol_id_prefix(GOSSIPSUB_PREFIX)
            .validation_mode(gossipsub::ValidationMode::Strict)
            .heartbeat_interval(Duration::from_millis(700))
            .max_transmit_size(keys::limits::MAX_MESSAGE_BYTES)
            // The application checks every message (signature of the `from` path's
            // writecap, protocol state) before gossipsub forwards it.
            .validate_messages()
            .build()
            .map_err(|e| BuildError(format!("gossipsub config: {e}")))?;
        let gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossipsub_config,
        )
        .map_err(|e| BuildError(format!("gossipsub: {e}")))?;
        Ok(Behaviour {
            kad,
            identify,
            ping,
            gossipsub,
            stream: libp2p_stream::Behaviour::new(),
            blocked: allow_block_list::Behaviour::default(),
        })
    }
}

/// A node's two swarms: the overlay's, and the lean one that carries our own stream
/// protocols on the same listening port (see [`crate::streams`]).
#[allow(missing_debug_implementations)] // libp2p swarms implement no Debug
pub struct Swarms {
    /// Kademlia, identify, ping and gossipsub.
    pub overlay: Swarm<Behaviour>,
    /// Streams of our own protocols; it listens through the overlay swarm's listeners.
    pub streams: Swarm<StreamBehaviour>,
}

/// How long one stream connection may take to connect and upgrade.
const STREAM_DIAL_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

type BoxedTransport = transport::Boxed<(PeerId, StreamMuxerBox)>;

fn build_error(e: impl std::fmt::Display) -> BuildError {
    BuildError(e.to_string())
}

fn renamed<U: UpgradeInfo>(security: U, name: &'static str) -> Result<Renamed<U>, BuildError> {
    Renamed::new(security, name)
        .ok_or_else(|| BuildError(format!("{name}: the handshake names no protocol")))
}

/// The stream swarm's Noise: its name is bound into the handshake (the prologue), so a
/// connection whose proposal was rewritten on the way fails instead of landing in the
/// other swarm.
fn streams_noise(key: &identity::Keypair) -> Result<noise::Config, BuildError> {
    Ok(noise::Config::new(key)
        .map_err(build_error)?
        .with_prologue(STREAMS_NOISE.as_bytes().to_vec()))
}

fn tcp_transport() -> NewPortWhenTaken {
    NewPortWhenTaken::new(tcp::Config::default().nodelay(true))
}

/// The stream swarm over `transport`; it listens on the diverted transport's one listener
/// (the overlay's listeners are the real ones, so its address is empty).
fn stream_swarm(
    key: identity::Keypair,
    transport: BoxedTransport,
    idle: Duration,
) -> Result<Swarm<StreamBehaviour>, BuildError> {
    let mut swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|_| Ok::<_, BoxError>(transport))
        .map_err(build_error)?
        .with_behaviour(|_| StreamBehaviour::new())
        .map_err(build_error)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build();
    swarm
        .listen_on(Multiaddr::empty())
        .map_err(|e| BuildError(format!("stream swarm: {e}")))?;
    Ok(swarm)
}

/// Builds the swarms for `key` over `transports`.
pub fn build_swarm(
    key: identity::Keypair,
    store: Store,
    config: &Config,
    transports: Transports,
) -> Result<Swarms, BuildError> {
    let idle = config.idle_connection_timeout;
    let behaviour = |key: &identity::Keypair| {
        Behaviour::new(key, store, config).map_err(|e| Box::new(e) as BoxError)
    };
    // Both swarms' transports over `$base` (a fresh one for each): the overlay's through
    // `Divert`, the stream swarm's listening through `Diverted` and dialling through its
    // own, each with its security upgrade.
    macro_rules! transports {
        ($base:expr, $overlay_security:expr, $streams_security:expr, $name:expr) => {{
            let (divert, diverted) = streams::divert($base, $name);
            let streams: BoxedTransport = diverted
                .or_transport($base.map(|io, _| Rewind::new(io)))
                .upgrade(Version::V1Lazy)
                .authenticate(renamed($streams_security, $name)?)
                .multiplex(yamux::Config::default())
                .timeout(STREAM_DIAL_TIMEOUT)
                .boxed();
            let overlay: BoxedTransport = divert
                .upgrade(Version::V1Lazy)
                .authenticate($overlay_security)
                .multiplex(yamux::Config::default())
                .boxed();
            (overlay, streams)
        }};
    }
    let overlay_noise = || noise::Config::new(&key).map_err(build_error);
    let (overlay, streams) = match transports {
        Transports::Network => {
            transports!(
                tcp_transport(),
                overlay_noise()?,
                streams_noise(&key)?,
                STREAMS_NOISE
            )
        }
        Transports::Memory => transports!(
            MemoryTransport::default(),
            overlay_noise()?,
            streams_noise(&key)?,
            STREAMS_NOISE
        ),
        #[cfg(feature = "plaintext-memory")]
        Transports::MemoryPlaintext => transports!(
            MemoryTransport::default(),
            libp2p::plaintext::Config::new(&key),
            libp2p::plaintext::Config::new(&key),
            STREAMS_PLAINTEXT
        ),
    };
    // On the network, QUIC beside TCP (as `SwarmBuilder::with_quic` adds it): its
    // connections are the overlay's alone, not diverted (see `crate::streams`).
    let overlay = if transports == Transports::Network {
        quic::tokio::Transport::new(quic::Config::new(&key))
            .map(|(peer, connection), _| (peer, StreamMuxerBox::new(connection)))
            .or_transport(overlay)
            .map(|either, _| match either {
                futures::future::Either::Left(out) | futures::future::Either::Right(out) => out,
            })
            .boxed()
    } else {
        overlay
    };
    let overlay = SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_other_transport(|_| Ok::<_, BoxError>(overlay))
        .map_err(build_error)?
        .with_behaviour(behaviour)
        .map_err(build_error)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build();
    Ok(Swarms {
        overlay,
        streams: stream_swarm(key, streams, idle)?,
    })
}
