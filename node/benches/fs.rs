//! File system throughput against the raw disk, in one run.
//!
//! The same random bytes (256 MiB, or `FS_BENCH_MIB`) go, in this order:
//!
//! 1. to a file on the disk the nodes' data directories are on, `sync_all` included, and
//!    straight back (`std::fs::read`);
//! 2. through the file system's core in this process: `fs::Client` over a `fs::Replica` on
//!    a redb file, reading the raw file and writing the file it gets back the way the
//!    daemon does (so the difference to the next rows is the daemon, the CLI and the
//!    network layer);
//! 3. through one real `btnode` daemon with R = 1: `btnode fs put`, then `btnode fs get`;
//! 4. through three real `btnode` processes with R = 3, W = 2: put on node 0, get on node 2
//!    (after node 0 shared the tree with it), then get on node 0.
//!
//! Every get is compared with the original bytes. Reads are warm-cache on every side (no
//! page cache is dropped: that needs `posix_fadvise`, i.e. `unsafe`): each read directly
//! follows the write of the same bytes. Then the parts of the work are timed on their
//! own, on one core: BLAKE3, sealing and opening with XChaCha20-Poly1305, and redb commits.
//!
//! Run with `cargo bench -p btnode --bench fs` (`FS_BENCH_MIB=64` for a quick run).

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use fs::id::{ChunkId, InodeId};
use fs::store::Store;
use keys::{Chain, DataKey, Identity, Validity};
use rand::RngCore as _;
use testnet::Testnet;
use tokio::io::AsyncWriteExt as _;

const MIB: usize = 1 << 20;

/// The goals from the issue: (row, least ratio to the raw write).
const GOALS: [(&str, f64); 2] = [(ONE_NODE_PUT, 0.8), (THREE_NODE_PUT, 0.3)];

const RAW_WRITE: &str = "raw disk write (write_all + sync_all)";
const RAW_READ: &str = "raw disk read (std::fs::read, warm cache)";
const ONE_NODE_PUT: &str = "1 node, R=1: `btnode fs put`";
const THREE_NODE_PUT: &str = "3 nodes, R=3 W=2: `btnode fs put` on node 0";

/// Which raw figure a row is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Write,
    Read,
}

#[derive(Debug)]
struct Row {
    operation: String,
    kind: Kind,
    took: Duration,
    bytes: usize,
}

impl Row {
    fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / MIB as f64 / self.took.as_secs_f64()
    }
}

/// Collects rows and reports each as it comes.
#[derive(Debug, Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn add(&mut self, operation: &str, kind: Kind, took: Duration, bytes: usize) {
        let row = Row {
            operation: operation.to_owned(),
            kind,
            took,
            bytes,
        };
        eprintln!(
            "  {operation}: {:.2} s, {:.1} MiB/s",
            took.as_secs_f64(),
            row.mib_per_s()
        );
        self.rows.push(row);
    }

    fn rate(&self, operation: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.operation == operation)
            .map(Row::mib_per_s)
    }

    fn print(&self) {
        let raw_write = self.rate(RAW_WRITE);
        let raw_read = self.rate(RAW_READ);
        println!("| operation | MiB/s | ratio to raw disk (write or read) | goal (issue) |");
        println!("|---|---:|---:|---|");
        for row in &self.rows {
            let (raw, which) = match row.kind {
                Kind::Write => (raw_write, "write"),
                Kind::Read => (raw_read, "read"),
            };
            let ratio = raw.map(|raw| row.mib_per_s() / raw);
            let goal = GOALS
                .iter()
                .find(|(name, _)| *name == row.operation)
                .map_or(String::new(), |(_, least)| match ratio {
                    Some(r) if r >= *least => format!("≥ {least}× raw write: met"),
                    _ => format!("≥ {least}× raw write: **not met**"),
                });
            println!(
                "| {} | {:.1} | {} {which} | {goal} |",
                row.operation,
                row.mib_per_s(),
                ratio.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×")),
            );
        }
    }
}

/// Runs `f` and returns its value and how long it took.
fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Duration)> {
    let started = Instant::now();
    let value = f()?;
    Ok((value, started.elapsed()))
}

