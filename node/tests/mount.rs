//! Real FUSE mounts of a shared tree (needs root and /dev/fuse, as in CI; apt `fuse3`,
//! `rsync`, `sqlite3`, `git`): ordinary tools behave on the mount as on a plain directory,
//! and a second node sees the first node's writes.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testnet::{Testnet, eventually};

fn mounted(mountpoint: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(mountpoint.to_str().unwrap()))
}

fn mount(net: &Testnet, node: usize, path: &str, mountpoint: &Path) {
    std::fs::create_dir_all(mountpoint).unwrap();
    net.json(node, &["mount", path, mountpoint.to_str().unwrap()])
        .unwrap();
    assert!(
        mounted(mountpoint),
        "{} is not mounted",
        mountpoint.display()
    );
}

fn umount(net: &Testnet, node: usize, mountpoint: &Path) {
    net.json(node, &["umount", mountpoint.to_str().unwrap()])
        .unwrap();
    assert!(
        !mounted(mountpoint),
        "{} is still mounted",
        mountpoint.display()
    );
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts")
}

#[test]
fn ordinary_tools_work_on_a_mount_as_on_a_plain_directory() {
    let btnode = Path::new(env!("CARGO_BIN_EXE_btnode"));
    let net = Testnet::start(btnode, 1).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("mnt");
    let plain = work.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    mount(&net, 0, &format!("/{}", net.root), &mnt);
    // A tree of real files to work on: this crate's sources.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for dir in [&plain, &mnt] {
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(scripts().join("tools.sh"))
            .arg(dir)
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tools on {}: {}\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("tools on {}: {:?}", dir.display(), started.elapsed());
    }
    // The same files with the same contents. Git's index records inode numbers and
    // times, its reflogs times and a clone's config the path it came from: those differ
    // between any two directories.
    let diff = Command::new("diff")
        .args([
            "-r",
            // Links compared as links (one of them leads nowhere).
            "--no-dereference",
            "--exclude=index",
            "--exclude=logs",
            "--exclude=config",
        ])
        .arg(&plain)
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(work.path().join("find-plain.txt")).unwrap(),
        std::fs::read_to_string(work.path().join("find-mnt.txt")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(mnt.join("query.txt")).unwrap(),
        "50|1275\n"
    );
    let git = Command::new("git")
        .arg("-C")
        .arg(mnt.join("cloned"))
        .args(["log", "--oneline"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&git.stdout).contains("first commit"));
    umount(&net, 0, &mnt);
}

/// `df` on a mount shows the file system that holds the node's block store (the room
/// it has for what is written through the mount), and a daemon stopped with SIGTERM
/// unmounts before it exits.
#[test]
fn df_shows_the_block_stores_file_system_and_sigterm_unmounts() {
    let btnode = Path::new(env!("CARGO_BIN_EXE_btnode"));
    let mut net = Testnet::start(btnode, 1).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("mnt");
    // A file is no mount point: it stays as it was (mount(2) would hide it).
    let file = work.path().join("a-file");
    std::fs::write(&file, "kept\n").unwrap();
    let refused = net
        .json(
            0,
            &["mount", &format!("/{}", net.root), file.to_str().unwrap()],
        )
        .unwrap_err()
        .to_string();
    assert!(refused.contains("not a directory"), "{refused}");
    assert!(!mounted(&file));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept\n");
    mount(&net, 0, &format!("/{}", net.root), &mnt);
    std::fs::write(mnt.join("a.txt"), "something\n").unwrap();
    let on_mount = rustix::fs::statvfs(&mnt).unwrap();
    let store = rustix::fs::statvfs(&net.nodes[0].data_dir).unwrap();
    let bytes = |blocks: u64, s: &rustix::fs::StatVfs| blocks * s.f_frsize;
    assert_eq!(
        bytes(on_mount.f_blocks, &on_mount),
        bytes(store.f_blocks, &store),
        "the mount's size is not its store's file system's"
    );
    let (free_mount, free_store) = (
        bytes(on_mount.f_bavail, &on_mount),
        bytes(store.f_bavail, &store),
    );
    assert!(
        free_mount.abs_diff(free_store) < 256 << 20,
        "free: {free_mount} on the mount, {free_store} on the store's file system"
    );
    assert_eq!(on_mount.f_namemax, 255);
    // SIGTERM: the daemon unmounts and exits cleanly; the mount point is a plain
    // directory again.
    let status = net.stop(0).unwrap();
    assert!(status.success(), "the daemon exited with {status}");
    assert!(!mounted(&mnt), "{} is still mounted", mnt.display());
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);
}

