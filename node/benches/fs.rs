//! File system throughput against the raw disk, in one run.
//!
//! The same random bytes (256 MiB, or `FS_BENCH_MIB`) go, in this order:
//!
//! 1. to a file on the disk the nodes' data directories are on, `sync_all` included, and
//!    straight back (`std::fs::read`), five times: the medians are the baselines;
//! 2. through the file system's core in this process: `fs::Client` over a `fs::Replica` on
//!    a redb file, reading the raw file and writing the file it gets back the way the
//!    daemon does (so the difference to the next rows is the daemon, the CLI and the
//!    network layer);
//! 3. through one real `btnode` daemon with R = 1: `btnode fs put`, then `btnode fs get`,
//!    five times (medians, like the baselines: a single run moves by a third here);
//! 4. through three real `btnode` processes with R = 3, W = 2: put on node 0, get on node 2
//!    (after node 0 shared the tree with it), then get on node 0. Each command gets up to
//!    [`ATTEMPTS`] tries, as the block protocol drops streams under load; the table says
//!    which attempt it measured and how many copies of each chunk the put left.
//!
//! Every get is compared with the original bytes. Reads are warm-cache on every side (no
//! page cache is dropped: that needs `posix_fadvise`, i.e. `unsafe`): each read directly
//! follows the write of the same bytes. Then the parts of the work are timed on their
//! own, on one thread: BLAKE3, sealing and opening with XChaCha20-Poly1305, redb commits.
//! Diagnostics on stderr: where the in-process put spent its time, each daemon's CPU
//! time per command, the size of the redb file.
//!
//! Run with `cargo bench -p btnode --bench fs` (`FS_BENCH_MIB=64` for a quick run;
//! `FS_BENCH_ONLY=in-process`, `1-node`, `3-nodes` or `parts` runs that phase alone, after
//! the raw disk, e.g. under `perf record`).

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

/// Raw writes (each followed by its read); the medians are the baselines.
const RAW_RUNS: usize = 5;

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
    /// Shown after the operation, in parentheses.
    note: String,
    kind: Kind,
    /// `None`: the operation failed.
    took: Option<Duration>,
    bytes: usize,
}

impl Row {
    fn mib_per_s(&self) -> Option<f64> {
        self.took
            .map(|took| self.bytes as f64 / MIB as f64 / took.as_secs_f64())
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
            note: String::new(),
            kind,
            took: Some(took),
            bytes,
        };
        eprintln!(
            "  {operation}: {:.2} s, {:.1} MiB/s",
            took.as_secs_f64(),
            row.mib_per_s().unwrap_or_default()
        );
        self.rows.push(row);
    }

    fn failed(&mut self, operation: &str, kind: Kind, note: String) {
        self.rows.push(Row {
            operation: operation.to_owned(),
            note,
            kind,
            took: None,
            bytes: 0,
        });
    }

    /// Adds `note` to the last row.
    /// A row of the median of `runs` (each moving `bytes`), noting their range.
    fn add_median(&mut self, operation: &str, kind: Kind, mut runs: Vec<Duration>, bytes: usize) {
        let seconds: Vec<String> = runs
            .iter()
            .map(|t| format!("{:.2}", t.as_secs_f64()))
            .collect();
        eprintln!("  {operation}, runs (s): {}", seconds.join(" "));
        if runs.is_empty() {
            return;
        }
        runs.sort();
        self.add(operation, kind, runs[runs.len() / 2], bytes);
        let rate = |t: &Duration| bytes as f64 / MIB as f64 / t.as_secs_f64();
        self.note(format!(
            "median of {}; runs {:.0} to {:.0} MiB/s",
            runs.len(),
            rate(&runs[runs.len() - 1]),
            rate(&runs[0])
        ));
    }

    fn note(&mut self, note: String) {
        if let Some(row) = self.rows.last_mut() {
            row.note = note;
        }
    }

    fn rate(&self, operation: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.operation == operation)
            .and_then(Row::mib_per_s)
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
            let ratio = raw.zip(row.mib_per_s()).map(|(raw, rate)| rate / raw);
            let goal = GOALS
                .iter()
                .find(|(name, _)| *name == row.operation)
                .map_or(String::new(), |(_, least)| match ratio {
                    Some(r) if r >= *least => format!("≥ {least}× raw write: met"),
                    _ => format!("≥ {least}× raw write: **not met**"),
                });
            let note = if row.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", row.note)
            };
            println!(
                "| {}{note} | {} | {} | {goal} |",
                row.operation,
                row.mib_per_s()
                    .map_or_else(|| "failed".to_owned(), |r| format!("{r:.1}")),
                ratio.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}× {which}")),
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
    let (mut writes, mut reads) = (Vec::new(), Vec::new());
    for _ in 0..RAW_RUNS {
        let ((), took) = timed(|| {
            use std::io::Write as _;
            let mut file = std::fs::File::create(&source)?;
            file.write_all(data)?;
            file.sync_all()?;
            Ok(())
        })?;
        writes.push(took);
        let (back, took) = timed(|| Ok(std::fs::read(&source)?))?;
        reads.push(took);
        ensure!(back == data, "the raw file reads back different bytes");
    }
    table.add_median(RAW_WRITE, Kind::Write, writes, data.len());
    table.add_median(RAW_READ, Kind::Read, reads, data.len());
    Ok(source)
}

