//! The file system in a simulation: every node keeps a block store that outlives its
//! sessions (a machine's disk) and, while on line, serves the block protocol and runs
//! repair, the node's own code (`fs`). One user, the owner of a tree, puts files through
//! a node on line and gets them back through others; at the end a node that never took
//! part reads every file the owner was told was stored.

use std::sync::Arc;
use std::time::Duration;

use fs::net::{self, Network};
use fs::{Client, Replica, repair};
use keys::{Chain, Identity, Path, SigningKey, Validity};
use rand::{RngCore, SeedableRng};

use crate::scenario::Scenario;

/// How long a put may take before it counts as failed (real time).
pub const PUT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a get may take before it counts as failed (real time).
pub const GET_TIMEOUT: Duration = Duration::from_secs(30);

/// The generator stream of file contents (the schedule uses 1 to 6).
const CONTENTS: u64 = 7;

/// Directories the files are spread over (`/<owner>/files/d<i>/f<n>`).
const DIRECTORIES: u32 = 8;

/// What a node keeps from session to session: its block store and the counters of what
/// it served and repaired.
#[derive(Debug)]
pub struct Disk {
    replica: Replica,
    identity: Arc<Vec<u8>>,
    served: Arc<net::Counters>,
    repair: Arc<repair::Counters>,
}

impl Disk {
    /// An empty disk for the node with key `key`.
    pub fn new(key: &SigningKey) -> Result<Disk, String> {
        let store = fs::store::Store::in_memory().map_err(|e| e.to_string())?;
        let identity = Identity::from_signing_key(key.clone());
        let identity =
            Arc::new(protocols::wire::encode(&identity.public()).map_err(|e| e.to_string())?);
        Ok(Disk {
            replica: Replica::new(store),
            identity,
            served: Arc::default(),
            repair: Arc::default(),
        })
    }

    /// Repair's counters (they add up over the node's sessions).
    pub fn repair(&self) -> &repair::Counters {
        &self.repair
    }

    /// The network side's counters (they add up over the node's sessions).
    pub fn served(&self) -> &net::Counters {
        &self.served
    }
}

