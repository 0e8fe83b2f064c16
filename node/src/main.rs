//! `btnode`: the Blocktree node daemon and its command line.

mod atomic;
mod caps;
mod config;
mod control;
mod daemon;
mod files;
mod fs_cli;
mod grants;
mod identity;
mod messaging;
mod metrics;
mod revocations;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use keys::keystore::StoreKind;
use serde::Serialize;

use crate::identity::{InitOptions, NodeIdentity, PassphraseSource};

/// A Blocktree node: one member of a peer-to-peer overlay that hosts self-certifying
/// trees of services and files.
#[derive(Debug, Parser)]
#[command(name = "btnode", version, about, long_about = None)]
struct Cli {
    /// Data directory holding the node's identity and state.
    /// Default: $XDG_DATA_HOME/blocktree, else ~/.local/share/blocktree.
    #[arg(long, global = true, env = "BT_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Without a command, btnode runs the daemon (`btnode run`).
    #[command(flatten)]
    run: RunArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Args, Clone)]
struct RunArgs {
    /// Join the overlay through this peer (repeatable); without it, start a new overlay.
    #[arg(
        long,
        env = "BT_BOOTSTRAP",
        value_delimiter = ',',
        value_name = "MULTIADDR"
    )]
    bootstrap: Vec<String>,

    /// Listen on this address (repeatable). Default: TCP and QUIC on all interfaces,
    /// ephemeral ports.
    #[arg(
        long,
        env = "BT_LISTEN",
        value_delimiter = ',',
        value_name = "MULTIADDR"
    )]
    listen: Vec<String>,

    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464). Default: off.
    #[arg(long, env = "BT_METRICS", value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,

    /// Config file (TOML); flags and BT_* variables override it.
    #[arg(long, env = "BT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(flatten)]
    store: KeyStoreArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create this node's identity (its keys) and print its principal and PeerId.
    Init(InitArgs),
    /// Print this node's principal and PeerId (unseals the keys to check them).
    Id(IdArgs),
    /// Run the node daemon (the default command).
    Run(RunArgs),
    /// Ask the running daemon for its status: peers, routing table, records, uptime.
    Status(JsonArg),
    /// List the running daemon's connected peers.
    Peers(JsonArg),
    /// Publish a path record: this node serves PATH (needs an installed writecap).
    Register(PathArg),
    /// Resolve PATH to the live node of its longest registered prefix.
    Resolve(PathArg),
    /// Writecaps: grant one to another node, or install one granted to this node.
    #[command(subcommand)]
    Cap(CapCommand),
    /// Send a fire-and-forget message to the actor at PATH.
    Tell(SendArgs),
    /// Send a request to the actor at PATH and print its reply.
    Ask(AskArgs),
    /// Publish a message on the pub-sub topic PATH.
    Pub(SendArgs),
    /// Print every message published on the topic PATH, one JSON line each, until
    /// interrupted.
    Sub(StreamArgs),
    /// Run a diagnostic actor at PATH for as long as this command runs: it prints every
    /// message it gets (one JSON line each) and answers asks by echoing the payload.
    Listen(StreamArgs),
    /// The distributed file system: files encrypted on this node, replicated on peers.
    #[command(subcommand)]
    Fs(FsCommand),
    /// Show the tree at PATH as an ordinary directory at MOUNTPOINT (FUSE), until
    /// `btnode umount` or the daemon stops. Read-only without a writecap there.
    Mount {
        path: String,
        mountpoint: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Unmount a tree mounted with `btnode mount`.
    Umount {
        mountpoint: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum FsCommand {
    /// Store the local file LOCAL at PATH (parent directories are created).
    Put {
        local: PathBuf,
        path: String,
        #[arg(long)]
        json: bool,
    },
    /// Write the file at PATH to the local file LOCAL.
    Get {
        path: String,
        local: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List the directory at PATH.
    Ls(PathArg),
    /// Create the directory PATH.
    Mkdir {
        path: String,
        /// Create missing parents too; an existing directory is fine.
        #[arg(short, long)]
        parents: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove the file or empty directory PATH.
    Rm(PathArg),
    /// Move FROM to TO.
    Mv {
        from: String,
        to: String,
        #[arg(long)]
        json: bool,
    },
    /// Show the metadata of PATH: size, version, writer, readers, conflicts.
    Stat(PathArg),
    /// Let PRINCIPAL (an online node) read everything under PATH, and with --write also
    /// write there.
    Share {
        path: String,
        principal: String,
        /// Also grant a writecap for PATH.
        #[arg(long)]
        write: bool,
        /// How long the writecap holds: 90s, 30m, 12h, 7d, 1y.
        #[arg(long, default_value = "30d", value_parser = caps::parse_duration)]
        expires: u64,
        #[arg(long)]
        json: bool,
    },
    /// Take PRINCIPAL's access to PATH away (its shares at PATH and at every shared
    /// directory below it): versions written from now on are under new keys.
    Revoke {
        path: String,
        principal: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct SendArgs {
    /// The receiving actor's path (for `pub`: the topic).
    path: String,
    /// The payload, as JSON (it travels as CBOR).
    payload: String,
    /// The message label.
    #[arg(long, default_value = "message")]
    label: String,
    /// The protocol the message belongs to (default: untyped).
    #[arg(long, default_value = "")]
    protocol: String,
    /// The role this sender plays in the protocol.
    #[arg(long, default_value = "")]
    role: String,
    /// The session (default: a new one); reuse the printed id to continue a session.
    #[arg(long)]
    session: Option<u64>,
    /// Send as this path (default: <prefix of this node's first writecap>/cli).
    #[arg(long, value_name = "PATH")]
    from: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct AskArgs {
    #[command(flatten)]
    send: SendArgs,
    /// How long to wait for the reply: 500ms, 10s, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_millis)]
    timeout: u64,
}

#[derive(Debug, Args)]
struct StreamArgs {
    /// The topic (for `sub`) or the actor's path (for `listen`).
    path: String,
}

fn parse_millis(text: &str) -> Result<u64, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "ms"), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 10s or 1m"))?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        _ => return Err(format!("{text:?}: the unit must be ms, s or m")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too long"))
}

impl SendArgs {
    fn outgoing(&self, timeout_ms: Option<u64>) -> anyhow::Result<control::Outgoing> {
        let payload: serde_json::Value = serde_json::from_str(&self.payload)
            .with_context(|| format!("the payload {:?} is not JSON", self.payload))?;
        Ok(control::Outgoing {
            to: self.path.clone(),
            payload,
            label: self.label.clone(),
            protocol: self.protocol.clone(),
            role: self.role.clone(),
            session: self.session,
            from: self.from.clone(),
            timeout_ms,
        })
    }
}

#[derive(Debug, Subcommand)]
enum CapCommand {
    /// Grant PRINCIPAL the right to write under PREFIX, signed by this node's root key
    /// (from `init --root`) or delegated from a writecap this node holds; writes a file.
    Grant {
        /// Who receives the writecap.
        principal: keys::Principal,
        /// The path prefix it covers.
        prefix: keys::Path,
        /// How long it holds: 90s, 30m, 12h, 7d, 1y.
        #[arg(long, default_value = "365d", value_parser = caps::parse_duration)]
        expires: u64,
        /// Output file. Default: ./PRINCIPAL.writecap
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        store: KeyStoreArgs,
    },
    /// Revoke every writecap of PRINCIPAL: in the whole tree when this node holds the
    /// tree's root key (from `init --root`), or else those this node granted it. The
    /// running node puts the list in force and publishes it; every node that receives it
    /// refuses what PRINCIPAL signs from then on.
    Revoke {
        /// Whose writecaps.
        principal: keys::Principal,
        #[command(flatten)]
        store: KeyStoreArgs,
    },
    /// Install a writecap granted to this node.
    Install {
        /// The file `cap grant` wrote.
        file: PathBuf,
        #[command(flatten)]
        store: KeyStoreArgs,
    },
}

#[derive(Debug, Args)]
struct JsonArg {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct PathArg {
    /// A blocktree path: /ROOT-PRINCIPAL/…
    path: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args, Clone)]
struct KeyStoreArgs {
    /// TPM TCTI, e.g. `device:/dev/tpmrm0` or `swtpm:port=2321`.
    /// Default: $BT_TCTI, $TPM2TOOLS_TCTI, $TCTI, else device:/dev/tpmrm0.
    #[arg(long, value_name = "TCTI")]
    tcti: Option<String>,

    /// File holding the passphrase of the software key store.
    #[arg(long, env = "BT_PASSPHRASE_FILE", value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Where the node's private keys live: `software` (encrypted under a passphrase),
    /// `tpm` (sealed by a TPM 2.0) or `plaintext` (in clear, development only).
    /// Default: `tpm` when a TPM answers, else `software`.
    #[arg(long, value_name = "STORE")]
    key_store: Option<StoreKind>,

    #[command(flatten)]
    store: KeyStoreArgs,

    /// Replace an existing identity (its keys are lost).
    #[arg(long)]
    force: bool,

    /// Also create a root principal that owns a new tree, and grant this node a writecap
    /// for the whole tree.
    #[arg(long)]
    root: bool,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct IdArgs {
    #[command(flatten)]
    store: KeyStoreArgs,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct IdOutput {
    principal: String,
    peer_id: String,
    key_store: String,
    key_store_reason: String,
    data_dir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    root: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // A lone first node's periodic Kademlia bootstrap "fails" by design.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,libp2p_kad=error")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard limit, as a daemon that holds a
/// connection per peer and two descriptors per chunk segment needs (the usual soft limit
/// of 1024 is a few hundred GiB of segments); logs what it could not do.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none() || limit.current == limit.maximum {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(
            from = ?limit.current,
            to = ?limit.maximum,
            "raised the open file limit"
        ),
        Err(e) => tracing::warn!(
            limit = ?limit.current,
            error = %e,
            "could not raise the open file limit"
        ),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = match cli.data_dir {
        Some(dir) => dir,
        None => default_data_dir()?,
    };
    match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Init(args) => {
            let options = InitOptions {
                store: args.key_store,
                tcti: args.store.tcti,
                passphrase: passphrase_source(args.store.passphrase_file),
                force: args.force,
                root: args.root,
            };
            let node = identity::init(&data_dir, &options)?;
            if let Some(root) = &node.root {
                let tree = keys::Path::root_of(root.principal());
                let validity = keys::Validity::for_seconds(10 * 365 * 86_400);
                let chain = keys::Chain::root_grant(
                    root.signing_key(),
                    node.identity.principal(),
                    tree,
                    validity,
                );
                caps::install(&data_dir, &chain, &node.identity.principal())?;
            }
            if !args.json {
                println!("created a node identity in {}", data_dir.display());
            }
            print_id(&node, &data_dir, args.json)
        }
        Command::Id(args) => {
            let node = args.store.load(&data_dir, false)?;
            print_id(&node, &data_dir, args.json)
        }
        Command::Run(args) => {
            let file = match &args.config {
                Some(path) => config::FileConfig::read(path)?,
                None => config::FileConfig::default(),
            };
            let mut overlay = config::overlay(&args.bootstrap, &args.listen, &file)?;
            let node = args.store.load(&data_dir, false)?;
            let metrics = match args.metrics {
                Some(address) => Some(address),
                None => file
                    .metrics
                    .as_deref()
                    .map(|text| {
                        text.parse()
                            .with_context(|| format!("metrics address {text:?} is not IP:port"))
                    })
                    .transpose()?,
            };
            let fs_settings = config::files(&file)?;
            // Repair's membership cue covers the other holders of what this node keeps.
            overlay.neighbourhood = overlay.neighbourhood.max(4 * fs_settings.replicas);
            raise_open_file_limit();
            runtime()?.block_on(daemon::run(data_dir, node, overlay, metrics, fs_settings))
        }
        Command::Status(args) => {
            let status = call(&data_dir, &control::Request::Status)?;
            if args.json {
                return print_json(&status);
            }
            let daemon::Status {
                node: status,
                actors,
                fs,
            } = serde_json::from_value(status)?;
            println!("peer id:       {}", status.peer_id);
            println!("principal:     {}", status.principal);
            println!(
                "peers:         {} ({} on stream connections)",
                status.peers, status.stream_peers
            );
            println!("routing table: {}", status.routing_table);
            println!("records:       {}", status.records);
            println!("uptime:        {}s", status.uptime_secs);
            for path in &status.registered {
                println!("registered:    {path}");
            }
            for address in &status.listen_addrs {
                println!("listening on:  {address}");
            }
            println!(
                "messages:      {} delivered, {} refused here, {} refusals received, {} peers blocked",
                actors.delivered, actors.refused, actors.refusals_received, actors.blocked
            );
            println!(
                "revocations:   {} list(s) in force, {} writecap(s) or principal(s) revoked",
                actors.revocation_lists, actors.revoked_entries
            );
            for actor in &actors.actors {
                println!(
                    "actor:         {} [{}] handled {} failures {} restarts {}{}",
                    actor.path,
                    actor.state,
                    actor.handled,
                    actor.failures,
                    actor.restarts,
                    actor
                        .last_failure
                        .as_ref()
                        .map(|f| format!(" (last: {f})"))
                        .unwrap_or_default()
                );
            }
            println!(
                "file system:   R={} W={}, {} chunks ({} bytes), {} inodes, {} versions",
                fs.replicas, fs.write_quorum, fs.chunks, fs.chunk_bytes, fs.inodes, fs.versions
            );
            println!(
                "repair:        {} rounds, {} under-replicated, {} copies sent ({} bytes; {} items taken over), {} handed off, {} corrupt dropped, {} unreferenced chunks collected",
                fs.repair.rounds,
                fs.repair.under_replicated,
                fs.repair.copies_sent,
                fs.repair.bytes_sent,
                fs.repair.taken_over,
                fs.repair.handed_off,
                fs.corrupt_dropped,
                fs.repair.collected
            );
            println!(
                "refused:       {} versions, {} chunks; {} bad answers from replicas",
                fs.refused_versions, fs.refused_chunks, fs.bad_answers
            );
            println!(
                "from peers:    {} chunks stored in {} commits",
                fs.peer_chunks, fs.peer_chunk_commits
            );
            println!(
                "slow replicas: {} reads hedged, {} version reads short of quorum",
                fs.hedged, fs.short_reads
            );
            Ok(())
        }
        Command::Tell(args) => {
            let result = call(&data_dir, &control::Request::Tell(args.outgoing(None)?))?;
            if args.json {
                return print_json(&result);
            }
            println!("sent (session {})", result["session"]);
            Ok(())
        }
        Command::Ask(args) => {
            let request = control::Request::Ask(args.send.outgoing(Some(args.timeout))?);
            let result = call(&data_dir, &request)?;
            if args.send.json {
                return print_json(&result);
            }
            println!(
                "{} {}: {}",
                result["from"].as_str().unwrap_or_default(),
                result["label"].as_str().unwrap_or_default(),
                result["payload"]
            );
            Ok(())
        }
        Command::Pub(args) => {
            let result = call(&data_dir, &control::Request::Publish(args.outgoing(None)?))?;
            if args.json {
                return print_json(&result);
            }
            println!("published (session {})", result["session"]);
            Ok(())
        }
        Command::Sub(args) => stream(&data_dir, &control::Request::Subscribe { topic: args.path }),
        Command::Listen(args) => stream(&data_dir, &control::Request::Listen { path: args.path }),
        Command::Fs(command) => fs_cli::run(&data_dir, command),
        Command::Mount {
            path,
            mountpoint,
            json,
        } => fs_cli::mount(&data_dir, path, &mountpoint, json),
        Command::Umount { mountpoint, json } => fs_cli::umount(&data_dir, &mountpoint, json),
        Command::Peers(args) => {
            let peers = call(&data_dir, &control::Request::Peers)?;
            if args.json {
                return print_json(&peers);
            }
            let peers: Vec<dht::PeerInfo> = serde_json::from_value(peers)?;
            for peer in peers {
                let rtt = peer
                    .rtt_micros
                    .map(|us| format!("{:.2} ms", us as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{}  {}  rtt {}  {}",
                    peer.peer_id,
                    peer.addresses.join(","),
                    rtt,
                    peer.agent.unwrap_or_default()
                );
            }
            Ok(())
        }
        Command::Register(args) => {
            let result = call(&data_dir, &control::Request::Register { path: args.path })?;
            if args.json {
                return print_json(&result);
            }
            let r: dht::Registered = serde_json::from_value(result)?;
            let reach = if r.acks == 0 {
                "no other node answered yet; it is kept here and republished".to_string()
            } else {
                "sent to the overlay".to_string()
            };
            println!(
                "registered {} (sequence {}, expires at {}): {reach}",
                r.path, r.sequence, r.expires
            );
            Ok(())
        }
        Command::Resolve(args) => {
            let result = call(&data_dir, &control::Request::Resolve { path: args.path })?;
            if args.json {
                return print_json(&result);
            }
            let r: dht::Resolution = serde_json::from_value(result)?;
            println!("{} -> {} ({})", r.path, r.peer_id, r.prefix);
            for address in &r.addresses {
                println!("  {address}/p2p/{}", r.peer_id);
            }
            Ok(())
        }
        Command::Cap(CapCommand::Grant {
            principal,
            prefix,
            expires,
            out,
            store,
        }) => {
            let node = store.load(&data_dir, true)?;
            let validity = keys::Validity::for_seconds(expires);
            let chain = match &node.root {
                Some(root) if prefix.root() == &root.principal() => {
                    keys::Chain::root_grant(root.signing_key(), principal, prefix.clone(), validity)
                }
                _ => {
                    let me = node.identity.principal();
                    let held = caps::covering(&data_dir, &prefix, &me).ok_or_else(|| {
                        anyhow::anyhow!(
                            "this node holds neither the root key of {} nor a writecap covering {prefix}",
                            prefix.root()
                        )
                    })?;
                    held.delegate(
                        node.identity.signing_key(),
                        principal,
                        prefix.clone(),
                        validity,
                        keys::now(),
                    )?
                }
            };
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{principal}.writecap")));
            caps::write(&out, &chain)?;
            println!(
                "granted {principal} the right to write under {prefix} until {} (UNIX time, {} \
                 from now); wrote {}",
                validity.expires,
                caps::describe_secs(expires),
                out.display()
            );
            Ok(())
        }
        Command::Cap(CapCommand::Revoke { principal, store }) => {
            let node = store.load(&data_dir, true)?;
            if principal == node.identity.principal() {
                anyhow::bail!("a node does not revoke itself");
            }
            let (signer, scope) = match &node.root {
                Some(root) => (
                    root.signing_key(),
                    format!("the tree /{}", root.principal()),
                ),
                None => (
                    node.identity.signing_key(),
                    "what this node granted".to_string(),
                ),
            };
            let mut held = keys::Revocations::default();
            for list in revocations::load(&data_dir)? {
                let _ = held.insert(&list);
            }
            if held
                .get(&signer.principal())
                .is_some_and(|l| l.principals().contains(&principal))
            {
                anyhow::bail!("{principal} is revoked in {scope} already");
            }
            let list = revocations::next(&held, signer, &[], &[principal])?;
            let request = control::Request::Revoke {
                list: protocols::wire::encode(&list)?,
            };
            // A daemon that answers takes the list; a socket left by one that crashed
            // (or none) means the list is saved for the next start.
            if std::os::unix::net::UnixStream::connect(data_dir.join(control::SOCKET)).is_ok() {
                let answer = call(&data_dir, &request)?;
                let published = answer["published"].as_bool().unwrap_or(false);
                println!(
                    "revoked every writecap of {principal} in {scope} (revocation list {}); in \
                     force on this node and {}",
                    list.sequence(),
                    if published {
                        "published to the overlay"
                    } else {
                        "published once the node has peers"
                    }
                );
            } else {
                revocations::save(&data_dir, &list)?;
                println!(
                    "revoked every writecap of {principal} in {scope} (revocation list {}); the \
                     node is not running: in force and published when it starts",
                    list.sequence()
                );
            }
            Ok(())
        }
        Command::Cap(CapCommand::Install { file, store }) => {
            let node = store.load(&data_dir, false)?;
            let chain = caps::read(&file)?;
            let installed = caps::install(&data_dir, &chain, &node.identity.principal())?;
            println!(
                "installed a writecap for {} ({})",
                chain.prefix().map(ToString::to_string).unwrap_or_default(),
                installed.display()
            );
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn call(
    data_dir: &std::path::Path,
    request: &control::Request,
) -> anyhow::Result<serde_json::Value> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(control::call(data_dir, request))
}

/// Prints every event of a streaming request as a JSON line until the daemon stops or
/// the user interrupts.
fn stream(data_dir: &std::path::Path, request: &control::Request) -> anyhow::Result<()> {
    use std::io::Write;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(async {
            let printing = control::call_streaming(data_dir, request, |event| {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{event}")?;
                out.flush()?;
                Ok(())
            });
            tokio::select! {
                result = printing => result,
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        })
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

impl KeyStoreArgs {
    /// Unseals this node's identity (and its root keys, with `with_root`).
    fn load(&self, data_dir: &std::path::Path, with_root: bool) -> anyhow::Result<NodeIdentity> {
        identity::load(
            data_dir,
            self.tcti.as_deref(),
            &passphrase_source(self.passphrase_file.clone()),
            with_root,
        )
    }
}

fn passphrase_source(file: Option<PathBuf>) -> PassphraseSource {
    PassphraseSource {
        file,
        env: std::env::var("BT_PASSPHRASE").ok(),
    }
}

fn print_id(node: &NodeIdentity, data_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let out = IdOutput {
        principal: node.identity.principal().to_string(),
        peer_id: node.peer_id().to_string(),
        key_store: match &node.tcti {
            Some(tcti) if node.key_store == StoreKind::Tpm => format!("tpm ({tcti})"),
            _ => node.key_store.to_string(),
        },
        key_store_reason: node.reason.clone(),
        data_dir: data_dir.display().to_string(),
        root: node.root_public.as_ref().map(|r| r.principal().to_string()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("principal: {}", out.principal);
        println!("peer id:   {}", out.peer_id);
        println!("key store: {} — {}", out.key_store, out.key_store_reason);
        if let Some(root) = &out.root {
            println!("root:      {root} (this node may write anywhere under /{root})");
        }
    }
    Ok(())
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("blocktree"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/blocktree")),
        None => anyhow::bail!("no data directory: pass --data-dir or set BT_DATA_DIR or HOME"),
    }
}
