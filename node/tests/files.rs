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

/// Replaces every copy of `window` in `file` with the same bytes, one bit flipped;
/// returns how many copies there were.
fn flip_everywhere(dir: &Path, window: &[u8]) -> usize {
    let mut found = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let file = entry.unwrap().path();
        let mut bytes = std::fs::read(&file).unwrap();
        let mut at = 0;
        while let Some(i) = bytes[at..].windows(window.len()).position(|w| w == window) {
            bytes[at + i + window.len() / 2] ^= 0x01;
            found += 1;
            at += i + window.len();
        }
        std::fs::write(&file, bytes).unwrap();
    }
    found
}

#[test]
fn a_tampered_chunk_is_read_around_reported_and_repaired() {
    let btnode = Path::new(env!("CARGO_BIN_EXE_btnode"));
    let mut net = Testnet::start_with_env(btnode, 3, &[("BT_REPAIR_INTERVAL_SECS", "1")]).unwrap();
    net.wait_converged(Duration::from_secs(60)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let local = random_file(work.path(), "data.bin", 3 << 20, 7);
    let path = net.path("data.bin");
    net.json(0, &["fs", "put", local.to_str().unwrap(), &path])
        .unwrap();
    let tree = format!("/{}", net.root);

    // Without a readcap: a permission error. With one but no writecap: no writing.
    let denied = net
        .cli(
            2,
            &["fs", "get", &path, work.path().join("x").to_str().unwrap()],
        )
        .unwrap();
    assert!(String::from_utf8_lossy(&denied.stderr).contains("permission denied"));
    net.json(0, &["fs", "share", &tree, &net.nodes[1].principal.clone()])
        .unwrap();
    net.json(0, &["fs", "share", &tree, &net.nodes[2].principal.clone()])
        .unwrap();
    let new_dir = net.path("new");
    for args in [
        vec!["fs", "put", local.to_str().unwrap(), &path],
        vec!["fs", "mkdir", &new_dir],
        vec!["fs", "rm", &path],
    ] {
        let refused = net.cli(2, &args).unwrap();
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("not authorised to write") || stderr.contains("already exists"),
            "{args:?}: {stderr}"
        );
    }
    repaired(&net, &[0, 1, 2]);

    // Every chunk node 1 holds is altered on its disk while it is stopped.
    net.stop(1).unwrap();
    let db = net.nodes[1].data_dir.join("blocks.redb");
    let chunks: Vec<Vec<u8>> = {
        let store = fs::store::Store::open(&db).unwrap();
        let ids = store.chunk_ids(None, 10_000).unwrap();
        ids.iter()
            .map(|id| store.get_chunk(id).unwrap().unwrap())
            .collect()
    };
    assert!(chunks.len() >= 4);
    for chunk in &chunks {
        let window = &chunk[chunk.len() / 2 - 16..chunk.len() / 2 + 16];
        assert!(flip_everywhere(&fs::store::Store::segment_dir(&db), window) >= 1);
    }
    net.restart(1).unwrap();
    net.wait_converged(Duration::from_secs(60)).unwrap();

    // Node 1 reads the file byte for byte (through the other replicas), reports the
    // bad copies, and repair puts good ones back.
    let out = work.path().join("back.bin");
    net.json(1, &["fs", "get", &path, out.to_str().unwrap()])
        .unwrap();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&local).unwrap());
    eventually(
        "the bad copies to be dropped and reported",
        Duration::from_secs(60),
        || {
            (status(&net, 1)["corrupt_dropped"].as_u64().unwrap() >= chunks.len() as u64)
                .then_some(())
        },
    );
    repaired(&net, &[0, 1, 2]);
    eventually(
        "node 1 to hold every chunk again",
        Duration::from_secs(60),
        || (status(&net, 1)["chunks"] == status(&net, 0)["chunks"]).then_some(()),
    );
    net.stop(1).unwrap();
    let store = fs::store::Store::open(&db).unwrap();
    for id in store.chunk_ids(None, 10_000).unwrap() {
        store.get_chunk(&id).unwrap().unwrap();
    }
}

