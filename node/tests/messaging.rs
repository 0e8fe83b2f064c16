//! Three real `btnode` processes: `listen`, `tell`, `ask`, `pub`, `sub` and `status`
//! through the command line.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use testnet::{Streaming, Testnet, eventually};

#[test]
fn three_processes_tell_ask_and_pub_sub_from_the_command_line() {
    let btnode = Path::new(env!("CARGO_BIN_EXE_btnode"));
    let mut net = Testnet::start(btnode, 3).unwrap();
    net.wait_converged(Duration::from_secs(60)).unwrap();
    for i in 1..3 {
        net.grant(i, &net.path(&format!("n{i}"))).unwrap();
    }
    let echo = net.path("n1/echo");

    // An actor on node 1, for as long as `listen` runs.
    let listener = net.stream(1, &["listen", &echo]).unwrap();
    assert_eq!(listener.next("listen's answer")["listening"], echo.as_str());

    // Node 0 asks it (once the registration has spread).
    let reply = eventually(
        "an answer from the echo actor",
        Duration::from_secs(20),
        || {
            net.json(0, &["ask", &echo, r#"{"hi":[1,2]}"#, "--label", "ping"])
                .ok()
        },
    );
    assert_eq!(reply["from"], echo.as_str());
    assert_eq!(reply["label"], "echo");
    assert_eq!(reply["payload"], serde_json::json!({"hi": [1, 2]}));
    let asked = listener.next("the ask");
    assert_eq!(asked["kind"], "ask");
    assert_eq!(asked["label"], "ping");
    assert_eq!(asked["from"], net.path("cli"));

    // Node 2 tells it three things, from its own path: they arrive in order.
    let from = net.path("n2/cli");
    for i in 0..3 {
        let payload = format!("\"m{i}\"");
        let sent = net.json(2, &["tell", &echo, &payload]).unwrap();
        assert!(sent["session"].is_u64());
    }
    for i in 0..3 {
        let told = listener.next("a tell");
        assert_eq!(told["kind"], "tell");
        assert_eq!(told["from"], from.as_str());
        assert_eq!(told["payload"], format!("m{i}"));
    }
    // A payload of 100 KB, as far as a command line carries (the control socket took
    // lines of 64 KiB).
    let large = "x".repeat(100_000);
    net.json(2, &["tell", &echo, &format!("\"{large}\"")])
        .unwrap();
    assert_eq!(listener.next("a large tell")["payload"], large.as_str());

    // A node that stops answering (SIGSTOP: alive, connected, silent): the ask times out
    // with a clear error, and works again once the node resumes.
    let pid = net.nodes[1].pid().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = net.cli(0, &["ask", &echo, "1", "--timeout", "1s"]).unwrap();
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no reply within 1s"), "{err}");
    let again = net.json(0, &["ask", &echo, "2"]).unwrap();
    assert_eq!(again["payload"], 2);
    assert_eq!(
        listener.next("the timed-out ask, handled late")["payload"],
        1
    );
    assert_eq!(listener.next("the next ask")["payload"], 2);

    // Status shows the actor; errors are clear.
    let status = net.json(1, &["status"]).unwrap();
    assert_eq!(status["actors"]["actors"][0]["path"], echo.as_str());
    assert_eq!(status["actors"]["actors"][0]["handled"], 7);
    assert_eq!(status["actors"]["refused"], 0);
    let out = net
        .cli(0, &["ask", &net.path("n2/nobody"), "1", "--timeout", "2s"])
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nobody"), "{err}");
    // A protocol the actor does not speak: refused with that reason, across processes.
    let out = net
        .cli(
            0,
            &[
                "ask",
                &echo,
                "1",
                "--protocol",
                "kv/1",
                "--role",
                "client",
                "--label",
                "get",
            ],
        )
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not speak protocol \"kv/1\""), "{err}");
    let out = net.cli(0, &["tell", &echo, "{not json"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not JSON"));

    // When `listen` ends, the actor goes, and asking it is refused plainly.
    drop(listener);
    eventually("the actor to stop", Duration::from_secs(10), || {
        let status = net.json(1, &["status"]).unwrap();
        let actors = status["actors"]["actors"].as_array().unwrap().clone();
        (!actors.iter().any(|a| a["path"] == echo.as_str())).then_some(())
    });
    let out = net.cli(0, &["ask", &echo, "1"]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no actor at"), "{err}");

    // Pub-sub: two subscribers on two other nodes both hear node 0's publications.
    let room = net.path("room");
    let subscribers: Vec<Streaming> = [1, 2]
        .iter()
        .map(|&i| net.stream(i, &["sub", &room]).unwrap())
        .collect();
    for s in &subscribers {
        assert_eq!(s.next("sub's answer")["subscribed"], room.as_str());
    }
    // Best effort: publish until the mesh has formed and both have heard one.
    let mut heard = [false, false];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    while heard != [true, true] {
        assert!(Instant::now() < deadline, "subscribers heard {heard:?}");
        net.json(
            0,
            &["pub", &room, &format!("{{\"n\":{n}}}"), "--label", "post"],
        )
        .unwrap();
        n += 1;
        std::thread::sleep(Duration::from_millis(300));
        for (i, s) in subscribers.iter().enumerate() {
            while let Some(event) = s.next_within(Duration::ZERO) {
                assert_eq!(event["label"], "post");
                assert_eq!(event["from"], net.path("cli"));
                heard[i] = true;
            }
        }
    }
    net.stop(0).unwrap();
}

/// Pub-sub across twenty real processes: nineteen subscribers, each a `btnode sub` on its
/// own daemon, hear node 0's publications; once the mesh has formed, a single
/// publication reaches every one of them.
#[test]
fn pub_sub_reaches_every_subscriber_of_twenty_processes() {
    let btnode = Path::new(env!("CARGO_BIN_EXE_btnode"));
    let mut net = Testnet::start(btnode, 20).unwrap();
    net.wait_converged(Duration::from_secs(120)).unwrap();
    let topic = net.path("mesh");
    let subscribers: Vec<Streaming> = (1..20)
        .map(|i| net.stream(i, &["sub", &topic]).unwrap())
        .collect();
    for s in &subscribers {
        assert_eq!(s.next("sub's answer")["subscribed"], topic.as_str());
    }
    // Best effort while the mesh forms: publish until every subscriber has heard one.
    let mut heard = vec![false; subscribers.len()];
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut n = 0;
    while heard.contains(&false) {
        assert!(Instant::now() < deadline, "subscribers heard {heard:?}");
        net.json(
            0,
            &["pub", &topic, &format!("{{\"n\":{n}}}"), "--label", "post"],
        )
        .unwrap();
        n += 1;
        std::thread::sleep(Duration::from_millis(500));
        for (i, s) in subscribers.iter().enumerate() {
            while let Some(event) = s.next_within(Duration::ZERO) {
                assert_eq!(event["label"], "post");
                assert_eq!(event["from"], net.path("cli"));
                heard[i] = true;
            }
        }
    }
    // The mesh has formed: one publication reaches all nineteen.
    net.json(0, &["pub", &topic, "\"last\"", "--label", "post"])
        .unwrap();
    for s in &subscribers {
        while s.next("the last publication")["payload"] != "last" {}
    }
    net.stop(0).unwrap();
}

/// The root revokes node 1 (`btnode cap revoke`): every node takes the list from the
/// overlay and keeps it across a restart; node 1's actor no longer answers as its path
/// (its record is refused, its replies too), and what node 1 tells others is refused.
#[test]
fn a_node_the_root_revokes_is_refused_by_every_node() {
    let btnode = Path::new(env!("CARGO_BIN_EXE_btnode"));
    let mut net = Testnet::start(btnode, 3).unwrap();
    net.wait_converged(Duration::from_secs(60)).unwrap();
    for i in 1..3 {
        net.grant(i, &net.path(&format!("n{i}"))).unwrap();
    }
    let (echo, inbox) = (net.path("n1/echo"), net.path("n2/inbox"));
    let echoing = net.stream(1, &["listen", &echo]).unwrap();
    assert_eq!(echoing.next("listen's answer")["listening"], echo.as_str());
    let receiving = net.stream(2, &["listen", &inbox]).unwrap();
    assert_eq!(
        receiving.next("listen's answer")["listening"],
        inbox.as_str()
    );
    eventually(
        "node 2 to reach node 1's actor",
        Duration::from_secs(20),
        || net.json(2, &["ask", &echo, "1", "--label", "ping"]).ok(),
    );
    echoing.next("the ask");
    eventually(
        "node 1 to reach node 2's actor",
        Duration::from_secs(20),
        || net.json(1, &["tell", &inbox, "\"before\""]).ok(),
    );
    assert_eq!(receiving.next("the tell")["payload"], "before");

    let node1 = net.nodes[1].principal.clone();
    let revoked = net.cli(0, &["cap", "revoke", &node1]).unwrap();
    let stdout = String::from_utf8_lossy(&revoked.stdout);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    assert!(stdout.contains("revoked every writecap of"), "{stdout}");
    let again = net.cli(0, &["cap", "revoke", &node1]).unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("revoked in the tree"));
    for node in 0..3 {
        eventually(
            "every node to hold the revocation list",
            Duration::from_secs(30),
            || {
                let status = net.json(node, &["status"]).unwrap();
                (status["actors"]["revocation_lists"] == 1).then_some(())
            },
        );
    }
    // Node 2 no longer gets an answer from node 1's path.
    let refused = net
        .cli(2, &["ask", &echo, "2", "--label", "ping", "--json"])
        .unwrap();
    assert!(!refused.status.success(), "a revoked node answered");
    // What node 1 tells node 2's actor is refused there, not delivered.
    let _ = net.cli(1, &["tell", &inbox, "\"after\""]).unwrap();
    assert!(
        receiving.next_within(Duration::from_secs(3)).is_none(),
        "a revoked node's tell was delivered"
    );
    net.restart(2).unwrap();
    assert_eq!(
        net.json(2, &["status"]).unwrap()["actors"]["revocation_lists"],
        1
    );
}
