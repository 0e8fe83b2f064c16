//! Resolve latency and lookup cost over 50 in-process nodes on the memory transport, with
//! stock rust-libp2p Kademlia measured in the same run as the baseline.
//!
//! `cargo bench -p dht --bench resolve` prints markdown tables:
//!
//! - **dht**: 50 [`dht::start`] nodes (memory transport, default [`Config`]) join through
//!   one bootstrap node and each registers one path. Then resolutions from random nodes of
//!   other nodes' paths: `<path>/item<k>` (a distinct path every time, so nothing comes
//!   from the resolve cache; it asks for the path and its prefixes, and answers once the
//!   longest prefix's lookup is done and its node is known live) and `<path>` itself over
//!   distinct (node, path) pairs (also never cached: it looks up the path and, in
//!   parallel, the tree root, and answers when the path's lookup is done and its node is
//!   known live).
//! - **stock kad**: 50 swarms of a default `kad::Behaviour` (`/ipfs/kad/1.0.0`, a
//!   `MemoryStore`) with identify feeding listen addresses into Kademlia (as the dht node
//!   does), the same transport, join procedure and idle timeout. Each puts one record of
//!   the size of a dht path record with `Quorum::One`; then `get_record` over the same
//!   distinct (node, key) pairs. "Query done" is when the query ends (what a dht
//!   resolution waits for: it keeps the newest record, so it hears every peer out);
//!   "first record" is when the first record arrives (from the node's own store when it is
//!   one of the record's replicas). "dht's lookups" runs the lookups a dht resolution of
//!   `<path>` starts: the key and, in parallel, the tree root's key (registered by no one);
//!   it is done when the key's query is. Against it, the ratio is the dht's own overhead
//!   (event loop, record checks, liveness) rather than its lookup pattern.
//!
//! "Requests" is Kademlia's `QueryStats::num_requests` (the dht's `Resolution::requests`,
//! the sum over the prefix lookups it waited for): the stand-in for hops, which Kademlia
//! does not report. "Join" is the time from starting the first node until every routing
//! table holds at least k = 20 peers; "publish" the time for all 50 puts, started at once,
//! to report done; "idle CPU" what the process uses over 3 s after 5 s more, with nobody
//! asking anything (pings, gossipsub heartbeats, identify). The columns of one system
//! are measured alternately, so that none gets the colder start; the two systems run one
//! after the other in the same process.
//!
//! Environment: `BENCH_NODES` (50), `BENCH_RESOLVES` per column (500), `BENCH_SEED`
//! (printed; it fixes node keys and the choice of pairs, not the memory ports).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::error::Error;
use std::time::{Duration, Instant};

use dht::{Client, Config, PathRecord, Store, Transports};
use futures::StreamExt;
use keys::{Chain, Path, SigningKey, Validity, now};
use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade::Version;
use libp2p::kad::store::MemoryStore;
use libp2p::kad::{self, GetRecordOk, QueryId, QueryResult, Quorum, RecordKey};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, SwarmBuilder, Transport, identify, identity, noise, yamux};
use tokio::sync::{mpsc, oneshot};

/// Kademlia's k: a routing table this full serves every lookup from its own bucket.
const K: usize = 20;
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Quiet time after the puts, before anything is measured: the puts report done at the
/// first acknowledgement, and the overlay stays busy for a few seconds after that.
const SETTLE: Duration = Duration::from_secs(5);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// SplitMix64: one seed for every random choice of the run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self) -> [u8; 32] {
        let mut out = [0; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        out
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// Nearest-rank percentiles of one column.
#[derive(Default)]
struct Column {
    millis: Vec<f64>,
    requests: Vec<u32>,
    failures: usize,
}

impl Column {
    fn add(&mut self, elapsed: Duration, requests: u32) {
        self.millis.push(elapsed.as_secs_f64() * 1e3);
        self.requests.push(requests);
    }

    fn latency(&self, p: f64) -> f64 {
        let mut v = self.millis.clone();
        v.sort_by(f64::total_cmp);
        rank(&v, p).copied().unwrap_or(f64::NAN)
    }

    fn requests(&self, p: f64) -> f64 {
        let mut v = self.requests.clone();
        v.sort_unstable();
        rank(&v, p).map_or(f64::NAN, |&r| f64::from(r))
    }
}

fn rank<T>(sorted: &[T], p: f64) -> Option<&T> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted.get(index)
}