#[test]
fn a_second_node_sees_the_first_nodes_writes() {
    let btnode = Path::new(env!("CARGO_BIN_EXE_btnode"));
    let mut net = Testnet::start(btnode, 2).unwrap();
    net.wait_converged(Duration::from_secs(60)).unwrap();
    let tree = format!("/{}", net.root);
    let work = tempfile::tempdir().unwrap();
    net.json(0, &["fs", "mkdir", "-p", &net.path("shared")])
        .unwrap();
    let reader = net.nodes[1].principal.clone();
    net.json(0, &["fs", "share", &tree, &reader]).unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    mount(&net, 0, &tree, &a);
    mount(&net, 1, &tree, &b);
    std::fs::write(a.join("shared/hello.txt"), "from node 0\n").unwrap();
    let written = Instant::now();
    let seen = eventually("node 1 to see the file", Duration::from_secs(10), || {
        std::fs::read_to_string(b.join("shared/hello.txt")).ok()
    });
    let took = written.elapsed();
    assert_eq!(seen, "from node 0\n");
    // How soon is measured by `cargo bench -p btnode --bench visibility`; here it must
    // only show (within the 10 s above).
    eprintln!("node 1 saw node 0's file after {took:?}");
    // A change shows too, and node 1 (no writecap) may not write.
    std::fs::write(a.join("shared/hello.txt"), "changed\n").unwrap();
    eventually("node 1 to see the change", Duration::from_secs(10), || {
        (std::fs::read_to_string(b.join("shared/hello.txt")).ok()? == "changed\n").then_some(())
    });
    let refused = std::fs::write(b.join("shared/other.txt"), "no");
    assert_eq!(
        refused.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ReadOnlyFilesystem),
        "a node without a writecap wrote through its mount, or got another error"
    );
    umount(&net, 0, &a);
    umount(&net, 1, &b);
}