/// Fails loudly unless the file at `local` holds exactly `data`.
fn check_same(what: &str, local: &FsPath, data: &[u8]) -> anyhow::Result<()> {
    let got = std::fs::read(local).with_context(|| format!("{what}: cannot read back"))?;
    ensure!(
        got.len() == data.len(),
        "{what}: got {} bytes back, not {}",
        got.len(),
        data.len()
    );
    let first = got.iter().zip(data).position(|(a, b)| a != b);
    ensure!(
        first.is_none(),
        "{what}: the bytes differ, first at offset {first:?}"
    );
    Ok(())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    format!("{model}, {cores} cores")
}

/// 1: the raw disk.
fn raw(table: &mut Table, dir: &FsPath, data: &[u8]) -> anyhow::Result<PathBuf> {
    let source = dir.join("source.bin");
    let ((), took) = timed(|| {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&source)?;
        file.write_all(data)?;
        file.sync_all()?;
        Ok(())
    })?;
    table.add(RAW_WRITE, Kind::Write, took, data.len());
    let (back, took) = timed(|| Ok(std::fs::read(&source)?))?;
    table.add(RAW_READ, Kind::Read, took, data.len());
    ensure!(back == data, "the raw file reads back different bytes");
    Ok(source)
}

/// 2: `fs::Client` over a `Replica` on a redb file, in this process, with the daemon's
/// reader and writer.
fn in_process(table: &mut Table, dir: &FsPath, source: &FsPath, data: &[u8]) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let store = Store::open(&dir.join("blocks.redb"))?;
    let replica = Arc::new(fs::Replica::new(store));
    let owner = Arc::new(Identity::generate());
    let tree = keys::Path::root_of(owner.principal());
    let chain = Chain::root_grant(
        owner.signing_key(),
        owner.principal(),
        tree.clone(),
        Validity::for_seconds(3600),
    );
    let client = fs::Client::new(replica, owner, vec![chain], fs::Config::new());
    let path: keys::Path = format!("{tree}/bench/data.bin")
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (_, took) = timed(|| {
        runtime.block_on(async {
            let file = tokio::fs::File::open(source).await?;
            client
                .put(&path, tokio::io::BufReader::new(file), |_| {})
                .await?;
            anyhow::Ok(())
        })
    })?;
    table.add(
        "in process: `fs::Client::put` over a redb `Replica`",
        Kind::Write,
        took,
        data.len(),
    );
    let back = dir.join("in-process.bin");
    let (_, took) = timed(|| {
        runtime.block_on(async {
            let file = tokio::fs::File::create(&back).await?;
            let mut sink = tokio::io::BufWriter::new(file);
            client.get(&path, &mut sink, |_| {}).await?;
            let mut file = sink.into_inner();
            file.flush().await?;
            file.sync_all().await?;
            anyhow::Ok(())
        })
    })?;
    table.add(
        "in process: `fs::Client::get` (to a file, sync_all)",
        Kind::Read,
        took,
        data.len(),
    );
    check_same("in-process get", &back, data)?;
    std::fs::remove_file(&back)?;
    std::fs::remove_file(dir.join("blocks.redb"))?;
    Ok(())
}

/// Starts `n` daemons with R, W and no repair rounds during the measurement.
fn testnet(btnode: &FsPath, n: usize, replicas: &str, quorum: &str) -> anyhow::Result<Testnet> {
    let mut net = Testnet::start_with_env(
        btnode,
        n,
        &[
            ("BT_FS_REPLICAS", replicas),
            ("BT_FS_WRITE_QUORUM", quorum),
            ("BT_REPAIR_INTERVAL_SECS", "3600"),
        ],
    )?;
    let took = net.wait_converged(Duration::from_secs(60))?;
    eprintln!("  {n} node(s) converged in {:.1} s", took.as_secs_f64());
    Ok(net)
}

