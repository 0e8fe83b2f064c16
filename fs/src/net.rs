//! The file system over the overlay: `/blocktree/block/1.0.0` served from a node's
//! [`Replica`], and [`Network`], the [`Blocks`] that place every item on the R peers
//! closest to its id.
//!
//! One request and one response per stream. Everything received is checked: requests by
//! the replica (chunks against their ids, inode versions against signature and writecap),
//! responses by the reader (a chunk that does not hash to its id, or a version that does
//! not verify, is counted and the next replica is asked).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use protocols::block::{self, Refusal, Request, Response};
use protocols::limits::{
    MAX_BLOCK_REQUEST_BYTES, MAX_BLOCK_RESPONSE_BYTES, MAX_VERSIONS_PER_INODE,
};
use tokio::sync::Semaphore;

use crate::blocks::{BlockError, Blocks};
use crate::chunk::Sealed;
use crate::id::{ChunkId, InodeId, VersionId};
use crate::inode::Verified;
use crate::replica::{Refused, Replica};

/// The block protocol's name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new(block::PROTOCOL_NAME);

fn overlay_error(e: dht::Error) -> BlockError {
    BlockError::Unavailable {
        needed: 1,
        acks: 0,
        reason: format!("overlay: {e}"),
    }
}

/// Bytes of a versions answer given to signed versions: a replica holding more sends its
/// newest that fit (in [`crate::inode::order`], newest first).
const VERSIONS_BUDGET: usize = MAX_BLOCK_RESPONSE_BYTES - 64 * 1024;
/// What each version is counted for beside its bytes (its encoding's head).
const VERSION_OVERHEAD: usize = 8;

/// Whether a replica may have left versions out of this answer to fit it in one response:
/// it holds as many as one answer carries, or one more version of the largest size would
/// not have fitted. What is left out are the lowest-ordered versions (older history and
/// the losing heads of forks, the conflict copies), so a decision that needs every
/// version (collecting chunks) must not be taken on such an answer.
pub fn may_be_cut(signed: &[Vec<u8>]) -> bool {
    let total: usize = signed.iter().map(|s| s.len() + VERSION_OVERHEAD).sum();
    signed.len() >= MAX_VERSIONS_PER_INODE
        || total + <crate::inode::Signed as protocols::wire::Message>::MAX_BYTES + VERSION_OVERHEAD
            > VERSIONS_BUDGET
}

/// How items are placed and how long the network is waited for.
#[derive(Debug, Clone)]
pub struct Config {
    /// Replicas of every item (R). Default 3.
    pub replicas: usize,
    /// Acknowledgements a write needs (W). Default 2.
    pub write_quorum: usize,
    /// How long one request may take. Default 20 s.
    pub request_timeout: Duration,
    /// Requests served at once. Default 64.
    pub max_inbound: usize,
    /// Requests kept for the other peers. Default 16: a peer that already has this many
    /// served at once gets no more of the last this many slots (it may take the others:
    /// one busy peer alone is served at full speed). A peer that opens streams and sends
    /// nothing cannot shut the others out.
    pub max_inbound_per_peer: usize,
    /// How long a peer that failed is skipped. Default 10 s.
    pub down_for: Duration,
    /// How long the nearest nodes of a key far from this node, found by an overlay
    /// lookup, are reused. Default 10 s.
    pub placement_ttl: Duration,
    /// Whether this node's own writes to its own store (a client here writing items this
    /// node holds) commit without waiting for the disk, durable at [`Blocks::sync`]
    /// (a file system's `fsync`) or [`Network::sync`]. Default: no, every write is durable
    /// when acknowledged. Writes from other nodes are always durable when acknowledged.
    pub defer_own_writes: bool,
}

impl Config {
    /// The defaults: R = 3, W = 2.
    pub fn new() -> Self {
        Config {
            replicas: 3,
            write_quorum: 2,
            request_timeout: Duration::from_secs(20),
            max_inbound: 64,
            max_inbound_per_peer: 16,
            down_for: Duration::from_secs(10),
            placement_ttl: Duration::from_secs(10),
            defer_own_writes: false,
        }
    }

    /// Sets R and W (W is at least 1 and at most R).
    pub fn with_replication(mut self, replicas: usize, write_quorum: usize) -> Self {
        self.replicas = replicas.max(1);
        self.write_quorum = write_quorum.clamp(1, self.replicas);
        self
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

/// What the network side counted.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests served.
    pub served: AtomicU64,
    /// Requests refused as malformed.
    pub malformed: AtomicU64,
    /// Answers from replicas that did not verify (a chunk not matching its id, a forged
    /// version): the replica was skipped.
    pub bad_answers: AtomicU64,
    /// Chunks peers asked this node to store.
    pub peer_chunks: AtomicU64,
    /// Commits that stored them (several chunks per commit when they arrive together).
    pub peer_chunk_commits: AtomicU64,
    /// Overlay lookups of where an item belongs, by what needed them.
    pub lookups: Lookups,
    /// Reads sent to one more replica because those asked were slow to answer (hedged
    /// requests): what a replica that is overloaded or gone silent costs.
    pub hedged: AtomicU64,
    /// Reads of versions that went on without the read quorum (R − W + 2 of the R + 1
    /// nearest), on another replica's versions, when the others stayed silent past a
    /// patience: a version newer than what they returned may have been missed.
    pub short_reads: AtomicU64,
}

/// Overlay lookups of the nodes nearest a key, counted by what needed them: a key near
/// this node is placed from its routing table, and one looked up lately from the cache
/// (see [`Config::placement_ttl`]); neither is counted.
#[derive(Debug, Default)]
pub struct Lookups {
    /// For writes (chunks and versions).
    pub put: AtomicU64,
    /// For reads (a strict read before a write included).
    pub get: AtomicU64,
    /// For repair's placement of the items a node holds.
    pub repair: AtomicU64,
    /// For collection's reads of the versions of the inodes owning the chunks it looks
    /// at.
    pub collect: AtomicU64,
    /// Wider lookups, when none of an item's nearest nodes held it.
    pub wider: AtomicU64,
}

/// What a placement is for, as [`Lookups`] counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Put,
    Get,
    Repair,
    Collect,
}

fn refusal(e: Refused) -> Refusal {
    match e {
        Refused::Mismatch => Refusal::Mismatch,
        Refused::Inode(crate::inode::InodeError::NotAuthorized { .. }) => {
            Refusal::not_authorized(e.to_string())
        }
        Refused::Inode(_) | Refused::TooManyHeads | Refused::SequenceNotRising { .. } => {
            Refusal::invalid(e.to_string())
        }
        Refused::Stale { .. } => Refusal::stale(e.to_string()),
        Refused::Corrupt => Refusal::Corrupt,
        Refused::Store(reason) => Refusal::Internal {
            reason: reason.chars().take(400).collect(),
        },
    }
}

/// Answers one request from the local replica (the store's work runs on the blocking
/// pool); `identity` is this node's wire-encoded public identity.
pub async fn answer(replica: &Replica, identity: &Arc<Vec<u8>>, request: Request) -> Response {
    if matches!(request, Request::Identity) {
        return Response::Identity {
            identity: identity.to_vec(),
        };
    }
    let replica = replica.clone();
    tokio::task::spawn_blocking(move || answer_blocking(&replica, request))
        .await
        .unwrap_or_else(|e| {
            Response::Refused(Refusal::Internal {
                reason: format!("task failed: {e}"),
            })
        })
}

