//! The actor runtime across nodes on the memory transport: tell, ask, pub-sub, ordering,
//! timeouts, supervision, protocol violations, impostors and backpressure.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use btnode::actor::{
    Actor, AskError, Config, Context, Failure, Incoming, Restart, Runtime, SendError, Spec,
};
use futures::{AsyncReadExt, AsyncWriteExt};
use keys::{Chain, Path, SigningKey, Validity};
use libp2p::{Multiaddr, StreamProtocol};
use protocols::actor::{self as wire, ChannelState, EnvelopeRef, Frame, Hello, Kind, Refusal};
use protocols::session::{Global, Protocol, Violation};
use tokio::sync::mpsc;

struct Node {
    key: SigningKey,
    client: dht::Client,
    runtime: Runtime,
    home: Path,
    addr: Multiaddr,
}

struct Net {
    root: SigningKey,
    nodes: Vec<Node>,
}

async fn start_node(
    root: &SigningKey,
    index: usize,
    bootstrap: Option<&Multiaddr>,
    config: Config,
) -> Node {
    let key = SigningKey::generate();
    let dht_config = dht::Config::new()
        .with_listen(vec!["/memory/0".parse().unwrap()])
        .with_bootstrap(bootstrap.into_iter().cloned().collect());
    let store = dht::Store::in_memory(10_000);
    let (client, _task) = dht::start(key.clone(), dht_config, store, dht::Transports::Memory)
        .await
        .unwrap();
    let addr = client.status().await.unwrap().listen_addrs[0]
        .parse()
        .unwrap();
    let home = Path::root_of(root.principal())
        .join(&format!("n{index}"))
        .unwrap();
    let chain = Chain::root_grant(
        root,
        key.principal(),
        home.clone(),
        Validity::for_seconds(3600),
    );
    let runtime = Runtime::start(client.clone(), &key, vec![chain], config)
        .await
        .unwrap();
    Node {
        key,
        client,
        runtime,
        home,
        addr,
    }
}

/// A node of the overlay (no actor runtime) for `key`, joined through `bootstrap`.
async fn join_overlay(key: &SigningKey, bootstrap: &Multiaddr) -> dht::Client {
    let dht_config = dht::Config::new()
        .with_listen(vec!["/memory/0".parse().unwrap()])
        .with_bootstrap(vec![bootstrap.clone()]);
    let (client, _task) = dht::start(
        key.clone(),
        dht_config,
        dht::Store::in_memory(1000),
        dht::Transports::Memory,
    )
    .await
    .unwrap();
    client
}

/// Logs to the test's captured output (shown when it fails); `RUST_LOG` picks what.
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

impl Net {
    async fn start(n: usize) -> Net {
        Self::start_with(n, |_| Config::new()).await
    }

