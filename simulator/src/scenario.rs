//! Scenarios: what to simulate, as a TOML file. Every field has a default, so a scenario
//! names only what it changes.

use serde::{Deserialize, Serialize};

/// Most nodes a scenario may ask for.
pub const MAX_NODES: u32 = 100_000;

/// Longest simulated time a scenario may ask for (30 days).
pub const MAX_DURATION_SECS: u64 = 30 * 86_400;

/// A scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// A name for reports.
    pub name: String,
    /// Nodes taking part (each comes and goes; at the start all are on line).
    pub nodes: u32,
    /// Simulated time, in seconds.
    pub duration_secs: u64,
    /// How much faster than real time the simulation runs (10: a simulated hour in six
    /// minutes).
    pub time_scale: f64,
    /// Every node joins once, at a random moment within this many seconds from the start;
    /// only then does each begin to come and go.
    pub warm_up_secs: u64,
    /// How nodes come and go.
    pub churn: Churn,
    /// What nodes do.
    pub workload: Workload,
    /// The file system's workload and settings.
    pub files: Files,
    /// The nodes' maintenance timers.
    pub node: NodeTimers,
}

impl Default for Scenario {
    /// The issue's default scenario: 1000 nodes, Weibull k = 0.5 sessions with a median
    /// of 30 simulated minutes, 2 simulated hours.
    fn default() -> Self {
        Scenario {
            name: "default".into(),
            nodes: 1000,
            duration_secs: 2 * 3600,
            time_scale: 1.0,
            warm_up_secs: 1800,
            churn: Churn::default(),
            workload: Workload::default(),
            files: Files::default(),
            node: NodeTimers::default(),
        }
    }
}

/// How nodes come and go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Churn {
    /// The shape of session and off-line times.
    pub distribution: Distribution,
    /// The median time a node stays on line, in seconds.
    pub median_session_secs: f64,
    /// The median time a node stays off line before it comes back, in seconds.
    pub median_offline_secs: f64,
    /// The share of departures that are crashes (no goodbye) rather than graceful.
    pub crash_fraction: f64,
}

impl Default for Churn {
    /// Weibull k = 0.5 (heavy-tailed, as measured in deployed P2P networks), 30 minutes
    /// on line, 30 minutes off, half the departures crashes.
    fn default() -> Self {
        Churn {
            distribution: Distribution::Weibull { shape: 0.5 },
            median_session_secs: 1800.0,
            median_offline_secs: 1800.0,
            crash_fraction: 0.5,
        }
    }
}

/// A distribution of durations, scaled to a median.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Distribution {
    /// Memoryless.
    Exponential,
    /// Weibull with this shape k (k < 1: heavy-tailed, many short sessions and a few
    /// very long ones).
    Weibull {
        /// The shape k.
        shape: f64,
    },
}

impl Distribution {
    /// The duration for a uniform draw `u` in (0, 1], with median `median`: the inverse
    /// of the distribution function.
    pub fn sample(self, median: f64, u: f64) -> f64 {
        let tail = -u.ln(); // an exponential draw with mean 1, median ln 2
        match self {
            Distribution::Exponential => median * tail / std::f64::consts::LN_2,
            Distribution::Weibull { shape } => {
                // Weibull(k, λ) has median λ (ln 2)^(1/k).
                let scale = median / std::f64::consts::LN_2.powf(1.0 / shape);
                scale * tail.powf(1.0 / shape)
            }
        }
    }
}

/// What the nodes do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    /// Paths each node registers each time it comes on line.
    pub registrations_per_session: u32,
    /// Resolutions per second across the whole network (of registered paths).
    pub resolves_per_sec: f64,
    /// Pub-sub topics; node `n` subscribes to topic `n % topics` whenever on line.
    pub topics: u32,
    /// Publications per second across the whole network, each by a node on line to a
    /// topic drawn at random.
    pub publishes_per_sec: f64,
}

impl Default for Workload {
    /// One path per session; five resolutions and one publication a second; 4 topics.
    fn default() -> Self {
        Workload {
            registrations_per_session: 1,
            resolves_per_sec: 5.0,
            topics: 4,
            publishes_per_sec: 1.0,
        }
    }
}

