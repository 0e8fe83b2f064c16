//! Playing a schedule against real overlay nodes (`dht`, the node's own code) on the
//! memory transport, in scaled time, and measuring what the overlay does.
//!
//! A join starts a node that bootstraps through a node on line, registers its paths and
//! subscribes to its topic; a graceful leave shuts it down; a crash drops it without a
//! word (its connections close, as a killed process's would).
//!
//! What is measured:
//! - **Resolutions**, timed from the call to the answer; a success when the answer names
//!   the node that registered the path. One whose path is not yet registered (its node
//!   joined moments ago) is counted apart, not as a failure.
//! - **Hops** of each successful resolution: the rounds an α = 3 iterative lookup needs,
//!   asking the nodes' routing tables as they are at that moment (each node answers from
//!   its own table, as it would a Kademlia request), until it reaches one of the 20 nodes
//!   on line nearest to the key, where the record is kept.
//! - **Pub-sub delivery**: of the subscribers that were on line from [`SETTLE`] before a
//!   publication until [`DEADLINE`] after it, the share that received it within the
//!   deadline.
//! - **Files** (when the scenario has a file workload): puts acknowledged or failed; gets
//!   of acknowledged files that read back the same bytes (availability), failed, or
//!   came before the put was acknowledged (counted apart); repair's copies and bytes
//!   per window and the items nodes on line still count as lacking copies; at the end,
//!   a node that never took part reads every acknowledged file (lost: it cannot).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use keys::{Chain, Path, SigningKey, Validity};
use libp2p::kad::{KBucketDistance, KBucketKey, RecordKey};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::files::{Disk, Mounted, Owner};
use crate::scenario::Scenario;
use crate::schedule::{Event, EventKind, Schedule};

/// The generator stream the nodes' keys come from (the schedule uses 1, 2 and 4).
const KEYS: u64 = 3;

/// How long a resolution may take before it counts as failed.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A subscriber counts for a publication when it has been on line this long (real time)
/// before it: time to learn of its peers' subscriptions and join the topic's mesh.
pub const SETTLE: Duration = Duration::from_secs(5);

/// A publication counts as delivered to a subscriber that received it within this long
/// (real time), and only subscribers still on line then are counted.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Kademlia's parallelism (α) in the hop count.
const ALPHA: usize = 3;

/// Kademlia's k: records are kept on the k nodes nearest to their key.
const K: usize = 20;

/// Most rounds a hop count follows before calling the key unreached.
const MAX_ROUNDS: u32 = 32;

/// What the run measured in one window of simulated time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// The window's start, in simulated seconds.
    pub at_secs: u64,
    /// Nodes on line at its end.
    pub live: u32,
    /// Resolutions that named the right node.
    pub resolved: u64,
    /// Resolutions that failed or named another node.
    pub failed: u64,
    /// Resolutions of paths still being registered.
    pub not_yet_registered: u64,
    /// Latency of the successful ones, p50, in milliseconds (real time).
    pub latency_p50_ms: f64,
    /// And p99.
    pub latency_p99_ms: f64,
    /// Successful resolutions whose hops were counted (the count reached the key).
    pub hop_samples: u64,
    /// Hops of the successful ones, p50.
    pub hops_p50: f64,
    /// And p99.
    pub hops_p99: f64,
    /// Publications.
    pub published: u64,
    /// Deliveries that were due (subscribers on line around a publication).
    pub deliveries_due: u64,
    /// Of those, made within the deadline.
    pub delivered: u64,
    /// Connected peers per node on line, mean (sampled at the window's start).
    pub connections_mean: f64,
    /// Routing-table entries per node on line, mean (sampled at the window's start).
    pub routing_table_mean: f64,
    /// The process's resident set at the window's start, MiB.
    pub rss_mib: f64,
    /// How late the window's events were played, at most, in real seconds (a machine
    /// that cannot keep up with the time scale falls behind).
    pub lag_secs: f64,
    /// Files put and acknowledged.
    pub puts_ok: u64,
    /// Puts that failed.
    pub puts_failed: u64,
    /// Gets of acknowledged files that read back what was put.
    pub gets_ok: u64,
    /// Gets of acknowledged files that failed.
    pub gets_failed: u64,
    /// Gets of files whose put was not (yet) acknowledged.
    pub gets_not_yet_written: u64,
    /// Puts and gets that failed because the node they went through left meanwhile
    /// (not counted as either).
    pub files_interrupted: u64,
    /// Latency of successful gets, p50, milliseconds (real time).
    pub get_latency_p50_ms: f64,
    /// And p99.
    pub get_latency_p99_ms: f64,
    /// Copies repair sent in the window, all nodes.
    pub repair_copies: u64,
    /// Bytes repair sent in the window, all nodes.
    pub repair_bytes: u64,
    /// Items repair placed and asked about in the window, all nodes.
    #[serde(default)]
    pub repair_surveyed: u64,
    /// Items whose copies a holder sent after they stayed short while another holder was
    /// to send (`fs::repair::Config::takeover`), in the window, all nodes.
    #[serde(default)]
    pub repair_taken_over: u64,
    /// Repair rounds the nodes ran in the window (at the interval and after membership
    /// changes), all nodes.
    #[serde(default)]
    pub repair_rounds: u64,
    /// Block-protocol requests the nodes served in the window (repair's `Have`s
    /// included), all nodes.
    #[serde(default)]
    pub block_served: u64,
    /// Reads the nodes sent to one more replica because those asked were slow (hedged).
    #[serde(default)]
    pub reads_hedged: u64,
    /// Reads of versions that went on without the read quorum, the rest silent.
    #[serde(default)]
    pub reads_short: u64,
    /// Items the nodes on line counted as lacking copies after their last repair round
    /// (sampled at the window's start).
    pub under_replicated: u64,
    /// Kademlia's work in the window (counted from the previous window's start to this
    /// one's, over the nodes on line at both).
    pub kad: KadWork,
    /// The file system's overlay lookups in the window, all nodes.
    #[serde(default)]
    pub lookups: FsLookups,
    /// CPU time the whole process took in the window (user and system, every thread),
    /// seconds.
    #[serde(default)]
    pub cpu_secs: f64,
    /// Nodes on line times real seconds, summed over the window: what `cpu_secs` served.
    #[serde(default)]
    pub node_secs: f64,
}

