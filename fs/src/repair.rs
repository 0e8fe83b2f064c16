//! Repair: every item a node holds is checked against the R peers it belongs on, and the
//! copies they lack are sent to them, within a bandwidth budget.
//!
//! A round runs when membership changes (the peers nearest this node, see
//! `dht::Client::membership`; after a short settling delay, at most once per
//! [`Config::membership_gap`]) and periodically; scrubbing and collection only
//! periodically.
//! For every item it holds, a node asks the item's R nearest live peers which of them
//! hold it (`Have`, batched per peer). The nearest holder among those peers and itself is
//! responsible and sends the missing copies, so that holders do not all send the same
//! bytes. Nodes place items by their own routing tables, which disagree under churn; a
//! holder that keeps finding an item short while another is to send sends the copies
//! itself after [`Config::takeover`]. A round also re-reads a slice of the local store
//! against the chunk ids (scrubbing), so a chunk corrupted on disk is dropped and copied
//! back even when nobody reads it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use protocols::block::{Refusal, Request, Response};
use protocols::limits::MAX_HAVE_ITEMS;

use crate::id::{ChunkId, InodeId, VersionId};
use crate::net::Network;
use crate::replica::Refused;

/// How repair runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Time between rounds when nothing changes. Default 60 s.
    pub interval: Duration,
    /// Wait after a membership change before a round. Default 2 s.
    pub settle: Duration,
    /// Least time between two rounds started by membership changes (while nodes join
    /// near it, a node may see one every few seconds). Default 10 s.
    pub membership_gap: Duration,
    /// Bytes per second repair may send. Default 64 MiB/s.
    pub bandwidth: u64,
    /// Chunks re-read against their ids per round. Default 256.
    pub scrub_per_round: usize,
    /// How long an item held away from where it belongs is left alone after a full round
    /// found it needing nothing from this node (its R nodes held it, or one of them holds
    /// it and sends the copies). Placing such an item takes an overlay lookup; at every
    /// round, on every node, those grow with what is stored. Default 10 min.
    pub away_recheck: Duration,
    /// How long an item may stay short while another holder is the one to send before
    /// this node sends the copies itself: this long for the second nearest holder
    /// among the nodes where the item belongs, twice as long for the third, and so on,
    /// and for a holder away from them once those all had their turn. Each node places
    /// items by its own routing table, and under churn those disagree: the holder this
    /// node names may place the item elsewhere, count itself away from it, or name yet
    /// another holder, and never send. Waiting, by rank, keeps holders from all sending
    /// the same bytes when the responsible one is merely busy. Default 2 min (two
    /// intervals).
    pub takeover: Duration,
    /// Collection of chunks no kept version refers to, a batch after every round.
    pub gc: crate::gc::Config,
}

