//! `btnode run`: the daemon.

use std::collections::BTreeSet;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use keys::Path;
use tokio::net::UnixStream;
use tokio::sync::Semaphore;

use crate::caps;
use crate::control::{self, Request, Response};
use crate::identity::NodeIdentity;
use crate::messaging::Messaging;

/// What `btnode status` shows: the overlay and the actor runtime.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Status {
    #[serde(flatten)]
    pub(crate) node: dht::Status,
    pub(crate) actors: btnode::actor::Status,
    pub(crate) fs: crate::files::FsStatus,
}

/// Most control connections served at once.
const MAX_CONTROL_CONNECTIONS: usize = 32;

const REGISTERED: &str = "registered.json";

/// Runs the daemon until SIGINT or SIGTERM.
pub(crate) async fn run(
    data_dir: PathBuf,
    node: NodeIdentity,
    config: dht::Config,
    metrics: Option<std::net::SocketAddr>,
    fs_settings: crate::files::FsSettings,
) -> anyhow::Result<()> {
    // Before anything else: a SIGINT or SIGTERM that comes while the node starts (after
    // the control socket is announced, say) stops it cleanly once it has started, instead
    // of killing it by the default action with its stores half open.
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    // First, so that a second daemon on the same data directory is told so plainly.
    let (listener, socket) = control::bind(&data_dir).await?;
    let _socket_guard = SocketGuard(socket.clone());
    // The revocation lists in force, before anything checks a writecap.
    let revocations = keys::SharedRevocations::default();
    for list in crate::revocations::load(&data_dir)? {
        if let Err(e) = revocations.insert(&list) {
            tracing::warn!(issuer = %list.issuer(), error = %e, "skipping a kept revocation list");
        }
    }
    let records = data_dir.join("records.redb");
    let mut store = dht::Store::open(&records, config.max_records)
        .with_context(|| format!("cannot open the record store {}", records.display()))?;
    store.set_revocations(revocations.clone());
    let key = node.identity.signing_key().clone();
    let principal = key.principal();
    let joining = !config.bootstrap.is_empty();
    let mut registry = metrics.map(|_| prometheus_client::registry::Registry::default());
    let (client, task) = dht::start_with_metrics(
        key,
        config,
        store,
        dht::Transports::Network,
        registry.as_mut(),
    )
    .await
    .context("cannot start the overlay")?;
    let files = crate::files::Files::start(
        &data_dir,
        Arc::new(
            keys::Identity::from_secret_bytes(&node.identity.to_secret_bytes())
                .context("cannot copy the node's keys")?,
        ),
        client.clone(),
        &fs_settings,
        revocations.clone(),
        registry.as_mut(),
    )
    .await
    .context("cannot start the file system")?;
    let _metrics_task = match (metrics, registry) {
        (Some(address), Some(registry)) => {
            Some(crate::metrics::serve(address, Arc::new(registry)).await?)
        }
        _ => None,
    };
    let status = client.status().await?;
    println!("btnode {} (principal {principal})", status.peer_id);
    if joining {
        println!("joining an existing overlay");
    } else {
        println!("started a new overlay; others join it with `btnode --bootstrap <address>`:");
    }
    for address in &status.listen_addrs {
        println!("listening on {address}");
    }
    println!("control socket {}", socket.display());
    tracing::info!(key_store = %node.key_store, reason = %node.reason, "node keys unsealed");

    let chains = caps::installed(&data_dir, &principal, keys::now());
    let runtime = btnode::actor::Runtime::start(
        client.clone(),
        node.identity.signing_key(),
        chains.clone(),
        btnode::actor::Config::new().with_revocations(revocations),
    )
    .await
    .context("cannot start the actor runtime")?;
    let _revocation_tasks = [
        tokio::spawn(keep_revocations(
            data_dir.clone(),
            runtime.revocations().clone(),
            runtime.revocations_taken(),
        )),
        tokio::spawn(republish_revocations(runtime.clone(), principal)),
    ];
    let daemon = Arc::new(Daemon {
        files,
        data_dir: data_dir.clone(),
        client: client.clone(),
        messaging: Messaging::new(runtime, data_dir.clone(), principal),
        principal,
        registered: tokio::sync::Mutex::new(load_registered(&data_dir)),
    });
    daemon.reregister().await;

    let permits = Arc::new(Semaphore::new(MAX_CONTROL_CONNECTIONS));
    let result = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((mut stream, _)) => {
                    // Never waited for here: a loop stuck on a slot would hear no signal
                    // (SIGTERM waited for a client to leave). A client past the limit is
                    // told so at once.
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        tokio::spawn(async move {
                            let busy = control::Response::err(format!(
                                "the daemon is serving {MAX_CONTROL_CONNECTIONS} control connections; try again"
                            ));
                            let _ = tokio::time::timeout(
                                std::time::Duration::from_secs(1),
                                control::write_response(&mut stream, &busy),
                            )
                            .await;
                        });
                        continue;
                    };
                    let daemon = daemon.clone();
                    tokio::spawn(async move {
                        daemon.serve(stream).await;
                        drop(permit);
                    });
                }
                Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
            },
            _ = interrupt.recv() => break Ok(()),
            _ = terminate.recv() => break Ok(()),
        }
    };
    tracing::info!("stopping");
    daemon.files.stop().await;
    let _ = client.shutdown().await;
    let _ = task.await;
    println!("stopped");
    result
}