/// The file system's lookups of the nodes nearest a key, by what needed them (see
/// `fs::net::Lookups`), all nodes together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsLookups {
    /// For writes.
    pub put: u64,
    /// For reads.
    pub get: u64,
    /// For repair's placements.
    pub repair: u64,
    /// For collection's reads of the owners of chunks.
    pub collect: u64,
    /// Wider lookups of reads that found nothing among the nearest.
    pub wider: u64,
}

impl FsLookups {
    fn of(counters: &fs::net::Counters) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let l = &counters.lookups;
        FsLookups {
            put: l.put.load(Relaxed),
            get: l.get.load(Relaxed),
            repair: l.repair.load(Relaxed),
            collect: l.collect.load(Relaxed),
            wider: l.wider.load(Relaxed),
        }
    }

    fn add(&mut self, o: &FsLookups) {
        self.put += o.put;
        self.get += o.get;
        self.repair += o.repair;
        self.collect += o.collect;
        self.wider += o.wider;
    }

    fn since(&self, before: &FsLookups) -> FsLookups {
        FsLookups {
            put: self.put.saturating_sub(before.put),
            get: self.get.saturating_sub(before.get),
            repair: self.repair.saturating_sub(before.repair),
            collect: self.collect.saturating_sub(before.collect),
            wider: self.wider.saturating_sub(before.wider),
        }
    }
}

/// Repair's copies and bytes and the file system's lookups, all nodes, at a moment.
#[derive(Debug, Clone, Copy, Default)]
struct FsMark {
    copies: u64,
    bytes: u64,
    surveyed: u64,
    taken_over: u64,
    rounds: u64,
    served: u64,
    hedged: u64,
    short_reads: u64,
    lookups: FsLookups,
}

impl FsMark {
    fn of(disks: &HashMap<u32, crate::files::Disk>) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let mut mark = FsMark::default();
        for disk in disks.values() {
            mark.copies += disk.repair().copies_sent.load(Relaxed);
            mark.bytes += disk.repair().bytes_sent.load(Relaxed);
            mark.surveyed += disk.repair().surveyed.load(Relaxed);
            mark.taken_over += disk.repair().taken_over.load(Relaxed);
            mark.rounds += disk.repair().rounds.load(Relaxed);
            mark.served += disk.served().served.load(Relaxed);
            mark.hedged += disk.served().hedged.load(Relaxed);
            mark.short_reads += disk.served().short_reads.load(Relaxed);
            mark.lookups.add(&FsLookups::of(disk.served()));
        }
        mark
    }
}

/// Kademlia requests in a window, all nodes together.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KadWork {
    /// Requests answered: closest peers, records, stores.
    pub served_closest: u64,
    /// Record requests answered.
    pub served_get_record: u64,
    /// Record stores taken.
    pub served_put_record: u64,
    /// Requests sent by routing-table refreshes.
    pub sent_bootstrap: u64,
    /// Requests sent by closest-peer lookups (block placement).
    pub sent_closest: u64,
    /// Requests sent by record lookups (resolutions).
    pub sent_get_record: u64,
    /// Requests sent by record stores (registrations, republishing), their lookups of the
    /// closest peers included.
    pub sent_put_record: u64,
    /// Record stores that ended.
    #[serde(default)]
    pub puts: u64,
    /// Record stores that no peer acknowledged.
    #[serde(default)]
    pub puts_unacknowledged: u64,
    /// Records sent to a peer that joined near them, to store (among the record stores).
    #[serde(default)]
    pub handed_off: u64,
    /// Peers dropped from routing tables because a dial to them failed.
    #[serde(default)]
    pub forgotten: u64,
}

impl KadWork {
    /// What happened between two counts taken in one session of a node.
    fn between(before: &dht::KadCounters, after: &dht::KadCounters) -> Self {
        let d = |a: u64, b: u64| b.saturating_sub(a);
        KadWork {
            served_closest: d(before.served_closest, after.served_closest),
            served_get_record: d(before.served_get_record, after.served_get_record),
            served_put_record: d(before.served_put_record, after.served_put_record),
            sent_bootstrap: d(before.bootstrap.requests, after.bootstrap.requests),
            sent_closest: d(before.closest.requests, after.closest.requests),
            sent_get_record: d(before.get_record.requests, after.get_record.requests),
            sent_put_record: d(before.put_record.requests, after.put_record.requests),
            puts: d(before.put_record.queries, after.put_record.queries),
            puts_unacknowledged: d(before.put_unacknowledged, after.put_unacknowledged),
            handed_off: d(before.handed_off, after.handed_off),
            forgotten: d(before.forgotten, after.forgotten),
        }
    }

    fn add(&mut self, other: &KadWork) {
        self.served_closest += other.served_closest;
        self.served_get_record += other.served_get_record;
        self.served_put_record += other.served_put_record;
        self.sent_bootstrap += other.sent_bootstrap;
        self.sent_closest += other.sent_closest;
        self.sent_get_record += other.sent_get_record;
        self.sent_put_record += other.sent_put_record;
        self.puts += other.puts;
        self.puts_unacknowledged += other.puts_unacknowledged;
        self.handed_off += other.handed_off;
        self.forgotten += other.forgotten;
    }
}

/// Figures over a stretch of windows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// From this simulated second on.
    pub from_secs: u64,
    /// Resolutions that named the right node.
    pub resolved: u64,
    /// Resolutions that failed or named another node.
    pub failed: u64,
    /// resolved / (resolved + failed).
    pub success_rate: f64,
    /// Latency of successful resolutions, p50, milliseconds (real time).
    pub latency_p50_ms: f64,
    /// And p99.
    pub latency_p99_ms: f64,
    /// Hops of successful resolutions, p50.
    pub hops_p50: f64,
    /// And p99.
    pub hops_p99: f64,
    /// Publications.
    pub published: u64,
    /// Deliveries due.
    pub deliveries_due: u64,
    /// Deliveries made in time.
    pub delivered: u64,
    /// delivered / deliveries_due.
    pub delivery_ratio: f64,
    /// Files put and acknowledged.
    pub puts_ok: u64,
    /// Puts that failed.
    pub puts_failed: u64,
    /// Gets of acknowledged files that read back what was put.
    pub gets_ok: u64,
    /// Gets of acknowledged files that failed.
    pub gets_failed: u64,
    /// gets_ok / (gets_ok + gets_failed): data availability.
    pub availability: f64,
    /// Latency of successful puts, p50, milliseconds (real time).
    pub put_latency_p50_ms: f64,
    /// Latency of successful gets, p50, milliseconds (real time).
    pub get_latency_p50_ms: f64,
    /// And p99.
    pub get_latency_p99_ms: f64,
    /// Copies repair sent.
    pub repair_copies: u64,
    /// Bytes repair sent.
    pub repair_bytes: u64,
    /// Items a holder sent after they stayed short while another holder was to send.
    #[serde(default)]
    pub repair_taken_over: u64,
    /// Kademlia's work.
    pub kad: KadWork,
    /// The file system's lookups.
    #[serde(default)]
    pub lookups: FsLookups,
    /// Reads sent to one more replica because those asked were slow (hedged).
    #[serde(default)]
    pub reads_hedged: u64,
    /// Reads of versions that went on without the read quorum, the rest silent.
    #[serde(default)]
    pub reads_short: u64,
    /// CPU time the process took, seconds.
    #[serde(default)]
    pub cpu_secs: f64,
    /// That per node on line per real second, milliseconds: 1000 makes one core busy
    /// for every node (the simulator's own work included).
    #[serde(default)]
    pub cpu_ms_per_node_sec: f64,
}