impl Config {
    /// The defaults.
    pub fn new() -> Self {
        Config {
            interval: Duration::from_secs(60),
            settle: Duration::from_secs(2),
            membership_gap: Duration::from_secs(10),
            bandwidth: 64 << 20,
            scrub_per_round: 256,
            away_recheck: Duration::from_secs(600),
            takeover: Duration::from_secs(120),
            gc: crate::gc::Config::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

/// What repair has done, for status and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Rounds finished.
    pub rounds: AtomicU64,
    /// Items held here that, after the last round, still lack copies on some of the
    /// peers they belong on. A copy held away that is left alone while another holder
    /// sends (see [`Config::away_recheck`]) is not counted here meanwhile; the nodes
    /// where it belongs count it.
    pub under_replicated: AtomicU64,
    /// Items checked in the last round.
    pub checked: AtomicU64,
    /// Of the items held away from where they belong, those that lacked copies after
    /// the last full round (the rounds between do not look at them).
    elsewhere_short: AtomicU64,
    /// Copies sent by repair.
    pub copies_sent: AtomicU64,
    /// Items whose copies this node sent after they stayed short for
    /// [`Config::takeover`] while another holder was to send.
    pub taken_over: AtomicU64,
    /// Bytes sent by repair.
    pub bytes_sent: AtomicU64,
    /// Items placed and asked about, every round's and every second asking's together.
    pub surveyed: AtomicU64,
    /// Copies held away from where they belong, dropped once every one of the R nodes
    /// where they belong said it held the item.
    pub handed_off: AtomicU64,
    /// Corrupt chunks found by scrubbing.
    pub scrub_corrupt: AtomicU64,
    /// Collection of unreferenced chunks.
    pub gc: crate::gc::Counters,
}

/// A serializable view of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// Rounds finished.
    pub rounds: u64,
    /// Items still lacking copies after the last round.
    pub under_replicated: u64,
    /// Items checked in the last round.
    pub checked: u64,
    /// Copies sent by repair.
    pub copies_sent: u64,
    /// Items sent after staying short while another holder was to send.
    #[serde(default)]
    pub taken_over: u64,
    /// Bytes sent by repair.
    pub bytes_sent: u64,
    /// Copies held away from where they belong, dropped once the R nodes where they
    /// belong held them.
    pub handed_off: u64,
    /// Corrupt chunks found by scrubbing.
    pub scrub_corrupt: u64,
    /// Unreferenced chunks collected.
    pub collected: u64,
    /// Unreferenced chunks waiting out the grace period.
    pub collect_waiting: u64,
}

impl Counters {
    /// A snapshot.
    pub fn status(&self) -> Status {
        Status {
            rounds: self.rounds.load(Ordering::Relaxed),
            under_replicated: self.under_replicated.load(Ordering::Relaxed),
            checked: self.checked.load(Ordering::Relaxed),
            copies_sent: self.copies_sent.load(Ordering::Relaxed),
            taken_over: self.taken_over.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            handed_off: self.handed_off.load(Ordering::Relaxed),
            scrub_corrupt: self.scrub_corrupt.load(Ordering::Relaxed),
            collected: self.gc.collected.load(Ordering::Relaxed),
            collect_waiting: self.gc.waiting.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Item {
    Chunk(ChunkId),
    Version(InodeId, VersionId),
}

impl Item {
    fn key(&self) -> &[u8; 32] {
        match self {
            Item::Chunk(id) => id.as_bytes(),
            Item::Version(inode, _) => inode.as_bytes(),
        }
    }
}

/// Sends at most `rate` bytes per second, on average over the round.
struct Budget {
    rate: u64,
    started: Instant,
    sent: u64,
}

impl Budget {
    async fn spend(&mut self, bytes: u64) {
        self.sent += bytes;
        let due = Duration::from_secs_f64(self.sent as f64 / self.rate.max(1) as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// What repair carries from one round to the next.
///
/// Items held away from where they belong that a full round found needing nothing from
/// this node: until when they are left alone (see [`Config::away_recheck`]), and the
/// nodes where they belonged then. That holds only while the placement stands: an item
/// is looked at again as soon as one of those nodes is found down.
///
/// Items found short while another holder was to send: since when, and when last (see
/// [`Config::takeover`]).
#[derive(Debug, Default)]
pub struct State {
    quiet: HashMap<Item, Quiet>,
    waiting: HashMap<Item, Waiting>,
}

#[derive(Debug, Clone, Copy)]
struct Waiting {
    since: Instant,
    last: Instant,
}

#[derive(Debug)]
struct Quiet {
    until: Instant,
    /// The nodes where the item belonged.
    targets: Vec<PeerId>,
}

/// Runs repair rounds until the task is dropped.
pub fn spawn(
    network: Arc<Network>,
    membership: tokio::sync::watch::Receiver<u64>,
    config: Config,
    counters: Arc<Counters>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut membership = membership;
        let mut scrub_cursor: Option<ChunkId> = None;
        let mut collector = crate::gc::Collector::new(config.gc.clone());
        let mut state = State::default();
        // Scrubbing and collection run at the interval; repair also after membership
        // changes (once they settled), at most once per gap.
        let now = tokio::time::Instant::now;
        let mut next_full = now() + config.interval;
        let mut last_change: Option<tokio::time::Instant> = None;
        let mut pending: Option<tokio::time::Instant> = None;
        loop {
            let wake = pending.map_or(next_full, |p| p.min(next_full));
            tokio::select! {
                changed = membership.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    membership.borrow_and_update();
                    if pending.is_none() {
                        let gap_over = last_change.map_or(now(), |t| t + config.membership_gap);
                        pending = Some(gap_over.max(now() + config.settle));
                    }
                    continue;
                }
                () = tokio::time::sleep_until(wake) => {}
            }
            if pending.is_some_and(|p| p <= now()) {
                pending = None;
                last_change = Some(now());
            }
            let full = now() >= next_full;
            if full {
                next_full = now() + config.interval;
                scrub_cursor =
                    scrub(&network, scrub_cursor, config.scrub_per_round, &counters).await;
                // Collection first: a chunk found unreferenced is not copied around again.
                if let Err(e) = collector.pass(&network, &counters.gc).await {
                    tracing::warn!(error = %e, "collecting unreferenced chunks failed");
                }
            }
            let skip = |c: &ChunkId| collector.unreferenced(c);
            if let Err(e) = round(&network, &config, &counters, &skip, full, &mut state).await {
                tracing::warn!(error = %e, "repair round failed");
            }
        }
    })
}

/// Re-reads up to `count` chunks after `cursor`; a corrupt one is dropped by the replica.
async fn scrub(
    network: &Network,
    cursor: Option<ChunkId>,
    count: usize,
    counters: &Counters,
) -> Option<ChunkId> {
    let local = network.local().clone();
    let found = tokio::task::spawn_blocking(move || {
        let ids = local
            .store()
            .chunk_ids(cursor.as_ref(), count)
            .unwrap_or_default();
        let mut corrupt = 0u64;
        for id in &ids {
            if matches!(local.get_chunk(id), Err(Refused::Corrupt)) {
                corrupt += 1;
            }
        }
        (ids.last().copied(), corrupt)
    })
    .await;
    match found {
        Ok((last, corrupt)) => {
            counters.scrub_corrupt.fetch_add(corrupt, Ordering::Relaxed);
            last
        }
        Err(_) => None,
    }
}

type Survey = (
    Vec<(Item, Vec<PeerId>)>,
    HashMap<(usize, PeerId), bool>,
    HashSet<PeerId>,
);

/// Where each item belongs, which of those peers hold it, and the peers that failed to
/// answer.
async fn survey(network: &Network, items: &[Item]) -> Result<Survey, String> {
    let r = network.config().replicas;
    let mut placement: Vec<(Item, Vec<PeerId>)> = Vec::with_capacity(items.len());
    for item in items {
        let candidates = network
            .candidates(item.key())
            .await
            .map_err(|e| e.to_string())?;
        placement.push((*item, candidates.into_iter().take(r).collect()));
    }
    let mut asks: HashMap<PeerId, Vec<usize>> = HashMap::new();
    for (i, (_, targets)) in placement.iter().enumerate() {
        for peer in targets {
            if *peer != network.me() {
                asks.entry(*peer).or_default().push(i);
            }
        }
    }
    let mut has: HashMap<(usize, PeerId), bool> = HashMap::new();
    let mut failed = HashSet::new();
    for (peer, indices) in asks {
        for batch in indices.chunks(MAX_HAVE_ITEMS) {
            let mut chunks = Vec::new();
            let mut versions = Vec::new();
            for &i in batch {
                match placement[i].0 {
                    Item::Chunk(id) => chunks.push(id.0),
                    Item::Version(inode, version) => versions.push((inode.0, version.0)),
                }
            }
            let asked = (chunks.len(), versions.len());
            let answer = network
                .request(peer, Request::Have { chunks, versions })
                .await;
            let (mut c, mut v) = match answer {
                Ok(Response::Have {
                    chunks: c,
                    versions: v,
                }) if (c.len(), v.len()) == asked => (c.into_iter(), v.into_iter()),
                other => {
                    tracing::debug!(%peer, answer = ?other.err(), "a peer did not say what it holds");
                    failed.insert(peer);
                    (
                        vec![false; asked.0].into_iter(),
                        vec![false; asked.1].into_iter(),
                    )
                }
            };
            for &i in batch {
                let held = match placement[i].0 {
                    Item::Chunk(_) => c.next(),
                    Item::Version(..) => v.next(),
                };
                has.insert((i, peer), held.unwrap_or(false));
            }
        }
    }
    Ok((placement, has, failed))
}

/// One repair round: over everything this node holds when `full`, else over what it
/// holds where it belongs (see [`Network::at_home`]). Placing an item held elsewhere
/// takes an overlay lookup; a round after every membership change would repeat those
/// lookups for every such item every few seconds, on every node.
///
/// A copy held elsewhere (placed before nearer nodes joined, or cached by a read) is
/// handed off: once each of the R live nodes where the item belongs has said, in this
/// round, that it holds the item, this node drops its copy, as Dynamo's hinted hand-off
/// does. Without that every copy ever made would stay, and be looked up, for good. A
/// version held elsewhere that those nodes refuse as superseded (older than the history
/// they keep of its inode) is dropped too, rather than sent again at every round.
/// Chunks for which `skip` says so are left alone (garbage waiting to be collected).
/// An item held elsewhere that a full round found needing nothing from this node is left
/// alone for [`Config::away_recheck`], and an item short for [`Config::takeover`] while
/// another holder was to send is sent by this node, as `state` remembers.
pub async fn round(
    network: &Network,
    config: &Config,
    counters: &Counters,
    skip: &(dyn Fn(&ChunkId) -> bool + Sync),
    full: bool,
    state: &mut State,
) -> Result<(), String> {
    let mut items = held_items(network).await?;
    items.retain(|item| !matches!(item, Item::Chunk(c) if skip(c)));
    if full && !state.waiting.is_empty() {
        let held: HashSet<&Item> = items.iter().collect();
        state.waiting.retain(|item, _| held.contains(item));
    }
    let home: Vec<bool> = items
        .iter()
        .map(|item| network.at_home(item.key()))
        .collect();
    let now = Instant::now();
    state
        .quiet
        .retain(|_, q| q.until > now && !q.targets.iter().any(|p| network.is_down(p)));
    let (items, home): (Vec<Item>, Vec<bool>) = items
        .into_iter()
        .zip(home)
        .filter(|(item, home)| *home || (full && !state.quiet.contains_key(item)))
        .unzip();
    // Placement and who holds what. The items a peer that did not answer should hold are
    // asked about again (the peer is then marked down, and they are placed around it),
    // twice at most; the others are not placed again.
    let (mut placement, mut has, mut failed) = survey(network, &items).await?;
    counters
        .surveyed
        .fetch_add(items.len() as u64, Ordering::Relaxed);
    let mut silent: HashSet<PeerId> = failed.clone();
    for _ in 0..2 {
        if failed.is_empty() {
            break;
        }
        let again: Vec<usize> = placement
            .iter()
            .enumerate()
            .filter(|(_, (_, targets))| targets.iter().any(|p| failed.contains(p)))
            .map(|(i, _)| i)
            .collect();
        let subset: Vec<Item> = again.iter().map(|&i| placement[i].0).collect();
        counters
            .surveyed
            .fetch_add(subset.len() as u64, Ordering::Relaxed);
        let (placed, held, still) = survey(network, &subset).await?;
        let asked: HashSet<usize> = again.iter().copied().collect();
        has.retain(|(i, _), _| !asked.contains(i));
        for (j, placed) in placed.into_iter().enumerate() {
            placement[again[j]] = placed;
        }
        for ((j, peer), held) in held {
            has.insert((again[j], peer), held);
        }
        silent.extend(still.iter().copied());
        failed = still;
    }
    // A peer that did not answer may have left: what was left quiet around it is
    // looked at again at the next full round.
    if !silent.is_empty() {
        state
            .quiet
            .retain(|_, q| !q.targets.iter().any(|p| silent.contains(p)));
    }
    let mut budget = Budget {
        rate: config.bandwidth,
        started: Instant::now(),
        sent: 0,
    };
    let me = network.me();
    let (mut short, mut short_elsewhere) = (0u64, 0u64);
    let mut count_short = |i: usize| {
        if home[i] {
            short += 1;
        } else {
            short_elsewhere += 1;
        }
    };
    let mut handed = Vec::new();
    let mut quiet = Vec::new();
    for (i, (item, targets)) in placement.iter().enumerate() {
        let holds = |peer: &PeerId| *peer == me || has.get(&(i, *peer)).copied().unwrap_or(false);
        let missing: Vec<PeerId> = targets.iter().filter(|p| !holds(p)).copied().collect();
        // Left alone for a while: held away, and needing nothing from here. Not when the
        // placement names this node (its routing table may not, yet): it may be the
        // holder that sends once a nearer holder leaves. Nor when a peer where it belongs
        // did not answer (counted as lacking it).
        let may_quiet =
            !home[i] && !targets.contains(&me) && !targets.iter().any(|p| failed.contains(p));
        if missing.is_empty() {
            state.waiting.remove(item);
            // Only on what the R others said, never on this node counting itself.
            if !home[i] && targets.len() == network.config().replicas && !targets.contains(&me) {
                handed.push(*item);
            } else if may_quiet {
                tracing::debug!(item = ?item, ?targets, "held away, needs nothing from here");
                quiet.push((*item, targets.clone(), config.away_recheck));
            }
            continue;
        }
        // The nearest holder among the targets sends; this node sends when it is that
        // holder, or when no target holds the item at all, or when the item has stayed
        // short for `takeover` while another holder was to send.
        let responsible = targets.iter().find(|p| holds(p)).is_none_or(|p| *p == me);
        if responsible {
            state.waiting.remove(item);
        } else {
            // Holders nearer than this node (all of them, for a holder away from where
            // the item belongs) have their turn first.
            let ahead = targets
                .iter()
                .take_while(|p| **p != me)
                .filter(|p| holds(p))
                .count();
            let wait = config.takeover.saturating_mul(ahead.max(1) as u32);
            // Only what is known short counts, not a peer that did not answer; and the
            // clock starts again when the item went unseen for longer than its wait and
            // a round (a copy held away is looked at again at its turn, below).
            let known_short = missing.iter().any(|p| !failed.contains(p));
            let unseen_at_most = wait + config.takeover + config.interval;
            let since = match state.waiting.get(item) {
                _ if !known_short => None,
                Some(w) if now.duration_since(w.last) <= unseen_at_most => Some(w.since),
                _ => Some(now),
            };
            if let Some(since) = since {
                state.waiting.insert(*item, Waiting { since, last: now });
            }
            if since.is_none_or(|since| now.duration_since(since) < wait) {
                tracing::debug!(item = ?item, home = home[i], ?targets, ?missing, "short; another holder sends");
                count_short(i);
                if may_quiet {
                    tracing::debug!(item = ?item, ?targets, "held away, another holder sends");
                    // Looked at again at its turn, if that comes sooner.
                    let turn =
                        since.map_or(wait, |since| wait.saturating_sub(now.duration_since(since)));
                    quiet.push((*item, targets.clone(), turn.min(config.away_recheck)));
                }
                continue;
            }
            tracing::debug!(item = ?item, home = home[i], ?targets, ?missing, ?wait, "short while another holder was to send; sending");
            // If this does not mend it either, the next holder's turn comes first.
            state.waiting.insert(
                *item,
                Waiting {
                    since: now,
                    last: now,
                },
            );
        }
        let Some((request, bytes)) = load(network, item).await else {
            continue;
        };
        if !responsible {
            counters.taken_over.fetch_add(1, Ordering::Relaxed);
        }
        let mut sent_all = true;
        let mut superseded = false;
        for peer in missing {
            budget.spend(bytes).await;
            match network.request(peer, request.clone()).await {
                Ok(Response::Stored { .. }) => {
                    counters.copies_sent.fetch_add(1, Ordering::Relaxed);
                    counters.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
                    tracing::debug!(%peer, item = ?item, "repaired a copy");
                }
                // A version older than the history the peer keeps of its inode: newer
                // versions replaced it there, as they will here; nothing is missing.
                Ok(Response::Refused(Refusal::Stale { .. })) => {
                    superseded = true;
                    tracing::debug!(%peer, item = ?item, "a superseded version is not copied");
                }
                other => {
                    sent_all = false;
                    tracing::debug!(%peer, item = ?item, answer = ?other.map(|r| format!("{r:?}").chars().take(80).collect::<String>()), "repair copy not stored");
                }
            }
        }
        if !sent_all {
            tracing::debug!(item = ?item, home = home[i], "short; a copy was not stored");
            count_short(i);
        } else if superseded
            && !home[i]
            && targets.len() == network.config().replicas
            && !targets.contains(&me)
        {
            // Held away from its inode's nodes, which have moved past it: of no use here.
            handed.push(*item);
        }
    }
    let now = Instant::now();
    state
        .quiet
        .extend(quiet.into_iter().filter_map(|(item, targets, wait)| {
            let until = now.checked_add(wait)?;
            Some((item, Quiet { until, targets }))
        }));
    let dropped = hand_off(network, handed).await?;
    counters.handed_off.fetch_add(dropped, Ordering::Relaxed);
    if full {
        counters
            .elsewhere_short
            .store(short_elsewhere, Ordering::Relaxed);
    }
    let short = short + counters.elsewhere_short.load(Ordering::Relaxed);
    counters
        .checked
        .store(placement.len() as u64, Ordering::Relaxed);
    counters.under_replicated.store(short, Ordering::Relaxed);
    counters.rounds.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Drops this node's copies of `items`; how many were dropped.
async fn hand_off(network: &Network, items: Vec<Item>) -> Result<u64, String> {
    if items.is_empty() {
        return Ok(0);
    }
    let local = network.local().clone();
    tokio::task::spawn_blocking(move || {
        let store = local.store();
        let mut dropped = 0;
        for item in items {
            let removed = match item {
                Item::Chunk(id) => store.remove_chunk(&id),
                Item::Version(inode, version) => store.remove_version(&inode, &version),
            }
            .map_err(|e| e.to_string())?;
            if removed {
                tracing::debug!(item = ?item, "handed off a copy held away from where it belongs");
                dropped += 1;
            }
        }
        Ok(dropped)
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn held_items(network: &Network) -> Result<Vec<Item>, String> {
    let local = network.local().clone();
    tokio::task::spawn_blocking(move || {
        let store = local.store();
        let mut items = Vec::new();
        let mut after: Option<ChunkId> = None;
        loop {
            let page = store
                .chunk_ids(after.as_ref(), 4096)
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last().copied() else {
                break;
            };
            items.extend(page.into_iter().map(Item::Chunk));
            after = Some(last);
        }
        let mut after: Option<InodeId> = None;
        loop {
            let page = store
                .inode_ids(after.as_ref(), 4096)
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last().copied() else {
                break;
            };
            for inode in &page {
                for v in store.versions(inode).map_err(|e| e.to_string())? {
                    items.push(Item::Version(*inode, v.id));
                }
            }
            after = Some(last);
        }
        Ok(items)
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn load(network: &Network, item: &Item) -> Option<(Request, u64)> {
    match *item {
        Item::Chunk(id) => match network.local().get_chunk(&id) {
            Ok(Some(data)) => {
                let len = data.len() as u64;
                // A chunk stored without an owner travels as owned by nobody (zero), which
                // no replica ever collects.
                let owner = network
                    .local()
                    .store()
                    .owner(&id)
                    .ok()
                    .flatten()
                    .unwrap_or(crate::store::NO_OWNER);
                Some((
                    Request::PutChunk {
                        id: id.0,
                        owner: owner.0,
                        data,
                    },
                    len,
                ))
            }
            _ => None,
        },
        Item::Version(inode, version) => {
            let stored = network.local().store().versions(&inode).ok()?;
            let v = stored.into_iter().find(|v| v.id == version)?;
            let len = v.signed.len() as u64;
            Some((
                Request::PutVersion {
                    inode: inode.0,
                    signed: v.signed,
                },
                len,
            ))
        }
    }
}