/// The file system's workload: one user (the owner of a tree, with its key) puts files
/// through a node on line and gets them back through another; every node keeps a block
/// store that survives its off-line spells (a machine's disk) and runs repair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Files {
    /// New files per second across the whole network (0: no file system at all).
    pub puts_per_sec: f64,
    /// Reads per second across the whole network, each of a file put earlier.
    pub gets_per_sec: f64,
    /// Bytes per file.
    pub file_bytes: u32,
    /// Plaintext bytes per chunk.
    pub chunk_bytes: u32,
    /// Copies of every chunk and inode (R).
    pub replicas: u32,
    /// Acknowledgements a write needs (W).
    pub write_quorum: u32,
    /// Simulated seconds between repair rounds when membership does not change.
    pub repair_secs: f64,
}

impl Default for Files {
    /// A file of 64 KiB (4 chunks) every 20 simulated seconds, a read every 2 seconds;
    /// R = 3, W = 2, repair every minute and after membership changes (the node's
    /// defaults).
    fn default() -> Self {
        let repair = fs::repair::Config::new();
        let net = fs::net::Config::new();
        Files {
            puts_per_sec: 0.05,
            gets_per_sec: 0.5,
            file_bytes: 64 * 1024,
            chunk_bytes: 16 * 1024,
            replicas: net.replicas as u32,
            write_quorum: net.write_quorum as u32,
            repair_secs: repair.interval.as_secs_f64(),
        }
    }
}

impl Files {
    /// Whether the nodes run the file system at all.
    pub fn enabled(&self) -> bool {
        self.puts_per_sec > 0.0
    }
}

/// The overlay's maintenance timers, in simulated seconds (divided by the time scale to
/// run). Timeouts (a query's, a liveness dial's) are not here: they bound real waits for
/// real answers and stay in real time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeTimers {
    /// How often a node republishes its path records.
    pub republish_secs: f64,
    /// How long a path record stays valid.
    pub record_ttl_secs: f64,
    /// How often the routing table is refreshed.
    pub bootstrap_secs: f64,
    /// How often held records are re-stored at the peers now closest to them; absent:
    /// never (the node's default: owners republish).
    pub replication_secs: Option<f64>,
    /// How long an unused connection stays open.
    pub idle_connection_secs: f64,
    /// How often each connection is pinged.
    pub ping_secs: f64,
    /// Most connected peers per node (the least recently active beyond it are dropped).
    pub max_connections: usize,
}

impl Default for NodeTimers {
    /// The node's own defaults ([`dht::Config::new`]), but pings every 30 simulated
    /// minutes (in one process a crashed node's connections close at once, as a killed
    /// process's do, so pings, there to notice silent peers, find nothing here and would
    /// only cost) and at most 128 connections per node rather than 256 (a thousand nodes
    /// share two cores and 24 GiB).
    fn default() -> Self {
        let node = dht::Config::new();
        NodeTimers {
            republish_secs: node.republish_interval.as_secs_f64(),
            record_ttl_secs: node.record_ttl.as_secs_f64(),
            bootstrap_secs: node.bootstrap_interval.as_secs_f64(),
            replication_secs: node.replication_interval.map(|d| d.as_secs_f64()),
            idle_connection_secs: node.idle_connection_timeout.as_secs_f64(),
            ping_secs: 1800.0,
            max_connections: 128,
        }
    }
}

/// Why a scenario cannot be run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The file is not a scenario.
    #[error("not a scenario: {0}")]
    Parse(String),
    /// A value is out of range.
    #[error("{field} = {value}: {rule}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        rule: &'static str,
    },
}

