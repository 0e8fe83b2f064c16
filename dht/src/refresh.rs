//! Routing-table refresh by Kademlia's own rule: a bucket is refreshed (a lookup of a
//! random key that falls in it) only when no lookup went through it within the refresh
//! interval, as the Kademlia paper has it and go-libp2p-kad-dht's refresh manager does.
//!
//! libp2p's periodic bootstrap instead looks up the node's own key and then a key in
//! every bucket beyond the nearest non-empty one, every interval, whatever the node's
//! other lookups already did: a dozen lookups of some sixty requests each in a network of
//! a thousand, most of them for the far buckets that resolutions, record stores and the
//! file system's placement lookups cross all the time. Here those lookups count as
//! refreshes of the buckets their targets fall in, and the periodic bootstrap is off;
//! libp2p's automatic bootstrap (when the table holds fewer than k peers, as while
//! joining) still runs, and its lookups count too.
//!
//! Refresh lookups run one at a time, as the bootstrap's do, so a node that finds many
//! buckets stale spreads their lookups out rather than sending them all at once.
//!
//! Nor are the buckets the lookup of the own key covers refreshed on their own: it finds
//! the k nearest nodes, so every bucket nearer than the one holding the k-th nearest
//! peer in the table is filled by it (in a network of a thousand, buckets up to 249 of
//! the 247 to 255 that hold peers). Each such bucket holds a handful of nodes, and a
//! lookup of its own (some forty requests) finds no more of them than the own-key
//! lookup, which runs at every interval anyway.
//!
//! A key in a bucket is found by hashing random keys until one falls in it (Kademlia's
//! wire protocol carries preimages): bucket `i` takes 2^(256 - i) tries on average, so
//! only buckets from [`NEAREST_REFRESHED`] out are refreshed this way (as
//! go-libp2p-kad-dht refreshes common prefixes up to 15 bits). The nearer ones are
//! covered by the lookup of the own key, which finds the k = 20 nearest nodes: in a
//! network of N nodes they lie within bucket 256 + log2(20 / N), 242 or nearer up to some
//! 300 000 nodes.

use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::kad::{KBucketKey, QueryId};

/// Buckets of a 256-bit key space, indexed by the base-2 logarithm of the distance.
const BUCKETS: usize = 256;

/// The nearest bucket refreshed by a lookup of its own: a key in it takes 2^14 tries
/// on average (a few milliseconds of hashing).
const NEAREST_REFRESHED: usize = 242;

/// Most random keys tried to find one in a bucket: four times the average for the
/// nearest one refreshed, which fails to find one 2 % of the time (then the bucket waits
/// for the next interval).
const MAX_TRIES: usize = 1 << 16;

/// What to look up next to refresh the routing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// The node's own key: finds its nearest neighbours.
    Own,
    /// A key (its preimage) that falls in the stale bucket numbered `bucket`.
    Bucket { bucket: u32, key: Vec<u8> },
}

/// When lookups last went through each bucket, and which refresh is in flight.
#[derive(Debug)]
pub(crate) struct Refresh {
    local: KBucketKey<PeerId>,
    interval: Duration,
    /// When a lookup last targeted each bucket; a bucket not yet looked into counts from
    /// the time the node started (a joining node's lookups fill its table).
    last: Vec<Instant>,
    /// When the own key was last looked up.
    own: Instant,
    /// The refresh lookup in flight.
    in_flight: Option<QueryId>,
    /// The nearest bucket refreshed ([`NEAREST_REFRESHED`]).
    nearest_refreshed: usize,
    /// Buckets skipped for want of a key.
    pub(crate) skipped: u64,
}

impl Refresh {
    pub(crate) fn new(local: PeerId, interval: Duration, now: Instant) -> Self {
        Refresh {
            local: KBucketKey::from(local),
            interval,
            last: vec![now; BUCKETS],
            own: now,
            in_flight: None,
            nearest_refreshed: NEAREST_REFRESHED,
            skipped: 0,
        }
    }

    /// The bucket `target` falls in (none: it is the own key).
    pub(crate) fn bucket_of<T>(&self, target: &KBucketKey<T>) -> Option<u32> {
        self.local.distance(target).ilog2()
    }

