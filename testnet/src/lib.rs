//! Networks of real `btnode` processes on 127.0.0.1, for tests and for people to try:
//! start N nodes (temporary data directories, ephemeral ports, one bootstrap), wait
//! until the overlay has converged, then kill (`SIGKILL`), stop (`SIGTERM`), restart
//! and query nodes through the `btnode` CLI.
//!
//! Node 0 is created with `init --root`: it owns the tree `/<root>` and grants the other
//! nodes writecaps with [`Testnet::grant`].

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The passphrase of every test node's software key store.
pub const PASSPHRASE: &str = "bttestnet passphrase";

/// One `btnode` process and its data directory.
#[derive(Debug)]
pub struct Node {
    /// Its position in the testnet.
    pub index: usize,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its principal.
    pub principal: String,
    /// Its PeerId.
    pub peer_id: String,
    /// Its address with `/p2p/<peer id>`, while running.
    pub address: Option<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    /// Whether its process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its resident set size in KiB (from `/proc/<pid>/status`), while running.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Its log file (stdout and stderr).
    pub fn log(&self) -> &Path {
        &self.log
    }
}

/// A running network of `btnode` processes.
#[derive(Debug)]
pub struct Testnet {
    btnode: PathBuf,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    /// The nodes, node 0 being the bootstrap and the root of the tree.
    pub nodes: Vec<Node>,
    /// The principal that owns the tree (created by node 0).
    pub root: String,
    /// Extra environment of every daemon.
    env: Vec<(String, String)>,
}