fn answer_blocking(replica: &Replica, request: Request) -> Response {
    let result = match request {
        Request::PutChunk { id, owner, data } => replica
            .put_chunks(&InodeId(owner), &[(ChunkId(id), &data)])
            .map(|new| Response::Stored { new: new > 0 }),
        Request::GetChunk { id } => replica.get_chunk(&ChunkId(id)).map(|found| match found {
            Some(data) => Response::Chunk { data },
            None => Response::NotFound,
        }),
        Request::PutVersion { inode, signed } => replica
            .put_version(&InodeId(inode), &signed)
            .map(|new| Response::Stored { new }),
        Request::GetVersions { inode } => replica.versions(&InodeId(inode)).map(|versions| {
            let mut total = 0usize;
            let signed: Vec<Vec<u8>> = versions
                .into_iter()
                .take(MAX_VERSIONS_PER_INODE)
                .map(|v| v.signed.to_vec())
                .take_while(|s| {
                    total += s.len() + VERSION_OVERHEAD;
                    total <= VERSIONS_BUDGET
                })
                .collect();
            if signed.is_empty() {
                Response::NotFound
            } else {
                Response::Versions { signed }
            }
        }),
        Request::Identity => Ok(Response::NotFound),
        Request::Have { chunks, versions } => (|| {
            let store = replica.store();
            let chunks = chunks
                .iter()
                .map(|id| store.has_chunk(&ChunkId(*id)))
                .collect::<Result<Vec<_>, _>>()?;
            let versions = versions
                .iter()
                .map(|(inode, version)| store.has_version(&InodeId(*inode), &VersionId(*version)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, crate::store::Error>(Response::Have { chunks, versions })
        })()
        .map_err(Refused::from),
    };
    result.unwrap_or_else(|e| Response::Refused(refusal(e)))
}

/// Bytes of chunks from peers stored in one commit at most.
const GROUP_COMMIT_BYTES: usize = 32 << 20;

/// Chunk writes from peers, stored together: while one commit runs, the writes that
/// arrive meanwhile wait and then go in the next, one commit for all of them (group
/// commit). A write alone is stored at once. Each chunk is checked on its own, so a peer
/// offering a bad chunk fails only that one.
#[derive(Debug, Clone)]
struct ChunkWriter {
    queue: tokio::sync::mpsc::Sender<Offer>,
}

/// A chunk a peer asked this node to store, and where its answer goes.
#[derive(Debug)]
struct Offer {
    owner: InodeId,
    id: ChunkId,
    data: Vec<u8>,
    answer: tokio::sync::oneshot::Sender<Response>,
}

impl ChunkWriter {
    /// Starts the writer; it stops when every clone is dropped.
    fn spawn(replica: Replica, counters: Arc<Counters>) -> ChunkWriter {
        let (queue, mut offers) = tokio::sync::mpsc::channel::<Offer>(64);
        tokio::spawn(async move {
            while let Some(first) = offers.recv().await {
                let mut bytes = first.data.len();
                let mut group = vec![first];
                while bytes < GROUP_COMMIT_BYTES
                    && let Ok(next) = offers.try_recv()
                {
                    bytes += next.data.len();
                    group.push(next);
                }
                counters
                    .peer_chunks
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                counters.peer_chunk_commits.fetch_add(1, Ordering::Relaxed);
                let (items, answers): (Vec<_>, Vec<_>) = group
                    .into_iter()
                    .map(|o| ((o.owner, o.id, o.data), o.answer))
                    .unzip();
                let replica = replica.clone();
                let stored = tokio::task::spawn_blocking(move || {
                    let refs: Vec<(InodeId, ChunkId, &[u8])> = items
                        .iter()
                        .map(|(owner, id, data)| (*owner, *id, &data[..]))
                        .collect();
                    replica.put_chunks_each(&refs)
                })
                .await
                .unwrap_or_else(|e| Err(Refused::Store(format!("store task failed: {e}"))));
                match stored {
                    Ok(results) => {
                        for (answer, result) in answers.into_iter().zip(results) {
                            let response = match result {
                                Ok(new) => Response::Stored { new },
                                Err(e) => Response::Refused(refusal(e)),
                            };
                            let _ = answer.send(response);
                        }
                    }
                    Err(e) => {
                        let refusal = refusal(e);
                        for answer in answers {
                            let _ = answer.send(Response::Refused(refusal.clone()));
                        }
                    }
                }
            }
        });
        ChunkWriter { queue }
    }

    /// Stores one chunk with whatever else is waiting; the answer for the peer.
    async fn put(&self, owner: InodeId, id: ChunkId, data: Vec<u8>) -> Response {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let offer = Offer {
            owner,
            id,
            data,
            answer,
        };
        let stopped = || {
            Response::Refused(Refusal::Internal {
                reason: "the chunk writer stopped".into(),
            })
        };
        if self.queue.send(offer).await.is_err() {
            return stopped();
        }
        answered.await.unwrap_or_else(|_| stopped())
    }
}

/// Serves the block protocol from `replica` until the node stops.
pub fn serve(
    replica: Replica,
    identity: Arc<Vec<u8>>,
    mut control: dht::Streams,
    config: &Config,
    counters: Arc<Counters>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let mut incoming = control
        .accept(PROTOCOL)
        .map_err(|e| format!("cannot serve {}: {e}", block::PROTOCOL_NAME))?;
    let permits = Arc::new(Semaphore::new(config.max_inbound));
    let per_peer = config.max_inbound_per_peer.max(1);
    let serving = Arc::new(Mutex::new(HashMap::<PeerId, usize>::new()));
    let timeout = config.request_timeout;
    let writer = ChunkWriter::spawn(replica.clone(), counters.clone());
    Ok(tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            let limit = peer_limit(permits.available_permits(), per_peer);
            let Some(peer_slot) = PeerSlot::take(&serving, peer, limit) else {
                tracing::debug!(%peer, "the peer's block requests at their limit; dropping a stream");
                drop(stream);
                continue;
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "block requests at their limit; dropping a stream");
                drop(stream);
                continue;
            };
            let replica = replica.clone();
            let identity = identity.clone();
            let counters = counters.clone();
            let writer = writer.clone();
            tokio::spawn(async move {
                let served = tokio::time::timeout(
                    timeout,
                    serve_one(&replica, &writer, &identity, stream, &counters),
                )
                .await;
                if !matches!(served, Ok(Ok(()))) {
                    tracing::debug!(%peer, "block request failed or timed out");
                }
                drop((permit, peer_slot));
            });
        }
    }))
}

/// How many requests one peer may have served at once when `available` slots are free:
/// any number while more than `kept` are, else `kept` (a peer with that many under way
/// takes none of the last slots, which stay for the others).
fn peer_limit(available: usize, kept: usize) -> usize {
    if available > kept { usize::MAX } else { kept }
}

/// One of a peer's requests being served, counted in the map it came from until dropped.
struct PeerSlot {
    serving: Arc<Mutex<HashMap<PeerId, usize>>>,
    peer: PeerId,
}

impl PeerSlot {
    /// A slot for `peer` if it has fewer than `limit` requests being served.
    fn take(
        serving: &Arc<Mutex<HashMap<PeerId, usize>>>,
        peer: PeerId,
        limit: usize,
    ) -> Option<PeerSlot> {
        let mut map = serving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = map.entry(peer).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            serving: serving.clone(),
            peer,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self
            .serving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

async fn serve_one(
    replica: &Replica,
    writer: &ChunkWriter,
    identity: &Arc<Vec<u8>>,
    mut stream: libp2p::Stream,
    counters: &Counters,
) -> std::io::Result<()> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await?;
    let response = match block::frame_len(header, MAX_BLOCK_REQUEST_BYTES) {
        Ok(len) => {
            let mut body = vec![0u8; len];
            stream.read_exact(&mut body).await?;
            match block::decode_request(&body) {
                Ok(request) => {
                    counters.served.fetch_add(1, Ordering::Relaxed);
                    match request {
                        Request::PutChunk { id, owner, data } => {
                            writer.put(InodeId(owner), ChunkId(id), data).await
                        }
                        request => answer(replica, identity, request).await,
                    }
                }
                Err(e) => {
                    counters.malformed.fetch_add(1, Ordering::Relaxed);
                    Response::Refused(Refusal::invalid(e.to_string()))
                }
            }
        }
        Err(e) => {
            counters.malformed.fetch_add(1, Ordering::Relaxed);
            Response::Refused(Refusal::invalid(e.to_string()))
        }
    };
    let frame = block::encode_response(&response).unwrap_or_else(|e| {
        block::encode_response(&Response::Refused(Refusal::Internal {
            reason: e.to_string().chars().take(400).collect(),
        }))
        .unwrap_or_default()
    });
    stream.write_all(&frame).await?;
    stream.flush().await?;
    stream.close().await
}

/// How long versions read from replicas are reused: a new version written elsewhere is
/// seen after at most this long (this node's own writes at once).
pub const VERSIONS_TTL: Duration = Duration::from_millis(500);
/// Inodes whose versions are remembered at most.
const CACHED_INODES: usize = 4096;
/// Chunks up to this size are remembered (directories, small files)…
const CACHED_CHUNK_MAX: usize = 64 * 1024;
/// …up to this many bytes in all.
const CACHED_CHUNK_BYTES: usize = 32 << 20;

/// Recently read items. Chunks never change (their id is their hash), so they stay until
/// the byte budget pushes them out, oldest first.
#[derive(Debug, Default)]
struct Cache {
    versions: HashMap<InodeId, (Instant, Vec<Verified>)>,
    /// When each entry of `versions` was made, oldest first (an inode kept again has a
    /// newer entry here too; the older one no longer matches and is skipped): entries are
    /// given up from the front, not by scanning the whole map at each insertion.
    versions_order: std::collections::VecDeque<(Instant, InodeId)>,
    /// Bumped whenever what is remembered of an inode becomes stale (a write of it, a
    /// `forget`), per slot of [`GENERATION_SLOTS`] inodes alike: a fetch that started
    /// before is not remembered when it ends, or it would bring back what it replaced.
    generations: Vec<u64>,
    chunks: HashMap<ChunkId, Vec<u8>>,
    chunk_order: std::collections::VecDeque<ChunkId>,
    chunk_bytes: usize,
}

/// Slots of [`Cache::generations`].
const GENERATION_SLOTS: usize = 1024;

impl Cache {
    fn slot(inode: &InodeId) -> usize {
        usize::from(u16::from_le_bytes([inode.0[0], inode.0[1]])) % GENERATION_SLOTS
    }

