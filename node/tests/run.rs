//! `btnode run` as an operator meets it: bad flags, ports in use, an unreachable
//! bootstrap, a second daemon, signals, the config file.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PASS: &str = "run test passphrase";

fn btnode(data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_btnode"));
    cmd.arg("--data-dir")
        .arg(data_dir)
        .env("BT_PASSPHRASE", PASS)
        .env_remove("BT_BOOTSTRAP")
        .env_remove("BT_LISTEN")
        .env_remove("BT_CONFIG")
        .stdin(Stdio::null());
    cmd
}

fn init(data_dir: &Path) {
    let out = btnode(data_dir)
        .args(["init", "--key-store", "software"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Daemon {
    fn start(data_dir: &Path, args: &[&str]) -> Daemon {
        let mut command = btnode(data_dir);
        command.arg("run").args(args);
        Daemon::spawn(command)
    }

    /// Starts `command` (a `btnode run`, possibly behind a wrapper that execs it).
    fn spawn(mut command: Command) -> Daemon {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::sync_channel(1024);
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(line);
            }
        });
        Daemon { child, lines }
    }

    /// Waits for a line containing `needle` and returns it.
    fn expect(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!(
            "no line with {needle:?} within {timeout:?}; saw:\n{}",
            seen.join("\n")
        );
    }

    fn address(&self) -> String {
        self.expect("listening on ", Duration::from_secs(20))
            .trim_start_matches("listening on ")
            .to_owned()
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    fn wait(mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the daemon did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status(data_dir: &Path) -> serde_json::Value {
    let out = btnode(data_dir)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bad_multiaddr_and_port_in_use_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let out = btnode(dir.path())
        .args(["run", "--bootstrap", "not-a-multiaddr"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bootstrap address \"not-a-multiaddr\" is not a multiaddr"),
        "{err}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let out = btnode(dir.path())
        .args(["run", "--listen", &listen])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {listen}")), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn unreachable_bootstrap_is_retried_until_it_appears() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    init(a.path());
    init(b.path());
    // Reserve a port for A, then free it: B dials it before A exists.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let a_listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let b_node = Daemon::start(
        b.path(),
        &["--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", &a_listen],
    );
    b_node.expect(
        "bootstrap peer unreachable; retrying",
        Duration::from_secs(10),
    );
    // B keeps running; A appears; B joins.
    let a_node = Daemon::start(a.path(), &["--listen", &a_listen]);
    a_node.address();
    b_node.expect("joined through bootstrap peer", Duration::from_secs(40));
    assert!(status(b.path())["peers"].as_u64().unwrap() >= 1);
}

/// Clients that connect to the control socket and send nothing neither wedge it nor
/// keep the daemon from stopping: past its 32 connections a client is told the daemon
/// is busy at once, the idle ones are let go after 10 s, and SIGTERM stops the daemon
/// meanwhile. (The accept loop waited for a free slot, hearing no signal, and an idle
/// client held its slot for ever: `btnode status` hung, and so did SIGTERM.)
#[test]
fn idle_control_clients_neither_wedge_the_socket_nor_hold_off_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let daemon = Daemon::start(dir.path(), &["--listen", "/ip4/127.0.0.1/tcp/0"]);
    daemon.expect("control socket", Duration::from_secs(10));
    let socket = dir.path().join("control.sock");
    let idle: Vec<std::os::unix::net::UnixStream> = (0..40)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let out = btnode(dir.path()).args(["status"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("busy") || err.contains("try again"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a busy daemon kept its client waiting"
    );
    // The idle clients are let go: the daemon answers again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = btnode(dir.path())
            .args(["status", "--json"])
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle clients kept their slots"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // And SIGTERM stops it while more idle clients wait.
    let more: Vec<std::os::unix::net::UnixStream> = (0..40)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    daemon.signal("-TERM");
    assert!(daemon.wait(Duration::from_secs(10)).success());
    drop((idle, more));
}

#[test]
fn one_daemon_per_data_dir_and_signals_stop_it_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let first = Daemon::start(dir.path(), &["--listen", "/ip4/127.0.0.1/tcp/0"]);
    let address = first.address();
    assert!(address.contains("/p2p/12D3KooW"), "{address}");
    first.expect("control socket", Duration::from_secs(10));

    let out = btnode(dir.path())
        .args(["run", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));
    // The first daemon still answers.
    assert_eq!(status(dir.path())["peers"], 0);

    first.signal("-TERM");
    assert!(first.wait(Duration::from_secs(10)).success());
    assert!(!dir.path().join("control.sock").exists());

    // SIGINT too; and a stale socket left by a killed daemon does not stop the next.
    let second = Daemon::start(dir.path(), &["--listen", "/ip4/127.0.0.1/tcp/0"]);
    second.expect("control socket", Duration::from_secs(10));
    second.signal("-INT");
    assert!(second.wait(Duration::from_secs(10)).success());
    let third = Daemon::start(dir.path(), &["--listen", "/ip4/127.0.0.1/tcp/0"]);
    third.expect("control socket", Duration::from_secs(10));
    third.signal("-KILL");
    third.wait(Duration::from_secs(10));
    assert!(dir.path().join("control.sock").exists());
    let fourth = Daemon::start(dir.path(), &["--listen", "/ip4/127.0.0.1/tcp/0"]);
    fourth.expect("control socket", Duration::from_secs(10));
    assert_eq!(status(dir.path())["peers"], 0);
    fourth.signal("-TERM");
    assert!(fourth.wait(Duration::from_secs(10)).success());
}

#[test]
fn the_daemon_raises_its_open_file_limit_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    // `prlimit` (util-linux) sets the limits and execs the daemon: same process.
    let template = btnode(dir.path());
    let mut command = Command::new("prlimit");
    command
        .arg("--nofile=256:2048")
        .arg(template.get_program())
        .args(template.get_args())
        .args(["run", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .env("BT_PASSPHRASE", PASS)
        .env_remove("BT_BOOTSTRAP")
        .env_remove("BT_LISTEN")
        .env_remove("BT_CONFIG")
        .stdin(Stdio::null());
    let daemon = Daemon::spawn(command);
    daemon.expect("control socket", Duration::from_secs(20));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.child.id())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect();
    assert_eq!(open_files, ["2048", "2048"], "{limits}");
    daemon.signal("-TERM");
    assert!(daemon.wait(Duration::from_secs(10)).success());
}

#[test]
fn flags_override_env_override_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let config = dir.path().join("btnode.toml");
    let port = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (p_file, p_env, p_flag) = (port(()), port(()), port(()));
    std::fs::write(
        &config,
        format!("listen = [\"/ip4/127.0.0.1/tcp/{p_file}\"]\nresolve_cache_secs = 2\n"),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    let d = Daemon::start(dir.path(), &["--config", config]);
    assert!(d.address().contains(&format!("/tcp/{p_file}/")));
    drop(d);

    let mut cmd = btnode(dir.path());
    cmd.env("BT_LISTEN", format!("/ip4/127.0.0.1/tcp/{p_env}"));
    let out = cmd.args([
        "run",
        "--config",
        config,
        "--listen",
        &format!("/ip4/127.0.0.1/tcp/{p_flag}"),
    ]);
    let mut child = out
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    while !line.starts_with("listening on") {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0);
    }
    assert!(line.contains(&format!("/tcp/{p_flag}/")), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();

    // Unknown keys in the file are refused, naming the file.
    std::fs::write(dir.path().join("bad.toml"), "lisen = []\n").unwrap();
    let out = btnode(dir.path())
        .args([
            "run",
            "--config",
            dir.path().join("bad.toml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml"));
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let d = Daemon::start(
        dir.path(),
        &[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let line = d.expect("metrics on http://", Duration::from_secs(20));
    let address = line
        .trim_start_matches("metrics on http://")
        .trim_end_matches("/metrics");
    let fetch = |path: &str| {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    let answer = fetch("/metrics");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    for metric in [
        "blocktree_records",
        "blocktree_routing_table_entries",
        "libp2p_kad_",
        "blocktree_fs_under_replicated",
        "blocktree_fs_repair_bytes_total",
        "blocktree_fs_chunks",
    ] {
        assert!(answer.contains(metric), "no {metric} in {answer}");
    }
    assert!(fetch("/other").starts_with("HTTP/1.1 404"));
}
