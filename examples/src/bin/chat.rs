//! A chat room over Blocktree's pub-sub, with a declared session protocol.
//!
//! The room is a topic named by a path. `chat/1` has two roles, `member` and `room`: a
//! member publishes `join` (payload: its name), then any number of `post`s (payload:
//! `{"name": …, "text": …}`), then `leave` (payload: its name). Every subscriber checks
//! each publication against the protocol, and the publisher's writecap for the path it
//! publishes as, before it delivers or forwards it. Payloads are CBOR (`keys::cbor`), so
//! `btnode sub <room>` shows them as JSON.
//!
//! Each line typed is posted; end of input (Ctrl-D) or Ctrl-C leaves the room.
//!
//! # Running it on a local network
//!
//! ```text
//! cargo build -p btnode -p testnet -p examples
//! target/debug/bttestnet up --nodes 3
//! # prints, among others:
//! #   node0: /ip4/127.0.0.1/tcp/PORT/p2p/PEER  data dir /tmp/DIR/node0
//!
//! # alice opens a room (no --room: a new one, <her tree>/room):
//! target/debug/chat --bootstrap /ip4/127.0.0.1/tcp/PORT/p2p/PEER --name alice
//! #   room: /TREE/room
//! #   join with: --room /TREE/room --bootstrap /ip4/127.0.0.1/tcp/…/p2p/…
//!
//! # bob joins it, through any node of the network:
//! target/debug/chat --bootstrap /ip4/127.0.0.1/tcp/PORT/p2p/PEER --room /TREE/room --name bob
//!
//! # and anyone can watch, e.g. a testnet node:
//! export BT_PASSPHRASE='…'
//! target/debug/btnode --data-dir /tmp/DIR/node1 sub /TREE/room
//! ```
//!
//! Pub-sub only reaches nodes that subscribe to the topic and are connected to one
//! another; nodes in one small overlay are, as each connects to the others it finds
//! while joining.
//!
//! # Late joiners
//!
//! A subscriber checks each member's publications against the protocol from the start
//! of that member's session, so one that subscribed after a member's `join` refuses
//! that member's posts (a `post` before a `join`). Whenever a member hears someone new
//! join, it therefore joins again in a new session, which the newcomer hears from the
//! start; members already known are not announced twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use btnode::actor::{Published, Sender, Session};
use btnode::embed::{Embedded, Options};
use btnode::payload::{decode, encode};
use clap::Parser;
use keys::Path;
use libp2p::Multiaddr;
use protocols::session::{Global, Protocol};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing_subscriber::EnvFilter;

/// How long gossipsub takes to tell peers about a new subscription and form a mesh
/// (its heartbeat is 700 ms): publications before then reach no one.
const MESH_FORMS_IN: Duration = Duration::from_secs(2);

/// How long to wait after someone new joined before joining again for them, so that
/// several joins heard at once cost one announcement.
const REANNOUNCE_AFTER: Duration = Duration::from_millis(300);

/// How long `leave` gets to go out before the node stops.
const LEAVE_FLUSH: Duration = Duration::from_millis(500);

/// Lines typed ahead of the network.
const INPUT_QUEUE: usize = 64;

#[derive(Debug, Parser)]
#[command(
    name = "chat",
    version,
    about = "A chat room over Blocktree's pub-sub (protocol chat/1)",
    long_about = "A chat room over Blocktree's pub-sub (protocol chat/1).\n\n\
        Each line read from standard input is posted to the room; end of input or \
        Ctrl-C leaves it. Without --room, opens a new room and prints how to join it."
)]
struct Cli {
    /// A node to join through: another chat's address, or a testnet node's
    /// (repeatable). Default: none, a network of its own.
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// The address to listen on. Default: TCP on 127.0.0.1, an ephemeral port.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Option<Multiaddr>,
    /// The room: its topic path. Default: a new room, <this node's tree>/room.
    #[arg(long, value_name = "PATH")]
    room: Option<Path>,
    /// The name others see.
    #[arg(long)]
    name: String,
}

/// What a `post` carries.
#[derive(Debug, Serialize, Deserialize)]
struct Post {
    name: String,
    text: String,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(cli))
}

/// `chat/1`: member → room join, then repeat { member chooses: post → again, leave → end }.
fn chat_protocol() -> anyhow::Result<Arc<Protocol>> {
    let protocol = Protocol::new(
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
    )?;
    Ok(Arc::new(protocol))
}

/// Standard input, line by line. A thread of its own: a blocking read there does not
/// keep the program from ending, as one on the async runtime's blocking pool would.
fn input() -> mpsc::Receiver<String> {
    let (lines, received) = mpsc::channel(INPUT_QUEUE);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if lines.blocking_send(line).is_err() {
                break;
            }
        }
    });
    received
}