    /// The generation of what is remembered of `inode`.
    fn generation(&self, inode: &InodeId) -> u64 {
        self.generations
            .get(Self::slot(inode))
            .copied()
            .unwrap_or(0)
    }

    /// Forgets the versions of `inode`, and that fetches under way may remember them.
    fn invalidate(&mut self, inode: &InodeId) {
        self.versions.remove(inode);
        if self.generations.is_empty() {
            self.generations = vec![0; GENERATION_SLOTS];
        }
        if let Some(g) = self.generations.get_mut(Self::slot(inode)) {
            *g += 1;
        }
    }

    /// Forgets the versions of every inode (new revocation lists), and that fetches
    /// under way may remember them.
    fn invalidate_all(&mut self) {
        self.versions.clear();
        self.versions_order.clear();
        if self.generations.is_empty() {
            self.generations = vec![0; GENERATION_SLOTS];
        }
        for g in &mut self.generations {
            *g += 1;
        }
    }

    fn versions(&self, inode: &InodeId) -> Option<Vec<Verified>> {
        let (at, versions) = self.versions.get(inode)?;
        (at.elapsed() < VERSIONS_TTL).then(|| versions.clone())
    }

    fn keep_versions(&mut self, inode: InodeId, versions: &[Verified]) {
        let now = Instant::now();
        // What has expired, then (when still full) the oldest.
        while let Some(&(at, old)) = self.versions_order.front()
            && (now.duration_since(at) >= VERSIONS_TTL || self.versions.len() >= CACHED_INODES)
        {
            self.versions_order.pop_front();
            if self.versions.get(&old).is_some_and(|(made, _)| *made == at) {
                self.versions.remove(&old);
            }
        }
        self.versions.insert(inode, (now, versions.to_vec()));
        self.versions_order.push_back((now, inode));
    }

    fn keep_chunk(&mut self, id: ChunkId, bytes: &[u8]) {
        if bytes.len() > CACHED_CHUNK_MAX || self.chunks.contains_key(&id) {
            return;
        }
        while self.chunk_bytes + bytes.len() > CACHED_CHUNK_BYTES {
            let Some(old) = self.chunk_order.pop_front() else {
                break;
            };
            if let Some(b) = self.chunks.remove(&old) {
                self.chunk_bytes -= b.len();
            }
        }
        self.chunk_bytes += bytes.len();
        self.chunks.insert(id, bytes.to_vec());
        self.chunk_order.push_back(id);
    }
}

/// Fetches an inode's versions with `fetch` and remembers them, unless what is
/// remembered of the inode went stale while the fetch was under way (see
/// [`Cache::generations`]).
async fn remember_fetched(
    cache: &Mutex<Cache>,
    inode: InodeId,
    fetch: impl Future<Output = Result<Vec<Verified>, BlockError>>,
) -> Result<Vec<Verified>, BlockError> {
    let generation = match cache.lock() {
        Ok(cache) => cache.generation(&inode),
        Err(_) => 0,
    };
    let versions = fetch.await?;
    if let Ok(mut cache) = cache.lock()
        && cache.generation(&inode) == generation
    {
        cache.keep_versions(inode, &versions);
    }
    Ok(versions)
}

/// Runs `write`, a write of a version of `inode`, with what is remembered of the inode
/// forgotten before and after it. Before: nothing older than the write is read from
/// here once it began. After: a fetch that began while the write was under way may have
/// found the replicas without it (this node's own store takes a write on a blocking
/// thread, and answers reads at once meanwhile), and what it remembered would have hidden
/// the write for [`VERSIONS_TTL`] after it returned (a directory just made was not found
/// in its parent, and `git clone` on a mount failed with it).
async fn forget_around<T>(
    cache: &Mutex<Cache>,
    inode: &InodeId,
    write: impl Future<Output = T>,
) -> T {
    /// Forgets the inode when dropped: after the write, or when the write is dropped
    /// (a timeout), since this node's store may take it all the same.
    struct Forget<'a>(&'a Mutex<Cache>, &'a InodeId);
    impl Drop for Forget<'_> {
        fn drop(&mut self) {
            if let Ok(mut cache) = self.0.lock() {
                cache.invalidate(self.1);
            }
        }
    }
    drop(Forget(cache, inode));
    let _after = Forget(cache, inode);
    write.await
}

/// Keys whose looked-up nearest nodes are remembered at most.
const CACHED_PLACEMENTS: usize = 4096;

/// Nearest nodes of keys far from this node, as overlay lookups found them.
#[derive(Debug, Default)]
struct Placements(Mutex<HashMap<[u8; 32], Placement>>);

/// When a key's nearest nodes were looked up, and who they were.
type Placement = (Instant, Vec<PeerId>);

impl Placements {
    fn get(&self, key: &[u8; 32], ttl: Duration) -> Option<Vec<PeerId>> {
        let map = self.0.lock().ok()?;
        let (at, peers) = map.get(key)?;
        (at.elapsed() < ttl).then(|| peers.clone())
    }

    fn keep(&self, key: [u8; 32], peers: &[PeerId], ttl: Duration) {
        let Ok(mut map) = self.0.lock() else {
            return;
        };
        if map.len() >= CACHED_PLACEMENTS {
            map.retain(|_, (at, _)| at.elapsed() < ttl);
            if map.len() >= CACHED_PLACEMENTS {
                map.clear();
            }
        }
        map.insert(key, (Instant::now(), peers.to_vec()));
    }
}

/// Each further hedge of one read waits twice as long as the one before, up to this many
/// doublings: replicas that are merely slow are not all asked for the same bytes at once.
const HEDGE_DOUBLINGS: u32 = 4;
/// Round trips remembered for [`RoundTrips::hedge_after`].
const ROUND_TRIPS_KEPT: usize = 128;
/// Bounds of the wait before a read asks one more replica: never sooner (a hedge doubles
/// a read's load, so only the slowest tenth are hedged)…
const HEDGE_MIN: Duration = Duration::from_millis(50);
/// …and never later, however slow the last answers were.
const HEDGE_MAX: Duration = Duration::from_secs(1);
/// The wait before the first round trips are known.
const HEDGE_FIRST: Duration = Duration::from_millis(250);
/// A read of versions waits this many hedge delays for the read quorum once a replica
/// returned versions, and at least [`PATIENCE_MIN`].
const PATIENCE_HEDGES: u32 = 4;
const PATIENCE_MIN: Duration = Duration::from_millis(500);

/// The round trips of this node's last answered requests (from the wait for a turn to
/// the answer), chunks apart from the small requests (a chunk's bytes take their time):
/// how long to wait before a request also goes to the next replica ("The Tail at Scale":
/// hedge after about the 90th percentile), instead of a whole request timeout.
#[derive(Debug, Default)]
struct RoundTrips {
    chunks: Mutex<std::collections::VecDeque<Duration>>,
    small: Mutex<std::collections::VecDeque<Duration>>,
}

/// Which of [`RoundTrips`]' rings a request counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Size {
    /// A chunk's bytes go one way.
    Chunk,
    /// Versions, presence, identity.
    Small,
}

impl Size {
    fn of(request: &Request) -> Size {
        match request {
            Request::PutChunk { .. } | Request::GetChunk { .. } => Size::Chunk,
            _ => Size::Small,
        }
    }
}

impl RoundTrips {
    fn ring(&self, size: Size) -> &Mutex<std::collections::VecDeque<Duration>> {
        match size {
            Size::Chunk => &self.chunks,
            Size::Small => &self.small,
        }
    }

    fn record(&self, size: Size, took: Duration) {
        if let Ok(mut kept) = self.ring(size).lock() {
            if kept.len() >= ROUND_TRIPS_KEPT {
                kept.pop_front();
            }
            kept.push_back(took);
        }
    }

    /// The 90th percentile of the kept round trips of requests of `size`, within
    /// [`HEDGE_MIN`] and [`HEDGE_MAX`]; [`HEDGE_FIRST`] before any.
    fn hedge_after(&self, size: Size) -> Duration {
        let Ok(kept) = self.ring(size).lock() else {
            return HEDGE_FIRST;
        };
        if kept.is_empty() {
            return HEDGE_FIRST;
        }
        let mut sorted: Vec<Duration> = kept.iter().copied().collect();
        let at = (sorted.len() * 9 / 10).min(sorted.len() - 1);
        let (_, p90, _) = sorted.select_nth_unstable(at);
        (*p90).clamp(HEDGE_MIN, HEDGE_MAX)
    }

