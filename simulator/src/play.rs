//! Playing a schedule against real overlay nodes (`dht`, the node's own code) on the
//! memory transport, in scaled time, and measuring what the overlay does.
//!
//! A join starts a node that bootstraps through a node on line and registers its paths;
//! a graceful leave shuts it down; a crash drops it without a word (its connections
//! close, as a killed process's would). A resolution is timed from the call to the
//! answer and counts as a success when it names the node that registered the path. One
//! whose path is not yet registered (its node joined moments ago and is still
//! registering) is counted apart as "not yet registered", not as a failure.

use std::collections::HashMap;
use std::time::Duration;

use keys::{Chain, Path, SigningKey, Validity};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::scenario::Scenario;
use crate::schedule::{EventKind, Schedule};

/// The generator stream the nodes' keys come from (the schedule uses 1 and 2).
const KEYS: u64 = 3;

/// How long a resolution may take before it counts as failed.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the run measured in one window of simulated time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// The window's start, in simulated seconds.
    pub at_secs: u64,
    /// Nodes on line at its end.
    pub live: u32,
    /// Resolutions that named the right node.
    pub resolved: u64,
    /// Resolutions that failed or named another node.
    pub failed: u64,
    /// Resolutions of paths still being registered.
    pub not_yet_registered: u64,
    /// Latency of the successful ones, p50, in milliseconds (real time).
    pub latency_p50_ms: f64,
    /// And p99.
    pub latency_p99_ms: f64,
}

/// The run's report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Windows of one simulated minute.
    pub windows: Vec<Window>,
    /// Resolutions that named the right node.
    pub resolved: u64,
    /// Resolutions that failed or named another node.
    pub failed: u64,
    /// Resolutions of paths still being registered.
    pub not_yet_registered: u64,
    /// resolved / (resolved + failed).
    pub success_rate: f64,
    /// Latency p50 and p99 over the run, milliseconds.
    pub latency_p50_ms: f64,
    /// p99.
    pub latency_p99_ms: f64,
    /// Kademlia requests per resolution, median.
    pub requests_p50: f64,
    /// Wall-clock seconds the run took.
    pub wall_secs: f64,
    /// The process's largest resident set seen (sampled each simulated minute), MiB.
    pub peak_rss_mib: f64,
    /// Most nodes on line at once.
    pub peak_live: u32,
    /// Peak resident set per node at the peak, MiB (the whole process, runtime included).
    pub rss_per_node_mib: f64,
    /// Choices below the overlay that let many nodes share one process.
    pub notes: Vec<String>,
}

struct Running {
    key: SigningKey,
    client: dht::Client,
    task: tokio::task::JoinHandle<()>,
    address: Multiaddr,
    registered: Vec<bool>,
}

enum Outcome {
    Registered {
        node: u32,
        name: u32,
        epoch: u64,
    },
    Resolved {
        window: usize,
        latency: Duration,
        requests: u32,
    },
    Failed {
        window: usize,
    },
}

/// The overlay settings of simulated nodes: the node's own defaults, with pings slowed to
/// the time scale so that a thousand idle nodes fit on two cores.
fn node_config(scenario: &Scenario, bootstrap: Option<Multiaddr>) -> dht::Config {
    let mut config = dht::Config::new()
        .with_listen(vec![Multiaddr::from(libp2p::multiaddr::Protocol::Memory(
            0,
        ))])
        .with_bootstrap(bootstrap.into_iter().collect());
    let scale = scenario.time_scale.max(1.0);
    config.ping_interval = Duration::from_secs_f64((4.0 * scale).min(60.0));
    config
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() - 1) as f64 * p / 100.0).round() as usize;
    samples[i]
}

