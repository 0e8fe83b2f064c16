//! Collecting chunks that no kept version refers to any more.
//!
//! Every chunk is stored with the inode it belongs to (its encryption binds it to that
//! inode, so there is exactly one), as the peer that stored it says: a node without keys
//! cannot check the claim, so a chunk offered under two inodes is owned by nobody
//! ([`crate::store::NO_OWNER`]) and never collected. A node collects a chunk it holds only when
//!
//! - the versions of its inode, gathered from every one of the R nodes the inode belongs
//!   on (down or not: one that does not answer means no decision), all leave it out, and
//! - it was found unreferenced like that twice, at least `grace` apart (default 24 h), so
//!   that chunks of a write still under way (stored before its version) are kept.
//!
//! A node walks its whole store once every quarter of `grace` (a sweep, a batch of chunks
//! per repair round), not at every round: reading an inode's versions takes an overlay
//! lookup unless the inode belongs near this node, so looking at every chunk every round
//! costs lookups in proportion to what is stored, on every node, for nothing (a chunk is
//! collected no sooner than `grace` after it was first found unreferenced either way).
//! The chunks a sweep found unreferenced are looked at again at every round (a batch of
//! them, the latest found first) until they go or are referenced (a write under way
//! refers to its chunks once its version is stored; repair leaves a marked chunk alone,
//! so a mark must not outlive that). An unreferenced chunk goes between `grace` and
//! 1.25 × `grace` after it became so, when a sweep takes less than a quarter of `grace`
//! (a store of more than `batch` chunks takes a round per batch).
//!
//! Replicas keep an inode's heads and the versions fewer than
//! [`KEEP_HISTORY`](crate::replica::KEEP_HISTORY) generations below them (at most
//! [`MAX_KEPT`](crate::replica::MAX_KEPT)), so a chunk lives as long as one of those refers
//! to it. A chunk whose owner is
//! unknown or disputed (all zero) is never collected; neither is one whose inode cannot
//! be asked, nor one disputed while its inode was being asked (it is removed only if its
//! owner is still the one asked about).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::id::{ChunkId, InodeId};
use crate::net::Network;

/// How collection runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a chunk must stay unreferenced before it goes. Default 24 h.
    pub grace: Duration,
    /// Chunks looked at per pass. Default 1024.
    pub batch: usize,
}