/// This member's side of the room.
struct Member {
    sender: Sender,
    room: Path,
    chat: Arc<Protocol>,
    name: String,
    session: Session,
}

impl Member {
    /// Joins in a new session.
    async fn join(&mut self) -> anyhow::Result<()> {
        self.session = self
            .sender
            .session(self.room.clone(), &self.chat, "member")?;
        self.session.publish("join", &encode(&self.name)?).await?;
        Ok(())
    }

    async fn post(&mut self, text: String) -> anyhow::Result<()> {
        let post = Post {
            name: self.name.clone(),
            text,
        };
        self.session.publish("post", &encode(&post)?).await?;
        Ok(())
    }

    async fn leave(&mut self) -> anyhow::Result<()> {
        self.session.publish("leave", &encode(&self.name)?).await?;
        Ok(())
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut options = Options {
        bootstrap: cli.bootstrap,
        ..Options::default()
    };
    if let Some(listen) = cli.listen {
        options.listen = vec![listen];
    }
    let node = Embedded::start(options)
        .await
        .context("cannot start the node")?;
    let chat = chat_protocol()?;
    let room = match cli.room {
        Some(room) => room,
        None => node.tree.join("room")?,
    };
    let sender = node.runtime.sender(node.tree.join("member")?)?;
    let me = sender.path().clone();
    let mut subscription = node
        .runtime
        .subscribe(&room, Some((chat.clone(), "room")))
        .await
        .with_context(|| format!("cannot subscribe to {room}"))?;
    println!("room: {room}");
    for addr in &node.listen_addrs {
        println!("listening on {addr}");
    }
    if let Some(addr) = node.listen_addrs.first() {
        println!("join with: --room {room} --bootstrap {addr}");
    }
    // Gossipsub needs a moment to tell the peers about the new subscription and form a
    // mesh; a `join` published before then would reach no one.
    tokio::time::sleep(MESH_FORMS_IN).await;
    let session = sender.session(room.clone(), &chat, "member")?;
    let mut member = Member {
        sender,
        room,
        chat,
        name: cli.name,
        session,
    };
    member.join().await?;
    println!(
        "joined as {}; type a line to post it, Ctrl-D to leave",
        member.name
    );

    let mut lines = input();
    // Who is in the room, by the path they publish as.
    let mut members: HashMap<Arc<Path>, String> = HashMap::new();
    let mut reannounce_pending = false;
    let reannounce = tokio::time::sleep(Duration::ZERO);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(reannounce, interrupted);
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(text) if text.trim().is_empty() => {}
                Some(text) => member.post(text).await?,
                None => break,
            },
            published = subscription.recv() => {
                let Some(published) = published else { break };
                // The runtime hands this node's own publications to its subscribers too;
                // they need no showing.
                if published.from == me {
                    continue;
                }
                if show(&published, &mut members) && !reannounce_pending {
                    reannounce_pending = true;
                    reannounce.as_mut().reset(Instant::now() + REANNOUNCE_AFTER);
                }
            }
            () = &mut reannounce, if reannounce_pending => {
                // Someone new may have subscribed after our `join`: join again, in a
                // new session, so that they accept our posts (see the module docs).
                reannounce_pending = false;
                member.join().await?;
            }
            _ = &mut interrupted => break,
        }
    }
    member.leave().await?;
    println!("left");
    // A publication is handed to gossipsub, not yet sent, when `publish` returns.
    tokio::time::sleep(LEAVE_FLUSH).await;
    let _ = node.client.shutdown().await;
    Ok(())
}

/// Prints a publication; says whether it was the `join` of someone new.
fn show(published: &Published, members: &mut HashMap<Arc<Path>, String>) -> bool {
    match published.label.as_str() {
        "join" => match decode::<String>(&published.payload) {
            Ok(name) => {
                let new = members
                    .insert(published.from.clone(), name.clone())
                    .is_none();
                if new {
                    println!("* {name} joined");
                }
                new
            }
            Err(e) => {
                tracing::warn!(from = %published.from, error = %e, "a join without a name");
                false
            }
        },
        "post" => {
            match decode::<Post>(&published.payload) {
                Ok(post) => println!("{}: {}", post.name, post.text),
                Err(e) => {
                    tracing::warn!(from = %published.from, error = %e, "a post that is no post")
                }
            }
            false
        }
        "leave" => {
            let name = members
                .remove(&published.from)
                .or_else(|| decode::<String>(&published.payload).ok())
                .unwrap_or_else(|| published.from.to_string());
            println!("* {name} left");
            false
        }
        other => {
            tracing::warn!(from = %published.from, label = other, "an unknown message");
            false
        }
    }
}