/// Runs `phase` on `net`; if it fails, prints the end of every node's log first.
fn logged<T>(
    net: &Testnet,
    phase: impl FnOnce(&Testnet) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let result = phase(net);
    if result.is_err() {
        for node in &net.nodes {
            let log = std::fs::read_to_string(node.log()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- node {} log, last lines:", node.index);
            for line in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{line}");
            }
        }
    }
    result
}

/// Runs `btnode fs get` on `node` into `dir` and checks the bytes; the time of the command.
fn get(
    net: &Testnet,
    node: usize,
    path: &str,
    dir: &FsPath,
    data: &[u8],
) -> anyhow::Result<Duration> {
    let out = dir.join(format!("got-{}-{node}.bin", net.nodes.len()));
    let out_text = out.to_string_lossy().into_owned();
    let (_, took) = timed(|| net.json(node, &["fs", "get", path, &out_text]))?;
    check_same(&format!("get on node {node}"), &out, data)?;
    std::fs::remove_file(&out)?;
    Ok(took)
}

/// Runs `btnode fs put` of `source` on `node`; the time of the command.
fn put(net: &Testnet, node: usize, source: &FsPath, path: &str) -> anyhow::Result<Duration> {
    let source = source.to_string_lossy().into_owned();
    let (stat, took) = timed(|| net.json(node, &["fs", "put", &source, path]))?;
    eprintln!(
        "  stored {} bytes in {} chunks",
        stat["size"], stat["chunks"]
    );
    Ok(took)
}

/// How long a CLI command that does nothing much takes (process start, socket, JSON).
fn cli_round_trip(net: &Testnet) -> anyhow::Result<Duration> {
    let mut samples: Vec<Duration> = (0..5)
        .map(|_| timed(|| net.json(0, &["status"])).map(|(_, t)| t))
        .collect::<anyhow::Result<_>>()?;
    samples.sort();
    Ok(samples[samples.len() / 2])
}

/// 3: one daemon, R = 1.
fn one_node(
    table: &mut Table,
    btnode: &FsPath,
    dir: &FsPath,
    source: &FsPath,
    data: &[u8],
) -> anyhow::Result<()> {
    let net = testnet(btnode, 1, "1", "1")?;
    ensure!(
        std::fs::metadata(net.dir())?.dev() == std::fs::metadata(dir)?.dev(),
        "the node data directories are not on the raw file's file system"
    );
    logged(&net, |net| {
        let cli = cli_round_trip(net)?;
        eprintln!(
            "  `btnode status` round trip: {:.1} ms",
            cli.as_secs_f64() * 1e3
        );
        let path = net.path("bench/data.bin");
        let took = put(net, 0, source, &path)?;
        table.add(ONE_NODE_PUT, Kind::Write, took, data.len());
        let took = get(net, 0, &path, dir, data)?;
        table.add(
            "1 node, R=1: `btnode fs get` (to a file, sync_all)",
            Kind::Read,
            took,
            data.len(),
        );
        Ok(())
    })
}

/// 4: three processes, R = 3, W = 2.
fn three_nodes(
    table: &mut Table,
    btnode: &FsPath,
    dir: &FsPath,
    source: &FsPath,
    data: &[u8],
) -> anyhow::Result<()> {
    let net = testnet(btnode, 3, "3", "2")?;
    logged(&net, |net| {
        let path = net.path("bench/data.bin");
        let took = put(net, 0, source, &path)?;
        table.add(THREE_NODE_PUT, Kind::Write, took, data.len());
        net.json(
            0,
            &[
                "fs",
                "share",
                &format!("/{}", net.root),
                &net.nodes[2].principal,
            ],
        )?;
        let took = get(net, 2, &path, dir, data)?;
        table.add(
            "3 nodes, R=3 W=2: `btnode fs get` on node 2",
            Kind::Read,
            took,
            data.len(),
        );
        let took = get(net, 0, &path, dir, data)?;
        table.add(
            "3 nodes, R=3 W=2: `btnode fs get` on node 0",
            Kind::Read,
            took,
            data.len(),
        );
        for i in 0..3 {
            let fs = &net.json(i, &["status"])?["fs"];
            eprintln!(
                "  node {i}: {} chunks, {} bytes, {} block requests served",
                fs["chunks"], fs["chunk_bytes"], fs["served"]
            );
        }
        Ok(())
    })
}