impl Scenario {
    /// Reads a scenario from TOML text and checks it.
    pub fn from_toml(text: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario =
            toml::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))?;
        scenario.check()?;
        Ok(scenario)
    }

    /// Checks every value is in range.
    pub fn check(&self) -> Result<(), ScenarioError> {
        fn out(field: &'static str, value: impl ToString, rule: &'static str) -> ScenarioError {
            ScenarioError::OutOfRange {
                field,
                value: value.to_string(),
                rule,
            }
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Err(out("nodes", self.nodes, "from 1 to 100000"));
        }
        if self.duration_secs == 0 || self.duration_secs > MAX_DURATION_SECS {
            return Err(out(
                "duration_secs",
                self.duration_secs,
                "from 1 to 30 days",
            ));
        }
        if !(self.time_scale.is_finite() && (0.01..=1000.0).contains(&self.time_scale)) {
            return Err(out("time_scale", self.time_scale, "from 0.01 to 1000"));
        }
        if self.warm_up_secs > self.duration_secs {
            return Err(out(
                "warm_up_secs",
                self.warm_up_secs,
                "at most duration_secs",
            ));
        }
        let churn = &self.churn;
        if !positive(churn.median_session_secs) {
            return Err(out(
                "churn.median_session_secs",
                churn.median_session_secs,
                "a positive number",
            ));
        }
        if !positive(churn.median_offline_secs) {
            return Err(out(
                "churn.median_offline_secs",
                churn.median_offline_secs,
                "a positive number",
            ));
        }
        if !(0.0..=1.0).contains(&churn.crash_fraction) {
            return Err(out(
                "churn.crash_fraction",
                churn.crash_fraction,
                "between 0 and 1",
            ));
        }
        if let Distribution::Weibull { shape } = churn.distribution
            && !(shape.is_finite() && (0.1..=10.0).contains(&shape))
        {
            return Err(out("churn.distribution.shape", shape, "from 0.1 to 10"));
        }
        if self.workload.registrations_per_session > 64 {
            return Err(out(
                "workload.registrations_per_session",
                self.workload.registrations_per_session,
                "at most 64",
            ));
        }
        let rate = self.workload.resolves_per_sec;
        if !(rate.is_finite() && (0.0..=10_000.0).contains(&rate)) {
            return Err(out("workload.resolves_per_sec", rate, "from 0 to 10000"));
        }
        let files = &self.files;
        for (field, rate) in [
            ("files.puts_per_sec", files.puts_per_sec),
            ("files.gets_per_sec", files.gets_per_sec),
        ] {
            if !(rate.is_finite() && (0.0..=1000.0).contains(&rate)) {
                return Err(out(field, rate, "from 0 to 1000"));
            }
        }
        if !(1..=16 << 20).contains(&files.file_bytes) {
            return Err(out(
                "files.file_bytes",
                files.file_bytes,
                "from 1 to 16 MiB",
            ));
        }
        if !(1..=fs::chunk::MAX_CHUNK_SIZE as u32).contains(&files.chunk_bytes) {
            return Err(out(
                "files.chunk_bytes",
                files.chunk_bytes,
                "from 1 to the largest chunk (1 MiB)",
            ));
        }
        if !(1..=20).contains(&files.replicas) {
            return Err(out("files.replicas", files.replicas, "from 1 to 20"));
        }
        if !(1..=files.replicas).contains(&files.write_quorum) {
            return Err(out(
                "files.write_quorum",
                files.write_quorum,
                "from 1 to files.replicas",
            ));
        }
        if !(files.repair_secs.is_finite()
            && (0.001..=MAX_DURATION_SECS as f64).contains(&files.repair_secs))
        {
            return Err(out(
                "files.repair_secs",
                files.repair_secs,
                "from 0.001 to 30 days",
            ));
        }
        let node = &self.node;
        for (field, value) in [
            ("node.republish_secs", node.republish_secs),
            ("node.record_ttl_secs", node.record_ttl_secs),
            ("node.bootstrap_secs", node.bootstrap_secs),
            ("node.idle_connection_secs", node.idle_connection_secs),
            ("node.ping_secs", node.ping_secs),
        ]
        .into_iter()
        .chain(node.replication_secs.map(|v| ("node.replication_secs", v)))
        {
            if !(value.is_finite() && (0.001..=MAX_DURATION_SECS as f64).contains(&value)) {
                return Err(out(field, value, "from 0.001 to 30 days"));
            }
        }
        if node.record_ttl_secs / self.time_scale < 5.0 {
            return Err(out(
                "node.record_ttl_secs",
                node.record_ttl_secs,
                "at least 5 real seconds at the time scale",
            ));
        }
        if node.republish_secs >= node.record_ttl_secs {
            return Err(out(
                "node.republish_secs",
                node.republish_secs,
                "less than node.record_ttl_secs",
            ));
        }
        if !(1..=1024).contains(&self.workload.topics) {
            return Err(out(
                "workload.topics",
                self.workload.topics,
                "from 1 to 1024",
            ));
        }
        let rate = self.workload.publishes_per_sec;
        if !(rate.is_finite() && (0.0..=10_000.0).contains(&rate)) {
            return Err(out("workload.publishes_per_sec", rate, "from 0 to 10000"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_issues_scenario_and_files_override_them() {
        let scenario = Scenario::from_toml("").unwrap();
        assert_eq!(scenario, Scenario::default());
        assert_eq!(scenario.nodes, 1000);
        assert_eq!(
            scenario.churn.distribution,
            Distribution::Weibull { shape: 0.5 }
        );
        let small =
            Scenario::from_toml("nodes = 30\n[churn]\ndistribution = { kind = \"exponential\" }\n")
                .unwrap();
        assert_eq!(small.nodes, 30);
        assert_eq!(small.churn.distribution, Distribution::Exponential);
        assert_eq!(small.duration_secs, 7200);
    }

    #[test]
    fn the_shipped_scenarios_are_valid_and_the_default_one_is_the_default() {
        let default = Scenario::from_toml(include_str!("../scenarios/default.toml")).unwrap();
        assert_eq!(default, Scenario::default());
        let small = Scenario::from_toml(include_str!("../scenarios/small.toml")).unwrap();
        assert_eq!(small.nodes, 30);
        // Every file shipped in scenarios/ reads and passes the checks (`from_toml`
        // runs them).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                Scenario::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                checked += 1;
            }
        }
        assert!(checked >= 8, "{checked} scenarios in {}", dir.display());
    }

    #[test]
    fn bad_scenarios_are_refused_with_the_field_named() {
        for (text, field) in [
            ("nodes = 0", "nodes"),
            ("time_scale = -1.0", "time_scale"),
            ("[churn]\ncrash_fraction = 1.5", "churn.crash_fraction"),
            (
                "[churn]\nmedian_session_secs = 0.0",
                "churn.median_session_secs",
            ),
            (
                "[churn]\ndistribution = { kind = \"weibull\", shape = 0.0 }",
                "churn.distribution.shape",
            ),
            (
                "[workload]\nresolves_per_sec = inf",
                "workload.resolves_per_sec",
            ),
            ("[workload]\ntopics = 0", "workload.topics"),
            (
                "[workload]\npublishes_per_sec = -1.0",
                "workload.publishes_per_sec",
            ),
            ("duration_secs = 60\nwarm_up_secs = 61", "warm_up_secs"),
            ("[node]\nping_secs = 0.0", "node.ping_secs"),
            ("time_scale = 5000.0", "time_scale"),
            (
                "time_scale = 1000.0\n[node]\nrecord_ttl_secs = 4000.0",
                "node.record_ttl_secs",
            ),
            ("[node]\nrepublish_secs = 4000.0", "node.republish_secs"),
        ] {
            match Scenario::from_toml(text) {
                Err(ScenarioError::OutOfRange { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            Scenario::from_toml("nodes = \"many\""),
            Err(ScenarioError::Parse(_))
        ));
        assert!(matches!(
            Scenario::from_toml("nodez = 3"),
            Err(ScenarioError::Parse(_))
        ));
    }

    #[test]
    fn samples_have_the_asked_median() {
        for distribution in [
            Distribution::Exponential,
            Distribution::Weibull { shape: 0.5 },
            Distribution::Weibull { shape: 2.0 },
        ] {
            // At u = 1/2 the inverse distribution function gives the median.
            let median = distribution.sample(100.0, 0.5);
            assert!((median - 100.0).abs() < 1e-9, "{distribution:?}: {median}");
            // Smaller u, longer durations.
            assert!(distribution.sample(100.0, 0.01) > distribution.sample(100.0, 0.9));
        }
    }
}