    /// Notes a lookup toward `target` (any kind: closest peers, a record's get or put).
    pub(crate) fn looked_up<T>(&mut self, target: &KBucketKey<T>, now: Instant) {
        match self.bucket_of(target) {
            Some(bucket) => self.last[bucket as usize] = now,
            None => self.own = now,
        }
    }

    /// Notes a lookup of the own key.
    pub(crate) fn looked_up_own(&mut self, now: Instant) {
        self.own = now;
    }

    /// Whether a refresh lookup is running.
    pub(crate) fn is_running(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The next lookup due, if any, with the nearest non-empty bucket `nearest` (none:
    /// the table is empty, and there is nothing to refresh from) and the bucket of the
    /// k-th nearest peer, `kth` (none: the table holds fewer than k). Buckets nearer than
    /// `nearest` hold no peer and are covered by the own-key lookup, and `nearest` itself
    /// too, as in libp2p's bootstrap; so are those nearer than `kth`, whose peers are all
    /// among the k nearest. The stalest bucket goes first. A bucket no key was found for
    /// counts as refreshed (see [`MAX_TRIES`]), and then nothing else is searched for in
    /// this call, so one call hashes at most [`MAX_TRIES`] keys.
    pub(crate) fn due(
        &mut self,
        nearest: Option<u32>,
        kth: Option<u32>,
        now: Instant,
    ) -> Option<Target> {
        let nearest = nearest?;
        if self.in_flight.is_some() {
            return None;
        }
        if now.duration_since(self.own) >= self.interval {
            return Some(Target::Own);
        }
        let first = (nearest as usize + 1)
            .max(kth.map_or(0, |b| b as usize))
            .max(self.nearest_refreshed);
        let stale = (first..BUCKETS)
            .filter(|&b| now.duration_since(self.last[b]) >= self.interval)
            .min_by_key(|&b| self.last[b])?;
        match self.key_in(stale as u32) {
            Some(key) => Some(Target::Bucket {
                bucket: stale as u32,
                key,
            }),
            None => {
                self.skipped += 1;
                self.last[stale] = now;
                None
            }
        }
    }

    /// Notes that the lookup `query` for `target` started.
    pub(crate) fn start(&mut self, query: QueryId, target: &Target, now: Instant) {
        match target {
            Target::Own => self.own = now,
            Target::Bucket { bucket, .. } => self.last[*bucket as usize] = now,
        }
        self.in_flight = Some(query);
    }

    /// Whether `query` is the refresh lookup in flight.
    pub(crate) fn is_query(&self, query: QueryId) -> bool {
        self.in_flight == Some(query)
    }

    /// Notes that `query` ended; true if it was the refresh lookup.
    pub(crate) fn finished(&mut self, query: QueryId) -> bool {
        if self.in_flight == Some(query) {
            self.in_flight = None;
            true
        } else {
            false
        }
    }

    /// A random key whose hash falls in `bucket`, if one turns up within [`MAX_TRIES`].
    fn key_in(&self, bucket: u32) -> Option<Vec<u8>> {
        (0..MAX_TRIES)
            .map(|_| rand::random::<[u8; 32]>())
            .find(|key| self.bucket_of(&KBucketKey::new(*key)) == Some(bucket))
            .map(Vec::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refresh(now: Instant) -> Refresh {
        Refresh::new(PeerId::random(), Duration::from_secs(600), now)
    }

    #[test]
    fn nothing_is_due_within_the_interval_or_with_an_empty_table() {
        let now = Instant::now();
        let mut r = refresh(now);
        assert_eq!(r.due(Some(250), None, now + Duration::from_secs(599)), None);
        assert_eq!(r.due(None, None, now + Duration::from_secs(6000)), None);
    }

    #[test]
    fn only_buckets_no_lookup_went_through_are_refreshed() {
        let start = Instant::now();
        let mut r = refresh(start);
        // Lookups went through buckets 255 and 253 a minute before the interval ran out.
        let early = start + Duration::from_secs(540);
        let through = |r: &Refresh, bucket: u32| {
            let key = r.key_in(bucket).expect("a key in a far bucket");
            KBucketKey::new(key)
        };
        let k255 = through(&r, 255);
        let k253 = through(&r, 253);
        r.looked_up(&k255, early);
        r.looked_up(&k253, early);
        let now = start + Duration::from_secs(600);
        // The own key first, then buckets 251, 252 and 254 (nearest non-empty: 250),
        // each a key that falls in it, one lookup at a time.
        assert_eq!(r.due(Some(250), None, now), Some(Target::Own));
        let mut query = 0;
        let mut next_id = || {
            query += 1;
            // QueryIds cannot be made outside libp2p; take them from a real behaviour.
            test_query_id(query)
        };
        let id = next_id();
        r.start(id, &Target::Own, now);
        assert_eq!(r.due(Some(250), None, now), None, "one refresh at a time");
        assert!(!r.finished(next_id()));
        assert!(r.finished(id));
        assert_eq!(
            refresh_all(&mut r, Some(250), None, now),
            vec![251, 252, 254]
        );
        // The two buckets the lookups went through are due an interval after them.
        let later = early + Duration::from_secs(600);
        assert_eq!(refresh_all(&mut r, Some(250), None, later), vec![253, 255]);
        assert_eq!(r.skipped, 0);
    }

    /// Runs every refresh lookup due at `now`, one at a time, each a key in its bucket;
    /// the buckets refreshed, in order.
    fn refresh_all(
        r: &mut Refresh,
        nearest: Option<u32>,
        kth: Option<u32>,
        now: Instant,
    ) -> Vec<u32> {
        let mut refreshed = Vec::new();
        while let Some(target) = r.due(nearest, kth, now) {
            let Target::Bucket { bucket, key } = &target else {
                panic!("the own key again");
            };
            assert_eq!(r.bucket_of(&KBucketKey::new(key.clone())), Some(*bucket));
            let id = test_query_id(refreshed.len() + 1);
            r.start(id, &target, now);
            assert!(r.finished(id));
            refreshed.push(*bucket);
        }
        refreshed.sort_unstable();
        refreshed
    }

    #[test]
    fn buckets_the_own_lookup_fills_are_not_refreshed_on_their_own() {
        let start = Instant::now();
        let mut r = refresh(start);
        let now = start + Duration::from_secs(600);
        r.looked_up_own(now);
        // Peers from bucket 246 out; the k-th nearest in bucket 250: 246 to 249 are the
        // own lookup's, and 250 to 255 are refreshed.
        assert_eq!(
            refresh_all(&mut r, Some(246), Some(250), now),
            (250..=255).collect::<Vec<u32>>()
        );
        // Fewer than k peers: every bucket beyond the nearest.
        let later = now + Duration::from_secs(600);
        r.looked_up_own(later);
        assert_eq!(
            refresh_all(&mut r, Some(246), None, later),
            (247..=255).collect::<Vec<u32>>()
        );
    }

    #[test]
    fn buckets_too_near_for_a_random_key_are_left_to_other_lookups() {
        let start = Instant::now();
        let mut r = refresh(start);
        let now = start + Duration::from_secs(600);
        r.looked_up_own(now);
        for b in NEAREST_REFRESHED..BUCKETS {
            r.last[b] = now;
        }
        // Buckets 201 to 241 are stale, and would take 2^15 to 2^55 tries: not searched.
        assert_eq!(r.due(Some(200), None, now), None);
        assert_eq!(r.skipped, 0);
        // A bucket searched in vain waits an interval: with the floor lowered to 201, a
        // key in bucket 201 (2^55 tries on average) is not found.
        r.nearest_refreshed = 201;
        assert_eq!(r.due(Some(200), None, now), None);
        assert_eq!(r.skipped, 1);
        assert!(now.duration_since(r.last[201]) < Duration::from_secs(1));
        // The next call searches the next stalest, bucket 202, in vain too.
        assert_eq!(r.due(Some(200), None, now), None);
        assert_eq!(r.skipped, 2, "bucket 202 next");
    }

    /// A `QueryId` from a real Kademlia behaviour (the type has no public constructor):
    /// the `n`th query a fresh behaviour starts.
    fn test_query_id(n: usize) -> QueryId {
        use libp2p::kad;
        let peer = PeerId::random();
        let mut kad = kad::Behaviour::new(peer, kad::store::MemoryStore::new(peer));
        let mut id = None;
        for _ in 0..n {
            id = Some(kad.get_closest_peers(PeerId::random()));
        }
        id.expect("n ≥ 1")
    }
}