/// Where to find the `btnode` binary: `$BTNODE`, else beside the running executable
/// (cargo puts test and binary targets in the same profile directory), else `PATH`.
pub fn find_btnode() -> PathBuf {
    if let Some(path) = std::env::var_os("BTNODE") {
        return PathBuf::from(path);
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join("btnode");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("btnode")
}

impl Testnet {
    /// Starts `n` nodes in a temporary directory that is removed on drop.
    pub fn start(btnode: &Path, n: usize) -> anyhow::Result<Testnet> {
        let temp = tempfile::Builder::new().prefix("bttestnet-").tempdir()?;
        let dir = temp.path().to_path_buf();
        Self::start_in(btnode, n, dir, Some(temp))
    }

    /// Starts `n` nodes in a temporary directory, every daemon with the extra
    /// environment variables `env` (e.g. `BT_REPAIR_INTERVAL_SECS`).
    pub fn start_with_env(
        btnode: &Path,
        n: usize,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Testnet> {
        let temp = tempfile::Builder::new().prefix("bttestnet-").tempdir()?;
        let dir = temp.path().to_path_buf();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::start_full(btnode, n, dir, Some(temp), env)
    }

    /// Starts `n` nodes in `dir`, which is kept.
    pub fn start_in(
        btnode: &Path,
        n: usize,
        dir: PathBuf,
        temp: Option<tempfile::TempDir>,
    ) -> anyhow::Result<Testnet> {
        Self::start_full(btnode, n, dir, temp, Vec::new())
    }

    fn start_full(
        btnode: &Path,
        n: usize,
        dir: PathBuf,
        temp: Option<tempfile::TempDir>,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Testnet> {
        if n == 0 {
            bail!("a testnet needs at least one node");
        }
        // `BTTESTNET_KEEP=1` keeps a temporary directory (data and logs) for a look after
        // the test; its path goes to stderr.
        let temp = match temp {
            Some(temp) if std::env::var_os("BTTESTNET_KEEP").is_some_and(|v| v == "1") => {
                eprintln!("testnet: keeping {}", temp.path().display());
                let _ = temp.keep();
                None
            }
            temp => temp,
        };
        std::fs::create_dir_all(&dir)?;
        let mut net = Testnet {
            btnode: btnode.to_path_buf(),
            dir,
            _temp: temp,
            nodes: Vec::new(),
            root: String::new(),
            env,
        };
        for index in 0..n {
            let node = net.init(index)?;
            net.nodes.push(node);
        }
        for index in 0..n {
            net.launch(index)?;
        }
        Ok(net)
    }

    /// The directory holding every node's data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn init(&mut self, index: usize) -> anyhow::Result<Node> {
        let data_dir = self.dir.join(format!("node{index}"));
        let mut args = vec!["init", "--key-store", "software", "--json"];
        if index == 0 {
            args.push("--root");
        }
        let out = self.run_btnode(&data_dir, &args)?;
        let id: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        if index == 0 {
            self.root = id["root"]
                .as_str()
                .context("node 0 has no root")?
                .to_owned();
        }
        Ok(Node {
            index,
            log: self.dir.join(format!("node{index}.log")),
            data_dir,
            principal: id["principal"].as_str().context("no principal")?.to_owned(),
            peer_id: id["peer_id"].as_str().context("no peer id")?.to_owned(),
            address: None,
            child: None,
        })
    }

    fn run_btnode(&self, data_dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
        let out = Command::new(&self.btnode)
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("BT_PASSPHRASE", PASSPHRASE)
            .env_remove("BT_BOOTSTRAP")
            .env_remove("BT_LISTEN")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", self.btnode.display()))?;
        if !out.status.success() {
            bail!(
                "btnode {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    /// A live node's address to bootstrap from, other than `except`.
    fn bootstrap_for(&mut self, except: usize) -> Option<String> {
        let order = std::iter::once(0).chain(1..self.nodes.len());
        for i in order {
            if i != except && self.nodes[i].is_running() {
                return self.nodes[i].address.clone();
            }
        }
        None
    }

    /// Adds a node that joins through `bootstrap` (e.g. a relay a test controls) rather
    /// than through node 0; returns its index.
    pub fn add_node(&mut self, bootstrap: &str) -> anyhow::Result<usize> {
        let index = self.nodes.len();
        let node = self.init(index)?;
        self.nodes.push(node);
        self.launch_with(index, Some(bootstrap.to_owned()))?;
        Ok(index)
    }

    fn launch(&mut self, index: usize) -> anyhow::Result<()> {
        let bootstrap = self.bootstrap_for(index);
        self.launch_with(index, bootstrap)
    }

    fn launch_with(&mut self, index: usize, bootstrap: Option<String>) -> anyhow::Result<()> {
        let node = &mut self.nodes[index];
        let mut cmd = Command::new(&self.btnode);
        cmd.arg("--data-dir")
            .arg(&node.data_dir)
            .args(["run", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .env("BT_PASSPHRASE", PASSPHRASE)
            .env_remove("BT_BOOTSTRAP")
            .env_remove("BT_LISTEN")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(b) = &bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.btnode.display()))?;
        let (tx, rx) = mpsc::sync_channel(1);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        if let Some(stdout) = child.stdout.take() {
            let mut log = log.try_clone()?;
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(address) = line.strip_prefix("listening on ") {
                        let _ = tx.try_send(address.to_owned());
                    }
                    let _ = writeln!(log, "{line}");
                }
            });
        }
        if let Some(stderr) = child.stderr.take() {
            let mut log = log;
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let _ = writeln!(log, "{line}");
                }
            });
        }
        let address = rx.recv_timeout(Duration::from_secs(20));
        node.child = Some(child);
        match address {
            Ok(address) => {
                node.address = Some(address);
                Ok(())
            }
            Err(_) => bail!(
                "node {index} did not start listening within 20 s; see {}",
                node.log.display()
            ),
        }
    }

    /// Runs `btnode` with `args` against node `index`'s data directory.
    pub fn cli(&self, index: usize, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(&self.btnode)
            .arg("--data-dir")
            .arg(&self.nodes[index].data_dir)
            .args(args)
            .env("BT_PASSPHRASE", PASSPHRASE)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", self.btnode.display()))
    }

    /// Runs a CLI command that must succeed and returns its JSON output.
    pub fn json(&self, index: usize, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cli(index, &all)?;
        if !out.status.success() {
            bail!(
                "node {index}: btnode {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Waits until every running node has a peer and at least `min(n - 1, 8)` routing
    /// table entries.
    pub fn wait_converged(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect();
        let want = (running.len().saturating_sub(1)).min(8) as u64;
        loop {
            let mut all = true;
            for &i in &running {
                let ok = self
                    .json(i, &["status"])
                    .map(|s| s["routing_table"].as_u64().unwrap_or(0) >= want)
                    .unwrap_or(false);
                all &= ok;
            }
            if all {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!("the overlay did not converge within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The path `/<root>/<segments>`.
    pub fn path(&self, rel: &str) -> String {
        format!("/{}/{}", self.root, rel.trim_start_matches('/'))
    }

    /// Node 0 (the root) grants node `index` a writecap for `prefix`, which the node
    /// installs.
    pub fn grant(&self, index: usize, prefix: &str) -> anyhow::Result<()> {
        let file = self.dir.join(format!(
            "node{index}-{}.writecap",
            self.nodes[index].principal
        ));
        let file_text = file.to_string_lossy().into_owned();
        self.run_btnode(
            &self.nodes[0].data_dir,
            &[
                "cap",
                "grant",
                &self.nodes[index].principal,
                prefix,
                "--out",
                &file_text,
            ],
        )?;
        self.run_btnode(&self.nodes[index].data_dir, &["cap", "install", &file_text])?;
        Ok(())
    }

    /// Sends SIGKILL to node `index` and reaps it.
    pub fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.nodes[index].child.take() {
            child.kill()?;
            child.wait()?;
        }
        self.nodes[index].address = None;
        Ok(())
    }

    /// Sends SIGTERM to node `index` and waits for a clean exit.
    pub fn stop(&mut self, index: usize) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut child) = self.nodes[index].child.take() else {
            bail!("node {index} is not running");
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("cannot signal node {index}");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                self.nodes[index].address = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("node {index} did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts node `index` again on its data directory, bootstrapping from a live node.
    pub fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        if self.nodes[index].is_running() {
            self.stop(index)?;
        }
        self.launch(index)
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A streaming command (`btnode listen`, `btnode sub`) on one node, whose JSON lines
/// arrive on a channel; killed when dropped.
#[derive(Debug)]
pub struct Streaming {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Testnet {
    /// Starts `btnode <args>` against node `index`'s data directory, reading its output.
    pub fn stream(&self, index: usize, args: &[&str]) -> anyhow::Result<Streaming> {
        let mut child = Command::new(&self.btnode)
            .arg("--data-dir")
            .arg(&self.nodes[index].data_dir)
            .args(args)
            .env("BT_PASSPHRASE", PASSPHRASE)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot run {}", self.btnode.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (send, lines) = mpsc::sync_channel(1024);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Ok(value) = serde_json::from_str(&line)
                    && send.send(value).is_err()
                {
                    return;
                }
            }
        });
        Ok(Streaming { child, lines })
    }
}

impl Streaming {
    /// The next JSON line; panics (failing the test) after 20 s, naming `what`.
    pub fn next(&self, what: &str) -> serde_json::Value {
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("no {what}: {e}"))
    }

    /// The next JSON line if one comes within `timeout`.
    pub fn next_within(&self, timeout: Duration) -> Option<serde_json::Value> {
        self.lines.recv_timeout(timeout).ok()
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `f` every 100 ms until it gives a value; panics (failing the test) after
/// `timeout`, naming `what` it waited for.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
