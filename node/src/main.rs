//! `btnode`: the Blocktree node daemon and its command line.

mod identity;

use std::path::PathBuf;
use std::process::ExitCode;

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

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create this node's identity (its keys) and print its principal and PeerId.
    Init(InitArgs),
    /// Print this node's principal and PeerId (unseals the keys to check them).
    Id(IdArgs),
}

#[derive(Debug, Args)]
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
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

fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = match cli.data_dir {
        Some(dir) => dir,
        None => default_data_dir()?,
    };
    match cli.command {
        Command::Init(args) => {
            let options = InitOptions {
                store: args.key_store,
                tcti: args.store.tcti,
                passphrase: passphrase_source(args.store.passphrase_file),
                force: args.force,
            };
            let node = identity::init(&data_dir, &options)?;
            if !args.json {
                println!("created a node identity in {}", data_dir.display());
            }
            print_id(&node, &data_dir, args.json)
        }
        Command::Id(args) => {
            let node = identity::load(
                &data_dir,
                args.store.tcti.as_deref(),
                &passphrase_source(args.store.passphrase_file),
            )?;
            print_id(&node, &data_dir, args.json)
        }
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
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("principal: {}", out.principal);
        println!("peer id:   {}", out.peer_id);
        println!("key store: {} — {}", out.key_store, out.key_store_reason);
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