/// CPU seconds (user and system) process `pid` used so far.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name: state is field 3, utime 14, stime 15 (in clock ticks, 100/s).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// A [`fs::Blocks`] that adds up the time spent in the one it wraps.
#[derive(Debug)]
struct Timed<B> {
    inner: B,
    put_chunks: std::sync::Mutex<Duration>,
    get_chunk: std::sync::Mutex<Duration>,
}

impl<B> Timed<B> {
    fn take(spent: &std::sync::Mutex<Duration>) -> Duration {
        spent
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
    }

    fn add(spent: &std::sync::Mutex<Duration>, started: Instant) {
        if let Ok(mut d) = spent.lock() {
            *d += started.elapsed();
        }
    }
}

impl<B: fs::Blocks> fs::Blocks for Timed<B> {
    async fn put_chunks(
        &self,
        owner: InodeId,
        chunks: Vec<fs::chunk::Sealed>,
    ) -> Result<(), fs::BlockError> {
        let started = Instant::now();
        let result = self.inner.put_chunks(owner, chunks).await;
        Self::add(&self.put_chunks, started);
        result
    }

    async fn get_chunk(&self, id: ChunkId) -> Result<Vec<u8>, fs::BlockError> {
        let started = Instant::now();
        let result = self.inner.get_chunk(id).await;
        Self::add(&self.get_chunk, started);
        result
    }

    fn local_chunk_unchecked(&self, id: &ChunkId) -> Option<Vec<u8>> {
        let started = Instant::now();
        let result = self.inner.local_chunk_unchecked(id);
        Self::add(&self.get_chunk, started);
        result
    }

    async fn put_version(&self, inode: InodeId, signed: Vec<u8>) -> Result<(), fs::BlockError> {
        self.inner.put_version(inode, signed).await
    }

    async fn get_versions(
        &self,
        inode: InodeId,
    ) -> Result<Vec<fs::inode::Verified>, fs::BlockError> {
        self.inner.get_versions(inode).await
    }
}

/// 2: `fs::Client` over a `Replica` on a store (redb and segments), in this process, with the daemon's
/// reader and writer.
fn in_process(table: &mut Table, dir: &FsPath, source: &FsPath, data: &[u8]) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let store = Store::open(&dir.join("blocks.redb"))?;
    let blocks = Arc::new(Timed {
        inner: fs::Replica::new(store),
        put_chunks: std::sync::Mutex::default(),
        get_chunk: std::sync::Mutex::default(),
    });
    let owner = Arc::new(Identity::generate());
    let tree = keys::Path::root_of(owner.principal());
    let chain = Chain::root_grant(
        owner.signing_key(),
        owner.principal(),
        tree.clone(),
        Validity::for_seconds(3600),
    );
    let client = fs::Client::new(blocks.clone(), owner, vec![chain], fs::Config::new());
    let path: keys::Path = format!("{tree}/bench/data.bin")
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cpu = cpu_seconds("self");
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
        "in process: `fs::Client::put` over a `Replica` (redb and segments)",
        Kind::Write,
        took,
        data.len(),
    );
    eprintln!(
        "    {:.2} s of it in Blocks::put_chunks (segment writes, redb commits); {:.2} \
         CPU-seconds; {}",
        Timed::<fs::Replica>::take(&blocks.put_chunks).as_secs_f64(),
        cpu_seconds("self") - cpu,
        store_size(&dir.join("blocks.redb"))?
    );
    let cpu = cpu_seconds("self");
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
    eprintln!(
        "    {:.2} s summed over concurrent calls of Blocks::get_chunk and \
         local_chunk_unchecked (location, segment read); {:.2} CPU-seconds",
        Timed::<fs::Replica>::take(&blocks.get_chunk).as_secs_f64(),
        cpu_seconds("self") - cpu
    );
    check_same("in-process get", &back, data)?;
    std::fs::remove_file(&back)?;
    remove_store(&dir.join("blocks.redb"))?;
    Ok(())
}

