//! A key-value service over Blocktree's actor runtime, with a declared session protocol.
//!
//! `kv/1` has two roles, `client` and `server`; the client repeatedly chooses:
//!
//! - `get` (payload: the key, a string) and the server answers `value` (the value, or
//!   null when the key is absent);
//! - `put` (payload: `[key, value]`) and the server answers `ok`;
//! - `bye`, which ends the session.
//!
//! Every payload is CBOR (`keys::cbor`), the encoding `btnode tell/ask/pub` use for the
//! JSON they are given, so the `btnode` command line speaks to this service too. Both
//! sides check every message against the protocol: the client before it sends, the
//! server's runtime before the actor sees it.
//!
//! # Running it on a local network
//!
//! ```text
//! cargo build -p btnode -p testnet -p examples
//! target/debug/bttestnet up --nodes 3
//! # prints, among others:
//! #   node0: /ip4/127.0.0.1/tcp/PORT/p2p/PEER  data dir /tmp/DIR/node0
//! #   export BT_PASSPHRASE='…'
//!
//! # in a second terminal: the service, joining through node0
//! target/debug/kv serve --bootstrap /ip4/127.0.0.1/tcp/PORT/p2p/PEER
//! #   kv service at /TREE/kv
//!
//! # in a third: a client each time (a fresh node that joins, asks, says bye and stops)
//! target/debug/kv put --bootstrap /ip4/127.0.0.1/tcp/PORT/p2p/PEER /TREE/kv greeting hello
//! target/debug/kv get --bootstrap /ip4/127.0.0.1/tcp/PORT/p2p/PEER /TREE/kv greeting
//! #   "hello"
//!
//! # or a testnet node, through the btnode command line (payloads are JSON there):
//! export BT_PASSPHRASE='…'
//! target/debug/btnode --data-dir /tmp/DIR/node1 ask /TREE/kv '"greeting"' \
//!     --protocol kv/1 --role client --label get
//! target/debug/btnode --data-dir /tmp/DIR/node1 ask /TREE/kv '["n", 42]' \
//!     --protocol kv/1 --role client --label put
//! ```
//!
//! `kv serve` without `--bootstrap` starts a network of its own; clients then join
//! through the address it prints after `join with:`.
//!
//! A malformed request is refused with the reason (`ReplyTo::reject`). The map lives
//! outside the actor, so even a failure that restarts the actor loses no data.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use btnode::actor::{
    Actor, AskError, Context, Failure, Incoming, Reply, Restart, SendError, Sender, Session, Spec,
};
use btnode::embed::{Embedded, Options};
use btnode::payload::{decode, encode, from_json};
use clap::{Args, Parser, Subcommand};
use keys::Path;
use libp2p::Multiaddr;
use protocols::session::{Global, Protocol};
use serde_json::Value;
use tracing_subscriber::EnvFilter;

/// The protocol's name.
const PROTOCOL: &str = "kv/1";

/// How long a client keeps trying to reach a service that does not resolve yet.
const RESOLVE_FOR: Duration = Duration::from_secs(10);

/// Pause between two attempts to reach the service.
const RETRY_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Parser)]
#[command(
    name = "kv",
    version,
    about = "A key-value service on Blocktree's actor runtime (protocol kv/1)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a node, run the service at TREE/kv (TREE: the node's own tree) until Ctrl-C.
    Serve {
        /// A node to join through, e.g. a testnet node's address (repeatable).
        /// Default: none, a network of its own.
        #[arg(long, value_name = "MULTIADDR")]
        bootstrap: Vec<Multiaddr>,
        /// The address to listen on. Default: TCP on 127.0.0.1, an ephemeral port.
        #[arg(long, value_name = "MULTIADDR")]
        listen: Option<Multiaddr>,
    },
    /// Store VALUE under KEY.
    Put {
        #[command(flatten)]
        client: ClientArgs,
        /// The key.
        key: String,
        /// The value: a string, or any JSON value with --json.
        value: String,
        /// Read VALUE as JSON (a number, an array, an object, ...).
        #[arg(long)]
        json: bool,
    },
    /// Print the value stored under KEY, as JSON (null when absent).
    Get {
        #[command(flatten)]
        client: ClientArgs,
        /// The key.
        key: String,
    },
}

#[derive(Debug, Args)]
struct ClientArgs {
    /// A node of the service's network to join through: the address `kv serve` printed
    /// after `join with:`, or a testnet node's (repeatable).
    #[arg(long, value_name = "MULTIADDR", required = true)]
    bootstrap: Vec<Multiaddr>,
    /// The service's path, as `kv serve` printed it.
    #[arg(value_name = "KV_PATH")]
    service: Path,
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
    runtime.block_on(async {
        match cli.command {
            Command::Serve { bootstrap, listen } => serve(bootstrap, listen).await,
            Command::Put {
                client,
                key,
                value,
                json,
            } => {
                let value = if json {
                    serde_json::from_str(&value)
                        .with_context(|| format!("the value {value:?} is not JSON"))?
                } else {
                    Value::String(value)
                };
                // `ok` carries nothing (null); the session checked its label.
                ask(
                    client,
                    "put",
                    &from_json(&Value::from(vec![Value::from(key), value]))?,
                )
                .await?;
                println!("ok");
                Ok(())
            }
            Command::Get { client, key } => {
                let value = ask(client, "get", &encode(&key)?).await?;
                println!("{value}");
                Ok(())
            }
        }
    })
}

/// `kv/1`: repeat { client chooses: get → value, put → ok, bye → end }.
fn kv_protocol() -> anyhow::Result<Arc<Protocol>> {
    let protocol = Protocol::new(
        PROTOCOL,
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
    )?;
    Ok(Arc::new(protocol))
}