impl Config {
    /// The defaults.
    pub fn new() -> Self {
        Config {
            grace: Duration::from_secs(24 * 3600),
            batch: 1024,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

/// What collection did.
#[derive(Debug, Default)]
pub struct Counters {
    /// Chunks removed.
    pub collected: AtomicU64,
    /// Chunks looked at (their inode's versions read, or tried).
    pub looked_at: AtomicU64,
    /// Chunks found unreferenced and waiting out the grace period (last pass).
    pub waiting: AtomicU64,
}

/// The collector's memory between passes: where it stopped, and since when each chunk
/// has been seen unreferenced.
#[derive(Debug)]
pub struct Collector {
    config: Config,
    cursor: Option<ChunkId>,
    /// When the sweep under way (or the last one) started.
    sweep_started: Option<Instant>,
    unreferenced_since: HashMap<ChunkId, Instant>,
}

impl Collector {
    /// A collector that has seen nothing yet.
    pub fn new(config: Config) -> Self {
        Collector {
            config,
            cursor: None,
            sweep_started: None,
            unreferenced_since: HashMap::new(),
        }
    }

    /// Whether `chunk` was found unreferenced (and is waiting out the grace period):
    /// repair does not copy such a chunk to replicas that lack it.
    pub fn unreferenced(&self, chunk: &ChunkId) -> bool {
        self.unreferenced_since.contains_key(chunk)
    }

    /// The time between the starts of two sweeps of the whole store.
    fn sweep_every(&self) -> Duration {
        self.config.grace / 4
    }

    /// Looks at the next batch of chunks this node holds (between sweeps, none) and at a
    /// batch of those found unreferenced before, and removes those that have stayed
    /// unreferenced for the grace period.
    pub async fn pass(&mut self, network: &Network, counters: &Counters) -> Result<(), String> {
        let mut sweeping = true;
        if self.cursor.is_none() {
            if self
                .sweep_started
                .is_some_and(|at| at.elapsed() < self.sweep_every())
            {
                sweeping = false;
            } else {
                self.sweep_started = Some(Instant::now());
            }
        }
        // Chunks found unreferenced are looked at again at every pass, between sweeps
        // too: one found so while its write was under way (its chunks are stored before
        // the version that refers to them) must not stay marked, and left alone by
        // repair, until the next sweep. At most a batch of them, the latest found first
        // (a write under way is referred to within a round or two; what stays
        // unreferenced longer is garbage, looked at again by the sweeps).
        let mut suspects: Vec<(Instant, ChunkId)> = self
            .unreferenced_since
            .iter()
            .map(|(chunk, since)| (*since, *chunk))
            .collect();
        if suspects.len() > self.config.batch {
            suspects.select_nth_unstable_by(self.config.batch, |a, b| b.0.cmp(&a.0));
            suspects.truncate(self.config.batch);
        }
        let suspects: Vec<ChunkId> = suspects.into_iter().map(|(_, chunk)| chunk).collect();
        if !sweeping && suspects.is_empty() {
            return Ok(());
        }
        let local = network.local().clone();
        let cursor = self.cursor;
        let batch = self.config.batch;
        let owned = tokio::task::spawn_blocking(move || {
            let store = local.store();
            let ids = if sweeping {
                store
                    .chunk_ids(cursor.as_ref(), batch)
                    .map_err(|e| e.to_string())?
            } else {
                Vec::new()
            };
            let mut owned: BTreeMap<InodeId, Vec<ChunkId>> = BTreeMap::new();
            let mut gone = Vec::new();
            let mut undecided = Vec::new();
            let swept: HashSet<ChunkId> = ids.iter().copied().collect();
            for id in ids
                .iter()
                .chain(suspects.iter().filter(|c| !swept.contains(c)))
            {
                match store.owner(id) {
                    Ok(Some(owner)) if owner != crate::store::NO_OWNER => {
                        owned.entry(owner).or_default().push(*id);
                    }
                    // Owned by nobody (unknown or disputed): never collected, so not
                    // waiting to be either (a mark made under an earlier claim goes).
                    Ok(Some(_)) | Ok(None) => gone.push(*id),
                    // Undecided is not unreferenced: kept, and repaired.
                    Err(e) => {
                        tracing::warn!(chunk = %id, error = %e, "cannot read a chunk's owner");
                        undecided.push(*id);
                    }
                }
            }
            // A short batch ends the sweep.
            let last = (sweeping && ids.len() >= batch)
                .then(|| ids.last().copied())
                .flatten();
            Ok::<_, String>((last, owned, gone, undecided))
        })
        .await
        .map_err(|e| e.to_string())??;
        let (last, owned, gone, undecided) = owned;
        if sweeping {
            self.cursor = last;
        }
        // Dropped meanwhile (handed off, or corrupt and removed by scrubbing).
        for chunk in gone.iter().chain(&undecided) {
            self.unreferenced_since.remove(chunk);
        }
        let looked: usize = owned.values().map(Vec::len).sum();
        counters
            .looked_at
            .fetch_add(looked as u64, Ordering::Relaxed);
        let now = Instant::now();
        for (owner, chunks) in owned {
            let versions = match network.versions_complete(owner).await {
                Ok(v) => v,
                Err(e) => {
                    // Undecided is not unreferenced: these chunks are kept, and repaired.
                    tracing::debug!(inode = %owner, error = %e, "cannot tell whether chunks are still used; keeping them");
                    for chunk in &chunks {
                        self.unreferenced_since.remove(chunk);
                    }
                    continue;
                }
            };
            let referenced: HashSet<ChunkId> = versions
                .iter()
                .flat_map(|v| v.inode.chunks.iter().map(|c| c.id))
                .collect();
            for chunk in chunks {
                if referenced.contains(&chunk) {
                    self.unreferenced_since.remove(&chunk);
                    continue;
                }
                let since = *self.unreferenced_since.entry(chunk).or_insert(now);
                if now.duration_since(since) >= self.config.grace {
                    match network.local().store().remove_chunk_of(&chunk, &owner) {
                        Ok(_) => {
                            self.unreferenced_since.remove(&chunk);
                            counters.collected.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%chunk, inode = %owner, "collected a chunk no kept version refers to");
                        }
                        Err(e) => tracing::warn!(%chunk, error = %e, "cannot collect a chunk"),
                    }
                }
            }
        }
        counters
            .waiting
            .store(self.unreferenced_since.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}
