//! The daemon's settings: flags over environment (`BT_*`) over the config file over
//! defaults.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use libp2p::Multiaddr;
use serde::Deserialize;

/// The config file (`--config FILE`, TOML). Every field is optional; a flag or its
/// environment variable overrides it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// Multiaddrs of peers to join through (`--bootstrap`, `BT_BOOTSTRAP`).
    /// Default: none, which starts a new overlay.
    pub(crate) bootstrap: Option<Vec<String>>,
    /// Multiaddrs to listen on (`--listen`, `BT_LISTEN`).
    /// Default: TCP and QUIC on all interfaces, ephemeral ports.
    pub(crate) listen: Option<Vec<String>>,
    /// Address of the Prometheus endpoint, e.g. "127.0.0.1:9464" (`--metrics`,
    /// `BT_METRICS`). Default: off.
    pub(crate) metrics: Option<String>,
    /// Lifetime of the path records this node publishes, in seconds. Default: 3600.
    pub(crate) record_ttl_secs: Option<u64>,
    /// How often this node republishes its records, in seconds. Default: 600.
    pub(crate) republish_secs: Option<u64>,
    /// How long a resolution is cached, in seconds. Default: 5.
    pub(crate) resolve_cache_secs: Option<u64>,
    /// Copies of every file system item (R), placed on the peers nearest its id
    /// (`BT_FS_REPLICAS`). Default: 3.
    pub(crate) fs_replicas: Option<usize>,
    /// Acknowledgements a file system write waits for (W ≤ R) (`BT_FS_WRITE_QUORUM`).
    /// Default: 2.
    pub(crate) fs_write_quorum: Option<usize>,
    /// Seconds between repair rounds when membership does not change. Default: 60.
    pub(crate) repair_interval_secs: Option<u64>,
    /// Bytes per second repair may send. Default: 67108864 (64 MiB/s).
    pub(crate) repair_bandwidth: Option<u64>,
    /// Seconds a chunk no kept version refers to stays before it is collected
    /// (`BT_GC_GRACE_SECS`); writes left unsynced for half of it are refused. Default:
    /// 86400 (24 h); at least 60.
    pub(crate) gc_grace_secs: Option<u64>,
    /// Whether a mount's FUSE thread spins between requests that come close together,
    /// keeping the requesting program's CPU awake meanwhile (`BT_FUSE_SPIN`, `true` or
    /// `false`). It spins only while requests keep coming within 100 µs of each reply, and
    /// saves tens of microseconds a request on a virtual machine. Default: true.
    pub(crate) fuse_spin: Option<bool>,
}

impl FileConfig {
    /// Reads and parses `path`.
    pub(crate) fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config file {} is invalid", path.display()))
    }
}

/// Parses multiaddrs, naming the bad one.
pub(crate) fn multiaddrs(what: &str, texts: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    texts
        .iter()
        .map(|text| {
            text.parse::<Multiaddr>().with_context(|| {
                format!(
                    "{what} {text:?} is not a multiaddr (e.g. /ip4/192.0.2.1/tcp/4001/p2p/12D3Koo…)"
                )
            })
        })
        .collect()
}

/// The overlay configuration from flags (already merged with env by clap) and the file.
pub(crate) fn overlay(
    flag_bootstrap: &[String],
    flag_listen: &[String],
    file: &FileConfig,
) -> anyhow::Result<dht::Config> {
    let mut config = dht::Config::new();
    let bootstrap = if flag_bootstrap.is_empty() {
        file.bootstrap.clone().unwrap_or_default()
    } else {
        flag_bootstrap.to_vec()
    };
    config.bootstrap = multiaddrs("bootstrap address", &bootstrap)?;
    let listen = if flag_listen.is_empty() {
        file.listen.clone().unwrap_or_default()
    } else {
        flag_listen.to_vec()
    };
    if !listen.is_empty() {
        config.listen = multiaddrs("listen address", &listen)?;
    }
    if let Some(secs) = file.record_ttl_secs {
        // Longer-lived records are refused by every store, this node's own included.
        let max = keys::limits::MAX_RECORD_TTL_SECS;
        if !(60..=max).contains(&secs) {
            bail!("record_ttl_secs must be between 60 and {max} (a day), not {secs}");
        }
        config.record_ttl = Duration::from_secs(secs);
    }
    if let Some(secs) = file.republish_secs {
        config.republish_interval = Duration::from_secs(at_most(secs, "republish_secs")?.max(1));
    }
    if let Some(secs) = file.resolve_cache_secs {
        config.resolve_cache_ttl = Duration::from_secs(at_most(secs, "resolve_cache_secs")?);
    }
    if config.republish_interval >= config.record_ttl {
        bail!("republish_secs must be shorter than record_ttl_secs");
    }
    Ok(config)
}