/// The run's report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Nodes taking part.
    pub nodes: u32,
    /// Simulated seconds per real second.
    pub time_scale: f64,
    /// Windows of one simulated minute.
    pub windows: Vec<Window>,
    /// The whole run.
    pub all: Totals,
    /// After the warm-up (every node has joined once).
    pub after_warm_up: Totals,
    /// Resolutions of paths still being registered (not counted as either).
    pub not_yet_registered: u64,
    /// Kademlia requests per resolution, median.
    pub requests_p50: f64,
    /// Successful resolutions whose hop count never reached the key's nodes.
    pub hops_unreached: u64,
    /// Wall-clock seconds the run took.
    pub wall_secs: f64,
    /// The latest any event was played, real seconds.
    pub lag_max_secs: f64,
    /// The process's largest resident set seen (sampled each simulated minute), MiB.
    pub peak_rss_mib: f64,
    /// Most nodes on line at once.
    pub peak_live: u32,
    /// Peak resident set per node at the peak, MiB (the whole process, runtime included).
    pub rss_per_node_mib: f64,
    /// Files whose put was acknowledged.
    pub files_written: u64,
    /// Of those, files a node that never took part could not read at the end.
    pub files_lost: u64,
    /// Why puts and gets failed, and how often (the first words of each error).
    pub file_errors: BTreeMap<String, u64>,
    /// Why resolutions failed, and how often: the error with its paths and peers left out,
    /// "timed out", or "named another node".
    #[serde(default)]
    pub resolve_errors: BTreeMap<String, u64>,
    /// Choices below the overlay that let many nodes share one process.
    pub notes: Vec<String>,
}

struct Running {
    key: SigningKey,
    client: dht::Client,
    task: tokio::task::JoinHandle<()>,
    address: Multiaddr,
    registered: Vec<bool>,
    files: Option<Mounted>,
    /// When this session started: tells one session's counters from the next one's.
    started: Instant,
}

/// Who received which publication, and when: message → node → first receipt.
type Receipts = Arc<Mutex<HashMap<u64, HashMap<u32, Instant>>>>;

/// The nodes on line, for hop counts: each one's client and Kademlia key.
type Directory = Arc<RwLock<HashMap<PeerId, (dht::Client, KBucketKey<PeerId>)>>>;

enum Outcome {
    Registered {
        node: u32,
        name: u32,
        epoch: u64,
    },
    Resolved {
        window: usize,
        latency: Duration,
        requests: u32,
        hops: Option<u32>,
    },
    Failed {
        window: usize,
        why: String,
    },
    Put {
        file: u32,
        via: (u32, u64),
        window: usize,
        latency: Duration,
        result: Result<(), String>,
    },
    Got {
        via: (u32, u64),
        window: usize,
        latency: Duration,
        result: Result<(), String>,
    },
}

struct Publication {
    message: u64,
    topic: u32,
    from: u32,
    window: usize,
    at: Instant,
}

/// The overlay settings of a simulated node: the node's own defaults, maintenance timers
/// from the scenario (simulated seconds) run at the time scale.
fn node_config(scenario: &Scenario, bootstrap: Option<Multiaddr>) -> dht::Config {
    let mut config = dht::Config::new()
        .with_listen(vec![Multiaddr::from(libp2p::multiaddr::Protocol::Memory(
            0,
        ))])
        .with_bootstrap(bootstrap.into_iter().collect());
    let scale = scenario.time_scale;
    let real = |secs: f64| Duration::from_secs_f64((secs / scale).max(0.001));
    let timers = &scenario.node;
    config.republish_interval = real(timers.republish_secs);
    config.record_ttl = real(timers.record_ttl_secs);
    config.bootstrap_interval = real(timers.bootstrap_secs);
    config.replication_interval = timers.replication_secs.map(real);
    config.idle_connection_timeout = real(timers.idle_connection_secs);
    config.ping_interval = real(timers.ping_secs);
    config.max_connections = timers.max_connections;
    // Repair's membership cue covers the other holders of what a node keeps.
    config.neighbourhood = config
        .neighbourhood
        .max(4 * scenario.files.replicas as usize);
    config.resolve_cache_ttl = config.resolve_cache_ttl.min(real(60.0));
    config
}

fn topic_name(topic: u32) -> String {
    format!("btsim/t{topic}")
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() - 1) as f64 * p / 100.0).round() as usize;
    samples[i]
}

/// Samples gathered per window, reduced to figures at the end.
#[derive(Default, Clone)]
struct Samples {
    latencies: Vec<f64>,
    hops: Vec<f64>,
    put_latencies: Vec<f64>,
    get_latencies: Vec<f64>,
}

