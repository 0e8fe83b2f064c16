//! Fixed-size chunks against content-defined ones (FastCDC), measured on the same bytes
//! in one run: what each edit of a file makes the file system store again, what finding
//! content-defined boundaries costs beside the hashing every chunk gets anyway, and how
//! much a small read at a random offset has to fetch.
//!
//! `cargo bench -p fs --bench chunking` (`CHUNKING_BENCH_MIB` sets the file's size,
//! default 64). The columns:
//! - *ours, put*: the real `fs::Client` over a `Replica`, the file put again whole (as
//!   `btnode fs put` and an editor's save-and-rename do); the bytes of new chunks the
//!   store took.
//! - *ours, in place*: the same client, the edit written through a handle at its offset
//!   (as a program writing into a mounted file does): for an insertion or a deletion,
//!   everything from the edit to the end is written again.
//! - *fixed, dedup* and *FastCDC, dedup*: computed, not stored: the bytes of the new
//!   version's chunks whose plaintext is not among the old version's chunks, for fixed
//!   boundaries of our chunk size and for FastCDC (2020) with the same average size. This
//!   is the best either could do with a client that recognised unchanged plaintext.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fs::chunk::DEFAULT_CHUNK_SIZE;
use fs::store::Store;
use fs::{Client, Config, Replica};
use keys::{Chain, Identity, Path, Validity};

const MIB: usize = 1 << 20;
/// FastCDC's sizes around our chunk size: a quarter of it at least, four times at most.
const CDC_AVG: usize = DEFAULT_CHUNK_SIZE;
const CDC_MIN: usize = CDC_AVG / 4;
const CDC_MAX: usize = CDC_AVG * 4;

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An edit: the new version, and the span of it that differs from the old one (what a
/// program writing in place writes).
struct Edit {
    name: &'static str,
    new: Vec<u8>,
    from: usize,
    to: usize,
}

fn edits(old: &[u8]) -> Vec<Edit> {
    let mid = old.len() / 2 + 12_345;
    let splice = |at: usize, remove: usize, insert: &[u8]| {
        let mut new = old[..at].to_vec();
        new.extend_from_slice(insert);
        new.extend_from_slice(&old[at + remove..]);
        new
    };
    let mut scattered = old.to_vec();
    let step = old.len() / 10;
    for i in (1..=10).rev() {
        let at = (i * step - 777).min(scattered.len());
        scattered.splice(at..at, random_bytes(100, i as u64));
    }
    let mut appended = old.to_vec();
    appended.extend_from_slice(&random_bytes(MIB, 5));
    vec![
        Edit {
            name: "overwrite 4 KiB in the middle",
            new: splice(mid, 4096, &random_bytes(4096, 1)),
            from: mid,
            to: mid + 4096,
        },
        Edit {
            name: "insert 100 bytes in the middle",
            new: splice(mid, 0, &random_bytes(100, 2)),
            from: mid,
            to: old.len() + 100,
        },
        Edit {
            name: "delete 100 bytes in the middle",
            new: splice(mid, 100, &[]),
            from: mid,
            to: old.len() - 100,
        },
        Edit {
            name: "insert 100 bytes at 10 places",
            to: scattered.len(),
            new: scattered,
            from: step - 777,
        },
        Edit {
            name: "append 1 MiB",
            to: appended.len(),
            new: appended,
            from: old.len(),
        },
    ]
}

fn fixed_chunks(data: &[u8]) -> Vec<&[u8]> {
    data.chunks(DEFAULT_CHUNK_SIZE).collect()
}

fn cdc_chunks(data: &[u8]) -> Vec<&[u8]> {
    fastcdc::v2020::FastCDC::new(data, CDC_MIN, CDC_AVG, CDC_MAX)
        .map(|c| &data[c.offset..c.offset + c.length])
        .collect()
}

/// Bytes of `new`'s chunks whose plaintext is not one of `old`'s chunks.
fn new_bytes(old: &[&[u8]], new: &[&[u8]]) -> usize {
    let known: HashSet<blake3::Hash> = old.iter().map(|c| blake3::hash(c)).collect();
    new.iter()
        .filter(|c| !known.contains(&blake3::hash(c)))
        .map(|c| c.len())
        .sum()
}

/// The real client over a replica on an in-memory store.
struct Ours {
    runtime: tokio::runtime::Runtime,
    replica: Arc<Replica>,
    client: Client<Replica>,
    path: Path,
}

impl Ours {
    fn new() -> Ours {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let replica = Arc::new(Replica::new(Store::in_memory().unwrap()));
        let owner = Arc::new(Identity::generate());
        let tree = Path::root_of(owner.principal());
        let chain = Chain::root_grant(
            owner.signing_key(),
            owner.principal(),
            tree.clone(),
            Validity::for_seconds(3600),
        );
        let client = Client::new(replica.clone(), owner, vec![chain], Config::new());
        let path = format!("{tree}/bench/file.bin").parse().unwrap();
        Ours {
            runtime,
            replica,
            client,
            path,
        }
    }

    fn stored(&self) -> u64 {
        self.replica.store().stats().unwrap().chunk_bytes
    }

    /// Puts `data` whole; the chunk bytes the store took for it.
    fn put(&self, data: &[u8]) -> u64 {
        let before = self.stored();
        self.runtime
            .block_on(self.client.put(&self.path, data, |_| {}))
            .unwrap();
        self.stored() - before
    }

    /// Writes `new[from..to]` at `from` through a handle and truncates to its length.
    fn write_in_place(&self, new: &[u8], from: usize, to: usize) -> u64 {
        let before = self.stored();
        self.runtime.block_on(async {
            let mut handle = self.client.open(&self.path).await.unwrap();
            let mut at = from;
            while at < to {
                let end = (at + 128 * 1024).min(to);
                self.client
                    .write(&mut handle, at as u64, &new[at..end])
                    .await
                    .unwrap();
                at = end;
            }
            self.client
                .truncate(&mut handle, new.len() as u64)
                .await
                .unwrap();
            self.client.fsync(&mut handle).await.unwrap();
        });
        self.stored() - before
    }

    /// Reads the file back whole.
    fn read(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.runtime
            .block_on(self.client.get(&self.path, &mut out, |_| {}))
            .unwrap();
        out
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / MIB as f64)
}

/// The best of three timings of `f` over `bytes`, in MiB/s.
fn throughput(bytes: usize, mut f: impl FnMut() -> usize) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        std::hint::black_box(f());
        best = best.min(started.elapsed());
    }
    bytes as f64 / MIB as f64 / best.as_secs_f64()
}