/// The longest setting in seconds taken: a year. Timers add these to the current
/// instant, and a value near `u64::MAX` made that overflow and panic the task.
const MAX_SETTING_SECS: u64 = 365 * 24 * 3600;

/// `secs`, or a clear error naming `what` when it is past [`MAX_SETTING_SECS`].
fn at_most(secs: u64, what: &str) -> anyhow::Result<u64> {
    if secs > MAX_SETTING_SECS {
        bail!("{what} must be at most {MAX_SETTING_SECS} (a year), not {secs}");
    }
    Ok(secs)
}

/// The file system settings from the environment and the file.
pub(crate) fn files(file: &FileConfig) -> anyhow::Result<crate::files::FsSettings> {
    let env = |name: &str| -> anyhow::Result<Option<usize>> {
        match std::env::var(name) {
            Ok(text) => text
                .parse()
                .map(Some)
                .with_context(|| format!("{name}={text:?} is not a number")),
            Err(_) => Ok(None),
        }
    };
    let replicas = env("BT_FS_REPLICAS")?.or(file.fs_replicas).unwrap_or(3);
    let write_quorum = env("BT_FS_WRITE_QUORUM")?
        .or(file.fs_write_quorum)
        .unwrap_or(2.min(replicas));
    if replicas == 0 || replicas > 16 {
        bail!("fs_replicas must be between 1 and 16, not {replicas}");
    }
    if write_quorum == 0 || write_quorum > replicas {
        bail!("fs_write_quorum must be between 1 and fs_replicas ({replicas}), not {write_quorum}");
    }
    let interval = at_most(
        env("BT_REPAIR_INTERVAL_SECS")?
            .map(|n| n as u64)
            .or(file.repair_interval_secs)
            .unwrap_or(60),
        "repair_interval_secs",
    )?;
    let fuse_spin = match std::env::var("BT_FUSE_SPIN") {
        Ok(text) => match text.as_str() {
            "1" | "true" | "on" | "yes" => true,
            "0" | "false" | "off" | "no" => false,
            _ => bail!("BT_FUSE_SPIN={text:?} is not true or false"),
        },
        Err(_) => file.fuse_spin.unwrap_or(true),
    };
    Ok(crate::files::FsSettings {
        fuse_spin,
        replicas,
        write_quorum,
        repair_interval: Duration::from_secs(interval.max(1)),
        repair_bandwidth: file.repair_bandwidth.unwrap_or(64 << 20).max(1024),
        gc_grace: Duration::from_secs(
            at_most(
                env("BT_GC_GRACE_SECS")?
                    .map(|n| n as u64)
                    .or(file.gc_grace_secs)
                    .unwrap_or(24 * 3600),
                "gc_grace_secs",
            )?
            .max(60),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    /// Durations past what the node can use are refused with the setting's name: a
    /// record lifetime over a day (every store refused the node's own records, and
    /// `register` said only that the value was too large to store), and values near
    /// `u64::MAX` (a timer's deadline overflowed and panicked its task).
    #[test]
    fn durations_past_what_the_node_can_use_are_refused_by_name() {
        for (text, named) in [
            ("record_ttl_secs = 172800", "record_ttl_secs"),
            ("record_ttl_secs = 30", "record_ttl_secs"),
            ("record_ttl_secs = 9223372036854775807", "record_ttl_secs"),
            ("republish_secs = 9223372036854775807", "republish_secs"),
            (
                "resolve_cache_secs = 9223372036854775807",
                "resolve_cache_secs",
            ),
        ] {
            let err = overlay(&[], &[], &parsed(text)).unwrap_err().to_string();
            assert!(err.contains(named), "{text}: {err}");
        }
        let fine = overlay(&[], &[], &parsed("record_ttl_secs = 86400")).unwrap();
        assert_eq!(fine.record_ttl, Duration::from_secs(86_400));
        for (text, named) in [
            (
                "repair_interval_secs = 9223372036854775807",
                "repair_interval_secs",
            ),
            ("gc_grace_secs = 9223372036854775807", "gc_grace_secs"),
        ] {
            let err = files(&parsed(text)).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(named), "{text}: {err}");
        }
        let fine = files(&parsed("repair_interval_secs = 3600")).unwrap();
        assert_eq!(fine.repair_interval, Duration::from_secs(3600));
    }
}
