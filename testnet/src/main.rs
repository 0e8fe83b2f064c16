//! `bttestnet`: a local network of real `btnode` processes on 127.0.0.1.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use testnet::{PASSPHRASE, Testnet, find_btnode};

#[derive(Debug, Parser)]
#[command(name = "bttestnet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start N nodes, wait until they converge, register one path per node, and keep
    /// them running until Ctrl-C.
    Up {
        /// How many nodes.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Where the nodes' data directories go. Default: a new directory in /tmp,
        /// removed at exit.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The btnode binary. Default: $BTNODE, beside bttestnet, or on PATH.
        #[arg(long)]
        btnode: Option<PathBuf>,
    },
    /// Measure the idle memory of btnode: start N nodes, let them sit for a while, and
    /// print each process's resident set size.
    Rss {
        /// How many nodes (each has N - 1 peers).
        #[arg(long, default_value_t = 11)]
        nodes: usize,
        /// Seconds to wait after the overlay converged.
        #[arg(long, default_value_t = 60)]
        wait: u64,
        /// The btnode binary. Default: $BTNODE, beside bttestnet, or on PATH.
        #[arg(long)]
        btnode: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Up { nodes, dir, btnode } => up(nodes, dir, btnode.unwrap_or_else(find_btnode)),
        Command::Rss {
            nodes,
            wait,
            btnode,
        } => rss(nodes, wait, btnode.unwrap_or_else(find_btnode)),
    }
}

fn rss(nodes: usize, wait: u64, btnode: PathBuf) -> anyhow::Result<()> {
    let mut net = Testnet::start(&btnode, nodes)?;
    net.wait_converged(Duration::from_secs(60))?;
    for i in 0..nodes {
        let path = net.path(&format!("node{i}"));
        if i > 0 {
            net.grant(i, &path)?;
        }
        net.json(i, &["register", &path])?;
    }
    println!("{nodes} nodes converged; idling {wait} s");
    std::thread::sleep(Duration::from_secs(wait));
    let mut rss: Vec<u64> = Vec::new();
    for node in &net.nodes {
        let status = net.json(node.index, &["status"])?;
        let kib = node.rss_kib().unwrap_or(0);
        println!(
            "node{}: {:.1} MiB RSS, {} peers",
            node.index,
            kib as f64 / 1024.0,
            status["peers"]
        );
        rss.push(kib);
    }
    rss.sort_unstable();
    println!(
        "idle RSS after {wait} s with {} peers each: median {:.1} MiB, max {:.1} MiB ({})",
        nodes - 1,
        rss[rss.len() / 2] as f64 / 1024.0,
        rss[rss.len() - 1] as f64 / 1024.0,
        btnode.display()
    );
    Ok(())
}

fn up(nodes: usize, dir: Option<PathBuf>, btnode: PathBuf) -> anyhow::Result<()> {
    let mut net = match dir {
        Some(dir) => Testnet::start_in(&btnode, nodes, dir, None)?,
        None => Testnet::start(&btnode, nodes)?,
    };
    let took = net.wait_converged(Duration::from_secs(60))?;
    println!("{nodes} nodes converged in {:.1} s", took.as_secs_f64());
    for i in 0..nodes {
        let path = net.path(&format!("node{i}"));
        if i > 0 {
            net.grant(i, &path)?;
        }
        net.json(i, &["register", &path])?;
    }
    println!("root of the tree: {}", net.root);
    for node in &net.nodes {
        println!(
            "node{}: {}  data dir {}",
            node.index,
            node.address.as_deref().unwrap_or("-"),
            node.data_dir.display()
        );
    }
    let d0 = net.nodes[0].data_dir.display().to_string();
    let d1 = net.nodes[nodes.min(2) - 1].data_dir.display().to_string();
    println!("\ntry (the nodes' passphrase is in BT_PASSPHRASE):");
    println!("  export BT_PASSPHRASE='{PASSPHRASE}'");
    println!("  {} --data-dir {d0} status", btnode.display());
    println!("  {} --data-dir {d1} peers", btnode.display());
    println!(
        "  {} --data-dir {d0} resolve {}/some/service",
        btnode.display(),
        net.path(&format!("node{}", nodes - 1))
    );
    println!("\nCtrl-C stops every node.");
    wait_for_signal()?;
    println!("stopping");
    drop(net);
    Ok(())
}

/// Waits for SIGINT or SIGTERM (the nodes, in the same process group, get Ctrl-C too and
/// stop cleanly; the rest are killed when the testnet is dropped).
fn wait_for_signal() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    Ok(())
}