    /// How long a read of versions that has some waits for the read quorum, and a write
    /// that has W acknowledgements for the rest.
    fn patience(&self, size: Size) -> Duration {
        (self.hedge_after(size) * PATIENCE_HEDGES).max(PATIENCE_MIN)
    }
}

/// Attempts of one request before the peer is skipped for a while.
const EXCHANGE_ATTEMPTS: u32 = 4;
/// Requests to one peer in flight at once (each is a stream).
const PER_PEER_IN_FLIGHT: usize = 4;

/// Why one request to one peer failed.
#[derive(Debug)]
enum Failure {
    /// The peer could not be reached or did not answer in time.
    Unreachable(String),
    /// The peer answered with a refusal.
    Refused(Refusal),
}

/// The overlay as [`Blocks`]: every item on the R peers nearest its id (this node among
/// them when it is near), writes acknowledged by W of them.
#[derive(Debug)]
pub struct Network {
    per_peer: Mutex<HashMap<PeerId, Arc<Semaphore>>>,
    local: Replica,
    /// The replica this node's own requests go to: `local`, deferred if so configured.
    own: Replica,
    verified: crate::inode::VerifiedCache,
    /// The generation of the local replica's revocation lists `verified` and `cache`
    /// were filled under.
    checked_at: AtomicU64,
    cache: Mutex<Cache>,
    identity: Arc<Vec<u8>>,
    me: PeerId,
    dht: dht::Client,
    config: Config,
    down: Mutex<HashMap<PeerId, Instant>>,
    placements: Placements,
    round_trips: RoundTrips,
    counters: Arc<Counters>,
}

impl Network {
    /// The network side of a node: `local` is its own replica, `identity` its
    /// wire-encoded public identity.
    pub fn new(
        local: Replica,
        identity: Arc<Vec<u8>>,
        me: PeerId,
        dht: dht::Client,
        config: Config,
        counters: Arc<Counters>,
    ) -> Self {
        let own = if config.defer_own_writes {
            local.deferred()
        } else {
            local.clone()
        };
        Network {
            per_peer: Mutex::default(),
            own,
            local,
            verified: crate::inode::VerifiedCache::default(),
            checked_at: AtomicU64::new(0),
            cache: Mutex::default(),
            identity,
            me,
            dht,
            config,
            down: Mutex::default(),
            placements: Placements::default(),
            round_trips: RoundTrips::default(),
            counters,
        }
    }

    /// Forgets versions checked under older revocation lists than those in force.
    fn refresh(&self) {
        // The replica's cache first: versions found in it are taken as checked.
        self.local.refresh();
        let generation = self.local.revocations().generation();
        if self.checked_at.swap(generation, Ordering::AcqRel) != generation {
            self.verified.clear();
            if let Ok(mut cache) = self.cache.lock() {
                cache.invalidate_all();
            }
        }
    }

    /// The node's own replica.
    pub fn local(&self) -> &Replica {
        &self.local
    }