/// Plays `schedule` and reports; `progress` is called with the share of the scenario's
/// time played (0 to 1), the nodes on line and how late the last event was played (real
/// seconds).
pub async fn play(
    scenario: &Scenario,
    schedule: &Schedule,
    mut progress: impl FnMut(f64, u32, f64),
) -> Report {
    let started = std::time::Instant::now();
    // Keys come from the seed too (their own stream), so a seed replays the same PeerIds
    // and so the same Kademlia distances; what still varies is timing.
    let mut keys = {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(schedule.seed);
        rng.set_stream(KEYS);
        rng
    };
    let mut next_key = move || {
        use rand::RngCore;
        let mut secret = [0u8; 32];
        keys.fill_bytes(&mut secret);
        SigningKey::from_bytes(&secret)
    };
    let root = next_key();
    let tree = Path::root_of(root.principal());
    // Each node keeps its key from session to session, as a real machine does.
    let node_keys: Vec<SigningKey> = (0..scenario.nodes).map(|_| next_key()).collect();
    // Drawn after the nodes' keys, so that a file workload leaves their PeerIds alone.
    let owner = scenario
        .files
        .enabled()
        .then(|| Owner::new(next_key(), scenario, schedule.seed));
    let mut disks: HashMap<u32, Disk> = HashMap::new();
    let mut written: Vec<bool> = Vec::new();
    let scale = scenario.time_scale;
    let window_ms = 60_000u64;
    let windows = (scenario.duration_secs * 1000).div_ceil(window_ms).max(1) as usize;
    let topics = scenario.workload.topics.max(1);
    let mut report = Report {
        scenario: scenario.name.clone(),
        seed: schedule.seed,
        nodes: scenario.nodes,
        time_scale: scale,
        windows: (0..windows)
            .map(|i| Window {
                at_secs: i as u64 * 60,
                ..Window::default()
            })
            .collect(),
        notes: vec![
            "memory transport, unencrypted (plaintext with key exchange), Yamux as on TCP".into(),
            format!(
                "time scaled {scale}x: maintenance timers in simulated time, timeouts in real time"
            ),
            "a crash drops the node's connections at once (a killed process), a leave shuts it down"
                .into(),
            format!(
                "pub-sub: subscribers on line {} s before and {} s after a publication (real time) are due it",
                SETTLE.as_secs(),
                DEADLINE.as_secs()
            ),
        ],
        ..Report::default()
    };
    // Ordered, so that picking a bootstrap node by position is the same in every run.
    let mut nodes: BTreeMap<u32, Running> = BTreeMap::new();
    let directory: Directory = Arc::default();
    // Each join of a node is an epoch; a registration of an earlier epoch is stale.
    let mut epochs: HashMap<u32, u64> = HashMap::new();
    let mut peers: HashMap<u32, PeerId> = HashMap::new();
    // Each node's sessions in real time, for who was due a publication.
    let mut sessions: Vec<Vec<(Instant, Option<Instant>)>> =
        vec![Vec::new(); scenario.nodes as usize];
    let mut publications: Vec<Publication> = Vec::new();
    // Written by the nodes' listeners directly: a full outcome queue must never hold up
    // the validation gossipsub waits for before it forwards a message.
    let receipts: Receipts = Arc::default();
    let (outcomes, mut results) = mpsc::channel::<Outcome>(65_536);
    let mut samples: Vec<Samples> = vec![Samples::default(); windows];
    let mut requests: Vec<f64> = Vec::new();
    let begin = Instant::now();
    let mut sampled_window = usize::MAX;
    // The process's CPU time when the sampled window began, and when the last event was
    // played (nodes on line are integrated over real time from event to event).
    let mut cpu_mark = cpu_secs();
    let mut last_event = Instant::now();
    let mut kad_seen = HashMap::new();
    let path_of = |node: u32, name: u32| -> Option<Path> {
        tree.join(&format!("n{node}"))
            .ok()?
            .join(&format!("p{name}"))
            .ok()
    };
    if owner.is_some() {
        report.notes.push(format!(
            "files: R = {}, W = {}; a node's block store outlives its off-line spells (a disk); \
             chunks read through a node are cached there, inode versions for {} ms",
            scenario.files.replicas,
            scenario.files.write_quorum,
            fs::net::VERSIONS_TTL.as_millis()
        ));
    }
    // Repair's copies and bytes and the lookups, all nodes, at each window's start.
    let mut fs_marks: Vec<Option<FsMark>> = vec![None; windows];
    let mut state = Tally {
        report: &mut report,
        samples: &mut samples,
        requests: &mut requests,
        written: &mut written,
    };
    // Every window's start and the scenario's end are played as marks beside the events,
    // so that a window without events is still measured and a run lasts its duration.
    let end_ms = scenario.duration_secs * 1000;
    let mut timeline: Vec<(u64, Option<(usize, &Event)>)> = schedule
        .events
        .iter()
        .enumerate()
        .map(|(done, event)| (event.at_ms, Some((done, event))))
        .chain((1..=windows as u64).map(|w| ((w * window_ms).min(end_ms), None)))
        .collect();
    timeline.sort_by_key(|&(at_ms, _)| at_ms);
    for (at_ms, event) in timeline {
        let due = begin + Duration::from_secs_f64(at_ms as f64 / 1000.0 / scale);
        // Take in what finished meanwhile while waiting for the event's moment.
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(due) => break,
                outcome = results.recv() => match outcome {
                    Some(o) => state.record(o, &mut nodes, &epochs),
                    None => break,
                },
            }
        }
        let window = ((at_ms / window_ms) as usize).min(windows - 1);
        let now = Instant::now();
        let lag = now.saturating_duration_since(due).as_secs_f64();
        // The time since the last event belongs to its window, as its CPU time does.
        if let Some(w) = state.report.windows.get_mut(sampled_window) {
            w.node_secs += nodes.len() as f64 * now.duration_since(last_event).as_secs_f64();
        }
        last_event = now;
        let w = &mut state.report.windows[window];
        w.lag_secs = w.lag_secs.max(lag);
        state.report.lag_max_secs = state.report.lag_max_secs.max(lag);
        if window != sampled_window {
            let cpu = cpu_secs();
            if let Some(w) = state.report.windows.get_mut(sampled_window) {
                w.cpu_secs += cpu - cpu_mark;
            }
            cpu_mark = cpu;
            sampled_window = window;
            let rss = rss_mib();
            state.report.peak_rss_mib = state.report.peak_rss_mib.max(rss);
            let (connections, routing, kad) = tables(&nodes, &mut kad_seen).await;
            if let Some(previous) = window.checked_sub(1) {
                state.report.windows[previous].kad = kad;
            }
            let w = &mut state.report.windows[window];
            w.connections_mean = connections;
            w.routing_table_mean = routing;
            w.rss_mib = rss;
            if owner.is_some() {
                use std::sync::atomic::Ordering::Relaxed;
                fs_marks[window] = Some(FsMark::of(&disks));
                w.under_replicated = nodes
                    .keys()
                    .filter_map(|n| disks.get(n))
                    .map(|d| d.repair().under_replicated.load(Relaxed))
                    .sum();
            }
        }
        let Some((done, event)) = event else {
            let live = nodes.len() as u32;
            state.report.windows[window].live = live;
            progress(at_ms as f64 / end_ms.max(1) as f64, live, lag);
            continue;
        };
        match event.kind {
            EventKind::Join { node } => {
                // Through a node on line picked by the event's place, so joins spread
                // over the network rather than all landing on one node.
                let bootstrap = (!nodes.is_empty())
                    .then(|| nodes.values().nth(done % nodes.len()))
                    .flatten()
                    .map(|n| n.address.clone());
                let Some(key) = node_keys.get(node as usize).cloned() else {
                    continue;
                };
                let Some(mut running) =
                    join(scenario, key, bootstrap, node, topics, receipts.clone()).await
                else {
                    continue;
                };
                if owner.is_some() {
                    if let std::collections::hash_map::Entry::Vacant(e) = disks.entry(node)
                        && let Ok(disk) = Disk::new(&running.key)
                    {
                        e.insert(disk);
                    }
                    running.files = disks.get(&node).and_then(|disk| {
                        Mounted::start(scenario, disk, &running.key, &running.client).ok()
                    });
                }
                epochs.entry(node).and_modify(|e| *e += 1).or_insert(0);
                let peer = running.key.peer_id();
                peers.insert(node, peer);
                if let Ok(mut directory) = directory.write() {
                    directory.insert(peer, (running.client.clone(), KBucketKey::from(peer)));
                }
                if let Some(s) = sessions.get_mut(node as usize) {
                    s.push((Instant::now(), None));
                }
                nodes.insert(node, running);
            }
            EventKind::Register { node, name } => {
                let (Some(running), Some(path)) = (nodes.get(&node), path_of(node, name)) else {
                    continue;
                };
                let chain = Chain::root_grant(
                    &root,
                    running.key.principal(),
                    path.clone(),
                    Validity::for_seconds(scenario.duration_secs + 3600),
                );
                let client = running.client.clone();
                let outcomes = outcomes.clone();
                let epoch = epochs.get(&node).copied().unwrap_or(0);
                tokio::spawn(async move {
                    if client.register(path, chain).await.is_ok() {
                        let _ = outcomes
                            .send(Outcome::Registered { node, name, epoch })
                            .await;
                    }
                });
            }
            EventKind::Leave { node } | EventKind::Crash { node } => {
                if let Some(running) = nodes.remove(&node) {
                    if matches!(event.kind, EventKind::Leave { .. }) {
                        let _ = running.client.shutdown().await;
                    }
                    running.task.abort();
                    if let Ok(mut directory) = directory.write() {
                        directory.remove(&running.key.peer_id());
                    }
                    if let Some(last) = sessions.get_mut(node as usize).and_then(|s| s.last_mut()) {
                        last.1 = Some(Instant::now());
                    }
                }
            }
            EventKind::Resolve { from, node, name } => {
                let (Some(asker), Some(target), Some(path)) =
                    (nodes.get(&from), nodes.get(&node), path_of(node, name))
                else {
                    continue;
                };
                if !target
                    .registered
                    .get(name as usize)
                    .copied()
                    .unwrap_or(false)
                {
                    state.report.not_yet_registered += 1;
                    state.report.windows[window].not_yet_registered += 1;
                    continue;
                }
                let expected = peers.get(&node).map(ToString::to_string);
                let client = asker.client.clone();
                let me = asker.key.peer_id();
                let outcomes = outcomes.clone();
                let directory = directory.clone();
                tokio::spawn(async move {
                    // Hops first, over the routing tables as the resolution finds them
                    // (the lookup itself adds the peers it meets to the asker's table).
                    let key = dht::key_of(&path);
                    let hops = hops(&directory, me, &client, &key).await;
                    let asked = Instant::now();
                    let answer = tokio::time::timeout(RESOLVE_TIMEOUT, client.resolve(path)).await;
                    let outcome = match answer {
                        Ok(Ok(r)) if Some(&r.peer_id) == expected.as_ref() => Outcome::Resolved {
                            window,
                            latency: asked.elapsed(),
                            requests: r.requests,
                            hops,
                        },
                        Ok(Ok(_)) => Outcome::Failed {
                            window,
                            why: "named another node".into(),
                        },
                        Ok(Err(e)) => Outcome::Failed {
                            window,
                            why: without_names(&e.to_string()),
                        },
                        Err(_) => Outcome::Failed {
                            window,
                            why: "timed out".into(),
                        },
                    };
                    let _ = outcomes.send(outcome).await;
                });
            }
            EventKind::Publish {
                from,
                topic,
                message,
            } => {
                let Some(publisher) = nodes.get(&from) else {
                    continue;
                };
                publications.push(Publication {
                    message,
                    topic,
                    from,
                    window,
                    at: Instant::now(),
                });
                state.report.windows[window].published += 1;
                let client = publisher.client.clone();
                tokio::spawn(async move {
                    // A publication nobody can take (no peers on the topic yet) is still
                    // counted: its subscribers were due it.
                    let _ = client
                        .publish(topic_name(topic), message.to_be_bytes().to_vec())
                        .await;
                });
            }
            EventKind::Put { via, file } => {
                let (Some(owner), Some(network)) = (
                    &owner,
                    nodes
                        .get(&via)
                        .and_then(|n| n.files.as_ref())
                        .map(|f| f.network().clone()),
                ) else {
                    continue;
                };
                let owner = owner.clone();
                let outcomes = outcomes.clone();
                let via = (via, epochs.get(&via).copied().unwrap_or(0));
                tokio::spawn(async move {
                    let started = Instant::now();
                    let result = owner.put(network, file).await;
                    let _ = outcomes
                        .send(Outcome::Put {
                            file,
                            via,
                            window,
                            latency: started.elapsed(),
                            result,
                        })
                        .await;
                });
            }
            EventKind::Get { via, file } => {
                let (Some(owner), Some(network)) = (
                    &owner,
                    nodes
                        .get(&via)
                        .and_then(|n| n.files.as_ref())
                        .map(|f| f.network().clone()),
                ) else {
                    continue;
                };
                if !state.written.get(file as usize).copied().unwrap_or(false) {
                    state.report.windows[window].gets_not_yet_written += 1;
                    continue;
                }
                let owner = owner.clone();
                let outcomes = outcomes.clone();
                let via = (via, epochs.get(&via).copied().unwrap_or(0));
                tokio::spawn(async move {
                    let started = Instant::now();
                    let result = owner.get(network, file).await;
                    let _ = outcomes
                        .send(Outcome::Got {
                            via,
                            window,
                            latency: started.elapsed(),
                            result,
                        })
                        .await;
                });
            }
        }
        let live = nodes.len() as u32;
        state.report.windows[window].live = live;
        state.report.peak_live = state.report.peak_live.max(live);
        if done % 64 == 0 {
            progress(at_ms as f64 / end_ms.max(1) as f64, live, lag);
        }
    }
    // Let the last resolutions, deliveries, puts and gets finish: each is bounded by its
    // own timeout, so waiting for the longest of them accounts for every one (the wait
    // ends as soon as the last is in).
    drop(outcomes);
    let longest = RESOLVE_TIMEOUT
        .max(crate::files::PUT_TIMEOUT)
        .max(crate::files::GET_TIMEOUT);
    let drain = Instant::now() + longest + Duration::from_secs(1);
    while let Ok(Some(o)) = tokio::time::timeout_at(drain, results.recv()).await {
        state.record(o, &mut nodes, &epochs);
    }
    let end = Instant::now();
    // The last window's Kademlia work, file system's work and CPU, taken before the audit
    // adds its own.
    let end_mark = FsMark::of(&disks);
    if let Some(last) = state.report.windows.get_mut(sampled_window) {
        last.kad = tables(&nodes, &mut kad_seen).await.2;
        last.cpu_secs += cpu_secs() - cpu_mark;
        last.node_secs += nodes.len() as f64 * end.duration_since(last_event).as_secs_f64();
    }
    if let Some(owner) = &owner {
        let files: Vec<u32> = (0..state.written.len() as u32)
            .filter(|f| state.written[*f as usize])
            .collect();
        state.report.files_written = files.len() as u64;
        let bootstrap = nodes.values().next().map(|n| n.address.clone());
        let auditor = next_key();
        state.report.files_lost = audit(scenario, auditor, bootstrap, owner, &files).await;
    }
    // Repair's traffic and the lookups per window: the difference of the marks around it.
    {
        let mut next = end_mark;
        for (w, mark) in state.report.windows.iter_mut().zip(&fs_marks).rev() {
            if let Some(mark) = mark {
                w.repair_copies = next.copies.saturating_sub(mark.copies);
                w.repair_bytes = next.bytes.saturating_sub(mark.bytes);
                w.repair_surveyed = next.surveyed.saturating_sub(mark.surveyed);
                w.repair_taken_over = next.taken_over.saturating_sub(mark.taken_over);
                w.repair_rounds = next.rounds.saturating_sub(mark.rounds);
                w.block_served = next.served.saturating_sub(mark.served);
                w.reads_hedged = next.hedged.saturating_sub(mark.hedged);
                w.reads_short = next.short_reads.saturating_sub(mark.short_reads);
                w.lookups = next.lookups.since(&mark.lookups);
                next = *mark;
            }
        }
    }
    for running in nodes.into_values() {
        let _ = running.client.shutdown().await;
        running.task.abort();
    }
    let receipts = receipts.lock().map(|r| r.clone()).unwrap_or_default();
    deliveries(
        &mut report,
        &publications,
        &sessions,
        &receipts,
        topics,
        end,
    );
    for (w, s) in report.windows.iter_mut().zip(samples.iter_mut()) {
        w.latency_p50_ms = percentile(&mut s.latencies, 50.0);
        w.latency_p99_ms = percentile(&mut s.latencies, 99.0);
        w.get_latency_p50_ms = percentile(&mut s.get_latencies, 50.0);
        w.get_latency_p99_ms = percentile(&mut s.get_latencies, 99.0);
        w.hops_p50 = percentile(&mut s.hops, 50.0);
        w.hops_p99 = percentile(&mut s.hops, 99.0);
    }
    report.all = totals(&report.windows, &samples, 0);
    report.after_warm_up = totals(&report.windows, &samples, scenario.warm_up_secs);
    report.requests_p50 = percentile(&mut requests, 50.0);
    report.wall_secs = started.elapsed().as_secs_f64();
    report.peak_rss_mib = report.peak_rss_mib.max(rss_mib());
    report.rss_per_node_mib = report.peak_rss_mib / f64::from(report.peak_live.max(1));
    progress(1.0, 0, 0.0);
    report
}

