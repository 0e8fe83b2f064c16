//! The daemon side of `btnode fs …`: the node's block store and replica, the block
//! protocol, repair, and the file system client that the commands drive.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fs::net::{self, Network};
use fs::{Client, Replica, repair};
use keys::{Identity, Path, Principal, PublicIdentity, Validity};
use protocols::block::{Request as BlockRequest, Response as BlockResponse};
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

use crate::caps;
use crate::control::{self, Response};

/// How the node stores and replicates files (from the config file).
#[derive(Debug, Clone)]
pub(crate) struct FsSettings {
    pub(crate) replicas: usize,
    pub(crate) write_quorum: usize,
    pub(crate) repair_interval: Duration,
    pub(crate) repair_bandwidth: u64,
    pub(crate) gc_grace: Duration,
    /// Whether mounts spin between requests that come close together
    /// ([`fs::fuse::Mount::spinning`]).
    pub(crate) fuse_spin: bool,
}

/// A file system command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub(crate) enum FsRequest {
    /// Store the local file `local` (an absolute path) at `path`; streams progress.
    Put {
        local: String,
        path: String,
    },
    /// Write the file at `path` to the local file `local`; streams progress.
    Get {
        path: String,
        local: String,
    },
    Ls {
        path: String,
    },
    Mkdir {
        path: String,
        parents: bool,
    },
    Rm {
        path: String,
    },
    Mv {
        from: String,
        to: String,
    },
    Stat {
        path: String,
    },
    Share {
        path: String,
        principal: String,
        write: bool,
        expires_secs: u64,
    },
    Revoke {
        path: String,
        principal: String,
    },
    /// Show the tree at `path` at the local directory `mountpoint` (absolute).
    Mount {
        path: String,
        mountpoint: String,
    },
    /// Unmount what `mount` showed at `mountpoint`.
    Umount {
        mountpoint: String,
    },
    /// The mounts of this daemon.
    Mounts,
}

impl FsRequest {
    pub(crate) fn streams(&self) -> bool {
        matches!(self, FsRequest::Put { .. } | FsRequest::Get { .. })
    }
}

/// What `btnode status` shows of the file system.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FsStatus {
    pub(crate) replicas: usize,
    pub(crate) write_quorum: usize,
    pub(crate) chunks: u64,
    pub(crate) chunk_bytes: u64,
    pub(crate) inodes: u64,
    pub(crate) versions: u64,
    /// Inode versions refused (forged, unauthorised, malformed, stale).
    pub(crate) refused_versions: u64,
    /// Chunks refused because their bytes did not match their id.
    pub(crate) refused_chunks: u64,
    /// Corrupt chunks found in this node's store and dropped (reads and scrubbing).
    pub(crate) corrupt_dropped: u64,
    /// Answers from other replicas that did not verify.
    pub(crate) bad_answers: u64,
    /// Block requests served.
    pub(crate) served: u64,
    /// Reads sent to one more replica because those asked were slow (hedged), and reads
    /// of versions that went on without the read quorum.
    #[serde(default)]
    pub(crate) hedged: u64,
    #[serde(default)]
    pub(crate) short_reads: u64,
    /// Chunks peers asked this node to store, and the commits that stored them.
    pub(crate) peer_chunks: u64,
    pub(crate) peer_chunk_commits: u64,
    pub(crate) repair: repair::Status,
}

