//! An attacker pushes hand-made records straight into every node of a 20-node overlay
//! (Kademlia PUTs, bypassing its own store): no node stores, serves or resolves a bad
//! one, a replayed older record never displaces the newer one, and a node that joins
//! later never gets them either. A valid record pushed the same way is accepted
//! everywhere, so the test fails if pushes do not arrive at all.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use support::eventually;

use dht::behaviour::BehaviourEvent;
use dht::{Client, Config, Error, PathRecord, Store, Transports, key_of};
use futures::StreamExt;
use keys::limits::{MAX_PATH_RECORD_BYTES, MAX_RECORD_TTL_SECS};
use keys::{Chain, Path, Revocations, SigningKey, Validity, Writecap, now};
use libp2p::kad::{self, GetRecordOk, QueryId, QueryResult, Quorum, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};

const HONEST: usize = 20;

struct TestNode {
    key: SigningKey,
    client: Client,
    peer_id: PeerId,
    /// Listen address, without `/p2p/…`.
    addr: Multiaddr,
}

fn without_p2p(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

async fn spawn(key: SigningKey, bootstrap: Option<&Multiaddr>) -> TestNode {
    let config = Config::new()
        .with_listen(vec!["/memory/0".parse().unwrap()])
        .with_bootstrap(bootstrap.into_iter().cloned().collect());
    let (client, _task) = dht::start(
        key.clone(),
        config,
        Store::in_memory(10_000),
        Transports::Memory,
    )
    .await
    .unwrap();
    let status = client.status().await.unwrap();
    TestNode {
        key,
        client,
        peer_id: status.peer_id.parse().unwrap(),
        addr: without_p2p(status.listen_addrs[0].parse().unwrap()),
    }
}

async fn records_held(nodes: &[TestNode]) -> Vec<usize> {
    let mut counts = Vec::with_capacity(nodes.len());
    for node in nodes {
        counts.push(node.client.status().await.unwrap().records);
    }
    counts
}

/// What the attacker's task does for the test.
enum Command {
    /// Learn these peers' addresses and connect to all of them.
    Connect {
        peers: Vec<(PeerId, Multiaddr)>,
        reply: oneshot::Sender<()>,
    },
    /// `put_record_to` these peers; replies with the query's outcome.
    Push {
        record: kad::Record,
        peers: Vec<PeerId>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// `get_record`; replies with every (peer, value) that a remote peer served.
    Get {
        key: RecordKey,
        reply: oneshot::Sender<Vec<(PeerId, Vec<u8>)>>,
    },
}

/// A raw overlay swarm that the test drives by hand: it speaks the protocol but keeps
/// none of the rules.
struct Attacker {
    key: SigningKey,
    peer_id: PeerId,
    addr: Multiaddr,
    commands: mpsc::Sender<Command>,
}

impl Attacker {
    async fn start(key: SigningKey, bootstrap: &Multiaddr) -> Attacker {
        let mut swarm = dht::build_swarm(
            key.to_libp2p(),
            Store::in_memory(100),
            &Config::new(),
            Transports::Memory,
        )
        .unwrap()
        .overlay;
        swarm.listen_on("/memory/0".parse().unwrap()).unwrap();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        swarm.dial(bootstrap.clone()).unwrap();
        let (commands, receiver) = mpsc::channel(16);
        tokio::spawn(drive(swarm, receiver));
        Attacker {
            peer_id: key.peer_id(),
            key,
            addr,
            commands,
        }
    }

    async fn connect(&self, nodes: &[TestNode]) {
        let peers = nodes.iter().map(|n| (n.peer_id, n.addr.clone())).collect();
        let (reply, done) = oneshot::channel();
        self.commands
            .send(Command::Connect { peers, reply })
            .await
            .unwrap();
        done.await.unwrap();
    }

    /// Pushes `record` to every node; the record's publisher and expiry are cleared so
    /// that only the receiving node's own checks decide.
    async fn push(&self, mut record: kad::Record, nodes: &[TestNode]) -> Result<(), String> {
        record.publisher = None;
        record.expires = None;
        let peers = nodes.iter().map(|n| n.peer_id).collect();
        let (reply, done) = oneshot::channel();
        self.commands
            .send(Command::Push {
                record,
                peers,
                reply,
            })
            .await
            .unwrap();
        done.await.unwrap()
    }

    async fn get(&self, key: RecordKey) -> Vec<(PeerId, Vec<u8>)> {
        let (reply, done) = oneshot::channel();
        self.commands
            .send(Command::Get { key, reply })
            .await
            .unwrap();
        done.await.unwrap()
    }
}

async fn drive(mut swarm: Swarm<dht::Behaviour>, mut commands: mpsc::Receiver<Command>) {
    let mut connecting: Option<(HashSet<PeerId>, oneshot::Sender<()>)> = None;
    let mut puts: HashMap<QueryId, oneshot::Sender<Result<(), String>>> = HashMap::new();
    type Found = Vec<(PeerId, Vec<u8>)>;
    let mut gets: HashMap<QueryId, (Found, oneshot::Sender<Found>)> = HashMap::new();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(Command::Connect { peers, reply }) => {
                    let mut waiting = HashSet::new();
                    for (peer, addr) in peers {
                        swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                        if !swarm.is_connected(&peer) {
                            swarm
                                .dial(DialOpts::peer_id(peer).addresses(vec![addr]).build())
                                .unwrap();
                            waiting.insert(peer);
                        }
                    }
                    if waiting.is_empty() {
                        let _ = reply.send(());
                    } else {
                        connecting = Some((waiting, reply));
                    }
                }
                Some(Command::Push { record, peers, reply }) => {
                    // Sends the record to the peers only: the local store is not touched.
                    let id = swarm.behaviour_mut().kad.put_record_to(
                        record,
                        peers.into_iter(),
                        Quorum::One,
                    );
                    puts.insert(id, reply);
                }
                Some(Command::Get { key, reply }) => {
                    let id = swarm.behaviour_mut().kad.get_record(key);
                    gets.insert(id, (Vec::new(), reply));
                }
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    if let Some((waiting, _)) = &mut connecting {
                        waiting.remove(&peer_id);
                        if waiting.is_empty()
                            && let Some((_, reply)) = connecting.take()
                        {
                            let _ = reply.send(());
                        }
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Kad(
                    kad::Event::OutboundQueryProgressed { id, result, step, .. },
                )) => match result {
                    QueryResult::PutRecord(result) => {
                        if let Some(reply) = puts.remove(&id) {
                            let _ = reply.send(result.map(|_| ()).map_err(|e| format!("{e:?}")));
                        }
                    }
                    QueryResult::GetRecord(result) => {
                        if let Some((found, _)) = gets.get_mut(&id)
                            && let Ok(GetRecordOk::FoundRecord(record)) = result
                            && let Some(peer) = record.peer
                        {
                            found.push((peer, record.record.value));
                        }
                        if step.last
                            && let Some((found, reply)) = gets.remove(&id)
                        {
                            let _ = reply.send(found);
                        }
                    }
                    _ => {}
                },
                // Inbound PUTs (FilterBoth) are dropped: the attacker stores nothing.
                _ => {}
            },
        }
    }
}