#[test]
fn fsx_passes_on_a_mount() {
    let Some(fsx) = std::env::var_os("FSX").map(PathBuf::from).or_else(|| {
        let home = std::env::var_os("HOME")?;
        let installed = Path::new(&home).join(".cargo/bin/fsx");
        installed.exists().then_some(installed)
    }) else {
        panic!(
            "fsx is not installed: `cargo install --locked fsx --version 0.3.2` (.ci/setup does it) or set FSX"
        );
    };
    let btnode = Path::new(env!("CARGO_BIN_EXE_btnode"));
    // Every fsync of the exercised file makes a version with a new chunk: collect the old
    // ones after a minute, not a day, so that 100 000 operations do not fill the disk.
    let net = Testnet::start_with_env(
        btnode,
        1,
        &[("BT_GC_GRACE_SECS", "60"), ("BT_REPAIR_INTERVAL_SECS", "5")],
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("mnt");
    mount(&net, 0, &format!("/{}", net.root), &mnt);
    let ops = std::env::var("FSX_OPS").unwrap_or_else(|_| "100000".into());
    let started = Instant::now();
    let out = Command::new(&fsx)
        .args(["-N", &ops, "-S", "7"])
        .arg(mnt.join("fsx.data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fsx failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("fsx -N {ops} passed in {:?}", started.elapsed());
    umount(&net, 0, &mnt);
}

/// What `fsync` returned for through a mount survives `kill -9` of the daemon, and so does
/// what was written without one a few seconds before (the daemon syncs every second); the
/// next mount cleans the dead one's stale mount point.
#[test]
fn fsynced_writes_through_a_mount_survive_kill_9() {
    let btnode = Path::new(env!("CARGO_BIN_EXE_btnode"));
    let mut net = Testnet::start(btnode, 1).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("mnt");
    mount(&net, 0, &format!("/{}", net.root), &mnt);
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 1000) as u8).collect();
    let fsynced = {
        use std::io::Write;
        std::fs::create_dir(mnt.join("d")).unwrap();
        let mut f = std::fs::File::create(mnt.join("d/fsynced")).unwrap();
        f.write_all(&bytes).unwrap();
        f.sync_all().unwrap();
        net.path("d/fsynced")
    };
    std::fs::write(mnt.join("d/closed"), &bytes[..1000]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    net.kill(0).unwrap();
    net.restart(0).unwrap();
    for (path, expected) in [
        (fsynced, &bytes[..]),
        (net.path("d/closed"), &bytes[..1000]),
    ] {
        let out = work.path().join("back");
        net.json(0, &["fs", "get", &path, out.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("{path} after kill -9: {e:#}"));
        assert!(std::fs::read(&out).unwrap() == expected, "{path} differs");
    }
    // The dead daemon's mount is stale; mounting again cleans it.
    net.json(
        0,
        &["mount", &format!("/{}", net.root), mnt.to_str().unwrap()],
    )
    .unwrap();
    assert_eq!(std::fs::read(mnt.join("d/fsynced")).unwrap(), bytes);
    umount(&net, 0, &mnt);
}

/// rename(2) over existing names through a real mount: a file replaces a file and a
/// directory an empty one; the rest fails with the errno rename(2) gives, and nothing in
/// the way is lost. A name too long fails as it does elsewhere.
#[test]
fn renames_over_existing_names_through_a_mount() {
    let btnode = Path::new(env!("CARGO_BIN_EXE_btnode"));
    let net = Testnet::start(btnode, 1).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("mnt");
    mount(&net, 0, &format!("/{}", net.root), &mnt);
    for dir in ["dir", "full", "empty"] {
        std::fs::create_dir(mnt.join(dir)).unwrap();
    }
    std::fs::write(mnt.join("dir/f"), "f").unwrap();
    std::fs::write(mnt.join("full/g"), "g").unwrap();
    std::fs::write(mnt.join("file"), "file").unwrap();
    std::fs::write(mnt.join("other"), "other").unwrap();
    for (from, to, errno) in [
        ("dir", "file", rustix::io::Errno::NOTDIR),
        ("file", "empty", rustix::io::Errno::ISDIR),
        ("dir", "full", rustix::io::Errno::NOTEMPTY),
    ] {
        let err = std::fs::rename(mnt.join(from), mnt.join(to)).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(errno.raw_os_error()),
            "{from} over {to}: {err}"
        );
    }
    assert_eq!(std::fs::read_to_string(mnt.join("file")).unwrap(), "file");
    // A file open while it is renamed over (an editor's save) or removed (a log
    // rotated) is still itself to `fstat`, which asks by inode number: it got the new
    // file's size, or ENOENT.
    let mut replaced = std::fs::File::open(mnt.join("file")).unwrap();
    std::fs::write(mnt.join("doomed"), "doomed!").unwrap();
    let removed = std::fs::File::open(mnt.join("doomed")).unwrap();
    std::fs::rename(mnt.join("other"), mnt.join("file")).unwrap();
    std::fs::remove_file(mnt.join("doomed")).unwrap();
    assert_eq!(replaced.metadata().unwrap().len(), 4);
    assert_eq!(removed.metadata().unwrap().len(), 7);
    let mut was = String::new();
    std::io::Read::read_to_string(&mut replaced, &mut was).unwrap();
    assert_eq!(was, "file");
    drop((replaced, removed));
    std::fs::rename(mnt.join("dir"), mnt.join("empty")).unwrap();
    assert_eq!(std::fs::read_to_string(mnt.join("file")).unwrap(), "other");
    assert_eq!(std::fs::read_to_string(mnt.join("empty/f")).unwrap(), "f");
    assert_eq!(std::fs::read_to_string(mnt.join("full/g")).unwrap(), "g");
    let mut names: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["empty", "file", "full"]);
    // A name longer than 255 bytes: ENAMETOOLONG, as on any file system (was EINVAL).
    let err = std::fs::write(mnt.join("n".repeat(256)), "x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::NAMETOOLONG.raw_os_error()),
        "{err}"
    );
    std::fs::write(mnt.join("n".repeat(255)), "x").unwrap();
    umount(&net, 0, &mnt);
}

/// Removing a directory's names while reading its listing, as `rm -r`, `find -delete`
/// and a Python `scandir` loop do, meets every name once: the kernel reads a listing
/// 32 KiB (~800 names here) at a time, from the position it got to. A listing taken afresh at
/// every read shifted under the removals, names were skipped and the directory was left
/// not empty.
#[test]
fn removing_names_while_listing_a_directory_meets_every_name() {
    let btnode = Path::new(env!("CARGO_BIN_EXE_btnode"));
    let net = Testnet::start(btnode, 1).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("mnt");
    mount(&net, 0, &format!("/{}", net.root), &mnt);
    let dir = mnt.join("many");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..2000 {
        std::fs::write(dir.join(format!("file-{i:04}")), "x").unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        assert!(
            seen.insert(entry.file_name()),
            "{:?} listed twice",
            entry.file_name()
        );
        std::fs::remove_file(entry.path()).unwrap();
    }
    assert_eq!(seen.len(), 2000, "names met while removing them");
    std::fs::remove_dir(&dir).unwrap();
    // A rewind lists afresh: a listing kept from before shows nothing removed since.
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a"), "a").unwrap();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    std::fs::remove_file(dir.join("a")).unwrap();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    umount(&net, 0, &mnt);
}

/// Two descriptors on one file of a mount share it, as on any file system: what one
/// wrote the other reads before either is closed, and two appenders both keep their
/// bytes. (Each open had a handle of its own: the reader read nothing, and the two
/// appenders forked the file, each version with holes where the other's bytes were,
/// one shown as a conflict copy.) A file larger than the
/// largest is EFBIG, as write(2) says elsewhere.
#[test]
fn descriptors_on_one_file_share_it() {
    use std::io::{Read, Seek, Write};
    let btnode = Path::new(env!("CARGO_BIN_EXE_btnode"));
    let net = Testnet::start(btnode, 1).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("mnt");
    mount(&net, 0, &format!("/{}", net.root), &mnt);
    let file = mnt.join("shared");
    let mut writer = std::fs::File::create(&file).unwrap();
    writer.write_all(&[b'x'; 5000]).unwrap();
    let mut reader = std::fs::File::open(&file).unwrap();
    let mut read = Vec::new();
    reader.read_to_end(&mut read).unwrap();
    assert_eq!(
        read.len(),
        5000,
        "the second descriptor missed the first's writes"
    );
    drop((writer, reader));

    let log = mnt.join("log");
    let append = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap()
    };
    let (mut a, mut b) = (append(), append());
    for _ in 0..50 {
        a.write_all(&[b'A'; 10]).unwrap();
        b.write_all(&[b'B'; 10]).unwrap();
    }
    drop((a, b));
    let bytes = std::fs::read(&log).unwrap();
    assert_eq!(bytes.len(), 1000);
    assert_eq!(bytes.iter().filter(|c| **c == b'A').count(), 500);
    assert_eq!(bytes.iter().filter(|c| **c == b'B').count(), 500);
    let mut names: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["log", "shared"],
        "a fork of one file, shown as a conflict"
    );

    let mut big = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    big.seek(std::io::SeekFrom::Start(1 << 40)).unwrap();
    let err = big.write_all(b"x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::FBIG.raw_os_error()),
        "{err}"
    );
    drop(big);

    // A fork: the file open here, written before and after `btnode fs put` wrote it
    // (a command makes what a mount wrote a version first: the put follows it, and the
    // write after the put forks). Its conflict copy and the file, open at once, read as
    // two files (the copy's handle was filed under the file's inode number, and the
    // file's open took it over: `diff` saw no difference).
    let forked = mnt.join("forked");
    let mut open_here = std::fs::File::create(&forked).unwrap();
    open_here.write_all(b"from the mount\n").unwrap();
    let source = work.path().join("source");
    std::fs::write(&source, "from put\n").unwrap();
    net.json(
        0,
        &[
            "fs",
            "put",
            source.to_str().unwrap(),
            &format!("/{}/forked", net.root),
        ],
    )
    .unwrap();
    open_here.write_all(b"more\n").unwrap();
    drop(open_here);
    // Listed once this node's cache of the file's versions (500 ms) has expired.
    let conflict = eventually("a conflict copy", Duration::from_secs(10), || {
        std::fs::read_dir(&mnt)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("forked.conflict-"))
            })
    });
    let (mut copy, mut file) = (
        std::fs::File::open(&conflict).unwrap(),
        std::fs::File::open(&forked).unwrap(),
    );
    let (mut a, mut b) = (String::new(), String::new());
    copy.read_to_string(&mut a).unwrap();
    file.read_to_string(&mut b).unwrap();
    let mut both = [a, b];
    both.sort();
    assert_eq!(both, ["from put\n", "from the mount\nmore\n"]);
    drop((copy, file));
    umount(&net, 0, &mnt);
}

