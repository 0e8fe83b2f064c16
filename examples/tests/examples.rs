//! The examples as their users run them: real processes on 127.0.0.1, talking through
//! their printed paths and addresses.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

/// Generous: the machines that run this may be slow and busy.
const PATIENCE: Duration = Duration::from_secs(60);

/// A running example; killed when dropped.
struct Running {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(name: &str, program: &str, args: &[&str]) -> Running {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Both streams into one: stdout lines as they are, stderr lines (logs) marked,
        // so that they show when an expectation fails but never match one.
        let (sender, lines) = sync_channel(1024);
        let stdout = child.stdout.take().unwrap();
        let out = sender.clone();
        std::thread::spawn(move || forward(stdout, "", &out));
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || forward(stderr, "[stderr] ", &sender));
        Running {
            name: name.into(),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line that `wanted` accepts and returns what it made of it.
    fn expect<T>(&mut self, what: &str, wanted: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = wanted(&line);
                    self.seen.push(line);
                    if let Some(found) = found {
                        return found;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: no {what} within {PATIENCE:?}; printed {:#?}",
                        self.name, self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "{}: exited before {what}; printed {:#?}",
                        self.name, self.seen
                    )
                }
            }
        }
    }

    fn expect_line(&mut self, line: &str) {
        self.expect(&format!("{line:?}"), |l| (l == line).then_some(()));
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Ends its input.
    fn close_input(&mut self) {
        self.stdin = None;
    }
}

/// Sends every line of `from` with `mark` before it, until either side closes.
fn forward(from: impl std::io::Read, mark: &str, to: &SyncSender<String>) {
    for line in BufReader::new(from).lines() {
        let Ok(line) = line else { break };
        if to.send(format!("{mark}{line}")).is_err() {
            break;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a program to its end (killing it after [`PATIENCE`]).
fn run(program: &str, args: &[&str]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn kv_put_then_get() {
    let kv = env!("CARGO_BIN_EXE_kv");
    let mut server = Running::start("kv serve", kv, &["serve"]);
    let path = server.expect("service path", |l| {
        l.strip_prefix("kv service at ").map(str::to_string)
    });
    let addr = server.expect("address", |l| {
        l.strip_prefix("join with: --bootstrap ")
            .map(str::to_string)
    });

    let put = run(
        kv,
        &["put", "--bootstrap", &addr, &path, "greeting", "hello"],
    );
    assert_eq!(stdout(&put), "ok");
    let get = run(kv, &["get", "--bootstrap", &addr, &path, "greeting"]);
    assert_eq!(stdout(&get), r#""hello""#);

    let put = run(
        kv,
        &[
            "put",
            "--json",
            "--bootstrap",
            &addr,
            &path,
            "n",
            r#"[1,null,{"a":true}]"#,
        ],
    );
    assert_eq!(stdout(&put), "ok");
    let get = run(kv, &["get", "--bootstrap", &addr, &path, "n"]);
    assert_eq!(stdout(&get), r#"[1,null,{"a":true}]"#);

    let absent = run(kv, &["get", "--bootstrap", &addr, &path, "absent"]);
    assert_eq!(stdout(&absent), "null");
}

/// The README's way: a three-node `bttestnet`, the kv service joining it through node 0,
/// and a testnet node talking to it with `btnode ask`/`tell` (separate processes all).
/// Its protocol holds across processes: a message out of order, from the wrong role or
/// after the session's end is refused with that reason.
#[test]
fn kv_from_the_btnode_command_line_on_a_testnet() {
    let btnode = testnet::find_btnode();
    assert!(
        btnode.is_file(),
        "no btnode binary at {} (build it: cargo build -p btnode, or set BTNODE)",
        btnode.display()
    );
    let mut net = testnet::Testnet::start(&btnode, 3).unwrap();
    net.wait_converged(PATIENCE).unwrap();
    // As `bttestnet up` leaves it: node 1 holds a writecap for `/<root>/node1`.
    net.grant(1, &net.path("node1")).unwrap();
    let bootstrap = net.nodes[0].address.clone().unwrap();
    let kv = env!("CARGO_BIN_EXE_kv");
    let mut server = Running::start("kv serve", kv, &["serve", "--bootstrap", &bootstrap]);
    let path = server.expect("service path", |l| {
        l.strip_prefix("kv service at ").map(str::to_string)
    });
    let ask = |args: &[&str]| {
        let mut all = vec!["ask", &path];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--protocol", "kv/1", "--timeout", "5s"]);
        net.cli(1, &all).unwrap()
    };
    let answer = |out: &Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        reply
    };
    let refused = |out: &Output| {
        assert!(!out.status.success(), "accepted: {}", stdout(out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Once the service's registration has spread: a put, then a get.
    let put = testnet::eventually("the kv service to answer", PATIENCE, || {
        let out = ask(&[
            r#"["greeting", "hello"]"#,
            "--role",
            "client",
            "--label",
            "put",
            "--json",
        ]);
        out.status.success().then(|| answer(&out))
    });
    assert_eq!(put["label"], "ok");
    assert_eq!(put["from"], path.as_str());
    let got = answer(&ask(&[
        r#""greeting""#,
        "--role",
        "client",
        "--label",
        "get",
        "--json",
    ]));
    assert_eq!(got["label"], "value");
    assert_eq!(got["payload"], "hello");

    // Out of order: `value` is the server's message.
    let err = refused(&ask(&["null", "--role", "client", "--label", "value"]));
    assert!(err.contains("cannot receive \"client:value\" now"), "{err}");
    // From the wrong role.
    let err = refused(&ask(&[
        r#""greeting""#,
        "--role",
        "server",
        "--label",
        "get",
    ]));
    assert!(err.contains("expected \"get\" with"), "{err}");
    // After the end: a session that said `bye` takes nothing more.
    let bye = net
        .cli(
            1,
            &[
                "tell",
                &path,
                "null",
                "--protocol",
                "kv/1",
                "--role",
                "client",
                "--label",
                "bye",
                "--session",
                "7",
            ],
        )
        .unwrap();
    assert!(
        bye.status.success(),
        "{}",
        String::from_utf8_lossy(&bye.stderr)
    );
    let err = refused(&ask(&[
        r#""greeting""#,
        "--role",
        "client",
        "--label",
        "get",
        "--session",
        "7",
    ]));
    assert!(err.contains("came after the end"), "{err}");
}

#[test]
fn two_chats_hear_each_other() {
    let chat = env!("CARGO_BIN_EXE_chat");
    let mut alice = Running::start("alice", chat, &["--name", "alice"]);
    let (room, addr) = alice.expect("invitation", |l| {
        let rest = l.strip_prefix("join with: --room ")?;
        let (room, addr) = rest.split_once(" --bootstrap ")?;
        Some((room.to_string(), addr.to_string()))
    });
    // Bob subscribes after Alice's `join`: his node hears her posts only because she
    // joins again when she hears him (see the chat example's docs on late joiners).
    alice.expect("join", |l| l.starts_with("joined as alice").then_some(()));
    let mut bob = Running::start(
        "bob",
        chat,
        &["--name", "bob", "--room", &room, "--bootstrap", &addr],
    );
    // Each has heard the other join before anyone posts.
    alice.expect_line("* bob joined");
    bob.expect_line("* alice joined");

    alice.type_line("hello from alice");
    bob.expect_line("alice: hello from alice");
    bob.type_line("hello from bob");
    alice.expect_line("bob: hello from bob");

    alice.close_input();
    alice.expect_line("left");
    bob.expect_line("* alice left");
}