/// Starts node `node`: the overlay, its topic, and a task that takes in its deliveries.
async fn join(
    scenario: &Scenario,
    key: SigningKey,
    bootstrap: Option<Multiaddr>,
    node: u32,
    topics: u32,
    receipts: Receipts,
) -> Option<Running> {
    let store = dht::Store::in_memory(10_000);
    let config = node_config(scenario, bootstrap);
    let (client, task) = dht::start(key.clone(), config, store, dht::Transports::MemoryPlaintext)
        .await
        .ok()?;
    let address = match client.status().await {
        Ok(status) => status
            .listen_addrs
            .first()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(Multiaddr::empty),
        Err(_) => Multiaddr::empty(),
    };
    if let Ok(mut gossip) = client.gossip().await {
        let listener = client.clone();
        tokio::spawn(async move {
            while let Some(message) = gossip.recv().await {
                let _ = listener.validate(&message, dht::Verdict::Accept).await;
                let Ok(number) = <[u8; 8]>::try_from(message.data.as_slice()) else {
                    continue;
                };
                let at = Instant::now();
                if let Ok(mut receipts) = receipts.lock() {
                    receipts
                        .entry(u64::from_be_bytes(number))
                        .or_default()
                        .entry(node)
                        .or_insert(at);
                }
            }
        });
        let _ = client.subscribe(topic_name(node % topics)).await;
    }
    Some(Running {
        key,
        client,
        task,
        address,
        registered: vec![false; scenario.workload.registrations_per_session as usize],
        files: None,
        started: Instant::now(),
    })
}