/// The file system of a node on line: its network side and the tasks serving and
/// repairing, stopped when it goes.
#[derive(Debug)]
pub struct Mounted {
    network: Arc<Network>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Mounted {
    /// Serves `disk` over the node `dht` and starts repair, with the scenario's R, W and
    /// repair interval (simulated, so divided by the time scale).
    pub fn start(
        scenario: &Scenario,
        disk: &Disk,
        key: &SigningKey,
        dht: &dht::Client,
    ) -> Result<Mounted, String> {
        let files = &scenario.files;
        let mut config = net::Config::new()
            .with_replication(files.replicas as usize, files.write_quorum as usize);
        // Kept in step with membership, which changes at the time scale.
        config.placement_ttl = config.placement_ttl.div_f64(scenario.time_scale.max(1.0));
        let serving = net::serve(
            disk.replica.clone(),
            disk.identity.clone(),
            dht.streams(),
            &config,
            disk.served.clone(),
        )?;
        let network = Arc::new(Network::new(
            disk.replica.clone(),
            disk.identity.clone(),
            key.peer_id(),
            dht.clone(),
            config,
            disk.served.clone(),
        ));
        let node = repair::Config::new();
        let interval =
            Duration::from_secs_f64((files.repair_secs / scenario.time_scale).max(0.001));
        let repair_config = repair::Config {
            interval,
            takeover: 2 * interval,
            settle: node.settle.div_f64(scenario.time_scale.max(1.0)),
            membership_gap: node.membership_gap.div_f64(scenario.time_scale.max(1.0)),
            away_recheck: node.away_recheck.div_f64(scenario.time_scale.max(1.0)),
            ..node
        };
        let repairing = repair::spawn(
            network.clone(),
            dht.membership(),
            repair_config,
            disk.repair.clone(),
        );
        Ok(Mounted {
            network,
            tasks: vec![serving, repairing],
        })
    }

    /// The node's network side.
    pub fn network(&self) -> &Arc<Network> {
        &self.network
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The user who puts and gets files: the owner of its own tree.
#[derive(Debug, Clone)]
pub struct Owner {
    identity: Arc<Identity>,
    chain: Chain,
    tree: Path,
    config: fs::Config,
    seed: u64,
    file_bytes: usize,
    /// Set once the directories exist: the owner makes them before the first file, as
    /// a user sets up a tree before filling it (two clients making the same directory
    /// at once make two, one shown as a conflict).
    prepared: Arc<tokio::sync::OnceCell<()>>,
}

impl Owner {
    /// The owner with key `key`, writing files as `scenario` says; contents come from
    /// `seed`.
    pub fn new(key: SigningKey, scenario: &Scenario, seed: u64) -> Owner {
        let identity = Arc::new(Identity::from_signing_key(key));
        let tree = Path::root_of(identity.principal());
        let chain = Chain::root_grant(
            identity.signing_key(),
            identity.principal(),
            tree.clone(),
            // Real seconds: the run takes at most its simulated time at the slowest scale.
            Validity::for_seconds(
                (scenario.duration_secs as f64 / scenario.time_scale.min(1.0)) as u64 + 86_400,
            ),
        );
        Owner {
            identity,
            chain,
            tree,
            config: fs::Config::new().with_chunk_size(scenario.files.chunk_bytes as usize),
            seed,
            file_bytes: scenario.files.file_bytes as usize,
            prepared: Arc::default(),
        }
    }

    /// Where file `file` lives.
    pub fn path(&self, file: u32) -> Option<Path> {
        self.tree
            .join("files")
            .ok()?
            .join(&format!("d{}", file % DIRECTORIES))
            .ok()?
            .join(&format!("f{file}"))
            .ok()
    }

    /// What file `file` holds: bytes drawn from the seed, so every run writes the same.
    pub fn contents(&self, file: u32) -> Vec<u8> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed ^ u64::from(file));
        rng.set_stream(CONTENTS);
        let mut bytes = vec![0u8; self.file_bytes];
        rng.fill_bytes(&mut bytes);
        bytes
    }

    fn client(&self, network: Arc<Network>) -> Client<Network> {
        Client::new(
            network,
            self.identity.clone(),
            vec![self.chain.clone()],
            self.config.clone(),
        )
    }

    /// Puts file `file` through `network`; Ok once W replicas acknowledged every part.
    pub async fn put(&self, network: Arc<Network>, file: u32) -> Result<(), String> {
        let path = self.path(file).ok_or("no path")?;
        let bytes = self.contents(file);
        let client = self.client(network);
        let put = async {
            self.prepared
                .get_or_try_init(|| async {
                    for d in 0..DIRECTORIES {
                        let dir = self
                            .tree
                            .join("files")
                            .and_then(|f| f.join(&format!("d{d}")))
                            .map_err(|e| e.to_string())?;
                        client.mkdir_all(&dir).await.map_err(|e| e.to_string())?;
                    }
                    Ok::<(), String>(())
                })
                .await?;
            client
                .put(&path, bytes.as_slice(), |_| {})
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(PUT_TIMEOUT, put).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer in {PUT_TIMEOUT:?}")),
        }
    }

    /// Gets file `file` through `network`; Ok when it reads back what was put.
    pub async fn get(&self, network: Arc<Network>, file: u32) -> Result<(), String> {
        let path = self.path(file).ok_or("no path")?;
        let client = self.client(network);
        let mut out = Vec::with_capacity(self.file_bytes);
        match tokio::time::timeout(GET_TIMEOUT, client.get(&path, &mut out, |_| {})).await {
            Ok(Ok(_)) if out == self.contents(file) => Ok(()),
            Ok(Ok(_)) => Err("read other bytes than were put".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer in {GET_TIMEOUT:?}")),
        }
    }
}
