//! The persistent record store: Kademlia's [`RecordStore`] on redb.
//!
//! Every record is checked ([`PathRecord::from_kad`]) before it is stored, whoever hands it
//! in — a remote peer's PUT (through [`Store::insert`]) or Kademlia itself — and a record
//! replaces a stored one only with a higher sequence number. Records are written through
//! to redb in a transaction that is durable before `put` returns, and loaded (and checked
//! again) when the store opens, so they survive a restart. Expired records are never
//! served; Kademlia removes them when it meets them, and a restart drops the rest. The store keeps no provider records: this overlay does not use them.
//!
//! A full store keeps the records nearest its node ([`Store::keep_nearest`]): a record
//! nearer (by Kademlia's XOR distance) than the farthest one another node published takes
//! that one's place, and so does any record of the node's own (which never gives way).
//! Anyone can make valid records (a key of their own is a root), so a store that refused
//! everything once full could be filled by one peer and then took nothing else, not even
//! its own node's registrations. Now a flood's records push out only records farther from
//! the node than they are, and never the node's own. Keys can still be ground to land near
//! a chosen node (about N/k tries per record in an overlay of N nodes), so a targeted
//! flood still pushes out the others' records that node holds.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path as FsPath;

use keys::SharedRevocations;
use libp2p::PeerId;
use libp2p::kad::store::{self, RecordStore};
use libp2p::kad::{KBucketDistance, KBucketKey, ProviderRecord, Record, RecordKey};
use redb::{ReadableTable, TableDefinition};

use crate::record::{PathRecord, RecordError, instant_of};

const RECORDS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("path_records_v1");

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The record is invalid, stale or forged.
    #[error("record refused")]
    Refused(#[from] RecordError),
    /// The store holds as many records as it may.
    #[error("the store is full ({0} records)")]
    Full(usize),
    /// The database failed.
    #[error("record database: {0}")]
    Database(String),
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

/// What [`Store::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// A new path, or a newer sequence of a known one.
    New,
    /// The same record again (a republication).
    Unchanged,
}

/// A Kademlia record store that keeps only valid path records: persistently when opened on a
/// file ([`Store::open`]), for the life of the process when made [`Store::in_memory`].
#[derive(Debug)]
pub struct Store {
    /// Where records are written through; none for a store in memory only.
    db: Option<redb::Database>,
    records: HashMap<RecordKey, (Record, u64)>,
    revocations: SharedRevocations,
    max_records: usize,
    /// The node whose nearest records a full store keeps ([`Store::keep_nearest`]).
    nearest_to: Option<(PeerId, KBucketKey<PeerId>)>,
    /// Every record another node published, by its distance from `nearest_to` (the
    /// farthest is the first to give way); empty while that is unset.
    by_distance: std::collections::BTreeMap<KBucketDistance, RecordKey>,
    /// When a full store last looked for records whose writecap lapsed or was revoked
    /// (see [`SWEEP_EVERY`]).
    swept_at: Option<std::time::Instant>,
}