    /// Makes every write this node's store acknowledged durable (one commit if deferred
    /// writes wait for one; see [`Config::defer_own_writes`]).
    pub async fn sync(&self) -> Result<(), BlockError> {
        Blocks::sync(&self.local).await
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// This node's PeerId.
    pub fn me(&self) -> PeerId {
        self.me
    }

    /// Whether `peer` failed to answer lately (it is skipped for [`Config::down_for`]).
    pub fn is_down(&self, peer: &PeerId) -> bool {
        let Ok(mut down) = self.down.lock() else {
            return false;
        };
        match down.get(peer) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                down.remove(peer);
                false
            }
            None => false,
        }
    }

    fn mark_down(&self, peer: PeerId) {
        tracing::debug!(%peer, "peer did not answer; skipping it for a while");
        if let Ok(mut down) = self.down.lock() {
            down.insert(peer, Instant::now() + self.config.down_for);
        }
    }

    /// Peers nearest to `key` that are not known to be down, nearest first; the first
    /// R are where the item belongs.
    /// Repair's placement (counted as such in [`Lookups::repair`]).
    pub async fn candidates(&self, key: &[u8; 32]) -> Result<Vec<PeerId>, BlockError> {
        Ok(self.placement(key, Why::Repair).await?.1)
    }

    /// The number of nodes known near `key` (this one included, down or not), and
    /// [`Network::candidates`]. A write needs W acknowledgements, or as many as there are
    /// nodes when the overlay is smaller than W; peers being down does not lower it.
    ///
    /// The local routing table knows a key's nearest nodes when the key is near this node
    /// (Kademlia keeps every node of its own neighbourhood) or when it holds fewer peers
    /// than asked for (a small overlay, all known); otherwise an iterative lookup asks
    /// the overlay, as a Kademlia PUT does, and its answer is kept for
    /// [`Config::placement_ttl`].
    async fn placement(
        &self,
        key: &[u8; 32],
        why: Why,
    ) -> Result<(usize, Vec<PeerId>), BlockError> {
        let near = self
            .nearest(key, self.config.replicas + BEYOND_R, why)
            .await?;
        let known = near.len();
        let live = near
            .into_iter()
            .filter(|p| *p == self.me || !self.is_down(p))
            .collect();
        Ok((known, live))
    }

    /// The `wanted` nodes nearest to `key` (this one included), down or not, nearest
    /// first: from the routing table when it knows, else from an overlay lookup (see
    /// [`Network::placement`]).
    async fn nearest(
        &self,
        key: &[u8; 32],
        wanted: usize,
        why: Why,
    ) -> Result<Vec<PeerId>, BlockError> {
        let (local, known) = self.nearest_known(key, wanted);
        let near: Vec<PeerId> = if known {
            local
        } else if let Some(found) = self.placements.get(key, self.config.placement_ttl) {
            found
        } else {
            let lookups = &self.counters.lookups;
            let counter = match why {
                Why::Put => &lookups.put,
                Why::Get => &lookups.get,
                Why::Repair => &lookups.repair,
                Why::Collect => &lookups.collect,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let found: Vec<PeerId> = self
                .dht
                .look_up_closest(key.to_vec(), wanted)
                .await
                .map_err(overlay_error)?
                .into_iter()
                .map(|c| c.peer)
                .collect();
            self.placements
                .keep(*key, &found, self.config.placement_ttl);
            found
        };
        Ok(near)
    }

    /// The `wanted` nodes nearest to `key` in the routing table, and whether the table
    /// knows them: the key is near this node (among the R nearest; Kademlia keeps every
    /// node of its own neighbourhood) or the table holds fewer peers than asked for.
    fn nearest_known(&self, key: &[u8; 32], wanted: usize) -> (Vec<PeerId>, bool) {
        let local = self.dht.closest_known(key, wanted);
        let near_me = local
            .iter()
            .take(self.config.replicas)
            .any(|c| c.peer == self.me);
        let known = near_me || local.len() < wanted;
        (local.into_iter().map(|c| c.peer).collect(), known)
    }

    /// Whether this node is, by its own routing table, among the R where `key` belongs:
    /// what it holds there it looks after at every membership change; what it holds
    /// elsewhere (a copy placed before nodes nearer to the key joined) takes a lookup
    /// to place, and is looked after at the repair interval.
    pub fn at_home(&self, key: &[u8; 32]) -> bool {
        let (local, _) = self.nearest_known(key, self.config.replicas);
        local.contains(&self.me)
    }

    /// Sends one request to `peer` (answered locally for this node).
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response, String> {
        match self.exchange(peer, request).await {
            Ok(r) => Ok(r),
            Err(Failure::Refused(r)) => Ok(Response::Refused(r)),
            Err(Failure::Unreachable(e)) => Err(e),
        }
    }

    async fn exchange(&self, peer: PeerId, request: Request) -> Result<Response, Failure> {
        if peer == self.me {
            return self.answer_here(request).await;
        }
        let frame = block::encode_request(&request)
            .map_err(|e| Failure::Refused(Refusal::invalid(e.to_string())))?;
        self.exchange_frame(peer, &frame, Size::of(&request)).await
    }

    /// [`Network::exchange`] of a request this node answers itself.
    async fn answer_here(&self, request: Request) -> Result<Response, Failure> {
        // Small reads of this node's own store are answered in place: a hop to the
        // blocking pool and back costs more than the read (a stat makes several).
        let answered = match request {
            Request::GetVersions { .. } | Request::Have { .. } => {
                answer_blocking(&self.own, request)
            }
            request => answer(&self.own, &self.identity, request).await,
        };
        match answered {
            Response::Refused(r) => Err(Failure::Refused(r)),
            other => Ok(other),
        }
    }

    /// [`Network::exchange`] of a request encoded already (`frame`, a request of `size`),
    /// with a peer other than this node.
    async fn exchange_frame(
        &self,
        peer: PeerId,
        frame: &[u8],
        size: Size,
    ) -> Result<Response, Failure> {
        let asked = Instant::now();
        // The wait for a turn is bounded too (so a request may take up to twice the
        // request timeout): behind requests that a silent peer holds, it would otherwise
        // last as long as all of theirs.
        let Ok(permit) = tokio::time::timeout(
            self.config.request_timeout,
            self.in_flight(peer).acquire_owned(),
        )
        .await
        else {
            return Err(Failure::Unreachable(format!(
                "{PER_PEER_IN_FLIGHT} requests to it unanswered"
            )));
        };
        let mut attempt = 0u32;
        let result = loop {
            attempt += 1;
            match tokio::time::timeout(self.config.request_timeout, self.once(peer, frame)).await {
                Ok(Ok(Response::Refused(r))) => break Err(Failure::Refused(r)),
                Ok(Ok(response)) => {
                    self.round_trips.record(size, asked.elapsed());
                    break Ok(response);
                }
                // A stream can be dropped unread when the peer's accept queue is full
                // (libp2p-stream keeps one slot), or reset: try again before giving up.
                Ok(Err(e)) if attempt < EXCHANGE_ATTEMPTS => {
                    tracing::debug!(%peer, attempt, error = %e, "block request failed; trying again");
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
                Ok(Err(e)) => {
                    self.mark_down(peer);
                    break Err(Failure::Unreachable(e));
                }
                Err(_) => {
                    self.mark_down(peer);
                    break Err(Failure::Unreachable("timed out".into()));
                }
            }
        };
        drop(permit);
        result
    }

    /// The requests to `peer` that may be in flight at once.
    fn in_flight(&self, peer: PeerId) -> Arc<Semaphore> {
        let Ok(mut limits) = self.per_peer.lock() else {
            return Arc::new(Semaphore::new(PER_PEER_IN_FLIGHT));
        };
        if limits.len() > 4096 {
            limits.retain(|_, s| s.available_permits() < PER_PEER_IN_FLIGHT);
        }
        limits
            .entry(peer)
            .or_insert_with(|| Arc::new(Semaphore::new(PER_PEER_IN_FLIGHT)))
            .clone()
    }

    /// One request on a new stream.
    async fn once(&self, peer: PeerId, frame: &[u8]) -> Result<Response, String> {
        let mut control = self.dht.streams();
        let mut stream = control
            .open_stream(peer, PROTOCOL)
            .await
            .map_err(|e| format!("cannot open a stream: {e}"))?;
        stream.write_all(frame).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let mut header = [0u8; 4];
        stream
            .read_exact(&mut header)
            .await
            .map_err(|e| e.to_string())?;
        let len = block::frame_len(header, MAX_BLOCK_RESPONSE_BYTES).map_err(|e| e.to_string())?;
        let mut body = vec![0u8; len];
        stream
            .read_exact(&mut body)
            .await
            .map_err(|e| e.to_string())?;
        block::decode_response(&body).map_err(|e| e.to_string())
    }

    /// Stores one item on the R nearest peers that answer; `Ok` with the acks when at
    /// least W acknowledged.
    /// `stored_here`: this node stored it already and counts as one acknowledgement.
    async fn put_item(
        &self,
        key: &[u8; 32],
        request: Request,
        stored_here: bool,
    ) -> Result<usize, BlockError> {
        let frame = block::encode_request(&request)
            .map_err(|e| BlockError::Refused(Refusal::invalid(e.to_string()).to_string()))?;
        self.put_frame(key, &frame, Some(&request), stored_here)
            .await
    }

    /// [`Network::put_item`] of a request encoded already (`frame`; `request` itself, if
    /// kept, for this node to answer where it is among the replicas): every replica is
    /// sent the same bytes.
    async fn put_frame(
        &self,
        key: &[u8; 32],
        frame: &[u8],
        request: Option<&Request>,
        stored_here: bool,
    ) -> Result<usize, BlockError> {
        let size = request.map_or(Size::Chunk, Size::of);
        let (known, mut candidates) = self.placement(key, Why::Put).await?;
        if stored_here {
            candidates.retain(|p| *p != self.me);
        }
        let r = self.config.replicas;
        let needed = self.config.write_quorum.min(known).max(1);
        let mut acks = usize::from(stored_here);
        let mut errors = Vec::new();
        let mut refusals = 0usize;
        let mut next = 0usize;
        // Once W acknowledged, the others of a wave get [`RoundTrips::patience`] more: a
        // silent replica does not hold a write for a whole request timeout (repair adds
        // the copy it did not take).
        let mut until: Option<tokio::time::Instant> = None;
        // Nodes beyond the R nearest stand in for silent ones only, not for one that
        // refused (it holds the item; a stand-in has no history of it).
        'waves: while acks + refusals < r && next < candidates.len() {
            // A wave that would be dropped before it could be answered is not sent.
            if let Some(at) = until
                && at.saturating_duration_since(tokio::time::Instant::now())
                    < self.round_trips.hedge_after(size)
            {
                break;
            }
            let wave: Vec<PeerId> =
                candidates[next..(next + r - acks - refusals).min(candidates.len())].to_vec();
            next += wave.len();
            let mut pending: futures::stream::FuturesUnordered<_> = wave
                .iter()
                .map(|peer| async move {
                    let answered = if *peer == self.me {
                        // This node: answered here, from the request or else from the
                        // frame (a chunk this node stores itself is not sent here; one
                        // placed elsewhere comes here only when nearer replicas fail).
                        let request = match request {
                            Some(request) => Ok(request.clone()),
                            None => block::decode_request(frame.get(4..).unwrap_or_default()),
                        };
                        match request {
                            Ok(request) => self.answer_here(request).await,
                            Err(e) => Err(Failure::Refused(Refusal::invalid(e.to_string()))),
                        }
                    } else {
                        self.exchange_frame(*peer, frame, size).await
                    };
                    (*peer, answered)
                })
                .collect();
            loop {
                let answered = match until {
                    None => pending.next().await,
                    Some(at) => match tokio::time::timeout_at(at, pending.next()).await {
                        Ok(answered) => answered,
                        Err(_) => break 'waves,
                    },
                };
                let Some((peer, result)) = answered else {
                    break;
                };
                match result {
                    Ok(Response::Stored { .. }) => acks += 1,
                    Ok(other) => errors.push(format!("{peer}: unexpected answer {}", kind(&other))),
                    // A refusal is about the item, not the peer: every replica checks the
                    // same rules. Final from this node, or once so many replicas refused
                    // that W of the R could not take it; one replica alone (a hostile one,
                    // or one whose view is ahead or behind the others') does not fail a
                    // write the others take.
                    Err(Failure::Refused(refusal))
                        if !matches!(
                            refusal,
                            Refusal::Busy | Refusal::Full | Refusal::Internal { .. }
                        ) =>
                    {
                        refusals += 1;
                        // This node's own replica refusing is final whenever it answers:
                        // reads here take the local copy first.
                        if peer == self.me
                            || (acks < needed && refusals > r.min(known).saturating_sub(needed))
                        {
                            return Err(BlockError::Refused(refusal.to_string()));
                        }
                        errors.push(format!("{peer}: {refusal}"));
                    }
                    Err(Failure::Refused(refusal)) => errors.push(format!("{peer}: {refusal}")),
                    Err(Failure::Unreachable(e)) => errors.push(format!("{peer}: {e}")),
                }
                if acks >= needed && until.is_none() {
                    until = Some(tokio::time::Instant::now() + self.round_trips.patience(size));
                }
            }
        }
        if acks >= needed {
            if acks < r {
                tracing::debug!(
                    acks,
                    replicas = r,
                    "stored on fewer replicas than wanted; repair will add copies"
                );
            }
            Ok(acks)
        } else {
            Err(BlockError::Unavailable {
                needed,
                acks,
                reason: errors.join("; "),
            })
        }
    }
}

/// Nodes a read asks, at most, when none of the nearest holds an item: Kademlia's k.
const WIDER_READ: usize = 20;

/// Candidates for an item beyond its R nearest: where writes go when some of those fail,
/// and where reads look next. A read looks farther out ([`Network::wider`]) only when it
/// had this many: fewer means every node known was asked.
const BEYOND_R: usize = 4;

fn kind(response: &Response) -> &'static str {
    match response {
        Response::Stored { .. } => "stored",
        Response::Chunk { .. } => "chunk",
        Response::Versions { .. } => "versions",
        Response::NotFound => "not found",
        Response::Have { .. } => "have",
        Response::Refused(_) => "refused",
        Response::Identity { .. } => "identity",
    }
}

