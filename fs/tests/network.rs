//! The file system across nodes on the memory transport: placement on R = 3 replicas,
//! reads from another node, repair after nodes leave.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use fs::net::{self, Network};
use fs::store::Store;
use fs::{Client, Config, ItemId, Replica, repair};
use keys::{Chain, Identity, Path, Validity};
use libp2p::Multiaddr;

struct Node {
    identity: Arc<Identity>,
    dht: dht::Client,
    network: Arc<Network>,
    repair: Arc<repair::Counters>,
    addr: Multiaddr,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn trace() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Repair as the tests run it: rounds every 500 ms.
fn test_repair() -> repair::Config {
    repair::Config {
        interval: Duration::from_millis(500),
        settle: Duration::from_millis(200),
        gc: fs::gc::Config {
            grace: Duration::from_secs(2),
            batch: 1024,
        },
        ..repair::Config::new()
    }
}

async fn start_node(bootstrap: Option<&Multiaddr>, repairing: bool) -> Node {
    start_node_with(bootstrap, repairing.then(test_repair)).await
}

/// A node; with a repair task running `repair` if given.
async fn start_node_with(bootstrap: Option<&Multiaddr>, repair: Option<repair::Config>) -> Node {
    start_node_configured(bootstrap, repair, net::Config::new()).await
}

/// [`start_node_with`], its block protocol configured by `net_config`.
async fn start_node_configured(
    bootstrap: Option<&Multiaddr>,
    repair: Option<repair::Config>,
    net_config: net::Config,
) -> Node {
    let identity = Arc::new(Identity::generate());
    let key = identity.signing_key().clone();
    let config = dht::Config::new()
        .with_listen(vec!["/memory/0".parse().unwrap()])
        .with_bootstrap(bootstrap.into_iter().cloned().collect());
    let (dht, task) = dht::start(
        key.clone(),
        config,
        dht::Store::in_memory(1000),
        dht::Transports::Memory,
    )
    .await
    .unwrap();
    let addr = dht.status().await.unwrap().listen_addrs[0].parse().unwrap();
    let replica = Replica::new(Store::in_memory().unwrap());
    let counters = Arc::new(net::Counters::default());
    let public = Arc::new(protocols::wire::encode(&identity.public()).unwrap());
    let serving = net::serve(
        replica.clone(),
        public.clone(),
        dht.streams(),
        &net_config,
        counters.clone(),
    )
    .unwrap();
    let network = Arc::new(Network::new(
        replica,
        public,
        key.peer_id(),
        dht.clone(),
        net_config,
        counters,
    ));
    let counters_of_repair = Arc::new(repair::Counters::default());
    let mut tasks = vec![
        serving,
        tokio::spawn(async move {
            let _ = task.await;
        }),
    ];
    if let Some(config) = repair {
        tasks.push(repair::spawn(
            network.clone(),
            dht.membership(),
            config,
            counters_of_repair.clone(),
        ));
    }
    Node {
        identity,
        dht,
        network,
        repair: counters_of_repair,
        addr,
        _tasks: tasks,
    }
}

/// The tree rooted at `owner`'s principal, and a client writing it through `owner`'s node
/// with the root grant.
fn owner_writer(owner: &Node, config: Config) -> (Path, Client<Network>) {
    owner_client(owner, owner, config)
}

/// The tree rooted at `owner`'s principal, and a client of `owner`'s with the root grant
/// through `node`'s node.
fn owner_client(owner: &Node, node: &Node, config: Config) -> (Path, Client<Network>) {
    let tree = Path::root_of(owner.identity.principal());
    let chain = Chain::root_grant(
        owner.identity.signing_key(),
        owner.identity.principal(),
        tree.clone(),
        Validity::for_seconds(3600),
    );
    let client = Client::new(
        node.network.clone(),
        owner.identity.clone(),
        vec![chain],
        config,
    );
    (tree, client)
}

/// `n` nodes joined through the first, each knowing all the others.
async fn start_net(n: usize) -> Vec<Node> {
    start_net_repairing(n, true).await
}

/// [`start_net`], with repair running on every node or on none.
async fn start_net_repairing(n: usize, repairing: bool) -> Vec<Node> {
    start_net_with(n, repairing.then(test_repair)).await
}

/// [`start_net`], every node running repair with `repair` if given.
async fn start_net_with(n: usize, repair: Option<repair::Config>) -> Vec<Node> {
    let first = start_node_with(None, repair.clone()).await;
    let mut nodes = vec![first];
    for _ in 1..n {
        let addr = nodes[0].addr.clone();
        nodes.push(start_node_with(Some(&addr), repair.clone()).await);
    }
    for node in &nodes {
        let dht = node.dht.clone();
        eventually(
            "the routing tables to fill",
            Duration::from_secs(20),
            async || dht.status().await.unwrap().routing_table >= n - 1,
        )
        .await;
    }
    nodes
}

async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7 + i / 251) as u8).wrapping_add(seed))
        .collect()
}

/// Every item held anywhere, with the number of live nodes holding it.
fn copies(nodes: &[&Node]) -> std::collections::BTreeMap<ItemId, usize> {
    let mut count = std::collections::BTreeMap::new();
    for node in nodes {
        let store = node.network.local().store();
        for id in store.chunk_ids(None, 100_000).unwrap() {
            *count.entry(ItemId::Chunk(id)).or_insert(0) += 1;
        }
        for id in store.inode_ids(None, 100_000).unwrap() {
            *count.entry(ItemId::Inode(id)).or_insert(0) += 1;
        }
    }
    count
}

/// `nodes`, nearest to `id` first (every node knows every other).
fn by_distance<'a>(nodes: &'a [Node], id: &fs::ChunkId) -> Vec<&'a Node> {
    let peer = |n: &Node| n.identity.signing_key().peer_id();
    let ranked = nodes[0].dht.closest_known(id.as_bytes(), nodes.len());
    assert_eq!(ranked.len(), nodes.len());
    ranked
        .iter()
        .map(|c| nodes.iter().find(|n| peer(n) == c.peer).unwrap())
        .collect()
}