/// Reads every file in `files` through a node that never took part (new key, empty
/// store and caches), joined through `bootstrap`; returns how many it cannot read, each
/// tried three times.
async fn audit(
    scenario: &Scenario,
    key: SigningKey,
    bootstrap: Option<Multiaddr>,
    owner: &Owner,
    files: &[u32],
) -> u64 {
    let lost = files.len() as u64;
    let store = dht::Store::in_memory(10_000);
    let Ok((client, task)) = dht::start(
        key.clone(),
        node_config(scenario, bootstrap),
        store,
        dht::Transports::MemoryPlaintext,
    )
    .await
    else {
        return lost;
    };
    let Ok(disk) = Disk::new(&key) else {
        return lost;
    };
    let Ok(mounted) = Mounted::start(scenario, &disk, &key, &client) else {
        return lost;
    };
    // Time to fill its routing table.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if client.status().await.is_ok_and(|s| s.routing_table >= 20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut reads = tokio::task::JoinSet::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(8));
    for &file in files {
        let (owner, network, limit) = (owner.clone(), mounted.network().clone(), limit.clone());
        reads.spawn(async move {
            let _permit = limit.acquire_owned().await;
            for _ in 0..3 {
                if owner.get(network.clone(), file).await.is_ok() {
                    return true;
                }
            }
            false
        });
    }
    let mut missing = 0;
    while let Some(read) = reads.join_next().await {
        missing += u64::from(!matches!(read, Ok(true)));
    }
    drop(mounted);
    let _ = client.shutdown().await;
    task.abort();
    missing
}

