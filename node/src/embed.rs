//! A node inside another program (the examples, benchmarks, tools): an overlay node and
//! its actor runtime, with a fresh node key and a fresh tree of its own, so the program
//! can spawn actors under `/<tree>/…` at once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), btnode::embed::EmbedError> {
//! let node = btnode::embed::Embedded::start(btnode::embed::Options::default()).await?;
//! println!("my tree: {}", node.tree);
//! # Ok(()) }
//! ```

use keys::{Chain, Path, SigningKey, Validity};
use libp2p::Multiaddr;

use crate::actor::{self, Runtime};

/// How long the embedded node's writecap for its tree lasts.
const TREE_GRANT_SECS: u64 = 30 * 86_400;

/// Where and how the embedded node runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Peers to join through (none: start a new overlay).
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses to listen on (default: TCP on 127.0.0.1, an ephemeral port).
    pub listen: Vec<Multiaddr>,
    /// The transports.
    pub transports: dht::Transports,
    /// The actor runtime's settings.
    pub actors: actor::Config,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bootstrap: Vec::new(),
            listen: vec![
                Multiaddr::from(std::net::Ipv4Addr::LOCALHOST)
                    .with(libp2p::multiaddr::Protocol::Tcp(0)),
            ],
            transports: dht::Transports::Network,
            actors: actor::Config::new(),
        }
    }
}

/// Why the embedded node did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    /// The overlay node did not start.
    #[error(transparent)]
    Node(#[from] dht::StartError),
    /// The overlay node failed to answer.
    #[error(transparent)]
    Overlay(#[from] dht::Error),
    /// The actor runtime did not start.
    #[error(transparent)]
    Actors(#[from] actor::StartError),
}

/// A running embedded node.
#[derive(Debug)]
pub struct Embedded {
    /// The node's key.
    pub key: SigningKey,
    /// The root key of the node's own tree.
    pub root: SigningKey,
    /// The node's own tree, `/<root principal>`.
    pub tree: Path,
    /// The overlay node.
    pub client: dht::Client,
    /// The actor runtime.
    pub runtime: Runtime,
    /// The addresses others join through.
    pub listen_addrs: Vec<String>,
}

impl Embedded {
    /// Starts a node with a fresh key that holds a writecap for a fresh tree.
    pub async fn start(options: Options) -> Result<Embedded, EmbedError> {
        let key = SigningKey::generate();
        let root = SigningKey::generate();
        let tree = Path::root_of(root.principal());
        let chain = Chain::root_grant(
            &root,
            key.principal(),
            tree.clone(),
            Validity::for_seconds(TREE_GRANT_SECS),
        );
        let config = dht::Config::new()
            .with_listen(options.listen)
            .with_bootstrap(options.bootstrap);
        let store = dht::Store::in_memory(config.max_records);
        let (client, _task) = dht::start(key.clone(), config, store, options.transports).await?;
        let runtime = Runtime::start(client.clone(), &key, vec![chain], options.actors).await?;
        let listen_addrs = client.status().await?.listen_addrs;
        Ok(Embedded {
            key,
            root,
            tree,
            client,
            runtime,
            listen_addrs,
        })
    }
}
