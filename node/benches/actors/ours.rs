//! Our actor runtime between two embedded nodes on TCP loopback: typed tells to a
//! counting actor, and typed asks answered by an echoing actor. Both ends check every
//! message against the protocol, as in production.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use btnode::actor::{Actor, Context, Failure, Incoming, SendError, Session, Spec};
use btnode::embed::{Embedded, Options};
use protocols::session::{Global, Protocol};

use crate::baselines::{self, StreamPair};
use tokio::sync::Notify;

/// client → server: any number of `data` tells and `ping` asks (answered by `pong`).
fn protocol() -> anyhow::Result<Arc<Protocol>> {
    let global = Global::repeat(
        "run",
        Global::choice(
            "client",
            [
                Global::send("client", "server", "data", Global::again("run")),
                Global::send(
                    "client",
                    "server",
                    "ping",
                    Global::send("server", "client", "pong", Global::again("run")),
                ),
            ],
        ),
    );
    Ok(Arc::new(Protocol::new(
        "bench/1",
        ["client", "server"],
        global,
    )?))
}

/// Counts `data`, answers `ping`.
struct Server {
    count: Arc<AtomicU64>,
    target: u64,
    done: Arc<Notify>,
}

impl Actor for Server {
    async fn handle(&mut self, _ctx: &Context, mut message: Incoming) -> Result<(), Failure> {
        if let Some(reply) = message.take_reply() {
            reply.send("pong", &message.payload).await?;
        } else if self.count.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            self.done.notify_one();
        }
        Ok(())
    }
}

struct Pair {
    session: Session,
    count: Arc<AtomicU64>,
    done: Arc<Notify>,
    // Kept alive for the measurement.
    _nodes: (Embedded, Embedded),
}

/// Two embedded nodes, the first joined through the second.
async fn two_nodes() -> anyhow::Result<(Embedded, Embedded)> {
    let b = Embedded::start(Options::default()).await?;
    let bootstrap = b.listen_addrs[0].parse()?;
    let a = Embedded::start(Options {
        bootstrap: vec![bootstrap],
        ..Options::default()
    })
    .await?;
    Ok((a, b))
}

async fn pair(target: u64, local: bool) -> anyhow::Result<Pair> {
    let protocol = protocol()?;
    let (a, b) = two_nodes().await?;
    // Local: both ends on node b, so no byte crosses the network.
    let (a, b) = if local { (b, a) } else { (a, b) };
    let server_node = if local { &a } else { &b };
    let count = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let server = server_node.tree.join("server")?;
    {
        let (count, done) = (count.clone(), done.clone());
        server_node
            .runtime
            .spawn(
                Spec::new(server.clone()).serves(&protocol, "server"),
                move || Server {
                    count: count.clone(),
                    target,
                    done: done.clone(),
                },
            )
            .await?;
    }
    let sender = a.runtime.sender(a.tree.join("client")?)?;
    let mut session = sender.session(server, &protocol, "client")?;
    // The first ask resolves the path and opens the streams; retry until the record
    // has spread.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match session.ask("ping", b"warm").await {
            Ok(_) => break,
            Err(btnode::actor::AskError::Send(SendError::Unreachable { .. }))
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => bail!("warm-up ask failed: {e}"),
        }
    }
    Ok(Pair {
        session,
        count,
        done,
        _nodes: (a, b),
    })
}

/// Two embedded nodes that found each other through the DHT, and one bare stream of
/// [`baselines::STREAM_PROTOCOL`] between them on the connection the overlay made: what
/// the node's own connections cost (every behaviour's handler polled on it) before any
/// of the actor runtime's work.
async fn overlay_stream_pair() -> anyhow::Result<StreamPair<(Embedded, Embedded)>> {
    let (a, b) = two_nodes().await?;
    let mut incoming = b.client.streams().accept(baselines::STREAM_PROTOCOL)?;
    // The stream swarm dials at the addresses the overlay learned: retry until a has
    // joined through b.
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = loop {
        match a
            .client
            .streams()
            .open_stream(b.key.peer_id(), baselines::STREAM_PROTOCOL)
            .await
        {
            Ok(stream) => break stream,
            Err(e) if Instant::now() >= deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let (_, server) = futures::StreamExt::next(&mut incoming)
        .await
        .context("the node stopped accepting streams")?;
    Ok(StreamPair {
        client,
        server,
        _swarms: (a, b),
    })
}

/// [`baselines::libp2p_stream_throughput`] on the overlay's connection.
pub(crate) async fn overlay_stream_throughput(
    messages: u64,
    payload: usize,
) -> anyhow::Result<f64> {
    baselines::stream_throughput(overlay_stream_pair().await?, messages, payload).await
}

/// [`baselines::libp2p_stream_round_trips`] on the overlay's connection.
pub(crate) async fn overlay_stream_round_trips(
    rounds: usize,
    payload: usize,
) -> anyhow::Result<Vec<Duration>> {
    baselines::stream_round_trips(overlay_stream_pair().await?, rounds, payload).await
}

/// Tells per second: `messages` typed tells from one session, timed until the receiving
/// actor has handled the last one.
pub(crate) async fn tell_throughput(messages: u64, payload: usize) -> anyhow::Result<f64> {
    tells(messages, payload, false).await
}

/// [`tell_throughput`] with sender and actor on one node: the runtime's own cost.
pub(crate) async fn local_tell_throughput(messages: u64, payload: usize) -> anyhow::Result<f64> {
    tells(messages, payload, true).await
}

async fn tells(messages: u64, payload: usize, local: bool) -> anyhow::Result<f64> {
    let mut pair = pair(messages, local).await?;
    let body = vec![7u8; payload];
    let done = pair.done.clone();
    let finished = done.notified();
    tokio::pin!(finished);
    finished.as_mut().enable();
    let started = Instant::now();
    for _ in 0..messages {
        pair.session.tell("data", &body).await?;
    }
    tokio::time::timeout(Duration::from_secs(120), finished)
        .await
        .context("the receiver did not get every tell")?;
    let elapsed = started.elapsed();
    let got = pair.count.load(Ordering::Relaxed);
    if got != messages {
        bail!("{got} of {messages} tells arrived");
    }
    Ok(messages as f64 / elapsed.as_secs_f64())
}

/// Round trips of typed asks, one at a time.
pub(crate) async fn ask_round_trips(
    rounds: usize,
    payload: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut pair = pair(u64::MAX, false).await?;
    let body = vec![7u8; payload];
    for _ in 0..rounds / 10 {
        pair.session.ask("ping", &body).await?;
    }
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let reply = pair.session.ask("ping", &body).await?;
        samples.push(started.elapsed());
        if reply.payload.len() != payload {
            bail!("a pong of {} bytes", reply.payload.len());
        }
    }
    Ok(samples)
}