/// The rounds an α = 3 iterative lookup for `key` from `me` takes, asking each node's
/// routing table as it is now, to reach one of the K nodes on line nearest to the key
/// (0: `me` is one of them). None when it never does.
async fn hops(
    directory: &Directory,
    me: PeerId,
    client: &dht::Client,
    key: &RecordKey,
) -> Option<u32> {
    let target = KBucketKey::new(key.clone());
    let goal: HashSet<PeerId> = {
        let directory = directory.read().ok()?;
        let mut live: Vec<(KBucketDistance, PeerId)> = directory
            .iter()
            .map(|(peer, (_, k))| (k.distance(&target), *peer))
            .collect();
        live.sort();
        live.into_iter().take(K).map(|(_, p)| p).collect()
    };
    if goal.contains(&me) {
        return Some(0);
    }
    let distance = |peer: &PeerId| KBucketKey::from(*peer).distance(&target);
    let mut seen: HashSet<PeerId> = HashSet::from([me]);
    let mut candidates: Vec<(KBucketDistance, PeerId)> = Vec::new();
    let mut learn = |found: Vec<dht::Candidate>,
                     candidates: &mut Vec<(KBucketDistance, PeerId)>| {
        for c in found {
            if seen.insert(c.peer) {
                candidates.push((distance(&c.peer), c.peer));
            }
        }
        candidates.sort();
    };
    learn(client.closest(key.to_vec(), K).await.ok()?, &mut candidates);
    for round in 1..=MAX_ROUNDS {
        if candidates.is_empty() {
            return None;
        }
        let asked: Vec<PeerId> = candidates
            .drain(..ALPHA.min(candidates.len()))
            .map(|(_, p)| p)
            .collect();
        if asked.iter().any(|p| goal.contains(p)) {
            return Some(round);
        }
        let clients: Vec<dht::Client> = {
            let directory = directory.read().ok()?;
            asked
                .iter()
                .filter_map(|p| directory.get(p).map(|(c, _)| c.clone()))
                .collect()
        };
        // A peer no longer on line answers nothing (its request would time out).
        for c in clients {
            if let Ok(found) = c.closest(key.to_vec(), K).await {
                learn(found, &mut candidates);
            }
        }
    }
    None
}

/// Counts, for every publication, the subscribers that were due it and those that got it.
fn deliveries(
    report: &mut Report,
    publications: &[Publication],
    sessions: &[Vec<(Instant, Option<Instant>)>],
    receipts: &HashMap<u64, HashMap<u32, Instant>>,
    topics: u32,
    end: Instant,
) {
    let none = HashMap::new();
    for p in publications {
        let got = receipts.get(&p.message).unwrap_or(&none);
        let (mut due, mut delivered) = (0u64, 0u64);
        for (node, spans) in sessions.iter().enumerate() {
            let node = node as u32;
            if node % topics != p.topic || node == p.from {
                continue;
            }
            let on_line = spans
                .iter()
                .any(|(from, to)| *from + SETTLE <= p.at && to.unwrap_or(end) >= p.at + DEADLINE);
            if !on_line {
                continue;
            }
            due += 1;
            if got.get(&node).is_some_and(|at| *at <= p.at + DEADLINE) {
                delivered += 1;
            }
        }
        let w = &mut report.windows[p.window];
        w.deliveries_due += due;
        w.delivered += delivered;
    }
}

fn totals(windows: &[Window], samples: &[Samples], from_secs: u64) -> Totals {
    let mut t = Totals {
        from_secs,
        ..Totals::default()
    };
    let mut latencies = Vec::new();
    let mut node_secs = 0.0;
    let mut hops = Vec::new();
    let mut put_latencies = Vec::new();
    let mut get_latencies = Vec::new();
    let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    for (w, s) in windows.iter().zip(samples) {
        if w.at_secs < from_secs {
            continue;
        }
        t.resolved += w.resolved;
        t.failed += w.failed;
        t.published += w.published;
        t.deliveries_due += w.deliveries_due;
        t.delivered += w.delivered;
        t.puts_ok += w.puts_ok;
        t.puts_failed += w.puts_failed;
        t.gets_ok += w.gets_ok;
        t.gets_failed += w.gets_failed;
        t.repair_copies += w.repair_copies;
        t.repair_bytes += w.repair_bytes;
        t.repair_taken_over += w.repair_taken_over;
        t.kad.add(&w.kad);
        t.lookups.add(&w.lookups);
        t.reads_hedged += w.reads_hedged;
        t.reads_short += w.reads_short;
        t.cpu_secs += w.cpu_secs;
        node_secs += w.node_secs;
        latencies.extend_from_slice(&s.latencies);
        hops.extend_from_slice(&s.hops);
        put_latencies.extend_from_slice(&s.put_latencies);
        get_latencies.extend_from_slice(&s.get_latencies);
    }
    t.availability = ratio(t.gets_ok, t.gets_ok + t.gets_failed);
    if node_secs > 0.0 {
        t.cpu_ms_per_node_sec = 1000.0 * t.cpu_secs / node_secs;
    }
    t.put_latency_p50_ms = percentile(&mut put_latencies, 50.0);
    t.get_latency_p50_ms = percentile(&mut get_latencies, 50.0);
    t.get_latency_p99_ms = percentile(&mut get_latencies, 99.0);
    t.success_rate = ratio(t.resolved, t.resolved + t.failed);
    t.delivery_ratio = ratio(t.delivered, t.deliveries_due);
    t.latency_p50_ms = percentile(&mut latencies, 50.0);
    t.latency_p99_ms = percentile(&mut latencies, 99.0);
    t.hops_p50 = percentile(&mut hops, 50.0);
    t.hops_p99 = percentile(&mut hops, 99.0);
    t
}