impl Blocks for Network {
    async fn put_chunks(&self, owner: InodeId, chunks: Vec<Sealed>) -> Result<(), BlockError> {
        // Chunks this node is a replica of go to its store in one transaction (deferred
        // if its own writes are; see `Config::defer_own_writes`).
        let mut local = Vec::new();
        let mut remote = Vec::new();
        for chunk in chunks {
            let (_, candidates) = self.placement(chunk.id().as_bytes(), Why::Put).await?;
            if candidates
                .iter()
                .take(self.config.replicas)
                .any(|p| *p == self.me)
            {
                local.push(chunk);
            } else {
                remote.push(chunk);
            }
        }
        // A chunk sent is encoded once, for every replica it goes to (it was copied for
        // each); this node's own copy goes to its store from the chunk itself.
        let encode = |chunk: &Sealed| {
            let key = *chunk.id().as_bytes();
            block::encode_put_chunk(&key, &owner.0, chunk.bytes())
                .map(|frame| (key, frame))
                .map_err(|e| BlockError::Refused(Refusal::invalid(e.to_string()).to_string()))
        };
        let mut sends = Vec::with_capacity(local.len() + remote.len());
        if self.config.replicas > 1 {
            for chunk in &local {
                let (key, frame) = encode(chunk)?;
                sends.push((key, frame, true));
            }
        }
        for chunk in remote {
            let (key, frame) = encode(&chunk)?;
            sends.push((key, frame, false));
        }
        if !local.is_empty() {
            Blocks::put_chunks(&self.own, owner, local).await?;
        }
        let results: Vec<Result<usize, BlockError>> = futures::stream::iter(sends)
            .map(|(key, frame, stored_here)| {
                async move { self.put_frame(&key, &frame, None, stored_here).await }.boxed()
            })
            .buffer_unordered(8)
            .collect()
            .await;
        results.into_iter().try_for_each(|r| r.map(|_| ()))
    }

    async fn get_chunk(&self, id: ChunkId) -> Result<Vec<u8>, BlockError> {
        if let Ok(cache) = self.cache.lock()
            && let Some(bytes) = cache.chunks.get(&id)
        {
            return Ok(bytes.clone());
        }
        // What this node stores itself is read from its store again (a copy in the cache
        // would cost a copy of the bytes and buy nothing).
        if let Some(bytes) = self.local_chunk(&id) {
            return Ok(bytes);
        }
        let found = self.fetch_chunk(id).await?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.keep_chunk(id, &found);
        }
        Ok(found)
    }

    fn local_chunk_unchecked(&self, id: &ChunkId) -> Option<Vec<u8>> {
        self.local.get_chunk_unchecked(id).ok().flatten()
    }

    async fn put_version(&self, inode: InodeId, signed: Vec<u8>) -> Result<(), BlockError> {
        // Whatever was remembered of this inode is older than what is written now.
        forget_around(
            &self.cache,
            &inode,
            self.put_version_uncached(inode, signed),
        )
        .await
    }

    async fn get_versions_strict(&self, inode: InodeId) -> Result<Vec<Verified>, BlockError> {
        self.versions_strict(inode).await
    }

    async fn sync(&self) -> Result<(), BlockError> {
        Network::sync(self).await
    }

    fn revocations(&self) -> keys::SharedRevocations {
        self.local.revocations().clone()
    }

    fn forget(&self, inode: InodeId) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.invalidate(&inode);
        }
    }

    async fn get_versions(&self, inode: InodeId) -> Result<Vec<Verified>, BlockError> {
        self.refresh();
        if let Some(versions) = self.cache.lock().ok().and_then(|c| c.versions(&inode)) {
            return Ok(versions);
        }
        remember_fetched(&self.cache, inode, self.versions_from(inode, 1, false)).await
    }

    async fn get_versions_expected(&self, inode: InodeId) -> Result<Vec<Verified>, BlockError> {
        let versions = self.get_versions(inode).await?;
        if !versions.is_empty() {
            return Ok(versions);
        }
        remember_fetched(&self.cache, inode, self.versions_from(inode, 1, true)).await
    }
}

impl Network {
    /// See [`Blocks::get_versions_strict`]: the R + 4 nodes nearest the inode (from the
    /// routing table, down or not, or an overlay lookup where the table cannot know) must
    /// all answer.
    pub async fn versions_strict(&self, inode: InodeId) -> Result<Vec<Verified>, BlockError> {
        self.versions_strict_gathered(inode, Why::Get)
            .await
            .map(|(found, _)| found)
    }

    /// [`Network::versions_strict`], refused unless every answer was whole (see
    /// [`may_be_cut`]): what collection decides on.
    pub async fn versions_complete(&self, inode: InodeId) -> Result<Vec<Verified>, BlockError> {
        match self.versions_strict_gathered(inode, Why::Collect).await? {
            (found, false) => Ok(found),
            (found, true) => Err(BlockError::Unavailable {
                needed: 1,
                acks: 0,
                reason: format!(
                    "a replica's answer of {} versions may leave some out to fit",
                    found.len()
                ),
            }),
        }
    }