struct Daemon {
    files: crate::files::Files,
    data_dir: PathBuf,
    client: dht::Client,
    messaging: Messaging,
    principal: keys::Principal,
    registered: tokio::sync::Mutex<BTreeSet<String>>,
}

impl Daemon {
    /// Puts a revocation list the CLI signed in force here, keeps it, and publishes it.
    async fn revoke(&self, bytes: &[u8]) -> anyhow::Result<serde_json::Value> {
        let list: keys::RevocationList =
            protocols::wire::decode(bytes).context("not a revocation list")?;
        let runtime = self.messaging.runtime();
        runtime.take_revocations(&list)?;
        crate::revocations::save(&self.data_dir, &list)?;
        let published = runtime.publish_revocations(&list).await;
        if let Err(e) = &published {
            tracing::warn!(error = %e, "the revocation list is in force here but not published yet; it will be republished");
        }
        Ok(serde_json::json!({
            "issuer": list.issuer().to_string(),
            "sequence": list.sequence(),
            "entries": list.len(),
            "published": published.is_ok(),
        }))
    }

    async fn serve(&self, mut stream: UnixStream) {
        let response = match control::read_request(&mut stream).await {
            Ok(Request::Subscribe { topic }) => {
                return self.messaging.subscribe(&topic, stream).await;
            }
            Ok(Request::Listen { path }) => return self.messaging.listen(&path, stream).await,
            Ok(Request::Fs(request)) if request.streams() => {
                return self.files.serve_streaming(request, stream).await;
            }
            Ok(request) => self.handle(request).await,
            Err(e) => Response::err(e),
        };
        control::write_response(&mut stream, &response).await;
    }

    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status => match self.client.status().await {
                Ok(node) => Response::ok(Status {
                    node,
                    actors: self.messaging.runtime().status(),
                    fs: self.files.status(),
                }),
                Err(e) => Response::err(e),
            },
            Request::Fs(request) => self.files.handle(request).await,
            Request::Revoke { list } => match self.revoke(&list).await {
                Ok(value) => Response::ok(value),
                Err(e) => Response::err(format!("{e:#}")),
            },
            Request::Tell(m) => self.messaging.tell(m).await,
            Request::Ask(m) => self.messaging.ask(m).await,
            Request::Publish(m) => self.messaging.publish(m).await,
            // Streaming requests are served above.
            Request::Subscribe { .. } | Request::Listen { .. } => {
                Response::err("a streaming request needs its own connection")
            }
            Request::Peers => match self.client.peers().await {
                Ok(peers) => Response::ok(peers),
                Err(e) => Response::err(e),
            },
            Request::Register { path } => match self.register(&path).await {
                Ok(registered) => Response::ok(registered),
                Err(e) => Response::err(format!("{e:#}")),
            },
            Request::Resolve { path } => match path.parse::<Path>() {
                Ok(path) => match self.client.resolve(path).await {
                    Ok(resolution) => Response::ok(resolution),
                    Err(e) => Response::err(e),
                },
                Err(e) => Response::err(format!("{path:?} is not a path: {e}")),
            },
        }
    }

    async fn register(&self, text: &str) -> anyhow::Result<dht::Registered> {
        let path: Path = text
            .parse()
            .with_context(|| format!("{text:?} is not a path"))?;
        let chain = caps::covering(&self.data_dir, &path, &self.principal).with_context(|| {
            format!(
                "no installed writecap lets this node ({}) register {path}: get one with \
                 `btnode cap grant {} <prefix>` on the tree's root node and install it with \
                 `btnode cap install <file>`",
                self.principal, self.principal
            )
        })?;
        let registered = self.client.register(path.clone(), chain).await?;
        let mut paths = self.registered.lock().await;
        if paths.insert(path.to_string()) {
            save_registered(&self.data_dir, &paths);
        }
        Ok(registered)
    }

    /// Registers again, after a restart, what this node had registered.
    async fn reregister(&self) {
        let paths: Vec<String> = self.registered.lock().await.iter().cloned().collect();
        for path in paths {
            match self.register(&path).await {
                Ok(r) => tracing::info!(path = %r.path, sequence = r.sequence, "registered again"),
                Err(e) => tracing::warn!(%path, error = %format!("{e:#}"), "cannot register again"),
            }
        }
    }
}