/// What a store at `db` takes on the disk: its redb file and its segments (the blocks
/// allocated, so punched holes do not count).
fn store_size(db: &FsPath) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let mut segments = 0;
    for entry in std::fs::read_dir(Store::segment_dir(db))? {
        segments += entry?.metadata()?.blocks() * 512;
    }
    Ok(format!(
        "blocks.redb is {} MiB, its segments {} MiB",
        (std::fs::metadata(db)?.blocks() * 512) >> 20,
        segments >> 20
    ))
}

/// Deletes the store at `db`: its redb file and its segments.
fn remove_store(db: &FsPath) -> anyhow::Result<()> {
    std::fs::remove_file(db)?;
    std::fs::remove_dir_all(Store::segment_dir(db))?;
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

/// CPU seconds each node's daemon used so far.
fn nodes_cpu(net: &Testnet) -> Vec<f64> {
    net.nodes
        .iter()
        .map(|n| n.pid().map_or(0.0, |pid| cpu_seconds(&pid.to_string())))
        .collect()
}

/// Prints the CPU seconds each daemon used since `before`, and over how long.
fn report_cpu(net: &Testnet, before: &[f64], took: Duration) {
    let used: Vec<String> = nodes_cpu(net)
        .iter()
        .zip(before)
        .map(|(after, before)| format!("{:.2}", after - before))
        .collect();
    eprintln!(
        "    daemon CPU-seconds per node: {} (over {:.2} s)",
        used.join(", "),
        took.as_secs_f64()
    );
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

/// Runs `btnode fs get` on `node` into `dir` and checks the bytes: the time of the
/// command, or why the command failed (an `Err` outside: the bytes differ).
fn get(
    net: &Testnet,
    node: usize,
    path: &str,
    dir: &FsPath,
    data: &[u8],
) -> anyhow::Result<Result<Duration, String>> {
    let out = dir.join(format!("got-{}-{node}.bin", net.nodes.len()));
    let out_text = out.to_string_lossy().into_owned();
    let took = match timed(|| net.json(node, &["fs", "get", path, &out_text])) {
        Ok((_, took)) => took,
        Err(e) => return Ok(Err(format!("{e:#}"))),
    };
    check_same(&format!("get on node {node}"), &out, data)?;
    std::fs::remove_file(&out)?;
    Ok(Ok(took))
}

/// Runs `btnode fs put` of `source` on `node`: the time of the command, or why it failed.
fn put(net: &Testnet, node: usize, source: &FsPath, path: &str) -> Result<Duration, String> {
    let source = source.to_string_lossy().into_owned();
    let (stat, took) =
        timed(|| net.json(node, &["fs", "put", &source, path])).map_err(|e| format!("{e:#}"))?;
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
        // As many runs as of the raw baseline, each file removed after its get: one run
        // on this VM moves by a third from minute to minute.
        let (mut puts, mut gets) = (Vec::new(), Vec::new());
        for run in 0..RAW_RUNS {
            let path = net.path(&format!("bench/data-{run}.bin"));
            let cpu = nodes_cpu(net);
            let took = put(net, 0, source, &path).map_err(anyhow::Error::msg)?;
            report_cpu(net, &cpu, took);
            puts.push(took);
            if run == 0 {
                let size = store_size(&net.nodes[0].data_dir.join("blocks.redb"))?;
                eprintln!("    {size}");
            }
            let cpu = nodes_cpu(net);
            let took = get(net, 0, &path, dir, data)?.map_err(anyhow::Error::msg)?;
            report_cpu(net, &cpu, took);
            gets.push(took);
            net.json(0, &["fs", "rm", &path])?;
        }
        table.add_median(ONE_NODE_PUT, Kind::Write, puts, data.len());
        table.add_median(
            "1 node, R=1: `btnode fs get` (to a file, sync_all)",
            Kind::Read,
            gets,
            data.len(),
        );
        Ok(())
    })
}