/// Stores `bytes` as a chunk owned by nobody on `node` alone.
fn hold(node: &Node, bytes: &[u8]) {
    let id = fs::ChunkId::of(bytes);
    node.network
        .local()
        .put_chunks(&fs::InodeId([0; 32]), &[(id, bytes)])
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_survive_two_departures() {
    trace();
    let nodes = start_net(5).await;
    // The tree's owner writes on node 0; node 4 reads after a share.
    let owner = &nodes[0];
    let config = Config::new().with_chunk_size(64 * 1024);
    let (tree, writer) = owner_writer(owner, config.clone());
    let files: Vec<(Path, Vec<u8>)> = vec![
        (tree.join("empty").unwrap(), Vec::new()),
        (
            tree.join("docs").unwrap().join("small").unwrap(),
            data(5000, 1),
        ),
        (
            tree.join("docs").unwrap().join("large").unwrap(),
            data(3 << 20, 2),
        ),
    ];
    for (path, bytes) in &files {
        writer.put(path, bytes.as_slice(), |_| {}).await.unwrap();
    }
    let reader_node = &nodes[4];
    let reader = Client::new(
        reader_node.network.clone(),
        reader_node.identity.clone(),
        vec![],
        config,
    );
    let denied = reader.stat(&files[1].0).await;
    assert!(
        matches!(denied, Err(fs::Error::PermissionDenied { .. })),
        "{denied:?}"
    );
    writer
        .share(&tree, &reader_node.identity.public(), None)
        .await
        .unwrap();
    let read_all = async |reader: &Client<Network>| {
        for (path, bytes) in &files {
            let mut out = Vec::new();
            reader.get(path, &mut out, |_| {}).await.unwrap();
            assert!(out == *bytes, "{path} differs");
        }
    };
    read_all(&reader).await;
    // Every item ends up on exactly R = 3 nodes.
    let all: Vec<&Node> = nodes.iter().collect();
    eventually(
        "three copies of everything",
        Duration::from_secs(30),
        async || copies(&all).values().all(|&n| n >= 3),
    )
    .await;
    let items = copies(&all).len();
    assert!(items > 50, "{items} items");
    // Two nodes leave, one after the other, with repair in between.
    for leaving in [1usize, 2] {
        nodes[leaving].dht.shutdown().await.unwrap();
        let live: Vec<&Node> = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i == 0 || *i > leaving)
            .map(|(_, n)| n)
            .collect();
        eventually(
            "repair back to three copies",
            Duration::from_secs(60),
            async || {
                let c = copies(&live);
                let short = c.values().filter(|&&n| n < 3).count();
                let under: Vec<u64> = live
                    .iter()
                    .map(|n| n.repair.status().under_replicated)
                    .collect();
                eprintln!(
                    "{} items of {items}, {short} with fewer than 3 copies, under-replicated {under:?}",
                    c.len()
                );
                c.len() == items && short == 0
            },
        )
        .await;
        eventually(
            "no node counting under-replicated items",
            Duration::from_secs(30),
            async || {
                live.iter().all(|n| {
                    n.repair.status().under_replicated == 0 && n.repair.status().rounds > 0
                })
            },
        )
        .await;
        read_all(&reader).await;
    }
    let sent: u64 = nodes.iter().map(|n| n.repair.status().bytes_sent).sum();
    assert!(sent > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_refuses_forged_versions_and_bad_chunks() {
    trace();
    let nodes = start_net(4).await;
    let owner = &nodes[0];
    let (tree, writer) = owner_writer(owner, Config::new());
    let file = tree.join("a").unwrap();
    writer.put(&file, &b"genuine"[..], |_| {}).await.unwrap();
    let stat = writer.stat(&file).await.unwrap();
    let genuine = {
        use fs::Blocks;
        let versions = owner.network.get_versions(stat.inode).await.unwrap();
        fs::inode::winner(&versions).unwrap().clone()
    };

    // Node 3 holds no writecap: its client refuses to write, and a version it forges
    // (new contents, its own key, the owner's chain) is refused by every node.
    let mallory = &nodes[3];
    let refused = Client::new(
        mallory.network.clone(),
        mallory.identity.clone(),
        vec![],
        Config::new(),
    )
    .put(&file, &b"forged"[..], |_| {})
    .await;
    assert!(
        matches!(
            refused,
            Err(fs::Error::PermissionDenied { .. }) | Err(fs::Error::NotAuthorized { .. })
        ),
        "{refused:?}"
    );
    let mut forged = (*genuine.inode).clone();
    forged.seq += 1;
    forged.parents = vec![genuine.version];
    forged.writer = mallory.identity.signing_key().public_key();
    let forged = fs::inode::Signed::sign(&forged, mallory.identity.signing_key()).unwrap();
    for node in &nodes {
        let answer = mallory
            .network
            .request(
                node.dht.status().await.unwrap().peer_id.parse().unwrap(),
                protocols::block::Request::PutVersion {
                    inode: stat.inode.0,
                    signed: forged.clone(),
                },
            )
            .await
            .unwrap();
        assert!(
            matches!(
                answer,
                protocols::block::Response::Refused(
                    protocols::block::Refusal::NotAuthorized { .. }
                )
            ),
            "{answer:?}"
        );
        assert_eq!(
            node.network
                .local()
                .counters()
                .refused_versions
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // A chunk whose bytes do not match its id is refused too.
        let answer = mallory
            .network
            .request(
                node.dht.status().await.unwrap().peer_id.parse().unwrap(),
                protocols::block::Request::PutChunk {
                    id: [7; 32],
                    owner: [8; 32],
                    data: b"not those bytes".to_vec(),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            answer,
            protocols::block::Response::Refused(protocols::block::Refusal::Mismatch)
        );
    }
    // Chunks offered at once may be stored in one commit (group commit); a bad one among
    // them fails alone.
    let target: libp2p::PeerId = nodes[1]
        .dht
        .status()
        .await
        .unwrap()
        .peer_id
        .parse()
        .unwrap();
    let offers: Vec<([u8; 32], Vec<u8>)> = (0..12u8)
        .map(|n| {
            let bytes = data(100_000, n);
            let id = if n == 5 {
                [9; 32]
            } else {
                *fs::id::ChunkId::of(&bytes).as_bytes()
            };
            (id, bytes)
        })
        .collect();
    let answers = futures::future::join_all(offers.iter().map(|(id, bytes)| {
        mallory.network.request(
            target,
            protocols::block::Request::PutChunk {
                id: *id,
                owner: [8; 32],
                data: bytes.clone(),
            },
        )
    }))
    .await;
    for (n, answer) in answers.into_iter().enumerate() {
        let expected = if n == 5 {
            protocols::block::Response::Refused(protocols::block::Refusal::Mismatch)
        } else {
            protocols::block::Response::Stored { new: true }
        };
        assert_eq!(answer.unwrap(), expected, "offer {n}");
    }
    let store = nodes[1].network.local().store();
    for (n, (id, bytes)) in offers.iter().enumerate() {
        let held = store.get_chunk(&fs::id::ChunkId(*id)).unwrap();
        assert_eq!(held.as_ref(), (n != 5).then_some(bytes), "offer {n}");
    }
    let mut out = Vec::new();
    writer.get(&file, &mut out, |_| {}).await.unwrap();
    assert_eq!(out, b"genuine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_no_kept_version_refers_to_are_collected() {
    trace();
    let nodes = start_net(3).await;
    let owner = &nodes[0];
    let (tree, writer) = owner_writer(owner, Config::new().with_chunk_size(4096));
    let file = tree.join("often").unwrap();
    // 20 versions of 5 chunks each: the replicas keep the last 8 (KEEP_HISTORY), so the chunks
    // of the first 12 are garbage (the assertion asks for at least 11 of them).
    for round in 0..20u8 {
        writer
            .put(&file, data(5 * 4096, round).as_slice(), |_| {})
            .await
            .unwrap();
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let referenced = || {
        let mut used = std::collections::BTreeSet::new();
        for node in &all {
            let store = node.network.local().store();
            for inode in store.inode_ids(None, 10_000).unwrap() {
                for v in node.network.local().versions(&inode).unwrap() {
                    used.extend(v.inode.chunks.iter().map(|c| c.id));
                }
            }
        }
        used
    };
    eventually(
        "unreferenced chunks to be collected",
        Duration::from_secs(60),
        async || {
            let used = referenced();
            all.iter().all(|n| {
                n.network
                    .local()
                    .store()
                    .chunk_ids(None, 100_000)
                    .unwrap()
                    .iter()
                    .all(|c| used.contains(c))
            })
        },
    )
    .await;
    let collected: u64 = nodes.iter().map(|n| n.repair.status().collected).sum();
    assert!(collected >= 3 * 11 * 5, "{collected} collected");
    let mut out = Vec::new();
    writer.get(&file, &mut out, |_| {}).await.unwrap();
    assert_eq!(out, data(5 * 4096, 19));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_a_peer_offered_first_under_another_inode_is_not_collected() {
    // A replica records the inode a chunk belongs to as the peer that stored it says; it
    // cannot check that without keys. A peer that races the writer (one of the replicas
    // the writer sent the chunk to, say) offers it to the others first under another
    // inode, one that does not refer to it: had the first claim stood, collection would
    // have taken the chunk from under the file everywhere the peer got there first.
    trace();
    let nodes = start_net_repairing(3, false).await;
    let (tree, writer) = owner_writer(&nodes[0], Config::new().with_chunk_size(4096));
    let (file, other) = (tree.join("kept").unwrap(), tree.join("other").unwrap());
    let contents = data(3 * 4096, 1);
    writer
        .put(&file, contents.as_slice(), |_| {})
        .await
        .unwrap();
    writer
        .put(&other, data(4096, 2).as_slice(), |_| {})
        .await
        .unwrap();
    let file_id = writer.stat(&file).await.unwrap().inode;
    let other_id = writer.stat(&other).await.unwrap().inode;
    let replica = &nodes[1];
    let store = replica.network.local().store();
    // The put returned once W = 2 replicas held each chunk; the third may come later.
    let of_the_file = || {
        store
            .chunk_ids(None, 1000)
            .unwrap()
            .into_iter()
            .find(|c| store.owner(c).unwrap() == Some(file_id))
    };
    eventually(
        "a chunk of the file on every replica",
        Duration::from_secs(30),
        async || of_the_file().is_some(),
    )
    .await;
    let chunk = of_the_file().unwrap();
    let bytes = store.get_chunk(&chunk).unwrap().unwrap();
    // The order of the race: the other peer's offer lands first, the writer's after it.
    store.remove_chunk(&chunk).unwrap();
    let offer = |owner: fs::InodeId| protocols::block::Request::PutChunk {
        id: chunk.0,
        owner: owner.0,
        data: bytes.clone(),
    };
    let to = replica.network.me();
    // A collector that waits an hour marks the chunk under the false claim, and forgets
    // the mark once the chunk is disputed: repair leaves marked chunks alone.
    let mut patient = fs::gc::Collector::new(fs::gc::Config {
        grace: Duration::from_secs(3600),
        batch: 1024,
    });
    let counters = fs::gc::Counters::default();
    for (from, owner) in [(&nodes[2], other_id), (&nodes[0], file_id)] {
        let answer = from.network.request(to, offer(owner)).await.unwrap();
        assert!(
            matches!(answer, protocols::block::Response::Stored { .. }),
            "{answer:?}"
        );
        patient.pass(&replica.network, &counters).await.unwrap();
        assert_eq!(patient.unreferenced(&chunk), owner == other_id);
    }
    // No grace: a chunk found unreferenced goes at the pass that finds it.
    let mut collector = fs::gc::Collector::new(fs::gc::Config {
        grace: Duration::ZERO,
        batch: 1024,
    });
    for _ in 0..3 {
        collector.pass(&replica.network, &counters).await.unwrap();
    }
    assert!(
        store.has_chunk(&chunk).unwrap(),
        "the chunk was collected from under the file that refers to it"
    );
    assert_eq!(store.owner(&chunk).unwrap(), Some(fs::store::NO_OWNER));
    // The same passes do collect what nothing refers to: they ran.
    let stray = fs::chunk::seal(&keys::DataKey::generate(), &other_id, 7, b"stray").unwrap();
    store
        .put_sealed_of(&other_id, std::slice::from_ref(&stray))
        .unwrap();
    for _ in 0..3 {
        collector.pass(&replica.network, &counters).await.unwrap();
    }
    assert!(
        !store.has_chunk(&stray.id()).unwrap(),
        "a stray chunk was kept"
    );
    let mut out = Vec::new();
    writer.get(&file, &mut out, |_| {}).await.unwrap();
    assert_eq!(out, contents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_looks_at_each_chunk_once_a_sweep() {
    // Reading a chunk's inode takes an overlay lookup on a large network: a collector
    // called at every repair round looks at the store once every quarter of the grace
    // period, not at every call.
    trace();
    let nodes = start_net_repairing(3, false).await;
    let owner = &nodes[0];
    let (tree, writer) = owner_writer(owner, Config::new().with_chunk_size(4096));
    writer
        .put(
            &tree.join("f").unwrap(),
            data(5 * 4096, 1).as_slice(),
            |_| {},
        )
        .await
        .unwrap();
    let node = &nodes[1];
    let held = node
        .network
        .local()
        .store()
        .chunk_ids(None, 1000)
        .unwrap()
        .len() as u64;
    assert!(held >= 5, "{held} chunks held");
    // A sweep every 5 s: room for a sweep's few calls on a loaded machine (with one
    // every 500 ms, twenty calls under CI beside a simulation spanned two sweeps).
    let grace = Duration::from_secs(20);
    let mut collector = fs::gc::Collector::new(fs::gc::Config { grace, batch: 2 });
    let counters = fs::gc::Counters::default();
    let looked = || {
        counters
            .looked_at
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // Batches of two: a sweep takes several calls, then calls do nothing until the next.
    let started = Instant::now();
    for sweep in 1..=2 {
        for _ in 0..held + 4 {
            collector.pass(&node.network, &counters).await.unwrap();
        }
        let period_end = started + grace / 4 * sweep as u32;
        if Instant::now() < period_end {
            assert_eq!(looked(), sweep * held);
            if sweep == 1 {
                tokio::time::sleep_until(period_end.into()).await;
            }
        } else {
            // Calls slower than a period (a machine far too loaded) may start the next
            // sweep among them: no fewer looks, then.
            assert!(looked() >= sweep * held, "{} looks", looked());
            break;
        }
    }
    assert_eq!(
        counters
            .collected
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_found_unreferenced_during_its_write_is_looked_at_again_at_the_next_pass() {
    // The chunks of a write under way are stored before the version that refers to
    // them. A sweep that finds them then marks them unreferenced, and repair leaves marked
    // chunks alone: the mark must not outlive the write until the next sweep.
    trace();
    let nodes = start_net_repairing(3, false).await;
    let owner = &nodes[0];
    let config = Config {
        max_dirty_chunks: 2,
        ..Config::new().with_chunk_size(4096)
    };
    let (tree, writer) = owner_writer(owner, config);
    let mut handle = writer.create(&tree.join("slow").unwrap()).await.unwrap();
    writer
        .write(&mut handle, 0, &data(6 * 4096, 3))
        .await
        .unwrap();
    let node = &nodes[1];
    let store = node.network.local().store();
    // The buffered chunks go out in the background (no fsync yet). Only the file's own
    // count (a directory's chunk stored meanwhile is referenced: counting it, the wait
    // ended one file chunk early under a loaded CI run).
    let file = handle.stat().inode;
    let files_chunks = || {
        store
            .chunk_ids(None, 1000)
            .unwrap()
            .into_iter()
            .filter(|c| store.owner(c).unwrap() == Some(file))
            .collect::<Vec<_>>()
    };
    eventually(
        "the written chunks to be stored",
        Duration::from_secs(30),
        async || files_chunks().len() >= 6,
    )
    .await;
    let held = files_chunks();
    let grace = Duration::from_secs(3600);
    let mut collector = fs::gc::Collector::new(fs::gc::Config { grace, batch: 1024 });
    let counters = fs::gc::Counters::default();
    collector.pass(&node.network, &counters).await.unwrap();
    let marked: Vec<_> = held.iter().filter(|c| collector.unreferenced(c)).collect();
    assert_eq!(
        marked.len(),
        6,
        "the sweep finds the written chunks unreferenced"
    );
    writer.fsync(&mut handle).await.unwrap();
    collector.pass(&node.network, &counters).await.unwrap();
    let still: Vec<_> = marked
        .iter()
        .filter(|c| collector.unreferenced(c))
        .collect();
    assert!(
        still.is_empty(),
        "{} chunks still marked after the fsync",
        still.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_held_away_from_where_it_belongs_is_moved_there_then_dropped() {
    trace();
    let nodes = start_net(6).await;
    // A chunk only a node outside its R = 3 nearest holds (as a node that held it before
    // nearer nodes joined would). Its owner is unknown, so collection never takes it.
    let bytes = data(4000, 9);
    let id = fs::ChunkId::of(&bytes);
    let mut away = None;
    for node in &nodes {
        if !node.network.at_home(id.as_bytes()) {
            away = Some(node);
            break;
        }
    }
    let away = away.expect("three of six nodes are not among a key's three nearest");
    away.network
        .local()
        .put_chunks(&fs::InodeId([0; 32]), &[(id, bytes.as_slice())])
        .unwrap();
    let all: Vec<&Node> = nodes.iter().collect();
    // Copied to the three where it belongs first, then dropped where it was: the copies
    // never fall below one, and end at three, none of them away.
    eventually(
        "the copy moved to where it belongs",
        Duration::from_secs(30),
        async || {
            let held = copies(&all)
                .get(&fs::ItemId::Chunk(id))
                .copied()
                .unwrap_or(0);
            assert!(held >= 1, "the only copy was dropped before it was copied");
            !away.network.local().store().has_chunk(&id).unwrap() && held == 3
        },
    )
    .await;
    assert_eq!(away.repair.status().handed_off, 1);
    for node in &nodes {
        let holds = node.network.local().store().has_chunk(&id).unwrap();
        let home = node.network.at_home(id.as_bytes());
        assert_eq!(
            holds, home,
            "a copy where it does not belong, or one missing"
        );
    }
    // And it still reads from anywhere.
    let reader = &nodes
        .iter()
        .find(|n| !std::ptr::eq(*n, away))
        .unwrap()
        .network;
    let chunk = fs::Blocks::get_chunk(reader.as_ref(), id).await.unwrap();
    assert_eq!(chunk, bytes);
}

/// A copy held away from where it belongs that needs nothing from its holder (one of the
/// nodes where it belongs holds it, and sends the copies) is placed, with an overlay
/// lookup, at one full round, then left alone for `away_recheck`, not placed again at
/// every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_held_away_that_needs_nothing_is_not_placed_at_every_round() {
    trace();
    // Rounds are called here, not by repair tasks.
    let nodes = start_net_repairing(12, false).await;
    let bytes = data(4000, 13);
    let id = fs::ChunkId::of(&bytes);
    let ranked = by_distance(&nodes, &id);
    let node = |rank: usize| ranked[rank];
    // The nearest holds it, and the farthest: the nearest is the one that sends.
    for rank in [0, 11] {
        hold(node(rank), &bytes);
    }
    let far = node(11);
    assert!(!far.network.at_home(id.as_bytes()));
    let round = async |config: &repair::Config, away: &mut repair::State| {
        repair::round(&far.network, config, &far.repair, &|_| false, true, away)
            .await
            .unwrap();
        far.repair
            .surveyed
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let lookups = || {
        far.network
            .counters()
            .lookups
            .repair
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let config = repair::Config::new();
    let mut away = repair::State::default();
    assert_eq!(round(&config, &mut away).await, 1);
    assert_eq!(lookups(), 1);
    assert_eq!(round(&config, &mut away).await, 1, "placed again");
    assert_eq!(lookups(), 1);
    // Still held, not handed off: the nearest has not sent the copies yet.
    assert!(far.network.local().store().has_chunk(&id).unwrap());
    // With no wait, every full round places it again.
    let eager = repair::Config {
        away_recheck: Duration::ZERO,
        ..repair::Config::new()
    };
    let mut away = repair::State::default();
    assert_eq!(round(&eager, &mut away).await, 2);
    assert_eq!(round(&eager, &mut away).await, 3);
}

/// Nodes place items by their own routing tables, which disagree under churn, so the
/// holder one node counts on to send the copies may never do so. A holder that keeps
/// finding an item short while another was to send sends them itself after `takeover`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_sends_the_copies_another_holder_left_missing() {
    trace();
    // Rounds are called here, not by repair tasks: the nearest holder never sends.
    let nodes = start_net_repairing(6, false).await;
    let bytes = data(4000, 21);
    let id = fs::ChunkId::of(&bytes);
    let ranked = by_distance(&nodes, &id);
    let node = |rank: usize| ranked[rank];
    // The nearest and the second nearest hold it; the third, where it belongs too, not.
    for rank in [0, 1] {
        hold(node(rank), &bytes);
    }
    let (second, third) = (node(1), node(2));
    assert!(second.network.at_home(id.as_bytes()));
    let config = repair::Config {
        takeover: Duration::from_millis(300),
        ..repair::Config::new()
    };
    let mut state = repair::State::default();
    let round = async |state: &mut repair::State| {
        repair::round(
            &second.network,
            &config,
            &second.repair,
            &|_| false,
            false,
            state,
        )
        .await
        .unwrap();
        second.repair.status()
    };
    let third_holds = || third.network.local().store().has_chunk(&id).unwrap();
    let status = round(&mut state).await;
    assert!(!third_holds(), "sent while the nearest holder was to send");
    assert_eq!((status.under_replicated, status.copies_sent), (1, 0));
    // Mended meanwhile (as by the nearest), then short again: the wait starts over.
    hold(third, &bytes);
    assert_eq!(round(&mut state).await.under_replicated, 0);
    assert!(third.network.local().store().remove_chunk(&id).unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = round(&mut state).await;
    assert!(
        !third_holds(),
        "sent at once, on an earlier shortage's wait"
    );
    assert_eq!((status.under_replicated, status.copies_sent), (1, 0));
    // Still short after the wait: the second sends.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = round(&mut state).await;
    assert!(third_holds());
    assert_eq!((status.taken_over, status.copies_sent), (1, 1));
    assert_eq!(status.under_replicated, 0);
    // Nothing is short any more, and nothing is sent again.
    let status = round(&mut state).await;
    assert_eq!((status.taken_over, status.copies_sent), (1, 1));
    assert_eq!(status.under_replicated, 0);
}

/// An item held only farther out than the R + 4 nodes nearest its key (as one put before
/// many nodes joined nearer, and not yet handed off to them, is) still reads: a read that
/// finds it at none of those asks the nodes nearest the key that the overlay finds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_held_farther_out_than_its_candidates_still_reads() {
    trace();
    // Without repair, nothing moves the copy to where it belongs.
    let nodes = start_net_repairing(12, false).await;
    let bytes = data(4000, 11);
    let id = fs::ChunkId::of(&bytes);
    let peer = |n: &Node| n.identity.signing_key().peer_id();
    // Every node knows every other: the first's view ranks them all.
    let ranked = nodes[0].dht.closest_known(id.as_bytes(), nodes.len());
    assert_eq!(ranked.len(), nodes.len());
    let node = |rank: usize| nodes.iter().find(|n| peer(n) == ranked[rank].peer).unwrap();
    // The farthest of twelve holds it, past the R + 4 = 7 nearest that a read asks first.
    node(11)
        .network
        .local()
        .put_chunks(&fs::InodeId([0; 32]), &[(id, bytes.as_slice())])
        .unwrap();
    let chunk = fs::Blocks::get_chunk(node(0).network.as_ref(), id)
        .await
        .unwrap();
    assert_eq!(chunk, bytes);
}

/// The same for a file's inode: its versions held only by the farthest of twelve nodes,
/// the file still reads through another node (its directory names it, so the read looks
/// farther out before it calls the file missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_versions_are_held_farther_out_still_reads() {
    use protocols::block::{Request, Response};
    trace();
    let nodes = start_net_repairing(12, false).await;
    let owner = &nodes[0];
    let (tree, writer) = owner_writer(owner, Config::new());
    let file = tree.join("far").unwrap();
    writer.put(&file, &b"held far"[..], |_| {}).await.unwrap();
    let inode = writer.stat(&file).await.unwrap().inode;
    let peer = |n: &Node| n.identity.signing_key().peer_id();

    // Every version of the inode, from whichever nodes hold them.
    let mut signed = Vec::new();
    for node in &nodes {
        if let Response::Versions { signed: held } = owner
            .network
            .request(peer(node), Request::GetVersions { inode: inode.0 })
            .await
            .unwrap()
        {
            signed.extend(held);
        }
    }
    assert!(!signed.is_empty());
    // Moved to the farthest node from the inode's id (every node knows every other).
    let ranked = owner.dht.closest_known(inode.as_bytes(), nodes.len());
    assert_eq!(ranked.len(), nodes.len());
    let node = |rank: usize| nodes.iter().find(|n| peer(n) == ranked[rank].peer).unwrap();
    let far = node(nodes.len() - 1);
    for bytes in &signed {
        let answer = owner
            .network
            .request(
                peer(far),
                Request::PutVersion {
                    inode: inode.0,
                    signed: bytes.clone(),
                },
            )
            .await
            .unwrap();
        assert!(matches!(answer, Response::Stored { .. }), "{answer:?}");
    }
    let versions = {
        use fs::Blocks;
        far.network.local().get_versions(inode).await.unwrap()
    };
    for n in nodes.iter().filter(|n| !std::ptr::eq(*n, far)) {
        for v in &versions {
            n.network
                .local()
                .store()
                .remove_version(&inode, &v.version)
                .unwrap();
        }
    }

    // Read through another node (not the writer's: its cache holds the versions).
    let reading = nodes
        .iter()
        .find(|n| !std::ptr::eq(*n, owner) && !std::ptr::eq(*n, far))
        .unwrap();
    let (_, reader) = owner_client(owner, reading, Config::new());
    let mut out = Vec::new();
    reader.get(&file, &mut out, |_| {}).await.unwrap();
    assert_eq!(out, b"held far");
}

/// A version held away from its inode's nodes after they moved more than the kept history
/// past it (a file rewritten many times while one old copy sat elsewhere) is neither sent
/// back to them at every round nor counted short for good: they refuse it as superseded,
/// and the copy is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_version_held_away_is_dropped_not_copied_back() {
    trace();
    let nodes = start_net(6).await;
    let owner = &nodes[0];
    let (tree, writer) = owner_writer(owner, Config::new());
    let file = tree.join("often").unwrap();
    writer.put(&file, &b"0"[..], |_| {}).await.unwrap();
    let inode = writer.stat(&file).await.unwrap().inode;
    let first = {
        use fs::Blocks;
        owner.network.get_versions(inode).await.unwrap()[0].clone()
    };
    for i in 1..=fs::replica::KEEP_HISTORY + 2 {
        writer
            .put(&file, i.to_string().as_bytes(), |_| {})
            .await
            .unwrap();
    }
    let mut away = None;
    for node in &nodes {
        if !node.network.at_home(inode.as_bytes()) {
            away = Some(node);
            break;
        }
    }
    let away = away.expect("three of six nodes are not among a key's three nearest");
    let store = away.network.local().store();
    store
        .put_version(&inode, &first.version, first.inode.seq, &first.signed)
        .unwrap();
    eventually(
        "the superseded copy to be dropped",
        Duration::from_secs(30),
        async || !store.has_version(&inode, &first.version).unwrap(),
    )
    .await;
    assert!(away.repair.status().handed_off >= 1);
    // The file reads as its newest version.
    let mut out = Vec::new();
    writer.get(&file, &mut out, |_| {}).await.unwrap();
    assert_eq!(out, (fs::replica::KEEP_HISTORY + 2).to_string().as_bytes());
}

/// A replica that lies: it acknowledges every write without keeping anything, and
/// answers every chunk asked of it with bytes of its own — or, once silent, no answer
/// at all (their streams are held open) to reads or to writes.
struct Liar {
    addr: Multiaddr,
    /// Chunks it answered (with the wrong bytes).
    lies: Arc<std::sync::atomic::AtomicU64>,
    /// Whether reads (of chunks and of versions) are left unanswered.
    silent_reads: Arc<std::sync::atomic::AtomicBool>,
    /// Whether writes (of chunks and of versions) are left unanswered.
    silent_writes: Arc<std::sync::atomic::AtomicBool>,
    _dht: dht::Client,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn start_liar(bootstrap: &Multiaddr) -> Liar {
    use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
    use protocols::block::{self, Request, Response};
    use protocols::wire::Message;
    let identity = Identity::generate();
    let config = dht::Config::new()
        .with_listen(vec!["/memory/0".parse().unwrap()])
        .with_bootstrap(vec![bootstrap.clone()]);
    let (dht, task) = dht::start(
        identity.signing_key().clone(),
        config,
        dht::Store::in_memory(1000),
        dht::Transports::Memory,
    )
    .await
    .unwrap();
    let addr = dht.status().await.unwrap().listen_addrs[0].parse().unwrap();
    let mut incoming = dht.streams().accept(net::PROTOCOL).unwrap();
    let public = protocols::wire::encode(&identity.public()).unwrap();
    let lies = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let silent_reads = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let silent_writes = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (counted, quiet) = (lies.clone(), (silent_reads.clone(), silent_writes.clone()));
    let server = tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            let (public, counted, quiet) = (public.clone(), counted.clone(), quiet.clone());
            tokio::spawn(async move {
                let mut header = [0u8; 4];
                if stream.read_exact(&mut header).await.is_err() {
                    return;
                }
                let Ok(len) = block::frame_len(header, Request::MAX_BYTES) else {
                    return;
                };
                let mut body = vec![0; len];
                if stream.read_exact(&mut body).await.is_err() {
                    return;
                }
                let request = block::decode_request(&body);
                let never = std::sync::atomic::AtomicBool::new(false);
                let silent = match request {
                    Ok(Request::GetChunk { .. } | Request::GetVersions { .. }) => &*quiet.0,
                    Ok(Request::PutChunk { .. } | Request::PutVersion { .. }) => &*quiet.1,
                    _ => &never,
                };
                if silent.load(std::sync::atomic::Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
                let response = match request {
                    Ok(Request::PutChunk { .. } | Request::PutVersion { .. }) => {
                        Response::Stored { new: true }
                    }
                    Ok(Request::GetChunk { .. }) => {
                        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Response::Chunk {
                            data: vec![0xEE; 4096],
                        }
                    }
                    Ok(Request::Identity) => Response::Identity {
                        identity: public.clone(),
                    },
                    _ => Response::NotFound,
                };
                let frame = block::encode_response(&response).unwrap();
                let _ = stream.write_all(&frame).await;
                let _ = stream.close().await;
            });
        }
    });
    let tasks = vec![
        server,
        tokio::spawn(async move {
            let _ = task.await;
        }),
    ];
    Liar {
        addr,
        lies,
        silent_reads,
        silent_writes,
        _dht: dht,
        _tasks: tasks,
    }
}

/// An honest node and two liars that joined through it, each known to it.
async fn honest_and_two_liars() -> (Node, [Liar; 2]) {
    let honest = start_node(None, false).await;
    let liars = [
        start_liar(&honest.addr).await,
        start_liar(&honest.addr).await,
    ];
    let dht = honest.dht.clone();
    eventually(
        "the liars in the routing table",
        Duration::from_secs(20),
        async || dht.status().await.unwrap().routing_table >= 2,
    )
    .await;
    (honest, liars)
}

/// A node that joins through `bootstrap`, holding nothing, once it knows the three others.
async fn reader_of_three(bootstrap: &Multiaddr, net_config: net::Config) -> Node {
    let reader = start_node_configured(Some(bootstrap), None, net_config).await;
    let dht = reader.dht.clone();
    eventually(
        "the reader to know the other three",
        Duration::from_secs(20),
        async || dht.status().await.unwrap().routing_table >= 3,
    )
    .await;
    reader
}

/// Two of a file's three replicas lie (they took the writes and kept nothing, and serve
/// wrong bytes). A node that holds no copy still reads the file whole: it checks every
/// chunk against its id, counts each bad answer and asks the next replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serving_wrong_bytes_are_read_around() {
    trace();
    let (honest, liars) = honest_and_two_liars().await;
    // R = 3 of three nodes: every chunk goes to the honest node and both liars.
    let config = Config::new().with_chunk_size(16 * 1024);
    let (tree, writer) = owner_writer(&honest, config.clone());
    let file = tree.join("f").unwrap();
    let bytes = data(24 * 16 * 1024, 5);
    writer.put(&file, bytes.as_slice(), |_| {}).await.unwrap();
    // A node that joins now holds nothing: every chunk comes from the others, nearest
    // to the chunk first, so a liar is asked first for about two chunks in three (and
    // for none of the 24 with a chance of 3^-24).
    let reader_node = reader_of_three(&liars[0].addr, net::Config::new()).await;
    let (_, reader) = owner_client(&honest, &reader_node, config);
    let mut out = Vec::new();
    reader.get(&file, &mut out, |_| {}).await.unwrap();
    assert!(out == bytes, "the file read back differs");
    let bad = reader_node
        .network
        .counters()
        .bad_answers
        .load(std::sync::atomic::Ordering::Relaxed);
    let lies: u64 = liars
        .iter()
        .map(|l| l.lies.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert!(bad > 0, "no wrong bytes were served first");
    // A liar asked beside another (a hedged read, when it was slow) may answer after
    // the read is done, unheard.
    assert!(bad <= lies, "{bad} bad answers counted, {lies} lies told");
}

/// Two of a file's three replicas go silent: they hold every read's stream open and
/// never answer. A reader whose requests would wait an hour for them still reads the
/// file whole: it asks the next replica once the first is slower than recent round trips
/// (a hedged read) and goes on with the versions one replica returned (after its
/// patience where the silent ones were two of the R nearest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_replicas_do_not_hold_a_read() {
    trace();
    let (honest, silent) = honest_and_two_liars().await;
    let config = Config::new().with_chunk_size(16 * 1024);
    let (tree, writer) = owner_writer(&honest, config.clone());
    let file = tree.join("d").unwrap().join("f").unwrap();
    let bytes = data(12 * 16 * 1024, 6);
    writer.put(&file, bytes.as_slice(), |_| {}).await.unwrap();
    for s in &silent {
        s.silent_reads
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let waiting = net::Config {
        request_timeout: Duration::from_secs(3600),
        ..net::Config::new()
    };
    let reader_node = reader_of_three(&honest.addr, waiting).await;
    let (_, reader) = owner_client(&honest, &reader_node, config);
    let mut out = Vec::new();
    // Far beyond what the read takes (hedge delays of at most 1 s, a patience of at most
    // 4 s per directory), far below the request timeout it would otherwise wait out.
    tokio::time::timeout(
        Duration::from_secs(120),
        reader.get(&file, &mut out, |_| {}),
    )
    .await
    .expect("the read waited on the silent replicas")
    .unwrap();
    assert!(out == bytes, "the file read back differs");
    let counters = reader_node.network.counters();
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    // A silent replica is nearest for about two chunks in three (and for none of the 12
    // with a chance of 3^-12).
    assert!(
        counters.hedged.load(relaxed) > 0,
        "no chunk was asked of a second replica"
    );
}

/// One of a file's three replicas takes every write's stream and never answers. A writer
/// whose requests would wait an hour for it still has its file acknowledged (W = 2: its
/// own node and the other), and another node reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_replica_does_not_hold_a_write() {
    trace();
    let waiting = net::Config {
        request_timeout: Duration::from_secs(3600),
        ..net::Config::new()
    };
    let writer_node = start_node_configured(None, None, waiting).await;
    let other = start_node(Some(&writer_node.addr), false).await;
    let silent = start_liar(&writer_node.addr).await;
    silent
        .silent_writes
        .store(true, std::sync::atomic::Ordering::Relaxed);
    for node in [&writer_node, &other] {
        let dht = node.dht.clone();
        eventually(
            "the routing tables to fill",
            Duration::from_secs(20),
            async || dht.status().await.unwrap().routing_table >= 2,
        )
        .await;
    }
    let config = Config::new().with_chunk_size(16 * 1024);
    let (tree, writer) = owner_writer(&writer_node, config.clone());
    let file = tree.join("d").unwrap().join("f").unwrap();
    let bytes = data(12 * 16 * 1024, 7);
    // Far beyond what the write takes (a patience of at most 4 s per item), far below
    // the request timeout it would otherwise wait out.
    tokio::time::timeout(
        Duration::from_secs(120),
        writer.put(&file, bytes.as_slice(), |_| {}),
    )
    .await
    .expect("the write waited on the silent replica")
    .unwrap();
    let (_, reader) = owner_client(&writer_node, &other, config);
    let mut out = Vec::new();
    reader.get(&file, &mut out, |_| {}).await.unwrap();
    assert!(out == bytes, "the file read back differs");
}

/// Two of three replicas never answer writes: with W = 2 a write is not acknowledged on
/// its writer's copy alone; it fails once the silent ones' requests time out, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_one_replica_took_is_not_acknowledged() {
    trace();
    let hurried = net::Config {
        request_timeout: Duration::from_secs(2),
        ..net::Config::new()
    };
    let writer_node = start_node_configured(None, None, hurried).await;
    let silent = [
        start_liar(&writer_node.addr).await,
        start_liar(&writer_node.addr).await,
    ];
    for s in &silent {
        s.silent_writes
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let dht = writer_node.dht.clone();
    eventually(
        "the liars in the routing table",
        Duration::from_secs(20),
        async || dht.status().await.unwrap().routing_table >= 2,
    )
    .await;
    let (tree, writer) = owner_writer(&writer_node, Config::new());
    let file = tree.join("f").unwrap();
    let put = writer.put(&file, &b"not enough copies"[..], |_| {}).await;
    assert!(
        matches!(
            put,
            Err(fs::Error::Blocks {
                source: fs::BlockError::Unavailable {
                    needed: 2,
                    acks: 1,
                    ..
                },
                ..
            })
        ),
        "{put:?}"
    );
}

/// Repair starts when membership changes, not only at its interval: with periodic rounds
/// an hour apart, a departure alone brings every item back to three copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departure_alone_starts_repair() {
    trace();
    let config = repair::Config {
        interval: Duration::from_secs(3600),
        settle: Duration::from_millis(200),
        membership_gap: Duration::from_millis(500),
        ..repair::Config::new()
    };
    let nodes = start_net_with(5, Some(config)).await;
    let (tree, writer) = owner_writer(&nodes[0], Config::new().with_chunk_size(16 * 1024));
    let file = tree.join("file").unwrap();
    let bytes = data(200_000, 9);
    writer.put(&file, bytes.as_slice(), |_| {}).await.unwrap();
    let all: Vec<&Node> = nodes.iter().collect();
    // A put stores every item on its three nodes itself (W = 2 of them acknowledged).
    eventually(
        "three copies of everything",
        Duration::from_secs(30),
        async || copies(&all).values().all(|&n| n >= 3),
    )
    .await;
    let items = copies(&all).len();
    let full_rounds_before: Vec<u64> = nodes.iter().map(|n| n.repair.status().rounds).collect();
    nodes[1].dht.shutdown().await.unwrap();
    let live: Vec<&Node> = [0, 2, 3, 4].iter().map(|&i| &nodes[i]).collect();
    eventually(
        "repair, started by the departure, back to three copies",
        Duration::from_secs(30),
        async || {
            let c = copies(&live);
            c.len() == items && c.values().all(|&n| n >= 3)
        },
    )
    .await;
    let rounds: Vec<u64> = nodes.iter().map(|n| n.repair.status().rounds).collect();
    assert!(
        [0, 2, 3, 4]
            .iter()
            .any(|&i| rounds[i] > full_rounds_before[i]),
        "no round ran: {full_rounds_before:?} -> {rounds:?}"
    );
    let mut out = Vec::new();
    writer.get(&file, &mut out, |_| {}).await.unwrap();
    assert!(out == bytes);
}

/// Repair sends at most its bandwidth: a round that copies 256 KiB at 128 KiB/s takes
/// at least the time the budget allows for all but the last copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_keeps_to_its_bandwidth() {
    trace();
    let nodes = start_net_repairing(4, false).await;
    let sender = &nodes[0];
    // Chunks whose nearest node is the sender, held there alone: it sends each to the
    // two other nodes where it belongs.
    let mut chunks = Vec::new();
    let mut seed = 0u8;
    while chunks.len() < 8 {
        seed = seed.wrapping_add(1);
        let bytes = data(16 * 1024, seed);
        let id = fs::ChunkId::of(&bytes);
        if std::ptr::eq(by_distance(&nodes, &id)[0], sender) {
            hold(sender, &bytes);
            chunks.push(id);
        }
    }
    let rate = 128 * 1024;
    let config = repair::Config {
        bandwidth: rate,
        ..repair::Config::new()
    };
    let started = Instant::now();
    repair::round(
        &sender.network,
        &config,
        &sender.repair,
        &|_| false,
        true,
        &mut repair::State::default(),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    let status = sender.repair.status();
    assert_eq!(status.copies_sent, 16, "{status:?}");
    assert_eq!(status.bytes_sent, 16 * 16 * 1024);
    // The budget lets a copy go once the bytes before it fit the rate.
    let least = Duration::from_secs_f64((status.bytes_sent - 16 * 1024) as f64 / rate as f64);
    assert!(
        took >= least,
        "{took:?} for {} bytes at {rate} B/s",
        status.bytes_sent
    );
    for id in &chunks {
        let holders = nodes
            .iter()
            .filter(|n| n.network.local().store().has_chunk(id).unwrap())
            .count();
        assert_eq!(holders, 3);
    }
}

/// A bare overlay node joined through `bootstrap`: the test's hands on the block protocol.
async fn bare_peer(bootstrap: &Multiaddr) -> (dht::Client, tokio::task::JoinHandle<()>) {
    let config = dht::Config::new()
        .with_listen(vec!["/memory/0".parse().unwrap()])
        .with_bootstrap(vec![bootstrap.clone()]);
    let (dht, task) = dht::start(
        Identity::generate().signing_key().clone(),
        config,
        dht::Store::in_memory(1000),
        dht::Transports::Memory,
    )
    .await
    .unwrap();
    let task = tokio::spawn(async move {
        let _ = task.await;
    });
    (dht, task)
}

/// A peer that opens block streams and never finishes a request on them cannot take the
/// slots kept for the others (16 of 64): another peer's burst of requests, after it, is
/// all served. (The admission rule itself is unit-tested in `net`; here it runs on real
/// streams.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_holding_streams_open_leaves_room_for_others() {
    use futures::{AsyncReadExt, AsyncWriteExt};
    use protocols::block::{self, Request, Response};
    trace();
    let server = start_node(None, false).await;
    let server_id = server.dht.status().await.unwrap().peer_id.parse().unwrap();
    let (hog, _hog_task) = bare_peer(&server.addr).await;
    let (asker, _asker_task) = bare_peer(&server.addr).await;
    // The hog opens 60 streams (of the server's 64 slots) and writes half a header.
    let mut held = Vec::new();
    for _ in 0..60 {
        let mut control = hog.streams();
        if let Ok(Ok(mut stream)) = tokio::time::timeout(
            Duration::from_secs(5),
            control.open_stream(server_id, net::PROTOCOL),
        )
        .await
        {
            // Half a header: the stream reaches the server, which waits for the rest
            // (or drops it, past what the hog may hold).
            if stream.write_all(&[0, 0]).await.is_ok() && stream.flush().await.is_ok() {
                held.push(stream);
            }
        }
    }
    assert!(held.len() >= 40, "the hog opened {} streams", held.len());
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Another peer asks 12 things at once: every one is answered.
    let request = block::encode_request(&Request::Identity).unwrap();
    let asks = (0..12).map(|_| {
        let mut control = asker.streams();
        let request = request.clone();
        async move {
            let mut stream = control.open_stream(server_id, net::PROTOCOL).await.ok()?;
            stream.write_all(&request).await.ok()?;
            stream.flush().await.ok()?;
            let mut header = [0u8; 4];
            stream.read_exact(&mut header).await.ok()?;
            let len = block::frame_len(header, protocols::limits::MAX_BLOCK_RESPONSE_BYTES).ok()?;
            let mut body = vec![0; len];
            stream.read_exact(&mut body).await.ok()?;
            Some(matches!(
                block::decode_response(&body),
                Ok(Response::Identity { .. })
            ))
        }
    });
    let answers = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(asks))
        .await
        .expect("the asks were not answered in time");
    let answered = answers.iter().filter(|a| **a == Some(true)).count();
    assert_eq!(answered, 12, "answers: {answers:?}");
    drop(held);
}

/// One replica that refuses a version the others take (its view of the inode ahead of
/// theirs here; a hostile node could refuse anything) does not fail the write: a refusal
/// is final only from the writer's own node or from as many replicas as leave W out of
/// reach. (Any one replica's refusal failed every write to that inode.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_refusing_does_not_fail_a_write_the_others_take() {
    trace();
    let nodes = start_net_repairing(3, false).await;
    let (tree, writer) = owner_writer(&nodes[0], Config::new());
    let file = tree.join("f").unwrap();
    writer.put(&file, &b"one"[..], |_| {}).await.unwrap();
    let mut handle = writer.open(&file).await.unwrap();
    // Node 2 takes, straight into its store, a version far ahead of what the others hold.
    let inode = writer.stat(&file).await.unwrap().inode;
    let first = nodes[2].network.local().versions(&inode).unwrap().remove(0);
    let mut ahead = fs::inode::Inode::clone(&first.inode);
    ahead.seq = first.inode.seq + 20;
    ahead.parents = vec![first.version];
    let signed = fs::inode::Signed::sign(&ahead, nodes[0].identity.signing_key()).unwrap();
    assert!(
        nodes[2]
            .network
            .local()
            .put_version(&inode, &signed)
            .unwrap()
    );
    // The writer's next version (from the first) is stale there, and taken by the others.
    writer.write(&mut handle, 0, b"two").await.unwrap();
    writer.fsync(&mut handle).await.unwrap();
    for node in &nodes[..2] {
        let versions = node.network.local().versions(&inode).unwrap();
        assert!(
            versions.iter().any(|v| v.inode.seq == first.inode.seq + 1),
            "{versions:?}"
        );
    }
    let refused = nodes[2].network.local().versions(&inode).unwrap();
    assert!(refused.iter().all(|v| v.inode.seq != first.inode.seq + 1));
}