pub(crate) struct Files {
    client: Arc<Client<Network>>,
    mounts:
        std::sync::Mutex<std::collections::BTreeMap<PathBuf, (String, fuser::BackgroundSession)>>,
    network: Arc<Network>,
    repair: Arc<repair::Counters>,
    data_dir: PathBuf,
    /// Whether mounts spin between requests ([`FsSettings::fuse_spin`]).
    fuse_spin: bool,
    principal: Principal,
    dht: dht::Client,
    /// This node's key, for the revocation lists it issues.
    key: keys::SigningKey,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Files {
    pub(crate) async fn start(
        data_dir: &FsPath,
        identity: Arc<Identity>,
        dht: dht::Client,
        settings: &FsSettings,
        revocations: keys::SharedRevocations,
        registry: Option<&mut prometheus_client::registry::Registry>,
    ) -> anyhow::Result<Files> {
        let file = data_dir.join("blocks.redb");
        // Opening may repair the store after a crash or move an older format's chunks:
        // minutes on a large store, so not on a runtime thread.
        let opening = file.clone();
        let store = tokio::task::spawn_blocking(move || fs::store::Store::open(&opening))
            .await
            .context("the block store's opening task failed")?
            .with_context(|| format!("cannot open the block store {}", file.display()))?;
        let replica = Replica::new(store).with_revocations(revocations);
        let counters = Arc::new(net::Counters::default());
        let config = net::Config {
            // A mount's writes to this node's own store are durable at `fsync` (or the next
            // periodic sync), as on a local file system; commands sync before answering.
            defer_own_writes: true,
            ..net::Config::new().with_replication(settings.replicas, settings.write_quorum)
        };
        let public = Arc::new(protocols::wire::encode(&identity.public())?);
        let serving = net::serve(
            replica.clone(),
            public.clone(),
            dht.streams(),
            &config,
            counters.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        let me = identity.signing_key().peer_id();
        let network = Arc::new(Network::new(
            replica,
            public,
            me,
            dht.clone(),
            config,
            counters,
        ));
        let repair = Arc::new(repair::Counters::default());
        let repair_config = repair::Config {
            interval: settings.repair_interval,
            // Two rounds: a holder waits out one of the holder that was to send.
            takeover: 2 * settings.repair_interval,
            bandwidth: settings.repair_bandwidth,
            gc: fs::gc::Config {
                grace: settings.gc_grace,
                ..fs::gc::Config::new()
            },
            ..repair::Config::new()
        };
        let repairing = repair::spawn(
            network.clone(),
            dht.membership(),
            repair_config,
            repair.clone(),
        );
        if let Some(registry) = registry {
            registry.register_collector(Box::new(Collector {
                network: network.clone(),
                repair: repair.clone(),
            }));
        }
        let principal = identity.principal();
        let key = identity.signing_key().clone();
        let chains = caps::installed(data_dir, &principal, keys::now());
        let client = Arc::new(Client::new(
            network.clone(),
            identity,
            chains,
            fs::Config {
                max_unsynced: settings.gc_grace / 2,
                stage_directories: true,
                ..fs::Config::new()
            },
        ));
        let syncing = tokio::spawn(sync_periodically(client.clone()));
        Ok(Files {
            client,
            mounts: std::sync::Mutex::default(),
            network,
            repair,
            data_dir: data_dir.to_path_buf(),
            fuse_spin: settings.fuse_spin,
            principal,
            dht,
            key,
            _tasks: vec![serving, repairing, syncing],
        })
    }

    /// Puts `caps` (writecaps this node granted) in this node's next revocation list:
    /// in force here at once, kept on disk, and published to the overlay (every node
    /// also republishes the lists it holds from time to time, for nodes that missed it).
    async fn revoke_writecaps(
        &self,
        caps: &[keys::CapId],
    ) -> anyhow::Result<Option<keys::RevocationList>> {
        if caps.is_empty() {
            return Ok(None);
        }
        let revocations = self.network.local().revocations();
        let mut attempts = 0;
        let list = loop {
            let list = crate::revocations::next(&revocations.read(), &self.key, caps, &[])?;
            match revocations.insert(&list) {
                Ok(()) => break list,
                // Another revocation took this sequence meanwhile: build on it.
                Err(keys::RevocationError::Stale { .. }) if attempts < 3 => attempts += 1,
                Err(e) => return Err(e.into()),
            }
        };
        crate::revocations::save(&self.data_dir, &list)?;
        let bytes = protocols::wire::encode(&list)?;
        if let Err(e) = self
            .dht
            .publish(btnode::actor::REVOCATION_TOPIC.to_string(), bytes)
            .await
        {
            tracing::warn!(error = %e, "the revocation list is in force here but not published yet; it will be republished");
        }
        Ok(Some(list))
    }

    pub(crate) fn status(&self) -> FsStatus {
        use std::sync::atomic::Ordering::Relaxed;
        let local = self.network.local();
        let stats = local.store().stats().unwrap_or_default();
        let net = self.network.counters();
        FsStatus {
            replicas: self.network.config().replicas,
            write_quorum: self.network.config().write_quorum,
            chunks: stats.chunks,
            chunk_bytes: stats.chunk_bytes,
            inodes: stats.inodes,
            versions: stats.versions,
            refused_versions: local.counters().refused_versions.load(Relaxed),
            refused_chunks: local.counters().refused_chunks.load(Relaxed),
            corrupt_dropped: local.counters().corrupt_dropped.load(Relaxed),
            bad_answers: net.bad_answers.load(Relaxed),
            served: net.served.load(Relaxed),
            hedged: net.hedged.load(Relaxed),
            short_reads: net.short_reads.load(Relaxed),
            peer_chunks: net.peer_chunks.load(Relaxed),
            peer_chunk_commits: net.peer_chunk_commits.load(Relaxed),
            repair: self.repair.status(),
        }
    }

    /// Picks up writecaps installed since start and those handed over in anchors.
    async fn refresh_caps(&self, path: &Path) {
        for chain in caps::installed(&self.data_dir, &self.principal, keys::now()) {
            self.client.add_chain(chain);
        }
        if let Err(e) = self.client.pick_up_grants(path).await {
            tracing::debug!(%path, error = %e, "could not look for writecap grants");
        }
    }

    pub(crate) async fn handle(&self, request: FsRequest) -> Response {
        match self.run(request).await {
            Ok(value) => Response::ok(value),
            Err(e) => Response::err(format!("{e:#}")),
        }
    }

    async fn run(&self, request: FsRequest) -> anyhow::Result<serde_json::Value> {
        // The paths the command changes: errors of the directories at, above and below
        // them fail it; those of directories staged elsewhere (a mount's) are logged.
        let mut touched: Vec<Path> = Vec::new();
        let value = match request {
            FsRequest::Ls { path } => {
                serde_json::to_value(self.client.readdir(&parse(&path)?).await?)?
            }
            FsRequest::Stat { path } => {
                serde_json::to_value(self.client.stat(&parse(&path)?).await?)?
            }
            FsRequest::Mkdir { path, parents } => {
                let path = parse(&path)?;
                touched.push(path.clone());
                self.refresh_caps(&path).await;
                if parents {
                    self.client.mkdir_all(&path).await?;
                } else {
                    self.client.mkdir(&path).await?;
                }
                serde_json::to_value(self.client.stat(&path).await?)?
            }
            FsRequest::Rm { path } => {
                let path = parse(&path)?;
                touched.push(path.clone());
                self.refresh_caps(&path).await;
                self.client.unlink(&path).await?;
                serde_json::json!({ "removed": path.to_string() })
            }
            FsRequest::Mv { from, to } => {
                let (from, to) = (parse(&from)?, parse(&to)?);
                touched.extend([from.clone(), to.clone()]);
                self.refresh_caps(&to).await;
                self.client.rename(&from, &to).await?;
                serde_json::to_value(self.client.stat(&to).await?)?
            }
            FsRequest::Share {
                path,
                principal,
                write,
                expires_secs,
            } => {
                let path = parse(&path)?;
                let principal: Principal = principal
                    .parse()
                    .map_err(|e| anyhow::anyhow!("{principal:?} is not a principal: {e}"))?;
                self.refresh_caps(&path).await;
                let identity = self.identity_of(&principal).await?;
                touched.push(path.clone());
                let write = write.then(|| Validity::for_seconds(expires_secs));
                if let Some(chain) = self.client.share(&path, &identity, write).await?
                    && let Some(link) = chain.links().last()
                {
                    crate::grants::record(&self.data_dir, principal, path.clone(), link.id())?;
                }
                serde_json::to_value(self.client.stat(&path).await?)?
            }
            FsRequest::Revoke { path, principal } => {
                let path = parse(&path)?;
                let principal: Principal = principal
                    .parse()
                    .map_err(|e| anyhow::anyhow!("{principal:?} is not a principal: {e}"))?;
                self.refresh_caps(&path).await;
                touched.push(path.clone());
                let granted = crate::grants::issued(&self.data_dir, &principal, &path)?;
                let revoked = self.client.revoke_with(&path, &principal, &granted).await?;
                let list = self.revoke_writecaps(&revoked.caps).await?;
                let mut value = serde_json::to_value(self.client.stat(&path).await?)?;
                value["revoked"] = serde_json::json!({
                    "writecaps": revoked.caps.len(),
                    "resigned_versions": revoked.resigned,
                    "not_resigned": revoked.not_resigned,
                    "granted_by_others": revoked
                        .granted_by_others
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>(),
                    "revocation_list": list.map(|l| l.sequence()),
                });
                value
            }
            FsRequest::Mount { path, mountpoint } => {
                let path = parse(&path)?;
                self.mount(&path, PathBuf::from(mountpoint)).await?
            }
            FsRequest::Umount { mountpoint } => {
                let mut value = self.umount(&PathBuf::from(mountpoint)).await?;
                // New names the mount made that cannot be written yet are said here:
                // nothing else will once it is gone (they are tried again meanwhile).
                if let Some(root) = value
                    .get("path")
                    .and_then(serde_json::Value::as_str)
                    .and_then(|p| parse(p).ok())
                {
                    // Tried once more, for a short while: a node cut off from its
                    // replicas does not hold the command for a request timeout per
                    // directory.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        self.client.flush_staged_for(&[&root]),
                    )
                    .await;
                    let unwritten: Vec<serde_json::Value> = self
                        .client
                        .unwritten()
                        .into_iter()
                        .filter(|(path, _)| path.starts_with(&root))
                        .map(|(path, error)| serde_json::json!({ "path": path.to_string(), "error": error }))
                        .collect();
                    if !unwritten.is_empty() {
                        value["unwritten"] = serde_json::Value::Array(unwritten);
                    }
                }
                value
            }
            FsRequest::Mounts => {
                let mounts = self
                    .mounts
                    .lock()
                    .map_err(|_| anyhow::anyhow!("mount table poisoned"))?;
                serde_json::to_value(
                    mounts
                        .iter()
                        .map(|(mp, (path, _))| serde_json::json!({ "mountpoint": mp.display().to_string(), "path": path }))
                        .collect::<Vec<_>>(),
                )?
            }
            FsRequest::Put { .. } | FsRequest::Get { .. } => {
                anyhow::bail!("put and get need their own connection")
            }
        };
        // What a command changed is durable before it is reported done (a mount's writes
        // become durable here too, or at its `fsync`, or at the next periodic sync).
        let touched: Vec<&Path> = touched.iter().collect();
        self.client.sync_for(&touched).await?;
        Ok(value)
    }

    async fn mount(&self, path: &Path, mountpoint: PathBuf) -> anyhow::Result<serde_json::Value> {
        use std::os::unix::fs::MetadataExt;
        self.refresh_caps(path).await;
        let stat = match self.client.stat(path).await {
            // A directory this node may create (the tree's root on first use, say).
            Err(fs::Error::NotFound { .. }) if self.client.can_write_under(path) => {
                self.client.mkdir_all(path).await?;
                self.client.stat(path).await?
            }
            other => other?,
        };
        anyhow::ensure!(
            stat.kind == fs::inode::Kind::Dir,
            "{path} is not a directory"
        );
        if self
            .mounts
            .lock()
            .map_err(|_| anyhow::anyhow!("mount table poisoned"))?
            .contains_key(&mountpoint)
        {
            anyhow::bail!("{} is mounted already", mountpoint.display());
        }
        let read_only = !self.client.can_write_under(path);
        let client = self.client.clone();
        let runtime = tokio::runtime::Handle::current();
        let root = path.clone();
        let mp = mountpoint.clone();
        let space = self.data_dir.clone();
        let spin = self.fuse_spin;
        let session = tokio::task::spawn_blocking(move || {
            // A stale mount of a killed daemon is cleaned first (inside `spawn`); the
            // files belong to whoever owns the mount point.
            let (uid, gid) = match std::fs::metadata(&mp) {
                Ok(m) => (m.uid(), m.gid()),
                Err(_) => (0, 0),
            };
            let mount = fs::fuse::Mount::new(client, runtime, root, uid, gid, space).spinning(spin);
            fs::fuse::spawn(mount, &mp, read_only)
        })
        .await?
        .with_context(|| format!("cannot mount at {}", mountpoint.display()))?;
        self.mounts
            .lock()
            .map_err(|_| anyhow::anyhow!("mount table poisoned"))?
            .insert(mountpoint.clone(), (path.to_string(), session));
        tracing::info!(%path, mountpoint = %mountpoint.display(), read_only, "mounted");
        Ok(serde_json::json!({
            "mountpoint": mountpoint.display().to_string(),
            "path": path.to_string(),
            "read_only": read_only,
        }))
    }

    async fn umount(&self, mountpoint: &FsPath) -> anyhow::Result<serde_json::Value> {
        let session = self
            .mounts
            .lock()
            .map_err(|_| anyhow::anyhow!("mount table poisoned"))?
            .remove(mountpoint);
        let Some((path, session)) = session else {
            anyhow::bail!(
                "nothing of this node is mounted at {}",
                mountpoint.display()
            );
        };
        tokio::task::spawn_blocking(move || session.umount_and_join())
            .await?
            .with_context(|| format!("cannot unmount {}", mountpoint.display()))?;
        Ok(serde_json::json!({ "unmounted": mountpoint.display().to_string(), "path": path }))
    }

    /// Unmounts everything and makes every write durable: the daemon is stopping.
    pub(crate) async fn stop(&self) {
        self.unmount_all().await;
        if let Err(e) = self.client.sync().await {
            tracing::warn!(error = %e, "writes since the last sync may not be durable");
        }
        // Files whose names could not be linked (their data is stored, but nothing
        // finds it once this node forgets what it staged), and directories removed
        // here whose check for names made elsewhere meanwhile is still owed.
        for (path, error) in self.client.unwritten() {
            tracing::error!(%path, %error, "left undone at this stop (a new name never written to its directory, a removal never written, or a removed directory never checked)");
        }
    }

    /// Unmounts everything.
    pub(crate) async fn unmount_all(&self) {
        let all: Vec<PathBuf> = self
            .mounts
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for mountpoint in all {
            if let Err(e) = self.umount(&mountpoint).await {
                tracing::warn!(mountpoint = %mountpoint.display(), error = %format!("{e:#}"), "cannot unmount");
            }
        }
    }

    /// Finds the public identity of `principal` by asking the peer it is (a node's
    /// principal and PeerId come from the same key).
    async fn identity_of(&self, principal: &Principal) -> anyhow::Result<PublicIdentity> {
        let peers = self.dht.peers().await?;
        let peer = peers
            .iter()
            .filter_map(|p| p.peer_id.parse::<libp2p::PeerId>().ok())
            .find(|p| keys::PublicKey::from_peer_id(p).is_some_and(|k| &k.principal() == principal))
            .with_context(|| {
                format!("{principal} is not a node connected to this one; share with a node that is online")
            })?;
        match self.network.request(peer, BlockRequest::Identity).await {
            Ok(BlockResponse::Identity { identity }) => {
                let identity: PublicIdentity = protocols::wire::decode(&identity)
                    .context("the peer's identity is malformed")?;
                identity
                    .verify()
                    .context("the peer's identity does not verify")?;
                anyhow::ensure!(
                    &identity.principal() == principal,
                    "the peer answered with another principal's identity"
                );
                Ok(identity)
            }
            Ok(other) => anyhow::bail!("the peer did not give its identity: {other:?}"),
            Err(e) => anyhow::bail!("cannot reach {principal}: {e}"),
        }
    }

    /// `put` and `get`: the answer, progress events, then a final event.
    pub(crate) async fn serve_streaming(&self, request: FsRequest, stream: UnixStream) {
        let (_reader, mut writer) = stream.into_split();
        let mut started = false;
        let result = match request {
            FsRequest::Put { local, path } => {
                self.put(&local, &path, &mut writer, &mut started).await
            }
            FsRequest::Get { path, local } => {
                self.get(&path, &local, &mut writer, &mut started).await
            }
            other => self.run(other).await,
        };
        // Before the first answer, a failure is the answer; after it, the last event.
        let last = match (result, started) {
            (Ok(value), true) => serde_json::json!({ "done": value }),
            (Ok(value), false) => {
                serde_json::to_value(Response::ok(serde_json::json!({ "done": value })))
                    .unwrap_or_default()
            }
            (Err(e), true) => serde_json::json!({ "error": format!("{e:#}") }),
            (Err(e), false) => {
                serde_json::to_value(Response::err(format!("{e:#}"))).unwrap_or_default()
            }
        };
        control::write_event(&mut writer, &last).await;
    }

    async fn put(
        &self,
        local: &str,
        path: &str,
        writer: &mut tokio::net::unix::OwnedWriteHalf,
        started: &mut bool,
    ) -> anyhow::Result<serde_json::Value> {
        let path = parse(path)?;
        let file = tokio::fs::File::open(local)
            .await
            .with_context(|| format!("cannot open {local}"))?;
        let total = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        control::write_event(writer, &Response::ok(serde_json::json!({ "total": total }))).await;
        *started = true;
        self.refresh_caps(&path).await;
        let (progress, mut updates) = tokio::sync::watch::channel(0u64);
        let put = self
            .client
            .put_file(&path, file.into_std().await, move |n| {
                progress.send_replace(n);
            });
        tokio::pin!(put);
        loop {
            tokio::select! {
                done = &mut put => {
                    let stat = done?;
                    // Acknowledged to the user: durable first.
                    self.client.sync_for(&[&path]).await?;
                    return Ok(serde_json::to_value(stat)?);
                }
                changed = updates.changed() => {
                    if changed.is_ok() {
                        let n = *updates.borrow_and_update();
                        control::write_event(writer, &serde_json::json!({ "progress": n })).await;
                    }
                }
            }
        }
    }

    async fn get(
        &self,
        path: &str,
        local: &str,
        writer: &mut tokio::net::unix::OwnedWriteHalf,
        started: &mut bool,
    ) -> anyhow::Result<serde_json::Value> {
        let path = parse(path)?;
        let stat = self.client.stat(&path).await?;
        control::write_event(
            writer,
            &Response::ok(serde_json::json!({ "total": stat.size })),
        )
        .await;
        *started = true;
        // Into a temporary file beside the target, renamed when complete: a failed get
        // leaves no partial file behind.
        let target = PathBuf::from(local);
        let name = target
            .file_name()
            .context("the local path names no file")?
            .to_string_lossy()
            .into_owned();
        // A name no one can have made ready for us (a symbolic link or a file another
        // user can read, in a shared directory such as /tmp), created afresh and
        // readable by this user alone until it is complete.
        // The name cut short so that the whole fits in a name (255 bytes): a target name
        // over 222 bytes could never be got.
        let mut cut = name.len().min(200);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        let tmp = target.with_file_name(format!(
            ".{}.{:016x}.btnode-partial",
            &name[..cut],
            rand::random::<u64>()
        ));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .await
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let file = file.into_std().await;
        let (progress, mut updates) = tokio::sync::watch::channel(0u64);
        let result = {
            let get = self.client.get_file(&path, file, move |n| {
                progress.send_replace(n);
            });
            tokio::pin!(get);
            loop {
                tokio::select! {
                    done = &mut get => break done,
                    changed = updates.changed() => {
                        if changed.is_ok() {
                            let n = *updates.borrow_and_update();
                            control::write_event(writer, &serde_json::json!({ "progress": n })).await;
                        }
                    }
                }
            }
        };
        let finished = match result {
            Ok((bytes, file)) => {
                // The file it replaces keeps its mode (a private file stays private); a
                // new one is readable by all, as a file a program writes usually is.
                use std::os::unix::fs::PermissionsExt;
                let mode = match tokio::fs::symlink_metadata(&target).await {
                    Ok(held) if held.is_file() => held.permissions().mode() & 0o7777,
                    _ => 0o644,
                };
                tokio::task::spawn_blocking(move || {
                    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
                    file.sync_all()
                })
                .await
                .context("syncing the file got")??;
                tokio::fs::rename(&tmp, &target)
                    .await
                    .with_context(|| format!("cannot write {}", target.display()))?;
                // The rename is kept only once its directory is synced: without that, a
                // crash just after the get returned could leave the old file (or none).
                let dir = match target.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
                    .await
                    .context("syncing the directory got")?
                    .with_context(|| {
                        format!("cannot sync the directory of {}", target.display())
                    })?;
                Ok(serde_json::json!({ "bytes": bytes, "local": target.display().to_string() }))
            }
            Err(e) => Err(anyhow::Error::new(e)),
        };
        if finished.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        finished
    }
}

fn parse(text: &str) -> anyhow::Result<Path> {
    text.parse::<Path>()
        .map_err(|e| anyhow::anyhow!("{text:?} is not a blocktree path: {e}"))
}

/// The file system's metrics, read at each scrape.
#[derive(Debug)]
struct Collector {
    network: Arc<Network>,
    repair: Arc<repair::Counters>,
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use std::sync::atomic::Ordering::Relaxed;
        let local = self.network.local();
        let stats = local.store().stats().unwrap_or_default();
        let gauges = [
            (
                "blocktree_fs_under_replicated",
                "Items held here that lacked copies on the nodes they belong on after the last repair round",
                self.repair.under_replicated.load(Relaxed),
            ),
            (
                "blocktree_fs_chunks",
                "Chunks in this node's block store",
                stats.chunks,
            ),
            (
                "blocktree_fs_chunk_bytes",
                "Bytes of chunks in this node's block store",
                stats.chunk_bytes,
            ),
            (
                "blocktree_fs_inode_versions",
                "Inode versions in this node's block store",
                stats.versions,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let counters = [
            (
                "blocktree_fs_repair_bytes",
                "Bytes sent by repair",
                self.repair.bytes_sent.load(Relaxed),
            ),
            (
                "blocktree_fs_repair_copies",
                "Copies sent by repair",
                self.repair.copies_sent.load(Relaxed),
            ),
            (
                "blocktree_fs_repair_taken_over",
                "Items this node sent after they stayed short while another holder was to send",
                self.repair.taken_over.load(Relaxed),
            ),
            (
                "blocktree_fs_repair_handed_off",
                "Copies held away from where they belong, dropped once the R nodes there held them",
                self.repair.handed_off.load(Relaxed),
            ),
            (
                "blocktree_fs_repair_rounds",
                "Repair rounds finished",
                self.repair.rounds.load(Relaxed),
            ),
            (
                "blocktree_fs_corrupt_dropped",
                "Corrupt chunks found in this node's store and dropped",
                local.counters().corrupt_dropped.load(Relaxed),
            ),
            (
                "blocktree_fs_refused_versions",
                "Inode versions refused (forged, unauthorised, malformed, stale)",
                local.counters().refused_versions.load(Relaxed),
            ),
            (
                "blocktree_fs_bad_answers",
                "Answers from replicas that did not verify",
                self.network.counters().bad_answers.load(Relaxed),
            ),
            (
                "blocktree_fs_reads_hedged",
                "Reads sent to one more replica because those asked were slow",
                self.network.counters().hedged.load(Relaxed),
            ),
            (
                "blocktree_fs_reads_short",
                "Reads of versions that went on without the read quorum, the rest silent",
                self.network.counters().short_reads.load(Relaxed),
            ),
            (
                "blocktree_fs_peer_chunks",
                "Chunks peers asked this node to store",
                self.network.counters().peer_chunks.load(Relaxed),
            ),
            (
                "blocktree_fs_peer_chunk_commits",
                "Commits that stored chunks from peers (several per commit when they arrive together)",
                self.network.counters().peer_chunk_commits.load(Relaxed),
            ),
            (
                "blocktree_fs_repair_surveyed",
                "Items repair placed and asked their nodes about",
                self.repair.surveyed.load(Relaxed),
            ),
            (
                "blocktree_fs_lookups_put",
                "Overlay lookups of where an item belongs, for writes",
                self.network.counters().lookups.put.load(Relaxed),
            ),
            (
                "blocktree_fs_lookups_get",
                "Overlay lookups of where an item belongs, for reads",
                self.network.counters().lookups.get.load(Relaxed),
            ),
            (
                "blocktree_fs_lookups_repair",
                "Overlay lookups of where an item belongs, for repair",
                self.network.counters().lookups.repair.load(Relaxed),
            ),
            (
                "blocktree_fs_lookups_collect",
                "Overlay lookups of where an inode belongs, for collection of unreferenced chunks",
                self.network.counters().lookups.collect.load(Relaxed),
            ),
            (
                "blocktree_fs_lookups_wider",
                "Wider overlay lookups of reads that found nothing among an item's nearest nodes",
                self.network.counters().lookups.wider.load(Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// How long a write this node's store took without waiting for the disk (a mount's, not
/// yet `fsync`ed) may stay not durable: the most a crash of the daemon loses.
pub(crate) const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a directory change of a mount (a file created or removed) may stay staged in
/// this node's client before it is written, and so how much later other nodes see it.
pub(crate) const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Writes staged directory changes every [`FLUSH_INTERVAL`] and makes deferred writes
/// durable every [`SYNC_INTERVAL`].
async fn sync_periodically(client: Arc<Client<Network>>) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut synced = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if synced.elapsed() >= SYNC_INTERVAL {
            synced = tokio::time::Instant::now();
            if let Err(e) = client.sync_due().await {
                tracing::warn!(error = %e, "cannot make deferred writes durable");
            }
        } else {
            // A directory that cannot be written is logged by the flush, stays staged and
            // is tried again later and later.
            client.flush_due().await;
        }
    }
}