    async fn start_with(n: usize, config: impl Fn(usize) -> Config) -> Net {
        trace();
        let root = SigningKey::generate();
        let first = start_node(&root, 0, None, config(0)).await;
        let addr = first.addr.clone();
        let mut nodes = vec![first];
        for i in 1..n {
            nodes.push(start_node(&root, i, Some(&addr), config(i)).await);
        }
        // Everyone has joined when each node knows a few peers.
        for node in &nodes {
            let deadline = Instant::now() + Duration::from_secs(20);
            while node.client.status().await.unwrap().routing_table < (n - 1).min(3) {
                assert!(Instant::now() < deadline, "nodes did not join");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Net { root, nodes }
    }

    fn path(&self, node: usize, name: &str) -> Path {
        self.nodes[node].home.join(name).unwrap()
    }
}

/// client → server: any number of get (answered by value) and put (answered by ok),
/// then bye.
fn kv_protocol() -> Arc<Protocol> {
    Arc::new(
        Protocol::new(
            "kv/1",
            ["client", "server"],
            Global::repeat(
                "loop",
                Global::choice(
                    "client",
                    [
                        Global::send(
                            "client",
                            "server",
                            "get",
                            Global::send("server", "client", "value", Global::again("loop")),
                        ),
                        Global::send(
                            "client",
                            "server",
                            "put",
                            Global::send("server", "client", "ok", Global::again("loop")),
                        ),
                        Global::send("client", "server", "bye", Global::End),
                    ],
                ),
            ),
        )
        .unwrap(),
    )
}

#[derive(Default)]
struct Kv {
    map: HashMap<Vec<u8>, Vec<u8>>,
}

impl Actor for Kv {
    async fn handle(&mut self, _ctx: &Context, mut message: Incoming) -> Result<(), Failure> {
        let reply = message.take_reply();
        match (message.label.as_str(), reply) {
            ("put", Some(reply)) => {
                let (key, value): (Vec<u8>, Vec<u8>) = serde_json::from_slice(&message.payload)?;
                self.map.insert(key, value);
                reply.send("ok", b"").await?;
            }
            ("get", Some(reply)) => {
                let value = self.map.get(&message.payload).cloned().unwrap_or_default();
                reply.send("value", &value).await?;
            }
            ("boom", _) => return Err(Failure("asked to fail".into())),
            ("panic", _) => panic!("asked to panic"),
            _ => {}
        }
        Ok(())
    }
}

async fn spawn_kv(net: &Net, node: usize, name: &str) -> Path {
    let path = net.path(node, name);
    let kv = kv_protocol();
    net.nodes[node]
        .runtime
        .spawn(
            Spec::new(path.clone())
                .serves(&kv, "server")
                .untyped()
                .restart(Restart {
                    max_restarts: 2,
                    window: Duration::from_secs(60),
                    backoff: Duration::from_millis(10),
                }),
            Kv::default,
        )
        .await
        .unwrap();
    path
}

/// Forwards every message to the test.
struct Collector {
    out: mpsc::Sender<(Arc<Path>, String, Vec<u8>)>,
    slow_every: usize,
    seen: usize,
}

impl Actor for Collector {
    async fn handle(&mut self, _ctx: &Context, message: Incoming) -> Result<(), Failure> {
        self.seen += 1;
        if self.slow_every > 0 && self.seen.is_multiple_of(self.slow_every) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let _ = self
            .out
            .send((
                message.from().clone(),
                message.label.into(),
                message.payload,
            ))
            .await;
        Ok(())
    }
}

async fn spawn_collector(
    net: &Net,
    node: usize,
    name: &str,
    slow_every: usize,
) -> (Path, mpsc::Receiver<(Arc<Path>, String, Vec<u8>)>) {
    let path = net.path(node, name);
    let (out, received) = mpsc::channel(1 << 17);
    net.nodes[node]
        .runtime
        .spawn(Spec::new(path.clone()).untyped(), move || Collector {
            out: out.clone(),
            slow_every,
            seen: 0,
        })
        .await
        .unwrap();
    (path, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tell_and_ask_across_three_nodes_and_locally() {
    let net = Net::start(3).await;
    let kv = kv_protocol();
    let store = spawn_kv(&net, 2, "kv").await;
    // From node 0 and node 1 over the network, and from node 2 itself (no network).
    for (i, node) in net.nodes.iter().enumerate() {
        let me = node.runtime.sender(net.path(i, "client")).unwrap();
        let mut session = me.session(store.clone(), &kv, "client").unwrap();
        let key = format!("k{i}").into_bytes();
        let put = serde_json::to_vec(&(key.clone(), b"v".repeat(i + 1))).unwrap();
        let ok = session.ask("put", &put).await.unwrap();
        assert_eq!(ok.label, "ok");
        assert_eq!(*ok.from, store);
        let value = session.ask("get", &key).await.unwrap();
        assert_eq!(value.label, "value");
        assert_eq!(value.payload, b"v".repeat(i + 1));
        session.tell("bye", b"").await.unwrap();
        assert!(session.is_done());
    }
    // Tells return once queued; wait for the last byes to be handled.
    let deadline = Instant::now() + Duration::from_secs(5);
    while net.nodes[2].runtime.status().actors[0].handled < 9 {
        assert!(Instant::now() < deadline, "not every message was handled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = net.nodes[2].runtime.status();
    assert_eq!(status.actors[0].handled, 9);
    // Node 2 delivered its own asks locally: it opened no stream to anyone.
    assert_eq!(status.streams, 2, "replies to nodes 0 and 1 only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tells_arrive_in_order() {
    let net = Net::start(3).await;
    let (inbox, mut received) = spawn_collector(&net, 1, "inbox", 0).await;
    const N: u32 = 5_000;
    let mut senders = Vec::new();
    for node in [0usize, 1, 2] {
        let me = net.nodes[node]
            .runtime
            .sender(net.path(node, "writer"))
            .unwrap();
        let to = inbox.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..N {
                me.tell(&to, "n", &i.to_be_bytes()).await.unwrap();
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let mut next: HashMap<Arc<Path>, u32> = HashMap::new();
    for _ in 0..3 * N {
        let (from, _, payload) = tokio::time::timeout(Duration::from_secs(20), received.recv())
            .await
            .unwrap_or_else(|_| {
                let statuses: Vec<_> = net.nodes.iter().map(|n| n.runtime.status()).collect();
                panic!("a tell never arrived; got {next:?}; {statuses:#?}")
            })
            .unwrap();
        let n = u32::from_be_bytes(payload.try_into().unwrap());
        let expected = next.entry(from.clone()).or_default();
        assert_eq!(n, *expected, "out of order from {from}");
        *expected += 1;
    }
    assert!(next.values().all(|n| *n == N));
}

/// Keeps every ask's reply handle and never answers.
struct Silent(Vec<btnode::actor::ReplyTo>);

impl Actor for Silent {
    async fn handle(&mut self, _ctx: &Context, mut message: Incoming) -> Result<(), Failure> {
        if let Some(reply) = message.take_reply() {
            self.0.push(reply);
        }
        Ok(())
    }
}

/// Drops every ask's reply handle unanswered.
struct Rude;

impl Actor for Rude {
    async fn handle(&mut self, _ctx: &Context, _message: Incoming) -> Result<(), Failure> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_ask_times_out_and_a_dropped_one_is_refused() {
    let net = Net::start(2).await;
    let silent = net.path(1, "silent");
    net.nodes[1]
        .runtime
        .spawn(Spec::new(silent.clone()).untyped(), || Silent(Vec::new()))
        .await
        .unwrap();
    let rude = net.path(1, "rude");
    net.nodes[1]
        .runtime
        .spawn(Spec::new(rude.clone()).untyped(), || Rude)
        .await
        .unwrap();
    let me = net.nodes[0].runtime.sender(net.path(0, "asker")).unwrap();
    let started = Instant::now();
    let mut session = me.unchecked(silent, "", "", 1);
    let err = session
        .ask_within("q", b"", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err, AskError::Timeout(Duration::from_millis(300)));
    assert!(started.elapsed() >= Duration::from_millis(300));
    let err = me.ask(&rude, "q", b"").await.unwrap_err();
    assert!(
        matches!(err, AskError::Refused(Refusal::NoReply { .. })),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_actor_is_restarted_by_policy_and_shows_in_status() {
    let net = Net::start(2).await;
    let store = spawn_kv(&net, 1, "kv").await;
    let me = net.nodes[0].runtime.sender(net.path(0, "c")).unwrap();
    let put = serde_json::to_vec(&(b"k".to_vec(), b"v".to_vec())).unwrap();
    let kv = kv_protocol();
    me.session(store.clone(), &kv, "client")
        .unwrap()
        .ask("put", &put)
        .await
        .unwrap();
    // An ask whose handler fails is refused with the failure.
    let err = me.ask(&store, "boom", b"").await.unwrap_err();
    assert_eq!(
        err,
        AskError::Refused(Refusal::Failed {
            actor: store.to_string(),
            reason: "asked to fail".into()
        })
    );
    let err = me.ask(&store, "panic", b"").await.unwrap_err();
    assert!(
        matches!(&err, AskError::Refused(Refusal::Failed { reason, .. }) if reason.contains("asked to panic")),
        "{err:?}"
    );
    // Restarted: it answers again (with fresh state).
    let mut session = me.session(store.clone(), &kv, "client").unwrap();
    let value = session.ask("get", b"k").await.unwrap();
    assert_eq!(value.payload, b"");
    let status = &net.nodes[1].runtime.status().actors[0];
    assert_eq!((status.failures, status.restarts), (2, 2));
    assert_eq!(status.state, "running");
    // A third failure within the window is one too many.
    let _ = me.ask(&store, "boom", b"").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while net.nodes[1].runtime.status().actors[0].state != "stopped" {
        assert!(Instant::now() < deadline, "the actor was not stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = me.ask(&store, "get", b"k").await.unwrap_err();
    assert!(
        matches!(err, AskError::Refused(Refusal::NoSuchActor { .. })),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_violation_is_refused_with_its_typed_error() {
    let net = Net::start(2).await;
    let store = spawn_kv(&net, 1, "kv").await;
    let kv = kv_protocol();
    let me = net.nodes[0].runtime.sender(net.path(0, "c")).unwrap();

    // The local API stops a well-behaved sender before anything is sent.
    let mut session = me.session(store.clone(), &kv, "client").unwrap();
    let err = session.tell("value", b"").await.unwrap_err();
    assert!(
        matches!(err, SendError::Violation(Violation::Unexpected { .. })),
        "{err:?}"
    );

    // A send that fails leaves the session where it was.
    let mut lost = me
        .session(net.path(1, "nobody-here"), &kv, "client")
        .unwrap();
    for _ in 0..2 {
        let err = lost.ask("get", b"k").await.unwrap_err();
        assert!(
            matches!(err, AskError::Send(SendError::Unreachable { .. })),
            "{err:?}"
        );
    }

    // The receiver checks what an unchecked (or hostile) sender sends.
    let refused = |err: AskError| match err {
        AskError::Refused(refusal) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Out of order: `value` is the server's message.
    let err = me
        .unchecked(store.clone(), "kv/1", "client", 1)
        .ask("value", b"")
        .await
        .unwrap_err();
    assert!(matches!(
        refused(err),
        Refusal::Violation(Violation::Unexpected { .. })
    ));
    // From the wrong role.
    let err = me
        .unchecked(store.clone(), "kv/1", "server", 2)
        .ask("get", b"")
        .await
        .unwrap_err();
    assert!(matches!(
        refused(err),
        Refusal::Violation(Violation::WrongRole { .. })
    ));
    // After the end.
    let mut ended = me.unchecked(store.clone(), "kv/1", "client", 3);
    ended.tell("bye", b"").await.unwrap();
    let err = ended.ask("get", b"k").await.unwrap_err();
    assert!(matches!(
        refused(err),
        Refusal::Violation(Violation::AfterEnd { .. })
    ));
    // An unknown protocol.
    let err = me
        .unchecked(store.clone(), "chat/9", "client", 4)
        .ask("get", b"")
        .await
        .unwrap_err();
    assert_eq!(
        refused(err),
        Refusal::UnknownProtocol {
            actor: store.to_string(),
            protocol: "chat/9".into()
        }
    );
    // A refused tell comes back to the sender's runtime.
    let mut refusals = net.nodes[0].runtime.refusals();
    me.unchecked(store.clone(), "kv/1", "client", 5)
        .tell("ok", b"")
        .await
        .unwrap();
    let notice = tokio::time::timeout(Duration::from_secs(5), refusals.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(notice.to, store.to_string());
    assert!(matches!(
        notice.refusal,
        Refusal::Violation(Violation::Unexpected { .. })
    ));
    // The actor saw none of them (only the bye, once handled); a good session works.
    let deadline = Instant::now() + Duration::from_secs(5);
    while net.nodes[1].runtime.status().actors[0].handled < 1 {
        assert!(Instant::now() < deadline, "the bye was not handled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = net.nodes[1].runtime.status();
    assert_eq!(status.actors[0].handled, 1, "only the bye");
    assert_eq!(status.refused, 5);
    let mut good = me.session(store, &kv, "client").unwrap();
    assert_eq!(good.ask("get", b"k").await.unwrap().label, "value");
}

/// A peer that keeps breaking a protocol is blocked: its messages are refused, its
/// connection is closed and it cannot come back until the block ends; then it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_keeps_violating_a_protocol_is_blocked_for_a_while() {
    let block_for = Duration::from_secs(5);
    let net = Net::start_with(2, |i| {
        if i == 1 {
            Config::new().with_penalty(3, Duration::from_secs(60), block_for)
        } else {
            Config::new().with_ask_timeout(Duration::from_secs(2))
        }
    })
    .await;
    let store = spawn_kv(&net, 1, "kv").await;
    let kv = kv_protocol();
    let me = net.nodes[0].runtime.sender(net.path(0, "c")).unwrap();
    // Below the limit: refused, not blocked; a good session still works.
    for session in 1..=2 {
        let err = me
            .unchecked(store.clone(), "kv/1", "client", session)
            .ask("value", b"")
            .await
            .unwrap_err();
        assert!(
            matches!(err, AskError::Refused(Refusal::Violation(_))),
            "{err:?}"
        );
    }
    assert_eq!(net.nodes[1].runtime.status().blocked, 0);
    let mut good = me.session(store.clone(), &kv, "client").unwrap();
    assert_eq!(good.ask("get", b"k").await.unwrap().label, "value");
    // The third violation within the window: blocked (from some time after `before`).
    let before = Instant::now();
    let err = me
        .unchecked(store.clone(), "kv/1", "client", 3)
        .ask("value", b"")
        .await
        .unwrap_err();
    assert!(
        matches!(err, AskError::Refused(Refusal::Violation(_))),
        "{err:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while net.nodes[1].runtime.status().blocked == 0 {
        assert!(
            Instant::now() < deadline,
            "the violating peer was not blocked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While blocked, even a well-formed ask goes unanswered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut during = me.session(store.clone(), &kv, "client").unwrap();
    let err = during.ask("get", b"k").await.unwrap_err();
    assert!(
        !matches!(err, AskError::Refused(_)),
        "a blocked peer's ask reached the actor: {err:?}"
    );
    assert!(
        before.elapsed() < block_for,
        "the block may have ended before it was checked; the test's timings are off"
    );
    // Once the block is over, the peer is let back.
    let deadline = Instant::now() + block_for + Duration::from_secs(20);
    loop {
        let mut after = me.session(store.clone(), &kv, "client").unwrap();
        match after.ask("get", b"k").await {
            Ok(reply) => {
                assert_eq!(reply.label, "value");
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "never let back: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(
        before.elapsed() >= block_for,
        "let back before the block ended"
    );
}

/// The bytes of a hello numbering its stream `stream`, presenting `chains`.
fn hello(stream: u64, chains: Vec<Chain>) -> Vec<u8> {
    let mut bytes = Vec::new();
    wire::encode_frame(&Hello { stream, chains }, &mut bytes).unwrap();
    bytes
}

/// Opens a raw actor stream from `from` to `to` and writes `frames` after a hello with
/// `chains`.
async fn raw_stream(from: &Node, to: &Node, chains: Vec<Chain>, frames: Vec<u8>) {
    let mut control = from.client.streams();
    let mut stream = control
        .open_stream(to.key.peer_id(), StreamProtocol::new(wire::PROTOCOL_NAME))
        .await
        .unwrap();
    let mut bytes = hello(1, chains);
    bytes.extend_from_slice(&frames);
    stream.write_all(&bytes).await.unwrap();
    stream.flush().await.unwrap();
    // Keep the stream open until the receiver has read it.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Chains cost signature checks: a peer that presents new (valid) chains again and again
/// in later hellos on one stream loses the stream and is penalised, where each hello used
/// to cost the receiver 8 checks per chain on a runtime thread; chains it presented before
/// cost nothing and count for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_keeps_presenting_new_chains_is_dropped() {
    let (net, root, peer) = strict_node_and_a_peer().await;
    let chain = |i: usize| {
        Chain::root_grant(
            &root,
            peer.key.principal(),
            peer.home.join(&format!("p{i}")).unwrap(),
            Validity::for_seconds(60),
        )
    };
    let later = |chains: Vec<Chain>| {
        let mut bytes = Vec::new();
        wire::encode_frame(&Frame::Hello(Hello { stream: 1, chains }), &mut bytes).unwrap();
        bytes
    };
    // A node's new writecaps, and the same chains again and again (a node announces
    // what it holds at every refresh): taken, and checked once.
    let frames: Vec<u8> = (0..20)
        .flat_map(|_| later((0..wire::MAX_HELLO_CHAINS).map(chain).collect()))
        .collect();
    raw_stream(&peer, &net.nodes[1], vec![chain(0)], frames).await;
    assert_eq!(net.nodes[1].runtime.status().blocked, 0);
    // Hello after hello of new chains: dropped, and penalised.
    let frames: Vec<u8> = (1..6)
        .flat_map(|round| {
            later(
                (0..wire::MAX_HELLO_CHAINS)
                    .map(|i| chain(round * 1000 + i))
                    .collect(),
            )
        })
        .collect();
    raw_stream(&peer, &net.nodes[1], vec![chain(0)], frames).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while net.nodes[1].runtime.status().blocked == 0 {
        assert!(Instant::now() < deadline, "the peer was not penalised");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_is_refused_and_a_persistent_one_blocked() {
    let net = Net::start_with(2, |i| {
        if i == 1 {
            Config::new().with_penalty(4, Duration::from_secs(60), Duration::from_secs(60))
        } else {
            Config::new()
        }
    })
    .await;
    let store = spawn_kv(&net, 1, "kv").await;
    // The impostor: a node with a writecap of its own (under another root) that claims
    // to speak for node 0's path. It has no runtime; it listens for the refusal itself.
    let other_root = SigningKey::generate();
    let impostor = start_node(&other_root, 9, Some(&net.nodes[0].addr), Config::new()).await;
    impostor
        .client
        .dial(net.nodes[1].addr.clone())
        .await
        .unwrap();
    let claimed = net.path(0, "c");
    let own_chain = Chain::root_grant(
        &other_root,
        impostor.key.principal(),
        impostor.home.clone(),
        Validity::for_seconds(60),
    );
    let mut frames = Vec::new();
    wire::encode_frame(
        &Frame::Open {
            channel: 0,
            from: claimed.clone(),
            to: store.clone(),
            protocol: "kv/1".into(),
            role: "client".into(),
        },
        &mut frames,
    )
    .unwrap();
    wire::encode_message(
        &mut ChannelState::<String>::default(),
        EnvelopeRef {
            channel: 0,
            session: 1,
            kind: Kind::Tell,
            label: "get",
            payload: b"k",
        },
        &mut frames,
    )
    .unwrap();
    raw_stream(
        &impostor,
        &net.nodes[1],
        vec![own_chain.clone()],
        frames.clone(),
    )
    .await;
    // The refusal comes back to the impostor's node (whose runtime counts it: the raw
    // stream was not its own, so it has no sender to hand it to).
    let deadline = Instant::now() + Duration::from_secs(5);
    while impostor.runtime.status().refusals_received == 0 {
        assert!(Instant::now() < deadline, "no refusal came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = net.nodes[1].runtime.status();
    assert_eq!(status.refused, 1);
    assert_eq!(status.actors[0].handled, 0);
    // Keep at it: blocked.
    for _ in 0..4 {
        let mut control = impostor.client.streams();
        // Once blocked, opening may hang until it gives up: bound each attempt.
        let open = control.open_stream(
            net.nodes[1].key.peer_id(),
            StreamProtocol::new(wire::PROTOCOL_NAME),
        );
        if let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(3), open).await {
            let mut bytes = hello(2, vec![own_chain.clone()]);
            bytes.extend_from_slice(&frames);
            let _ = stream.write_all(&bytes).await;
            let _ = stream.flush().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while net.nodes[1].runtime.status().blocked == 0 {
        assert!(Instant::now() < deadline, "the impostor was not blocked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Blocked: it cannot even connect now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut control = impostor.client.streams();
    let opened = tokio::time::timeout(
        Duration::from_secs(3),
        control.open_stream(
            net.nodes[1].key.peer_id(),
            StreamProtocol::new(wire::PROTOCOL_NAME),
        ),
    )
    .await;
    assert!(
        !matches!(opened, Ok(Ok(_))),
        "a blocked peer opened a stream"
    );
}

/// Two nodes, the second blocking a peer at its first violation (so that being blocked
/// shows a violation was counted), and a peer under a root of its own, connected to it.
async fn strict_node_and_a_peer() -> (Net, SigningKey, Node) {
    let net = Net::start_with(2, |i| {
        if i == 1 {
            Config::new().with_penalty(1, Duration::from_secs(60), Duration::from_secs(60))
        } else {
            Config::new()
        }
    })
    .await;
    let other_root = SigningKey::generate();
    let peer = start_node(&other_root, 9, Some(&net.nodes[0].addr), Config::new()).await;
    peer.client.dial(net.nodes[1].addr.clone()).await.unwrap();
    (net, other_root, peer)
}

/// Channels are held by what they take in memory, not only by their number: a peer that
/// opens channels whose paths are long runs of one-letter segments (4 KiB on the wire,
/// ~100 KiB each in memory) has its stream dropped and is penalised once the stream's
/// table passes 4 MiB, where 4096 of them would have held gigabytes. Fewer are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_channels_would_take_too_much_memory_is_dropped() {
    let (net, other_root, peer) = strict_node_and_a_peer().await;
    let chain = Chain::root_grant(
        &other_root,
        peer.key.principal(),
        peer.home.clone(),
        Validity::for_seconds(60),
    );
    // Paths its writecap covers (its own home, deep down), so that only their size
    // counts against it.
    let deep = |base: &Path| {
        let mut path = base.clone();
        while let Ok(longer) = path.join("a") {
            path = longer;
        }
        path
    };
    let (from, to) = (deep(&peer.home), deep(&net.path(1, "x")));
    let opens = |count: u32| {
        let mut frames = Vec::new();
        for channel in 0..count {
            wire::encode_frame(
                &Frame::Open {
                    channel,
                    from: from.clone(),
                    to: to.clone(),
                    protocol: "kv/1".into(),
                    role: "client".into(),
                },
                &mut frames,
            )
            .unwrap();
        }
        frames
    };
    // Ten channels of such paths (about 2 MiB held): kept.
    raw_stream(&peer, &net.nodes[1], vec![chain.clone()], opens(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(net.nodes[1].runtime.status().blocked, 0);
    // Forty: the stream is dropped, and the peer with it (its writes may then fail).
    let mut control = peer.client.streams();
    let mut stream = control
        .open_stream(
            net.nodes[1].key.peer_id(),
            StreamProtocol::new(wire::PROTOCOL_NAME),
        )
        .await
        .unwrap();
    let mut bytes = hello(2, vec![chain]);
    bytes.extend_from_slice(&opens(40));
    let _ = stream.write_all(&bytes).await;
    let _ = stream.flush().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while net.nodes[1].runtime.status().blocked == 0 {
        assert!(
            Instant::now() < deadline,
            "a stream holding 40 channels of 4 KiB paths was kept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A hello whose chain does not hold for the peer that sent it (here: granted to someone
/// else) counts against the peer: verifying it cost the receiver, sending it cost the
/// peer nothing. An expired one does not (an honest node's may have just expired).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_with_a_chain_that_is_not_the_peers_counts_against_it() {
    let (net, other_root, peer) = strict_node_and_a_peer().await;
    let expired = Chain::root_grant(
        &other_root,
        peer.key.principal(),
        peer.home.clone(),
        Validity {
            not_before: 1,
            expires: 2,
        },
    );
    raw_stream(&peer, &net.nodes[1], vec![expired], Vec::new()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(net.nodes[1].runtime.status().blocked, 0);
    let someone_elses = Chain::root_grant(
        &other_root,
        SigningKey::generate().principal(),
        peer.home.clone(),
        Validity::for_seconds(60),
    );
    raw_stream(&peer, &net.nodes[1], vec![someone_elses], Vec::new()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while net.nodes[1].runtime.status().blocked == 0 {
        assert!(
            Instant::now() < deadline,
            "a hello with another holder's chain went uncounted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Answers every ask with its payload, a little later: the way back can change meanwhile.
struct SlowEcho;

impl Actor for SlowEcho {
    async fn handle(&mut self, _ctx: &Context, mut message: Incoming) -> Result<(), Failure> {
        if let Some(reply) = message.take_reply() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            reply.send("echo", &message.payload).await?;
        }
        Ok(())
    }
}

/// An asker that drops our reply stream cannot make the actor it asks fail: the replies
/// that find the way back gone are dropped (its asks time out), and the actor, written
/// the usual way (`reply.send(..).await?`), goes on without a failure or a restart. A
/// reply that found the way back gone was the actor's error before, so such an asker
/// stopped it after a few restarts; this test fails then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asker_that_drops_its_replies_cannot_make_the_actor_fail() {
    let net = Net::start(2).await;
    let echo = net.path(1, "echo");
    net.nodes[1]
        .runtime
        .spawn(Spec::new(echo.clone()).untyped(), || SlowEcho)
        .await
        .unwrap();
    let root = SigningKey::generate();
    let key = SigningKey::generate();
    let hands = join_overlay(&key, &net.nodes[0].addr).await;
    hands.dial(net.nodes[1].addr.clone()).await.unwrap();
    let mut incoming = hands
        .streams()
        .accept(StreamProtocol::new(wire::PROTOCOL_NAME))
        .unwrap();
    let home = Path::root_of(root.principal()).join("asker").unwrap();
    let chain = Chain::root_grant(
        &root,
        key.principal(),
        home.clone(),
        Validity::for_seconds(600),
    );
    let mut frames = Vec::new();
    wire::encode_frame(
        &Frame::Open {
            channel: 0,
            from: home.clone(),
            to: echo.clone(),
            protocol: String::new(),
            role: String::new(),
        },
        &mut frames,
    )
    .unwrap();
    let mut state = ChannelState::<String>::default();
    for id in 1..=3 {
        wire::encode_message(
            &mut state,
            EnvelopeRef {
                channel: 0,
                session: 1,
                kind: Kind::Ask { id },
                label: "ping",
                payload: b"p",
            },
            &mut frames,
        )
        .unwrap();
    }
    let mut control = hands.streams();
    let mut stream = control
        .open_stream(
            net.nodes[1].key.peer_id(),
            StreamProtocol::new(wire::PROTOCOL_NAME),
        )
        .await
        .unwrap();
    let mut bytes = hello(1, vec![chain]);
    bytes.extend_from_slice(&frames);
    stream.write_all(&bytes).await.unwrap();
    stream.flush().await.unwrap();
    // The first reply opens the way back: taken, then dropped.
    let (replies, _) = take_stream(&mut incoming).await;
    drop(replies);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = net.nodes[1].runtime.status();
        let actor = &status.actors[0];
        assert_eq!(
            (actor.failures, actor.restarts),
            (0, 0),
            "the actor failed: {:?}",
            actor.last_failure
        );
        if actor.handled == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the asks were not handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still serving: an ordinary ask is answered.
    let sender = net.nodes[0].runtime.sender(net.path(0, "c")).unwrap();
    let reply = sender.ask(&echo, "ping", b"again").await.unwrap();
    assert_eq!(reply.payload, b"again");
    drop(stream);
}

/// Takes the next actor stream opened to a node without a runtime, as a runtime would:
/// reads its hello and welcomes it. Returns the stream and the opener's number for it.
async fn take_stream(incoming: &mut dht::IncomingStreams) -> (libp2p::Stream, u64) {
    use futures::StreamExt;
    let (_, mut stream) = tokio::time::timeout(Duration::from_secs(10), incoming.next())
        .await
        .expect("no stream opened")
        .unwrap();
    let mut decoder = wire::FrameDecoder::new();
    let hello = loop {
        if let Some(hello) = decoder.next_message::<Hello>().unwrap() {
            break hello;
        }
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream ended before its hello");
        decoder.extend(&buf[..n]);
    };
    stream.write_all(&[wire::WELCOME]).await.unwrap();
    stream.flush().await.unwrap();
    (stream, hello.stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_its_stream_was_replaced_names_the_message_it_refused() {
    // Node 0 runs a runtime; node 1 is the test's hands: no runtime, it takes node 0's
    // actor streams itself and refuses by hand, late.
    let net = Net::start(1).await;
    let root = &net.root;
    let key = SigningKey::generate();
    let hands = join_overlay(&key, &net.nodes[0].addr).await;
    let home = Path::root_of(root.principal()).join("hands").unwrap();
    let chain = Chain::root_grant(
        root,
        key.principal(),
        home.clone(),
        Validity::for_seconds(600),
    );
    hands.register(home.clone(), chain.clone()).await.unwrap();
    let mut incoming = hands
        .streams()
        .accept(StreamProtocol::new(wire::PROTOCOL_NAME))
        .unwrap();
    let a = &net.nodes[0].runtime;
    let mut notices = a.refusals();
    let (x, y) = (home.join("x").unwrap(), home.join("y").unwrap());
    let (a1, a2) = (net.path(0, "a1"), net.path(0, "a2"));

    // a1 → x on the first stream (channel 0 there); the hands read it and drop the stream.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match a.sender(a1.clone()).unwrap().tell(&x, "hi", b"1").await {
            Ok(()) => break,
            Err(SendError::Unreachable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let (first, first_number) = take_stream(&mut incoming).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(first);
    // Node 0 sees it end; a2 → y then goes on a new stream, also as channel 0.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.status().streams > 0 {
        assert!(Instant::now() < deadline, "the dropped stream stayed open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.sender(a2.clone())
        .unwrap()
        .tell(&y, "hi", b"2")
        .await
        .unwrap();
    let (_second, second_number) = take_stream(&mut incoming).await;
    assert_ne!(first_number, second_number);

    // Now the refusals come: the first stream's message, then the second's, then one
    // for a stream node 0 never opened, then a reply's (replies go on the other lane's
    // streams, which node 0 never opened to the hands) naming the first stream.
    let refusal = |stream, kind, to: &Path| Frame::Refused {
        stream,
        channel: 0,
        sequence: 0,
        kind,
        refusal: Refusal::NoSuchActor {
            path: to.to_string(),
        },
    };
    let mut frames = Vec::new();
    for (stream, kind, to) in [
        (first_number, Kind::Tell, &x),
        (second_number, Kind::Tell, &y),
        (second_number.wrapping_add(1000), Kind::Tell, &y),
        (first_number, Kind::Reply { id: 1 }, &x),
    ] {
        wire::encode_frame(&refusal(stream, kind, to), &mut frames).unwrap();
    }
    let mut control = hands.streams();
    let mut back = control
        .open_stream(
            net.nodes[0].key.peer_id(),
            StreamProtocol::new(wire::PROTOCOL_NAME),
        )
        .await
        .unwrap();
    back.write_all(&hello(9, vec![chain])).await.unwrap();
    back.flush().await.unwrap();
    let mut welcome = [0u8; 1];
    back.read_exact(&mut welcome).await.unwrap();
    back.write_all(&frames).await.unwrap();
    back.flush().await.unwrap();

    let mut named = Vec::new();
    for _ in 0..2 {
        let notice = tokio::time::timeout(Duration::from_secs(5), notices.recv())
            .await
            .expect("no refusal notice")
            .unwrap();
        named.push((notice.from, notice.to));
    }
    assert_eq!(
        named,
        vec![
            (a1.to_string(), x.to_string()),
            (a2.to_string(), y.to_string())
        ]
    );
    // The third and fourth name no stream of ours: counted, but no notice.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.status().refusals_received < 4 {
        assert!(Instant::now() < deadline, "the last refusals were not read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(notices.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_stream_closes_it_and_harms_no_one() {
    let net = Net::start(2).await;
    let store = spawn_kv(&net, 1, "kv").await;
    let attacker = &net.nodes[0];
    let mut control = attacker.client.streams();
    for garbage in [
        vec![0xff; 64],                    // not a hello
        (u32::MAX).to_be_bytes().to_vec(), // an absurd length
        {
            let mut b = hello(1, vec![]);
            b.extend_from_slice(&[0, 0, 0, 3, 1, 2, 3]); // a hello, then junk
            b
        },
        {
            // A hello, a channel, then a message that never said its session.
            let mut b = hello(1, vec![]);
            let open = Frame::Open {
                channel: 0,
                from: net.path(0, "c"),
                to: store.clone(),
                protocol: String::new(),
                role: String::new(),
            };
            wire::encode_frame(&open, &mut b).unwrap();
            b.extend_from_slice(&[0, 0, 0, 3, 0b1000, 0, 0x60]);
            b
        },
    ] {
        let mut stream = control
            .open_stream(
                net.nodes[1].key.peer_id(),
                StreamProtocol::new(wire::PROTOCOL_NAME),
            )
            .await
            .unwrap();
        stream.write_all(&garbage).await.unwrap();
        stream.flush().await.unwrap();
        // The receiver drops the stream: reading ends (after at most its welcome byte,
        // when the hello was good).
        let ended = tokio::time::timeout(Duration::from_secs(35), async {
            let mut buf = [0u8; 16];
            let mut got = 0;
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got += n,
                }
            }
        })
        .await;
        assert!(matches!(ended, Ok(0 | 1)), "{ended:?}");
    }
    // The node still serves well-behaved peers.
    let me = net.nodes[0].runtime.sender(net.path(0, "c")).unwrap();
    let kv = kv_protocol();
    let mut session = me.session(store, &kv, "client").unwrap();
    assert_eq!(session.ask("get", b"k").await.unwrap().label, "value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_100k_tells_is_slowed_down_not_dropped() {
    let net = Net::start_with(2, |_| {
        Config::new().with_mailbox(64).with_outbox_bytes(64 * 1024)
    })
    .await;
    // A receiver slower than the sender.
    let (inbox, mut received) = spawn_collector(&net, 1, "inbox", 500).await;
    let me = net.nodes[0].runtime.sender(net.path(0, "burst")).unwrap();
    const N: u32 = 100_000;
    let sender = tokio::spawn(async move {
        let mut session = me.unchecked(inbox, "", "", 7);
        for i in 0..N {
            session.tell("n", &i.to_be_bytes()).await.unwrap();
        }
    });
    for i in 0..N {
        let (_, _, payload) = tokio::time::timeout(Duration::from_secs(30), received.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(u32::from_be_bytes(payload.try_into().unwrap()), i);
    }
    sender.await.unwrap();
    let sent = net.nodes[0].runtime.status();
    assert!(sent.backpressure_waits > 0, "the sender never had to wait");
    assert_eq!(sent.streams, 1, "one stream carried it all");
    assert_eq!(net.nodes[1].runtime.status().refused, 0);
}

/// member → room: join, then posts, then leave.
fn chat_protocol() -> Arc<Protocol> {
    Arc::new(
        Protocol::new(
            "chat/1",
            ["member", "room"],
            Global::send(
                "member",
                "room",
                "join",
                Global::repeat(
                    "talk",
                    Global::choice(
                        "member",
                        [
                            Global::send("member", "room", "post", Global::again("talk")),
                            Global::send("member", "room", "leave", Global::End),
                        ],
                    ),
                ),
            ),
        )
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_sub_reaches_every_subscriber_in_a_20_node_mesh() {
    let net = Net::start(20).await;
    let chat = chat_protocol();
    let topic = Path::root_of(net.root.principal()).join("lobby").unwrap();
    let mut subscriptions = Vec::new();
    for node in &net.nodes {
        subscriptions.push(
            node.runtime
                .subscribe(&topic, Some((chat.clone(), "room")))
                .await
                .unwrap(),
        );
    }
    // Let subscriptions spread and meshes form (gossipsub heartbeats every 700 ms): a
    // warm-up member joins (a new session each time) until every subscriber heard one.
    let warm = net.nodes[3].runtime.sender(net.path(3, "warm-up")).unwrap();
    let mut heard = vec![false; subscriptions.len()];
    let deadline = Instant::now() + Duration::from_secs(30);
    while heard.iter().any(|h| !h) {
        assert!(
            Instant::now() < deadline,
            "the mesh never reached everyone: {heard:?}"
        );
        let mut session = warm.session(topic.clone(), &chat, "member").unwrap();
        session.publish("join", b"warm-up").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (i, subscription) in subscriptions.iter_mut().enumerate() {
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(1), subscription.recv()).await
            {
                heard[i] = true;
            }
        }
    }
    let me = net.nodes[3].runtime.sender(net.path(3, "alice")).unwrap();
    let mut session = me.session(topic.clone(), &chat, "member").unwrap();
    let mut sent = vec![("join".to_string(), b"alice".to_vec())];
    for i in 0..5u8 {
        sent.push(("post".to_string(), vec![i]));
    }
    sent.push(("leave".to_string(), Vec::new()));
    for (label, payload) in &sent {
        session.publish(label, payload).await.unwrap();
        // Pub-sub promises no order: posts may overtake each other. Spacing them keeps
        // the session's own order (join, posts, leave) in step at every subscriber,
        // which delivers nothing out of that order.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, subscription) in subscriptions.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.len() < sent.len() {
            let published = tokio::time::timeout(Duration::from_secs(10), subscription.recv())
                .await
                .unwrap_or_else(|_| panic!("node {i} got only {got:?}"))
                .unwrap();
            assert_eq!(*published.from, net.path(3, "alice"));
            got.push((published.label, published.payload));
        }
        // Everything arrived, join first and leave last; posts in any order.
        assert_eq!(got.first(), sent.first(), "node {i}");
        assert_eq!(got.last(), sent.last(), "node {i}");
        got.sort();
        let mut expected = sent.clone();
        expected.sort();
        assert_eq!(got, expected, "node {i}");
    }
    let rejected: u64 = net
        .nodes
        .iter()
        .map(|n| n.runtime.status().published_rejected)
        .sum();
    assert_eq!(rejected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_sub_refuses_violations_and_impostors() {
    let net = Net::start(3).await;
    let chat = chat_protocol();
    let topic = Path::root_of(net.root.principal()).join("lobby").unwrap();
    let mut subscription = net.nodes[1]
        .runtime
        .subscribe(&topic, Some((chat.clone(), "room")))
        .await
        .unwrap();
    // The other nodes relay: they subscribe too.
    let _relay = net.nodes[2]
        .runtime
        .subscribe(&topic, Some((chat.clone(), "room")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let me = net.nodes[0].runtime.sender(net.path(0, "mallory")).unwrap();
    // Out of order: joining twice in one session, and a post in a session that no
    // subscriber saw begin. Gossip is unordered and subscribers may come late, so these
    // are not delivered but held against no one.
    let mut twice = me.unchecked(topic.clone(), "chat/1", "member", 1);
    twice.publish("join", b"mallory").await.unwrap();
    twice.publish("join", b"again").await.unwrap();
    me.unchecked(topic.clone(), "chat/1", "member", 3)
        .publish("post", b"who?")
        .await
        .unwrap();
    // A role the publisher cannot play: rejected.
    me.unchecked(topic.clone(), "chat/1", "room", 4)
        .publish("join", b"i am the room")
        .await
        .unwrap();
    // An impostor: node 0 signs a publication claiming to be node 1's actor, with the
    // only chain it has (its own).
    let forged = protocols::actor::Publication {
        from: net.path(1, "alice"),
        chain: Chain::root_grant(
            &net.root,
            net.nodes[0].key.principal(),
            net.nodes[0].home.clone(),
            Validity::for_seconds(60),
        ),
        protocol: "chat/1".into(),
        role: "member".into(),
        session: 2,
        label: "join".into(),
        payload: b"i am alice".to_vec(),
    };
    net.nodes[0]
        .client
        .publish(topic.to_string(), protocols::wire::encode(&forged).unwrap())
        .await
        .unwrap();
    // Garbage that is no publication at all.
    net.nodes[0]
        .client
        .publish(topic.to_string(), vec![0xff; 40])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while net.nodes[1].runtime.status().published_rejected < 3
        || net.nodes[1].runtime.status().published_out_of_order < 2
    {
        assert!(
            Instant::now() < deadline,
            "rejected only {}",
            net.nodes[1].runtime.status().published_rejected
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Only the first join came through; then a well-behaved member does too.
    let first = tokio::time::timeout(Duration::from_secs(10), subscription.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.label.as_str(), first.session), ("join", 1));
    let mut session = me.session(topic.clone(), &chat, "member").unwrap();
    session.publish("join", b"mallory").await.unwrap();
    let published = tokio::time::timeout(Duration::from_secs(10), subscription.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(published.label, "join");
    assert_eq!(published.payload, b"mallory");
    assert_eq!(published.session, session.id());
}

/// Holds every message until the test opens the gate.
struct Stuck(Arc<tokio::sync::Semaphore>);

impl Actor for Stuck {
    async fn handle(&mut self, _ctx: &Context, _message: Incoming) -> Result<(), Failure> {
        if let Ok(permit) = self.0.acquire().await {
            permit.forget();
        }
        Ok(())
    }
}

/// A [`Stuck`] actor at `n<node>/stuck`, untyped, and the gate that lets its handlers
/// through.
async fn spawn_stuck(net: &Net, node: usize) -> (Path, Arc<tokio::sync::Semaphore>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let stuck = net.path(node, "stuck");
    let held = gate.clone();
    net.nodes[node]
        .runtime
        .spawn(Spec::new(stuck.clone()).untyped(), move || {
            Stuck(held.clone())
        })
        .await
        .unwrap();
    (stuck, gate)
}

/// Asks from another node waiting for room in a stuck actor's mailbox when the actor is
/// stopped: each is refused (the refusal names its own message), none left to time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asks_waiting_for_an_actor_that_stops_are_each_refused() {
    let net = Net::start_with(2, |_| {
        Config::new()
            .with_mailbox(1)
            .with_ask_timeout(Duration::from_secs(20))
    })
    .await;
    let (stuck, _gate) = spawn_stuck(&net, 0).await;
    let asker = net.nodes[1].runtime.sender(net.path(1, "asker")).unwrap();
    // The first ask finds the way; the rest go together.
    let first = {
        let (asker, stuck) = (asker.clone(), stuck.clone());
        tokio::spawn(async move { asker.ask(&stuck, "q", &[0]).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while net.nodes[0].runtime.status().delivered == 0 {
        assert!(Instant::now() < deadline, "the first ask never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asks: Vec<_> = (1..50u8)
        .map(|i| {
            let (asker, stuck) = (asker.clone(), stuck.clone());
            tokio::spawn(async move { asker.ask(&stuck, "q", &[i]).await })
        })
        .collect();
    // One is being handled, one waits in the mailbox: the others wait for room.
    let deadline = Instant::now() + Duration::from_secs(10);
    while net.nodes[0].runtime.status().actors[0].queued == 0 {
        assert!(Instant::now() < deadline, "the asks never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(net.nodes[0].runtime.stop(&stuck));
    for (i, ask) in std::iter::once(first).chain(asks).enumerate() {
        let outcome = tokio::time::timeout(Duration::from_secs(10), ask)
            .await
            .unwrap_or_else(|_| panic!("ask {i} was left waiting"))
            .unwrap();
        // The one being handled fails as stopped; the one in the mailbox goes unanswered;
        // those waiting for room find no actor.
        match (i, outcome) {
            (0, Err(AskError::Refused(Refusal::Failed { reason, .. }))) => {
                assert!(reason.contains("stopped"), "{reason}");
            }
            (
                1..,
                Err(AskError::Refused(Refusal::NoReply { .. } | Refusal::NoSuchActor { .. })),
            ) => {}
            (i, outcome) => panic!("ask {i}: {outcome:?}"),
        }
    }
}

/// Holds on `hold` until let through, fails on `boom`, answers nothing else.
struct HoldThenFail(Arc<tokio::sync::Semaphore>);

impl Actor for HoldThenFail {
    async fn handle(&mut self, _ctx: &Context, message: Incoming) -> Result<(), Failure> {
        match &*message.label {
            "hold" => {
                if let Ok(permit) = self.0.acquire().await {
                    permit.forget();
                }
                Ok(())
            }
            "boom" => Err(Failure("asked to fail".into())),
            _ => Ok(()),
        }
    }
}

/// Asks taken from the mailbox with a message that then failed wait out the restart's
/// backoff; a stop during it refuses them at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_restarts_backoff_refuses_what_was_taken() {
    let net = Net::start(1).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let path = net.path(0, "flaky");
    let restart = Restart {
        max_restarts: 5,
        window: Duration::from_secs(60),
        backoff: Duration::from_secs(60),
    };
    {
        let gate = gate.clone();
        net.nodes[0]
            .runtime
            .spawn(
                Spec::new(path.clone()).untyped().restart(restart),
                move || HoldThenFail(gate.clone()),
            )
            .await
            .unwrap();
    }
    let me = net.nodes[0].runtime.sender(net.path(0, "me")).unwrap();
    me.tell(&path, "hold", b"").await.unwrap();
    me.tell(&path, "boom", b"").await.unwrap();
    let asks: Vec<_> = (0..3)
        .map(|_| {
            let (me, path) = (me.clone(), path.clone());
            tokio::spawn(async move { me.ask(&path, "q", b"").await })
        })
        .collect();
    let actor = || net.nodes[0].runtime.status().actors[0].clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while actor().queued < 4 {
        assert!(Instant::now() < deadline, "the messages were not queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let `hold` through: the actor takes the four queued together, fails on `boom` and
    // waits out its backoff with the asks taken.
    gate.add_permits(1);
    while actor().state != "restarting" {
        assert!(Instant::now() < deadline, "the actor did not fail");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(net.nodes[0].runtime.stop(&path));
    for ask in asks {
        let outcome = tokio::time::timeout(Duration::from_secs(10), ask)
            .await
            .expect("an ask waited out the backoff")
            .unwrap();
        assert!(
            matches!(outcome, Err(AskError::Refused(Refusal::NoReply { .. }))),
            "{outcome:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_is_not_held_up_behind_a_full_mailbox() {
    let net = Net::start_with(2, |_| Config::new().with_mailbox(1).with_outbox_bytes(4096)).await;
    let (stuck, gate) = spawn_stuck(&net, 0).await;
    let store = spawn_kv(&net, 1, "kv").await;
    // Node 1 floods node 0's stuck actor until its mailbox and the stream to node 0 are
    // full: node 0 reads nothing more of node 1's requests.
    let flooder = net.nodes[1].runtime.sender(net.path(1, "flood")).unwrap();
    let flood = tokio::spawn(async move {
        for _ in 0..100_000u32 {
            if flooder.tell(&stuck, "n", &[0; 100]).await.is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while net.nodes[1].runtime.status().backpressure_waits == 0 {
        assert!(
            Instant::now() < deadline,
            "the flood never filled the stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Node 0 asks node 1: the answer comes back on its own stream all the same.
    let me = net.nodes[0].runtime.sender(net.path(0, "c")).unwrap();
    let kv = kv_protocol();
    let mut session = me.session(store, &kv, "client").unwrap();
    let reply = session
        .ask_within("get", b"k", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply.label, "value");
    gate.add_permits(1 << 20);
    flood.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_session_stops_after_an_ask_with_no_clear_outcome() {
    let net = Net::start(2).await;
    let kv = kv_protocol();
    let silent = net.path(1, "silent");
    net.nodes[1]
        .runtime
        .spawn(Spec::new(silent.clone()).serves(&kv, "server"), || {
            Silent(Vec::new())
        })
        .await
        .unwrap();
    let me = net.nodes[0].runtime.sender(net.path(0, "c")).unwrap();
    let mut session = me.session(silent, &kv, "client").unwrap();
    let err = session
        .ask_within("get", b"k", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err, AskError::Timeout(Duration::from_millis(300)));
    // The receiver took the get and waits to send a value; the asker cannot tell, so
    // the session sends nothing more rather than fall out of step.
    let err = session.ask("get", b"k").await.unwrap_err();
    assert!(
        matches!(&err, AskError::Send(SendError::Protocol(reason)) if reason.contains("new session")),
        "{err:?}"
    );
}

/// Keeps asks' reply handles; on `boom` lets go of them all and fails.
struct Hoarder(Vec<btnode::actor::ReplyTo>);

impl Actor for Hoarder {
    async fn handle(&mut self, _ctx: &Context, mut message: Incoming) -> Result<(), Failure> {
        let reply = message.take_reply();
        if message.label == "boom" {
            self.0.clear();
            return Err(Failure("boom".into()));
        }
        self.0.extend(reply);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_is_reported_only_for_the_ask_that_caused_it() {
    let net = Net::start(2).await;
    let hoarder = net.path(1, "hoarder");
    net.nodes[1]
        .runtime
        .spawn(Spec::new(hoarder.clone()).untyped(), || Hoarder(Vec::new()))
        .await
        .unwrap();
    let me = net.nodes[0].runtime.sender(net.path(0, "c")).unwrap();
    let kept = {
        let me = me.clone();
        let hoarder = hoarder.clone();
        tokio::spawn(async move { me.ask(&hoarder, "keep", b"").await })
    };
    // Let the first ask be kept before the second one fails the actor.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failed = me.ask(&hoarder, "boom", b"").await.unwrap_err();
    assert!(
        matches!(failed, AskError::Refused(Refusal::Failed { .. })),
        "{failed:?}"
    );
    let kept = kept.await.unwrap().unwrap_err();
    assert!(
        matches!(kept, AskError::Refused(Refusal::NoReply { .. })),
        "{kept:?}"
    );
}

/// The impostor across real processes: a `btnode` daemon runs an actor (`btnode
/// listen`), and a node in this process, over TCP on 127.0.0.1 with a writecap of its
/// own under another root, opens an actor stream to it claiming a path of the daemon's
/// tree. The daemon refuses: the refusal comes back, the actor hears nothing, the
/// daemon counts it, and a genuine tell from the tree's root still arrives.
#[test]
fn an_impostor_is_refused_by_a_btnode_process() {
    let btnode = std::path::Path::new(env!("CARGO_BIN_EXE_btnode"));
    let mut net = testnet::Testnet::start(btnode, 2).unwrap();
    net.wait_converged(Duration::from_secs(60)).unwrap();
    net.grant(1, &net.path("n1")).unwrap();
    let echo = net.path("n1/echo");
    let listener = net.stream(1, &["listen", &echo]).unwrap();
    assert_eq!(listener.next("listen's answer")["listening"], echo.as_str());
    let target: Multiaddr = net.nodes[1].address.clone().unwrap().parse().unwrap();
    let claimed: Path = net.path("n0").parse().unwrap();
    let to: Path = echo.parse().unwrap();
    let peer_id = net.nodes[1].peer_id.clone();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let other_root = SigningKey::generate();
    let home = Path::root_of(other_root.principal())
        .join("impostor")
        .unwrap();
    runtime.block_on(async {
        let key = SigningKey::generate();
        let config = dht::Config::new().with_listen(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]);
        let store = dht::Store::in_memory(10_000);
        let (client, _task) = dht::start(key.clone(), config, store, dht::Transports::Network)
            .await
            .unwrap();
        let own_chain = Chain::root_grant(
            &other_root,
            key.principal(),
            home.clone(),
            Validity::for_seconds(60),
        );
        let runtime = Runtime::start(client.clone(), &key, vec![own_chain.clone()], Config::new())
            .await
            .unwrap();
        client.dial(target.clone()).await.unwrap();
        // One tell, from `from`, on a stream of its own after a hello with our chain.
        let peer: libp2p::PeerId = peer_id.parse().unwrap();
        let send = |from: Path, stream_id: u64| {
            let (client, own_chain, to) = (client.clone(), own_chain.clone(), to.clone());
            async move {
                let mut bytes = hello(stream_id, vec![own_chain]);
                wire::encode_frame(
                    &Frame::Open {
                        channel: 0,
                        from,
                        to,
                        protocol: String::new(),
                        role: String::new(),
                    },
                    &mut bytes,
                )
                .unwrap();
                wire::encode_message(
                    &mut ChannelState::<String>::default(),
                    EnvelopeRef {
                        channel: 0,
                        session: 1,
                        kind: Kind::Tell,
                        label: "message",
                        // CBOR for the text "forged".
                        payload: b"\x66forged",
                    },
                    &mut bytes,
                )
                .unwrap();
                let mut stream = client
                    .streams()
                    .open_stream(peer, StreamProtocol::new(wire::PROTOCOL_NAME))
                    .await
                    .unwrap();
                stream.write_all(&bytes).await.unwrap();
                stream.flush().await.unwrap();
                stream
            }
        };
        // Claiming the daemon's tree: refused, and the refusal comes back.
        let forged = send(claimed.clone(), 1).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while runtime.status().refusals_received == 0 {
            assert!(
                Instant::now() < deadline,
                "no refusal came back from the daemon"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The same bytes from the path it does hold: delivered (so what was refused was
        // the claim, nothing else).
        let honest = send(home.clone(), 2).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop((forged, honest));
    });
    // The actor heard the honest tell only, and the daemon counted one refusal.
    let heard = listener.next("the tell from the path the sender holds");
    assert_eq!(heard["from"], home.to_string());
    assert_eq!(heard["payload"], "forged");
    assert_eq!(listener.next_within(Duration::from_millis(500)), None);
    let status = net.json(1, &["status"]).unwrap();
    assert_eq!(status["actors"]["refused"], 1, "{status}");
    // The path still works for its rightful senders.
    net.json(0, &["tell", &echo, "\"genuine\""]).unwrap();
    let told = listener.next("node 0's tell");
    assert_eq!(told["payload"], "genuine");
    assert_eq!(told["from"], net.path("cli"));
}

/// A message the wire format would refuse (a label over 128 bytes, a payload over a
/// frame's limit) is refused the same way between actors on one node, where it never
/// becomes a frame: it used to be delivered there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_network_refuses_is_refused_locally_too() {
    let net = Net::start(2).await;
    let (collector, mut received) = spawn_collector(&net, 1, "sink", 0).await;
    let long_label = "l".repeat(129);
    let big = vec![7u8; keys::limits::MAX_MESSAGE_BYTES];
    for (i, place) in [(0, "across the network"), (1, "on one node")] {
        let me = net.nodes[i].runtime.sender(net.path(i, "me")).unwrap();
        for (label, payload) in [(long_label.as_str(), &b"x"[..]), ("big", &big[..])] {
            let refused = me.tell(&collector, label, payload).await;
            assert!(
                matches!(refused, Err(SendError::Encode(_))),
                "{place}, label of {} bytes, payload of {}: {refused:?}",
                label.len(),
                payload.len()
            );
        }
        me.tell(&collector, &"l".repeat(128), b"x").await.unwrap();
        let (from, label, _) = received.recv().await.unwrap();
        assert_eq!((*from).clone(), net.path(i, "me"));
        assert_eq!(label.len(), 128);
    }
}

/// A node holding the revocation lists of as many issuers as it keeps still takes the
/// list of an issuer whose writecaps it relies on: lists of made-up issuers (anyone can
/// sign one) filled the bound and kept out those of the delegators of its own trees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_of_made_up_issuers_do_not_keep_out_a_delegators() {
    let net = Net::start(2).await;
    let (inbox, mut received) = spawn_collector(&net, 1, "inbox", 0).await;
    // A third node whose writecap passes through a delegator.
    let delegator = SigningKey::generate();
    let key = SigningKey::generate();
    let client = join_overlay(&key, &net.nodes[0].addr).await;
    let tree = Path::root_of(net.root.principal());
    let delegated = tree.join("delegated").unwrap();
    let chain = Chain::root_grant(
        &net.root,
        delegator.principal(),
        delegated.clone(),
        Validity::for_seconds(3600),
    )
    .delegate(
        &delegator,
        key.principal(),
        delegated.clone(),
        Validity::for_seconds(3600),
        keys::now(),
    )
    .unwrap();
    // It holds a writecap of a tree of its own too (anyone can make one).
    let made_up = SigningKey::generate();
    let own_tree = Chain::root_grant(
        &made_up,
        key.principal(),
        Path::root_of(made_up.principal()),
        Validity::for_seconds(3600),
    );
    let third = Runtime::start(client, &key, vec![chain, own_tree], Config::new())
        .await
        .unwrap();
    // Its hello brings node 1 both chains, one with the delegator's link.
    let me = third.sender(delegated.join("w").unwrap()).unwrap();
    // Once it has joined: until then nothing resolves.
    let joined = Instant::now() + Duration::from_secs(20);
    while let Err(e) = me.tell(&inbox, "n", b"hello").await {
        assert!(
            Instant::now() < joined,
            "the third node never reached node 1: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::timeout(Duration::from_secs(20), received.recv())
        .await
        .unwrap()
        .unwrap();
    // Node 0 passes on lists of made-up issuers up to the bound, then the delegator's.
    let taken = net.nodes[1].runtime.revocations().clone();
    let now = keys::now();
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while taken.read().len() < keys::limits::MAX_REVOCATION_ISSUERS {
        assert!(
            Instant::now() < deadline,
            "lists were not taken: {}",
            taken.read().len()
        );
        let list =
            keys::RevocationList::issue(&SigningKey::generate(), 1, now, vec![], vec![]).unwrap();
        if net.nodes[0]
            .runtime
            .publish_revocations(&list)
            .await
            .is_ok()
        {
            sent += 1;
        }
        if sent % 32 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let revoked = SigningKey::generate().principal();
    let list = keys::RevocationList::issue(&delegator, 1, now, vec![], vec![revoked]).unwrap();
    while taken.read().get(&delegator.principal()).is_none() {
        assert!(
            Instant::now() < deadline,
            "the delegator's list was not taken"
        );
        let _ = net.nodes[0].runtime.publish_revocations(&list).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A made-up issuer's is still not, nor that of the root of a tree node 1 has a
    // verified chain of but does not belong to: published before one of the tree's
    // root, which is taken, over the same connection.
    let stranger = SigningKey::generate();
    for issuer in [&stranger, &made_up] {
        let list = keys::RevocationList::issue(issuer, 1, now, vec![], vec![]).unwrap();
        net.nodes[0]
            .runtime
            .publish_revocations(&list)
            .await
            .unwrap();
    }
    let roots = keys::RevocationList::issue(&net.root, 1, now, vec![], vec![]).unwrap();
    while taken.read().get(&net.root.principal()).is_none() {
        assert!(Instant::now() < deadline, "the root's list was not taken");
        let _ = net.nodes[0].runtime.publish_revocations(&roots).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(taken.read().get(&stranger.principal()).is_none());
    assert!(taken.read().get(&made_up.principal()).is_none());
}