/// Plays `schedule` and reports; `progress` is called with the share done (0 to 1).
pub async fn play(
    scenario: &Scenario,
    schedule: &Schedule,
    mut progress: impl FnMut(f64),
) -> Report {
    let started = std::time::Instant::now();
    // Keys come from the seed too (their own stream), so a seed replays the same PeerIds
    // and so the same Kademlia distances; what still varies is timing.
    let mut keys = {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(schedule.seed);
        rng.set_stream(KEYS);
        rng
    };
    let mut next_key = move || {
        use rand::RngCore;
        let mut secret = [0u8; 32];
        keys.fill_bytes(&mut secret);
        SigningKey::from_bytes(&secret)
    };
    let root = next_key();
    let tree = Path::root_of(root.principal());
    let scale = scenario.time_scale;
    let window_ms = 60_000u64;
    let windows = (scenario.duration_secs * 1000).div_ceil(window_ms) as usize;
    let mut report = Report {
        scenario: scenario.name.clone(),
        seed: schedule.seed,
        windows: (0..windows)
            .map(|i| Window {
                at_secs: i as u64 * 60,
                ..Window::default()
            })
            .collect(),
        notes: vec![
            "memory transport (Noise and Yamux as on TCP)".into(),
            format!(
                "time scaled {scale}×; pings every {:.0} s of real time",
                (4.0 * scale.max(1.0)).min(60.0)
            ),
        ],
        ..Report::default()
    };
    let mut nodes: HashMap<u32, Running> = HashMap::new();
    // Each join of a node is an epoch; a registration of an earlier epoch is stale.
    let mut epochs: HashMap<u32, u64> = HashMap::new();
    let mut peers: HashMap<u32, PeerId> = HashMap::new();
    let (outcomes, mut results) = mpsc::channel::<Outcome>(65_536);
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); windows];
    let mut requests: Vec<f64> = Vec::new();
    let begin = Instant::now();
    let total = schedule.events.len().max(1);
    let mut sampled_window = usize::MAX;
    let path_of = |node: u32, name: u32| -> Option<Path> {
        tree.join(&format!("n{node}"))
            .ok()?
            .join(&format!("p{name}"))
            .ok()
    };
    for (done, event) in schedule.events.iter().enumerate() {
        let due = begin + Duration::from_secs_f64(event.at_ms as f64 / 1000.0 / scale);
        // Take in what finished meanwhile while waiting for the event's moment.
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(due) => break,
                outcome = results.recv() => match outcome {
                    Some(o) => record(o, &mut report, &mut latencies, &mut requests, &mut nodes, &epochs),
                    None => break,
                },
            }
        }
        let window = ((event.at_ms / window_ms) as usize).min(windows.saturating_sub(1));
        match event.kind {
            EventKind::Join { node } => {
                let bootstrap = nodes.values().next().map(|n| n.address.clone());
                let key = next_key();
                let store = match dht::Store::in_memory(10_000) {
                    Ok(store) => store,
                    Err(_) => continue,
                };
                let config = node_config(scenario, bootstrap);
                let Ok((client, task)) =
                    dht::start(key.clone(), config, store, dht::Transports::Memory).await
                else {
                    continue;
                };
                let address = match client.status().await {
                    Ok(status) => status
                        .listen_addrs
                        .first()
                        .and_then(|a| a.parse().ok())
                        .unwrap_or_else(Multiaddr::empty),
                    Err(_) => Multiaddr::empty(),
                };
                epochs.entry(node).and_modify(|e| *e += 1).or_insert(0);
                peers.insert(node, key.peer_id());
                nodes.insert(
                    node,
                    Running {
                        key,
                        client,
                        task,
                        address,
                        registered: vec![
                            false;
                            scenario.workload.registrations_per_session as usize
                        ],
                    },
                );
            }
            EventKind::Register { node, name } => {
                let (Some(running), Some(path)) = (nodes.get(&node), path_of(node, name)) else {
                    continue;
                };
                let chain = Chain::root_grant(
                    &root,
                    running.key.principal(),
                    path.clone(),
                    Validity::for_seconds(scenario.duration_secs + 3600),
                );
                let client = running.client.clone();
                let outcomes = outcomes.clone();
                let epoch = epochs.get(&node).copied().unwrap_or(0);
                tokio::spawn(async move {
                    if client.register(path, chain).await.is_ok() {
                        let _ = outcomes
                            .send(Outcome::Registered { node, name, epoch })
                            .await;
                    }
                });
            }
            EventKind::Leave { node } => {
                if let Some(running) = nodes.remove(&node) {
                    let _ = running.client.shutdown().await;
                    running.task.abort();
                }
            }
            EventKind::Crash { node } => {
                if let Some(running) = nodes.remove(&node) {
                    running.task.abort();
                }
            }
            EventKind::Resolve { from, node, name } => {
                let (Some(asker), Some(target), Some(path)) =
                    (nodes.get(&from), nodes.get(&node), path_of(node, name))
                else {
                    continue;
                };
                if !target
                    .registered
                    .get(name as usize)
                    .copied()
                    .unwrap_or(false)
                {
                    report.not_yet_registered += 1;
                    report.windows[window].not_yet_registered += 1;
                    continue;
                }
                let expected = peers.get(&node).copied();
                let client = asker.client.clone();
                let outcomes = outcomes.clone();
                tokio::spawn(async move {
                    let asked = Instant::now();
                    let answer = tokio::time::timeout(RESOLVE_TIMEOUT, client.resolve(path)).await;
                    let outcome = match answer {
                        Ok(Ok(r))
                            if Some(r.peer_id.as_str())
                                == expected.map(|p| p.to_string()).as_deref() =>
                        {
                            Outcome::Resolved {
                                window,
                                latency: asked.elapsed(),
                                requests: r.requests,
                            }
                        }
                        _ => Outcome::Failed { window },
                    };
                    let _ = outcomes.send(outcome).await;
                });
            }
        }
        if let Some(w) = report.windows.get_mut(window) {
            w.live = nodes.len() as u32;
        }
        report.peak_live = report.peak_live.max(nodes.len() as u32);
        if window != sampled_window {
            sampled_window = window;
            report.peak_rss_mib = report.peak_rss_mib.max(rss_mib());
        }
        if done % 256 == 0 {
            progress(done as f64 / total as f64);
        }
    }
    // Let the last resolutions finish.
    drop(outcomes);
    let drain = Instant::now() + RESOLVE_TIMEOUT + Duration::from_secs(1);
    while let Ok(Some(o)) = tokio::time::timeout_at(drain, results.recv()).await {
        record(
            o,
            &mut report,
            &mut latencies,
            &mut requests,
            &mut nodes,
            &epochs,
        );
    }
    for running in nodes.into_values() {
        let _ = running.client.shutdown().await;
        running.task.abort();
    }
    let mut all: Vec<f64> = Vec::new();
    for (w, samples) in report.windows.iter_mut().zip(latencies.iter_mut()) {
        all.extend_from_slice(samples);
        w.latency_p50_ms = percentile(samples, 50.0);
        w.latency_p99_ms = percentile(samples, 99.0);
    }
    report.latency_p50_ms = percentile(&mut all, 50.0);
    report.latency_p99_ms = percentile(&mut all, 99.0);
    report.requests_p50 = percentile(&mut requests, 50.0);
    let asked = report.resolved + report.failed;
    report.success_rate = if asked == 0 {
        1.0
    } else {
        report.resolved as f64 / asked as f64
    };
    report.wall_secs = started.elapsed().as_secs_f64();
    report.peak_rss_mib = report.peak_rss_mib.max(rss_mib());
    report.rss_per_node_mib = report.peak_rss_mib / f64::from(report.peak_live.max(1));
    progress(1.0);
    report
}

/// This process's resident set, MiB (0 where `/proc` is not there).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn record(
    outcome: Outcome,
    report: &mut Report,
    latencies: &mut [Vec<f64>],
    requests: &mut Vec<f64>,
    nodes: &mut HashMap<u32, Running>,
    epochs: &HashMap<u32, u64>,
) {
    match outcome {
        Outcome::Registered { node, name, epoch } => {
            if epochs.get(&node) == Some(&epoch)
                && let Some(slot) = nodes
                    .get_mut(&node)
                    .and_then(|n| n.registered.get_mut(name as usize))
            {
                *slot = true;
            }
        }
        Outcome::Resolved {
            window,
            latency,
            requests: r,
        } => {
            report.resolved += 1;
            if let Some(w) = report.windows.get_mut(window) {
                w.resolved += 1;
            }
            if let Some(samples) = latencies.get_mut(window) {
                samples.push(latency.as_secs_f64() * 1000.0);
            }
            requests.push(f64::from(r));
        }
        Outcome::Failed { window } => {
            report.failed += 1;
            if let Some(w) = report.windows.get_mut(window) {
                w.failed += 1;
            }
        }
    }
}