/// A program that starts another while it holds a file open on the mount, between calls
/// that come close together: the new program closes its copy of the descriptor inside
/// `execve`, and that close waits for our reply to its `FLUSH`. The mount's spinning once
/// read that program's `/proc/<pid>/stat` on the FUSE thread, which waits while the
/// program is in `execve`: a deadlock (a mount test hung on it).
#[test]
fn a_program_started_while_a_file_is_open_on_the_mount_does_not_hang_it() {
    let btnode = Path::new(env!("CARGO_BIN_EXE_btnode"));
    let net = Testnet::start(btnode, 1).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("mnt");
    mount(&net, 0, &format!("/{}", net.root), &mnt);
    let file = mnt.join("held");
    std::fs::write(&file, "x").unwrap();
    let (done, finished) = std::sync::mpsc::sync_channel(1);
    let held = file.clone();
    std::thread::spawn(move || {
        // Close-on-exec, as Rust opens every file: closed inside the child's `execve`.
        let _open = std::fs::File::open(&held).unwrap();
        for i in 0..100 {
            // Names that are not there: every lookup reaches the daemon (a name that is
            // there is answered from the kernel's cache), so the requests come back to
            // back and the mount spins.
            for j in 0..20 {
                let missing = held.with_file_name(format!("missing-{i}-{j}"));
                assert!(std::fs::metadata(&missing).is_err());
            }
            let status = Command::new("true").status().unwrap();
            assert!(status.success());
        }
        let _ = done.send(());
    });
    if finished.recv_timeout(Duration::from_secs(120)).is_err() {
        // The daemon goes first: removing the temporary directory would wait on the
        // hung mount for good.
        drop(net);
        panic!("starting programs while a file is open on the mount hung");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    umount(&net, 0, &mnt);
}