/// How the overlay came together.
struct Convergence {
    /// Until every routing table held `K` peers; `None` if that never happened.
    join: Option<Duration>,
    /// Smallest and median routing table when join ended.
    tables: (usize, usize),
    /// Until all concurrent puts reported done.
    publish: Duration,
    /// Puts that failed (quorum not reached).
    publish_failures: usize,
    /// CPU the idle overlay uses, in % of one core.
    idle_cpu: Option<f64>,
}

/// This process's CPU time, from `/proc/self/stat` (Linux; 100 ticks a second).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces): state is the first.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU that the overlay uses while nobody asks it anything, over 3 s.
async fn idle_cpu() -> Option<f64> {
    let window = Duration::from_secs(3);
    let before = cpu_seconds()?;
    tokio::time::sleep(window).await;
    Some((cpu_seconds()? - before) / window.as_secs_f64() * 100.0)
}

fn summary(tables: &mut [usize]) -> (usize, usize) {
    tables.sort_unstable();
    (tables[0], tables[tables.len() / 2])
}

/// Polls every node's routing table size until all hold `K` peers (or all others, in a
/// smaller overlay) or the timeout passes.
async fn await_join<F: AsyncFnMut() -> Vec<usize>>(
    started: Instant,
    mut tables: F,
) -> (Option<Duration>, (usize, usize)) {
    loop {
        let mut sizes = tables().await;
        let elapsed = started.elapsed();
        let full = K.min(sizes.len() - 1);
        if sizes.iter().all(|&s| s >= full) {
            return (Some(elapsed), summary(&mut sizes));
        }
        if elapsed > JOIN_TIMEOUT {
            return (None, summary(&mut sizes));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The dht

struct DhtNode {
    key: SigningKey,
    client: Client,
    addr: Multiaddr,
}

async fn dht_node(key: SigningKey, bootstrap: Option<&Multiaddr>) -> DhtNode {
    let config = Config::new()
        .with_listen(vec!["/memory/0".parse().unwrap()])
        .with_bootstrap(bootstrap.into_iter().cloned().collect());
    let (client, _task) = dht::start(
        key.clone(),
        config,
        Store::in_memory(100_000),
        Transports::Memory,
    )
    .await
    .unwrap();
    let status = client.status().await.unwrap();
    DhtNode {
        key,
        client,
        addr: status.listen_addrs[0].parse().unwrap(),
    }
}

struct DhtResults {
    convergence: Convergence,
    item: Column,
    exact: Column,
    record_bytes: usize,
}

async fn run_dht(
    n: usize,
    pairs: &[(usize, usize)],
    items: &[(usize, usize)],
    rng: &mut Rng,
) -> DhtResults {
    let root = SigningKey::from_bytes(&rng.bytes());
    let tree = Path::root_of(root.principal());
    let started = Instant::now();
    let first = dht_node(SigningKey::from_bytes(&rng.bytes()), None).await;
    let bootstrap = first.addr.clone();
    let mut nodes = vec![first];
    for _ in 1..n {
        nodes.push(dht_node(SigningKey::from_bytes(&rng.bytes()), Some(&bootstrap)).await);
    }
    let (join, tables) = await_join(started, async || {
        let mut sizes = Vec::with_capacity(nodes.len());
        for node in &nodes {
            sizes.push(node.client.status().await.unwrap().routing_table);
        }
        sizes
    })
    .await;

    let paths: Vec<Path> = (0..n)
        .map(|i| tree.join(&format!("node{i}")).unwrap())
        .collect();
    let chains: Vec<Chain> = nodes
        .iter()
        .zip(&paths)
        .map(|(node, path)| {
            Chain::root_grant(
                &root,
                node.key.principal(),
                path.clone(),
                Validity::for_seconds(3600),
            )
        })
        .collect();
    let record_bytes = PathRecord::new(
        &nodes[0].key,
        paths[0].clone(),
        vec![bootstrap.clone()],
        chains[0].clone(),
        now() * 1000,
        now() + 3600,
    )
    .to_kad()
    .unwrap()
    .value
    .len();
    let publishing = Instant::now();
    let registered = futures::future::join_all(
        nodes
            .iter()
            .zip(paths.iter().zip(&chains))
            .map(|(node, (path, chain))| node.client.register(path.clone(), chain.clone())),
    )
    .await;
    let publish = publishing.elapsed();
    let publish_failures = registered
        .iter()
        .filter(|r| !matches!(r, Ok(r) if r.acks > 0))
        .count();
    tokio::time::sleep(SETTLE).await;
    let idle_cpu = idle_cpu().await;

    // The two columns alternate, so that neither gets the colder start.
    let mut item = Column::default();
    let mut exact = Column::default();
    for (k, (&(from, to), &(exact_from, exact_to))) in items.iter().zip(pairs).enumerate() {
        let path = paths[to].join(&format!("item{k}")).unwrap();
        let t = Instant::now();
        match nodes[from].client.resolve(path).await {
            Ok(r) if r.prefix == paths[to].to_string() && !r.cached => {
                item.add(t.elapsed(), r.requests)
            }
            _ => item.failures += 1,
        }
        let (from, to) = (exact_from, exact_to);
        let t = Instant::now();
        match nodes[from].client.resolve(paths[to].clone()).await {
            Ok(r) if r.prefix == paths[to].to_string() && !r.cached => {
                exact.add(t.elapsed(), r.requests)
            }
            _ => exact.failures += 1,
        }
    }
    for node in &nodes {
        let _ = node.client.shutdown().await;
    }
    DhtResults {
        convergence: Convergence {
            join,
            tables,
            publish,
            publish_failures,
            idle_cpu,
        },
        item,
        exact,
        record_bytes,
    }
}

// ---------------------------------------------------------------------------------------
// Stock rust-libp2p Kademlia

#[derive(NetworkBehaviour)]
struct Stock {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
}

struct Got {
    /// Elapsed and requests so far when the first record arrived.
    first: Option<(Duration, u32)>,
    /// Elapsed and requests when the query ended.
    done: (Duration, u32),
}

enum StockCommand {
    Put {
        record: kad::Record,
        reply: oneshot::Sender<bool>,
    },
    Get {
        key: RecordKey,
        /// Also look this key up, in parallel, without waiting for it.
        beside: Option<RecordKey>,
        started: Instant,
        reply: oneshot::Sender<Got>,
    },
    RoutingTable {
        reply: oneshot::Sender<usize>,
    },
}

struct StockNode {
    peer_id: PeerId,
    addr: Multiaddr,
    commands: mpsc::Sender<StockCommand>,
}

impl StockNode {
    async fn start(key: identity::Keypair, bootstrap: Option<&StockNode>) -> StockNode {
        let peer_id = key.public().to_peer_id();
        let mut swarm = SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_other_transport(|key| {
                Ok::<_, Box<dyn Error + Send + Sync>>(
                    MemoryTransport::default()
                        .upgrade(Version::V1)
                        .authenticate(noise::Config::new(key)?)
                        .multiplex(yamux::Config::default()),
                )
            })
            .unwrap()
            .with_behaviour(|key| {
                let mut kad = kad::Behaviour::new(peer_id, MemoryStore::new(peer_id));
                // Memory-transport nodes never confirm an external address.
                kad.set_mode(Some(kad::Mode::Server));
                Stock {
                    kad,
                    identify: identify::Behaviour::new(identify::Config::new(
                        "/ipfs/id/1.0.0".into(),
                        key.public(),
                    )),
                }
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
            .build();
        swarm.listen_on("/memory/0".parse().unwrap()).unwrap();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        if let Some(b) = bootstrap {
            swarm.dial(b.addr.clone()).unwrap();
        }
        let (commands, receiver) = mpsc::channel(16);
        tokio::spawn(drive_stock(
            swarm,
            receiver,
            bootstrap.map(|b| (b.peer_id, b.addr.clone())),
        ));
        StockNode {
            peer_id,
            addr,
            commands,
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> StockCommand) -> T {
        let (reply, answer) = oneshot::channel();
        self.commands.send(make(reply)).await.unwrap();
        answer.await.unwrap()
    }
}

/// A get under way: when it started, the first record's elapsed time and requests, and
/// where the answer goes.
type PendingGet = (Instant, Option<(Duration, u32)>, oneshot::Sender<Got>);

async fn drive_stock(
    mut swarm: Swarm<Stock>,
    mut commands: mpsc::Receiver<StockCommand>,
    bootstrap: Option<(PeerId, Multiaddr)>,
) {
    let mut puts: HashMap<QueryId, oneshot::Sender<bool>> = HashMap::new();
    let mut gets: HashMap<QueryId, PendingGet> = HashMap::new();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(StockCommand::Put { record, reply }) => {
                    match swarm.behaviour_mut().kad.put_record(record, Quorum::One) {
                        Ok(id) => {
                            puts.insert(id, reply);
                        }
                        Err(_) => {
                            let _ = reply.send(false);
                        }
                    }
                }
                Some(StockCommand::Get { key, beside, started, reply }) => {
                    let id = swarm.behaviour_mut().kad.get_record(key);
                    gets.insert(id, (started, None, reply));
                    if let Some(beside) = beside {
                        swarm.behaviour_mut().kad.get_record(beside);
                    }
                }
                Some(StockCommand::RoutingTable { reply }) => {
                    let size = swarm
                        .behaviour_mut()
                        .kad
                        .kbuckets()
                        .map(|b| b.num_entries())
                        .sum();
                    let _ = reply.send(size);
                }
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                    // Join as the dht node does: on reaching the bootstrap node, add it and
                    // run a Kademlia bootstrap.
                    if let Some((peer, addr)) = &bootstrap
                        && *peer == peer_id
                        && endpoint.is_dialer()
                    {
                        let kad = &mut swarm.behaviour_mut().kad;
                        kad.add_address(peer, addr.clone());
                        let _ = kad.bootstrap();
                    }
                }
                SwarmEvent::Behaviour(StockEvent::Identify(identify::Event::Received {
                    peer_id,
                    info,
                    ..
                })) if info.protocols.contains(&kad::PROTOCOL_NAME) => {
                    for address in info.listen_addrs {
                        swarm.behaviour_mut().kad.add_address(&peer_id, address);
                    }
                }
                SwarmEvent::Behaviour(StockEvent::Kad(kad::Event::OutboundQueryProgressed {
                    id,
                    result,
                    stats,
                    step,
                })) => match result {
                    QueryResult::PutRecord(result) => {
                        if let Some(reply) = puts.remove(&id) {
                            let _ = reply.send(result.is_ok());
                        }
                    }
                    QueryResult::GetRecord(result) => {
                        if let Some((started, first, _)) = gets.get_mut(&id)
                            && first.is_none()
                            && matches!(result, Ok(GetRecordOk::FoundRecord(_)))
                        {
                            *first = Some((started.elapsed(), stats.num_requests()));
                        }
                        if step.last
                            && let Some((started, first, reply)) = gets.remove(&id)
                        {
                            let _ = reply.send(Got {
                                first,
                                done: (started.elapsed(), stats.num_requests()),
                            });
                        }
                    }
                    _ => {}
                },
                _ => {}
            },
        }
    }
}

struct StockResults {
    convergence: Convergence,
    done: Column,
    first: Column,
    /// Query done while a lookup of an absent key (the dht's tree root) runs beside it.
    pattern: Column,
}

async fn run_stock(
    n: usize,
    pairs: &[(usize, usize)],
    record_bytes: usize,
    rng: &mut Rng,
) -> StockResults {
    let keypair = |rng: &mut Rng| identity::Keypair::ed25519_from_bytes(rng.bytes()).unwrap();
    let started = Instant::now();
    let first = StockNode::start(keypair(rng), None).await;
    let mut nodes = vec![first];
    for _ in 1..n {
        let node = StockNode::start(keypair(rng), Some(&nodes[0])).await;
        nodes.push(node);
    }
    let (join, tables) = await_join(started, async || {
        let mut sizes = Vec::with_capacity(nodes.len());
        for node in &nodes {
            sizes.push(node.ask(|reply| StockCommand::RoutingTable { reply }).await);
        }
        sizes
    })
    .await;

    // Keys of the same shape as the dht's (32 bytes), values of a path record's size.
    let keys: Vec<RecordKey> = (0..n).map(|_| RecordKey::new(&rng.bytes())).collect();
    let publishing = Instant::now();
    let put = futures::future::join_all(nodes.iter().zip(&keys).map(|(node, key)| {
        let record = kad::Record::new(key.clone(), vec![7; record_bytes]);
        node.ask(|reply| StockCommand::Put { record, reply })
    }))
    .await;
    let publish = publishing.elapsed();
    let publish_failures = put.iter().filter(|ok| !**ok).count();
    tokio::time::sleep(SETTLE).await;
    let idle_cpu = idle_cpu().await;

    // The dht's lookup pattern for `<root>/node<i>`: the path's key and, in parallel, the
    // tree root's (registered by no one, the same key for every resolution). The columns
    // alternate, each over the pairs in its own order.
    let root_key = RecordKey::new(&rng.bytes());
    let mut done = Column::default();
    let mut first = Column::default();
    let mut pattern = Column::default();
    for (i, &(from, to)) in pairs.iter().enumerate() {
        let started = Instant::now();
        let got = nodes[from]
            .ask(|reply| StockCommand::Get {
                key: keys[to].clone(),
                beside: None,
                started,
                reply,
            })
            .await;
        match got.first {
            Some((elapsed, requests)) => {
                first.add(elapsed, requests);
                done.add(got.done.0, got.done.1);
            }
            None => {
                first.failures += 1;
                done.failures += 1;
            }
        }
        let (from, to) = pairs[(i + pairs.len() / 2) % pairs.len()];
        let started = Instant::now();
        let got = nodes[from]
            .ask(|reply| StockCommand::Get {
                key: keys[to].clone(),
                beside: Some(root_key.clone()),
                started,
                reply,
            })
            .await;
        match got.first {
            Some(_) => pattern.add(got.done.0, got.done.1),
            None => pattern.failures += 1,
        }
    }
    drop(nodes);
    StockResults {
        convergence: Convergence {
            join,
            tables,
            publish,
            publish_failures,
            idle_cpu,
        },
        done,
        first,
        pattern,
    }
}

// ---------------------------------------------------------------------------------------
// Report

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(
        || "not reached".into(),
        |d| format!("{:.2}", d.as_secs_f64()),
    )
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cpu}, {cores} cores, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

fn main() {
    let n = env_or("BENCH_NODES", 50).max(2) as usize;
    let resolves = env_or("BENCH_RESOLVES", 500) as usize;
    let seed = env_or(
        "BENCH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    let mut rng = Rng(seed);

    // The same distinct (from, to) pairs, from != to, for the exact-path dht column and
    // for stock Kademlia; random pairs for the `<path>/item<k>` column.
    let mut pairs: Vec<(usize, usize)> = (0..n)
        .flat_map(|from| {
            (0..n)
                .filter(move |&to| to != from)
                .map(move |to| (from, to))
        })
        .collect();
    rng.shuffle(&mut pairs);
    pairs.truncate(resolves);
    let items: Vec<(usize, usize)> = (0..resolves)
        .map(|_| {
            let from = rng.below(n);
            let to = (from + 1 + rng.below(n - 1)) % n;
            (from, to)
        })
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    eprintln!("dht: {n} nodes …");
    let ours = runtime.block_on(run_dht(n, &pairs, &items, &mut rng));
    eprintln!("stock kad: {n} nodes …");
    let stock = runtime.block_on(run_stock(n, &pairs, ours.record_bytes, &mut rng));
    runtime.shutdown_timeout(Duration::from_secs(1));

    println!(
        "## Resolve over {n} in-process nodes (memory transport)\n\n\
         {} resolutions per column; seed {seed} (`BENCH_SEED={seed}` repeats the keys and pairs); \
         record value {} bytes; {}.\n",
        pairs.len().min(items.len()),
        ours.record_bytes,
        machine()
    );
    println!(
        "| | dht `<path>/item<k>` | dht `<path>` | stock kad: query done | stock kad: dht's lookups | stock kad: first record | dht `<path>` ÷ stock done | dht `<path>` ÷ stock, dht's lookups | dht `item` ÷ stock done |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let columns = [
        &ours.item,
        &ours.exact,
        &stock.done,
        &stock.pattern,
        &stock.first,
    ];
    let row = |name: &str, f: &dyn Fn(&Column) -> f64, digits: usize| {
        let v: Vec<f64> = columns.iter().map(|c| f(c)).collect();
        println!(
            "| {name} | {:.digits$} | {:.digits$} | {:.digits$} | {:.digits$} | {:.digits$} | {} | {} | {} |",
            v[0],
            v[1],
            v[2],
            v[3],
            v[4],
            ratio(v[1], v[2]),
            ratio(v[1], v[3]),
            ratio(v[0], v[2]),
        );
    };
    row("latency p50 (ms)", &|c| c.latency(0.50), 2);
    row("latency p99 (ms)", &|c| c.latency(0.99), 2);
    row("requests p50", &|c| c.requests(0.50), 0);
    row("requests p99", &|c| c.requests(0.99), 0);
    row("requests max", &|c| c.requests(1.0), 0);
    println!(
        "| failed | {} | {} | {} | {} | {} | | | |",
        ours.item.failures,
        ours.exact.failures,
        stock.done.failures,
        stock.pattern.failures,
        stock.first.failures
    );

    println!(
        "\nlog2(N) = {:.2} for N = {n}. Kademlia does not report hops: `requests` counts every \
         peer a lookup asked (α = 3 at a time, until the k = 20 closest have answered), so \
         dht `<path>` p50 of {:.0} requests is about {:.1} rounds of α.",
        (n as f64).log2(),
        ours.exact.requests(0.50),
        ours.exact.requests(0.50) / 3.0
    );

    println!("\n## Convergence\n");
    println!("| | dht | stock kad | dht ÷ stock |");
    println!("|---|---:|---:|---:|");
    let (a, b) = (&ours.convergence, &stock.convergence);
    println!(
        "| join: every routing table ≥ {} peers (s) | {} | {} | {} |",
        K.min(n - 1),
        secs(a.join),
        secs(b.join),
        match (a.join, b.join) {
            (Some(x), Some(y)) => ratio(x.as_secs_f64(), y.as_secs_f64()),
            _ => "–".into(),
        }
    );
    println!(
        "| routing table then, min / median | {} / {} | {} / {} | |",
        a.tables.0, a.tables.1, b.tables.0, b.tables.1
    );
    println!(
        "| publish: {n} concurrent puts done (s) | {:.2} | {:.2} | {} |",
        a.publish.as_secs_f64(),
        b.publish.as_secs_f64(),
        ratio(a.publish.as_secs_f64(), b.publish.as_secs_f64())
    );
    println!(
        "| puts that failed | {} | {} | |",
        a.publish_failures, b.publish_failures
    );
    let cpu = |c: Option<f64>| c.map_or_else(|| "–".into(), |c| format!("{c:.0}"));
    println!(
        "| idle overlay CPU (% of one core) | {} | {} | {} |",
        cpu(a.idle_cpu),
        cpu(b.idle_cpu),
        match (a.idle_cpu, b.idle_cpu) {
            // Below 1 % the measure (10 ms ticks) says nothing.
            (Some(x), Some(y)) if y >= 1.0 => ratio(x, y),
            _ => "–".into(),
        }
    );
}