/// Connections and routing-table entries per node on line, means, and Kademlia's work
/// since the last call; `kad_seen` keeps each session's counts between calls.
async fn tables(
    nodes: &BTreeMap<u32, Running>,
    kad_seen: &mut HashMap<u32, (Instant, dht::KadCounters)>,
) -> (f64, f64, KadWork) {
    let mut asks = tokio::task::JoinSet::new();
    for (&n, running) in nodes {
        let client = running.client.clone();
        let started = running.started;
        asks.spawn(async move { (n, started, client.status().await.ok()) });
    }
    let (mut peers, mut routing, mut count) = (0usize, 0usize, 0usize);
    let mut work = KadWork::default();
    let mut seen = HashMap::new();
    while let Some(answer) = asks.join_next().await {
        if let Ok((n, life, Some(status))) = answer {
            peers += status.peers;
            routing += status.routing_table;
            count += 1;
            // A node's counts start from zero with each session: a session not seen
            // before counts whole (what a node did in a session that ended between two
            // calls is not counted).
            let zero = dht::KadCounters::default();
            let before = match kad_seen.get(&n) {
                Some((before_life, before)) if *before_life == life => before,
                _ => &zero,
            };
            work.add(&KadWork::between(before, &status.kad));
            seen.insert(n, (life, status.kad));
        }
    }
    *kad_seen = seen;
    let count = count.max(1) as f64;
    (peers as f64 / count, routing as f64 / count, work)
}

/// The CPU time this process has taken, user and system, every thread, seconds (0 where
/// `/proc` is not there).
pub fn cpu_secs() -> f64 {
    cpu_secs_of("/proc/self/stat")
}

/// The CPU time in a `/proc` stat file (a process's or a thread's), seconds.
fn cpu_secs_of(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // After the command's name (in parentheses, which it may itself contain) come the
    // state (field 3), ..., utime (14) and stime (15), in clock ticks.
    let Some((_, fields)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let ticks: u64 = fields
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// This process's resident set, MiB (0 where `/proc` is not there).
pub fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Whether `node` is still in the session `epoch`.
fn on_line(
    nodes: &BTreeMap<u32, Running>,
    epochs: &HashMap<u32, u64>,
    (node, epoch): (u32, u64),
) -> bool {
    nodes.contains_key(&node) && epochs.get(&node) == Some(&epoch)
}

/// Where outcomes are counted.
struct Tally<'a> {
    report: &'a mut Report,
    samples: &'a mut [Samples],
    requests: &'a mut Vec<f64>,
    /// Files whose put was acknowledged, by number.
    written: &'a mut Vec<bool>,
}

/// An error's words with its paths and peer ids left out, so errors of one kind count
/// together.
fn without_names(error: &str) -> String {
    error
        .split_whitespace()
        .map(|word| {
            if word.starts_with('/') {
                "<path>"
            } else if word.starts_with("12D3") {
                "<peer>"
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Tally<'_> {
    /// Counts an error by its first words after the path (the rest names items and
    /// peers).
    fn error(&mut self, what: &str, result: Result<(), String>) {
        if let Err(e) = result {
            let e = match e.split_once(": ") {
                Some((path, rest)) if path.starts_with('/') => rest,
                _ => e.as_str(),
            };
            let words: Vec<&str> = e.split_whitespace().take(10).collect();
            *self
                .report
                .file_errors
                .entry(format!("{what}: {}", words.join(" ")))
                .or_insert(0) += 1;
        }
    }

    fn record(
        &mut self,
        outcome: Outcome,
        nodes: &mut BTreeMap<u32, Running>,
        epochs: &HashMap<u32, u64>,
    ) {
        match outcome {
            Outcome::Registered { node, name, epoch } => {
                if epochs.get(&node) == Some(&epoch)
                    && let Some(slot) = nodes
                        .get_mut(&node)
                        .and_then(|n| n.registered.get_mut(name as usize))
                {
                    *slot = true;
                }
            }
            Outcome::Resolved {
                window,
                latency,
                requests,
                hops,
            } => {
                if let Some(w) = self.report.windows.get_mut(window) {
                    w.resolved += 1;
                    w.hop_samples += u64::from(hops.is_some());
                }
                if let Some(s) = self.samples.get_mut(window) {
                    s.latencies.push(latency.as_secs_f64() * 1000.0);
                    match hops {
                        Some(h) => s.hops.push(f64::from(h)),
                        None => self.report.hops_unreached += 1,
                    }
                }
                self.requests.push(f64::from(requests));
            }
            Outcome::Failed { window, why } => {
                if let Some(w) = self.report.windows.get_mut(window) {
                    w.failed += 1;
                }
                *self.report.resolve_errors.entry(why).or_insert(0) += 1;
            }
            Outcome::Put {
                file,
                via,
                window,
                latency,
                result,
            } => {
                let ok = result.is_ok();
                if !ok && !on_line(nodes, epochs, via) {
                    if let Some(w) = self.report.windows.get_mut(window) {
                        w.files_interrupted += 1;
                    }
                    return;
                }
                if ok {
                    let file = file as usize;
                    if self.written.len() <= file {
                        self.written.resize(file + 1, false);
                    }
                    self.written[file] = true;
                    if let Some(s) = self.samples.get_mut(window) {
                        s.put_latencies.push(latency.as_secs_f64() * 1000.0);
                    }
                }
                if let Some(w) = self.report.windows.get_mut(window) {
                    w.puts_ok += u64::from(ok);
                    w.puts_failed += u64::from(!ok);
                }
                self.error("put", result);
            }
            Outcome::Got {
                via,
                window,
                latency,
                result,
            } => {
                let ok = result.is_ok();
                if !ok && !on_line(nodes, epochs, via) {
                    if let Some(w) = self.report.windows.get_mut(window) {
                        w.files_interrupted += 1;
                    }
                    return;
                }
                if let Some(w) = self.report.windows.get_mut(window) {
                    w.gets_ok += u64::from(ok);
                    w.gets_failed += u64::from(!ok);
                }
                if ok && let Some(s) = self.samples.get_mut(window) {
                    s.get_latencies.push(latency.as_secs_f64() * 1000.0);
                }
                self.error("get", result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread that spins until it has itself taken 0.3 s of CPU (by its own count) has
    /// added at least that much to the process's.
    #[test]
    fn cpu_time_counts_what_a_thread_spins() {
        let before = cpu_secs();
        let thread_before = cpu_secs_of("/proc/thread-self/stat");
        let mut x = 1u64;
        let started = Instant::now();
        while cpu_secs_of("/proc/thread-self/stat") - thread_before < 0.3 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the thread's own CPU time did not grow"
            );
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        let grew = cpu_secs() - before;
        assert!(grew >= 0.29, "the process's CPU time grew by {grew} s");
    }
}