    /// The versions the R + 4 nearest hold, and whether any answer may have been cut.
    async fn versions_strict_gathered(
        &self,
        inode: InodeId,
        why: Why,
    ) -> Result<(Vec<Verified>, bool), BlockError> {
        // Not only the R nearest: after churn a version may sit a little farther out until
        // repair moves it, and a wrong "nothing there" here creates a second root or
        // collects a chunk still in use.
        let mut near = self
            .nearest(inode.as_bytes(), self.config.replicas + BEYOND_R, why)
            .await?;
        near.truncate(self.config.replicas + BEYOND_R);
        // A node known to be down cannot answer: no decision, at once.
        if let Some(down) = near.iter().find(|p| **p != self.me && self.is_down(p)) {
            return Err(BlockError::Unavailable {
                needed: near.len(),
                acks: 0,
                reason: format!("{down} is down"),
            });
        }
        let answers = futures::future::join_all(
            near.iter()
                .map(|p| self.exchange(*p, Request::GetVersions { inode: inode.0 })),
        )
        .await;
        let mut found: BTreeMap<VersionId, Verified> = BTreeMap::new();
        let mut cut = false;
        for (candidate, answer) in near.iter().zip(answers) {
            let signed = match answer {
                Ok(Response::Versions { signed }) => {
                    cut |= may_be_cut(&signed);
                    signed
                }
                Ok(Response::NotFound) => Vec::new(),
                other => {
                    return Err(BlockError::Unavailable {
                        needed: near.len(),
                        acks: 0,
                        reason: format!("{candidate}: {other:?}")
                            .chars()
                            .take(300)
                            .collect(),
                    });
                }
            };
            for bytes in signed {
                match self.verified.verify_trusting(
                    &bytes,
                    &inode,
                    keys::now(),
                    &keys::Revocations::default(),
                    Some(self.local.verified()),
                ) {
                    Ok(v) => {
                        found.insert(v.version, v);
                    }
                    Err(_) => {
                        self.counters.bad_answers.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        Ok((found.into_values().collect(), cut))
    }

    /// The nodes nearest to `key` that an overlay lookup finds (up to Kademlia's k), but
    /// this one and those in `asked`: where a read looks when none of the R + 4 nearest
    /// by this node's view holds an item. An item stays where it was put until repair
    /// hands it off to nodes that joined nearer its key (at its next interval), and a
    /// network that grows fast puts more than four such nodes in front of it meanwhile.
    async fn wider(&self, key: &[u8; 32], asked: &[PeerId]) -> Vec<PeerId> {
        self.counters.lookups.wider.fetch_add(1, Ordering::Relaxed);
        match self.dht.look_up_closest(key.to_vec(), WIDER_READ).await {
            Ok(found) => found
                .into_iter()
                .map(|c| c.peer)
                .filter(|p| *p != self.me && !asked.contains(p) && !self.is_down(p))
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "no wider lookup");
                Vec::new()
            }
        }
    }

    /// The chunk from this node's store (checked against its id there), if held intact.
    fn local_chunk(&self, id: &ChunkId) -> Option<Vec<u8>> {
        match self.local.get_chunk(id) {
            Ok(found) => found,
            Err(Refused::Corrupt) => None,
            Err(e) => {
                tracing::warn!(chunk = %id, error = %e, "local store failed; asking replicas");
                None
            }
        }
    }

    /// The chunk from another replica, checked against its id.
    async fn fetch_chunk(&self, id: ChunkId) -> Result<Vec<u8>, BlockError> {
        let mut errors = Vec::new();
        let (known, candidates) = self.placement(id.as_bytes(), Why::Get).await?;
        for round in 0..2 {
            let peers = match round {
                0 => candidates.clone(),
                // None of the nearest holds it: farther out (see `Network::wider`).
                _ if known >= self.config.replicas + BEYOND_R => {
                    self.wider(id.as_bytes(), &candidates).await
                }
                _ => break,
            };
            if let Some(data) = self.first_chunk(id, peers, &mut errors).await {
                return Ok(data);
            }
        }
        if errors.is_empty() {
            Err(BlockError::NotFound)
        } else {
            Err(BlockError::Unavailable {
                needed: 1,
                acks: 0,
                reason: errors.join("; "),
            })
        }
    }

    /// The chunk from the first of `peers` to serve it intact, nearest first. The next
    /// peer is asked as soon as one fails, and also when those asked are slower than
    /// recent round trips ([`RoundTrips::hedge_after`], doubled at each further hedge):
    /// a replica that is overloaded or silent costs a read a hedge delay, not a request
    /// timeout. The other requests are dropped once one answers. What went
    /// wrong is added to `errors`.
    async fn first_chunk(
        &self,
        id: ChunkId,
        peers: Vec<PeerId>,
        errors: &mut Vec<String>,
    ) -> Option<Vec<u8>> {
        let mut waiting: std::collections::VecDeque<PeerId> =
            peers.into_iter().filter(|p| *p != self.me).collect();
        let mut asked = futures::stream::FuturesUnordered::new();
        let mut hedges = 0u32;
        let ask = |peer: PeerId| async move {
            (
                peer,
                self.exchange(peer, Request::GetChunk { id: id.0 }).await,
            )
        };
        loop {
            if asked.is_empty() {
                asked.push(ask(waiting.pop_front()?));
            }
            // A failure moves on to the next at once.
            let answered = if waiting.is_empty() {
                asked.next().await
            } else {
                let delay =
                    self.round_trips.hedge_after(Size::Chunk) * (1 << hedges.min(HEDGE_DOUBLINGS));
                match tokio::time::timeout(delay, asked.next()).await {
                    Ok(answered) => answered,
                    Err(_) => {
                        hedges += 1;
                        self.counters.hedged.fetch_add(1, Ordering::Relaxed);
                        if let Some(peer) = waiting.pop_front() {
                            asked.push(ask(peer));
                        }
                        continue;
                    }
                }
            };
            let Some((peer, answer)) = answered else {
                continue;
            };
            match answer {
                Ok(Response::Chunk { data }) if ChunkId::of(&data) == id => return Some(data),
                Ok(Response::Chunk { .. }) => {
                    self.counters.bad_answers.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, chunk = %id, "a replica served bytes that do not match the chunk id");
                    errors.push(format!("{peer}: bytes do not match"));
                }
                Ok(Response::NotFound) => {}
                Ok(other) => errors.push(format!("{peer}: unexpected answer {}", kind(&other))),
                Err(Failure::Refused(r)) => errors.push(format!("{peer}: {r}")),
                Err(Failure::Unreachable(e)) => errors.push(format!("{peer}: {e}")),
            }
            if let Some(next) = waiting.pop_front() {
                asked.push(ask(next));
            }
        }
    }

    async fn put_version_uncached(
        &self,
        inode: InodeId,
        signed: Vec<u8>,
    ) -> Result<(), BlockError> {
        self.put_item(
            inode.as_bytes(),
            Request::PutVersion {
                inode: inode.0,
                signed,
            },
            false,
        )
        .await
        .map(|_| ())
    }
}

impl Network {
    /// Every version of `inode` that replicas hold, from at least `quorum` answers (or
    /// as many as there are nodes near it, when fewer), merged and verified. The R + 1
    /// nearest are asked (and this node); when none of them holds a version, the next
    /// nearest too: after nodes joined near the inode and before repair reached them, the
    /// versions are a little farther out.
    ///
    /// A read does not wait on every replica asked: once it holds versions, the rest
    /// get a hedge delay (about the 90th percentile of recent round trips) after
    /// R − W + 2 of the R + 1 nearest answered, or a patience (four hedge delays, at
    /// least 500 ms) before that once another replica than this node returned versions
    /// (counted in [`Counters::short_reads`]). "None there" waits for every answer.
    ///
    /// With `farther`, for an inode known to exist (a directory names it): when none of
    /// the R + 4 nearest holds a version, the nodes nearest it that an overlay lookup
    /// finds are asked too (up to Kademlia's k).
    pub async fn versions_from(
        &self,
        inode: InodeId,
        quorum: usize,
        farther: bool,
    ) -> Result<Vec<Verified>, BlockError> {
        let (known, candidates) = self.placement(inode.as_bytes(), Why::Get).await?;
        let first = candidates.len().min(self.config.replicas + 1);
        // R + 1 are asked first (one node may have joined among the R nearest since a
        // write); R − W + 2 answers of theirs meet the W that acknowledged it.
        let read_quorum = (self.config.replicas + 2)
            .saturating_sub(self.config.write_quorum)
            .max(quorum)
            .max(1);
        let now = keys::now();
        self.refresh();
        let revocations = self.local.revocations().read();
        let mut found: BTreeMap<VersionId, Verified> = BTreeMap::new();
        let mut answered = 0;
        let mut errors = Vec::new();
        for round in 0..3 {
            if round > 0 && !found.is_empty() {
                break;
            }
            let batch = match round {
                0 => candidates[..first].to_vec(),
                1 => candidates[first..].to_vec(),
                // None of the nearest holds a version: farther out (see `Network::wider`).
                _ if farther && known >= self.config.replicas + BEYOND_R => {
                    self.wider(inode.as_bytes(), &candidates).await
                }
                _ => Vec::new(),
            };
            if batch.is_empty() {
                continue;
            }
            let batch_len = batch.len();
            let mut asked: Vec<PeerId> = batch;
            // This node may hold versions while no longer among the nearest.
            if round == 0 && !asked.contains(&self.me) {
                asked.push(self.me);
            }
            // Answers that settle a read: the read quorum of the R + 1 nearest. Farther
            // out, every answer.
            let settle = if round == 0 {
                read_quorum.min(batch_len)
            } else {
                batch_len
            };
            let mut settled = 0;
            // Whether a replica other than this node returned versions: this node's own
            // answer comes at once, and alone it starts no patience (it may be stale).
            let mut remote_found = false;
            let mut pending: futures::stream::FuturesUnordered<_> = asked
                .iter()
                .enumerate()
                .map(|(at, peer)| async move {
                    let answer = self
                        .exchange(*peer, Request::GetVersions { inode: inode.0 })
                        .await;
                    (at, *peer, answer)
                })
                .collect();
            // With versions in hand, the others get a hedge delay more to add what they
            // hold once the read is settled, and [`RoundTrips::patience`] before: a
            // silent replica does not hold a read for a whole request timeout.
            let mut until: Option<tokio::time::Instant> = None;
            loop {
                let next = match until {
                    None => pending.next().await,
                    Some(at) => match tokio::time::timeout_at(at, pending.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            if settled < settle {
                                self.counters.short_reads.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(%inode, settled, settle, "read versions without the read quorum: the others are silent");
                            }
                            break;
                        }
                    },
                };
                let Some((at, peer, answer)) = next else {
                    break;
                };
                let settles = at < batch_len;
                match answer {
                    Ok(Response::Versions { signed }) => {
                        answered += 1;
                        settled += usize::from(settles);
                        remote_found |= peer != self.me && !signed.is_empty();
                        for bytes in signed {
                            // Checked at its signing time, like a replica does
                            // (what this node's replica stored it checked already);
                            // revocations are applied to the whole set below.
                            match self.verified.verify_trusting(
                                &bytes,
                                &inode,
                                now,
                                &keys::Revocations::default(),
                                Some(self.local.verified()),
                            ) {
                                Ok(v) => {
                                    found.insert(v.version, v);
                                }
                                Err(e) => {
                                    self.counters.bad_answers.fetch_add(1, Ordering::Relaxed);
                                    tracing::warn!(%peer, %inode, error = %e, "a replica served a version that does not verify");
                                }
                            }
                        }
                    }
                    Ok(Response::NotFound) => {
                        answered += 1;
                        settled += usize::from(settles);
                    }
                    Ok(other) => errors.push(format!("{peer}: unexpected answer {}", kind(&other))),
                    Err(Failure::Refused(r)) => errors.push(format!("{peer}: {r}")),
                    Err(Failure::Unreachable(e)) => errors.push(format!("{peer}: {e}")),
                }
                let wait = if found.is_empty() {
                    // "Nothing there" is only trusted from every answer, as before a
                    // write of a new root or a wider search rests on it.
                    None
                } else if settled >= settle {
                    Some(self.round_trips.hedge_after(Size::Small))
                } else if remote_found {
                    Some(self.round_trips.patience(Size::Small))
                } else {
                    None
                };
                if let Some(wait) = wait {
                    let at = tokio::time::Instant::now() + wait;
                    until = Some(until.map_or(at, |u| u.min(at)));
                }
            }
        }
        let needed = quorum.min(known).max(1);
        if answered < needed {
            return Err(BlockError::Unavailable {
                needed,
                acks: answered,
                reason: errors.join("; "),
            });
        }
        // A replica that lacks a revocation list serves what it revokes: left out here.
        Ok(crate::inode::drop_revoked(
            found.into_values().collect(),
            &revocations,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;
    use crate::inode::{ChunkRef, Signed};
    use crate::store::Store;

    /// A peer alone may use all but the last kept slots; with only those free, a peer
    /// with that many under way gets none, one with fewer still gets one; and a slot
    /// taken is given back when its request ends.
    #[test]
    fn the_last_slots_are_kept_for_peers_with_fewer_requests_under_way() {
        let serving = Arc::new(Mutex::new(HashMap::new()));
        let (hog, other) = (PeerId::random(), PeerId::random());
        let mut held = Vec::new();
        let mut available = 64;
        while let Some(slot) = PeerSlot::take(&serving, hog, peer_limit(available, 16)) {
            held.push(slot);
            available -= 1;
        }
        assert_eq!((held.len(), available), (48, 16));
        let mut others = Vec::new();
        while available > 0 {
            let slot = PeerSlot::take(&serving, other, peer_limit(available, 16)).unwrap();
            others.push(slot);
            available -= 1;
        }
        assert_eq!(others.len(), 16);
        drop(held.pop());
        assert_eq!(serving.lock().unwrap()[&hog], 47);
        drop(held);
        assert!(!serving.lock().unwrap().contains_key(&hog));
    }

    #[test]
    fn remembered_versions_are_bounded_and_the_oldest_go_first() {
        let inode = |n: u32| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&n.to_le_bytes());
            InodeId(id)
        };
        let mut cache = Cache::default();
        // Kept again while the table fills: its newer entry counts, not its first.
        cache.keep_versions(inode(0), &[]);
        for n in 1..CACHED_INODES as u32 + 100 {
            cache.keep_versions(inode(n), &[]);
            if n == CACHED_INODES as u32 - 10 {
                cache.keep_versions(inode(0), &[]);
            }
        }
        assert!(cache.versions.len() <= CACHED_INODES);
        assert!(cache.versions(&inode(1)).is_none(), "the oldest went first");
        assert!(cache.versions(&inode(CACHED_INODES as u32 + 99)).is_some());
        assert!(
            cache.versions(&inode(0)).is_some(),
            "kept again late: its first entry went"
        );
        // Once expired, everything goes at the next insertion, and the order with it.
        std::thread::sleep(VERSIONS_TTL);
        cache.keep_versions(inode(1), &[]);
        assert_eq!(cache.versions.len(), 1);
        assert_eq!(cache.versions_order.len(), 1);
    }