/// Attempts at each R = 3 command: the block protocol drops streams under load (see the
/// README), and a put or get fails when every other replica dropped one within 10 s.
const ATTEMPTS: usize = 3;

/// Runs `command` (given the attempt number) up to [`ATTEMPTS`] times, 11 s apart
/// (a peer that failed is skipped for 10 s): the time of the first success and how many
/// attempts failed before it, or the last failure. An `Err` outside is fatal at once.
fn retried(
    what: &str,
    mut command: impl FnMut(usize) -> anyhow::Result<Result<Duration, String>>,
) -> anyhow::Result<Result<(Duration, usize), String>> {
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match command(attempt)? {
            Ok(took) => return Ok(Ok((took, attempt - 1))),
            Err(e) => {
                eprintln!("  {what}, attempt {attempt} of {ATTEMPTS} failed: {e}");
                last = e;
                if attempt < ATTEMPTS {
                    std::thread::sleep(Duration::from_secs(11));
                }
            }
        }
    }
    Ok(Err(last))
}

/// A row's note on failed attempts before the one measured.
fn attempts_note(failed: usize) -> String {
    if failed == 0 {
        String::new()
    } else {
        format!("attempt {} of {ATTEMPTS}, the earlier failed", failed + 1)
    }
}

/// Chunks each node's store holds.
fn chunks_held(net: &Testnet) -> anyhow::Result<Vec<u64>> {
    (0..net.nodes.len())
        .map(|i| {
            net.json(i, &["status"])?["fs"]["chunks"]
                .as_u64()
                .context("status shows no chunk count")
        })
        .collect()
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
        // A new path for each attempt: a failed put leaves no file, but its chunks stay.
        let mut path = String::new();
        let mut before = Vec::new();
        let mut cpu = Vec::new();
        let put = retried("put on node 0", |attempt| {
            path = net.path(&format!("bench/data-{attempt}.bin"));
            before = chunks_held(net)?;
            cpu = nodes_cpu(net);
            Ok(put(net, 0, source, &path))
        })?;
        let (took, failed) = match put {
            Ok(done) => done,
            Err(e) => {
                table.failed(
                    THREE_NODE_PUT,
                    Kind::Write,
                    format!("{ATTEMPTS} attempts failed"),
                );
                eprintln!("  every R = 3 put failed, the last with: {e}");
                return Ok(());
            }
        };
        table.add(THREE_NODE_PUT, Kind::Write, took, data.len());
        report_cpu(net, &cpu, took);
        // Node 0 is among the 3 nearest of every item, so it holds every chunk.
        let after = chunks_held(net)?;
        let added: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let copies = added.iter().sum::<u64>() as f64 / added[0].max(1) as f64;
        eprintln!("  chunks added per node: {added:?}, {copies:.2} copies on average");
        for i in 1..net.nodes.len() {
            let fs = &net.json(i, &["status"])?["fs"];
            eprintln!(
                "  node {i} stored {} chunks from peers in {} commits",
                fs["peer_chunks"], fs["peer_chunk_commits"]
            );
        }
        let mut note = format!("{copies:.2} copies per chunk");
        if failed > 0 {
            note = format!("{}; {note}", attempts_note(failed));
        }
        table.note(note);
        net.json(
            0,
            &[
                "fs",
                "share",
                &format!("/{}", net.root),
                &net.nodes[2].principal,
            ],
        )?;
        for node in [2, 0] {
            let operation = format!("3 nodes, R=3 W=2: `btnode fs get` on node {node}");
            match retried(&format!("get on node {node}"), |_| {
                cpu = nodes_cpu(net);
                get(net, node, &path, dir, data)
            })? {
                Ok((took, failed)) => {
                    table.add(&operation, Kind::Read, took, data.len());
                    report_cpu(net, &cpu, took);
                    table.note(attempts_note(failed));
                }
                Err(_) => table.failed(
                    &operation,
                    Kind::Read,
                    format!("{ATTEMPTS} attempts failed"),
                ),
            }
        }
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

/// The parts of the work on their own, on this thread (one core), over 1 MiB chunks:
/// throughput, and how busy the core was (CPU time over wall time; the rest is waiting,
/// for `fsync` mostly).
fn parts(dir: &FsPath, data: &[u8]) -> anyhow::Result<()> {
    let mut lines: Vec<(String, f64, f64)> = Vec::new();
    let mut part = |what: &str, f: &mut dyn FnMut() -> anyhow::Result<()>| {
        let cpu = cpu_seconds("thread-self");
        let ((), took) = timed(f)?;
        let busy = (cpu_seconds("thread-self") - cpu) / took.as_secs_f64();
        let rate = data.len() as f64 / MIB as f64 / took.as_secs_f64();
        lines.push((what.to_owned(), rate, busy));
        anyhow::Ok(())
    };
    let chunks: Vec<&[u8]> = data.chunks(MIB).collect();
    part("BLAKE3 (ChunkId::of)", &mut || {
        for c in &chunks {
            std::hint::black_box(ChunkId::of(c));
        }
        Ok(())
    })?;
    let key = DataKey::generate();
    let inode = InodeId([7; 32]);
    let mut sealed = Vec::new();
    part(
        "seal: XChaCha20-Poly1305, BLAKE3 of the result",
        &mut || {
            for (i, c) in chunks.iter().enumerate() {
                sealed.push(fs::chunk::seal(&key, &inode, i as u64, c)?);
            }
            Ok(())
        },
    )?;
    part("open: BLAKE3 check, XChaCha20-Poly1305", &mut || {
        for (i, s) in sealed.iter().enumerate() {
            ensure!(ChunkId::of(s.bytes()) == s.id());
            std::hint::black_box(fs::chunk::open(&key, &inode, i as u64, s.bytes())?);
        }
        Ok(())
    })?;
    // The baseline: the same work with RustCrypto's XChaCha20-Poly1305, which sealed
    // chunks before *ring* did (the bytes are the same; fs::chunk's tests check it).
    let rustcrypto = {
        use chacha20poly1305::aead::KeyInit;
        chacha20poly1305::XChaCha20Poly1305::new(key.as_bytes().into())
    };
    // Its chunks carry no associated data (the chunk's is private to fs::chunk): 66
    // bytes less to authenticate per MiB.
    let mut old: Vec<(ChunkId, Vec<u8>)> = Vec::new();
    part(
        "baseline seal: RustCrypto XChaCha20-Poly1305, BLAKE3 of the result",
        &mut || {
            use chacha20poly1305::aead::AeadInPlace;
            for c in &chunks {
                let mut bytes = Vec::with_capacity(c.len() + 40);
                bytes.resize(24, 0);
                rand::thread_rng().fill_bytes(&mut bytes);
                bytes.extend_from_slice(c);
                let (nonce, body) = bytes.split_at_mut(24);
                let tag = rustcrypto
                    .encrypt_in_place_detached((&*nonce).into(), b"", body)
                    .map_err(|_| anyhow::anyhow!("seal failed"))?;
                bytes.extend_from_slice(&tag);
                old.push((ChunkId::of(&bytes), bytes));
            }
            Ok(())
        },
    )?;
    part(
        "baseline open: BLAKE3 check, RustCrypto XChaCha20-Poly1305",
        &mut || {
            use chacha20poly1305::aead::AeadInPlace;
            for (id, bytes) in &old {
                ensure!(ChunkId::of(bytes) == *id);
                let (nonce, rest) = bytes.split_at(24);
                let (body, tag) = rest.split_at(rest.len() - 16);
                let mut plaintext = body.to_vec();
                rustcrypto
                    .decrypt_in_place_detached(nonce.into(), b"", &mut plaintext, tag.into())
                    .map_err(|_| anyhow::anyhow!("open failed"))?;
                std::hint::black_box(plaintext);
            }
            Ok(())
        },
    )?;

    // The client's chunks (1 MiB - 4 KiB plaintext) beside full 1 MiB ones: when chunks
    // were values in redb, a full one took a 2 MiB page; segment files have no such step.
    let smaller: Vec<fs::chunk::Sealed> = data
        .chunks(MIB - 4096)
        .enumerate()
        .map(|(i, c)| fs::chunk::seal(&key, &inode, i as u64, c))
        .collect::<Result<_, _>>()?;
    let file = dir.join("parts.redb");
    for (batch, sealed) in [(16, &sealed), (16, &smaller), (1, &sealed)] {
        let store = Store::open(&file)?;
        let what = if batch == 1 {
            "store put_chunks, 1 chunk per commit (a remote replica's PutChunk)".to_owned()
        } else if sealed.len() == chunks.len() {
            format!("store put_chunks, {batch} chunks per commit (the client's flush)")
        } else {
            format!("store put_chunks, {batch} per commit, chunks of 1 MiB - 4 KiB")
        };
        part(&what, &mut || {
            for group in sealed.chunks(batch) {
                let items: Vec<(ChunkId, &[u8])> =
                    group.iter().map(|s| (s.id(), s.bytes())).collect();
                store.put_chunks(&items)?;
            }
            Ok(())
        })?;
        if batch == 1 {
            part("store get_chunk (BLAKE3 check included)", &mut || {
                for s in sealed.iter() {
                    store
                        .get_chunk(&s.id())?
                        .context("a stored chunk is missing")?;
                }
                Ok(())
            })?;
        }
        drop(store);
        eprintln!("  {what}: {}", store_size(&file)?);
        remove_store(&file)?;
    }

    // Deferred commits (a FUSE writer's, durable at fsync), chunks of 1 MiB - 4 KiB, 16
    // per commit: the store (chunk bytes in segment files, format 4) beside the same
    // bytes in a plain redb table keyed by chunk id (the store's layout up to format 2),
    // each made durable by one commit at the end.
    let store = Store::open(&file)?.deferred();
    part(
        "store put_chunks deferred, 16 per commit, then sync (format 4: segments)",
        &mut || {
            for group in smaller.chunks(16) {
                let items: Vec<(ChunkId, &[u8])> =
                    group.iter().map(|s| (s.id(), s.bytes())).collect();
                store.put_chunks(&items)?;
            }
            store.sync()?;
            Ok(())
        },
    )?;
    drop(store);
    remove_store(&file)?;
    const BY_ID: redb::TableDefinition<'static, &[u8; 32], &[u8]> =
        redb::TableDefinition::new("chunks");
    let db = redb::Database::create(&file)?;
    part(
        "baseline: plain redb keyed by chunk id (format 2's layout), same commits",
        &mut || {
            for group in smaller.chunks(16) {
                let mut txn = db.begin_write()?;
                txn.set_durability(redb::Durability::None);
                {
                    let mut table = txn.open_table(BY_ID)?;
                    for s in group {
                        ensure!(ChunkId::of(s.bytes()) == s.id());
                        table.insert(s.id().as_bytes(), s.bytes())?;
                    }
                }
                txn.commit()?;
            }
            let mut txn = db.begin_write()?;
            txn.set_durability(redb::Durability::Immediate);
            txn.set_two_phase_commit(true);
            txn.commit()?;
            Ok(())
        },
    )?;
    drop(db);
    std::fs::remove_file(&file)?;

    println!("| part (one thread, 1 MiB chunks) | MiB/s | CPU busy |");
    println!("|---|---:|---:|");
    for (what, rate, busy) in &lines {
        println!("| {what} | {rate:.1} | {:.0} % |", busy * 100.0);
    }
    let rate = |prefix: &str| {
        lines
            .iter()
            .find(|(what, _, _)| what.starts_with(prefix))
            .map_or(f64::NAN, |line| line.1)
    };
    println!();
    println!(
        "seal {:.2}×, open {:.2}× the RustCrypto baseline",
        rate("seal:") / rate("baseline seal"),
        rate("open:") / rate("baseline open")
    );
    println!(
        "deferred stores {:.2}× the plain redb baseline",
        rate("store put_chunks deferred") / rate("baseline: plain redb")
    );
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

    // FS_BENCH_ONLY=in-process (for profiling) runs only the phases whose name contains
    // it (in-process, 1-node, 3-nodes, parts); the raw disk always runs.
    let only = std::env::var("FS_BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || name.contains(&only);

    let mut table = Table::default();
    eprintln!("raw disk…");
    let source = raw(&mut table, dir.path(), &data)?;
    if wanted("in-process") {
        eprintln!("in process…");
        in_process(&mut table, dir.path(), &source, &data)?;
    }
    if wanted("1-node") {
        eprintln!("1 node…");
        one_node(&mut table, &btnode, dir.path(), &source, &data)?;
    }
    if wanted("3-nodes") {
        eprintln!("3 nodes…");
        three_nodes(&mut table, &btnode, dir.path(), &source, &data)?;
    }

    println!(
        "{mib} MiB of random bytes, {}; temporary directories on {}; warm page cache \
         for every read.",
        machine(),
        std::env::temp_dir().display()
    );
    println!();
    table.print();
    if wanted("parts") {
        eprintln!("parts…");
        println!();
        parts(dir.path(), &data)?;
    }
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