/// CBOR's null, the payload of the messages that carry nothing (`ok`, `bye`).
const NULL: serde_json::Value = serde_json::Value::Null;

/// The map. It outlives every incarnation of the actor: the supervisor rebuilds the
/// actor after a failure, and the data stays.
type Store = Arc<Mutex<BTreeMap<String, Value>>>;

/// The service: the `server` side of `kv/1`.
struct Kv {
    store: Store,
}

impl Kv {
    fn store(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Value>> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Actor for Kv {
    async fn handle(&mut self, _ctx: &Context, mut message: Incoming) -> Result<(), Failure> {
        let Some(reply) = message.take_reply() else {
            // `bye` ends the session (the runtime has recorded that); a `get` or `put`
            // told rather than asked cannot be answered.
            if message.label != "bye" {
                tracing::warn!(from = %message.from(), label = %message.label, "not an ask; ignored");
            }
            return Ok(());
        };
        // The runtime let through only what `kv/1` allows a client to send here. A
        // payload that does not decode is refused with the reason; the actor carries on.
        match message.label.as_str() {
            "get" => {
                let key: String = match decode(&message.payload) {
                    Ok(key) => key,
                    Err(e) => {
                        reply.reject(&format!("get wants a key string: {e}"));
                        return Ok(());
                    }
                };
                tracing::debug!(from = %message.from(), %key, "get");
                let value = {
                    let store = self.store();
                    from_json(store.get(&key).unwrap_or(&Value::Null))?
                };
                reply.send("value", &value).await?;
            }
            "put" => {
                let (key, value): (String, Value) = match decode(&message.payload) {
                    Ok(entry) => entry,
                    Err(e) => {
                        reply.reject(&format!("put wants [key, value]: {e}"));
                        return Ok(());
                    }
                };
                tracing::debug!(from = %message.from(), %key, "put");
                self.store().insert(key, value);
                reply.send("ok", &from_json(&NULL)?).await?;
            }
            other => return Err(Failure(format!("no such request: {other}"))),
        }
        Ok(())
    }
}

async fn start(bootstrap: Vec<Multiaddr>, listen: Option<Multiaddr>) -> anyhow::Result<Embedded> {
    let mut options = Options {
        bootstrap,
        ..Options::default()
    };
    if let Some(listen) = listen {
        options.listen = vec![listen];
    }
    Embedded::start(options)
        .await
        .context("cannot start the node")
}

async fn serve(bootstrap: Vec<Multiaddr>, listen: Option<Multiaddr>) -> anyhow::Result<()> {
    let node = start(bootstrap, listen).await?;
    let kv = kv_protocol()?;
    let path = node.tree.join("kv")?;
    let store = Store::default();
    let spec = Spec::new(path.clone())
        .serves(&kv, "server")
        .restart(Restart {
            max_restarts: 20,
            window: Duration::from_secs(60),
            backoff: Duration::from_millis(50),
        });
    node.runtime
        .spawn(spec, move || Kv {
            store: store.clone(),
        })
        .await
        .with_context(|| format!("cannot spawn the service at {path}"))?;
    println!("kv service at {path}");
    for addr in &node.listen_addrs {
        println!("listening on {addr}");
    }
    if let Some(addr) = node.listen_addrs.first() {
        println!("join with: --bootstrap {addr}");
    }
    println!("Ctrl-C stops the service.");
    tokio::signal::ctrl_c().await?;
    println!("stopping");
    node.runtime.stop(&path);
    let _ = node.client.shutdown().await;
    Ok(())
}

/// Starts a node that joins through `args.bootstrap`, asks the service once in a new
/// session, ends the session and returns the answer's payload.
async fn ask(args: ClientArgs, label: &str, payload: &[u8]) -> anyhow::Result<Value> {
    let node = start(args.bootstrap, None).await?;
    let kv = kv_protocol()?;
    let sender = node.runtime.sender(node.tree.join("kv-client")?)?;
    let (mut session, reply) = first_ask(&sender, &args.service, &kv, label, payload).await?;
    let answer: Value = decode(&reply.payload)
        .with_context(|| format!("the answer from {} is not CBOR", reply.from))?;
    session.tell("bye", &from_json(&NULL)?).await?;
    // A tell returns once queued; give the stream a moment to carry `bye` before the
    // node stops (the service would otherwise keep the session open).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = node.client.shutdown().await;
    Ok(answer)
}

/// Opens a session with `service` and asks it the first question, retrying while the
/// path does not resolve yet: a node that has just joined may not know the overlay, and
/// a service that has just registered may not have spread its record.
async fn first_ask(
    sender: &Sender,
    service: &Path,
    kv: &Arc<Protocol>,
    label: &str,
    payload: &[u8],
) -> anyhow::Result<(Session, Reply)> {
    let deadline = Instant::now() + RESOLVE_FOR;
    loop {
        // A new session for every attempt: a typed session counts the ask as sent once
        // its check passes, even when the message then finds no route, and would refuse
        // to send `get` twice in a row.
        let mut session = sender.session(service.clone(), kv, "client")?;
        match session.ask(label, payload).await {
            Ok(reply) => return Ok((session, reply)),
            Err(AskError::Send(SendError::Unreachable { reason, .. })) => {
                if Instant::now() >= deadline {
                    bail!(
                        "cannot reach {service} within {RESOLVE_FOR:?}: {reason} \
                         (is `kv serve` running, and is --bootstrap a node of its network?)"
                    );
                }
                tracing::debug!(%service, %reason, "not reachable yet; trying again");
                tokio::time::sleep(RETRY_EVERY).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("{label} at {service}"))),
        }
    }
}