    /// A fetch of an inode's versions that runs while a write of it is under way (this
    /// node's store takes the write on a blocking thread and answers reads meanwhile)
    /// may find the replicas without the write; what it remembered is forgotten when the
    /// write returns, so that the next read finds the write. Before, it hid the write
    /// for up to [`VERSIONS_TTL`]: a directory just made was not found in its parent.
    #[tokio::test(flavor = "current_thread")]
    async fn what_a_read_found_during_a_write_is_forgotten_when_the_write_returns() {
        let cache = Mutex::new(Cache::default());
        let inode = InodeId([7; 32]);
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        // Polled first: the write begins, then waits for the gate.
        let write = forget_around(&cache, &inode, async {
            gate.await.ok();
        });
        let read_during_it = async {
            let found = remember_fetched(&cache, inode, async { Ok(Vec::new()) }).await;
            assert_eq!(found.map(|v| v.len()), Ok(0));
            assert!(
                cache.lock().unwrap().versions(&inode).is_some(),
                "remembered while the write is under way"
            );
            release.send(()).unwrap();
        };
        tokio::join!(write, read_during_it);
        assert!(
            cache.lock().unwrap().versions(&inode).is_none(),
            "what the read found before the write was stored is not kept past it"
        );
        // A fetch that began before the write is not remembered at all.
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let (started, started_rx) = tokio::sync::oneshot::channel::<()>();
        let read_before = remember_fetched(&cache, inode, async {
            started.send(()).unwrap();
            gate.await.ok();
            Ok(Vec::new())
        });
        let write_then_release = async {
            started_rx.await.unwrap();
            forget_around(&cache, &inode, async {}).await;
            release.send(()).unwrap();
        };
        let (found, ()) = tokio::join!(read_before, write_then_release);
        assert_eq!(found.map(|v| v.len()), Ok(0));
        assert!(cache.lock().unwrap().versions(&inode).is_none());
        // A write dropped while under way (a timeout) forgets too: this node's store
        // may take it all the same.
        let (_release, gate) = tokio::sync::oneshot::channel::<()>();
        {
            let write = forget_around(&cache, &inode, async {
                gate.await.ok();
            });
            let mut write = std::pin::pin!(write);
            assert!(futures::poll!(&mut write).is_pending());
            remember_fetched(&cache, inode, async { Ok(Vec::new()) })
                .await
                .unwrap();
            assert!(cache.lock().unwrap().versions(&inode).is_some());
        }
        assert!(cache.lock().unwrap().versions(&inode).is_none());
        // Without a write, a fetch is remembered.
        remember_fetched(&cache, inode, async { Ok(Vec::new()) })
            .await
            .unwrap();
        assert!(cache.lock().unwrap().versions(&inode).is_some());
    }

    /// Writes offered together go in one commit, each answered for itself: on a
    /// one-thread runtime every offer is queued before the writer first runs.
    #[tokio::test(flavor = "current_thread")]
    async fn chunks_offered_together_are_stored_in_one_commit() {
        let replica = Replica::new(Store::in_memory().unwrap());
        let counters = Arc::new(Counters::default());
        let writer = ChunkWriter::spawn(replica.clone(), counters.clone());
        let offers: Vec<(ChunkId, Vec<u8>)> = (0..10u8)
            .map(|n| {
                let bytes = vec![n; 1000 + usize::from(n)];
                let id = if n == 3 {
                    ChunkId([3; 32])
                } else {
                    ChunkId::of(&bytes)
                };
                (id, bytes)
            })
            .collect();
        let answers = futures::future::join_all(
            offers
                .iter()
                .map(|(id, bytes)| writer.put(InodeId([1; 32]), *id, bytes.clone())),
        )
        .await;
        for (n, answer) in answers.into_iter().enumerate() {
            let expected = if n == 3 {
                Response::Refused(Refusal::Mismatch)
            } else {
                Response::Stored { new: true }
            };
            assert_eq!(answer, expected, "offer {n}");
        }
        assert_eq!(counters.peer_chunks.load(Ordering::Relaxed), 10);
        assert_eq!(counters.peer_chunk_commits.load(Ordering::Relaxed), 1);
        assert_eq!(replica.store().stats().unwrap().chunks, 9);
        assert_eq!(replica.counters().refused_chunks.load(Ordering::Relaxed), 1);
        // Alone, a write is stored at once.
        let again = writer
            .put(InodeId([1; 32]), offers[0].0, offers[0].1.clone())
            .await;
        assert_eq!(again, Response::Stored { new: false });
        assert_eq!(counters.peer_chunk_commits.load(Ordering::Relaxed), 2);
    }

    /// A replica holding versions too large to be sent together: its answer leaves the
    /// oldest out, and the receiver can tell that it may have.
    #[tokio::test]
    async fn an_answer_cut_to_fit_is_known_as_possibly_cut() {
        let crate::testing::Owner {
            client,
            replica,
            tree,
            root,
        } = crate::testing::owner();
        let path = tree.join("big").unwrap();
        client.put(&path, &b"small"[..], |_| {}).await.unwrap();
        let inode = client.stat(&path).await.unwrap().inode;
        let ask = || answer_blocking(&replica, Request::GetVersions { inode: inode.0 });
        let Response::Versions { signed } = ask() else {
            panic!("no versions")
        };
        assert_eq!(signed.len(), 1);
        assert!(!may_be_cut(&signed));

        // Versions of a 256 MiB file: 16 384 chunk ids each, about 650 KB signed.
        let mut previous = replica.versions(&inode).unwrap().remove(0);
        for seq in 2..=8u64 {
            let mut next = (*previous.inode).clone();
            next.seq = seq;
            next.parents = vec![previous.version];
            next.chunk_size = 16 * 1024;
            next.chunks = (0..16_384u32)
                .map(|i| ChunkRef {
                    id: ChunkId::of(&[&seq.to_le_bytes()[..], &i.to_le_bytes()[..]].concat()),
                    len: 16 * 1024,
                })
                .collect();
            next.size = 256 << 20;
            let bytes = Signed::sign(&next, root.signing_key()).unwrap();
            assert!(replica.put_version(&inode, &bytes).unwrap());
            previous = replica
                .versions(&inode)
                .unwrap()
                .into_iter()
                .find(|v| v.inode.seq == seq)
                .unwrap();
        }
        let held = replica.versions(&inode).unwrap().len();
        let Response::Versions { signed } = ask() else {
            panic!("no versions")
        };
        assert!(signed.len() < held, "{} of {held} sent", signed.len());
        assert!(may_be_cut(&signed));
        assert!(block::encode_response(&Response::Versions { signed }).is_ok());
    }
}