/// Writes every revocation list the runtime takes from the overlay to the data
/// directory (lists issued here are written before they are published).
async fn keep_revocations(
    data_dir: PathBuf,
    revocations: keys::SharedRevocations,
    mut taken: tokio::sync::broadcast::Receiver<keys::RevocationList>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let lists: Vec<keys::RevocationList> = match taken.recv().await {
            Ok(list) => vec![list],
            // Lists came faster than they were written: every list in force, then.
            Err(RecvError::Lagged(_)) => revocations.read().lists().cloned().collect(),
            Err(RecvError::Closed) => return,
        };
        let dir = data_dir.clone();
        let saved = tokio::task::spawn_blocking(move || {
            lists
                .iter()
                .try_for_each(|list| crate::revocations::save(&dir, list))
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot keep a revocation list")
            }
            Err(e) => tracing::warn!(error = %e, "the task keeping revocation lists failed"),
        }
    }
}

/// How often a node publishes its own revocation lists again, for nodes that were away
/// when they were first published; every [`REPUBLISH_ALL_EVERY`]th time it publishes
/// every list it holds (their issuers may be away themselves).
const REPUBLISH_EVERY: std::time::Duration = std::time::Duration::from_secs(600);
const REPUBLISH_ALL_EVERY: u32 = 6;
const REPUBLISH_FIRST: std::time::Duration = std::time::Duration::from_secs(10);

async fn republish_revocations(runtime: btnode::actor::Runtime, me: keys::Principal) {
    let mut round = 0u32;
    // Once soon after start too: lists taken while the node was down (issued by the
    // CLI, or kept from before) reach the overlay without waiting a whole interval.
    tokio::time::sleep(REPUBLISH_FIRST).await;
    let lists: Vec<keys::RevocationList> = runtime.revocations().read().lists().cloned().collect();
    for list in lists {
        if let Err(e) = runtime.publish_revocations(&list).await {
            tracing::debug!(error = %e, "cannot republish a revocation list");
        }
    }
    loop {
        // Spread out, so that holders of a list do not all publish it at once.
        let jitter = rand::random::<u64>() % (REPUBLISH_EVERY.as_secs() / 5);
        tokio::time::sleep(REPUBLISH_EVERY + std::time::Duration::from_secs(jitter)).await;
        round = round.wrapping_add(1);
        let lists: Vec<keys::RevocationList> = runtime
            .revocations()
            .read()
            .lists()
            .filter(|l| l.issuer() == me || round.is_multiple_of(REPUBLISH_ALL_EVERY))
            .cloned()
            .collect();
        for list in lists {
            if let Err(e) = runtime.publish_revocations(&list).await {
                tracing::debug!(error = %e, "cannot republish a revocation list");
            }
        }
    }
}

fn load_registered(data_dir: &FsPath) -> BTreeSet<String> {
    let file = data_dir.join(REGISTERED);
    match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(file = %file.display(), error = %e, "ignoring an unreadable list of registrations");
            BTreeSet::new()
        }),
        Err(_) => BTreeSet::new(),
    }
}

fn save_registered(data_dir: &FsPath, paths: &BTreeSet<String>) {
    let file = data_dir.join(REGISTERED);
    let result = serde_json::to_vec_pretty(paths)
        .map_err(std::io::Error::other)
        .and_then(|bytes| crate::atomic::write(&file, &bytes));
    if let Err(e) = result {
        tracing::warn!(file = %file.display(), error = %e, "cannot save the list of registrations");
    }
}

/// Removes the control socket however the daemon ends.
struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