fn grant(root: &SigningKey, holder: &SigningKey, prefix: &Path) -> Chain {
    Chain::root_grant(
        root,
        holder.principal(),
        prefix.clone(),
        Validity::for_seconds(3600),
    )
}

fn decode(key: &RecordKey, value: &[u8]) -> PathRecord {
    PathRecord::from_kad(key, value, now(), &Revocations::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_pushed_to_every_node_are_never_stored_or_served() {
    let started = Instant::now();
    let root = SigningKey::generate();
    let tree = Path::root_of(root.principal());

    let first = spawn(SigningKey::generate(), None).await;
    let bootstrap = first.addr.clone();
    let mut nodes = vec![first];
    for _ in 1..HONEST {
        nodes.push(spawn(SigningKey::generate(), Some(&bootstrap)).await);
    }
    for node in &nodes {
        eventually("routing tables", Duration::from_secs(30), async || {
            (node.client.status().await.unwrap().routing_table >= 5).then_some(())
        })
        .await;
    }
    let honest: HashSet<PeerId> = nodes.iter().map(|n| n.peer_id).collect();

    let attacker = Attacker::start(SigningKey::generate(), &bootstrap).await;
    // Connected to everyone, every push goes out at once: a `Quorum::One` put ends at
    // the first acknowledgement and drops the requests still waiting for a dial.
    attacker.connect(&nodes).await;
    let a = &attacker.key;
    let a_addrs = vec![attacker.addr.clone()];
    let record = |path: &Path, chain: Chain, sequence: u64, expires: u64| {
        PathRecord::new(a, path.clone(), a_addrs.clone(), chain, sequence, expires)
    };
    let valid = |path: &Path| record(path, grant(&root, a, path), 1, now() + 600);

    // A valid record registered by an honest node: what the replays try to displace.
    let owner = &nodes[5];
    let replay_path = tree.join("replay").unwrap();
    let replay_chain = grant(&root, &owner.key, &replay_path);
    let registered = owner
        .client
        .register(replay_path.clone(), replay_chain.clone())
        .await
        .unwrap();
    let n = registered.sequence;
    let owner_addrs: Vec<Multiaddr> = registered
        .addresses
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    // Ed25519 signatures are deterministic: this is the registered record, byte for byte.
    let good = PathRecord::new(
        &owner.key,
        replay_path.clone(),
        owner_addrs.clone(),
        replay_chain.clone(),
        n,
        registered.expires,
    );
    // Make sure every node holds it (Kademlia's replication job would, within the hour).
    attacker.push(good.to_kad().unwrap(), &nodes).await.unwrap();
    eventually(
        "the registered record on every node",
        Duration::from_secs(10),
        async || {
            records_held(&nodes)
                .await
                .iter()
                .all(|&c| c == 1)
                .then_some(())
        },
    )
    .await;

    // Bad records for paths nobody registered: (what, path to resolve, record).
    let mut fresh: Vec<(&str, Path, kad::Record)> = Vec::new();
    {
        let path = tree.join("bad-signature").unwrap();
        let mut kad = valid(&path).to_kad().unwrap();
        let last = kad.value.len() - 1;
        kad.value[last] ^= 1; // inside the signature
        fresh.push(("bad signature", path, kad));
    }
    {
        let path = tree.join("not-rooted").unwrap();
        let impostor = SigningKey::generate();
        let chain = grant(&impostor, a, &path);
        let r = record(&path, chain, 1, now() + 600);
        fresh.push((
            "chain not issued by the path's root",
            path,
            r.to_kad().unwrap(),
        ));
    }
    {
        let path = tree.join("other-holder").unwrap();
        let chain = grant(&root, &nodes[7].key, &path);
        let r = record(&path, chain, 1, now() + 600);
        fresh.push(("chain held by another node", path, r.to_kad().unwrap()));
    }
    {
        let granted = tree.join("granted").unwrap();
        let path = tree.join("outside").unwrap();
        let r = record(&path, grant(&root, a, &granted), 1, now() + 600);
        fresh.push(("path outside the writecap", path, r.to_kad().unwrap()));
    }
    {
        let path = tree.join("expired").unwrap();
        let r = record(&path, grant(&root, a, &path), 1, now() - 1);
        fresh.push(("expired record", path, r.to_kad().unwrap()));
    }
    {
        let path = tree.join("expired-writecap").unwrap();
        let t = now();
        let validity = Validity {
            not_before: t - 7200,
            expires: t - 3600,
        };
        let chain = Chain::from_links(vec![Writecap::issue(
            &root,
            a.principal(),
            path.clone(),
            validity,
        )]);
        let r = record(&path, chain, 1, t + 600);
        fresh.push(("expired writecap", path, r.to_kad().unwrap()));
    }
    {
        let path = tree.join("forever").unwrap();
        let r = record(
            &path,
            grant(&root, a, &path),
            1,
            now() + 2 * MAX_RECORD_TTL_SECS,
        );
        fresh.push(("too long-lived", path, r.to_kad().unwrap()));
    }
    {
        let path = tree.join("misfiled").unwrap();
        let mut kad = valid(&path.join("real").unwrap()).to_kad().unwrap();
        kad.key = key_of(&path);
        fresh.push(("valid record under another path's key", path, kad));
    }
    {
        let path = tree.join("trailing").unwrap();
        let mut kad = valid(&path).to_kad().unwrap();
        kad.value.extend_from_slice(&[0; 64]);
        fresh.push(("trailing bytes", path, kad));
    }
    {
        let path = tree.join("oversized").unwrap();
        let mut kad = valid(&path).to_kad().unwrap();
        kad.value.resize(MAX_PATH_RECORD_BYTES + 1, 0);
        // Also over Kademlia's 16 KiB frame limit: the receiving node's framing refuses
        // it before its store sees it, and the push reports that no peer acknowledged.
        fresh.push(("oversized", path, kad));
    }
    // Validly signed records of the registered path that must not displace it. The
    // owner's key stands in for an old record of its that the attacker kept.
    let replays: Vec<(&str, kad::Record)> = vec![
        (
            "replayed lower sequence",
            PathRecord::new(
                &owner.key,
                replay_path.clone(),
                owner_addrs.clone(),
                replay_chain.clone(),
                n - 1,
                now() + 600,
            )
            .to_kad()
            .unwrap(),
        ),
        (
            "same sequence, pointing at the attacker",
            PathRecord::new(
                &owner.key,
                replay_path.clone(),
                a_addrs.clone(),
                replay_chain.clone(),
                n,
                now() + 900,
            )
            .to_kad()
            .unwrap(),
        ),
    ];

    for (what, _, kad) in &fresh {
        let outcome = attacker.push(kad.clone(), &nodes).await;
        eprintln!("pushed {what} ({} bytes): {outcome:?}", kad.value.len());
    }
    for (what, kad) in &replays {
        let outcome = attacker.push(kad.clone(), &nodes).await;
        eprintln!("pushed {what}: {outcome:?}");
    }
    // The control: a valid record pushed the same way is accepted everywhere.
    let control_path = tree.join("control").unwrap();
    attacker
        .push(valid(&control_path).to_kad().unwrap(), &nodes)
        .await
        .unwrap();
    eventually(
        "the control record on every node",
        Duration::from_secs(10),
        async || {
            records_held(&nodes)
                .await
                .iter()
                .all(|&c| c >= 2)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Every node holds exactly the registered record and the control.
    assert_eq!(records_held(&nodes).await, vec![2; HONEST]);

    // No node serves a bad record: the attacker asks all of them, as a raw client that
    // sees every value served.
    for (what, path, kad) in &fresh {
        let served = attacker.get(kad.key.clone()).await;
        assert!(served.is_empty(), "{what} ({path}) served by {served:?}");
    }
    let served = attacker.get(key_of(&replay_path)).await;
    assert!(!served.is_empty());
    for (peer, value) in &served {
        let r = decode(&key_of(&replay_path), value);
        assert!(r.sequence() >= n, "{peer} serves sequence {}", r.sequence());
        assert_eq!(r.peer_id(), owner.peer_id, "{peer} serves {r:?}");
    }
    let served = attacker.get(key_of(&control_path)).await;
    let servers: HashSet<PeerId> = served.iter().map(|(peer, _)| *peer).collect();
    assert_eq!(servers, honest, "the control is served by every node");

    // Every node resolves as if the bad records had never been sent.
    let attacker_peer = attacker.peer_id.to_string();
    let owner_peer = owner.peer_id.to_string();
    let check = async |node: &TestNode| {
        for (what, path, _) in &fresh {
            match node.client.resolve(path.clone()).await {
                Err(Error::NotRegistered { .. }) => {}
                other => panic!("{what}: {path} resolves to {other:?}"),
            }
        }
        let r = node.client.resolve(replay_path.clone()).await.unwrap();
        assert!(r.sequence >= n, "{r:?}");
        assert_eq!(r.peer_id, owner_peer);
        let r = node.client.resolve(control_path.clone()).await.unwrap();
        assert_eq!(r.peer_id, attacker_peer);
    };
    futures::future::join_all(nodes.iter().map(&check)).await;

    // A node that joins now never gets them either.
    let late = spawn(SigningKey::generate(), Some(&bootstrap)).await;
    eventually(
        "the late node's routing table",
        Duration::from_secs(20),
        async || (late.client.status().await.unwrap().routing_table >= 5).then_some(()),
    )
    .await;
    check(&late).await;

    // Nothing changed meanwhile.
    assert_eq!(records_held(&nodes).await, vec![2; HONEST]);
    eprintln!("done in {:?}", started.elapsed());
}
