//! The file system across five real `btnode` processes with R = 3: put on one node, get
//! on another, `kill -9` two nodes with repair in between.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use testnet::{Testnet, eventually};

fn random_file(dir: &Path, name: &str, len: usize, seed: u64) -> std::path::PathBuf {
    let mut state = seed | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn status(net: &Testnet, i: usize) -> serde_json::Value {
    net.json(i, &["status"]).unwrap()["fs"].clone()
}

/// Waits until every listed node finished a repair round that started after now and
/// counts nothing under-replicated.
fn repaired(net: &Testnet, live: &[usize]) {
    let before: Vec<u64> = live
        .iter()
        .map(|&i| status(net, i)["repair"]["rounds"].as_u64().unwrap())
        .collect();
    eventually(
        "repair to finish with nothing under-replicated",
        Duration::from_secs(90),
        || {
            let done = live.iter().zip(&before).all(|(&i, &b)| {
                let s = status(net, i);
                s["repair"]["rounds"].as_u64().unwrap() >= b + 2
                    && s["repair"]["under_replicated"] == 0
            });
            done.then_some(())
        },
    );
}

#[test]
fn five_processes_replicate_and_repair() {
    let btnode = Path::new(env!("CARGO_BIN_EXE_btnode"));
    let mut net = Testnet::start_with_env(btnode, 5, &[("BT_REPAIR_INTERVAL_SECS", "1")]).unwrap();
    net.wait_converged(Duration::from_secs(60)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let files = [
        (
            random_file(work.path(), "big.bin", 5 << 20, 1),
            net.path("docs/big.bin"),
        ),
        (
            random_file(work.path(), "small.txt", 1234, 2),
            net.path("docs/notes/small.txt"),
        ),
        (random_file(work.path(), "empty", 0, 3), net.path("empty")),
    ];
    for (local, path) in &files {
        let stat = net
            .json(0, &["fs", "put", local.to_str().unwrap(), path])
            .unwrap();
        assert_eq!(
            stat["size"].as_u64().unwrap() as usize,
            std::fs::metadata(local).unwrap().len() as usize
        );
    }
    let listing = net.json(0, &["fs", "ls", &net.path("docs")]).unwrap();
    let names: Vec<&str> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["big.bin", "notes"]);

    // Node 4 may not read until the tree is shared with it.
    let reader = net.nodes[4].principal.clone();
    let denied = net.cli(4, &["fs", "stat", &files[0].1]).unwrap();
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    net.json(0, &["fs", "share", &format!("/{}", net.root), &reader])
        .unwrap();
    let get_all = |net: &Testnet, node: usize| {
        for (i, (local, path)) in files.iter().enumerate() {
            let out = work.path().join(format!("out-{node}-{i}"));
            net.json(node, &["fs", "get", path, out.to_str().unwrap()])
                .unwrap();
            assert!(
                std::fs::read(&out).unwrap() == std::fs::read(local).unwrap(),
                "{path} differs on node {node}"
            );
        }
    };
    get_all(&net, 4);

    // At least three copies of everything (repair says nothing lacks one).
    repaired(&net, &[0, 1, 2, 3, 4]);
    let total: u64 = (0..5)
        .map(|i| status(&net, i)["chunks"].as_u64().unwrap())
        .sum();
    assert!(total >= 3 * 5, "{total} chunk copies");

    // Two nodes die, one after the other, with repair in between.
    net.kill(1).unwrap();
    repaired(&net, &[0, 2, 3, 4]);
    get_all(&net, 4);
    net.kill(2).unwrap();
    repaired(&net, &[0, 3, 4]);
    get_all(&net, 4);
    get_all(&net, 0);
    let sent: u64 = [0, 3, 4]
        .iter()
        .map(|&i| status(&net, i)["repair"]["bytes_sent"].as_u64().unwrap())
        .sum();
    assert!(sent > 0, "repair sent nothing");
    // Three live nodes, R = 3: every node holds every chunk.
    let counts: Vec<u64> = [0, 3, 4]
        .iter()
        .map(|&i| status(&net, i)["chunks"].as_u64().unwrap())
        .collect();
    assert!(counts.windows(2).all(|w| w[0] == w[1]), "{counts:?}");
}