/// The parts of the work on their own, on this thread (one core), over 1 MiB chunks.
fn parts(dir: &FsPath, data: &[u8]) -> anyhow::Result<()> {
    let rate = |took: Duration| data.len() as f64 / MIB as f64 / took.as_secs_f64();
    let mut lines = Vec::new();
    let chunks: Vec<&[u8]> = data.chunks(MIB).collect();

    let (_, took) = timed(|| Ok(chunks.iter().map(|c| ChunkId::of(c)).count()))?;
    lines.push(("BLAKE3 (ChunkId::of)".to_owned(), rate(took)));

    let key = DataKey::generate();
    let inode = InodeId([7; 32]);
    let (sealed, took) = timed(|| {
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| Ok(fs::chunk::seal(&key, &inode, i as u64, c)?))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    lines.push((
        "seal: XChaCha20-Poly1305 + BLAKE3 of the result".to_owned(),
        rate(took),
    ));
    let (_, took) = timed(|| {
        for (i, s) in sealed.iter().enumerate() {
            ensure!(ChunkId::of(&s.bytes) == s.id);
            fs::chunk::open(&key, &inode, i as u64, &s.bytes)?;
        }
        Ok(())
    })?;
    lines.push((
        "open: BLAKE3 check + XChaCha20-Poly1305".to_owned(),
        rate(took),
    ));

    let file = dir.join("parts.redb");
    let batches = [16, 1];
    for batch in batches {
        let store = Store::open(&file)?;
        let (_, took) = timed(|| {
            for group in sealed.chunks(batch) {
                let items: Vec<(ChunkId, &[u8])> =
                    group.iter().map(|s| (s.id, s.bytes.as_slice())).collect();
                store.put_chunks(&items)?;
            }
            Ok(())
        })?;
        let what = if batch == 1 {
            "redb put_chunks, one chunk per commit (a remote replica's PutChunk)".to_owned()
        } else {
            format!("redb put_chunks, {batch} chunks per commit (the client's flush)")
        };
        lines.push((what, rate(took)));
        if batch == 1 {
            let (_, took) = timed(|| {
                for s in &sealed {
                    store
                        .get_chunk(&s.id)?
                        .context("a stored chunk is missing")?;
                }
                Ok(())
            })?;
            lines.push(("redb get_chunk (incl. BLAKE3 check)".to_owned(), rate(took)));
        }
        drop(store);
        std::fs::remove_file(&file)?;
    }

    println!("| part (one core, 1 MiB chunks) | MiB/s |");
    println!("|---|---:|");
    for (what, rate) in lines {
        println!("| {what} | {rate:.1} |");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mib: usize = match std::env::var("FS_BENCH_MIB") {
        Ok(text) => text.parse().context("FS_BENCH_MIB is not a number")?,
        Err(_) => 256,
    };
    let btnode = PathBuf::from(env!("CARGO_BIN_EXE_btnode"));
    let started = Instant::now();
    // In the directory the testnets use, so on the same file system.
    let dir = tempfile::Builder::new().prefix("btfs-bench-").tempdir()?;
    let mut data = vec![0u8; mib * MIB];
    rand::thread_rng().fill_bytes(&mut data);

    let mut table = Table::default();
    eprintln!("raw disk…");
    let source = raw(&mut table, dir.path(), &data)?;
    eprintln!("in process…");
    in_process(&mut table, dir.path(), &source, &data)?;
    eprintln!("1 node…");
    one_node(&mut table, &btnode, dir.path(), &source, &data)?;
    eprintln!("3 nodes…");
    three_nodes(&mut table, &btnode, dir.path(), &source, &data)?;
    eprintln!("parts…");

    println!(
        "{mib} MiB of random bytes, {}; temporary directories on {}; warm page cache \
         for every read.",
        machine(),
        std::env::temp_dir().display()
    );
    println!();
    table.print();
    println!();
    parts(dir.path(), &data)?;
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
