//! Five real `btnode` processes on 127.0.0.1: join, register and resolve through the CLI,
//! `kill -9` one and watch its path stop resolving everywhere, restart it and watch it
//! come back.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use testnet::{Testnet, eventually};

fn resolve(net: &Testnet, from: usize, path: &str) -> Result<serde_json::Value, String> {
    let out = net.cli(from, &["resolve", path, "--json"]).unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn five_processes_register_resolve_die_and_return() {
    let btnode = Path::new(env!("CARGO_BIN_EXE_btnode"));
    let mut net = Testnet::start(btnode, 5).unwrap();
    let took = net.wait_converged(Duration::from_secs(60)).unwrap();
    eprintln!("5 nodes converged in {took:?}");

    let paths: Vec<String> = (0..5).map(|i| net.path(&format!("node{i}"))).collect();
    for (i, path) in paths.iter().enumerate() {
        if i > 0 {
            net.grant(i, path).unwrap();
        }
        let r = net.json(i, &["register", path]).unwrap();
        assert_eq!(r["path"], path.as_str());
    }
    for from in 0..5 {
        for (to, path) in paths.iter().enumerate() {
            let target = format!("{path}/chat");
            let r = eventually("resolution", Duration::from_secs(15), || {
                resolve(&net, from, &target).ok()
            });
            assert_eq!(r["prefix"], path.as_str());
            assert_eq!(r["peer_id"], net.nodes[to].peer_id.as_str());
        }
    }

    // kill -9 node 4: within 10 s, no other node resolves its path.
    net.kill(4).unwrap();
    let killed = Instant::now();
    for from in 0..4 {
        let err = eventually(
            "the dead path to stop resolving",
            Duration::from_secs(10),
            || resolve(&net, from, &paths[4]).err(),
        );
        assert!(
            err.contains("unreachable") || err.contains("nothing is registered"),
            "{err}"
        );
    }
    let gone = killed.elapsed();
    eprintln!("node 4's path stopped resolving on all 4 others within {gone:?}");
    assert!(gone < Duration::from_secs(10));

    // Restart it: it registers its path again by itself and resolves everywhere.
    net.restart(4).unwrap();
    let address = net.nodes[4].address.clone().unwrap();
    for from in 0..4 {
        let r = eventually(
            "the restarted node to resolve",
            Duration::from_secs(15),
            || {
                resolve(&net, from, &paths[4]).ok().filter(|r| {
                    r["addresses"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| address.starts_with(x.as_str().unwrap())))
                })
            },
        );
        assert_eq!(r["peer_id"], net.nodes[4].peer_id.as_str());
    }

    // A clean stop answers SIGTERM with exit status 0.
    assert!(net.stop(3).unwrap().success());
}