/// A TCP relay that records every byte it passes, both ways.
fn relay(target: std::net::SocketAddr) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for inbound in listener.incoming() {
            let Ok(inbound) = inbound else { return };
            let Ok(outbound) = std::net::TcpStream::connect(target) else {
                return;
            };
            for (mut from, mut to) in [
                (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                (outbound, inbound),
            ] {
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    (port, seen)
}

#[test]
fn storage_nodes_and_traffic_hold_no_plaintext() {
    let btnode = Path::new(env!("CARGO_BIN_EXE_btnode"));
    let env = [("BT_FS_REPLICAS", "2"), ("BT_FS_WRITE_QUORUM", "2")];
    let mut net = Testnet::start_with_env(btnode, 1, &env).unwrap();
    // The second node joins through a relay that records the traffic.
    let address = net.nodes[0].address.clone().unwrap();
    let parts: Vec<&str> = address.split('/').collect();
    let port: u16 = parts[4].parse().unwrap();
    let peer = parts[6];
    let (relay_port, seen) = relay(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    net.add_node(&format!("/ip4/127.0.0.1/tcp/{relay_port}/p2p/{peer}"))
        .unwrap();
    net.wait_converged(Duration::from_secs(60)).unwrap();

    let marker = b"BLOCKTREE-KNOWN-PLAINTEXT-0123456789-";
    let plaintext: Vec<u8> = marker.iter().copied().cycle().take(2 << 20).collect();
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("known.txt");
    std::fs::write(&local, &plaintext).unwrap();
    // Node 1 writes, so that the file's chunks travel on its stream connection to node 0,
    // which it dials at the address its overlay connection reached node 0 at: the relay.
    let file = net.path("known.txt");
    let tree = file.rsplit_once('/').unwrap().0.to_string();
    net.grant(1, &tree).unwrap();
    net.json(1, &["fs", "put", local.to_str().unwrap(), &file])
        .unwrap();
    let captured = seen.lock().unwrap().clone();
    assert!(
        captured.len() > plaintext.len(),
        "only {} bytes went through the relay",
        captured.len()
    );
    assert!(
        !captured.windows(marker.len()).any(|w| w == marker),
        "plaintext on the wire"
    );

    net.stop(1).unwrap();
    net.stop(0).unwrap();
    for node in &net.nodes {
        let mut stored = 0;
        let mut dirs = vec![node.data_dir.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.is_file() {
                    let bytes = std::fs::read(&path).unwrap();
                    assert!(
                        !bytes.windows(marker.len()).any(|w| w == marker),
                        "plaintext in {}",
                        path.display()
                    );
                    if path.starts_with(node.data_dir.join("blocks.chunks")) {
                        stored += bytes.len() as u64;
                    }
                }
            }
        }
        assert!(
            stored > plaintext.len() as u64,
            "node {} stores only {stored} bytes",
            node.index
        );
    }
}

#[test]
fn kill_9_during_writes_loses_no_acknowledged_write() {
    let btnode = Path::new(env!("CARGO_BIN_EXE_btnode"));
    let mut net = Testnet::start(btnode, 3).unwrap();
    net.wait_converged(Duration::from_secs(60)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let data_dir = net.nodes[0].data_dir.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let dir = work.path().to_path_buf();
        let paths: Vec<String> = (0..400)
            .map(|i| net.path(&format!("stream/f{i}")))
            .collect();
        std::thread::spawn(move || {
            let mut acknowledged = Vec::new();
            for (i, path) in paths.into_iter().enumerate() {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let local = random_file(&dir, &format!("f{i}"), 1000 + i * 997, i as u64 + 11);
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_btnode"))
                    .arg("--data-dir")
                    .arg(&data_dir)
                    .args(["fs", "put", local.to_str().unwrap(), &path, "--json"])
                    .output()
                    .unwrap();
                if out.status.success() {
                    acknowledged.push((local, path));
                }
            }
            acknowledged
        })
    };
    // Let a few writes land, then kill the writing node mid-stream.
    std::thread::sleep(Duration::from_secs(4));
    net.kill(0).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acknowledged = writer.join().unwrap();
    assert!(
        acknowledged.len() >= 3,
        "only {} writes before the kill",
        acknowledged.len()
    );
    net.restart(0).unwrap();
    net.wait_converged(Duration::from_secs(60)).unwrap();
    for (i, (local, path)) in acknowledged.iter().enumerate() {
        let out = work.path().join(format!("back{i}"));
        let got = eventually(
            "an acknowledged file to be readable",
            Duration::from_secs(30),
            || {
                net.json(0, &["fs", "get", path, out.to_str().unwrap()])
                    .ok()
            },
        );
        assert!(got["bytes"].as_u64().is_some());
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(local).unwrap(),
            "{path} differs"
        );
    }
}

/// The names in a directory listing.
fn names(net: &Testnet, node: usize, dir: &str) -> Vec<String> {
    let listing = net.json(node, &["fs", "ls", dir]).unwrap();
    listing
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

/// `btnode fs get` of `path` on `node`: the bytes, or the error it printed.
fn fetch(net: &Testnet, node: usize, path: &str, out: &Path) -> Result<Vec<u8>, String> {
    let done = net
        .cli(node, &["fs", "get", path, out.to_str().unwrap()])
        .unwrap();
    if done.status.success() {
        Ok(std::fs::read(out).unwrap())
    } else {
        Err(String::from_utf8_lossy(&done.stderr).into_owned())
    }
}

#[test]
fn shared_writers_move_files_and_revoked_principals_lose_new_versions() {
    let btnode = Path::new(env!("CARGO_BIN_EXE_btnode"));
    let mut net = Testnet::start(btnode, 3).unwrap();
    net.wait_converged(Duration::from_secs(60)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let team = net.path("team");
    let (draft_path, final_path) = (net.path("team/draft.txt"), net.path("team/final.txt"));
    let draft = random_file(work.path(), "draft", 300_000, 21);
    net.json(0, &["fs", "mkdir", &team]).unwrap();
    net.json(0, &["fs", "put", draft.to_str().unwrap(), &draft_path])
        .unwrap();
    let (writer, reader) = (
        net.nodes[1].principal.clone(),
        net.nodes[2].principal.clone(),
    );

    // Node 1 may read and write under team/, node 2 only read.
    net.json(0, &["fs", "share", &team, &writer, "--write"])
        .unwrap();
    let shared = net.json(0, &["fs", "share", &team, &reader]).unwrap();
    let readers: Vec<&str> = shared["readers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(readers.contains(&writer.as_str()) && readers.contains(&reader.as_str()));

    let notes = random_file(work.path(), "notes", 5000, 22);
    net.json(
        1,
        &[
            "fs",
            "put",
            notes.to_str().unwrap(),
            &net.path("team/notes.txt"),
        ],
    )
    .unwrap();
    let moved = net
        .json(1, &["fs", "mv", &draft_path, &final_path])
        .unwrap();
    assert_eq!(moved["size"], 300_000);
    // Node 0 shows node 1's version of the directory once its cache of versions it
    // read (500 ms) expires.
    eventually(
        "node 0 to show node 1's version of the directory",
        Duration::from_secs(10),
        || {
            (net.json(0, &["fs", "stat", &team]).unwrap()["writer"] == writer.as_str())
                .then_some(())
        },
    );
    for node in 0..3 {
        assert_eq!(
            names(&net, node, &team),
            ["final.txt", "notes.txt"],
            "node {node}"
        );
        let out = work.path().join(format!("final-{node}"));
        assert!(fetch(&net, node, &final_path, &out).unwrap() == std::fs::read(&draft).unwrap());
        let out = work.path().join(format!("notes-{node}"));
        let got = fetch(&net, node, &net.path("team/notes.txt"), &out).unwrap();
        assert!(got == std::fs::read(&notes).unwrap());
    }
    let gone = fetch(&net, 2, &draft_path, &work.path().join("gone")).unwrap_err();
    assert!(gone.contains("no such file or directory"), "{gone}");

    // A reader is not a writer: node 2's put, mv and rm are refused.
    for args in [
        vec!["fs", "put", notes.to_str().unwrap(), &draft_path],
        vec!["fs", "mv", &final_path, &draft_path],
        vec!["fs", "rm", &final_path],
    ] {
        let refused = net.cli(2, &args).unwrap();
        assert!(!refused.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("not authorised to write"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(names(&net, 0, &team), ["final.txt", "notes.txt"]);

    // Node 2 is revoked, then node 1 writes a new version: node 2 cannot read it, the
    // owner and node 1 can.
    let revoked = net.json(0, &["fs", "revoke", &team, &reader]).unwrap();
    assert!(
        revoked["readers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.as_str() != Some(reader.as_str()))
    );
    let second = random_file(work.path(), "second", 200_000, 23);
    net.json(1, &["fs", "put", second.to_str().unwrap(), &final_path])
        .unwrap();
    let expected = std::fs::read(&second).unwrap();
    for node in [0, 1] {
        // Node 0 read the file before: it sees the new version once its cache expires.
        let out = work.path().join(format!("second-{node}"));
        eventually("the new version", Duration::from_secs(10), || {
            (fetch(&net, node, &final_path, &out).unwrap() == expected).then_some(())
        });
    }
    let denied = fetch(&net, 2, &final_path, &work.path().join("denied")).unwrap_err();
    assert!(denied.contains("permission denied"), "{denied}");

    // Revoking the writer too: the owner signs again what node 1 wrote (nothing of it
    // is lost), puts node 1's writecap in its revocation list and publishes that; every
    // node has it in force soon, and keeps it across a restart.
    let revoked = net.json(0, &["fs", "revoke", &team, &writer]).unwrap();
    assert_eq!(revoked["revoked"]["writecaps"], 1, "{revoked}");
    assert_eq!(revoked["revoked"]["revocation_list"], 1, "{revoked}");
    // final.txt and notes.txt, and the directory too where node 1's last write of
    // final.txt (under the key the reader's revocation made new) wrote it last.
    let resigned = revoked["revoked"]["resigned_versions"].as_u64().unwrap();
    assert!((2..=3).contains(&resigned), "{revoked}");
    assert_eq!(revoked["conflicts"], 0, "{revoked}");
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
    net.restart(2).unwrap();
    assert_eq!(
        net.json(2, &["status"]).unwrap()["actors"]["revocation_lists"],
        1
    );
    let refused = net
        .cli(
            1,
            &[
                "fs",
                "put",
                notes.to_str().unwrap(),
                &net.path("team/late.txt"),
            ],
        )
        .unwrap();
    assert!(!refused.status.success(), "a revoked writer wrote");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert_eq!(names(&net, 0, &team), ["final.txt", "notes.txt"]);
    let out = work.path().join("owner");
    assert!(fetch(&net, 0, &final_path, &out).unwrap() == std::fs::read(&second).unwrap());
    let out = work.path().join("owner-notes");
    let got = fetch(&net, 0, &net.path("team/notes.txt"), &out).unwrap();
    assert!(got == std::fs::read(&notes).unwrap());
    assert_eq!(net.json(0, &["fs", "stat", &team]).unwrap()["conflicts"], 0);
}

/// `fs get` writes through a temporary file no one could have made ready for it (a
/// symbolic link or a file another user reads, in a shared directory): a link at the
/// old fixed name is left alone and its target untouched. A file it replaces keeps its
/// mode (a private file stayed readable by all before); a new one is 0644.
#[test]
fn fs_get_writes_through_a_fresh_private_file_and_keeps_the_mode() {
    use std::os::unix::fs::PermissionsExt;
    let btnode = Path::new(env!("CARGO_BIN_EXE_btnode"));
    let net = Testnet::start(btnode, 1).unwrap();
    let work = tempfile::tempdir().unwrap();
    let local = random_file(work.path(), "secret.bin", 10_000, 3);
    let path = net.path("secret.bin");
    net.json(0, &["fs", "put", local.to_str().unwrap(), &path])
        .unwrap();
    // A link at the name the temporary file had, to a file of someone else's.
    let victim = work.path().join("victim");
    std::fs::write(&victim, b"untouched").unwrap();
    let out = work.path().join("out");
    std::os::unix::fs::symlink(&victim, work.path().join(".out.btnode-partial")).unwrap();
    std::fs::write(&out, b"old").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o600)).unwrap();
    net.json(0, &["fs", "get", &path, out.to_str().unwrap()])
        .unwrap();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&local).unwrap());
    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the private file it replaced was {mode:o}");
    let fresh = work.path().join("fresh");
    net.json(0, &["fs", "get", &path, fresh.to_str().unwrap()])
        .unwrap();
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    // A local name as long as a name may be (its temporary file's name is cut short).
    let long = work.path().join("é".repeat(127));
    net.json(0, &["fs", "get", &path, long.to_str().unwrap()])
        .unwrap();
    assert!(std::fs::read(&long).unwrap() == std::fs::read(&local).unwrap());
    std::fs::remove_file(&long).unwrap();
    // Nothing left behind but the link that was there.
    let mut names: Vec<String> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".out.btnode-partial",
            "fresh",
            "out",
            "secret.bin",
            "victim"
        ]
    );
}