fn main() {
    let size_mib: usize = std::env::var("CHUNKING_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let old = random_bytes(size_mib * MIB, 2026);
    println!(
        "chunking: a {size_mib} MiB file of random bytes; fixed chunks of {} bytes (ours), \
         FastCDC 2020 with min {CDC_MIN}, average {CDC_AVG}, max {CDC_MAX}",
        DEFAULT_CHUNK_SIZE
    );

    println!();
    println!("MiB stored again for one edit (new version against the old)");
    println!();
    println!("| edit | ours, put | ours, in place | fixed, dedup | FastCDC, dedup |");
    println!("|---|---:|---:|---:|---:|");
    let (old_fixed, old_cdc) = (fixed_chunks(&old), cdc_chunks(&old));
    for edit in edits(&old) {
        // Each column starts from the old version stored afresh.
        let ours = Ours::new();
        ours.put(&old);
        let put = ours.put(&edit.new);
        assert!(
            ours.read() == edit.new,
            "{}: put read back wrong",
            edit.name
        );
        let ours = Ours::new();
        ours.put(&old);
        let in_place = ours.write_in_place(&edit.new, edit.from, edit.to);
        assert!(
            ours.read() == edit.new,
            "{}: in-place write read back wrong",
            edit.name
        );
        let fixed = new_bytes(&old_fixed, &fixed_chunks(&edit.new));
        let cdc = new_bytes(&old_cdc, &cdc_chunks(&edit.new));
        println!(
            "| {} | {} | {} | {} | {} |",
            edit.name,
            mib(put),
            mib(in_place),
            mib(fixed as u64),
            mib(cdc as u64)
        );
    }

    // What finding boundaries costs, beside BLAKE3 over the same bytes (every chunk is
    // hashed for its id anyway) as the baseline.
    println!();
    println!("| one thread, {size_mib} MiB | MiB/s | ratio to BLAKE3 |");
    println!("|---|---:|---:|");
    let baseline = throughput(old.len(), || {
        old.chunks(DEFAULT_CHUNK_SIZE)
            .map(|c| blake3::hash(c).as_bytes()[0] as usize)
            .sum()
    });
    let cdc = throughput(old.len(), || cdc_chunks(&old).len());
    println!("| baseline: BLAKE3 of every chunk | {baseline:.1} | 1.00× |");
    println!(
        "| FastCDC boundaries (fixed ones cost nothing) | {cdc:.1} | {:.2}× |",
        cdc / baseline
    );

    // A small read at a uniformly random offset fetches and opens the chunk that holds
    // it: on average the size-biased mean of the chunk sizes (Σ len² / Σ len).
    println!();
    println!("| a 4 KiB read at a random offset | chunks | mean chunk | fetched on average |");
    println!("|---|---:|---:|---:|");
    for (name, chunks) in [("fixed", &old_fixed), ("FastCDC", &old_cdc)] {
        let total: f64 = chunks.iter().map(|c| c.len() as f64).sum();
        let squares: f64 = chunks.iter().map(|c| (c.len() as f64).powi(2)).sum();
        println!(
            "| {name} | {} | {} KiB | {} KiB |",
            chunks.len(),
            (total / chunks.len() as f64 / 1024.0).round(),
            (squares / total / 1024.0).round()
        );
    }
}