/// How often a full store checks every record's writecap chain for room: a check is a
/// signature verification per record, and a full store asked to take record after
/// record (a flood) verified all it held for each of them. Expired records are dropped
/// at each refusal, which costs a clock comparison each.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Store {
    /// Opens (or creates) the store in the redb file at `path`, loading every record that
    /// is still valid.
    pub fn open(path: &FsPath, max_records: usize) -> Result<Self, StoreError> {
        let db = redb::Database::create(path).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(RECORDS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        let mut store = Self::in_memory(max_records);
        store.db = Some(db);
        store.load()?;
        Ok(store)
    }

    /// A store that lives in memory only and is lost with the process (tests and the
    /// simulator): the same checks, nothing written through. (An in-memory redb database
    /// took 2.6 MiB even when empty, a sixth of a simulated node.)
    pub fn in_memory(max_records: usize) -> Self {
        Store {
            db: None,
            records: HashMap::new(),
            revocations: SharedRevocations::default(),
            max_records,
            nearest_to: None,
            by_distance: std::collections::BTreeMap::new(),
            swept_at: None,
        }
    }

    /// Makes a full store keep the records nearest `node`, its own node: a record for a
    /// key not held takes the place of the farthest record another node published if
    /// that one is farther than it, and a record `node` published takes it whatever the
    /// distance (its own records never give way). Without this a full store refuses
    /// every new key. A store holding more than it may (opened with a lower limit than it
    /// was filled under) lets the farthest of the others' records go at once.
    pub fn keep_nearest(&mut self, node: PeerId) -> Result<(), StoreError> {
        self.nearest_to = Some((node, KBucketKey::from(node)));
        self.by_distance.clear();
        let held: Vec<(RecordKey, Option<PeerId>)> = self
            .records
            .iter()
            .map(|(key, (record, _))| (key.clone(), record.publisher))
            .collect();
        for (key, publisher) in held {
            self.index(&key, publisher);
        }
        let over = self.records.len().saturating_sub(self.max_records);
        let farthest: Vec<RecordKey> = self
            .by_distance
            .values()
            .rev()
            .take(over)
            .cloned()
            .collect();
        self.delete(&farthest)
    }

    /// The distance of `key` from the node set by [`Store::keep_nearest`].
    fn distance(&self, key: &RecordKey) -> Option<KBucketDistance> {
        let (_, node) = self.nearest_to.as_ref()?;
        Some(node.distance(&KBucketKey::new(key.clone())))
    }

    /// Whether a record published by `publisher` is the node's own.
    fn own(&self, publisher: Option<PeerId>) -> bool {
        self.nearest_to
            .as_ref()
            .is_some_and(|(node, _)| publisher == Some(*node))
    }

    /// Lists a held record among those that may give way (unless it is the node's own).
    fn index(&mut self, key: &RecordKey, publisher: Option<PeerId>) {
        if self.own(publisher) {
            return;
        }
        if let Some(distance) = self.distance(key) {
            self.by_distance.insert(distance, key.clone());
        }
    }

    fn unindex(&mut self, key: &RecordKey) {
        if let Some(distance) = self.distance(key) {
            self.by_distance.remove(&distance);
        }
    }

    /// The record that gives way to a new one for `key` published by `publisher`: the
    /// farthest another node published, if it is farther than `key` (any, for the node's
    /// own record).
    fn giving_way(&self, key: &RecordKey, publisher: Option<PeerId>) -> Option<RecordKey> {
        let (farthest, held) = self.by_distance.last_key_value()?;
        if self.own(publisher) || self.distance(key).is_some_and(|d| d < *farthest) {
            Some(held.clone())
        } else {
            None
        }
    }

    fn load(&mut self) -> Result<(), StoreError> {
        let Some(db) = &self.db else {
            return Ok(());
        };
        let now = keys::now();
        let mut dead = Vec::new();
        {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(RECORDS).map_err(db_err)?;
            for entry in table.iter().map_err(db_err)? {
                let (key, value) = entry.map_err(db_err)?;
                let key = RecordKey::new(&key.value());
                match PathRecord::from_kad(&key, value.value(), now, &self.revocations.read()) {
                    Ok(record) => {
                        let sequence = record.sequence();
                        let kad = kad_record(key.clone(), value.value().to_vec(), &record);
                        self.index(&key, kad.publisher);
                        self.records.insert(key, (kad, sequence));
                    }
                    Err(error) => {
                        tracing::debug!(%error, "dropping stored record");
                        dead.push(key);
                    }
                }
            }
        }
        if !dead.is_empty() {
            self.delete(&dead)?;
        }
        tracing::debug!(records = self.records.len(), "record store loaded");
        Ok(())
    }

    /// Checks `record` and stores it if it is new or newer than the one held. A held
    /// record that has expired, or no longer holds (its writecap expired or was revoked),
    /// is replaced whatever its sequence: it must not keep the path from its next holder.
    pub fn insert(&mut self, record: Record) -> Result<Inserted, StoreError> {
        let path_record = PathRecord::from_kad(
            &record.key,
            &record.value,
            keys::now(),
            &self.revocations.read(),
        )?;
        let sequence = path_record.sequence();
        let now_ms = now_ms();
        if sequence > now_ms.saturating_add(SEQUENCE_SLACK_MS) {
            return Err(RecordError::FromTheFuture {
                path: path_record.path().clone(),
                sequence,
                now_ms,
            }
            .into());
        }
        let mut evicted = None;
        match self.records.get(&record.key) {
            Some((held, _)) if held.value == record.value => return Ok(Inserted::Unchanged),
            Some((_, have)) if *have >= sequence && self.holds(&record.key) => {
                return Err(RecordError::Stale {
                    path: path_record.path().clone(),
                    have: *have,
                    got: sequence,
                }
                .into());
            }
            Some(_) => {}
            None if self.records.len() >= self.max_records => {
                // Room made from what no longer holds before refusing: what expired at
                // once, what lost its writecap at most every `SWEEP_EVERY`.
                let now = std::time::Instant::now();
                let verify = self
                    .swept_at
                    .is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY);
                if verify {
                    self.swept_at = Some(now);
                }
                let dead: Vec<RecordKey> = self
                    .records
                    .iter()
                    .filter(|(key, (record, _))| {
                        record.is_expired(now) || (verify && !self.holds(key))
                    })
                    .map(|(key, _)| key.clone())
                    .collect();
                self.delete(&dead)?;
                if self.records.len() >= self.max_records {
                    // Still full: the farthest record another node published gives way
                    // to a nearer one, and to any of this node's own (removed in the
                    // same transaction as the new record is written, below).
                    evicted = self.giving_way(&record.key, Some(path_record.peer_id()));
                    if evicted.is_none() {
                        return Err(StoreError::Full(self.records.len()));
                    }
                }
            }
            None => {}
        }
        if let Some(db) = &self.db {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(RECORDS).map_err(db_err)?;
                if let Some(key) = &evicted {
                    table.remove(key.as_ref()).map_err(db_err)?;
                }
                table
                    .insert(record.key.as_ref(), record.value.as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)?;
        }
        if let Some(key) = &evicted {
            tracing::debug!(evicted = ?key, "a full store made room for a nearer record");
            self.unindex(key);
            self.records.remove(key);
        }
        let kad = kad_record(record.key.clone(), record.value, &path_record);
        self.unindex(&record.key);
        self.index(&record.key, kad.publisher);
        self.records.insert(record.key, (kad, sequence));
        Ok(Inserted::New)
    }

    /// Whether the record held under `key` is unexpired and still holds (its writecap
    /// valid and unrevoked now).
    fn holds(&self, key: &RecordKey) -> bool {
        self.records
            .get(key)
            .is_some_and(|(record, _)| !record.is_expired(std::time::Instant::now()))
            && self.path_record(key).is_some()
    }

    /// The valid record of a key, decoded.
    pub fn path_record(&self, key: &RecordKey) -> Option<PathRecord> {
        let (record, _) = self.records.get(key)?;
        PathRecord::from_kad(key, &record.value, keys::now(), &self.revocations.read()).ok()
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Checks records against `revocations` from now on (lists the node takes later
    /// apply as they come): a record whose writecap is revoked is neither stored nor
    /// served.
    pub fn set_revocations(&mut self, revocations: SharedRevocations) {
        self.revocations = revocations;
    }

    /// The revocation lists records are checked against.
    pub fn revocations(&self) -> &SharedRevocations {
        &self.revocations
    }

    fn delete(&mut self, keys: &[RecordKey]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        if let Some(db) = &self.db {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(RECORDS).map_err(db_err)?;
                for key in keys {
                    table.remove(key.as_ref()).map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)?;
        }
        for key in keys {
            self.unindex(key);
            self.records.remove(key);
        }
        Ok(())
    }
}

fn kad_record(key: RecordKey, value: Vec<u8>, record: &PathRecord) -> Record {
    Record {
        key,
        value,
        publisher: Some(record.peer_id()),
        expires: Some(instant_of(record.expires())),
    }
}

type Entry = (Record, u64);
type RecordsIter<'a> = std::iter::Map<
    std::iter::Filter<
        std::collections::hash_map::Values<'a, RecordKey, Entry>,
        fn(&&'a Entry) -> bool,
    >,
    fn(&'a Entry) -> Cow<'a, Record>,
>;

fn borrow_record(entry: &Entry) -> Cow<'_, Record> {
    Cow::Borrowed(&entry.0)
}

/// How far a record's sequence (its writer's clock) may be ahead of ours: a day, far
/// beyond any clock drift.
const SEQUENCE_SLACK_MS: u64 = 24 * 3600 * 1000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn live(entry: &&Entry) -> bool {
    !entry.0.is_expired(std::time::Instant::now())
}

impl RecordStore for Store {
    type RecordsIter<'a> = RecordsIter<'a>;
    type ProvidedIter<'a> = std::iter::Empty<Cow<'a, ProviderRecord>>;

    fn get(&self, key: &RecordKey) -> Option<Cow<'_, Record>> {
        let (record, _) = self.records.get(key)?;
        if record.is_expired(std::time::Instant::now()) {
            return None;
        }
        // Checked when stored; checked again only where a revocation list may have come
        // since (a revoked node's record is not served).
        if !self.revocations.read().is_empty() {
            self.path_record(key)?;
        }
        Some(Cow::Borrowed(record))
    }

    fn put(&mut self, record: Record) -> store::Result<()> {
        match self.insert(record) {
            Ok(_) => Ok(()),
            Err(StoreError::Full(_)) => Err(store::Error::MaxRecords),
            Err(error) => {
                tracing::debug!(error = %error_chain(&error), "record not stored");
                // Kademlia's error type has no "invalid" or "I/O" case; the record is
                // simply not stored.
                Err(store::Error::ValueTooLarge)
            }
        }
    }

    fn remove(&mut self, key: &RecordKey) {
        if let Err(error) = self.delete(std::slice::from_ref(key)) {
            tracing::warn!(%error, "cannot remove record");
        }
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.records
            .values()
            .filter(live as fn(&&Entry) -> bool)
            .map(borrow_record as fn(&Entry) -> Cow<'_, Record>)
    }

    fn add_provider(&mut self, _record: ProviderRecord) -> store::Result<()> {
        Err(store::Error::MaxProvidedKeys)
    }

    fn providers(&self, _key: &RecordKey) -> Vec<ProviderRecord> {
        Vec::new()
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        std::iter::empty()
    }

    fn remove_provider(&mut self, _key: &RecordKey, _provider: &PeerId) {}
}

/// An error and its sources, joined with ": ".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
